"""Probes the template that ``import gilfree`` starts (run with GILFREE_TEMPLATE=1 and a
GILFREE_TEST_TAG marker in the environment, which the template inherits).

Prints ``template <pid>`` once the template is launched (``_engine.prestarted_pid`` waits for
the launch: a handshake, not a sleep), then what the mode asks for."""

import json
import os
import sys
import threading
import time

import psutil
from template_children import templates

import gilfree
from gilfree import _engine, _runtime

WAIT = 60.0


def settled_templates(timeout: float = 10.0) -> list[int]:
    """``templates()`` once no fork is under way. The supervisor forks a caller's own process
    first and its spares after, so right after a ``join()`` a spare may be mid-fork: a
    ``--template`` child not yet in ``worker_pids()``. Look again (polling the process table,
    a state, under ``timeout``) until at most one template is left; a real second template
    stays, and is reported."""
    deadline = time.monotonic() + timeout
    while True:
        found = templates()
        if len(found) <= 1 or time.monotonic() > deadline:
            return found
        time.sleep(0.01)  # poll interval; what is awaited is the table read above


class Report(gilfree.Worker):
    def run(self):
        return os.getpid(), os.getppid()


def report() -> dict:
    w = Report()
    w.start()
    pid, ppid = w.join()
    return {"pid": pid, "ppid": ppid, "forked": "--template" in psutil.Process(pid).cmdline()}


mode = sys.argv[1]
if mode == "exit_at_once":
    sys.exit(0)
template = _engine.prestarted_pid(WAIT)
print("template", template, flush=True)
if mode == "exit":
    pass
elif mode == "adopt":
    worker = report()
    print(
        json.dumps(
            {
                "parent": os.getpid(),
                "worker": worker,
                "templates": settled_templates(),
                "still_prestarted": _engine.prestarted_pid(0),
            }
        )
    )
elif mode == "fork":
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # the fork child: the prestarted template is the parent's, not ours
        code = 1
        try:
            os.close(r)
            out = report()
            ok = out["ppid"] == os.getpid() and template not in templates()
            os.write(w, json.dumps({"ok": ok, **out}).encode())
            code = 0
        finally:
            _runtime.shutdown()
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        from_child = json.loads(f.read())
    _, status = os.waitpid(child, 0)
    mine = report()
    print(
        json.dumps(
            {
                "child": from_child,
                "child_status": os.waitstatus_to_exitcode(status),
                "parent": mine,
                "templates": settled_templates(),
            }
        )
    )
elif mode in ("killed", "ctrl_c"):
    print("pids", template, flush=True)
    print("waiting", flush=True)
    if mode == "killed":
        sys.stdin.read()  # until the test kills us
    else:
        threading.Event().wait()  # until Ctrl-C
