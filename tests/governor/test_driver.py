"""The governor's driver under threads: sweeps, claims, admissions and reloads at once
must neither deadlock nor leave the books and the board disagreeing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from infrafabric.board.model import Task
from infrafabric.board.rules import BoardConfig
from infrafabric.coordinator import Coordinator
from infrafabric.governor.core import Manifest
from infrafabric.governor.driver import PREFIX, GovernorDriver
from infrafabric.governor.policy import parse_policy
from infrafabric.storage.sqlite import SqliteStore

POLICY = parse_policy("profiles: {default: {failure_threshold: 1000}}")
AGENTS = [f"if://agent/w{n}" for n in range(4)]


def test_sweeps_claims_admissions_and_reloads_at_once_do_not_deadlock(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "board.db", synchronous="NORMAL")
    coordinator = Coordinator(store, config=BoardConfig(lease_seconds=0.02))
    driver = GovernorDriver(coordinator, POLICY)
    driver.attach()
    for agent in AGENTS:
        driver.register(agent, Manifest(capabilities=("code:python",)))
    coordinator.create([Task(id=f"t{n}", title="T") for n in range(40)])
    stop = threading.Event()
    errors: list[BaseException] = []

    def forever(work: object) -> threading.Thread:
        def run() -> None:
            try:
                while not stop.is_set():
                    work()  # type: ignore[operator]
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    threads = [
        forever(lambda: coordinator.sweep()),  # leases of 20 ms: expiries all the time
        forever(lambda: driver.reload(POLICY)),
        forever(lambda: driver.admit(AGENTS[0], coordinator.get("t0"))),
        *(
            forever(
                lambda agent=agent: coordinator.claim_next(agent, accept=driver.accepting(agent))
            )
            for agent in AGENTS
        ),
    ]
    time.sleep(1.5)
    stop.set()
    deadline = time.monotonic() + 20
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not [thread for thread in threads if thread.is_alive()], "deadlocked"
    assert errors == []
    # what the board says expired is what the books say failed (same transactions)
    expired = sum(1 for e in store.events_since(0, 1_000_000) if e.event.kind == "task.expired")
    report = driver.report()
    assert expired > 0
    assert sum(row["tasks_failed"] for row in report["agents"]) == expired
    store.close()


def test_a_restart_under_a_stricter_policy_keeps_the_books(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "board.db", synchronous="NORMAL")
    coordinator = Coordinator(store)
    driver = GovernorDriver(coordinator, parse_policy("swarms: {team: {members: [odd]}}"))
    driver.attach()
    driver.register("if://agent/odd", Manifest(capabilities=("art:sculpture",), model="m"))
    assert "agent/if://agent/odd" in "".join(store.load_state(PREFIX))
    strict = parse_policy("vocabulary: {strict: true}")  # no such capability, no swarm
    again = GovernorDriver(Coordinator(store), strict)
    (row,) = again.report()["agents"]
    assert (row["agent"], row["capabilities"], row["swarm"]) == (
        "if://agent/odd",
        ["art:sculpture"],
        None,
    )
    store.close()
