# expect: same
"""A Timer that fires, and one cancelled before it fires."""

import threading

fired = threading.Event()
never = threading.Event()

t1 = threading.Timer(0.01, fired.set)
t2 = threading.Timer(3600, never.set)
t1.start()
t2.start()
t2.cancel()
t1.join()
t2.join()
print(fired.is_set(), never.is_set())
