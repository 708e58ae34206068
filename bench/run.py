"""InfraFabric benchmarks: `make bench` (or `python bench/run.py [--quick] [--only PART ...]`).

Every figure is measured in this run beside its baseline, a raw library call on the same
bytes, so the ratio means something on any machine. One process, one core; each row is
the best of several rounds (the least disturbed by the rest of the machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nacl.signing
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import claims  # bench/claims.py: the board and the server
import dashboard  # bench/dashboard.py: a claim to its card in the browser
import governor  # bench/governor.py: waste and matching time
import mcp_bridge  # bench/mcp_bridge.py: MCP tool calls
import mesh_rtc  # bench/mesh_rtc.py: the mesh on real aiortc peers
import mesh_sim  # bench/mesh_sim.py: the mesh at 1,000 peers, simulated
import metrics  # bench/metrics.py: the cost of a scrape
import scale_out  # bench/scale_out.py: servers over Redis
import witness  # bench/witness.py: the Merkle log
from infrafabric import (
    Keyring,
    Outbox,
    SigningIdentity,
    Verifier,
    agent_id,
    canonical_json,
    decode_json,
    encode_json,
    new_key_record,
    signing_input,
)
from infrafabric.protocol.canonical import canonical_json_of_data
from infrafabric.protocol.identity import b64url_decode
from infrafabric.protocol.message import body_builtins, build_message, decode_with_signing_input
from infrafabric.protocol.replay import NonceCache


@dataclass(frozen=True)
class Row:
    group: str
    name: str
    seconds_per_op: float
    baseline: str | None = None

    @property
    def rate(self) -> float:
        return 1.0 / self.seconds_per_op


Operation = Callable[[int], None]


def measure(
    operations: list[tuple[str, Operation, str | None]], group: str, count: int, rounds: int
) -> list[Row]:
    """Best seconds per call of each operation over ``rounds`` rounds of ``count`` calls.

    The rounds interleave the operations, so a burst of noise on the machine spoils one
    round of each rather than every round of one.
    """
    best = {name: float("inf") for name, _, _ in operations}
    for _ in range(rounds):
        for name, operation, _ in operations:
            start = time.perf_counter()
            operation(count)
            best[name] = min(best[name], (time.perf_counter() - start) / count)
    return [Row(group, name, best[name], baseline) for name, _, baseline in operations]


def records_content(target: int) -> dict[str, object]:
    """A payload shaped like an agent's review result: text, numbers (integral doubles
    such as 0.0 among them, as Python agents write them), a list of small records."""
    content: dict[str, object] = {
        "task": "review PR 17",
        "summary": "Two findings; the retry loop can spin when the broker is down.",
        "confidence": 0.82,
        "items": [],
    }
    items: list[dict[str, object]] = content["items"]  # type: ignore[assignment]
    index = 0
    while len(canonical_json(content)) < target:
        items.append(
            {
                "file": f"src/module_{index}.py",
                "line": index * 7,
                "score": index / 7,
                "ok": index % 3 == 0,
            }
        )
        index += 1
    return content


def text_content(target: int) -> dict[str, object]:
    """A payload shaped like an LLM's answer: a few fields and one long text."""
    sentence = (
        "The retry loop backs off exponentially but never gives up when the broker is down.\n"
    )
    content: dict[str, object] = {
        "task": "explain the outage",
        "model": "local-7b",
        "confidence": 0.7,
    }
    content["answer"] = sentence * max(1, (target - len(canonical_json(content))) // len(sentence))
    return content


def bench_size(label: str, content: dict[str, object], count: int, rounds: int) -> list[Row]:
    now = time.time()
    identity = SigningIdentity.generate(agent_id("bench"))
    keyring = Keyring(
        [new_key_record(identity.agent, identity.public_key, version=1, now=now - 60)]
    )
    total = rounds * count
    outbox = Outbox(identity)
    messages = [  # a millisecond apart, as a busy sender's are: no two timestamps alike
        outbox.message(
            now=now + i / 1000, performative="inform", receiver="if://agent/peer", content=content
        )
        for i in range(total)
    ]
    wires = [encode_json(message) for message in messages]
    signed_inputs = [signing_input(message) for message in messages]
    signatures = [b64url_decode(message.signature.sig) for message in messages]  # type: ignore[union-attr]
    unsigned = build_message(
        performative="inform",
        sender=identity.agent,
        receiver="if://agent/peer",
        content=content,
        now=now,
        sequence_num=1,
    )

    nacl_key = nacl.signing.VerifyKey(identity.public_key)
    ossl_private = Ed25519PrivateKey.from_private_bytes(identity.seed)
    ossl_public = ossl_private.public_key()
    ossl_signatures = [ossl_private.sign(data) for data in signed_inputs]
    body = body_builtins(decode_json(wires[0]))  # what the verifier canonicalizes

    verifier = Verifier(keyring, nonces=NonceCache(max_entries=total + 1))
    position = {"verify": 0}

    def envelope_verify(n: int) -> None:
        start = position["verify"]
        for wire in wires[start : start + n]:
            verdict = verifier.check(wire, now=now + total / 1000)
            if not verdict.ok:
                raise AssertionError(verdict)
        position["verify"] = start + n

    def raw_nacl_verify(n: int) -> None:
        for data, signature in zip(signed_inputs[:n], signatures[:n], strict=True):
            nacl_key.verify(data, signature)

    def raw_ossl_verify(n: int) -> None:
        for data, signature in zip(signed_inputs[:n], ossl_signatures[:n], strict=True):
            ossl_public.verify(signature, data)

    def envelope_sign(n: int) -> None:
        for _ in range(n):
            encode_json(identity.sign(unsigned))

    data = signed_inputs[0]
    cursor = {"decode": 0}

    def decode_only(n: int) -> None:
        start = cursor["decode"] % (total - n + 1)
        for wire in wires[start : start + n]:
            decode_with_signing_input(wire)
        cursor["decode"] = start + n

    operations: list[tuple[str, Operation, str | None]] = [
        ("raw verify, PyNaCl (libsodium)", raw_nacl_verify, None),
        ("raw verify, cryptography (OpenSSL)", raw_ossl_verify, None),
        ("envelope verify (Verifier.check, all 6 steps)", envelope_verify, "verify"),
        ("raw sign, PyNaCl (libsodium)", lambda n: [identity.sign_bytes(data) for _ in range(n)] and None, None),
        ("raw sign, cryptography (OpenSSL)", lambda n: [ossl_private.sign(data) for _ in range(n)] and None, None),
        ("envelope sign (sign + encode_json)", envelope_sign, "sign"),
        ("canonical JSON, rfc8785 package", lambda n: [rfc8785.dumps(body) for _ in range(n)] and None, None),
        ("canonical JSON, infrafabric exact path", lambda n: [canonical_json(body) for _ in range(n)] and None, "canonical"),
        ("canonical JSON, infrafabric data path", lambda n: [canonical_json_of_data(body) for _ in range(n)] and None, "canonical"),
        ("decode + signing input (no signature check)", decode_only, None),
    ]  # fmt: skip
    return measure(operations, f"{label} content, {len(wires[0])} B envelope", count, rounds)


def render(rows: Sequence[Row]) -> str:
    lines: list[str] = []
    group = None
    for row in rows:
        if row.group != group:
            group = row.group
            lines.append(f"\n{group}")
            lines.append(f"  {'operation':<48} {'ops/s':>10} {'us/op':>9}  vs baseline")
        in_group = [r for r in rows if r.group == group]
        comparison = ""
        if row.baseline in ("verify", "sign"):
            fastest = max(r.rate for r in in_group if r.name.startswith(f"raw {row.baseline}"))
            comparison = f"{row.rate / fastest:6.1%} of the fastest raw {row.baseline}"
        elif row.baseline == "canonical":
            other = next(r for r in in_group if r.name.startswith("canonical JSON, rfc8785"))
            comparison = f"{row.rate / other.rate:6.1f}x the rfc8785 package"
        lines.append(
            f"  {row.name:<48} {row.rate:>10,.0f} {row.seconds_per_op * 1e6:>9.1f}  {comparison}"
        )
    return "\n".join(lines)


#: The benchmark modules beside this file, in the order a whole run takes them.
PARTS: dict[str, Callable[[bool], None]] = {
    "claims": claims.main,
    "witness": witness.main,
    "governor": governor.main,
    "scale_out": scale_out.main,
    "mcp_bridge": mcp_bridge.main,
    "metrics": metrics.main,
    "dashboard": dashboard.main,
    "mesh_rtc": mesh_rtc.main,
    "mesh_sim": mesh_sim.main,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument(
        "--json", action="store_true", help="print the envelope part's rows as JSON too"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["envelope", *PARTS],
        metavar="PART",
        help=f"run only these parts: envelope (signing, verifying, canonical JSON), {', '.join(PARTS)}",
    )
    args = parser.parse_args()
    wanted = set(args.only or ["envelope", *PARTS])
    count, rounds = (200, 2) if args.quick else (2000, 5)
    print(
        f"InfraFabric benchmarks: Python {platform.python_version()} on {platform.machine()}, one core"
    )
    rows: list[Row] = []
    if "envelope" in wanted:
        rows = [
            *bench_size("~300 B records", records_content(300), count, rounds),
            *bench_size("~4 KiB records", records_content(4096), count, rounds),
            *bench_size("~4 KiB text", text_content(4096), count, rounds),
        ]
        print(render(rows))
    for name, part in PARTS.items():
        if name in wanted:
            part(args.quick)
    if args.json:
        print(
            json.dumps(
                [{"group": r.group, "name": r.name, "ops_per_s": round(r.rate)} for r in rows],
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
