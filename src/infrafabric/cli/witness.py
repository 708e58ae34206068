"""``ifab witness``: the fabric's tamper-evident log: checkpoints, entries, proofs, audits."""

from __future__ import annotations

import contextlib
import csv
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, TextIO

import typer

from infrafabric.cli.board import DEFAULT_SERVER, AdminToken, AsOptional, Server, _read
from infrafabric.cli.common import EXIT_USAGE, fail, print_table, reported_errors
from infrafabric.keystore import Keystore
from infrafabric.protocol.timefmt import format_timestamp, parse_timestamp
from infrafabric.server.runner import (
    ENV_DATA,
    ENV_STORE,
    FABRIC_IDENTITY,
    default_data_dir,
    open_store_url,
)
from infrafabric.witness.audit import audit_log
from infrafabric.witness.bundle import BundleError, verify_bundle
from infrafabric.witness.checkpoint import (
    Checkpoint,
    CheckpointError,
    open_checkpoint,
    parse_verifier_key,
    verifier_key,
)
from infrafabric.witness.log import WitnessLog
from infrafabric.witness.query import EntryFilter, scan

app = typer.Typer(
    help="The witness log: signed checkpoints, entries, proofs, and offline checks.",
    no_args_is_help=True,
)

Data = Annotated[
    Path | None,
    typer.Option("--data", help=f"The fabric's data directory (default: ${ENV_DATA} or yours)."),
]
Component = Annotated[
    str | None,
    typer.Option(
        "--component", help="Only this component: board, keys, verify, governor, mesh, witness."
    ),
]
Event = Annotated[
    str | None,
    typer.Option("--event", help="Only events matching this pattern: task.claimed, task.*"),
]
TraceId = Annotated[str | None, typer.Option("--trace-id", help="Only this trace.")]
TaskId = Annotated[str | None, typer.Option("--task", help="Only this task.")]
Actor = Annotated[
    str | None, typer.Option("--actor", help="Only decisions by this agent (name or if:// id).")
]
Since = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="From this time: 2026-11-30T18:00:00Z, 2026-11-30 (midnight UTC), or a time"
        " ago: 90s, 15m, 2h, 7d (or '7d ago').",
    ),
]
Until = Annotated[
    str | None, typer.Option("--until", help="Before this time (same forms as --since).")
]
Offline = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Read the log file in this fabric data directory instead of asking a server (offline; the server may run or not).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="JSON instead of text.")]
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
    component: Component = None,
    event: Event = None,
    trace_id: TraceId = None,
    task: TaskId = None,
    actor: Actor = None,
    since: Since = None,
    until: Until = None,
    start: Annotated[int, typer.Option("--start", min=0, help="First index to look at.")] = 0,
    count: Annotated[int, typer.Option("--count", min=1, help="Most entries to print.")] = 50,
    as_json: AsJson = False,
    data: Offline = None,
    server: Server = DEFAULT_SERVER,
    agent: AsOptional = None,
    admin_token: AdminToken = None,
) -> None:
    """Print the entries that match every filter given, oldest first.

    One line each, or with --json one JSON object each ({"index", "leaf", "entry"})."""
    where = _filter(component, event, trace_id, task, actor, since, until)
    fetch = _source(data, server, agent, admin_token)
    for item in _matching(fetch, where, start, count):
        typer.echo(json.dumps(item, sort_keys=True) if as_json else _line(item))


@app.command()
def trace(
    trace_id: Annotated[str, typer.Argument(help="The trace to follow (a message's trace_id).")],
    as_json: AsJson = False,
    data: Offline = None,
    server: Server = DEFAULT_SERVER,
    agent: AsOptional = None,
    admin_token: AdminToken = None,
) -> None:
    """Every decision made for one trace, in order, with what it cost.

    Exits 1 if the log holds none."""
    fetch = _source(data, server, agent, admin_token)
    items = list(_matching(fetch, EntryFilter(trace_id=trace_id)))
    if not items:
        fail(f"no witnessed decision carries trace {trace_id}")
    for item in items:
        typer.echo(json.dumps(item, sort_keys=True) if as_json else _line(item))
    if not as_json:
        spent = _totals(item["entry"] for item in items)
        typer.echo(
            f"{len(items)} decisions; {spent.tokens_in} tokens in, {spent.tokens_out} out,"
            f" ${spent.usd:.4f}"
        )


