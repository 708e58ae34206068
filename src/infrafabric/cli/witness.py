"""``ifab witness``: the fabric's tamper-evident log: checkpoints, entries, proofs, audits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from infrafabric.cli.board import DEFAULT_SERVER, AdminToken, AsOptional, Server, _read
from infrafabric.cli.common import fail, reported_errors
from infrafabric.keystore import Keystore
from infrafabric.server.runner import ENV_DATA, FABRIC_IDENTITY, default_data_dir
from infrafabric.witness.audit import audit_log
from infrafabric.witness.bundle import BundleError, verify_bundle
from infrafabric.witness.checkpoint import verifier_key
from infrafabric.witness.log import WitnessLog

app = typer.Typer(
    help="The witness log: signed checkpoints, entries, proofs, and offline checks.",
    no_args_is_help=True,
)

Data = Annotated[
    Path | None,
    typer.Option("--data", help=f"The fabric's data directory (default: ${ENV_DATA} or yours)."),
]
Key = Annotated[
    str | None,
    typer.Option(
        "--key",
        help="Verifier key, <name>+<id>+<base64> (default: the fabric key in the data dir).",
    ),
]


@app.command()
def checkpoint(
    server: Server = DEFAULT_SERVER, agent: AsOptional = None, admin_token: AdminToken = None
) -> None:
    """Print the latest signed checkpoint (a C2SP signed note) and the key to check it."""
    document = _read(server, agent, admin_token, "/v1/witness/checkpoint")
    typer.echo(document["checkpoint"], nl=False)
    typer.echo(f"\nverifier key: {document['key']}")


@app.command()
def log(
    start: Annotated[int, typer.Option("--start", min=0, help="First index.")] = 0,
    count: Annotated[int, typer.Option("--count", min=1, max=1000, help="How many.")] = 50,
    server: Server = DEFAULT_SERVER,
    agent: AsOptional = None,
    admin_token: AdminToken = None,
) -> None:
    """Print entries of the witness log, one JSON object per line."""
    entries = _read(
        server, agent, admin_token, "/v1/witness/entries", start=start, end=start + count
    )["entries"]
    for item in entries:
        typer.echo(json.dumps(item["entry"], sort_keys=True))


@app.command()
def prove(
    index: Annotated[int, typer.Argument(min=0, help="The entry's index in the log.")],
    server: Server = DEFAULT_SERVER,
    agent: AsOptional = None,
    admin_token: AdminToken = None,
) -> None:
    """Print a proof bundle for one entry (check it with `ifab witness verify-proof`)."""
    bundle = _read(server, agent, admin_token, "/v1/witness/proof", index=index)
    typer.echo(json.dumps(bundle, indent=2))


@app.command("verify-proof")
def verify_proof(
    bundle: Annotated[Path, typer.Argument(help="A proof bundle file (- for stdin).")],
    key: Annotated[str, typer.Option("--key", help="The fabric's verifier key.")],
) -> None:
    """Check a proof bundle offline: the checkpoint's signature and the entry's inclusion."""
    with reported_errors():
        text = typer.get_text_stream("stdin").read() if str(bundle) == "-" else bundle.read_text()
        try:
            verified = verify_bundle(text, key)
        except BundleError as exc:
            fail(f"NOT VERIFIED: {exc}")
    typer.echo(
        f"verified: entry {verified.index} is in the log of {verified.checkpoint.size} entries"
        f" signed by {verified.checkpoint.origin} at {verified.checkpoint.time or 'an unknown time'}"
    )
    typer.echo(verified.entry.decode("utf-8", errors="replace"))


@app.command()
def verify(data: Data = None, key: Key = None) -> None:
    """Check the whole log against every signed checkpoint, offline, and name the first entry that was changed, removed or moved. Exits 1 if anything is wrong."""
    directory = data or default_data_dir()
    path = directory / "witness.db"
    with reported_errors():
        if not path.exists():
            fail(f"no witness log at {path}")
        witness = WitnessLog(path)
        try:
            report = audit_log(witness, key or _fabric_key(directory))
        finally:
            witness.close()
    if report.ok:
        typer.echo(f"ok: {report.size} entries agree with {report.checkpoints} signed checkpoints")
        return
    first = report.first_bad_index
    typer.echo(
        "TAMPERED: " + ("a checkpoint is wrong" if first is None else f"first bad entry {first}"),
        err=True,
    )
    for problem in report.problems[:20]:
        typer.echo(f"  {problem}", err=True)
    raise typer.Exit(1)


def _fabric_key(directory: Path) -> str:
    """The verifier key of the fabric whose data directory this is (its public key)."""
    keyring = Keystore(directory / "keys").load_keyring()
    record = keyring.active(f"if://agent/{FABRIC_IDENTITY}")
    if record is None:
        fail(f"no fabric key in {directory / 'keys'}: pass --key")
    return verifier_key(f"infrafabric.witness/{record.kid}", record.public_key_bytes)
