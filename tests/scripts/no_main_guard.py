"""A Worker class defined in __main__, in a script with no `if __name__ == "__main__":` guard."""

import os

import gilfree

parent = os.getpid()


class Worker(gilfree.Worker):
    def __init__(self, n):
        super().__init__()
        self.n = n

    def run(self):
        assert os.getpid() != parent
        self.doubled = self.n * 2
        return self.n * self.n


workers = [Worker(n) for n in (1, 2, 3)]
for w in workers:
    w.start()
print("results", [w.join() for w in workers], [w.doubled for w in workers], flush=True)
print("isinstance", all(isinstance(w, Worker) for w in workers), flush=True)