@app.command()
def cost(
    component: Component = None,
    event: Event = None,
    trace_id: TraceId = None,
    task: TaskId = None,
    actor: Actor = None,
    since: Since = None,
    until: Until = None,
    as_json: AsJson = False,
    data: Offline = None,
    server: Server = DEFAULT_SERVER,
    agent: AsOptional = None,
    admin_token: AdminToken = None,
) -> None:
    """What the witnessed work cost, totalled by agent and model.

    The costs are the usage agents reported with progress, completion and failure."""
    where = _filter(component, event, trace_id, task, actor, since, until, with_cost=True)
    fetch = _source(data, server, agent, admin_token)
    groups: dict[tuple[str, str], _Spent] = {}
    total = _Spent()
    for item in _matching(fetch, where):
        entry = item["entry"]
        key = (entry.get("actor") or "-", entry["cost"].get("model") or "-")
        groups.setdefault(key, _Spent()).add(entry["cost"])
        total.add(entry["cost"])
    if as_json:
        rows = [{"agent": a, "model": m, **vars(s)} for (a, m), s in sorted(groups.items())]
        typer.echo(json.dumps({"by_agent_and_model": rows, "total": vars(total)}, indent=2))
        return
    print_table(
        ("agent", "model", "entries", "tokens in", "tokens out", "usd"),
        [(a, m, *s.columns()) for (a, m), s in sorted(groups.items())]
        + [("total", "", *total.columns())],
    )


@app.command()
def export(
    output_format: Annotated[
        str, typer.Option("--format", help="json (one array) or csv (one row per entry).")
    ] = "json",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
    component: Component = None,
    event: Event = None,
    trace_id: TraceId = None,
    task: TaskId = None,
    actor: Actor = None,
    since: Since = None,
    until: Until = None,
    data: Offline = None,
    server: Server = DEFAULT_SERVER,
    agent: AsOptional = None,
    admin_token: AdminToken = None,
) -> None:
    """Write the log's entries (or those matching the filters) as JSON or CSV.

    JSON keeps every field of each entry, with its index and leaf hash; CSV flattens
    them, one row per entry, for spreadsheets (a text cell that would start a formula,
    with = + - @, a tab or a carriage return, gets a leading ')."""
    if output_format not in ("json", "csv"):
        raise typer.BadParameter("json or csv", param_hint="--format")
    where = _filter(component, event, trace_id, task, actor, since, until)
    fetch = _source(data, server, agent, admin_token)
    with reported_errors():
        try:
            stream = (
                contextlib.nullcontext(sys.stdout)
                if output is None
                else output.open("w", encoding="utf-8", newline="")
            )
            with stream as out:
                written = (_write_json if output_format == "json" else _write_csv)(
                    out, _matching(fetch, where)
                )
        except BrokenPipeError:
            raise  # stdout's reader stopped reading (`| head`): click ends quietly, status 1
        except OSError as exc:  # no such directory, no permission, disk full
            fail(f"cannot write {output or 'to standard output'}: {exc.strerror or exc}")
    if output is not None:
        typer.echo(f"wrote {written} entries to {output}")


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
    _check_key(key)
    text = _read_input(bundle, "bundle")
    with reported_errors():
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
def verify(
    data: Data = None,
    key: Key = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar=ENV_STORE,
            help="The Redis of a fabric of several servers (redis://host:port/db): audit the log kept there.",
        ),
    ] = None,
    saved: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="A checkpoint saved outside the log earlier (`ifab witness checkpoint` > FILE): the log must still hold the tree it signs. Without one, a log truncated together with its checkpoints cannot be told from a younger log.",
        ),
    ] = None,
) -> None:
    """Check the whole log against every signed checkpoint, offline, and name the first entry that was changed, removed or moved. Exits 1 if anything is wrong with the log, 2 for an argument it cannot use (a --key that is not a verifier key, a --checkpoint that does not verify)."""
    directory = data or default_data_dir()
    if key is not None:
        _check_key(key)
    if store is None and not (directory / "witness.db").exists():
        fail(f"no witness log at {directory / 'witness.db'}")  # (before asking for its key)
    with reported_errors():
        verifier = key or _fabric_key(directory)
        anchor = None if saved is None else _saved_checkpoint(saved, verifier)
        if store is not None:  # the log the servers share
            from infrafabric.witness.redis_log import RedisWitnessLog

            shared = open_store_url(store)
            try:
                report = audit_log(RedisWitnessLog(shared), verifier, anchor)
            finally:
                shared.close()
        else:
            path = directory / "witness.db"
            if not path.exists():
                fail(f"no witness log at {path}")
            witness = WitnessLog(path)
            try:
                report = audit_log(witness, verifier, anchor)
            finally:
                witness.close()
    if report.ok:
        also = "" if anchor is None else f" and the saved checkpoint of {anchor.size}"
        typer.echo(
            f"ok: {report.size} entries agree with {report.checkpoints} signed checkpoints{also}"
        )
        return
    first = report.first_bad_index
    typer.echo(
        # (no entry to name: a checkpoint, a stray row, a stored subtree that is no subtree)
        "TAMPERED: "
        + ("damage no single entry shows" if first is None else f"first bad entry {first}"),
        err=True,
    )
    for problem in report.problems[:20]:
        typer.echo(f"  {problem}", err=True)
    raise typer.Exit(1)


