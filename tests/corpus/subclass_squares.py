# expect: same
"""The tutorial's pattern: subclass Thread, keep the result on self."""

import threading


class Squares(threading.Thread):
    def __init__(self, data):
        super().__init__()
        self.data = data
        self.total = None

    def run(self):
        self.total = sum(x * x for x in self.data)


threads = [Squares(range(i * 100, (i + 1) * 100)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print([t.total for t in threads])
