"""The simulator runs the real node code at scale: every live peer gets every broadcast,
before and after a tenth of the peers die, and a run repeats exactly from its seed."""

from __future__ import annotations

from infrafabric.mesh.sim import LinkModel, Simulation, percentile
from infrafabric.mesh.topology import Topology


def broadcast_round(sim: Simulation, count: int, tag: str) -> tuple[list[float], int]:
    """``count`` broadcasts from random live peers: latencies and deliveries missed."""
    latencies: list[float] = []
    missed = 0
    alive = sim.alive()
    for n in range(count):
        origin = alive[sim.rng.randrange(len(alive))]
        message_id = f"{tag}-{n}"
        start = sim.now
        sim.broadcast(origin, message_id)
        sim.run_for(0.5)
        for name in alive:
            if name != origin:
                at = sim.peers[name].received.get(message_id)
                if at is None:
                    missed += 1
                else:
                    latencies.append(at - start)
    return latencies, missed


def test_every_peer_gets_every_broadcast_and_a_tenth_dying_changes_nothing() -> None:
    sim = Simulation(200, seed=3)
    sim.start()
    assert min(sim.degrees()) >= Topology().k(200)
    latencies, missed = broadcast_round(sim, 5, "before")
    assert missed == 0
    assert percentile(latencies, 0.95) < 0.05
    dead = sim.alive()[::10]
    sim.kill(dead)
    latencies, missed = broadcast_round(sim, 5, "dying")  # before anyone noticed
    assert missed == 0
    sim.run_for(2.0)
    sim.forget(dead)  # presence expired: the ring closes round the gaps
    sim.run_for(1.0)
    assert min(sim.degrees()) >= Topology().k(180)
    latencies, missed = broadcast_round(sim, 5, "after")
    assert missed == 0


def test_direct_messages_go_over_the_mesh_and_to_the_server_when_the_receiver_is_dead() -> None:
    sim = Simulation(100, seed=5)
    sim.start()
    names = sim.names
    for n in range(20):
        sim.send(names[n], names[-1 - n], f"d{n}")
    sim.run_for(1.0)
    assert {sim.outcomes[f"d{n}"][0] for n in range(20)} == {"mesh"}
    sim.kill([names[50]])
    sim.send(names[0], names[50], "to-the-dead")
    sim.run_for(3.0)
    assert sim.outcomes["to-the-dead"][0] == "server"


def test_lossy_links_still_deliver_every_broadcast_by_other_paths() -> None:
    sim = Simulation(150, model=LinkModel(loss=0.05), seed=11)
    sim.start()
    latencies, missed = broadcast_round(sim, 5, "lossy")
    assert missed == 0
    assert len(latencies) == 5 * 149


def test_a_run_repeats_from_its_seed() -> None:
    def run() -> list[float]:
        sim = Simulation(80, model=LinkModel(loss=0.02), seed=9)
        sim.start()
        return broadcast_round(sim, 3, "r")[0]

    assert run() == run()
