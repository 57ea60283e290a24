"""The parent is SIGKILLed while a worker runs: the worker must die with it."""

import sys
import threading

import gilfree
from gilfree import _runtime


def block():
    threading.Event().wait()


w = gilfree.Worker(target=block)
w.start()
print("pids", " ".join(str(p) for p in _runtime.worker_pids()), flush=True)
sys.stdin.read()  # blocks until the test kills us
