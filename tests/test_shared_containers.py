"""gilfree.SharedList and gilfree.SharedDict: list/dict parity, sharing between processes,
pickling by reference, a killed mutator, and lifetime."""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import container_helpers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gilfree
from gilfree import _runtime

WATCHDOG = container_helpers.WATCHDOG

# --- parity with list and dict on random operation sequences ---------------------------------

_values = st.one_of(
    st.integers(-5, 5), st.text(max_size=3), st.lists(st.integers(0, 3), max_size=3)
)
_index = st.integers(-6, 6)
_list_ops = st.one_of(
    st.tuples(st.just("append"), _values),
    st.tuples(st.just("extend"), st.lists(_values, max_size=3)),
    st.tuples(st.just("insert"), _index, _values),
    st.tuples(st.just("pop"), _index),
    st.tuples(st.just("pop_last")),
    st.tuples(st.just("setitem"), _index, _values),
    st.tuples(st.just("delitem"), _index),
    st.tuples(st.just("getitem"), _index),
    st.tuples(st.just("slice_get"), _index, _index),
    st.tuples(st.just("slice_set"), _index, _index, st.lists(_values, max_size=3)),
    st.tuples(st.just("slice_del"), _index, _index),
    st.tuples(st.just("remove"), _values),
    st.tuples(st.just("contains"), _values),
    st.tuples(st.just("index"), _values),
    st.tuples(st.just("count"), _values),
    st.tuples(st.just("reverse")),
    st.tuples(st.just("clear")),
    st.tuples(st.just("iadd"), st.lists(_values, max_size=2)),
)


def _apply_list(target: Any, op: tuple[Any, ...]) -> Any:
    name, *args = op
    if name == "append":
        return target.append(args[0])
    if name == "extend":
        return target.extend(args[0])
    if name == "insert":
        return target.insert(args[0], args[1])
    if name == "pop":
        return target.pop(args[0])
    if name == "pop_last":
        return target.pop()
    if name == "setitem":
        target[args[0]] = args[1]
        return None
    if name == "delitem":
        del target[args[0]]
        return None
    if name == "getitem":
        return target[args[0]]
    if name == "slice_get":
        return target[args[0] : args[1]]
    if name == "slice_set":
        target[args[0] : args[1]] = args[2]
        return None
    if name == "slice_del":
        del target[args[0] : args[1]]
        return None
    if name == "remove":
        return target.remove(args[0])
    if name == "contains":
        return args[0] in target
    if name == "index":
        return target.index(args[0])
    if name == "count":
        return target.count(args[0])
    if name == "reverse":
        return target.reverse()
    if name == "clear":
        return target.clear()
    if name == "iadd":
        target += args[0]
        return None
    raise AssertionError(name)


def _outcome(apply: Any, target: Any, op: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        return ("ok", apply(target, op))
    except (IndexError, ValueError, KeyError) as exc:
        return ("raised", type(exc))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial=st.lists(_values, max_size=5), ops=st.lists(_list_ops, max_size=25))
def test_shared_list_behaves_like_list(initial: list[Any], ops: list[Any]) -> None:
    plain = list(initial)
    shared = gilfree.SharedList(initial)
    other_handle = pickle.loads(pickle.dumps(shared))  # a second handle: sees every change
    for op in ops:
        expected = _outcome(_apply_list, plain, op)
        got = _outcome(_apply_list, shared, op)
        assert got == expected, op
        assert shared == plain and other_handle == plain, op
        assert len(other_handle) == len(plain)
        assert list(other_handle) == plain
        assert list(reversed(shared)) == plain[::-1]
    assert shared.copy() == plain and type(shared.copy()) is list
    assert repr(shared) == f"SharedList({plain!r})"


