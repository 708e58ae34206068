"""``ifab mesh``: join the agent mesh as one identity, and see how the mesh is doing.

``ifab mesh join`` stays in the foreground: every message for the agent is printed on
stdout as a JSON line (and, with ``--log``, appended to a file and synced before it is
acknowledged); JSON lines on stdin send (``{"send": {"to": "bob", "content": {...}}}``),
broadcast (``{"broadcast": {...}}``) or ask for the peer's status (``{"status": true}``).
Link events go to stderr. SIGTERM or Ctrl-C leaves the mesh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from infrafabric.cli.board import DEFAULT_SERVER, AdminToken, As, AsOptional, Server, _read, _run
from infrafabric.cli.common import (
    EXIT_USAGE,
    fail,
    keystore,
    passphrase,
    print_table,
    reported_errors,
)
from infrafabric.client import Client
from infrafabric.errors import CallerError
from infrafabric.mesh.topology import Topology
from infrafabric.protocol.message import agent_id

if TYPE_CHECKING:
    from infrafabric.mesh.node import MeshEvent
    from infrafabric.mesh.peer import MeshMessage, MeshPeer, MeshSettings

app = typer.Typer(
    help=(
        "Talk to other agents peer to peer over WebRTC data channels, with the server as "
        "signaling point and fallback. `ifab mesh join --as NAME` joins; `ifab mesh status` "
        "shows every peer's links and their quality. See docs/mesh.md."
    ),
    no_args_is_help=True,
)

ENV_TURN_PASSWORD = "IFAB_TURN_PASSWORD"  # noqa: S105 - the variable's name


@app.command("join")
def join(
    agent: As,
    server: Server = DEFAULT_SERVER,
    degree: Annotated[
        int | None,
        typer.Option(
            "--degree", min=1, help="Links per peer, k (default: ceil(2 ln N)).", show_default=False
        ),
    ] = None,
    turn: Annotated[
        str | None,
        typer.Option(
            "--turn", help="A TURN relay, turn:HOST:PORT, for links that cannot go direct."
        ),
    ] = None,
    turn_user: Annotated[str, typer.Option("--turn-user", help="The TURN relay's user name.")] = "",
    turn_password: Annotated[
        str,
        typer.Option(
            "--turn-password",
            envvar=ENV_TURN_PASSWORD,
            help="The TURN relay's password.",
            show_default=False,
        ),
    ] = "",
    relay_only: Annotated[
        bool, typer.Option("--relay-only", help="Every link through the TURN relay.")
    ] = False,
    bind: Annotated[
        list[str],
        typer.Option("--bind", help="Offer ICE host candidates only on this address (repeat)."),
    ] = [],  # noqa: B006
    log: Annotated[
        Path | None,
        typer.Option(
            "--log",
            help="Append each message received (a JSON line) and sync before acknowledging it.",
        ),
    ] = None,
) -> None:
    """Join the mesh as --as NAME until SIGTERM or Ctrl-C; messages on stdout, commands on stdin."""
    try:
        import aiortc  # noqa: F401
    except ImportError:
        fail("ifab mesh needs aiortc: pip install 'infrafabric[webrtc]'", EXIT_USAGE)
    from infrafabric.mesh.peer import MeshSettings, TurnServer

    if relay_only and turn is None:
        fail("--relay-only needs --turn", EXIT_USAGE)
    try:
        settings = MeshSettings(
            topology=Topology(degree=degree),
            turn=None if turn is None else TurnServer(turn, turn_user, turn_password),
            relay_only=relay_only,
            host_addresses=tuple(bind) or None,
        )
    except CallerError as exc:
        fail(str(exc), EXIT_USAGE)
    with reported_errors():  # no such identity, a wrong passphrase: one line, status 1
        identity = keystore().unlock(agent, passphrase(f"Passphrase for {agent}: "))
    _run(lambda: _join(server, identity, settings, log))


async def _join(server: str, identity: Any, settings: MeshSettings, log: Path | None) -> None:
    from infrafabric.mesh.peer import MeshPeer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Client.connect(server, identity) as client, MeshPeer.join(client, settings) as peer:
        peer.on_event = _print_event
        _say({"joined": peer.me, "session": peer.session})
        failed: list[str] = []
        work = [
            asyncio.create_task(_receive(peer, log, stop, failed)),
            asyncio.create_task(_commands(peer, stop)),
        ]
        await stop.wait()
        for task in work:
            task.cancel()
        for task in work:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if failed:
        fail(failed[0])


def _say(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _print_event(event: MeshEvent) -> None:
    detail = " ".join(f"{k}={v}" for k, v in event.detail.items())
    typer.echo(f"mesh: {event.kind.removeprefix('mesh.')} {event.peer} {detail}".rstrip(), err=True)


async def _receive(
    peer: MeshPeer, log: Path | None, stop: asyncio.Event, failed: list[str]
) -> None:
    """Keep (``--log``), print, then acknowledge each message. A message that cannot be
    kept or printed ends the peer (exit 1) unacknowledged, so its sender's fallback or
    the server's inbox still has it; an acknowledgement the server did not take now is
    made again when its copy comes back."""
    handle = None if log is None else log.open("a", encoding="utf-8")
    try:
        async for received in peer.messages():
            line = _received(received)
            try:
                if handle is not None:  # durable before the sender is told it arrived
                    handle.write(json.dumps(line, separators=(",", ":")) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                _say(line)
            except OSError as exc:
                failed.append(f"cannot keep a message: {exc}")
                stop.set()
                return
            try:
                await peer.ack(received)
            except Exception as exc:
                typer.echo(f"mesh: acknowledging {line['received']} failed: {exc}", err=True)
    finally:
        if handle is not None:
            handle.close()


def _received(received: MeshMessage) -> dict[str, Any]:
    message = received.message
    return {
        "received": message.id,
        "from": message.sender,
        "via": received.via,
        "performative": message.performative,
        "content": message.content,
    }


async def _commands(peer: MeshPeer, stop: asyncio.Event) -> None:
    """JSON lines on stdin, read by a thread (a pipe, a file or a terminal alike)."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, name="mesh-stdin", daemon=True).start()
    while (line := await lines.get()) is not None:
        if not line.strip():
            continue
        try:
            _say(await _command(peer, json.loads(line)))
        except Exception as exc:  # a bad command is answered, never fatal
            _say({"error": type(exc).__name__, "detail": str(exc)})


