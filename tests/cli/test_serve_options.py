"""`ifab serve`: every board threshold is an option, and the first start shows the
operator token it made."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from infrafabric.client import Client
from tests.harness import IFAB, RUNNING, Fabric, enroll


def test_every_board_threshold_is_an_option_of_serve(tmp_path: Path) -> None:
    fabric = Fabric(tmp_path)
    fabric.start(
        "--max-attempts", "2", "--max-helpers", "1", "--healthy-within", "5",
        "--alive-within", "10", "--escalate-after", "60",
    )  # fmt: skip
    lead = enroll(fabric.url, fabric.admin_token, "lead")
    for name in ("bob", "carol", "dave"):
        enroll(fabric.url, fabric.admin_token, name, capabilities=["code:review"])

    async def work() -> tuple[dict[str, object], dict[str, object], list[str]]:
        async with Client.connect(fabric.url, lead) as agent:
            plain = await agent.create_task("left to the board", id="plain")
            own = await agent.create_task("its own", id="own", max_attempts=5)
            await agent.claim("plain")
            invited = await agent.request_help("plain", ["code:review"])
        return plain, own, invited

    plain, own, invited = asyncio.run(work())
    assert plain["max_attempts"] == 2  # the server's, where the task says nothing
    assert own["max_attempts"] == 5
    assert len(invited) == 1  # three qualified, the cap is one
    agents = httpx.get(
        f"{fabric.url}/v1/agents", headers={"authorization": f"Bearer {fabric.admin_token}"}
    ).json()
    assert (agents["healthy_within"], agents["alive_within"]) == (5.0, 10.0)
    fabric.kill()


def test_health_thresholds_out_of_order_are_refused(tmp_path: Path) -> None:
    fabric = Fabric(tmp_path)
    assert IFAB is not None
    refused = subprocess.run(
        [IFAB, "serve", "--port", "0", "--healthy-within", "60", "--alive-within", "30"],
        env=fabric.env(), capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "--alive-within" in refused.stderr.decode()
    assert not (fabric.data / "board.db").exists()  # nothing started, nothing made


def test_a_token_variable_no_header_can_carry_is_refused_at_start(tmp_path: Path) -> None:
    """Compared as UTF-8 bytes with a header read as Latin-1, it could never match."""
    fabric = Fabric(tmp_path)
    assert IFAB is not None
    refused = subprocess.run(
        [IFAB, "serve", "--port", "0"],
        env={**fabric.env(), "IFAB_ADMIN_TOKEN": "op\u00e9rateur"},
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "IFAB_ADMIN_TOKEN must be printable ASCII" in refused.stderr.decode()
    assert not (fabric.data / "board.db").exists()


@pytest.mark.parametrize(
    "command", [["status"], ["agent", "list"], ["swarm", "--port", "0", "--exit"]]
)
def test_operator_commands_refuse_such_a_token_with_a_line_not_a_traceback(
    tmp_path: Path, command: list[str]
) -> None:
    fabric = Fabric(tmp_path)
    assert IFAB is not None
    refused = subprocess.run(
        [IFAB, *command, *(["--data", str(tmp_path / "swarm")] if command[0] == "swarm" else [])],
        env={**fabric.env(), "IFAB_ADMIN_TOKEN": "op\u00e9rateur"},
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "must be printable ASCII" in refused.stderr.decode()
    assert "Traceback" not in refused.stderr.decode()


def _stopped(fabric: Fabric) -> str:
    """What ``fabric``'s running ``ifab serve`` printed, once stopped by SIGTERM."""
    process = fabric.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=20)
    RUNNING.discard(process)
    return out.decode()


class _GivenToken(Fabric):
    """A fabric whose server is started with ``$IFAB_ADMIN_TOKEN`` set to ``token``."""

    def __init__(self, directory: Path, token: str) -> None:
        super().__init__(directory)
        self.token = token

    def env(self) -> dict[str, str]:
        return {**super().env(), "IFAB_ADMIN_TOKEN": self.token}


def test_the_first_start_prints_the_new_operator_token_and_later_ones_do_not(
    tmp_path: Path,
) -> None:
    fabric = Fabric(tmp_path)
    outputs = []
    for _ in range(2):
        fabric.start()
        outputs.append(_stopped(fabric))
    token = fabric.admin_token
    assert f"operator token (new): {token}" in outputs[0]
    assert token not in outputs[1]
    assert "operator token: " in outputs[1]


def test_a_token_given_by_the_environment_is_named_not_a_file_never_made(
    tmp_path: Path,
) -> None:
    fabric = _GivenToken(tmp_path, "an-operator-token-from-the-environment")
    fabric.start()
    answer = httpx.get(
        f"{fabric.url}/v1/agents",
        headers={"authorization": "Bearer an-operator-token-from-the-environment"},
    )
    assert answer.status_code == 200
    out = _stopped(fabric)
    assert "operator token: $IFAB_ADMIN_TOKEN" in out
    assert "admin.token" not in out  # (before: it named a file it never made)
    assert not (fabric.data / "admin.token").exists()
    assert "an-operator-token-from-the-environment" not in out


def test_an_empty_token_variable_counts_as_unset(tmp_path: Path) -> None:
    fabric = _GivenToken(tmp_path, "")  # the server then makes and uses the file: it says so
    fabric.start()
    assert f"operator token (new): {fabric.admin_token}" in _stopped(fabric)


@pytest.mark.parametrize("secret", ["admin.token", "witness.passphrase"])
def test_a_secret_file_too_short_to_be_one_is_refused_at_start(tmp_path: Path, secret: str) -> None:
    """A crash while the first start wrote admin.token left it empty, and an empty
    operator token keyed every session's MAC with nothing: anyone could forge a token."""
    fabric = Fabric(tmp_path)
    fabric.data.mkdir(parents=True)
    (fabric.data / secret).write_text("\n")
    assert IFAB is not None
    refused = subprocess.run(
        [IFAB, "serve", "--port", "0"], env=fabric.env(), capture_output=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert f"{secret} holds 0 characters, too few for a secret" in refused.stderr.decode()
    assert "Traceback" not in refused.stderr.decode()
