"""How often this machine takes the CPU away, measured beside the latency figures.

A claim's p99 at 1,000 claims/s is the 100th slowest of 10,000 claims, so a handful of
stalls of a few milliseconds, when the host runs something else on our virtual CPUs,
decide it. One spinner per core reads the clock in a tight loop for a few seconds, with
nothing else of ours running; every gap between two readings longer than
``threshold`` is time the machine did not give us. Printed with the claim figures, it
tells a reader whether a run's tail came from the fabric or from the machine.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import NamedTuple

#: A gap shorter than this is an ordinary interrupt, not a stall.
THRESHOLD = 0.001


class Stalls(NamedTuple):
    seconds: float  # how long each core was watched
    cores: int
    count: int  # gaps longer than THRESHOLD, all cores
    long: int  # gaps longer than 5 ms
    longest: float
    lost: float  # the share of the time in gaps longer than THRESHOLD

    def describe(self) -> str:
        return (
            f"{self.count} stalls > {THRESHOLD * 1000:.0f} ms and {self.long} > 5 ms in"
            f" {self.seconds:.0f} s on {self.cores} cores, longest {self.longest * 1000:.1f} ms,"
            f" {self.lost:.2%} of the time lost"
        )


def _spin(seconds: float) -> list[float]:
    gaps = []
    last = time.perf_counter()
    end = last + seconds
    while (now := time.perf_counter()) < end:
        if now - last > THRESHOLD:
            gaps.append(now - last)
        last = now
    return gaps


def measure(seconds: float = 5.0) -> Stalls:
    """Spin on every core for ``seconds`` at once; the stalls seen."""
    cores = os.cpu_count() or 1
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        per_core = pool.map(_spin, [seconds] * cores)
    gaps = [gap for core in per_core for gap in core]
    return Stalls(
        seconds=seconds,
        cores=cores,
        count=len(gaps),
        long=sum(gap > 0.005 for gap in gaps),
        longest=max(gaps, default=0.0),
        lost=sum(gaps) / (seconds * cores),
    )


if __name__ == "__main__":
    print(measure().describe())
