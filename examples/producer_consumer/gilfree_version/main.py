"""Two producers fill a Queue with numbers; three consumers square them and report."""

import queue

import gilfree

PRODUCERS = 2
CONSUMERS = 3
ITEMS = 5_000


class Producer(gilfree.Worker):
    def __init__(self, tasks, first):
        super().__init__()
        self.tasks = tasks
        self.first = first

    def run(self):
        for n in range(self.first, self.first + ITEMS):
            self.tasks.put(n)


class Consumer(gilfree.Worker):
    def __init__(self, tasks, results):
        super().__init__()
        self.tasks = tasks
        self.results = results

    def run(self):
        done = 0
        while True:
            n = self.tasks.get()
            if n is None:
                self.tasks.task_done()
                break
            self.results.put(n * n)
            self.tasks.task_done()
            done += 1
        self.results.put(("done", done))


tasks = gilfree.Queue(maxsize=100)
results = gilfree.Queue()
producers = [Producer(tasks, i * ITEMS) for i in range(PRODUCERS)]
consumers = [Consumer(tasks, results) for _ in range(CONSUMERS)]
for w in producers + consumers:
    w.start()
for w in producers:
    w.join()
for _ in consumers:
    tasks.put(None)
tasks.join()
total = handled = 0
finished = 0
while finished < CONSUMERS:
    r = results.get()
    if isinstance(r, tuple):
        finished += 1
        handled += r[1]
    else:
        total += r
for w in consumers:
    w.join()
expected = sum(n * n for n in range(PRODUCERS * ITEMS))
print("handled", handled, "sum", total == expected, "empty", results.empty())
try:
    results.get_nowait()
except queue.Empty:
    print("no more results")
