"""Workers forked from the clean template process (``GILFREE_TEMPLATE=1``): the same
guarantees as workers started directly. Each test runs a fresh interpreter with a watchdog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import SCRIPTS, WATCHDOG, interrupt_script, run_code, run_script, wait_gone

ON = {"GILFREE_TEMPLATE": "1"}  # the default; explicit so an outer =0 does not leak in


def _probe(mode: str, env: dict[str, str], cwd: Path | None = None) -> dict:
    res = run_script("template_probe.py", mode, env=env, cwd=cwd)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_workers_are_forked_by_the_template_as_children_of_the_parent(tmp_path: Path) -> None:
    out = _probe("tree", ON, cwd=tmp_path)
    assert out["template"] is not None
    assert out["template"] not in [w["pid"] for w in out["workers"]]
    for w in out["workers"]:
        assert w["forked"], w
        # CLONE_PARENT: the worker is the parent's child (death signal, reaping), never the
        # template's.
        assert w["ppid"] == out["parent"]
        # What the parent has at spawn time, not what the template had at its start.
        assert w["env"] == "set-after-import"
        assert Path(w["cwd"]) == tmp_path.resolve()


def test_switch_off_starts_workers_directly() -> None:
    out = _probe("tree", {"GILFREE_TEMPLATE": "0"})
    assert out["template"] is None
    assert not any(w["forked"] for w in out["workers"])
    assert all(w["ppid"] == out["parent"] for w in out["workers"])


def test_worker_output_is_forwarded() -> None:
    res = run_script("template_probe.py", "tree", env=ON)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("probe output") == 3


def test_crashed_forked_workers_report_exit_code_and_signal() -> None:
    out = _probe("crash", ON)
    assert out["crashes"] == {"Exits": [7, None], "Killed": [None, 9]}
    # The engine replaced them, from the template still.
    assert out["template"] is not None
    assert out["after"][0]["forked"]


def test_a_dead_template_falls_back_to_direct_spawn_then_is_launched_again() -> None:
    out = _probe("template_killed", ON)
    assert all(w["forked"] for w in out["before"])
    assert out["gone"]
    assert len(out["after"]) == 2
    assert not any(w["forked"] for w in out["after"])
    assert all(w["env"] == "set-after-import" for w in out["after"])
    # A new template, and the workers started after it are its forks again, children of the
    # parent as before, with the parent's environment.
    assert out["relaunched"]
    assert all(w["forked"] for w in out["again"])
    assert {w["ppid"] for w in out["again"]} == {out["before"][0]["ppid"]}
    assert all(w["env"] == "set-after-import" for w in out["again"])


def test_killed_parent_takes_workers_and_template_with_it() -> None:
    with subprocess.Popen(
        [sys.executable, str(SCRIPTS / "template_probe.py"), "parent_killed"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **ON},
    ) as proc:
        try:
            assert proc.stdout is not None
            pids = [int(p) for p in proc.stdout.readline().split()[1:]]
            assert proc.stdout.readline().strip() == "forked True"
            assert proc.stdout.readline().strip() == "ready"
            assert len(pids) >= 2  # a worker (or more, warm) and the template
            assert all(psutil.pid_exists(p) for p in pids)
            proc.kill()
            proc.wait(timeout=WATCHDOG)
        finally:
            proc.kill()
    assert wait_gone(pids) == []


def test_ctrl_c_with_forked_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GILFREE_TEMPLATE", "1")
    # The script stops before "joining" unless its worker was forked from the template.
    pids, _out, err, returncode = interrupt_script("template_probe.py", "ctrl_c", ready="joining")
    assert len(pids) >= 2
    assert "KeyboardInterrupt" in err
    assert returncode != 0
    assert wait_gone(pids) == []


def _forked_worker_eval(expr: str) -> str:
    """What a template-forked worker prints for ``eval(expr)``, run in a fresh interpreter."""
    code = (
        "import gilfree\n"
        f"w = gilfree.Worker(target=eval, args=({expr!r},))\n"
        "w.start()\n"
        "print(w.join())\n"
    )
    return run_code(code, ON)


def test_a_forked_worker_finds_cloudpickle_already_imported() -> None:
    """A first task from ``__main__`` arrives by value and needs cloudpickle: the template
    imports it once, so no new worker pays for that import. The probe itself travels by
    reference (``eval`` is a builtin), so it loads nothing of its own."""
    assert _forked_worker_eval("'cloudpickle' in __import__('sys').modules") == "True"


def test_a_forked_worker_inherits_the_templates_heap_frozen() -> None:
    """The template freezes its objects (``gc.freeze``) before forking, so a worker's
    collections never write to them: its heap pages stay shared with the template instead of
    being copied into every worker."""
    assert int(_forked_worker_eval("__import__('gc').get_freeze_count()")) > 0


# --- The template started at ``import gilfree`` ---------------------------------------------


def _tagged(tag: str) -> list[int]:
    """Live processes (zombies aside) whose environment carries ``GILFREE_TEST_TAG=tag``: the
    probe script and anything it started, wherever they were re-parented."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("GILFREE_TEST_TAG") == tag and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def _prestart_env(tag: str) -> dict[str, str]:
    return {**ON, "GILFREE_TEST_TAG": tag}


