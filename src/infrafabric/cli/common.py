"""What every ``ifab`` command shares: clock, passphrases, stdin, errors, exit codes."""

from __future__ import annotations

import contextlib
import getpass
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import typer

from infrafabric.errors import FabricError
from infrafabric.keystore import ENV_PASSPHRASE, Keystore
from infrafabric.protocol.timefmt import parse_timestamp
from infrafabric.types import Timestamp

#: Exit status for a refusal (message rejected, wrong passphrase, unknown identity).
EXIT_FAILED = 1
#: Exit status for a usage error (what typer uses for bad options too).
EXIT_USAGE = 2
#: Largest JSON document read from stdin by commands other than ``verify``.
MAX_STDIN_BYTES = 16 * 1024 * 1024


def fail(text: str, code: int = EXIT_FAILED) -> NoReturn:
    typer.echo(f"error: {text}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Turn InfraFabric errors into one ``error:`` line on stderr and exit status 1."""
    try:
        yield
    except FabricError as exc:
        fail(str(exc))


def keystore() -> Keystore:
    return Keystore()


def now_or(value: str | None) -> Timestamp:
    """``--now`` as POSIX time, or the system clock."""
    if value is None:
        return time.time()
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        fail(f"--now: {exc}", EXIT_USAGE)


def passphrase(prompt: str, *, env: str = ENV_PASSPHRASE, confirm: bool = False) -> str:
    """The passphrase from ``$env``, else asked on the terminal (never read from stdin,
    which commands use for documents)."""
    value = os.environ.get(env)
    if value is not None:
        return value
    try:
        with open("/dev/tty"):
            pass
    except OSError:
        fail(f"no passphrase: set {env} or run from a terminal")
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("Repeat: ") != first:
        fail("passphrases differ")
    return first


def read_stdin(limit: int = MAX_STDIN_BYTES) -> bytes:
    """Up to ``limit`` bytes of stdin; one more byte means the input is too large."""
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        fail(f"input larger than {limit} bytes")
    return data


def read_json_document(source: Path | None = None) -> Any:
    """Parse one strict JSON document (no duplicate names, no NaN/Infinity) from a file or stdin."""
    data = read_stdin() if source is None or str(source) == "-" else _read_file(source)
    try:
        return json.loads(
            data,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
            parse_float=_finite,
        )
    except (ValueError, RecursionError) as exc:
        fail(f"not a JSON document: {exc}")


def print_table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """Plain aligned columns: readable in a terminal, whole when piped into grep or awk."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in (headers, *rows):
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def write_bytes(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _read_file(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_STDIN_BYTES + 1)
    except OSError as exc:
        fail(f"{path}: {exc.strerror}")
    if len(data) > MAX_STDIN_BYTES:
        fail(f"{path} is larger than {MAX_STDIN_BYTES} bytes")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"duplicate member name {key!r}")
        seen.add(key)
    return dict(pairs)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:32]} is out of range")
    return number


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")
