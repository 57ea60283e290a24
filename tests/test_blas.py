"""Worker processes start with BLAS/OpenMP thread pools capped (see ``gilfree._runtime``).

Each check runs in a fresh interpreter, since the cap is fixed when the engine starts its
worker processes and the test session's engine started long ago."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gilfree import _runtime

from conftest import WATCHDOG

_PROBE = r"""
import json, os
import gilfree

def probe(names):
    env = {name: os.environ.get(name) for name in names}
    pools = None
    try:
        import numpy  # noqa: F401  (loads its BLAS)
        import threadpoolctl
    except ImportError:
        pass
    else:
        pools = [(p["internal_api"], p["num_threads"]) for p in threadpoolctl.threadpool_info()]
    return env, pools

with gilfree.Pool(2) as pool:
    print(json.dumps(pool.submit(probe, %r).result()))
"""


def _probe(**env: str) -> tuple[dict[str, str | None], list[tuple[str, int]] | None]:
    """Starts a Pool in a new interpreter with ``env`` on top of this one's (minus any cap
    variable of ours); returns what one of its workers sees."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in _runtime.BLAS_ENV_VARS and k != _runtime.BLAS_THREADS_ENV
    }
    out = subprocess.run(
        [sys.executable, "-c", _PROBE % (list(_runtime.BLAS_ENV_VARS),)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=WATCHDOG,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    seen, pools = json.loads(out.stdout.strip().splitlines()[-1])
    return seen, pools


def test_workers_start_with_one_blas_thread_per_core_by_default() -> None:
    seen, pools = _probe()
    # One warm worker per core: each may use cores // workers = 1 thread.
    assert seen == dict.fromkeys(_runtime.BLAS_ENV_VARS, "1")
    if pools is not None:
        assert pools, "numpy loaded no BLAS that threadpoolctl knows"
        assert all(n == 1 for _, n in pools), pools


def test_a_variable_the_user_set_wins() -> None:
    seen, pools = _probe(OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="3")
    assert seen["OPENBLAS_NUM_THREADS"] == "2"
    assert seen["OMP_NUM_THREADS"] == "3"
    assert seen["MKL_NUM_THREADS"] == "1"
    if pools is not None:
        openblas = [n for api, n in pools if api == "openblas"]
        assert all(n == min(2, len(os.sched_getaffinity(0))) for n in openblas), pools


def test_the_gilfree_setting_changes_the_cap() -> None:
    seen, _ = _probe(GILFREE_BLAS_THREADS="2")
    assert seen == dict.fromkeys(_runtime.BLAS_ENV_VARS, "2")


def test_the_cap_can_be_turned_off() -> None:
    seen, _ = _probe(GILFREE_BLAS_THREADS="none")
    assert seen == dict.fromkeys(_runtime.BLAS_ENV_VARS)


@pytest.mark.parametrize("bad", ["-1", "many"])
def test_a_bad_setting_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="GILFREE_BLAS_THREADS"):
        _runtime.blas_threads({"GILFREE_BLAS_THREADS": bad})


def test_blas_env_leaves_user_values_alone() -> None:
    env = _runtime._blas_env({"MKL_NUM_THREADS": "4", "GILFREE_BLAS_THREADS": "3"})
    assert dict(env) == {name: "3" for name in _runtime.BLAS_ENV_VARS if name != "MKL_NUM_THREADS"}
