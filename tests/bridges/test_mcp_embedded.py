"""`ifab mcp` without a server: a fabric of its own in a data directory, which no other
fabric process may use at the same time."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.bridges.conftest import data, stdio_session
from tests.harness import IFAB, Fabric, ok

pytestmark = pytest.mark.anyio


async def test_an_embedded_fabric_works_and_keeps_its_board(tmp_path: Path) -> None:
    fabric = Fabric(tmp_path)  # not started: only its environment and paths are used
    ok(fabric("identity", "new", "solo"))
    board = tmp_path / "solo-board"
    arguments = ("--as", "solo", "--data", str(board), "--cap", "code:python")
    async with stdio_session(fabric, *arguments, embedded=True) as session:
        me = data(await session.call_tool("whoami", {}))
        assert me["capabilities"] == ["code:python"]
        spec = {"task_id": "t", "title": "Alone", "required_capabilities": ["code:python"]}
        data(await session.call_tool("create_task", spec))
        assert data(await session.call_tool("claim_next", {}))["task"]["id"] == "t"
        data(await session.call_tool("complete_task", {"task_id": "t", "result": {"n": 1}}))
        assert IFAB is not None
        env = fabric.env()
        del env["IFAB_SERVER"]
        second = subprocess.run(
            [IFAB, "mcp", *arguments], env=env, capture_output=True, timeout=60,
            check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert second.returncode == 1
        assert "in use by another fabric process" in second.stderr.decode()
    async with stdio_session(
        fabric, "--as", "solo", "--data", str(board), embedded=True
    ) as session:
        me = data(await session.call_tool("whoami", {}))
        assert me["capabilities"] == ["code:python"]  # kept without --cap
        task = data(await session.call_tool("get_task", {"task_id": "t"}))
        assert (task["state"], task["result"]) == ("completed", {"n": 1})


def test_mcp_needs_an_identity_and_says_so(tmp_path: Path) -> None:
    result = Fabric(tmp_path)("mcp")
    assert result.returncode == 2
    assert "--as NAME is required" in result.stderr.decode()
    unknown = Fabric(tmp_path)("mcp", "--as", "ghost", "--data", str(tmp_path / "d"))
    assert unknown.returncode == 1
    assert "ghost" in unknown.stderr.decode()
