# expect: refused
"""A producer and a consumer connected by a queue.Queue."""

import queue
import threading

q = queue.Queue()


class Consumer(threading.Thread):
    def __init__(self, q):
        super().__init__()
        self.q = q
        self.total = 0

    def run(self):
        while (item := self.q.get()) is not None:
            self.total += item


c = Consumer(q)
c.start()
for i in range(10):
    q.put(i)
q.put(None)
c.join()
print(c.total)
