"""The pickling policy: plain pickle where a worker can import by name, cloudpickle otherwise."""

from __future__ import annotations

import pickle
import threading

import pytest

from gilfree import _serialize


def test_plain_pickle_for_importable_objects() -> None:
    obj = {"a": [1, 2.5, "x"], "f": len}
    blob = _serialize.dumps(obj)
    assert blob == pickle.dumps(obj, protocol=5)
    assert _serialize.loads(blob) == obj


def test_lambdas_and_closures_go_by_value() -> None:
    k = 3
    blob = _serialize.dumps(lambda x: x * k)
    assert _serialize.loads(blob)(2) == 6


def test_main_module_objects_are_refused_by_the_plain_pickler() -> None:
    ns: dict[str, object] = {"__name__": "__main__"}
    exec("class C:\n    pass\n", ns)
    cls = ns["C"]
    assert cls.__module__ == "__main__"  # type: ignore[attr-defined]
    blob = _serialize.dumps(cls)
    # Travelled by value: loading it needs no module called __main__ to define C.
    assert b"cloudpickle" in blob


def test_unpicklable_raises_and_describe_names_the_object() -> None:
    lock = threading.Lock()
    with pytest.raises(TypeError) as info:
        _serialize.dumps(lock)
    text = _serialize.describe_failure(lock, info.value)
    assert "lock" in text and "TypeError" in text
