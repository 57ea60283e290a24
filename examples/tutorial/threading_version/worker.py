import threading


class Worker(threading.Thread):
    # Our worker's constructor. Note the super() call, which is vital if we want
    # this to function properly (the tutorial's old-style spelling is kept on purpose).
    def __init__(self, n):
        super(Worker, self).__init__()  # noqa: UP008
        self.n = n

    def run(self):
        for i in range(10):
            print(self.n, i)