def _prestart_report(mode: str) -> tuple[int, dict]:
    """Runs ``prestart_probe.py mode`` (tagged ``mode``): the template it announced first, and
    the JSON report it printed last."""
    res = run_script("prestart_probe.py", mode, env=_prestart_env(mode))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    return int(lines[0].split()[1]), json.loads(lines[-1])


def test_import_starts_the_template_and_the_first_worker_is_forked_from_it() -> None:
    template, out = _prestart_report("adopt")
    # The engine adopted the template started at import: the same process, and no other.
    assert out["templates"] == [template]
    assert out["still_prestarted"] is None
    assert out["worker"]["forked"]
    assert out["worker"]["ppid"] == out["parent"]


@pytest.mark.parametrize("mode", ["exit", "exit_at_once"])
def test_a_program_that_never_uses_gilfree_leaves_no_process(mode: str) -> None:
    tag = f"never-used-{mode}-{os.getpid()}"
    res = run_script("prestart_probe.py", mode, env=_prestart_env(tag))
    assert res.returncode == 0, res.stderr
    if mode == "exit":
        assert int(res.stdout.split()[1]) > 0  # it was running before the exit
    assert wait_gone(_tagged(tag)) == []


@pytest.mark.parametrize(
    "switch",
    [
        {"GILFREE_TEMPLATE": "0"},
        {**ON, "GILFREE_PRESTART": "0"},
        # Workers and Pools run elsewhere by default: no idle process for them.
        {**ON, "GILFREE_BACKEND": "thread"},
        {**ON, "GILFREE_BACKEND": " dask "},
    ],
)
def test_switch_off_starts_no_template_at_import(switch: dict[str, str]) -> None:
    res = run_script("prestart_probe.py", "exit", env=switch)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["template", "None"]


@pytest.mark.parametrize("backend", ["process", "auto", ""])
def test_a_process_default_backend_starts_the_template_at_import(backend: str) -> None:
    # "auto" is "process" under the GIL (a free-threaded build: test_free_threaded.py).
    if backend != "process" and not getattr(sys, "_is_gil_enabled", lambda: True)():
        pytest.skip("auto means threads on a free-threaded interpreter")
    res = run_script("prestart_probe.py", "exit", env={**ON, "GILFREE_BACKEND": backend})
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.split()[1]) > 0


def test_prestart_off_still_forks_workers_from_a_template() -> None:
    out = _probe("tree", {**ON, "GILFREE_PRESTART": "0"})
    assert out["template"] is not None
    assert all(w["forked"] for w in out["workers"])


