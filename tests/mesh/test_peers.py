"""Real WebRTC peers in separate processes (`ifab mesh join`, aiortc on loopback), with
real signaling through a real `ifab serve` and a real TURN relay (coturn)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infrafabric.protocol.timefmt import parse_timestamp
from tests.harness import IFAB, Fabric
from tests.mesh.conftest import Peer, Turn, mesh_report, wait_until


def linked(fabric: Fabric, names: list[str], at_least: int) -> bool:
    """Every named peer reported at least ``at_least`` open links."""
    peers = {p["agent"]: p for p in mesh_report(fabric)["peers"]}
    return all(
        len(peers.get(f"if://agent/{name}", {"links": []})["links"]) >= at_least for name in names
    )


def witnessed(fabric: Fabric, event: str) -> list[dict[str, Any]]:
    found = fabric("witness", "log", "--component", "mesh", "--event", event, "--json")
    assert found.returncode == 0, found.stderr.decode()
    return [json.loads(line) for line in found.stdout.decode().splitlines() if line.strip()]


def test_ten_peers_form_a_partial_mesh_and_talk_over_it(
    fabric: Fabric, peers: Callable[..., Peer]
) -> None:
    names = [f"p{n}" for n in range(10)]
    running = [peers(name, "--degree", "3") for name in names]
    seconds = wait_until(lambda: linked(fabric, names, 3), "the mesh did not form", 90)
    statuses = {peer.name: peer.status() for peer in running}
    assert all(len(s["links"]) < 9 for s in statuses.values()), "a partial mesh, not a full one"

    # a broadcast reaches all nine others once, over the mesh
    origin = running[0]
    origin.command({"broadcast": {"hello": "everyone"}})
    message_id = origin.expect(lambda line: "broadcast" in line)["broadcast"]
    for peer in running[1:]:
        line = peer.expect(lambda line: line.get("received") == message_id, 20)
        assert (line["from"], line["via"], line["content"]) == (
            origin.agent, "gossip", {"hello": "everyone"}
        )  # fmt: skip

    # a direct message to a peer it has no link to goes hop by hop, acknowledged
    linked_to = {link["peer"] for link in statuses["p0"]["links"]}
    far = next(peer for peer in running[1:] if peer.agent not in linked_to)
    sent = origin.send(far.name, {"task": "t-1"})
    assert sent["via"] == "mesh", sent
    line = far.expect(lambda line: line.get("received") == sent["sent"], 20)
    assert (line["via"], line["content"]) == ("mesh", {"task": "t-1"})
    assert statuses["p0"]["routes"].get(far.agent) in linked_to
    assert origin.status()["counts"]["frames_out"] > 0

    # the links are shown by `ifab mesh status`, and their coming up was witnessed
    wait_until(
        lambda: far.agent in next(
            p for p in mesh_report(fabric)["peers"] if p["agent"] == origin.agent
        )["routes"],
        "p0's routes were not reported", 15,
    )  # fmt: skip
    table = fabric("mesh", "status")
    assert table.returncode == 0, table.stderr.decode()
    text = table.stdout.decode()
    assert "direct" in text
    assert "via" in text  # the routes table: peers reached through a neighbour
    wait_until(lambda: len(witnessed(fabric, "link_up")) >= 10 * 3, "link_up not witnessed", 30)
    for peer in running:
        assert peer.stop() == 0  # SIGTERM: leaves cleanly
    print(f"ten peers linked in {seconds:.1f} s")


def test_relay_only_links_go_through_the_turn_server(
    fabric: Fabric, peers: Callable[..., Peer], turn: Turn
) -> None:
    a = peers("relay-a", "--relay-only", *turn.options())
    b = peers("relay-b", "--relay-only", *turn.options())
    wait_until(lambda: linked(fabric, ["relay-a", "relay-b"], 1), "no relayed link", 60)
    assert [link["relay"] for link in a.status()["links"]] == [True]
    sent = a.send("relay-b", {"over": "turn"})
    assert sent["via"] == "mesh"
    b.expect(lambda line: line.get("received") == sent["sent"])
    log = turn.log.read_text()  # the relay allocated for our peers and carried their data
    assert f"user <{turn.username}>: incoming packet ALLOCATE processed, success" in log
    assert "incoming packet CHANNEL_BIND processed, success" in log


def test_a_link_that_cannot_go_direct_goes_through_the_relay_after_three_failures(
    fabric: Fabric, peers: Callable[..., Peer], turn: Turn
) -> None:
    """One peer offers only IPv4 candidates, the other only IPv6: no direct pair exists.
    Three direct attempts fail (after 1 s, 2 s, 4 s of backoff), the fourth goes through
    the TURN relay and the link opens."""
    a = peers("switch-a", "--bind", "127.0.0.1", *turn.options())
    b = peers("switch-b", "--bind", "::1", *turn.options())
    wait_until(lambda: linked(fabric, ["switch-a", "switch-b"], 1), "never linked", 90)
    [link] = a.status()["links"]
    assert link["relay"] is True
    events = "\n".join(a.events)
    assert "mesh: reconnect if://agent/switch-b attempt=3" in events
    assert "mesh: relay_fallback if://agent/switch-b attempt=4" in events
    sent = a.send("switch-b", {"over": "the relay"})
    assert sent["via"] == "mesh"
    b.expect(lambda line: line.get("received") == sent["sent"])
    wait_until(lambda: bool(witnessed(fabric, "relay_fallback")), "fallback not witnessed", 20)


def test_a_wrong_turn_password_means_no_relayed_link(
    fabric: Fabric, peers: Callable[..., Peer], turn: Turn
) -> None:
    """The relay is really in the path: without its credentials relay-only peers stay
    apart, and their messages go through the server."""
    a = peers("nopass-a", "--relay-only", *turn.options(password="wrong"))
    b = peers("nopass-b", "--relay-only", *turn.options(password="wrong"))
    # the relay was asked, and refused our peers (so "no link" is not "never tried")
    wait_until(
        lambda: f"user {turn.username} credentials are incorrect" in turn.log.read_text(),
        "the peers never asked the relay",
        30,
    )
    time.sleep(3)  # offers made and answered meanwhile: still no relay, so no link
    assert a.status()["links"] == []
    assert "ALLOCATE processed, success" not in turn.log.read_text()
    sent = a.send("nopass-b", {"over": "server"})
    assert sent["via"] == "server"
    line = b.expect(lambda line: line.get("received") == sent["sent"])
    assert line["via"] == "server"


def test_killed_peers_heal_and_no_acknowledged_message_is_lost(
    fabric: Fabric, peers: Callable[..., Peer], tmp_path: Path
) -> None:
    names = ["heal-a", "heal-b", "heal-c", "heal-d"]
    log = tmp_path / "received.jsonl"
    a = peers("heal-a")
    b = peers("heal-b", "--log", str(log))
    others = [peers(name) for name in names[2:]]
    wait_until(lambda: linked(fabric, names, 3), "the mesh did not form", 60)

    acknowledged: list[str] = []
    for n in range(10):
        acknowledged.append(a.send("heal-b", {"n": n})["sent"])
    b.stop(signal.SIGKILL)  # mid-run: what it logged is all it took
    others[0].stop(signal.SIGKILL)  # and another with it
    for n in range(10, 25):  # while b is dead: through the server, into its inbox
        sent = a.send("heal-b", {"n": n})
        assert "sent" in sent, sent
        acknowledged.append(sent["sent"])
    restarted_at, restarted_wall = time.monotonic(), time.time()
    b = peers("heal-b", "--log", str(log))
    peers(names[2])

    def healed() -> bool:
        links = {link["peer"] for link in b.status()["links"]}
        return len(links) >= 3 and b.agent in {link["peer"] for link in a.status()["links"]}

    # within the first steps of the schedule (1 s, 2 s, 4 s, +/-20 %) after the restart
    try:
        seconds = wait_until(healed, "the mesh did not heal within the backoff schedule", 20)
    except AssertionError:
        print("A", a.status(), a.events[-30:], "\nB", b.status(), b.events[-30:])
        raise
    for n in range(25, 30):  # and over the healed mesh again
        sent = a.send("heal-b", {"n": n})
        acknowledged.append(sent["sent"])
    assert sent["via"] == "mesh"
    wait_until(
        lambda: (
            set(acknowledged)
            <= {json.loads(line)["received"] for line in log.read_text().splitlines()}
        ),
        "an acknowledged message is missing from the receiver's log",
        30,
    )
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    vias = {line["received"]: line["via"] for line in lines}
    assert {vias[m] for m in acknowledged[10:25]} == {"server"}  # kept by the inbox
    assert len(lines) == len({line["received"] for line in lines})  # each taken once
    assert time.monotonic() - restarted_at < 60
    wait_until(lambda: bool(witnessed(fabric, "link_lost")), "lost links not witnessed", 20)
    # the dead peers' probes went unanswered before their links were given up for lost,
    # and the restarted peer's new links were witnessed too
    assert witnessed(fabric, "quality_degraded")

    def relinked() -> bool:
        return any(
            entry["entry"]["actor"] == b.agent
            and parse_timestamp(entry["entry"]["at"]) > restarted_wall
            for entry in witnessed(fabric, "link_up")
        )

    wait_until(relinked, "the restarted peer's links were not witnessed", 20)
    print(f"healed {seconds:.1f} s after the restart")


def test_join_without_a_turn_server_refuses_relay_only(fabric: Fabric) -> None:
    assert IFAB is not None
    refused = subprocess.run(
        [IFAB, "mesh", "join", "--as", "nobody", "--relay-only"],
        env=fabric.env(), capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert b"--relay-only needs --turn" in refused.stderr
