"""Ctrl-C during join(): KeyboardInterrupt must come promptly; nothing may be left running."""

import sys
import threading

import gilfree


class Blocked(gilfree.Worker):
    def run(self):
        threading.Event().wait()


w = Blocked(daemon=sys.argv[1] == "daemon")
w.start()
print("pid", w.native_id, flush=True)
if sys.argv[2] == "catch":
    try:
        # Inside the try: the SIGINT may arrive as soon as this line is out, before join().
        print("joining", flush=True)
        w.join()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        w.terminate()
else:
    print("joining", flush=True)
    w.join()
