# expect: same
"""threading.local: each thread sees only what it set itself."""

import threading

data = threading.local()


class User(threading.Thread):
    def __init__(self, n):
        super().__init__()
        self.n = n

    def run(self):
        before = getattr(data, "value", None)
        data.value = self.n
        self.report = (before, data.value)


data.value = "main"
threads = [User(n) for n in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print([t.report for t in threads], data.value)
