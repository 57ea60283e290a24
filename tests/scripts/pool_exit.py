"""A script that leaves a Pool open with a task running: exit must not hang or leak."""

import threading

import gilfree
from gilfree import _runtime


def block():
    threading.Event().wait()


pool = gilfree.Pool(2)
pool.submit(block)
assert pool.submit(abs, -3).result() == 3
print("pids", " ".join(str(p) for p in _runtime.worker_pids()), flush=True)
