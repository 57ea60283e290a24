"""Ctrl-C while the main thread waits on a gilfree Lock, Event or Queue: KeyboardInterrupt."""

import sys
import threading

import gilfree

kind = sys.argv[1]
if kind == "lock":
    lock = gilfree.Lock()
    held = threading.Event()
    forever = threading.Event()
    # The holder must stay alive: a thread that exits holding a robust mutex makes the next
    # acquire succeed at once (with OwnerDiedError), and there would be nothing to interrupt.
    threading.Thread(
        target=lambda: (lock.acquire(), held.set(), forever.wait()), daemon=True
    ).start()
    held.wait()
    wait = lock.acquire
elif kind == "queue":
    wait = gilfree.Queue().get
else:
    event = gilfree.Event()
    wait = event.wait
try:
    # Inside the try: the SIGINT may arrive as soon as the line is out, before wait() starts.
    print("waiting", flush=True)
    wait()
except KeyboardInterrupt:
    print("interrupted", flush=True)
