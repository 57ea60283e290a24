"""``import gilfree as threading``: threading's surface, identity inside a Worker, thread-only
objects refused at start(), shared state flagged at join(), and the corpus of threading
programs run under both modules."""

from __future__ import annotations

import inspect
import os
import queue
import re
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import dropin_helpers as dh
import pytest

import gilfree
from gilfree import _threading_api, worker

from conftest import WATCHDOG

CORPUS = Path(__file__).resolve().parent / "corpus"

THREADING_NAMES = [
    "Thread",
    "Lock",
    "RLock",
    "Condition",
    "Semaphore",
    "BoundedSemaphore",
    "Event",
    "Barrier",
    "Timer",
    "local",
    "current_thread",
    "main_thread",
    "get_ident",
    "get_native_id",
    "active_count",
    "enumerate",
    "excepthook",
    "TIMEOUT_MAX",
    "BrokenBarrierError",
]


@pytest.fixture(autouse=True)
def fresh_warnings() -> Iterator[None]:
    """SharedStateWarning is issued once per variable per process: each test starts afresh."""
    worker._warned.clear()
    yield
    worker._warned.clear()


def run_worker(target: object, *args: object, **kwargs: object) -> gilfree.Worker:
    w = gilfree.Worker(target=target, args=args, kwargs=kwargs)
    w.start()
    return w


# -- 1. the drop-in surface ---------------------------------------------------------------------


@pytest.mark.parametrize("name", THREADING_NAMES)
def test_threading_names_exist(name: str) -> None:
    assert hasattr(gilfree, name)
    assert name in dir(gilfree)


def test_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        gilfree.no_such_name  # noqa: B018


@pytest.mark.parametrize(
    "name",
    ["Thread", "Timer", "current_thread", "main_thread", "active_count", "enumerate"],
)
def test_signatures_match_threading(name: str) -> None:
    ours = inspect.signature(getattr(gilfree, name))
    theirs = inspect.signature(getattr(threading, name))
    # Worker's own keyword-only extras (after threading's, with defaults) break no call.
    extras = {"backend"} if name == "Thread" else set()
    for extra in extras:
        p = ours.parameters[extra]
        assert p.kind is p.KEYWORD_ONLY and p.default is None
    ours = ours.replace(parameters=[p for p in ours.parameters.values() if p.name not in extras])
    assert list(ours.parameters) == list(theirs.parameters)
    for p, q in zip(ours.parameters.values(), theirs.parameters.values(), strict=True):
        assert (p.kind, p.default) == (q.kind, q.default), name


def test_constants_are_threading_s() -> None:
    assert gilfree.TIMEOUT_MAX == threading.TIMEOUT_MAX
    assert gilfree.BrokenBarrierError is threading.BrokenBarrierError
    assert gilfree.Thread is gilfree.Worker


def test_import_gilfree_does_not_load_the_threading_surface() -> None:
    code = "import sys, gilfree; print('gilfree._threading_api' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WATCHDOG
    )
    assert out.stdout.strip() == "False", out.stderr


def test_current_thread_inside_a_worker_is_the_worker() -> None:
    w = gilfree.Thread(target=dh.identity, name="cruncher")
    w.start()
    name, threading_name, main_name, ident, native, is_main = w.join()
    assert name == threading_name == main_name == "cruncher"
    assert ident == w.ident and native == w.native_id
    assert is_main is False
    # In the parent, nothing changed.
    assert gilfree.current_thread() is threading.current_thread()
    assert gilfree.get_ident() == threading.get_ident()


def test_main_thread_name_is_restored_after_a_task() -> None:
    class Fake:
        name = "fake-worker"

    main = threading.main_thread()
    before = main.name
    saved = _threading_api._enter_task(Fake(), Fake.name)  # type: ignore[arg-type]
    try:
        assert main.name == "fake-worker"
        assert gilfree.current_thread().name == "fake-worker"
    finally:
        _threading_api._exit_task(saved)
    assert main.name == before
    assert gilfree.current_thread() is threading.current_thread()


