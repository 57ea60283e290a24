"""Ctrl-C while waiting on a Pool: KeyboardInterrupt promptly, running tasks stopped, no process
left behind."""

import os
import sys
import threading

import gilfree
from gilfree import _runtime


def block(_=None):
    threading.Event().wait()


mode = sys.argv[1]
pool = gilfree.Pool(2)
list(pool.map(lambda _: os.getpid(), range(20)))
print("pids", " ".join(str(p) for p in _runtime.worker_pids()), flush=True)
try:
    # Inside the try: the SIGINT may arrive as soon as this line is out.
    print("waiting", flush=True)
    if mode == "map":
        list(pool.map(block, range(10)))
    elif mode == "imap":
        list(pool.imap(block, range(10)))
    elif mode == "result":
        pool.submit(block).result()
    elif mode == "with":
        with pool:
            pool.submit(block)
            pool.submit(block).result()
except KeyboardInterrupt:
    print("interrupted", flush=True)
