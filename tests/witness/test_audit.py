"""Audits of a log edited by hand, against its own checkpoints and one kept outside it."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import nacl.signing
import pytest

from infrafabric.witness.audit import AuditReport, audit_log
from infrafabric.witness.checkpoint import (
    Checkpoint,
    open_checkpoint,
    sign_checkpoint,
    verifier_key,
)
from infrafabric.witness.entry import WitnessEntry, encode_entry
from infrafabric.witness.log import WitnessLog

ORIGIN = "example.org/log"
SIGNER = nacl.signing.SigningKey.generate()
KEY = verifier_key(ORIGIN, bytes(SIGNER.verify_key))


def _entries(first: int, count: int, event: str = "task.created") -> list[bytes]:
    return [
        encode_entry(
            WitnessEntry(
                index=index,
                component="board",
                event=event,
                at="2026-11-30T12:00:00.000Z",
                payload={"usd": 0.5},
            )
        )
        for index in range(first, first + count)
    ]


def _sign(log: WitnessLog) -> Checkpoint:
    """Sign and keep a checkpoint of the log as it is; returns it (kept outside, too)."""
    note = sign_checkpoint(Checkpoint(ORIGIN, log.size, log.root()), ORIGIN, SIGNER)
    log.save_checkpoint(log.size, note)
    return open_checkpoint(note, KEY)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A log of 40 entries with checkpoints at 16 and 40."""
    log = WitnessLog(tmp_path / "witness.db", synchronous="NORMAL")
    log.append(_entries(0, 16))
    _sign(log)
    log.append(_entries(16, 24))
    _sign(log)
    log.close()
    return tmp_path / "witness.db"


