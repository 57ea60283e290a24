# expect: same
"""Each thread records its own name and whether it is the main thread."""

import threading


class Named(threading.Thread):
    def run(self):
        me = threading.current_thread()
        self.report = (me.name, me is threading.main_thread(), me.ident == threading.get_ident())


threads = [Named(name=f"named-{i}") for i in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print([t.report for t in threads])
print(threading.current_thread() is threading.main_thread())
