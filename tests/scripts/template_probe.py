"""Probes workers forked from the template (run with GILFREE_TEMPLATE set by the test).

Prints one JSON line (or, for the kill modes, a ``pids`` line and a ready line)."""

import json
import os
import signal
import sys
import threading
import time

import psutil
from template_children import templates

import gilfree
from gilfree import _runtime


class Probe(gilfree.Worker):
    def run(self):
        print("probe output", os.getpid(), flush=True)
        return os.getpid(), os.getppid(), os.getcwd(), os.environ.get("GILFREE_PROBE")


class Exits(gilfree.Worker):
    def run(self):
        os._exit(7)


class Killed(gilfree.Worker):
    def run(self):
        os.kill(os.getpid(), signal.SIGKILL)


class Blocked(gilfree.Worker):
    def run(self):
        threading.Event().wait()


def forked_from_template(pid: int) -> bool:
    # fork() keeps the command line: a worker forked by the template still shows its
    # `--template` argument; a worker started directly does not.
    return "--template" in psutil.Process(pid).cmdline()


def template() -> int | None:
    """The template: the oldest child with its command line that is not a worker (a fork not
    yet in worker_pids() came later)."""
    found = templates()
    return found[0] if found else None


def probe(n: int) -> list[dict]:
    ws = [Probe() for _ in range(n)]
    for w in ws:
        w.start()
    out = []
    for w in ws:
        pid, ppid, cwd, env = w.join()
        out.append(
            {"pid": pid, "ppid": ppid, "cwd": cwd, "env": env, "forked": forked_from_template(pid)}
        )
    return out


mode = sys.argv[1]
os.environ["GILFREE_PROBE"] = "set-after-import"
if mode == "tree":
    workers = probe(3)
    print(json.dumps({"parent": os.getpid(), "workers": workers, "template": template()}))
elif mode == "crash":
    results = {}
    for cls in (Exits, Killed):
        w = cls()
        w.start()
        try:
            w.join()
        except gilfree.WorkerCrashedError as e:
            results[cls.__name__] = [e.exitcode, e.signal]
    print(json.dumps({"crashes": results, "template": template(), "after": probe(1)}))
elif mode == "template_killed":
    before = probe(2)
    victim = psutil.Process(template())
    victim.kill()
    victim.wait(timeout=60)
    # Busy workers, so the next ones must be new processes.
    blockers = [Blocked(daemon=True) for _ in range(len(_runtime.worker_pids()))]
    for b in blockers:
        b.start()
    after = probe(2)
    # A worker the template forked just before it died (an extra of a spawn round, still
    # starting when the blockers were counted) may take a probe: occupy it and probe again. Such
    # late forks are few (one round's extras), so this ends with probes on new processes.
    for _ in range(40):
        late = [w for w in after if w["forked"]]
        if not late:
            break
        more = [Blocked(daemon=True) for _ in late]
        for b in more:
            b.start()
        blockers += more
        after = probe(2)

    # The engine launches a new template about a second after it saw the loss (while idle):
    # wait for it (a state: the process table), then occupy every process there is, so that
    # the next probes are new processes, forked from it.
    deadline = time.monotonic() + 60
    while not templates() and time.monotonic() < deadline:
        time.sleep(0.05)  # poll interval; what is awaited is the table read above
    relaunched = templates()
    more = [Blocked(daemon=True) for _ in _runtime.worker_pids()]
    for b in more:
        b.start()
    blockers += more
    again = probe(2)
    print(
        json.dumps(
            {
                "before": before,
                "after": after,
                "gone": not victim.is_running(),
                "relaunched": relaunched,
                "again": again,
            }
        )
    )
    for b in blockers:
        b.terminate()
elif mode in ("parent_killed", "ctrl_c"):
    w = Blocked(daemon=True)
    w.start()
    pids = [*_runtime.worker_pids(), template()]
    print("pids", *pids, flush=True)
    forked = forked_from_template(w.native_id)
    print("forked", forked, flush=True)
    if not forked:
        sys.exit("the worker was not forked from the template")
    if mode == "parent_killed":
        print("ready", flush=True)
        sys.stdin.read()  # blocks until the test kills us
    else:
        print("joining", flush=True)
        w.join()