def _edit(path: Path, *statements: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        for statement in statements:
            db.execute(statement)
        db.commit()


def test_an_entry_edited_into_text_is_named(path: Path) -> None:
    """``replace()`` on a BLOB stores TEXT: the audit reads its bytes and names it."""
    _edit(path, "UPDATE entries SET entry = replace(entry, '0.5', '0.05') WHERE idx = 10")
    log = WitnessLog(path)
    report = audit_log(log, KEY)
    log.close()
    assert not report.ok
    assert report.first_bad_index == 10


def _truncate(path: Path, size: int) -> None:
    """Cut the log to ``size`` entries with every subtree and checkpoint past it: what
    someone who can write the file but not sign would do to hide the end."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("DELETE FROM entries WHERE idx >= ?", (size,))
        db.execute("DELETE FROM nodes WHERE (idx + 1) << level > ?", (size,))
        db.execute("DELETE FROM checkpoints WHERE size > ?", (size,))
        db.commit()


def test_a_log_truncated_with_its_checkpoints_is_caught_only_by_a_saved_one(path: Path) -> None:
    log = WitnessLog(path)
    saved = open_checkpoint(log.checkpoint_at(40) or "", KEY)
    log.close()
    _truncate(path, 30)
    log = WitnessLog(path)
    assert audit_log(log, KEY).ok  # nothing inside the log shows it
    report = audit_log(log, KEY, saved)
    log.close()
    assert not report.ok
    assert report.first_bad_index == 30
    assert "only 30 remain: the log was truncated" in report.problems[0]


def test_a_log_rewritten_past_its_last_kept_checkpoint_is_caught_by_a_saved_one(
    path: Path,
) -> None:
    log = WitnessLog(path)
    saved = open_checkpoint(log.checkpoint_at(40) or "", KEY)
    log.close()
    _truncate(path, 20)
    log = WitnessLog(path)
    log.append(_entries(20, 25, event="task.cancelled"))  # another story, and longer
    assert audit_log(log, KEY).ok
    report = audit_log(log, KEY, saved)
    log.close()
    assert not report.ok
    assert report.first_bad_index == 16  # the end of what the checkpoint at 16 vouches for
    assert "do not give the saved checkpoint's root: the log was rewritten" in report.problems[0]


def test_an_intact_log_agrees_with_a_saved_checkpoint(path: Path) -> None:
    log = WitnessLog(path)
    saved = open_checkpoint(log.checkpoint_at(16) or "", KEY)
    assert audit_log(log, KEY, saved).ok
    log.close()


@pytest.mark.parametrize(
    ("level", "index", "first", "cannot_grow"),
    [(1, 17, 34, False), (3, 4, 32, True), (4, 0, 0, False)],
    ids=["inside", "on-the-right-edge", "under-a-checkpoint"],
)
def test_a_missing_subtree_is_damage_within_its_entries(
    path: Path, level: int, index: int, first: int, cannot_grow: bool
) -> None:
    """Every complete subtree above the leaves is stored: without one the log cannot
    prove the entries below it (nor grow, if it is on the right edge of 32 + 8)."""
    _edit(path, f"DELETE FROM nodes WHERE level = {level} AND idx = {index}")  # noqa: S608
    log = WitnessLog(path)
    assert bool(log.damaged) == cannot_grow
    report = audit_log(log, KEY)
    log.close()
    assert not report.ok
    assert report.first_bad_index == first
    assert f"subtree {level}/{index} (entries {first} to" in " ".join(report.problems)
    if cannot_grow:
        assert report.problems[0] == "the log cannot grow: the witness log lacks subtree 3/4"


def test_a_stray_entry_row_at_a_negative_index_is_reported_and_the_log_still_grows(
    path: Path,
) -> None:
    _edit(path, "INSERT INTO entries (idx, leaf, entry) VALUES (-1, x'00', x'00')")
    log = WitnessLog(path)
    assert (log.size, log.damaged) == (40, "")  # one past the highest entry, not the rows
    report = audit_log(log, KEY)
    assert not report.ok
    assert report.first_bad_index is None  # no entry of the log is wrong
    assert report.problems == [
        "1 entry rows at negative indexes (the highest -1), outside the log:"
        " it holds 41 entry rows for 40 entries"
    ]
    assert log.append(_entries(40, 2)) == range(40, 42)
    log.close()


def test_an_entry_row_far_past_the_end_is_reported_as_missing_entries(path: Path) -> None:
    """A row more than a page of the audit past the end: the entries between are missing
    (the log's size is one past it, and it cannot grow)."""
    _edit(path, "INSERT INTO entries (idx, leaf, entry) VALUES (1000000, x'00', x'00')")
    log = WitnessLog(path)
    assert log.size == 1_000_001
    assert log.damaged
    report = audit_log(log, KEY)
    log.close()
    assert not report.ok
    assert report.first_bad_index == 40
    assert "entries 40 to 999999 are missing" in report.problems


def _audit_with_subtree_row(path: Path, level: int, index: int) -> AuditReport:
    """The audit of the log at ``path`` with a stored subtree row level/index added by
    hand."""
    _edit(path, f"INSERT INTO nodes (level, idx, hash) VALUES ({level}, {index}, x'00')")  # noqa: S608
    log = WitnessLog(path)
    report = audit_log(log, KEY)
    log.close()
    return report


@pytest.mark.parametrize(
    ("level", "index"),
    [(-1, 0), (0, 3), (1, -1), (-(2**62), -(2**62))],
    ids=["negative-level", "level-0", "negative-index", "both-negative"],
)
def test_a_subtree_row_that_names_no_subtree_is_a_problem_not_an_exception(
    path: Path, level: int, index: int
) -> None:
    report = _audit_with_subtree_row(path, level, index)
    assert report.first_bad_index is None  # never a negative index
    assert report.problems == [
        f"a stored subtree row {level}/{index} names no subtree (its level must be at least 1,"
        " its index at least 0)"
    ]


@pytest.mark.parametrize(("level", "index"), [(1, 20), (6, 0), (2**62, 0)])
def test_a_subtree_row_past_the_end_covers_entries_that_are_gone(
    path: Path, level: int, index: int
) -> None:
    report = _audit_with_subtree_row(path, level, index)
    assert report.first_bad_index == 40
    assert report.problems == [f"subtree {level}/{index} covers entries that are gone"]


def test_stray_entry_fields_of_a_log_on_redis_are_reported(redis_url: str) -> None:
    """The log a fabric keeps on Redis is audited for rows outside the tree as the SQLite
    file is: a leaf field at a negative index, and one past the size the log keeps."""
    from infrafabric.storage.redis import RedisStore
    from infrafabric.witness.redis_log import RedisWitnessLog

    store = RedisStore(redis_url)
    try:
        log = RedisWitnessLog(store)
        log.append(_entries(0, 8))
        assert audit_log(log, KEY).ok
        store.redis.hset(f"{store.prefix}w:leaf", "-1", b"\0" * 32)
        below = audit_log(log, KEY)
        assert below.problems == [
            "1 entry rows at negative indexes (the highest -1), outside the log:"
            " it holds 9 entry rows for 8 entries"
        ]
        store.redis.hset(f"{store.prefix}w:leaf", "8", b"\0" * 32)  # the size stays 8
        past = audit_log(log, KEY)
        assert past.first_bad_index == 8
        assert "1 entry rows lie past the log's end, 8" in past.problems
    finally:
        store.close()
