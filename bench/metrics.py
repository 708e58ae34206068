"""The cost of ``/metrics`` (issue 8): one scrape of a server holding 1,000 enrolled
agents and 10,000 tasks, beside the raw SQLite query that counts its tasks by state.

A scrape reads the fabric (tasks by state, waiting messages, agents and their health,
the witness, the governor's books) and writes the Prometheus text format. The server
runs in this process (its routes and threads as `ifab serve` has them); the scrape is an
HTTP request with the operator token, one at a time.
"""

from __future__ import annotations

import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from claims import milliseconds_row, render
from infrafabric.board.model import Task
from infrafabric.server.runner import open_server, run_server
from infrafabric.storage.base import AgentRecord


def main(quick: bool = False) -> None:
    agents, tasks = (100, 1000) if quick else (1000, 10_000)
    scrapes = 20 if quick else 50
    print(f"\n/metrics: one scrape with {agents:,} agents and {tasks:,} tasks (in-process server)")
    with tempfile.TemporaryDirectory() as directory:
        state = open_server(Path(directory) / "data", synchronous="NORMAL")
        for n in range(agents):
            state.service.enroll(
                AgentRecord(id=f"if://agent/a{n:04d}", capabilities=("code:python",))
            )
        board = state.service.coordinator
        for start in range(0, tasks, 1000):
            board.create(
                [Task(id=f"t{n:05d}", title="x") for n in range(start, min(tasks, start + 1000))]
            )
        for n in range(0, tasks, 10):  # some claimed, so several states are counted
            board.claim(f"t{n:05d}", f"if://agent/a{n % agents:04d}")
        database = sqlite3.connect(Path(directory) / "data" / "board.db")
        raw = []
        for _ in range(scrapes):
            start = time.perf_counter()
            database.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall()
            raw.append(time.perf_counter() - start)
        database.close()
        with run_server(state) as server:
            headers = {"authorization": f"Bearer {state.sessions.admin_token}"}
            with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
                size = len(client.get("/metrics").content)  # warm up
                samples = []
                for _ in range(scrapes):
                    start = time.perf_counter()
                    response = client.get("/metrics")
                    samples.append(time.perf_counter() - start)
                    assert response.status_code == 200
    rows = [
        milliseconds_row(name, measured)
        for name, measured in (
            ("raw SQLite: tasks counted by state", raw),
            ("GET /metrics (whole exposition)", samples),
        )
    ]
    rows.append(
        ("exposition size", f"{size:,} bytes; mean scrape {statistics.mean(samples) * 1000:.1f} ms")
    )
    print(render(rows))


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
