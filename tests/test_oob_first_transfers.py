"""The benchmark's first-transfers figure (``gilfree._bench.arrays``): a fresh process's first
round trips of new arrays, measured in a subprocess and reported beside the warm table."""

from __future__ import annotations

import pytest

from gilfree._bench import arrays

pytest.importorskip("numpy")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("preimport", [False, True])
def test_first_transfers_are_measured_in_a_fresh_process(preimport: bool) -> None:
    row = arrays.measure_cold(4, preimport, "t")
    assert len(row.firsts) == 5 and all(t > 0 for t in row.firsts)
    assert row.nbytes == 4 * 2**20 and row.warm_s > 0
    # The derived figures are the ones the targets name.
    assert row.gbps == pytest.approx(5 * 2 * row.nbytes / sum(row.firsts) / 1e9)
    assert row.slowest == pytest.approx(max(row.firsts) / row.warm_s)


def test_the_cold_table_sits_beside_the_warm_one_with_its_goal() -> None:
    warm = arrays.ArrayRow("gilfree.Pool.submit", 0.05, 16.0, 5, "views")
    fast = arrays.ColdRow("quick", [0.1, 0.1, 0.1, 0.1, 0.1], 0.05, 400 * 2**20, 1.0)
    slow = arrays.ColdRow("slow", [0.4, 0.1, 0.1, 0.1, 0.1], 0.05, 400 * 2**20, 9.0)
    text = arrays.render([fast, warm, slow], None, 400)
    assert "| gilfree.Pool.submit |" in text
    assert "### First transfers" in text
    assert "| quick | 0.100 0.100 0.100 0.100 0.100 | 8.39 | 2.0x | 16.8 | 1.0 |" in text
    assert (
        "- Goal (quick): ≥ 6 GB/s on average and no trip above 3x warm: 8.4 GB/s, 2.0x: **met**."
        in text
    )
    assert "- Goal (slow): " in text and text.split("Goal (slow)")[1].count("**missed**") == 1
    # The plot and warm goals see warm rows only.
    assert text.count("| quick |") == 1