_keys = st.one_of(st.integers(0, 6), st.sampled_from(["a", "b", "c"]))
_dict_ops = st.one_of(
    st.tuples(st.just("setitem"), _keys, _values),
    st.tuples(st.just("getitem"), _keys),
    st.tuples(st.just("delitem"), _keys),
    st.tuples(st.just("get"), _keys),
    st.tuples(st.just("get_default"), _keys, _values),
    st.tuples(st.just("setdefault"), _keys, _values),
    st.tuples(st.just("update"), st.dictionaries(_keys, _values, max_size=3)),
    st.tuples(st.just("update_kw"), st.dictionaries(st.sampled_from(["a", "z"]), _values)),
    st.tuples(st.just("pop"), _keys),
    st.tuples(st.just("pop_default"), _keys, _values),
    st.tuples(st.just("popitem")),
    st.tuples(st.just("contains"), _keys),
    st.tuples(st.just("views")),
    st.tuples(st.just("clear")),
)


def _apply_dict(target: Any, op: tuple[Any, ...]) -> Any:
    name, *args = op
    if name == "setitem":
        target[args[0]] = args[1]
        return None
    if name == "getitem":
        return target[args[0]]
    if name == "delitem":
        del target[args[0]]
        return None
    if name == "get":
        return target.get(args[0])
    if name == "get_default":
        return target.get(args[0], args[1])
    if name == "setdefault":
        return target.setdefault(args[0], args[1])
    if name == "update":
        return target.update(args[0])
    if name == "update_kw":
        return target.update(**args[0])
    if name == "pop":
        return target.pop(args[0])
    if name == "pop_default":
        return target.pop(args[0], args[1])
    if name == "popitem":
        return target.popitem()
    if name == "contains":
        return args[0] in target
    if name == "views":
        return list(target.keys()), list(target.values()), list(target.items()), list(target)
    if name == "clear":
        return target.clear()
    raise AssertionError(name)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial=st.dictionaries(_keys, _values, max_size=4), ops=st.lists(_dict_ops, max_size=25))
def test_shared_dict_behaves_like_dict(initial: dict[Any, Any], ops: list[Any]) -> None:
    plain = dict(initial)
    shared = gilfree.SharedDict(initial)
    other_handle = pickle.loads(pickle.dumps(shared))
    for op in ops:
        expected = _outcome(_apply_dict, plain, op)
        got = _outcome(_apply_dict, shared, op)
        assert got == expected, op
        assert shared == plain and other_handle == plain, op
        assert list(other_handle.items()) == list(plain.items())  # insertion order too
        assert len(other_handle) == len(plain)
    assert shared.copy() == plain and type(shared.copy()) is dict
    assert repr(shared) == f"SharedDict({plain!r})"


def test_log_compaction_keeps_every_handle_exact() -> None:
    # Enough changes to compact the log several times (past 64 KiB each), with a second handle
    # that follows them part of the way and one that only looks at the end.
    shared, d = gilfree.SharedList(), gilfree.SharedDict()
    follower, late = pickle.loads(pickle.dumps(shared)), pickle.loads(pickle.dumps(d))
    plain: list[Any] = []
    for i in range(3000):
        item = f"{i:05d}" * 20
        shared.append(item)
        plain.append(item)
        d[i % 50] = item
        if i % 7 == 0:
            del shared[0]
            del plain[0]
        if i % 250 == 0:
            assert follower == plain
    assert follower == plain and shared == plain
    assert late == {k: f"{i:05d}" * 20 for i in range(2950, 3000) for k in [i % 50]}
    # 3000 records of ~140 bytes were written to the dict's log; compaction kept it near twice
    # its contents (50 values) plus 64 KiB.
    assert len(d._blob) < 100_000


def test_iteration_walks_a_snapshot() -> None:
    shared = gilfree.SharedList(range(3))
    # A live iterator would never end: every step appends an item.
    assert [x for x in shared if shared.append(x) is None] == [0, 1, 2]
    d = gilfree.SharedDict(a=1)
    for k in d:
        d[k + "x"] = 0
    assert d == {"a": 1, "ax": 0}


def test_threads_of_one_process_share_one_copy_without_double_replay() -> None:
    shared = gilfree.SharedList()
    twin = pickle.loads(pickle.dumps(shared))  # written by this process through another handle
    errors: list[BaseException] = []

    def write(start: int) -> None:
        try:
            for i in range(start, start + 400):
                twin.append(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read() -> None:
        try:
            last = 0
            while last < 800:
                n = len(shared)  # replays what the writers appended, from several threads
                assert n >= last
                last = n
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k * 400,)) for k in range(2)]
    threads += [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WATCHDOG)
    assert not errors, errors
    assert sorted(shared) == list(range(800)) and len(twin) == 800


