"""Queries over the witness log: filters, paging, and the bound on what one scan reads."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from infrafabric.protocol.timefmt import parse_timestamp
from infrafabric.witness.entry import Cost, WitnessEntry, encode_entry
from infrafabric.witness.log import WitnessLog
from infrafabric.witness.merkle import leaf_hash
from infrafabric.witness.query import EntryFilter, scan

START = parse_timestamp("2026-11-30T12:00:00Z")


def _entry(index: int) -> bytes:
    """Entry ``index``: a minute apart; claims by alice on even indexes, releases by bob
    on odd ones; every third in trace t3; every fifth with a cost."""
    return encode_entry(
        WitnessEntry(
            index=index,
            component="board" if index % 7 else "keys",
            event="task.claimed" if index % 2 == 0 else "task.released",
            at=f"2026-11-30T{12 + index // 60:02d}:{index % 60:02d}:00.000Z",
            actor="if://agent/alice" if index % 2 == 0 else "if://agent/bob",
            trace_id="t3" if index % 3 == 0 else None,
            task_id=f"task-{index % 10}",
            cost=Cost(tokens_in=index, model="m") if index % 5 == 0 else None,
        )
    )


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> WitnessLog:
    witness = WitnessLog(tmp_path_factory.mktemp("query") / "witness.db", synchronous="NORMAL")
    witness.append([_entry(index) for index in range(300)])
    return witness


def _indexes(log: WitnessLog, where: EntryFilter, **options: int) -> list[int]:
    return [found.index for found in scan(log, where, **options).found]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (EntryFilter(), lambda i: True),
        (EntryFilter(component="keys"), lambda i: i % 7 == 0),
        (EntryFilter(event="task.claimed"), lambda i: i % 2 == 0),
        (EntryFilter(event="task.*"), lambda i: True),
        (EntryFilter(event="*.rel*"), lambda i: i % 2 == 1),
        (EntryFilter(trace_id="t3"), lambda i: i % 3 == 0),
        (EntryFilter(task_id="task-4"), lambda i: i % 10 == 4),
        (EntryFilter(actor="if://agent/bob", trace_id="t3"), lambda i: i % 6 == 3),
        (EntryFilter(with_cost=True), lambda i: i % 5 == 0),
        (EntryFilter(since=START + 120 * 60), lambda i: i >= 120),
        (EntryFilter(until=START + 30 * 60), lambda i: i < 30),
        (EntryFilter(since=START + 60, until=START + 3 * 60), lambda i: i in (1, 2)),
        (EntryFilter(trace_id="nobody"), lambda i: False),
    ],
)
def test_every_filter_keeps_exactly_the_entries_it_names(
    log: WitnessLog, where: EntryFilter, expected: object
) -> None:
    assert callable(expected)
    wanted = [index for index in range(300) if expected(index)]
    assert _indexes(log, where, limit=1000) == wanted


def test_pages_continue_where_the_last_one_stopped(log: WitnessLog) -> None:
    where = EntryFilter(trace_id="t3")
    seen: list[int] = []
    start = 0
    while True:
        page = scan(log, where, start, limit=7, budget=50)
        assert len(page.found) <= 7
        assert page.next - start <= 50  # never reads more than its budget
        seen += [found.index for found in page.found]
        if page.next == page.size:
            break
        start = page.next
    assert seen == list(range(0, 300, 3))


def test_a_scan_stops_at_the_limit_and_says_where_to_continue(log: WitnessLog) -> None:
    page = scan(log, EntryFilter(event="task.released"), 10, limit=3)
    assert [found.index for found in page.found] == [11, 13, 15]
    assert (page.next, page.size) == (16, 300)
    empty = scan(log, EntryFilter(trace_id="nobody"), 0, budget=120)
    assert (empty.found, empty.next) == ([], 120)


def test_an_entry_that_does_not_decode_matches_only_the_empty_filter(tmp_path: Path) -> None:
    witness = WitnessLog(tmp_path / "witness.db", synchronous="NORMAL")
    witness.append([_entry(0), b'{"not": "an entry"}', _entry(2)])
    assert _indexes(witness, EntryFilter()) == [0, 1, 2]
    assert _indexes(witness, EntryFilter(event="task.*")) == [0, 2]


def test_an_entry_that_is_not_a_json_object_is_listed_as_damaged(tmp_path: Path) -> None:
    witness = WitnessLog(tmp_path / "witness.db", synchronous="NORMAL")
    damaged = [b"{}{", b"\xff\xfe", b"5", b"[" * 5000 + b"]" * 5000]
    witness.append([_entry(0), *damaged, _entry(5)])
    items = scan(witness, EntryFilter()).to_json()["entries"]
    assert [item["index"] for item in items] == list(range(6))
    assert items[0]["entry"]["index"] == 0
    assert "damaged" not in items[0]
    for item, raw in zip(items[1:5], damaged, strict=True):
        assert item["entry"] is None
        assert item["damaged"] is True
        assert base64.b64decode(item["raw"]) == raw
        assert bytes.fromhex(item["leaf"]) == leaf_hash(raw)


def test_a_filter_goes_through_query_parameters_and_back() -> None:
    where = EntryFilter(
        component="board",
        event="task.*",
        trace_id="job-1",
        task_id="t",
        actor="if://agent/a",
        since=START,
        until=START + 60,
        with_cost=True,
    )
    params = where.as_params()
    assert params["since"] == "2026-11-30T12:00:00.000Z"
    assert EntryFilter.from_params(params) == where
    assert EntryFilter().as_params() == {}
    assert EntryFilter.from_params({}) == EntryFilter()


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"since": "yesterday"}, "since: not an RFC 3339"),
        ({"until": "9999-12-31T23:59:59.9999999Z"}, "until:"),
        ({"cost": "maybe"}, "cost is true or false"),
        ({"actor": "x" * 257}, "actor is longer than 256"),
    ],
)
def test_bad_query_parameters_are_refused_by_name(params: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        EntryFilter.from_params(params)
