"""`ifab serve --log-format json`: one JSON object a line, decisions with their trace ids."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx

from infrafabric.client import Client
from tests.harness import RUNNING, Fabric, enroll


def test_json_logs_carry_decisions_and_refusals_with_trace_ids(tmp_path: Path) -> None:
    fabric = Fabric(tmp_path)
    fabric.start("--log-format", "json")
    alice = enroll(fabric.url, fabric.admin_token, "alice")

    async def work() -> None:
        async with Client.connect(fabric.url, alice) as agent:
            with Client.trace("trace-42"):
                await agent.create_task("Logged", id="logged")
                await agent.claim("logged")

    asyncio.run(work())
    refused = httpx.post(f"{fabric.url}/v1/messages", content=b"{not json")
    assert refused.status_code == 400
    process = fabric.process
    assert process is not None
    assert process.stderr is not None
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)
    RUNNING.discard(process)
    lines = process.stderr.read().decode().splitlines()
    process.stderr.close()
    assert process.stdout is not None
    process.stdout.close()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    claimed = [r for r in records if r.get("kind") == "task.claimed"]
    assert claimed[0]["trace_id"] == "trace-42"
    assert claimed[0]["task_id"] == "logged"
    assert claimed[0]["actor"] == "if://agent/alice"
    assert claimed[0]["logger"] == "infrafabric.events"
    refusals = [r for r in records if r["logger"] == "infrafabric.refusals"]
    assert [r["code"] for r in refusals] == ["MALFORMED"]


def test_a_log_format_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    result = Fabric(tmp_path)("serve", "--log-format", "yaml")
    assert result.returncode == 2
    assert "text or json" in result.stderr.decode()