def test_constructors_take_what_list_and_dict_take() -> None:
    assert gilfree.SharedList() == []
    assert gilfree.SharedList(range(3)) == [0, 1, 2]
    assert gilfree.SharedDict() == {}
    assert gilfree.SharedDict([("a", 1)], b=2) == {"a": 1, "b": 2}
    assert gilfree.SharedDict(gilfree.SharedDict(x=1)) == {"x": 1}
    assert gilfree.SharedList([1]) == gilfree.SharedList([1])
    assert gilfree.SharedList([1]) != gilfree.SharedList([2])
    assert gilfree.SharedList([1]) != (1,)
    assert gilfree.SharedDict(a=1) != {"a": 2}


def test_sort_matches_list_sort() -> None:
    words = ["pear", "fig", "apple", "kiwi", "date"]
    shared = gilfree.SharedList(words)
    shared.sort()
    words.sort()
    assert shared == words
    shared.sort(key=len, reverse=True)  # stable: equal lengths keep their order
    words.sort(key=len, reverse=True)
    assert shared == words


def test_containers_are_unhashable_like_list_and_dict() -> None:
    with pytest.raises(TypeError):
        hash(gilfree.SharedList())
    with pytest.raises(TypeError):
        hash(gilfree.SharedDict())


def test_items_are_copies_nested_mutation_does_not_reach_shared_memory() -> None:
    shared = gilfree.SharedList([[1]])
    shared[0].append(2)  # changes a copy, as the docs say
    assert shared == [[1]]
    item = shared[0]
    item.append(2)
    shared[0] = item  # writing it back does
    assert shared == [[1, 2]]


def test_unpicklable_item_fails_at_the_call_and_changes_nothing() -> None:
    shared = gilfree.SharedList([1])
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        shared.append(lambda: 0)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        gilfree.SharedDict()["k"] = lambda: 0
    assert shared == [1]
    shared.append(2)  # the lock was not left held
    assert shared == [1, 2]


def test_failed_mutation_leaves_contents_and_lock_alone() -> None:
    shared, d = gilfree.SharedList([1, 2]), gilfree.SharedDict(a=1)
    with pytest.raises(IndexError):
        shared.pop(5)
    with pytest.raises(KeyError):
        del d["missing"]
    with pytest.raises(ValueError):
        shared.remove(9)
    assert shared == [1, 2] and d == {"a": 1}
    assert shared.get_lock().acquire(False)
    shared.get_lock().release()


# --- sharing between processes ----------------------------------------------------------------


