"""The simulator runs the real node code at scale: every live peer gets every broadcast,
before and after a tenth of the peers die, and a run repeats exactly from its seed."""

from __future__ import annotations

from infrafabric.mesh.sim import LinkModel, Simulation, percentile
from infrafabric.mesh.topology import Topology


def test_every_peer_gets_every_broadcast_and_a_tenth_dying_changes_nothing() -> None:
    sim = Simulation(200, seed=3)
    sim.start()
    assert min(sim.degrees()) >= Topology().k(200)
    before = sim.broadcasts(5, "before", wait=0.5)
    assert before.missed == 0
    assert percentile(before.latencies, 0.95) < 0.05
    dead = sim.alive()[::10]
    sim.kill(dead)
    assert sim.broadcasts(5, "dying", wait=0.5).missed == 0  # before anyone noticed
    sim.run_for(2.0)
    sim.forget(dead)  # presence expired: the ring closes round the gaps
    sim.run_for(1.0)
    assert min(sim.degrees()) >= Topology().k(180)
    assert sim.broadcasts(5, "after", wait=0.5).missed == 0


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
    lossy = sim.broadcasts(5, "lossy", wait=0.5)
    assert lossy.missed == 0
    assert len(lossy.latencies) == lossy.expected == 5 * 149


def test_a_run_repeats_from_its_seed() -> None:
    def run() -> list[float]:
        sim = Simulation(80, model=LinkModel(loss=0.02), seed=9)
        sim.start()
        return sim.broadcasts(3, "r", wait=0.5).latencies

    assert run() == run()
