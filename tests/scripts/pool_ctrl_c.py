"""Ctrl-C while waiting on a Pool: KeyboardInterrupt promptly, running tasks stopped, no process
left behind."""

import os
import sys
import threading
from concurrent.futures import CancelledError

import gilfree
from gilfree import _runtime


def block(_=None):
    threading.Event().wait()


mode = sys.argv[1]
pool = gilfree.Pool(2)
list(pool.map(lambda _: os.getpid(), range(20)))
print("pids", " ".join(str(p) for p in _runtime.worker_pids()), flush=True)
try:
    # Each mode says "waiting" inside the try, just before it blocks: the SIGINT may arrive as
    # soon as the line is out.
    if mode == "map":
        print("waiting", flush=True)
        list(pool.map(block, range(10)))
    elif mode == "imap":
        print("waiting", flush=True)
        list(pool.imap(block, range(10)))
    elif mode == "result":
        fut = pool.submit(block)
        # The interrupt must land inside result() (which stops the task), not in a print before
        # it: "waiting" is printed by another thread once the main thread waits in result().
        main = threading.main_thread().ident
        in_result = threading.Event()

        def announce():
            while not in_result.wait(0.001):
                frame = sys._current_frames().get(main)
                while frame is not None:
                    if frame.f_code.co_name == "wait" and frame.f_back is not None:
                        if frame.f_back.f_code.co_name == "result":
                            in_result.set()
                            break
                    frame = frame.f_back
            print("waiting", flush=True)

        threading.Thread(target=announce, daemon=True).start()
        try:
            fut.result()
        finally:
            # Stopped before it was seen running: cancelled; stopped while it ran: CancelledError
            # as its exception (Pool.cancel's contract). Either way, done now.
            stopped = fut.done() and (
                fut.cancelled() or isinstance(fut.exception(0), CancelledError)
            )
            print("task stopped", stopped, flush=True)
    elif mode == "gilfree.map":
        gilfree.map(os.getpid, [], workers=2)  # the default pool, warm
        try:
            print("waiting", flush=True)
            gilfree.map(block, range(10), workers=2)
        finally:
            # Its blocked tasks were stopped: the same default pool runs the next call.
            print("next call ok", len(gilfree.map(abs, range(10), workers=2)) == 10, flush=True)
    elif mode == "with":
        with pool:
            pool.submit(block)
            print("waiting", flush=True)
            pool.submit(block).result()
except KeyboardInterrupt:
    print("interrupted", flush=True)
