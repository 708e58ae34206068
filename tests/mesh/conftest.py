"""Real mesh peers: `ifab mesh join` processes (aiortc on loopback) around a real
`ifab serve`, and a real TURN server (Debian's coturn) on a free loopback port."""

from __future__ import annotations

import json
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import IFAB, RUNNING, Fabric, free_port, local_agent, stop

TURNSERVER = shutil.which("turnserver")
LOOPBACK = ("--bind", "127.0.0.1")  # ICE host candidates on loopback only


def free_udp_port() -> int:
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


@dataclass
class Turn:
    url: str
    username: str
    password: str
    log: Path

    def options(self, *, password: str | None = None) -> list[str]:
        return [
            "--turn", self.url, "--turn-user", self.username,
            "--turn-password", self.password if password is None else password,
        ]  # fmt: skip


@pytest.fixture
def turn(tmp_path: Path) -> Iterator[Turn]:
    """coturn on a free loopback port, with a user made up for the test."""
    assert TURNSERVER is not None, "turnserver is missing: `make test` installs Debian's coturn"
    port = free_udp_port()
    relay_base = 40000 + secrets.randbelow(20000)
    username, password = "mesh-test", secrets.token_hex(12)
    log = tmp_path / "turn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                TURNSERVER, "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}",
                "--relay-ip=127.0.0.1", f"--min-port={relay_base}", f"--max-port={relay_base + 200}",
                "--lt-cred-mech", f"--user={username}:{password}", "--realm=infrafabric.test",
                "--no-tls", "--no-dtls", "--allow-loopback-peers", "--no-cli",
                f"--userdb={tmp_path / 'turndb'}", f"--pidfile={tmp_path / 'turn.pid'}",
                "--log-file=stdout", "--simple-log", "--verbose",
            ],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    RUNNING.add(process)
    deadline = time.monotonic() + 20
    while b"listener opened on" not in log.read_bytes():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "coturn did not open its listener"
        time.sleep(0.05)
    yield Turn(f"turn:127.0.0.1:{port}", username, password, log)
    stop(process)


class Peer:
    """`ifab mesh join --as NAME`: its stdout JSON lines and stderr event lines, read by
    threads as they come; commands written to its stdin."""

    def __init__(self, fabric: Fabric, name: str, *options: str) -> None:
        assert IFAB is not None
        self.name = name
        self.agent = f"if://agent/{name}"
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.process = subprocess.Popen(
            [IFAB, "mesh", "join", "--as", name, *LOOPBACK, *options]
            if "--bind" not in options
            else [IFAB, "mesh", "join", "--as", name, *options],
            env=fabric.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        RUNNING.add(self.process)
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        self.expect(lambda line: "joined" in line, 60)

    def _read_out(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.put(json.loads(raw))

    def _read_err(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            self.events.append(raw.decode(errors="replace").rstrip())

    def expect(
        self, wanted: Callable[[dict[str, Any]], bool], seconds: float = 30
    ) -> dict[str, Any]:
        """The next stdout line ``wanted`` accepts (earlier ones are kept in ``seen``)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"{self.name} printed nothing wanted in {seconds} s; events: {self.events[-20:]}"
                ) from None
            self.seen.append(line)
            if wanted(line):
                return line

    def command(self, document: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(document) + "\n").encode())
        self.process.stdin.flush()

    def send(self, to: str, content: dict[str, Any], seconds: float = 30) -> dict[str, Any]:
        self.command({"send": {"to": to, "content": content}})
        return self.expect(lambda line: "sent" in line or "error" in line, seconds)

    def status(self) -> dict[str, Any]:
        self.command({"status": True})
        status: dict[str, Any] = self.expect(lambda line: "status" in line)["status"]
        return status

    def received(self) -> list[dict[str, Any]]:
        """Every message printed so far (draining what is queued)."""
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                break
        return [line for line in self.seen if "received" in line]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return stop(self.process, sig)


@pytest.fixture
def peers(fabric: Fabric) -> Iterator[Callable[..., Peer]]:
    """Start mesh peers (each a fresh identity enrolled in ``fabric``); all stopped after."""
    started: list[Peer] = []
    made: set[str] = set()

    def start(name: str, *options: str) -> Peer:
        if name not in made:
            local_agent(fabric, name)
            made.add(name)
        peer = Peer(fabric, name, *options)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        if peer.process.poll() is None:
            peer.stop(signal.SIGKILL)


def mesh_report(fabric: Fabric) -> dict[str, Any]:
    reply = httpx.get(
        f"{fabric.url}/v1/mesh", headers={"authorization": f"Bearer {fabric.admin_token}"}
    )
    assert reply.status_code == 200, reply.text
    report: dict[str, Any] = reply.json()
    return report


def wait_until(check: Callable[[], bool], what: str, seconds: float = 60) -> float:
    """Seconds until ``check`` holds."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, what
        time.sleep(0.2)
    return time.monotonic() - start
