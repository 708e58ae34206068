"""A real ``redis-server`` on a free loopback port, in a temporary directory.

Started with the append-only file on and ``appendfsync always`` (an acknowledged write
survives a crash of Redis), no RDB snapshots, and stopped when the test is done. The
Makefile installs the Debian package when it is missing; without it these tests fail
(never skip), saying so.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from tests.harness import RUNNING, free_port

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    def __init__(self, directory: Path, *, fsync: str = "always", appendonly: str = "yes") -> None:
        assert REDIS_SERVER is not None, "redis-server is missing: `make test` installs it"
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [
                REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--appendonly", self.appendonly,
                "--appendfsync", self.fsync, "--protected-mode", "yes",
                "--daemonize", "no", "--logfile", str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        RUNNING.add(self.process)
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"redis-server did not start: {(self.directory / 'redis.log').read_text()}"
                    ) from None
                time.sleep(0.02)
        client.close()
        return self

    def stop(self, *, hard: bool = False) -> None:
        """Stop Redis (``hard``: SIGKILL, as a crash would)."""
        if self.process is None:
            return
        if hard:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=20)
        RUNNING.discard(self.process)
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def flush(self) -> None:
        client = redis.Redis(port=self.port)
        client.flushall()
        client.close()