def test_a_fork_child_before_first_use_starts_its_own_engine() -> None:
    template, out = _prestart_report("fork")
    assert out["child_status"] == 0
    assert out["child"]["ok"], out
    # The parent still adopts the template it started at import.
    assert out["templates"] == [template]
    assert out["parent"]["forked"]


def test_killed_before_first_use_takes_the_template_with_it() -> None:
    tag = f"killed-{os.getpid()}"
    with subprocess.Popen(
        [sys.executable, str(SCRIPTS / "prestart_probe.py"), "killed"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **_prestart_env(tag)},
    ) as proc:
        try:
            assert proc.stdout is not None
            template = int(proc.stdout.readline().split()[1])
            assert proc.stdout.readline().split() == ["pids", str(template)]
            assert proc.stdout.readline().strip() == "waiting"
            assert psutil.pid_exists(template)
            proc.kill()
            proc.wait(timeout=WATCHDOG)
        finally:
            proc.kill()
    assert wait_gone([template, *_tagged(tag)]) == []


def test_ctrl_c_before_first_use_leaves_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GILFREE_TEMPLATE", "1")
    pids, _out, err, returncode = interrupt_script("prestart_probe.py", "ctrl_c", ready="waiting")
    assert len(pids) == 1
    assert "KeyboardInterrupt" in err
    assert returncode != 0
    assert wait_gone(pids) == []


def test_a_forked_worker_collects_garbage_as_any_interpreter() -> None:
    """The template runs with the collector off until it forks (its imports live as long as
    it does); a worker forked from it has the collector on, as a fresh interpreter has."""
    assert _forked_worker_eval("__import__('gc').isenabled()") == "True"


def test_a_forked_worker_sees_the_parents_environment_as_it_is_at_its_start() -> None:
    """The template was started at ``import gilfree``; variables set, changed and removed in
    the parent after that reach a worker forked later, in ``os.environ`` and in the C
    environment alike (a library reading ``getenv`` sees what Python code sees), and none of
    the engine's own handover variables is left in either."""
    code = (
        "import os\n"
        "os.environ['GF_T_KEEP'] = 'kept'\n"
        "os.environ['GF_T_CHANGED'] = 'old'\n"
        "os.environ['GF_T_GONE'] = 'x'\n"
        "import gilfree\n"
        "os.environ['GF_T_CHANGED'] = 'new'\n"
        "del os.environ['GF_T_GONE']\n"
        "os.environ['GF_T_NEW'] = 'added'\n"
        "KEYS = ['GF_T_KEEP', 'GF_T_CHANGED', 'GF_T_GONE', 'GF_T_NEW', 'GILFREE_TEMPLATE_FD',\n"
        "        'GILFREE_CHANNEL_FDS', 'GILFREE_PARENT_PID']\n"
        "def probe():\n"
        "    import ctypes\n"
        "    libc = ctypes.CDLL(None)\n"
        "    libc.getenv.restype = ctypes.c_char_p\n"
        "    c_env = {k: libc.getenv(k.encode()) for k in KEYS}\n"
        "    return ({k: os.environ.get(k) for k in KEYS},\n"
        "            {k: v.decode() if v is not None else None for k, v in c_env.items()})\n"
        "w = gilfree.Worker(target=probe)\n"
        "w.start()\n"
        "import json\n"
        "print(json.dumps(w.join()))\n"
    )
    py_env, c_env = json.loads(run_code(code, ON).splitlines()[-1])
    expected = {
        "GF_T_KEEP": "kept",
        "GF_T_CHANGED": "new",
        "GF_T_GONE": None,
        "GF_T_NEW": "added",
        "GILFREE_TEMPLATE_FD": None,
        "GILFREE_CHANNEL_FDS": None,
        "GILFREE_PARENT_PID": None,
    }
    assert py_env == expected
    assert c_env == expected
