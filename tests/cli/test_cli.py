"""The `ifab` command, run as a real process, as users and other languages run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import rfc8785

from infrafabric import decode_json, signing_input

IFAB = shutil.which("ifab", path=str(Path(sys.executable).parent))
PASS = "cli test passphrase"


class Shell:
    def __init__(self, home: Path) -> None:
        self.home = home

    def __call__(
        self,
        *args: str,
        stdin: str | bytes = b"",
        passphrase: str | None = PASS,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("IFAB_")
        }
        environment["IFAB_HOME"] = str(self.home)
        if passphrase is not None:
            environment["IFAB_PASSPHRASE"] = passphrase
        environment.update(env or {})
        data = stdin.encode() if isinstance(stdin, str) else stdin
        assert IFAB is not None
        return subprocess.run(
            [IFAB, *args],
            input=data,
            capture_output=True,
            env=environment,
            timeout=60,
            start_new_session=True,
            check=False,
        )


@pytest.fixture
def ifab(tmp_path: Path) -> Shell:
    return Shell(tmp_path / "home")


ENVELOPE = json.dumps(
    {
        "performative": "request",
        "receiver": "if://agent/bob",
        "content": {"task": "review", "confidence": 0.8},
    }
)


def test_help_lists_every_command(ifab: Shell) -> None:
    top = ifab("--help").stdout.decode()
    for command in ("identity", "message", "keyring", "demo", "version"):
        assert command in top
    identity = ifab("identity", "--help").stdout.decode()
    for command in ("new", "list", "show", "export-public", "rotate"):
        assert command in identity
    message = ifab("message", "--help").stdout.decode()
    for command in ("canonical", "sign", "verify"):
        assert command in message
    assert "--emergency" in ifab("identity", "rotate", "--help").stdout.decode()


def test_identity_lifecycle(ifab: Shell) -> None:
    created = ifab("identity", "new", "alice")
    assert created.returncode == 0, created.stderr
    assert b"if://agent/alice" in created.stdout
    assert b"alice" in ifab("identity", "list").stdout
    shown = ifab("identity", "show", "alice").stdout.decode()
    assert "if://agent/alice" in shown
    assert "active" in shown
    again = ifab("identity", "new", "alice")
    assert again.returncode == 1
    assert b"already exists" in again.stderr
    missing = ifab("identity", "show", "nobody")
    assert missing.returncode == 1
    assert b"nobody" in missing.stderr


def test_canonical_prints_exact_rfc8785_bytes(ifab: Shell) -> None:
    document = '{"b": [1.0, 1e21, 0.000001], "a": "\\u20ac", "\\u00f6": null}'
    result = ifab("message", "canonical", stdin=document)
    assert result.returncode == 0
    assert result.stdout == rfc8785.dumps(json.loads(document))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{"a": 1, "a": 2}', b"duplicate"),
        ('{"a": NaN}', b"NaN"),
        ("[1,", b"not a JSON"),
        ('{"a": 1e400}', b"out of range"),
        ('{"a": 9007199254740993}', b"integer"),
    ],
)
def test_canonical_refuses_what_has_no_canonical_form(
    ifab: Shell, document: str, message: bytes
) -> None:
    result = ifab("message", "canonical", stdin=document)
    assert result.returncode == 1
    assert message in result.stderr


def test_sign_and_verify_round_trip(ifab: Shell) -> None:
    ifab("identity", "new", "alice")
    signed = ifab("message", "sign", "--as", "alice", stdin=ENVELOPE)
    assert signed.returncode == 0, signed.stderr
    envelope = json.loads(signed.stdout)
    assert envelope["sender"] == "if://agent/alice"
    assert envelope["sequence_num"] == 1
    assert envelope["signature"]["alg"] == "ed25519"
    verified = ifab("message", "verify", stdin=signed.stdout)
    assert (verified.returncode, verified.stdout) == (0, b"OK\n")
    second = json.loads(ifab("message", "sign", "--as", "alice", stdin=ENVELOPE).stdout)
    assert second["sequence_num"] == 2

    signing = ifab("message", "canonical", "--signing-input", stdin=signed.stdout)
    assert signing.stdout == signing_input(decode_json(signed.stdout))
    assert signing.stdout.startswith(b"IFMessage-v2.1-signature\n{")

    tampered = signed.stdout.replace(b"review", b"delete")
    rejected = ifab("message", "verify", stdin=tampered)
    assert (rejected.returncode, rejected.stdout) == (1, b"BAD_SIGNATURE\n")

    later = ifab("message", "verify", "--now", "2099-01-01T00:00:00Z", stdin=signed.stdout)
    assert (later.returncode, later.stdout) == (1, b"EXPIRED\n")


def test_sign_refuses_bad_input(ifab: Shell) -> None:
    ifab("identity", "new", "alice")
    wrong_sender = json.dumps({**json.loads(ENVELOPE), "sender": "if://agent/bob"})
    assert (
        b"is not if://agent/alice"
        in ifab("message", "sign", "--as", "alice", stdin=wrong_sender).stderr
    )
    invalid = ifab("message", "sign", "--as", "alice", stdin='{"performative": "shout"}')
    assert invalid.returncode == 1
    assert b"invalid envelope" in invalid.stderr
    signed = ifab("message", "sign", "--as", "alice", stdin=ENVELOPE).stdout
    assert b"already signed" in ifab("message", "sign", "--as", "alice", stdin=signed).stderr


def test_wrong_or_missing_passphrase(ifab: Shell) -> None:
    ifab("identity", "new", "alice")
    wrong = ifab("message", "sign", "--as", "alice", stdin=ENVELOPE, passphrase="guess")
    assert wrong.returncode == 1
    assert b"wrong passphrase" in wrong.stderr
    missing = ifab("message", "sign", "--as", "alice", stdin=ENVELOPE, passphrase=None)
    assert missing.returncode == 1
    assert b"IFAB_PASSPHRASE" in missing.stderr


def test_verify_modes(ifab: Shell) -> None:
    ifab("identity", "new", "alice")
    envelope = json.loads(ifab("message", "sign", "--as", "alice", stdin=ENVELOPE).stdout)
    del envelope["signature"]
    unsigned = json.dumps(envelope)
    strict = ifab("message", "verify", stdin=unsigned)
    assert (strict.returncode, strict.stdout) == (1, b"UNSIGNED\n")
    audit = ifab("message", "verify", "--mode", "audit", stdin=unsigned)
    assert (audit.returncode, audit.stdout) == (0, b"UNSIGNED\n")
    permissive = ifab("message", "verify", "--mode", "permissive", "--local", stdin=unsigned)
    assert permissive.returncode == 0
    assert ifab("message", "verify", "--mode", "permissive", stdin=unsigned).returncode == 1
    assert ifab("message", "verify", "--mode", "lenient", stdin=unsigned).returncode == 2


@pytest.mark.parametrize(
    ("stdin", "reason"),
    [(b"garbage", b"MALFORMED\n"), (b"{" + b" " * 70_000 + b"}", b"TOO_LARGE\n")],
)
def test_verify_bad_input(ifab: Shell, stdin: bytes, reason: bytes) -> None:
    result = ifab("message", "verify", stdin=stdin)
    assert (result.returncode, result.stdout) == (1, reason)


def test_keys_travel_between_machines_and_rotate(ifab: Shell, tmp_path: Path) -> None:
    other = Shell(tmp_path / "other")  # a second machine that trusts alice
    ifab("identity", "new", "alice")
    public = ifab("identity", "export-public", "alice").stdout
    assert b"PRIVATE" not in public.upper()
    (tmp_path / "alice.pub.json").write_bytes(public)
    added = other("keyring", "add", str(tmp_path / "alice.pub.json"))
    assert added.returncode == 0, added.stderr
    old_message = ifab("message", "sign", "--as", "alice", stdin=ENVELOPE).stdout
    assert other("message", "verify", stdin=old_message).stdout == b"OK\n"

    rotated = ifab("identity", "rotate", "alice")
    assert rotated.returncode == 0, rotated.stderr
    new_message = ifab("message", "sign", "--as", "alice", stdin=ENVELOPE).stdout
    assert other("message", "verify", stdin=new_message).stdout == b"UNKNOWN_KEY\n"
    applied = other("keyring", "add", "-", stdin=rotated.stdout)
    assert applied.returncode == 0, applied.stderr
    assert other("message", "verify", stdin=new_message).stdout == b"OK\n"
    assert other("message", "verify", stdin=old_message).stdout == b"OK\n"  # 7-day grace
    listing = other("keyring", "list").stdout.decode()
    assert "deprecated" in listing
    assert "active" in listing

    forged = rotated.stdout.replace(b'"scheduled"', b'"emergency"')
    refused = other("keyring", "add", "-", stdin=forged)
    assert refused.returncode == 1
    assert b"rotation refused" in refused.stderr


def test_emergency_and_compromised_rotation(ifab: Shell) -> None:
    ifab("identity", "new", "alice")
    ifab("identity", "new", "ops", "--operator")
    old = ifab("message", "sign", "--as", "alice", stdin=ENVELOPE).stdout
    assert ifab("identity", "rotate", "alice", "--emergency").returncode == 0
    assert ifab("message", "verify", stdin=old).stdout == b"KEY_REVOKED\n"
    assert ifab("identity", "rotate", "alice", "--compromised").returncode == 2
    compromised = ifab(
        "identity",
        "rotate",
        "alice",
        "--compromised",
        "--operator",
        "ops",
        env={"IFAB_OPERATOR_PASSPHRASE": PASS},
    )
    assert compromised.returncode == 0, compromised.stderr
    assert b"v3" in ifab("identity", "show", "alice").stdout


def test_demo_runs_and_stops_by_itself(ifab: Shell) -> None:
    result = ifab("demo", "--delay", "0", "--rounds", "16", "--seed", "7")
    assert result.returncode == 0, result.stderr
    output = result.stdout.decode()
    for reason in ("BAD_SIGNATURE", "REPLAY", "UNKNOWN_KEY", "EXPIRED", "KEY_REVOKED"):
        assert f"REJECTED {reason}" in output
    assert "Summary" in output


@pytest.mark.parametrize("command", [("mesh", "join"), ("mcp",)])
def test_an_unknown_identity_is_one_line_not_a_traceback(
    ifab: Shell, command: tuple[str, ...]
) -> None:
    refused = ifab(*command, "--as", "ghost", "--server", "http://127.0.0.1:9")
    assert refused.returncode == 1
    assert b"identity 'ghost': no identity file" in refused.stderr
    assert b"Traceback" not in refused.stderr
