"""The documentation is checked against the code: the worked signing example, the reason
codes, and the first commands of the README."""

from __future__ import annotations

import re
from pathlib import Path

from infrafabric import Reason, SigningIdentity, agent_id, decode_json, signing_input

ROOT = Path(__file__).parents[1]
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()


def example(name: str) -> str:
    match = re.search(rf"<!-- example:{name} -->\n```[a-z]*\n(.*?)```", PROTOCOL, re.S)
    assert match, f"docs/protocol.md has no example block {name!r}"
    return match.group(1)


def test_the_worked_signing_example_is_what_the_code_does() -> None:
    alice = SigningIdentity.from_seed(agent_id("alice"), bytes.fromhex(example("seed").strip()))
    assert alice.kid == example("kid").strip()
    message = decode_json(example("envelope"))
    data = signing_input(message)
    assert data.hex() == "".join(example("signing-input-hex").split())
    assert data.startswith(b"IFMessage-v2.1-signature\n")
    signed = alice.sign(message)
    assert signed.signature.sig == example("signature").strip()  # type: ignore[union-attr]


def test_every_reason_code_is_documented() -> None:
    for reason in Reason:
        assert f"`{reason.value}`" in PROTOCOL, reason


def test_the_readme_opens_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text().splitlines()[:20]
    text = "\n".join(head)
    assert "make run" in text
    assert "make test" in text


def test_the_witness_docs_example_checkpoint_verifies_with_its_key() -> None:
    from infrafabric.witness.checkpoint import open_checkpoint

    text = (ROOT / "docs" / "witness.md").read_text()
    block = text.split("```\ninfrafabric.witness/", 1)[1].split("```", 1)[0]
    note = "infrafabric.witness/" + block
    key = text.split("(verifier key: `", 1)[1].split("`", 1)[0]
    checkpoint = open_checkpoint(note, key)
    assert (checkpoint.size, checkpoint.time) == (2, "2026-11-23T20:24:18.972Z")


def test_the_governor_docs_policies_load() -> None:
    from infrafabric.governor.policy import parse_policy

    text = (ROOT / "docs" / "governor.md").read_text()
    examples = re.findall(r"<!-- policy:([a-z-]+) -->\n```yaml\n(.*?)```", text, re.S)
    assert [name for name, _ in examples] == ["cost-first", "deadline-first", "untrusted"]
    for name, body in examples:
        parse_policy(body, source=name)
    untrusted = parse_policy(examples[2][1])
    assert untrusted.profile_name == "production"
    assert untrusted.profile.min_capability_match == 1.0
    reference = text.split("## Policy reference\n\n```yaml\n", 1)[1].split("```", 1)[0]
    policy = parse_policy(reference, source="reference")
    assert policy.profile == parse_policy("").profile  # the values shown are the built-in ones


def test_every_ifab_command_in_the_docs_exists_with_its_options() -> None:
    """Each `ifab ...` the operations runbook and the agents guide show names a real
    command and only options it has (the commands themselves run in the CLI tests)."""
    import shlex
    from typing import Any

    import typer

    from infrafabric.cli.app import app

    root = typer.main.get_command(app)
    checked = 0
    for name in ("operations.md", "agents.md", "server.md", "mesh.md"):
        text = (ROOT / "docs" / name).read_text()
        spans = re.findall(r"`(ifab [^`]+)`", text)
        lines = re.findall(r"^(ifab .+?)(?:\s+#.*)?$", text, re.M)
        for command in spans + lines:
            words = [w for w in shlex.split(command.replace("...", "X")) if w != "&"][1:]
            group: Any = root
            while words and words[0] in getattr(group, "commands", {}):
                group = group.commands[words.pop(0)]
            context = group.context_class(group)
            options = {o for p in group.get_params(context) for o in (*p.opts, *p.secondary_opts)}
            for word in words:
                if word.startswith("--"):
                    assert word.split("=")[0] in options, f"{name}: `{command}`: no {word}"
            assert group is not root, f"{name}: `{command}` names no command"
            checked += 1
    assert checked > 30
