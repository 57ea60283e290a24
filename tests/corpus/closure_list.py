# expect: warned
"""A target that closes over a list of the function that starts the threads."""

import threading


def main():
    seen = []

    def work(i):
        seen.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(sorted(seen))


main()
