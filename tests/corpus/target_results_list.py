# expect: warned
"""target= functions write into a module-level list, one slot each."""

import threading

results = [None] * 4


def work(i):
    results[i] = i * i


threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(results)
