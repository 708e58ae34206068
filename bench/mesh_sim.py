"""The mesh at scale (issue 9), in the simulator: the real node code for 100 and 1,000
peers over modelled links (5 ms +/- 1 ms, a CPU per peer: 20 us a frame, 100 us a
verify; see infrafabric/mesh/sim.py), seeded so a run repeats.

For each size: broadcast delivery latency p50/p95/p99 to every live peer, the share
delivered, frames each peer handles per broadcast and its links; then the same after a
tenth of the peers die (before anyone notices, and once their presence has expired and
the ring has closed round them). The baseline, on the same model: one server relaying
each broadcast to every peer over the same links (up, verify, one frame a peer down).
"""

from __future__ import annotations

import random
import sys
import time

from claims import render
from infrafabric.mesh.sim import LinkModel, Simulation, percentile
from infrafabric.mesh.topology import Topology


def broadcasts(sim: Simulation, count: int, tag: str) -> tuple[list[float], int, int, float]:
    """Latencies (s), deliveries made and expected, and frames per peer per broadcast."""
    latencies: list[float] = []
    expected = 0
    alive = sim.alive()
    frames_before = sum(sim.peers[name].frames_in for name in alive)
    for n in range(count):
        origin = alive[sim.rng.randrange(len(alive))]
        message_id = f"{tag}-{n}"
        start = sim.now
        sim.broadcast(origin, message_id)
        sim.run_for(0.3)
        for name in alive:
            if name != origin:
                expected += 1
                at = sim.peers[name].received.get(message_id)
                if at is not None:
                    latencies.append(at - start)
    frames = sum(sim.peers[name].frames_in for name in alive) - frames_before
    return latencies, len(latencies), expected, frames / count / len(alive)


def server_fanout(size: int, model: LinkModel, count: int, seed: int) -> list[float]:
    """The same broadcasts relayed by one server on the same model."""
    rng = random.Random(seed)  # a seeded model
    latencies = []
    for _ in range(count):
        up = model.latency + rng.uniform(-model.jitter, model.jitter)
        ready = up + model.frame_cost + model.verify_cost
        for n in range(size - 1):
            sent = ready + (n + 1) * model.frame_cost
            latencies.append(sent + model.latency + rng.uniform(-model.jitter, model.jitter))
    return latencies


def row(
    name: str, latencies: list[float], delivered: int, expected: int, extra: str
) -> tuple[str, str]:
    return (
        name,
        f"p50 {percentile(latencies, 0.5) * 1e3:6.1f} ms  p95 {percentile(latencies, 0.95) * 1e3:6.1f} ms"
        f"  p99 {percentile(latencies, 0.99) * 1e3:6.1f} ms  delivered {100 * delivered / expected:6.2f} %"
        f"  {extra}",
    )


def main(quick: bool = False) -> None:
    count = 5 if quick else 20
    print("\nMesh simulator: the real node code over modelled 5 ms links (seeded)")
    model = LinkModel()
    rows = []
    for size, degree in ((100, 20), (1000, None)):
        topology = Topology(degree=degree)
        started = time.perf_counter()
        sim = Simulation(size, topology=topology, model=model, seed=size)
        sim.start()
        degrees = sim.degrees()
        label = f"N={size:,} k={topology.k(size)}"
        links = f"links/peer {sum(degrees) / len(degrees):5.1f} (min {min(degrees)}, max {max(degrees)})"
        lat, got, want, frames = broadcasts(sim, count, "steady")
        rows.append(
            row(f"{label}: broadcast", lat, got, want, f"frames/peer {frames:5.1f}  {links}")
        )
        fanout = server_fanout(size, model, count, seed=size)
        rows.append(
            row(f"{label}: baseline, one server relays", fanout, len(fanout), len(fanout), "")
        )
        dead = sim.alive()[::10]
        sim.kill(dead)
        lat, got, want, frames = broadcasts(sim, count, "dying")
        rows.append(row(f"{label}: 10 % just died", lat, got, want, f"frames/peer {frames:5.1f}"))
        sim.run_for(model.detect + 1.0)
        sim.forget(dead)
        sim.run_for(1.0)
        degrees = sim.degrees()
        links = f"links/peer {sum(degrees) / len(degrees):5.1f} (min {min(degrees)}, max {max(degrees)})"
        lat, got, want, frames = broadcasts(sim, count, "healed")
        rows.append(
            row(
                f"{label}: 10 % gone, ring closed",
                lat,
                got,
                want,
                f"frames/peer {frames:5.1f}  {links}",
            )
        )
        print(
            f"  (N={size:,}: {time.perf_counter() - started:.1f} s of wall time)", file=sys.stderr
        )
    print(render(rows))
    print(
        "  aim: 1,000 agents, broadcast p95 < 50 ms with 5 ms links, full delivery after 10 % loss"
    )


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