def test_local_data_is_per_worker() -> None:
    # Several Workers in turn (so processes are reused): none sees another's value.
    for i in range(4):
        assert run_worker(dh.local_seen, f"w{i}").join() is None
    assert getattr(dh.LOCAL, "value", None) is None  # the parent's is its own


def test_local_captured_by_value_arrives_empty() -> None:
    data = gilfree.local()
    data.value = "parent"

    def peek() -> object:
        return getattr(data, "value", None)

    assert run_worker(peek).join() is None
    assert data.value == "parent"


def test_local_subclass_init_runs_again_for_each_worker() -> None:
    class Counted(gilfree.local):
        def __init__(self, start: int) -> None:
            self.n = start

    c = Counted(5)
    c.n = 100

    def bump_it() -> int:
        c.n += 1
        return c.n

    assert run_worker(bump_it).join() == 6
    assert c.n == 100
    # In another thread of this process, as threading.local does.
    seen = []
    t = threading.Thread(target=lambda: seen.append(c.n))
    t.start()
    t.join()
    assert seen == [5]


def test_local_reset_between_workers_in_one_process() -> None:
    dh.LOCAL.value = "left over"

    class Fake:
        name = "next"

    saved = _threading_api._enter_task(Fake(), Fake.name)  # type: ignore[arg-type]
    try:
        assert getattr(dh.LOCAL, "value", None) is None
    finally:
        _threading_api._exit_task(saved)


def test_enumerate_and_active_count_include_running_workers() -> None:
    go = gilfree.Event()
    w = run_worker(dh.wait_for, go)
    try:
        assert w in gilfree.enumerate()
        assert gilfree.active_count() == len(gilfree.enumerate())
        assert gilfree.active_count() > threading.active_count()
    finally:
        go.set()
        w.join()
    assert w not in gilfree.enumerate()


def test_enumerate_inside_a_worker_shows_the_worker() -> None:
    w = gilfree.Thread(target=dh.enumerate_names, name="counted")
    w.start()
    names, count = w.join()
    assert "counted" in names
    assert count == len(names)


@pytest.mark.parametrize("name", ["settrace", "setprofile"])
def test_trace_and_profile_hooks_refuse_loudly(name: str) -> None:
    with pytest.raises(NotImplementedError, match="worker process"):
        getattr(gilfree, name)(lambda *a: None)


def test_stack_size_reads_but_refuses_to_set() -> None:
    assert gilfree.stack_size() == threading.stack_size()
    with pytest.raises(NotImplementedError, match="stack"):
        gilfree.stack_size(1 << 20)


def test_timer_fires_and_cancel_stops_it() -> None:
    q = gilfree.Queue()
    fires = gilfree.Timer(0.0, dh.put, args=(q, "fired"))
    fires.start()
    fires.join()
    assert q.get(timeout=WATCHDOG) == "fired"

    cancelled = gilfree.Timer(3600.0, dh.put, args=(q, "too late"))
    cancelled.start()
    cancelled.cancel()
    cancelled.join()  # the watchdog fails this test if cancel() did not reach the worker
    assert q.empty()


# -- 2. thread-only objects fail at start() -----------------------------------------------------


def _thread_only() -> list[tuple[object, str, str]]:
    return [
        (queue.Queue(), "queue.Queue", "gilfree.Queue"),
        (queue.LifoQueue(), "queue.Queue", "gilfree.Queue"),
        (queue.SimpleQueue(), "queue.SimpleQueue", "gilfree.Queue"),
        (threading.Lock(), "threading.Lock", "gilfree.Lock"),
        (threading.RLock(), "threading.RLock", "gilfree.RLock"),
        (threading.Condition(), "threading.Condition", "gilfree.Condition"),
        (threading.Event(), "threading.Event", "gilfree.Event"),
        (threading.Semaphore(), "threading.Semaphore", "gilfree.Semaphore"),
        (threading.BoundedSemaphore(), "threading.BoundedSemaphore", "gilfree.BoundedSemaphore"),
        (threading.Barrier(2), "threading.Barrier", "gilfree.Barrier"),
        (threading.local(), "threading.local", "gilfree.local"),
    ]


