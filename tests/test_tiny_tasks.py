"""Tiny tasks on the process backend: a chunk of ``fn(item)`` / ``fn(*item)`` calls runs in the
engine's loop, and a plain result (None, bool, an int of 64 bits, float, str, bytes) travels as
a frame the engine writes and reads itself (``crates/gilfree-py/src/values.rs``). What must hold:
every value comes back as itself, of its own type; whatever is not plain still travels by pickle
in the same chunk; an exception fails its own item, with its traceback; and a worker's death
mid-chunk still loses no finished result, nor runs anything twice."""

from __future__ import annotations

import enum
import fractions
import math
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gilfree
from gilfree import _engine, _protocol

import helpers
from conftest import crash_mid_map


@pytest.fixture
def pool() -> Iterator[gilfree.Pool]:
    with gilfree.Pool(2) as p:
        yield p


class Color(enum.IntEnum):
    RED = 1


class Text(str):
    pass


# Plain values at their edges, and values that look plain but are not (subclasses, ints beyond
# 64 bits, a str with a lone surrogate, complex): each must come back equal and of its type.
VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    2**63,
    -(2**63) - 1,
    2**200,
    0.0,
    -0.0,
    1.5,
    float("inf"),
    float("-inf"),
    float("nan"),
    5e-324,
    "",
    "héllo ✓",
    "\x00",
    "lone \ud800 surrogate",
    b"",
    b"\x00\xff" * 100,
    "x" * 100_000,
    Color.RED,
    Text("sub"),
    complex(1, 2),
    [1, "two"],
    (3,),
]


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    return bool(a == b)


def test_every_value_comes_back_as_itself(pool: gilfree.Pool) -> None:
    # Default chunking, chunks of one, of three, and fn(*item) with two iterables.
    n = len(VALUES)
    for chunksize in (None, 1, 3):
        got = list(pool.map(VALUES.__getitem__, range(n), chunksize=chunksize))
        bad = [(i, VALUES[i], g) for i, g in enumerate(got) if not _same(VALUES[i], g)]
        assert len(got) == n and not bad, bad
    got = list(pool.map(helpers.pick, [VALUES] * n, range(n)))
    bad = [(i, VALUES[i], g) for i, g in enumerate(got) if not _same(VALUES[i], g)]
    assert not bad, bad


def test_plain_value_frames_are_read_only_when_whole() -> None:
    # A frame: a tag, then the value (``values.rs``); what does not parse is not a value.
    assert _engine.decode_value(b"\x01") == (True, None)
    assert _engine.decode_value(b"\x03") == (True, True)
    assert _engine.decode_value(b"\x04" + struct.pack("<q", -5)) == (True, -5)
    assert _engine.decode_value(b"\x06" + "é".encode()) == (True, "é")
    assert _engine.decode_value(b"\x01x") == (False, None)  # None with bytes after it
    assert _engine.decode_value(b"\x04\x00") == (False, None)  # a short int
    assert _engine.decode_value(b"\x06\xff") == (False, None)  # not UTF-8
    assert _engine.decode_value(b"\x80\x05N.") == (False, None)  # a pickle stream
    # No other frame of the protocol is taken for a plain value.
    assert _engine.decode_value(_protocol.FAILED + b"\x80\x05N.") == (False, None)
    assert _engine.decode_value(_engine.BULK_MAGIC + bytes(8)) == (False, None)


def test_an_exception_fails_its_own_item_with_its_traceback(pool: gilfree.Pool) -> None:
    it = pool.map(helpers.fail_at_7, range(1000))
    got = [next(it) for _ in range(7)]
    assert got == [i * i for i in range(7)]
    with pytest.raises(ValueError, match="item 7") as info:
        next(it)
    assert "fail_at_7" in str(info.value.__cause__)
    # The items after it still run on the same pool, and a later call works.
    assert list(pool.map(helpers.fail_at_7, range(7))) == [i * i for i in range(7)]


def test_stop_iteration_from_the_function_fails_that_item(pool: gilfree.Pool) -> None:
    # The engine's loop calls fn itself: a StopIteration raised by fn is that item's exception,
    # never the end of the chunk (which would lose the items after it).
    it = pool.map(helpers.stop_at_3, range(50))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises((StopIteration, RuntimeError)):
        next(it)


def test_a_crash_mid_chunk_loses_no_finished_result(pool: gilfree.Pool, tmp_path: Path) -> None:
    # Default chunking: once the items prove tiny the chunks grow to hundreds of items, and
    # each result is in the ring as soon as it returns.
    crash_at = 2500
    runs = crash_mid_map(pool, tmp_path / "runs.txt", 3000, crash_at)
    counts = {x: runs.count(x) for x in set(runs)}
    assert all(c == 1 for c in counts.values()), {x: c for x, c in counts.items() if c != 1}
    assert set(range(crash_at + 1)) <= set(runs)


def test_a_later_map_of_the_same_function_starts_from_its_measured_speed(
    pool: gilfree.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gilfree import _dispatch

    cuts: list[int] = []
    cut = _dispatch._Results._cut

    def record(self: Any, first: int, items: list[Any], prior: int = 0) -> None:
        cuts.append(len(items))
        cut(self, first, items, prior)

    monkeypatch.setattr(_dispatch._Results, "_cut", record)
    assert list(pool.map(helpers.square, range(2000))) == [i * i for i in range(2000)]
    # Unknown speed: the first window measures single items.
    assert cuts[:4] == [1, 1, 1, 1]
    cuts.clear()
    assert list(pool.map(helpers.square, range(2000))) == [i * i for i in range(2000)]
    # Known: chunks grow from the first window on (4 items, then 4x per chunk), no round trip
    # of single items first.
    assert cuts[:3] == [4, 16, 64], cuts
    # Another function is measured afresh.
    cuts.clear()
    assert list(pool.map(helpers.fail_at_7, range(7))) == [i * i for i in range(7)]
    assert cuts[0] == 1


def test_chunks_of_one_keep_every_item_at_its_place(pool: gilfree.Pool) -> None:
    """``chunksize=1`` cuts a window's worth of one-item chunks at once: plain items, other
    picklable ones and an unpicklable one each keep their place, in one-argument and
    several-argument calls."""
    mixed = [1, fractions.Fraction(1, 3), "s", 2.5, None, b"x", (1, 2), 7] * 40
    assert list(pool.map(repr, mixed, chunksize=1)) == [repr(x) for x in mixed]
    a, b = list(range(300)), list(range(300, 600))
    assert list(pool.map(helpers.add, a, b, chunksize=1)) == [
        x + y for x, y in zip(a, b, strict=True)
    ]
    with_lock = [*mixed[:50], threading.Lock(), *mixed[50:]]
    it = pool.map(repr, with_lock, chunksize=1)
    assert [next(it) for _ in range(50)] == [repr(x) for x in mixed[:50]]
    with pytest.raises(TypeError, match="pickle"):
        next(it)