def _check_key(key: str) -> None:
    """Refuse, as a usage error, a --key that is not a verifier key: checking with it
    could only fail, and "TAMPERED" or "NOT VERIFIED" would blame the log."""
    try:
        parse_verifier_key(key)
    except CheckpointError as exc:
        fail(f"--key: not a verifier key <name>+<id>+<base64>: {exc}", EXIT_USAGE)


def _read_input(path: Path, what: str) -> str:
    """The UTF-8 text of ``path`` (``-``: stdin); a usage error, not a traceback, if it
    cannot be read (missing, a directory, not UTF-8)."""
    name = "stdin" if str(path) == "-" else str(path)
    try:
        if str(path) == "-":
            return typer.get_binary_stream("stdin").read().decode("utf-8")
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read the {what} {name}: {exc.strerror or exc}", EXIT_USAGE)
    except UnicodeDecodeError:
        fail(f"the {what} {name} is not UTF-8 text", EXIT_USAGE)


def _saved_checkpoint(path: Path, key: str) -> Checkpoint:
    """The checkpoint in ``path``, signed by ``key``: a note as `ifab witness checkpoint`
    prints it (the "verifier key:" line after it is left out)."""
    text = _read_input(path, "checkpoint")
    note = text.split("\nverifier key: ", 1)[0]
    try:
        return open_checkpoint(note, key)
    except CheckpointError as exc:
        fail(
            f"--checkpoint {path}: not a checkpoint signed by this fabric's key: {exc}", EXIT_USAGE
        )


# -- finding entries -----------------------------------------------------------------------

Fetch = Callable[[EntryFilter, int, int], dict[str, Any]]


def _source(data: Path | None, server: str, agent: str | None, token: str | None) -> Fetch:
    """Where entries come from: the server, or with --data the log file itself (offline,
    while the server runs or not)."""
    if data is None:

        def remote(where: EntryFilter, start: int, limit: int) -> dict[str, Any]:
            return _read(
                server,
                agent,
                token,
                "/v1/witness/entries",
                start=start,
                limit=limit,
                **where.as_params(),
            )

        return remote
    path = data / "witness.db"
    if not path.exists():
        fail(f"no witness log at {path}")

    log = WitnessLog(path)  # once: opening reads the tree's edge (closed at exit)

    def local(where: EntryFilter, start: int, limit: int) -> dict[str, Any]:
        return scan(log, where, start, limit=limit, budget=1_000_000).to_json()

    return local


def _matching(
    fetch: Fetch, where: EntryFilter, start: int = 0, count: int | None = None
) -> Iterator[dict[str, Any]]:
    """Every entry from ``start`` that matches (at most ``count``), page by page."""
    taken = 0
    while True:
        limit = 1000 if count is None else min(1000, count - taken)
        with reported_errors():
            page = fetch(where, start, limit)
        for item in page["entries"]:
            yield item
            taken += 1
        if (count is not None and taken >= count) or page["next"] >= page["size"]:
            return
        start = page["next"]


def _filter(
    component: str | None,
    event: str | None,
    trace_id: str | None,
    task: str | None,
    actor: str | None,
    since: str | None,
    until: str | None,
    *,
    with_cost: bool = False,
) -> EntryFilter:
    now = time.time()
    return EntryFilter(
        component=component,
        event=event,
        trace_id=trace_id,
        task_id=task,
        actor=None if actor is None else (actor if "://" in actor else f"if://agent/{actor}"),
        since=None if since is None else _instant(since, now, "--since"),
        until=None if until is None else _instant(until, now, "--until"),
        with_cost=with_cost,
    )


_AGO = re.compile(r"([0-9]{1,9})([smhd])(?: ago)?")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _instant(text: str, now: float, option: str) -> float:
    """``2026-11-30T18:00:00Z`` (RFC 3339 UTC), ``2026-11-30`` (midnight UTC), or a time
    ago: ``90s``, ``15m``, ``2h``, ``7d`` (``7d ago`` too)."""
    ago = _AGO.fullmatch(text)
    try:
        if ago:
            instant = now - int(ago.group(1)) * _UNIT[ago.group(2)]
        elif re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
            instant = parse_timestamp(f"{text}T00:00:00Z")
        else:
            instant = parse_timestamp(text)
        # Entries compare times as text: an instant before the year 1 cannot be spelled.
        format_timestamp(instant)
    except (ValueError, OverflowError, OSError):
        fail(
            f"{option}: {text!r} is not a time (2026-11-30T18:00:00Z, 2026-11-30,"
            " or a time ago since the year 1: 90s, 15m, 2h, 7d)",
            EXIT_USAGE,
        )
    return instant


