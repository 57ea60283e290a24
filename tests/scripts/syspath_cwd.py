"""Workers adopt the parent's sys.path and working directory at each start."""

import os
import sys

import gilfree

lib, work = sys.argv[1], sys.argv[2]
sys.path.insert(0, lib)
os.chdir(work)
import mymod  # noqa: E402  (lives in `lib`, which only this script put on sys.path)

w = gilfree.Worker(target=mymod.where)
w.start()
print("result", w.join(), flush=True)
