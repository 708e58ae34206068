"""``ifab serve``: run a fabric server over a data directory."""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from infrafabric import logs
from infrafabric.board.rules import DEFAULT_CONFIG, BoardConfig
from infrafabric.cli.common import reported_errors
from infrafabric.governor.policy import PolicyError
from infrafabric.protocol.verify import Mode
from infrafabric.server.runner import (
    ENV_DATA,
    ENV_STORE,
    default_data_dir,
    given_admin_token,
    open_server,
    run_server,
)


def serve(
    data: Annotated[
        Path | None,
        typer.Option("--data", help=f"Data directory (default: ${ENV_DATA} or your data dir)."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")
    ] = 8765,
    synchronous: Annotated[
        str,
        typer.Option(
            "--synchronous",
            help="FULL: a commit survives power loss. NORMAL: it survives a crash of the server, not of the machine.",
        ),
    ] = "FULL",
    lease: Annotated[
        float,
        typer.Option(
            "--lease", min=1.0, max=86_400.0, help="Seconds a claim lasts without a heartbeat."
        ),
    ] = DEFAULT_CONFIG.lease_seconds,
    max_attempts: Annotated[
        int,
        typer.Option(
            "--max-attempts",
            min=1,
            max=20,
            help="Claims that may fail or expire before a task is dead (give_up does not count; a task may set its own).",
        ),
    ] = DEFAULT_CONFIG.max_attempts,
    max_helpers: Annotated[
        int,
        typer.Option(
            "--max-helpers", min=0, max=100, help="Agents a help request invites at most."
        ),
    ] = DEFAULT_CONFIG.max_helpers,
    healthy_within: Annotated[
        float,
        typer.Option(
            "--healthy-within",
            min=1.0,
            help="An agent is green while it was last heard from (any checked message or"
            " board operation) less than this long ago (seconds).",
        ),
    ] = DEFAULT_CONFIG.healthy_within,
    alive_within: Annotated[
        float,
        typer.Option(
            "--alive-within",
            min=1.0,
            help="An agent is yellow while it was last heard from less than this long ago,"
            " red beyond (seconds; longer than --healthy-within).",
        ),
    ] = DEFAULT_CONFIG.alive_within,
    escalate_after: Annotated[
        float,
        typer.Option(
            "--escalate-after",
            min=1.0,
            help="Seconds a task may stay blocked before an escalation event.",
        ),
    ] = DEFAULT_CONFIG.escalate_blocked_after,
    witness: Annotated[
        bool,
        typer.Option(
            "--witness/--no-witness",
            help="Keep the witness log of every decision (off only to measure its cost).",
        ),
    ] = True,
    verify_mode: Annotated[
        str,
        typer.Option(
            "--verify-mode",
            help="strict: refuse every message that fails a check. audit: accept every message that parses, and witness each failed check (to roll out signing, or watch a suspect swarm).",
        ),
    ] = "strict",
    governor: Annotated[
        bool,
        typer.Option(
            "--governor/--no-governor",
            help="Assign work by capability and price, enforce budgets and breakers (off only to measure its cost).",
        ),
    ] = True,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            help="The governor's YAML policy (docs/governor.md); default: the built-in one. SIGHUP reloads it.",
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option("--profile", help="Policy profile: default, development, production..."),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar=ENV_STORE,
            help="Share the board with other servers: redis://host:port/db (docs/operations.md). Default: SQLite in the data directory.",
        ),
    ] = None,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            help="text (warnings and worse) or json (one object a line from INFO, with every "
            "decision and refusal: for Loki and other log shippers).",
        ),
    ] = "text",
) -> None:
    """Run the fabric server (REST under /v1, WebSocket /v1/ws) until Ctrl-C."""
    if synchronous not in ("FULL", "NORMAL"):
        raise typer.BadParameter("FULL or NORMAL", param_hint="--synchronous")
    if verify_mode not in (Mode.STRICT, Mode.AUDIT):
        raise typer.BadParameter("strict or audit", param_hint="--verify-mode")
    if log_format not in ("text", "json"):
        raise typer.BadParameter("text or json", param_hint="--log-format")
    if alive_within <= healthy_within:
        raise typer.BadParameter(
            f"must be longer than --healthy-within ({healthy_within:g} s)",
            param_hint="--alive-within",
        )
    logs.configure("json" if log_format == "json" else "text")
    directory = data or default_data_dir()
    token_file = directory / "admin.token"
    with reported_errors():  # a token no header can carry
        given_token = given_admin_token() is not None  # as the server reads it
    first_token = not given_token and not token_file.exists()
    config = BoardConfig(
        lease_seconds=lease,
        max_attempts=max_attempts,
        max_helpers=max_helpers,
        healthy_within=healthy_within,
        alive_within=alive_within,
        escalate_blocked_after=escalate_after,
    )
    with reported_errors():  # a policy that does not load: its file, line and key
        state = open_server(
            directory,
            synchronous=synchronous,
            config=config,
            witness=witness,
            witness_process=True,
            verify_mode=Mode(verify_mode),
            governor=governor,
            policy=policy,
            profile=profile,
            store_url=store,
        )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if state.service.governor is not None:
        driver = state.service.governor

        def reload_policy(*_: object) -> None:
            def reload() -> None:  # off the signal handler: it reads a file and writes
                try:
                    loaded = driver.reload()
                    typer.echo(f"policy reloaded: {loaded.source} ({loaded.profile_name})")
                except PolicyError as exc:
                    typer.echo(f"policy NOT reloaded, the old one stays: {exc}", err=True)

            threading.Thread(target=reload, name="ifab-policy-reload", daemon=True).start()

        signal.signal(signal.SIGHUP, reload_policy)
    with run_server(state, host=host, port=port, own_logging=True) as server:
        # The objects of start-up (modules, routes, keyring) live as long as the process:
        # moved out of the collector's sight, a full collection walks only what requests
        # made since, and takes ~1 ms instead of ~30 ms (a stall every few seconds).
        gc.freeze()
        where = f"{directory}"
        if store is not None:
            from infrafabric.storage.redis import redacted

            where = f"{redacted(store)}, keys in {directory}"
        typer.echo(f"InfraFabric serving {server.url} (data in {where})")
        if first_token:  # made just now: shown this once, then only kept in the file
            typer.echo(f"operator token (new): {token_file.read_text().strip()}")
            typer.echo(f"  kept in {token_file} (mode 0600); $IFAB_ADMIN_TOKEN overrides it")
        elif given_token:
            typer.echo("operator token: $IFAB_ADMIN_TOKEN")
        else:
            typer.echo(f"operator token: {token_file} (or $IFAB_ADMIN_TOKEN)")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    typer.echo("stopped")
