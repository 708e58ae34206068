"""Acknowledged writes survive kill -9 of the process that made them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from infrafabric.board.model import TaskState
from infrafabric.storage.sqlite import SqliteStore

WORKER = textwrap.dedent(
    """
    import sys
    from infrafabric.board.model import Task
    from infrafabric.board.rules import claim, complete, create
    from infrafabric.storage.sqlite import SqliteStore

    store = SqliteStore(sys.argv[1], synchronous=sys.argv[2])
    agent = "if://agent/worker"
    i = 0
    while True:
        task_id = f"t{i:06d}"
        store.apply(create([Task(id=task_id, title="x")], {}, 1.0))
        print("created", task_id, flush=True)
        store.apply(claim(store.get(task_id), agent, 2.0))
        print("claimed", task_id, flush=True)
        store.apply(complete(store.get(task_id), agent, {"n": i}, 3.0))
        print("completed", task_id, flush=True)
        i += 1
    """
)
REACHED = {
    "created": {TaskState.AVAILABLE, TaskState.CLAIMED, TaskState.COMPLETED},
    "claimed": {TaskState.CLAIMED, TaskState.COMPLETED},
    "completed": {TaskState.COMPLETED},
}


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_acknowledged_operations_survive_kill_9(tmp_path: Path, synchronous: str) -> None:
    path = tmp_path / "board.db"
    command = [sys.executable, "-c", WORKER, str(path), synchronous]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        acknowledged = [process.stdout.readline().split() for _ in range(600)]
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    store = SqliteStore(path)
    last: dict[str, str] = {}
    for operation, task_id in acknowledged:
        last[task_id] = operation
    for task_id, operation in last.items():
        task = store.get(task_id)
        assert task is not None, f"{operation} {task_id} was acknowledged, then lost"
        assert task.state in REACHED[operation], (task_id, operation, task.state)
    kinds = [stored.event.kind for stored in store.events_since(0, limit=10_000)]
    assert kinds.count("task.completed") >= sum(1 for op in last.values() if op == "completed")
    for task in store.tasks():  # consistent: every completed task has its result
        if task.state is TaskState.COMPLETED:
            assert task.result is not None
    store.close()
