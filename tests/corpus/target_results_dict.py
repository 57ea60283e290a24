# expect: warned
"""target= functions write into a module-level dict, keyed by thread name."""

import threading

found = {}


def work(n):
    found[threading.current_thread().name] = n + 1


threads = [threading.Thread(target=work, args=(i,), name=f"t{i}") for i in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(sorted(found.items()))
