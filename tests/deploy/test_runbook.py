"""docs/operations.md's deployment snippets, run for real: the systemd unit passes
`systemd-analyze verify` and its ExecStart, EnvironmentFile and ExecReload do what the
runbook says; the Caddy site puts TLS in front of a real server with a real Caddy
(Debian's), and WebSockets, the dashboard's cookie and `/mcp` pass through it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import websockets.asyncio.client

from tests.harness import IFAB, RUNNING, Fabric, free_port, ok, stop

RUNBOOK = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
CADDY = shutil.which("caddy")


def block(after: str, fence: str) -> str:
    """The first fenced block of the runbook after the sentence ``after``."""
    tail = RUNBOOK.split(after, 1)[1]
    match = re.search(rf"```{fence}\n(.*?)```", tail, re.S)
    assert match, f"no ```{fence} block after {after!r}"
    return match.group(1)


def replaced(text: str, changes: dict[str, str]) -> str:
    for old, new in changes.items():
        assert old in text, f"the runbook's snippet no longer holds {old!r}"
        text = text.replace(old, new)
    return text


def service_section(unit: str) -> dict[str, list[str]]:
    """The [Service] keys of a unit, each with its values in order."""
    section = unit.split("[Service]\n", 1)[1].split("\n[", 1)[0]
    keys: dict[str, list[str]] = {}
    for line in section.splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            keys.setdefault(key, []).append(value)
    return keys


def wait_for(check: object, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except (httpx.HTTPError, OSError):
            pass
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_the_systemd_unit_verifies_and_runs_as_written(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None, "systemd-analyze is missing: apt-get install systemd"
    assert IFAB is not None
    port = free_port()
    data = tmp_path / "data"
    secrets = tmp_path / "secrets.env"
    secrets.write_text("IFAB_WITNESS_PASSPHRASE=a passphrase kept out of the unit\n")
    secrets.chmod(0o600)
    unit = replaced(
        block("A systemd unit for one server", "ini"),
        {
            "/opt/infrafabric/.venv/bin/ifab": IFAB,
            "/var/lib/infrafabric": str(data),
            "/etc/infrafabric/secrets.env": str(secrets),
            "--port 8765": f"--port {port}",
        },
    )
    (tmp_path / "infrafabric.service").write_text(unit)
    verified = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(tmp_path / "infrafabric.service")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert "infrafabric.service" not in verified.stderr, verified.stderr  # no warning of its own

    # What systemd would do: the environment of Environment= and EnvironmentFile=, then
    # ExecStart=; ExecReload= with $MAINPID; stopping is SIGTERM.
    service = service_section(unit)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IFAB_")}
    for assignment in service["Environment"]:
        key, value = assignment.split("=", 1)
        env[key] = value
    for path in service["EnvironmentFile"]:
        for line in Path(path).read_text().splitlines():
            key, value = line.split("=", 1)
            env[key] = value
    log = tmp_path / "stdout.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            shlex.split(service["ExecStart"][0]), env=env, stdout=out, stderr=subprocess.PIPE
        )
    RUNNING.add(process)
    try:
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200,
            "the unit's ExecStart did not serve /healthz",
        )
        assert (data / "board.db").exists()  # IFAB_DATA from Environment= was used
        # the passphrase came from the EnvironmentFile: none was written beside the key
        assert not (data / "witness.passphrase").exists()
        reload = shlex.split(service["ExecReload"][0].replace("$MAINPID", str(process.pid)))
        subprocess.run(reload, check=True, timeout=10)
        wait_for(
            lambda: "policy reloaded" in log.read_text(),
            "ExecReload (SIGHUP) did not reload the governor's policy",
        )
        assert stop(process) == 0  # systemd stops it with SIGTERM
    finally:
        stop(process, signal.SIGKILL)  # (a no-op once it has stopped)


def test_caddy_puts_tls_in_front_and_passes_websockets_cookies_and_mcp(tmp_path: Path) -> None:
    assert CADDY is not None, "caddy is missing: `make test` installs Debian's"
    site = block("for example with Caddy", "")
    documented = tmp_path / "documented.Caddyfile"
    documented.write_text(site)
    checked = subprocess.run(
        [CADDY, "validate", "--adapter", "caddyfile", "--config", str(documented)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)},
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr

    fabric = Fabric(tmp_path)
    fabric.start()
    https_port, http_port = free_port(), free_port()
    storage = tmp_path / "caddy"
    # The test's own global options: no admin endpoint, nothing on the real ports 80/443,
    # certificates from Caddy's local CA (a real domain would get one from ACME).
    options = (
        "{\n\tadmin off\n\tauto_https disable_redirects\n\tskip_install_trust\n"
        f"\thttp_port {http_port}\n\tstorage file_system {storage}\n}}\n\n"
    )
    config = tmp_path / "Caddyfile"
    config.write_text(
        options
        + replaced(
            site,
            {
                "fabric.example.org": f"https://localhost:{https_port}",
                "127.0.0.1:8765": f"127.0.0.1:{fabric.port}",
            },
        )
    )
    caddy = subprocess.Popen(
        [CADDY, "run", "--adapter", "caddyfile", "--config", str(config)],
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    RUNNING.add(caddy)
    try:
        root = storage / "pki" / "authorities" / "local" / "root.crt"
        wait_for(root.exists, "Caddy made no local CA")
        trust = ssl.create_default_context(cafile=str(root))
        url = f"https://localhost:{https_port}"
        wait_for(
            lambda: httpx.get(f"{url}/healthz", verify=trust).status_code == 200,
            "no /healthz through Caddy",
        )
        with httpx.Client(base_url=url, verify=trust) as browser:
            login = browser.post("/v1/dashboard/login", json={"token": fabric.admin_token})
            assert login.status_code == 200
            # the server saw https through the proxy's X-Forwarded-Proto: the cookie is Secure
            assert "secure" in login.headers["set-cookie"].lower()
            cookie = f"ifab_operator={browser.cookies['ifab_operator']}"
            assert browser.get("/").status_code == 200
            # /mcp is passed as it is: the server itself answers a bad token
            refused = browser.post(
                "/mcp", json={}, headers={"authorization": "Bearer ifmcp1.bad.token"}
            )
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "MALFORMED"

        ok(fabric("identity", "new", "ops"))
        ok(fabric("agent", "enroll", "ops"))

        async def follow_through_the_proxy() -> dict[str, object]:
            async with websockets.asyncio.client.connect(
                f"wss://localhost:{https_port}/v1/ws",
                ssl=trust,
                additional_headers={"cookie": cookie, "origin": url},
                origin=None,
            ) as socket:
                await socket.send('{"type": "subscribe", "topics": ["if://topic/**"]}')
                # subscribed before the task is made
                assert json.loads(await socket.recv())["type"] == "subscribed"
                made = await asyncio.to_thread(
                    fabric, "task", "add", "behind TLS", "--id", "behind-tls", "--as", "ops"
                )
                ok(made)
                async with asyncio.timeout(10):
                    while True:
                        frame = json.loads(await socket.recv())
                        if "behind-tls" in str(frame):
                            return frame  # type: ignore[no-any-return]

        assert "behind-tls" in str(asyncio.run(follow_through_the_proxy()))
    finally:
        stop(caddy)
        fabric.kill()
