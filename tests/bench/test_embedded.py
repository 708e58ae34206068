"""The bench's embedded comparison (bench/claims.py): the ways to claim take turns in
rounds, each claiming its own tasks once, and the table gives each ratio to the raw
compare-and-set of the same rounds."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
from claims import BOARD, FABRIC, RAW, SIGN, SIGNED, VERIFY, embedded, embedded_rows


def test_every_way_takes_its_turn_in_every_round_and_the_table_compares_like_with_like() -> None:
    runs = embedded(30, rounds=3)  # a claim of a task taken twice would fail the round
    assert [run.synchronous for run in runs] == ["NORMAL", "FULL"]
    for run in runs:
        for way in (BOARD, FABRIC, SIGNED, RAW, SIGN, VERIFY):
            assert [len(samples) for samples in run.rounds[way]] == [10, 10, 10]
            assert all(sample > 0 for sample in run.pooled(way))
    rows = dict(embedded_rows(runs))
    assert set(rows) >= {
        f"{way}, {sync}" for way in (BOARD, FABRIC, SIGNED, RAW) for sync in ("NORMAL", "FULL")
    }
    for sync in ("NORMAL", "FULL"):
        default = rows[f"embedded fabric claim (the default) p50 vs raw p50, {sync}"]
        assert "over 3 rounds" in default
        assert default.endswith("(aim: within 3x)")
        assert any(word in default for word in ("met", "missed", "not decided"))
        signed = rows[f"embedded signed claim (signed=True) p50 vs raw p50, {sync}"]
        assert "over 3 rounds" in signed
        assert "aim" not in signed  # the aim is judged on the default
        floor = rows[
            f"floor of a signed claim (board claim + sign + verify) p50 vs raw p50, {sync}"
        ]
        assert "aim" not in floor  # a floor is explained, not judged
