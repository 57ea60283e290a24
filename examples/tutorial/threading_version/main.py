from worker import Worker


def main():
    # This initializes thread1..thread3 as instances of our Worker.
    thread1 = Worker(1)
    thread2 = Worker(2)
    thread3 = Worker(3)
    # This is the code needed to run our newly created workers.
    thread1.start()
    thread2.start()
    thread3.start()
    thread1.join()
    thread2.join()
    thread3.join()


if __name__ == "__main__":
    main()
