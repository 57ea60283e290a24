"""Four workers add to one shared counter; a Lock makes every increment count."""

import gilfree

WORKERS = 4
TIMES = 10_000


class Counter(gilfree.Worker):
    def __init__(self, total, lock):
        super().__init__()
        self.total = total
        self.lock = lock

    def run(self):
        for _ in range(TIMES):
            with self.lock:
                self.total.value += 1


total = gilfree.Value("i", 0, lock=False)
lock = gilfree.Lock()
workers = [Counter(total, lock) for _ in range(WORKERS)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print("total", total.value, "expected", WORKERS * TIMES)
