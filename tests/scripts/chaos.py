"""Chaos: many tasks through one Pool while random workers are SIGKILLed.

Usage: ``chaos.py SEED TASKS`` (a killer thread SIGKILLs a random worker process after
every few finished tasks, at a seeded random moment, and one time in eight the template that
forks them, which the engine launches again while idle). Four kinds of task are mixed, chosen
by the seed:

- ``compute``: a small pure-Python computation;
- ``big``: a large numpy argument (several MB, so kills land mid-transfer), summed;
- ``slow``: a busy loop that half the time outlives its per-task timeout (the pool kills it);
- ``locked``: takes a shared ``gilfree.Lock`` and bumps a shared ``gilfree.Value`` (kills land
  while a task holds the lock).

Every task appends ``<task id>`` to a run log with one ``O_APPEND`` write when it starts (one
write of a few bytes is atomic). At the end the script checks, and prints ``CHAOS OK`` with
counts or raises:

1. every future resolved (the script's own watchdog fails it otherwise);
2. each success has the right value and its task started exactly once;
3. each failure is a ``WorkerCrashedError`` (or, for ``slow`` tasks, the ``TimeoutError`` of
   their per-task timeout) and its task started at most once;
4. the shared counter lies between the successful and the started ``locked`` tasks;
5. no worker process outlives the script (the test checks the pids it prints).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
import warnings
from collections import Counter

import numpy as np
from template_children import templates

import gilfree
from gilfree import _runtime

LOG_ENV = "GILFREE_CHAOS_LOG"


def _mark_start(task_id: int) -> None:
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"{task_id}\n".encode())
    finally:
        os.close(fd)


def compute(task_id: int, n: int) -> int:
    _mark_start(task_id)
    return sum(i * i for i in range(n))


def big(task_id: int, a: np.ndarray) -> float:
    _mark_start(task_id)
    return float(a.sum())


def slow(task_id: int, seconds: float) -> int:
    _mark_start(task_id)
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # busy, as CPU-bound work is: the timeout must kill it
        pass
    return task_id


def locked(task_id: int, lock: gilfree.Lock, counter: gilfree.Value, spin: int) -> int:
    _mark_start(task_id)
    with warnings.catch_warnings():
        # A killed holder hands the lock on with OwnerDiedError, a warning: expected here.
        warnings.simplefilter("ignore")
        with lock:
            counter.value += 1
            sum(range(spin))  # hold the lock for a while, so kills land inside
    return task_id


def main() -> None:
    seed, tasks = int(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    workers = 2
    lock = gilfree.Lock()
    counter = gilfree.Value("q", 0)
    expected: dict[int, object] = {}
    kinds: dict[int, str] = {}
    futures = {}
    done = threading.Event()
    kills = template_kills = 0
    seen: set[int] = set()

    # Kills are paced by progress, not by the clock: after every few finished tasks, one kill
    # at a random moment within the next ~20 ms. On a slow or loaded machine a clock-paced
    # killer can kill every worker before it is ready, and nothing would ever finish.
    finished = threading.Semaphore(0)

    def killer() -> None:
        nonlocal kills, template_kills
        krng = random.Random(seed + 1)
        while not done.is_set():
            for _ in range(krng.randint(1, 4)):
                while not finished.acquire(timeout=0.05):
                    if done.is_set():
                        return
            if done.wait(krng.uniform(0.0, 0.02)):
                return
            pids = _runtime.worker_pids()
            seen.update(pids)
            if krng.random() < 0.125 and (found := templates()):
                seen.update(found)
                try:
                    os.kill(found[0], signal.SIGKILL)
                    template_kills += 1
                except ProcessLookupError:
                    pass
            elif pids:
                try:
                    os.kill(krng.choice(sorted(pids)), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass

    with gilfree.Pool(workers) as pool:
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        for task_id in range(tasks):
            kind = rng.choices(("compute", "big", "locked", "slow"), weights=(6, 2, 2, 1))[0]
            kinds[task_id] = kind
            if kind == "compute":
                n = rng.randrange(1, 20_000)
                expected[task_id] = sum(i * i for i in range(n))
                futures[task_id] = pool.submit(compute, task_id, n)
            elif kind == "big":
                a = np.full(rng.choice((1, 2, 4)) * 250_000, float(task_id % 7))
                expected[task_id] = float(a.sum())
                futures[task_id] = pool.submit(big, task_id, a)
            elif kind == "slow":
                # Half of these outlive their timeout: the kill lands while the next task waits
                # in (or has just started in) the same worker.
                expected[task_id] = task_id
                seconds = rng.choice((0.0, 0.2))
                futures[task_id] = pool.submit(slow, task_id, seconds, timeout=0.1)
            else:
                expected[task_id] = task_id
                futures[task_id] = pool.submit(locked, task_id, lock, counter, 20_000)
        for fut in futures.values():
            fut.add_done_callback(lambda _f: finished.release())
        outcomes: dict[int, tuple[bool, object]] = {}
        deadline = time.monotonic() + 240
        for task_id, fut in futures.items():
            try:
                outcomes[task_id] = (
                    True,
                    fut.result(timeout=max(1.0, deadline - time.monotonic())),
                )
            except gilfree.WorkerCrashedError as exc:
                outcomes[task_id] = (False, exc)
            except TimeoutError as exc:
                if not fut.done():
                    raise AssertionError(f"seed {seed}: task {task_id} never resolved") from None
                assert kinds[task_id] == "slow", f"seed {seed}: task {task_id} timed out"
                outcomes[task_id] = (False, exc)
        done.set()
        thread.join()

    with open(os.environ[LOG_ENV]) as f:
        starts = Counter(int(line) for line in f if line.strip())
    ok = crashed = 0
    for task_id, (success, value) in outcomes.items():
        runs = starts.get(task_id, 0)
        if success:
            ok += 1
            assert value == expected[task_id], f"seed {seed}: task {task_id} gave {value!r}"
            assert runs == 1, f"seed {seed}: task {task_id} succeeded but started {runs} times"
        else:
            crashed += 1
            assert runs <= 1, f"seed {seed}: task {task_id} crashed and started {runs} times"
    locked_ok = sum(1 for t, (s, _) in outcomes.items() if s and kinds[t] == "locked")
    locked_started = sum(1 for t in outcomes if kinds[t] == "locked" and starts.get(t))
    assert locked_ok <= counter.value <= locked_started, (
        f"seed {seed}: counter {counter.value} outside [{locked_ok}, {locked_started}]"
    )
    # The test checks that every worker process seen is gone once this script has exited.
    seen.update(_runtime.worker_pids())
    seen.update(templates())
    print("pids", *sorted(seen), flush=True)
    print(
        f"CHAOS OK seed={seed} tasks={tasks} ok={ok} crashed={crashed} kills={kills}"
        f" template_kills={template_kills}",
        flush=True,
    )


if __name__ == "__main__":
    main()
