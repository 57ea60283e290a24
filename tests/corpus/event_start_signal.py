# expect: same
"""Threads wait for one Event before they start, and report through self."""

import threading

go = threading.Event()


class Waiter(threading.Thread):
    def __init__(self, n):
        super().__init__(name=f"waiter-{n}")
        self.n = n
        self.answer = None

    def run(self):
        go.wait()
        self.answer = (threading.current_thread().name, self.n * 2)


threads = [Waiter(n) for n in range(3)]
for t in threads:
    t.start()
go.set()
for t in threads:
    t.join()
print([t.answer for t in threads])
