"""The /v1/witness routes of a real in-process server: refusals of malformed requests,
and a log damaged by hand answered as damaged (not as a store to retry)."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infrafabric.client import Client
from infrafabric.server.runner import open_server, run_server
from infrafabric.witness.merkle import leaf_hash
from tests.server.conftest import Fabric


@pytest.fixture
def witnessed(tmp_path: Path) -> Iterator[tuple[Fabric, Path]]:
    """A server whose witness log holds and has signed at least 8 entries (an agent's
    enrollment and five tasks created), and the path of that log."""
    state = open_server(tmp_path / "data", synchronous="NORMAL")
    with run_server(state) as server:
        fabric = Fabric(server, state.sessions.admin_token)
        alice = fabric.enroll("alice")

        async def decide() -> None:
            async with Client.connect(fabric.url, alice) as agent:
                await agent.create_tasks([{"id": f"t{n}", "title": "T"} for n in range(5)])

        asyncio.run(decide())
        deadline = time.monotonic() + 10
        while (size := _get(fabric, "/v1/witness/checkpoint").json().get("size", 0)) < 8:
            assert time.monotonic() < deadline, f"no checkpoint of 8 entries, only {size}"
            time.sleep(0.1)
        yield fabric, tmp_path / "data" / "witness.db"


def _get(fabric: Fabric, path: str) -> httpx.Response:
    return fabric.admin_get(path)


def _refusal(response: httpx.Response) -> tuple[int, str, str]:
    error: dict[str, Any] = response.json()["error"]
    return response.status_code, error["code"], error["detail"]


def test_malformed_requests_are_refused_by_name(witnessed: tuple[Fabric, Path]) -> None:
    fabric, _ = witnessed
    status, code, detail = _refusal(_get(fabric, "/v1/witness/proof"))
    assert (status, code) == (400, "MALFORMED")
    assert "index or its leaf hash" in detail
    status, code, detail = _refusal(_get(fabric, "/v1/witness/entries?limit=0"))
    assert (status, code) == (400, "MALFORMED")
    assert "limit" in detail
    status, code, detail = _refusal(_get(fabric, "/v1/witness/consistency"))
    assert (status, code) == (400, "MALFORMED")
    assert "old" in detail
    # what the SDK sends still works
    assert _get(fabric, "/v1/witness/consistency?old=0").status_code == 200
    assert _get(fabric, "/v1/witness/entries?limit=1").json()["next"] == 1
    # an empty range with a limit is an empty page, not a refusal of the limit
    empty = _get(fabric, "/v1/witness/entries?start=1&end=1&limit=10")
    assert (empty.status_code, empty.json()["entries"]) == (200, [])
    assert _get(fabric, "/v1/witness/proof?index=0").status_code == 200


def test_a_damaged_entry_is_listed_as_damaged_among_the_others(
    witnessed: tuple[Fabric, Path],
) -> None:
    fabric, path = witnessed
    with sqlite3.connect(path) as db:
        db.execute("UPDATE entries SET entry = x'7b7d7b' WHERE idx = 3")  # "{}{": not JSON
    response = _get(fabric, "/v1/witness/entries?start=0&limit=6")
    assert response.status_code == 200
    entries = response.json()["entries"]
    assert [item["index"] for item in entries] == list(range(6))
    damaged = entries[3]
    assert damaged["entry"] is None
    assert damaged["damaged"] is True
    assert base64.b64decode(damaged["raw"]) == b"{}{"
    assert all("damaged" not in item for item in entries[:3] + entries[4:])


def _is_damaged(response: httpx.Response) -> None:
    status, code, _ = _refusal(response)
    assert (status, code) == (500, "WITNESS_DAMAGED")
    assert "retry-after" not in response.headers


def test_a_log_missing_a_subtree_answers_damaged_not_unavailable(
    witnessed: tuple[Fabric, Path],
) -> None:
    fabric, path = witnessed
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM nodes WHERE level = 1 AND idx = 0")
    _is_damaged(_get(fabric, "/v1/witness/proof?index=2"))
    _is_damaged(_get(fabric, "/v1/witness/consistency?old=3"))


def test_a_log_missing_an_entry_or_its_end_answers_damaged(witnessed: tuple[Fabric, Path]) -> None:
    fabric, path = witnessed
    with sqlite3.connect(path) as db:
        (entry,) = db.execute("SELECT entry FROM entries WHERE idx = 4").fetchone()
        db.execute("DELETE FROM entries WHERE idx = 4")
    _is_damaged(_get(fabric, "/v1/witness/proof?index=4"))
    assert _get(fabric, f"/v1/witness/proof?hash={leaf_hash(entry).hex()}").status_code == 404


def test_a_log_truncated_below_its_checkpoints_answers_damaged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    state = open_server(data, synchronous="NORMAL")
    with run_server(state) as server:
        fabric = Fabric(server, state.sessions.admin_token)
        fabric.enroll("alice")  # 3 entries: the key, the enrollment, the registration
    with sqlite3.connect(data / "witness.db") as db:  # its end gone, its checkpoints kept
        (size,) = db.execute("SELECT max(size) FROM checkpoints").fetchone()
        db.execute("DELETE FROM entries WHERE idx >= 1")
        db.execute("DELETE FROM nodes")
    assert size == 3
    state = open_server(data, synchronous="NORMAL")
    with run_server(state) as server:
        fabric = Fabric(server, state.sessions.admin_token)
        _is_damaged(_get(fabric, "/v1/witness/proof?index=0"))
