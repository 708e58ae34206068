"""`ifab serve` as a real process, driven by the `ifab` task, agent, status and tail commands."""

from __future__ import annotations

from pathlib import Path

from tests.harness import Fabric, ok


def test_a_board_worked_from_the_shell(fabric: Fabric, tmp_path: Path) -> None:
    ok(fabric("identity", "new", "lead"))
    ok(fabric("identity", "new", "coder"))
    assert "enrolled if://agent/lead" in ok(fabric("agent", "enroll", "lead"))
    ok(fabric("agent", "enroll", "coder", "--cap", "code:python"))
    board = tmp_path / "board.yaml"
    board.write_text(
        "tasks:\n"
        "  - {id: design, title: Design the API, priority: 80}\n"
        "  - {id: build, title: Build it, needs: [code:python], after: [design]}\n"
        "  - {id: docs, title: Tidy the docs, filler: true}\n"
    )
    assert "imported 3 tasks" in ok(fabric("task", "import", str(board), "--as", "lead"))
    assert "design  claimed" in ok(fabric("task", "claim", "--as", "lead"))
    ok(fabric("task", "progress", "design", "50", "--note", "half", "--as", "lead"))
    ok(fabric("task", "done", "design", "--result", '{"ok": true}', "--as", "lead"))
    listing = ok(fabric("task", "list"))
    assert "build" in listing
    assert "available" in listing
    assert "build  claimed" in ok(fabric("task", "claim", "--as", "coder"))
    blocked = ok(
        fabric(
            "task",
            "block",
            "build",
            "--type",
            "review",
            "--description",
            "needs eyes",
            "--as",
            "coder",
        )
    )
    assert "filler offered" in blocked
    assert "docs" in blocked
    assert "invited: nobody qualified" in ok(
        fabric("task", "help", "build", "--needs", "ops:k8s", "--as", "coder")
    )
    blocked_tasks = ok(fabric("task", "list", "--state", "blocked"))  # as the runbook does
    assert [line.split()[0] for line in blocked_tasks.splitlines()[1:]] == ["build"]
    status = ok(fabric("status"))
    assert "blocked" in status
    assert "if://agent/coder" in status
    agents = ok(fabric("agent", "list"))
    assert "green" in agents
    assert "code:python" in agents
    tail = ok(fabric("tail", "--seconds", "1"))
    assert tail == ""  # nothing happened during that second
    refused = fabric("task", "done", "build", "--as", "lead")
    assert refused.returncode == 1
    assert b"NOT_OWNER" in refused.stderr


def test_bad_yaml_and_unreachable_servers_get_clear_errors(fabric: Fabric, tmp_path: Path) -> None:
    ok(fabric("identity", "new", "lead"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("tasks:\n  - {priority: 3}\n")
    result = fabric("task", "import", str(broken), "--as", "lead")
    assert result.returncode == 1
    assert b"task #1 needs at least a title" in result.stderr
    away = fabric("task", "list", "--server", "http://127.0.0.1:9")
    assert away.returncode == 1
    assert b"cannot reach" in away.stderr