def _line(item: dict[str, Any]) -> str:
    entry = item["entry"]
    if not isinstance(entry, dict):  # "damaged": the log's bytes are not an entry
        return (
            f"{item['index']:>7}  DAMAGED (not a witness entry; see ifab witness verify)"
            f"  raw={item.get('raw', '')}"
        )
    parts = [
        f"{item['index']:>7}",
        entry.get("at", "?"),
        f"{entry.get('component')}/{entry.get('event')}",
    ]
    for name, label in (("actor", "by"), ("task_id", "task"), ("trace_id", "trace")):
        if entry.get(name):
            parts.append(f"{label}={entry[name]}")
    spent = entry.get("cost")
    if spent:
        parts.append(
            f"cost={spent.get('tokens_in', 0)}+{spent.get('tokens_out', 0)} tokens"
            f" ${spent.get('usd', 0):.4f} {spent.get('model', '')}".rstrip()
        )
    return "  ".join(parts)


@dataclass
class _Spent:
    entries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    usd: float = 0.0

    def add(self, cost: dict[str, Any]) -> None:
        self.entries += 1
        self.tokens_in += int(cost.get("tokens_in", 0))
        self.tokens_out += int(cost.get("tokens_out", 0))
        self.usd += float(cost.get("usd", 0.0))

    def columns(self) -> tuple[str, str, str, str]:
        return (str(self.entries), str(self.tokens_in), str(self.tokens_out), f"{self.usd:.4f}")


def _totals(entries: Iterable[dict[str, Any]]) -> _Spent:
    spent = _Spent()
    for entry in entries:
        if entry.get("cost"):
            spent.add(entry["cost"])
    return spent


_CSV_COLUMNS = (
    "index",
    "leaf",
    "at",
    "component",
    "event",
    "actor",
    "task_id",
    "trace_id",
    "tokens_in",
    "tokens_out",
    "usd",
    "model",
    "payload",
    "damaged",
    "raw",
)


def _write_json(out: TextIO, items: Iterable[dict[str, Any]]) -> int:
    count = 0
    out.write("[")
    for item in items:
        out.write(("," if count else "") + "\n" + json.dumps(item, sort_keys=True))
        count += 1
    out.write("\n]\n")
    return count


#: What a spreadsheet reads as the start of a formula (OWASP, "CSV injection").
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """``value`` for a CSV cell: text an agent chose (a model, a task id, a trace id)
    that a spreadsheet would run as a formula (``=HYPERLINK(...)``) gets a leading ``'``,
    which spreadsheets show as text. The JSON export keeps every value exact."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _write_csv(out: TextIO, items: Iterable[dict[str, Any]]) -> int:
    writer = csv.writer(out)
    writer.writerow(_CSV_COLUMNS)
    count = 0
    for item in items:
        if not isinstance(item["entry"], dict):  # a damaged entry: its bytes, in base64
            writer.writerow([item["index"], item["leaf"], *[""] * 11, "true", item.get("raw", "")])
            count += 1
            continue
        entry = item["entry"]
        spent = entry.get("cost") or {}
        row = (
            item["index"],
            item["leaf"],
            entry.get("at", ""),
            entry.get("component", ""),
            entry.get("event", ""),
            entry.get("actor", ""),
            entry.get("task_id", ""),
            entry.get("trace_id", ""),
            spent.get("tokens_in", ""),
            spent.get("tokens_out", ""),
            spent.get("usd", ""),
            spent.get("model", ""),
            json.dumps(entry.get("payload", {}), sort_keys=True, separators=(",", ":")),
            "",
            "",
        )
        writer.writerow([_cell(value) for value in row])
        count += 1
    return count


def _fabric_key(directory: Path) -> str:
    """The verifier key of the fabric whose data directory this is (its public key)."""
    keyring = Keystore(directory / "keys").load_keyring()
    record = keyring.active(f"if://agent/{FABRIC_IDENTITY}")
    if record is None:
        fail(f"no fabric key in {directory / 'keys'}: pass --key")
    return verifier_key(f"infrafabric.witness/{record.kid}", record.public_key_bytes)
