"""MCP bridge benchmark (issue 7): a ``claim_next`` tool call over stdio and over
Streamable HTTP, beside the SDK call it wraps, against one real ``ifab serve`` in the
same run.

* SDK: ``Client.claim_next()`` over the network (a signed message on the client's
  WebSocket), the call both bridges make for each tool call.
* stdio: the official MCP client SDK drives ``ifab mcp --as bench --server URL`` (a
  subprocess holding the identity); each call is a JSON-RPC line to it, which makes the
  SDK call above and answers.
* HTTP: the official MCP client SDK posts each call to the server's ``/mcp`` with a lent
  key's token; the server runs the SDK call in process (through its own ASGI app) and
  answers with JSON.
* ping: an MCP ``ping`` on each transport, which reaches no tool: what the MCP SDKs and
  the transport cost by themselves, so the rest of a tool call is the bridge's.

Calls are made one after another (each waits for its answer), every one claims a real
task, and the server, the bridge and the load share the machine's two cores.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from tests.bridges.conftest import http_session, stdio_session
from tests.harness import PASS, Fabric, ok

from claims import percentiles, render
from infrafabric.client import Client
from infrafabric.keystore import Keystore


async def _samples(call: object, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        result = await call()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
        if result is None:
            raise AssertionError("the board ran out of tasks")
    return samples


def _row(name: str, samples: list[float], baseline: float | None) -> tuple[str, str]:
    p50, p95, p99 = percentiles(samples)
    ratio = "" if baseline is None else f"  {p50 / baseline:5.1f}x the SDK call"
    return (name, f"p50 {p50:8.1f} us  p95 {p95:8.1f} us  p99 {p99:8.1f} us{ratio}")


async def _measure(fabric: Fabric, count: int) -> list[tuple[str, list[float]]]:
    identity = Keystore(fabric.home).unlock("bench", PASS)
    async with Client.connect(fabric.url, identity) as sdk:
        tasks = [{"id": f"t{n:05d}", "title": "x"} for n in range(4 * count + 40)]
        for start in range(0, len(tasks), 500):
            await sdk.create_tasks(tasks[start : start + 500])
        for _ in range(10):  # warm up
            await sdk.claim_next()
        direct = await _samples(sdk.claim_next, count)
    rows = [("SDK Client.claim_next() (WebSocket)", direct)]
    async with stdio_session(fabric, "--as", "bench", "--server", fabric.url) as session:
        for _ in range(10):
            await session.call_tool("claim_next", {})
        rows.append(("MCP stdio tool call claim_next", await _tool_samples(session, count)))
        rows.append(
            ("MCP stdio ping (the transport alone)", await _samples(session.send_ping, count))
        )
    token = ok(fabric("mcp", "token", "--as", "bench")).strip()
    async with http_session(fabric.url, token) as session:
        for _ in range(10):
            await session.call_tool("claim_next", {})
        rows.append(("MCP HTTP tool call claim_next (/mcp)", await _tool_samples(session, count)))
        rows.append(
            ("MCP HTTP ping (the transport alone)", await _samples(session.send_ping, count))
        )
    return rows


async def _tool_samples(session: object, count: int) -> list[float]:
    async def call() -> object:
        result = await session.call_tool("claim_next", {})  # type: ignore[attr-defined]
        if result.is_error:
            raise AssertionError(result.content)
        return result

    return await _samples(call, count)


def main(quick: bool = False) -> None:
    count = 50 if quick else 400
    print("\nMCP bridge: claim_next, one call at a time (one server, 2 cores shared)")
    with tempfile.TemporaryDirectory() as directory:
        fabric = Fabric(Path(directory))
        fabric.start()
        try:
            ok(fabric("identity", "new", "bench"))
            ok(fabric("agent", "enroll", "bench"))
            measured = asyncio.run(_measure(fabric, count))
        finally:
            fabric.kill()
    baseline = percentiles(measured[0][1])[0]
    rows = [
        _row(name, samples, None if index == 0 else baseline)
        for index, (name, samples) in enumerate(measured)
    ]
    print(render(rows))


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
