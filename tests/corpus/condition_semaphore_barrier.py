# expect: same
"""A Condition handshake, a Semaphore and a Barrier, results kept on self."""

import threading

cond = threading.Condition()
sem = threading.BoundedSemaphore(2)
barrier = threading.Barrier(3)


class Party(threading.Thread):
    def __init__(self, n):
        super().__init__()
        self.n = n

    def run(self):
        with sem:
            self.square = self.n * self.n
        self.index_ok = 0 <= barrier.wait() < 3
        with cond:
            cond.notify_all()


threads = [Party(n) for n in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print([(t.square, t.index_ok) for t in threads], threading.active_count() >= 1)
