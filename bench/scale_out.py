"""Scale-out benchmarks (issue 6): claims over Redis, beside raw Redis round trips.

* Raw baselines, in this run, on the same Redis: a redis-py ``SET key value NX`` round
  trip, and an ``EVALSHA`` of a small compare-and-set script (what one claim's write is).
* The store: ``Coordinator.claim`` over :class:`RedisStore` in this process (the Redis
  round trips a claim costs, without a server or signatures).
* The original design's choice, if etcd is installed: a compare-and-set transaction on
  a real etcd through its JSON gateway.
* Servers: one, three, three, then one real ``ifab serve --store redis://`` processes
  (``--quick``: one, three); 100 SDK agents (one load process) claim in a closed loop
  (saturation, the mean of each size's turns), then, at each size's first turn, at a
  steady offered rate (latency percentiles), spread evenly over the servers.
* The floor under those latencies: one ``ifab serve`` on its embedded SQLite (FULL, no
  Redis at all) at the same offered rate. A claim through any server is a signed
  message (signing, a WebSocket, verification, the reply); this row says what that
  costs here without a single Redis round trip, beside the raw ``SET NX``.

Redis runs with ``appendonly yes``, ``appendfsync always`` (an acknowledged claim survives
a crash of Redis). Everything (Redis, the servers, the load process) shares the
machine's two cores: three servers cannot add CPU that is not there, so their total is a
measure of what the extra processes cost here, not of what more machines would give.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from infrafabric import SigningIdentity
from infrafabric.board.model import Task
from infrafabric.board.rules import BoardConfig
from infrafabric.coordinator import Coordinator
from infrafabric.storage.redis import RedisStore

sys.path.insert(0, str(Path(__file__).parents[1]))
from tests.harness import Fabric, enroll, free_port
from tests.redis_server import RedisServer

from claims import (
    RunningFabric,
    closed_loop,
    connected,
    fill,
    paced,
    percentiles,
    render,
    server_steady,
    timed,
    witness_settled,
)

_CAS = """
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])
return 1
"""


def _row(name: str, samples: list[float]) -> tuple[str, str]:
    p50, p95, p99 = percentiles(samples)
    return (
        name,
        f"p50 {p50:7.1f} us  p95 {p95:7.1f} us  p99 {p99:7.1f} us  {len(samples) / sum(samples):8,.0f}/s",
    )


def etcd_compare_and_set(count: int) -> list[tuple[str, list[float]]]:
    """The original design's choice, for comparison: a compare-and-set transaction on a
    real etcd (Debian's etcd-server, on loopback; it fsyncs each write, as Redis does
    here) through its JSON gateway, from Python with a kept-alive HTTP connection. Empty
    when etcd is not installed (`make bench` tries to install it)."""
    binary = shutil.which("etcd")
    if binary is None:
        return []
    with tempfile.TemporaryDirectory() as directory:
        client_port, peer_port = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        process = subprocess.Popen(
            [
                binary, "--data-dir", directory, "--name", "bench",
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"bench={peer_url}", "--log-level", "error",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            with httpx.Client(base_url=client_url, timeout=10) as http:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if http.get("/health").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError("etcd did not start")
                    time.sleep(0.1)
                value = base64.b64encode(b"x" * 600).decode()

                def key(index: int) -> str:
                    return base64.b64encode(f"task/{index}".encode()).decode()

                for index in range(count):
                    http.post("/v3/kv/put", json={"key": key(index), "value": value})

                def compare_and_set(index: int) -> None:
                    reply = http.post(
                        "/v3/kv/txn",
                        json={
                            "compare": [
                                {
                                    "key": key(index),
                                    "target": "VERSION",
                                    "result": "EQUAL",
                                    "version": "1",
                                }
                            ],
                            "success": [{"requestPut": {"key": key(index), "value": value}}],
                        },
                    ).json()
                    assert reply.get("succeeded") is True, reply

                return [("etcd compare-and-set txn (JSON gateway)", timed(compare_and_set, count))]
        finally:
            process.terminate()
            process.wait(timeout=20)


def raw_and_store(url: str, count: int) -> list[tuple[str, list[float]]]:
    client = redis.Redis.from_url(url)
    client.flushall()
    cas = client.register_script(_CAS)
    for index in range(count):
        client.hset(f"cas:{index}", mapping={"v": "1", "d": "x"})
    document = b"x" * 600  # about a claimed task's JSON
    raw_set = timed(lambda i: client.set(f"nx:{i}", document, nx=True), count)
    raw_lua = timed(lambda i: cas(keys=[f"cas:{i}"], args=["1", "2", document]), count)
    client.close()
    store = RedisStore(url)
    coordinator = Coordinator(store, config=BoardConfig(lease_seconds=3600))
    coordinator.create([Task(id=f"t{i:05d}", title="x") for i in range(count)])
    claim = timed(lambda i: coordinator.claim(f"t{i:05d}", "if://agent/bench"), count)
    more = [Task(id=f"n{i:05d}", title="x") for i in range(count)]
    coordinator.create(more)
    claim_next = timed(lambda i: coordinator.claim_next("if://agent/bench"), count)
    store.close()
    return [
        ("raw redis-py SET NX round trip", raw_set),
        ("raw EVALSHA compare-and-set", raw_lua),
        ("RedisStore claim (by id), in process", claim),
        ("RedisStore claim_next, in process", claim_next),
    ]


class Servers:
    """``count`` ``ifab serve`` processes over one Redis, one data directory."""

    def __init__(self, url: str, count: int) -> None:
        self.directory = tempfile.TemporaryDirectory()
        self.fabrics = [Fabric(Path(self.directory.name)) for _ in range(count)]
        for fabric in self.fabrics:
            fabric.start("--lease", "3600", "--store", url)
        self.admin = (self.fabrics[0].data / "admin.token").read_text().strip()

    @property
    def urls(self) -> list[str]:
        return [fabric.url for fabric in self.fabrics]

    def enroll(self, name: str) -> SigningIdentity:
        return enroll(self.urls[0], self.admin, name)

    def close(self) -> None:
        for fabric in self.fabrics:
            fabric.kill()
        self.directory.cleanup()


async def saturation(servers: Servers, agents: list[SigningIdentity], seconds: float) -> float:
    await fill(servers.urls[0], agents[0], 30_000)
    async with connected(servers.urls, agents) as clients:
        started = time.monotonic()
        done = await closed_loop(clients, seconds)
        return done / (time.monotonic() - started)


async def steady(
    servers: Servers, agents: list[SigningIdentity], rate: float, seconds: float
) -> list[float]:
    await fill(servers.urls[0], agents[0], int(rate * seconds) + 1000)
    # on a settled fabric, as on SQLite: not while the witness catches up on the
    # saturation run's backlog
    await asyncio.sleep(2)
    await witness_settled(servers.urls[0], servers.admin)
    async with connected(servers.urls, agents) as clients:
        return await paced(clients, rate, seconds)


async def _steady_on_sqlite(rate: float, seconds: float) -> list[float]:
    fabric = RunningFabric("FULL")
    try:
        agents = [fabric.enroll(f"bench-{n:03d}") for n in range(100)]
        return (await server_steady(fabric, agents, rate, seconds)).samples
    finally:
        fabric.close()


def through_servers(
    url: str, count: int, quick: bool, flush: Callable[[], None], raw_set_nx: float
) -> list[tuple[str, str]]:
    # the steady rate: well under one server's saturation here, so latency is service
    # time, not a queue
    seconds, rate = (3.0, 150.0) if quick else (10.0, 250.0)
    # This VM's speed drifts over a minute by more than the difference sought: one
    # server, three, three, one gives each an early and a late turn (saturation; the
    # latency is taken at each size's first turn).
    order = (1, 3) if quick else (1, 3, 3, 1)
    throughput: dict[int, list[float]] = {1: [], 3: []}
    latency: dict[int, list[float]] = {}
    for size in order:
        flush()
        servers = Servers(url, size)
        try:
            agents = [servers.enroll(f"bench-{n:03d}") for n in range(100)]
            throughput[size].append(asyncio.run(saturation(servers, agents, seconds)))
            if size not in latency:
                latency[size] = asyncio.run(steady(servers, agents, rate, seconds))
        finally:
            servers.close()
    rows = []
    for size in (1, 3):
        label = "1 server" if size == 1 else f"{size} servers"
        turns = " and ".join(f"{each:,.0f}" for each in throughput[size])
        rows.append(
            (
                f"{label} over Redis, saturation (100 agents)",
                f"{statistics.mean(throughput[size]):8,.0f} claims/s (turns: {turns})",
            )
        )
        p50, p95, p99 = percentiles(latency[size])
        rows.append(
            (
                f"{label} over Redis, claim at {rate:.0f}/s offered",
                f"p50 {p50 / 1000:6.2f} ms  p95 {p95 / 1000:6.2f} ms  p99 {p99 / 1000:6.2f} ms",
            )
        )
    ratio = statistics.mean(throughput[3]) / statistics.mean(throughput[1])
    rows.append(("3 servers vs 1, saturation", f"{ratio:.2f}x (aim: more than 1x)"))
    floor = asyncio.run(_steady_on_sqlite(rate, seconds))
    p50, p95, p99 = percentiles(floor)
    rows.append(
        (
            f"floor: 1 server on SQLite (FULL, no Redis), claim at {rate:.0f}/s offered",
            f"p50 {p50 / 1000:6.2f} ms  p95 {p95 / 1000:6.2f} ms  p99 {p99 / 1000:6.2f} ms",
        )
    )
    for label, samples in (
        ("1 server over Redis", latency[1]),
        ("3 servers over Redis", latency[3]),
        ("floor, SQLite server", floor),
    ):
        times = statistics.median(samples) / raw_set_nx
        rows.append((f"{label}: claim p50 vs raw SET NX p50", f"{times:.1f}x (aim: within 3x)"))
    return rows


def main(quick: bool = False) -> None:
    count = 300 if quick else 3000
    print("\nScale-out over Redis (appendfsync always; Redis, servers and load on 2 cores)")
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory) / "redis").start()
        try:
            measured = raw_and_store(server.url, count)
            rows = [_row(name, samples) for name, samples in measured]
            raw = statistics.median(measured[0][1])
            for name, samples in measured[2:]:
                ratio = statistics.median(samples) / raw
                rows.append((f"{name} p50 vs raw SET NX p50", f"{ratio:.1f}x (aim: within 3x)"))
            etcd = etcd_compare_and_set(count)
            rows += [_row(name, samples) for name, samples in etcd]
            if not etcd:
                rows.append(("etcd compare-and-set", "skipped: etcd is not installed"))
            rows += through_servers(server.url, count, quick, server.flush, raw)
            rows.append(("(a server claim signs, verifies and witnesses; see claims above)", ""))
        finally:
            server.stop()
    print(render(rows))


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