async def _command(peer: MeshPeer, command: dict[str, Any]) -> dict[str, Any]:
    if "send" in command:
        send = command["send"]
        to = send["to"] if str(send["to"]).startswith("if://") else agent_id(send["to"])
        sent = await peer.send(to, send.get("performative", "inform"), send.get("content", {}))
        return {"sent": sent["id"], "to": to, "via": sent["via"]}
    if "broadcast" in command:
        return {"broadcast": await peer.broadcast(command["broadcast"])}
    if "status" in command:
        return {"status": peer.status()}
    raise ValueError(f"unknown command {sorted(command)}: send, broadcast or status")


@app.command("status")
def status(
    server: Server = DEFAULT_SERVER,
    agent: AsOptional = None,
    admin_token: AdminToken = None,
    as_json: Annotated[bool, typer.Option("--json", help="The server's report as JSON.")] = False,
) -> None:
    """Every mesh peer's links (direct or relayed), their quality and reconnects under way."""
    report = _read(server, agent, admin_token, "/v1/mesh")
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    if not report["peers"]:
        typer.echo(f"no mesh peers have reported in the last {report['stale_after']:.0f} s")
        return
    rows = []
    for peer in report["peers"]:
        name = peer["agent"].removeprefix("if://agent/")
        for link in peer["links"]:
            rtt = "" if link["rtt_ms"] is None else f"{link['rtt_ms']:.1f}"
            loss = "" if link["loss_percent"] is None else f"{link['loss_percent']:.0f}%"
            rows.append(
                (name, link["peer"].removeprefix("if://agent/"),
                 "relay" if link["relay"] else "direct", link["band"] or "-", rtt, loss)
            )  # fmt: skip
        for retrying in peer["retrying"]:
            rows.append((name, retrying.removeprefix("if://agent/"), "retrying", "-", "", ""))
        if not peer["links"] and not peer["retrying"]:
            rows.append((name, "(no links)", "", "", "", ""))
    print_table(("peer", "linked to", "path", "quality", "rtt ms", "loss"), rows)
    routed = [
        (peer["agent"].removeprefix("if://agent/"), to.removeprefix("if://agent/"),
         hop.removeprefix("if://agent/"))
        for peer in report["peers"]
        for to, hop in sorted(peer["routes"].items())
        if hop != to
    ]  # fmt: skip
    if routed:
        typer.echo("")
        print_table(("peer", "to", "via"), routed)
