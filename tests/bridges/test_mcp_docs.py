"""docs/agents.md against the code: its client configurations attach, its token looks
like the real one, and its walkthrough splits the board as it says."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.bridges.conftest import agent, data, http_session, stdio_session
from tests.harness import IFAB, Fabric, ok

pytestmark = pytest.mark.anyio

AGENTS_MD = (Path(__file__).parents[2] / "docs" / "agents.md").read_text()


def config(name: str) -> dict[str, Any]:
    match = re.search(rf"<!-- config:{name} -->\n```json\n(.*?)```", AGENTS_MD, re.S)
    assert match, f"docs/agents.md has no config block {name!r}"
    entry: dict[str, Any] = json.loads(match.group(1))["mcpServers"]["infrafabric"]
    return entry


def block(opening: str) -> str:
    """The text of the fenced block that starts with ``opening``."""
    start = AGENTS_MD.index(opening)
    return AGENTS_MD[start : AGENTS_MD.index("\n```", start)]


async def test_the_documented_configurations_attach(fabric: Fabric) -> None:
    stdio, http = config("stdio"), config("http")
    assert stdio["command"] == "ifab"
    assert set(stdio["env"]) == {"IFAB_PASSPHRASE"}
    arguments = [fabric.url if arg.startswith("http://") else arg for arg in stdio["args"]]
    name = arguments[arguments.index("--as") + 1]
    agent(fabric, name, "code:python")
    assert IFAB is not None
    async with stdio_session(fabric, *arguments[1:]) as session:
        assert data(await session.call_tool("whoami", {}))["agent"] == f"if://agent/{name}"
    assert http["type"] == "http"
    assert http["url"].endswith("/mcp")
    documented = http["headers"]["Authorization"]
    agent(fabric, "coder-b")
    token = ok(fabric("mcp", "token", "--as", "coder-b")).strip()
    prefix = documented.removeprefix("Bearer ").split("<", 1)[0]
    assert token.startswith(prefix)  # the agent's name, as the docs show it
    url = http["url"].replace("http://127.0.0.1:8765", fabric.url)
    async with http_session(url.removesuffix("/mcp"), token) as session:
        assert data(await session.call_tool("whoami", {}))["agent"] == "if://agent/coder-b"


async def test_the_walkthrough_splits_the_board_as_described(
    fabric: Fabric, tmp_path: Path
) -> None:
    commands = block("ifab serve &")
    assert "ifab agent enroll coder-a --cap code:python" in commands
    agent(fabric, "lead")
    agent(fabric, "coder-a", "code:python")
    agent(fabric, "coder-b", "code:python", "docs:write")
    board = block("cat > board.yaml").split("\n", 1)[1].split("\nEOF", 1)[0]
    (tmp_path / "board.yaml").write_text(board + "\n")
    ok(fabric("task", "import", str(tmp_path / "board.yaml"), "--as", "lead"))
    token = ok(fabric("mcp", "token", "--as", "coder-b")).strip()
    async with (
        stdio_session(fabric, "--as", "coder-a", "--server", fabric.url) as coder_a,
        http_session(fabric.url, token) as coder_b,
    ):
        assert data(await coder_a.call_tool("claim_next", {}))["task"]["id"] == "api"
        assert data(await coder_b.call_tool("claim_next", {}))["task"]["id"] == "cli"
        progress = {"task_id": "api", "percent": 50, "note": "routes done"}
        data(await coder_a.call_tool("report_progress", progress))
        data(await coder_a.call_tool("complete_task", {"task_id": "api", "result": {"pr": 12}}))
        data(await coder_b.call_tool("complete_task", {"task_id": "cli"}))
        assert data(await coder_a.call_tool("claim_next", {}))["task"] is None  # docs:write
        assert data(await coder_b.call_tool("claim_next", {}))["task"]["id"] == "docs"
        blocker = {"task_id": "docs", "kind": "waiting_on_review", "description": "review"}
        assert data(await coder_b.call_tool("report_blocker", blocker))["task"]["state"] == (
            "blocked"
        )
        sent = data(await coder_b.call_tool("send_message", {"to": "lead", "text": "review?"}))
        assert sent["delivered"][0]["receiver"] == "if://agent/lead"
