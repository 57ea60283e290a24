"""Chaos, standing: a seeded run of many tasks while random workers (and now and then the
template that forks them) are SIGKILLed.

The work and its checks live in ``tests/scripts/chaos.py`` (run in a fresh interpreter, so a
hang is caught by the watchdog and nothing of the run leaks into this process). CI runs a short
run here; ``make soak`` runs long ones (``GILFREE_CHAOS_TASKS``, ``GILFREE_CHAOS_SEEDS``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import SCRIPTS, wait_gone

TASKS = int(os.environ.get("GILFREE_CHAOS_TASKS", "300"))
SEEDS = [int(s) for s in os.environ.get("GILFREE_CHAOS_SEEDS", "1,2").split(",")]
# A run is allowed this long before it counts as hung (the soak sets more).
WATCHDOG = float(os.environ.get("GILFREE_CHAOS_WATCHDOG", "240"))

pytest.importorskip("numpy")


@pytest.mark.timeout(WATCHDOG + 30)
@pytest.mark.parametrize("seed", SEEDS)
def test_chaos_every_future_resolves_and_nothing_runs_twice(seed: int, tmp_path) -> None:
    log = tmp_path / "runs.log"
    log.touch()
    env = dict(os.environ, GILFREE_CHAOS_LOG=str(log), PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "chaos.py"), str(seed), str(TASKS)],
        capture_output=True,
        text=True,
        timeout=WATCHDOG,
        env=env,
    )
    assert proc.returncode == 0, f"seed {seed}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "CHAOS OK" in proc.stdout
    # The run must really have been chaotic: some kills landed and failed some tasks, some passed.
    summary = dict(kv.split("=") for kv in proc.stdout.split("CHAOS OK")[1].split())
    assert int(summary["kills"]) > 0 and int(summary["ok"]) > 0
    pids = [
        int(p)
        for line in proc.stdout.splitlines()
        if line.startswith("pids ")
        for p in line.split()[1:]
    ]
    assert pids and not wait_gone(pids), "worker processes outlived the chaos script"