@pytest.mark.parametrize("obj,what,instead", _thread_only(), ids=lambda v: str(v)[:20])
@pytest.mark.parametrize("how", ["args", "kwargs", "closure", "attribute", "nested"])
def test_thread_only_object_fails_at_start(obj: object, what: str, instead: str, how: str) -> None:
    def uses_it() -> object:
        return obj

    if how == "args":
        w = gilfree.Worker(target=dh.read_only, args=(obj,))
        where = "argument 0"
    elif how == "kwargs":
        w = gilfree.Worker(target=dh.read_only, kwargs={"q": obj})
        where = "keyword argument 'q'"
    elif how == "closure":
        w = gilfree.Worker(target=uses_it)
        where = "target's closure variable 'obj'"
    elif how == "attribute":
        w = gilfree.Worker(target=dh.read_only)
        w.channel = obj  # type: ignore[attr-defined]
        where = "attribute 'channel'"
    else:
        w = gilfree.Worker(target=dh.read_only, args=([1, {"deep": obj}],))
        where = "argument 0[1]['deep']"
    with pytest.raises(TypeError) as info:
        w.start()
    message = str(info.value)
    assert where in message and what in message and instead in message, message
    assert not w.is_alive()


def test_thread_only_class_attribute_fails_at_start() -> None:
    class Holder(gilfree.Worker):
        lock = threading.Lock()

        def run(self) -> None:
            pass

    with pytest.raises(
        TypeError, match=r"class attribute 'lock' is a threading\.Lock.*gilfree\.Lock"
    ):
        Holder().start()


def test_gilfree_equivalents_start_fine() -> None:
    q = gilfree.Queue()
    w = run_worker(dh.put, q, "ok")
    w.join()
    assert q.get(timeout=WATCHDOG) == "ok"


# -- 3. shared state is flagged at join() -------------------------------------------------------


@pytest.mark.parametrize(
    "target,args,name",
    [
        (dh.store_list, (1,), "RESULTS"),
        (dh.store_dict, ("k",), "BY_KEY"),
        (dh.store_set, (3,), "SEEN"),
        (dh.store_bytearray, (), "BUF"),
        (dh.calls_helper, (5,), "RESULTS"),
    ],
)
def test_module_container_changed_in_worker_warns(target: object, args: tuple, name: str) -> None:
    w = run_worker(target, *args)
    with pytest.warns(gilfree.SharedStateWarning, match=rf"'{name}' of dropin_helpers") as rec:
        w.join()
    message = str(rec[0].message)
    assert "return" in message.lower() and "self" in message and "gilfree." in message


def test_global_counter_rebound_warns_and_names_value() -> None:
    w = run_worker(dh.bump, gilfree.Lock())
    with pytest.warns(gilfree.SharedStateWarning, match=r"reassigned the global 'COUNTER'.*Value"):
        w.join()
    assert dh.COUNTER == 0


def test_closure_list_changed_in_worker_warns() -> None:
    seen: list[int] = []

    def work() -> None:
        seen.append(1)

    w = run_worker(work)
    with pytest.warns(gilfree.SharedStateWarning, match=r"list 'seen'"):
        w.join()
    assert seen == []


def test_closure_variable_rebound_warns() -> None:
    total = 0

    def work() -> None:
        nonlocal total
        total += 1

    w = run_worker(work)
    with pytest.warns(gilfree.SharedStateWarning, match=r"reassigned 'total'"):
        w.join()


def test_subclass_run_changing_a_global_warns() -> None:
    w = dh.AppendsGlobal()
    w.start()
    with pytest.warns(gilfree.SharedStateWarning, match="'SEEN'"):
        w.join()