def test_workers_mutating_concurrently_get_exact_totals() -> None:
    counts, log = gilfree.SharedDict(n=0), gilfree.SharedList()
    times, n_workers = 150, 4
    workers = [
        gilfree.Worker(target=container_helpers.count_up, args=(counts, log, i, times))
        for i in range(n_workers)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(WATCHDOG)
        assert not w.is_alive()
    assert counts["n"] == times * n_workers
    assert {i: counts[i] for i in range(n_workers)} == dict.fromkeys(range(n_workers), times)
    assert len(log) == times * n_workers
    assert sorted(log) == sorted(list(range(n_workers)) * times)


def test_worker_attribute_is_the_same_container() -> None:
    shared = gilfree.SharedDict(seed=1)
    w = container_helpers.Filler(shared)
    w.start()
    assert w.join(WATCHDOG) == 3
    assert shared == {"seed": 1, "from_worker": [1, 2, 3], "counter": 0}
    shared["after"] = True  # the object the worker sent back is the same container
    assert w.shared == shared and w.shared["after"] is True


def test_pool_tasks_get_the_container_by_reference() -> None:
    shared = gilfree.SharedList(["start"])
    with gilfree.Pool(2) as pool:
        futures = [
            pool.submit(container_helpers.append_all, shared, [f"{i}-{j}" for j in range(20)])
            for i in range(4)
        ]
        for f in futures:
            f.result(WATCHDOG)
        assert list(pool.map(container_helpers.length, [shared, shared])) == [81, 81]
    assert len(shared) == 81
    assert sorted(shared[1:]) == sorted(f"{i}-{j}" for i in range(4) for j in range(20))


def test_pickle_sends_a_handle_not_the_contents() -> None:
    shared = gilfree.SharedList([b"x" * 200_000])
    blob = pickle.dumps(shared)
    assert len(blob) < 1000
    twin = pickle.loads(blob)
    twin.append(1)
    assert shared[-1] == 1 and len(shared) == 2


def test_killed_mutator_leaves_the_container_consistent() -> None:
    shared, ready, go = gilfree.SharedList([0]), gilfree.Event(), gilfree.Event()
    w = gilfree.Worker(target=container_helpers.hold_lock_and_wait, args=(shared, ready, go))
    w.start()
    assert ready.wait(WATCHDOG)
    os.kill(w.native_id, signal.SIGKILL)  # it holds the lock, waiting on `go`
    with pytest.raises(gilfree.WorkerCrashedError):
        w.join(WATCHDOG)
    with pytest.warns(gilfree.OwnerDiedError):
        shared.append("after")
    assert shared == [0, "committed", "after"]
    shared.append("again")  # no second warning (filterwarnings = error would raise)
    assert shared == [0, "committed", "after", "again"]


def test_killed_mutator_with_warnings_as_errors_raises_once_and_frees_the_lock() -> None:
    shared_list, ready, go = gilfree.SharedList(), gilfree.Event(), gilfree.Event()
    w = gilfree.Worker(target=container_helpers.hold_lock_and_wait, args=(shared_list, ready, go))
    w.start()
    assert ready.wait(WATCHDOG)
    os.kill(w.native_id, signal.SIGKILL)
    with pytest.raises(gilfree.WorkerCrashedError):
        w.join(WATCHDOG)
    with pytest.raises(gilfree.OwnerDiedError):  # filterwarnings = error
        shared_list.append("lost")
    assert shared_list == ["committed"]
    shared_list.append("next")
    assert shared_list == ["committed", "next"]


# --- lifetime -----------------------------------------------------------------------------------


def test_memory_is_freed_when_the_last_handle_goes() -> None:
    arena = _runtime.arena()
    _runtime.engine()  # the engine's own slots (made when it starts) are not the list's
    gc.collect()  # earlier tests' garbage goes now, not between the two counts
    slots, chunks = arena.live_slots(), arena.heap_chunks_in_use()
    shared = gilfree.SharedList([b"x" * 100_000, b"y" * 100_000])  # several heap chunks
    assert arena.heap_chunks_in_use() > chunks
    with gilfree.Pool(1) as pool:
        assert pool.submit(container_helpers.length, shared).result(WATCHDOG) == 2
    twin = pickle.loads(pickle.dumps(shared))
    del shared
    assert twin[0] == b"x" * 100_000  # the twin still holds it
    del twin
    # At most as many as before: other tests' primitives may still be going away meanwhile
    # (their owners' deaths are seen by the engine), never ours staying.
    assert arena.live_slots() <= slots
    assert arena.heap_chunks_in_use() <= chunks


# --- the benchmark part -------------------------------------------------------------------------


def test_containers_bench_part_writes_its_section_beside_manager(tmp_path: Path) -> None:
    # In a fresh interpreter: the Manager's forkserver must not outlive the run.
    out = tmp_path / "out"
    out.mkdir()
    (out / "RESULTS.md").write_text("# Benchmark results\n\nkept\n", encoding="utf-8")
    command = ["-m", "gilfree", "bench", "--quick", "--only", "containers", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        timeout=WATCHDOG,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    text = (out / "RESULTS.md").read_text(encoding="utf-8")
    assert "kept" in text and "<!-- containers:start -->" in text
    section = text.split("<!-- containers:start -->")[1]
    for library in ("list/dict (threads)", "multiprocessing.Manager", "gilfree.SharedList/Dict"):
        assert section.count(f"| {library} |") == 6, library
