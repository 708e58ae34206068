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


def row(name: str, latencies: list[float], expected: int, extra: str = "") -> tuple[str, str]:
    return (
        name,
        f"p50 {percentile(latencies, 0.5) * 1e3:6.1f} ms  p95 {percentile(latencies, 0.95) * 1e3:6.1f} ms"
        f"  p99 {percentile(latencies, 0.99) * 1e3:6.1f} ms"
        f"  delivered {100 * len(latencies) / expected:6.2f} %  {extra}",
    )


def links(sim: Simulation) -> str:
    degrees = sim.degrees()
    return f"links/peer {sum(degrees) / len(degrees):5.1f} (min {min(degrees)}, max {max(degrees)})"


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
        label = f"N={size:,} k={topology.k(size)}"
        steady = sim.broadcasts(count, "steady")
        rows.append(
            row(f"{label}: broadcast", steady.latencies, steady.expected,
                f"frames/peer {steady.frames_per_peer:5.1f}  {links(sim)}")
        )  # fmt: skip
        fanout = server_fanout(size, model, count, seed=size)
        rows.append(row(f"{label}: baseline, one server relays", fanout, len(fanout)))
        dead = sim.alive()[::10]
        sim.kill(dead)
        dying = sim.broadcasts(count, "dying")
        rows.append(
            row(f"{label}: 10 % just died", dying.latencies, dying.expected,
                f"frames/peer {dying.frames_per_peer:5.1f}")
        )  # fmt: skip
        sim.run_for(model.detect + 1.0)
        sim.forget(dead)
        sim.run_for(1.0)
        healed = sim.broadcasts(count, "healed")
        rows.append(
            row(f"{label}: 10 % gone, ring closed", healed.latencies, healed.expected,
                f"frames/peer {healed.frames_per_peer:5.1f}  {links(sim)}")
        )  # fmt: skip
        print(
            f"  (N={size:,}: {time.perf_counter() - started:.1f} s of wall time)", file=sys.stderr
        )
    print(render(rows))
    print(
        "  aim: 1,000 agents, broadcast p95 < 50 ms with 5 ms links, full delivery after 10 % loss"
    )


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