def test_main_module_global_list_warns() -> None:
    # A target defined in a script's __main__ travels by value with its globals.
    script = (
        "import warnings, gilfree\n"
        "results = [0, 0]\n"
        "def work(i):\n"
        "    results[i] = 1\n"
        "w = gilfree.Worker(target=work, args=(1,))\n"
        "w.start()\n"
        "with warnings.catch_warnings(record=True) as rec:\n"
        "    warnings.simplefilter('always')\n"
        "    w.join()\n"
        "print(results, [str(r.message) for r in rec])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=WATCHDOG
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("[0, 0]")
    assert "list 'results' of __main__" in out.stdout


def test_warned_once_per_name() -> None:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for i in range(3):
            run_worker(dh.store_list, i).join()
    assert [r.category for r in rec] == [gilfree.SharedStateWarning]


def test_nothing_changed_nothing_warned() -> None:
    # pytest turns any warning into an error here.
    assert run_worker(dh.read_only).join() == 6
    keep: list[int] = [1]

    def reads() -> int:
        return len(keep)

    assert run_worker(reads).join() == 1


def test_attributes_on_self_do_not_warn() -> None:
    class KeepsOnSelf(gilfree.Worker):
        def run(self) -> None:
            self.out = [1, 2]

    w = KeepsOnSelf()
    w.start()
    w.join()
    assert w.out == [1, 2]


def test_warning_with_an_exception_in_run_still_raises_it() -> None:
    bag: dict[str, int] = {}

    def work() -> None:
        bag["x"] = 1
        raise ValueError("boom")

    w = run_worker(work)
    with pytest.warns(gilfree.SharedStateWarning, match="'bag'"), pytest.raises(ValueError):
        w.join()


# -- 4. the corpus ------------------------------------------------------------------------------

PROGRAMS = sorted(p for p in CORPUS.glob("*.py"))


def _run(source: str, path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(source)
    env = dict(os.environ, PYTHONWARNINGS="default")
    return subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=WATCHDOG, env=env
    )


def as_gilfree(source: str) -> str:
    """The program with ``import threading`` replaced by ``import gilfree as threading``."""
    new, n = re.subn(r"^import threading$", "import gilfree as threading", source, flags=re.M)
    assert n == 1, "each corpus program imports threading once, on its own line"
    return new


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.stem)
def test_corpus_program_same_answer_or_loud(program: Path, tmp_path: Path) -> None:
    source = program.read_text()
    expect = re.match(r"# expect: (same|warned|refused)\n", source)
    assert expect, f"{program.name} must start with '# expect: same|warned|refused'"
    plain = _run(source, tmp_path / "plain.py")
    assert plain.returncode == 0, plain.stderr
    ours = _run(as_gilfree(source), tmp_path / "ours.py")

    if ours.returncode != 0:
        outcome = "refused"
        assert "TypeError" in ours.stderr and "gilfree." in ours.stderr, ours.stderr
    elif "SharedStateWarning" in ours.stderr:
        outcome = "warned"
    else:
        outcome = "same"
        # Never a different answer in silence.
        assert ours.stdout == plain.stdout, (ours.stdout, plain.stdout, ours.stderr)
    assert outcome == expect.group(1), (ours.stdout, ours.stderr)


# -- 5. docs/shared-state.md --------------------------------------------------------------------

DOC_BLOCKS = re.findall(
    r"```python\n(.*?)```", (CORPUS.parent.parent / "docs" / "shared-state.md").read_text(), re.S
)


@pytest.mark.parametrize("code", DOC_BLOCKS, ids=[f"block{i}" for i in range(len(DOC_BLOCKS))])
def test_shared_state_doc_examples_print_what_they_say(code: str, tmp_path: Path) -> None:
    """Each example prints what its last ``print(...)  # <answer>`` comment says, and only the
    one that shows the mistake warns."""
    expected = re.findall(r"^print\(.*\)  # (\[[^\]]*\]|\d+)", code, re.M)
    assert len(expected) == 1, "each example ends in one print with its answer as a comment"
    res = _run(code, tmp_path / "example.py")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == expected[0]
    warns = "SharedStateWarning" in res.stderr
    assert warns == ("import gilfree as threading" in code), res.stderr


def test_module_level_primitives_are_the_same_objects_in_workers() -> None:
    # A helper module imported by name: a worker process runs its top-level code again, and
    # must get the parent's objects, not new ones (a thread would see the same ones).
    import module_level_objects as m

    m.started.set()
    w = gilfree.Worker(target=m.handles)
    w.start()
    assert w.join() == m.handles()
    with gilfree.Pool(2) as pool:
        assert pool.submit(m.see_and_change).result(timeout=60) == (True, 1)
    assert m.counter.value == 1
    assert m.queue.get(timeout=60) == "from the worker"
