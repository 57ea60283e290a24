"""At exit, a non-daemon Worker is joined (its side effect happens) and a daemon one is killed."""

import os
import sys
import threading

import gilfree
from gilfree import _runtime


def finish_late(path):
    total = sum(i * i for i in range(200_000))
    with open(path, "w") as f:
        f.write(str(total))


def block():
    threading.Event().wait()


out = sys.argv[1]
gilfree.Worker(target=finish_late, args=(out,)).start()
gilfree.Worker(target=block, daemon=True).start()
print("pids", " ".join(str(p) for p in _runtime.worker_pids()), os.getpid(), flush=True)
