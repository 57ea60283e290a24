"""Four workers add to one shared counter; a Lock makes every increment count."""

import threading

WORKERS = 4
TIMES = 10_000


class Value:
    """A mutable box, as gilfree.Value("i", 0, lock=False) is (threads share memory)."""

    def __init__(self, typecode, value, lock=False):
        self.value = value


class Counter(threading.Thread):
    def __init__(self, total, lock):
        super().__init__()
        self.total = total
        self.lock = lock

    def run(self):
        for _ in range(TIMES):
            with self.lock:
                self.total.value += 1


total = Value("i", 0, lock=False)
lock = threading.Lock()
workers = [Counter(total, lock) for _ in range(WORKERS)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print("total", total.value, "expected", WORKERS * TIMES)
