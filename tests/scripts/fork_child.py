"""A fork() child (multiprocessing) of a process running gilfree: must neither crash nor
touch the parent's workers, and may use gilfree itself."""

import multiprocessing as mp

import gilfree


def noop():
    return 7


def use_in_child():
    w = gilfree.Worker(target=noop)
    w.start()
    assert w.join() == 7


if __name__ == "__main__":
    w = gilfree.Worker(target=noop)
    w.start()
    w.join()
    fork = mp.get_context("fork")
    p = fork.Process(target=noop)
    p.start()
    p.join()
    print("child exit", p.exitcode)
    p = fork.Process(target=use_in_child)
    p.start()
    p.join()
    print("child using gilfree exit", p.exitcode)
    w = gilfree.Worker(target=noop)
    w.start()
    print("parent still works", w.join())
