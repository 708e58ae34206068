"""Who links to whom in the agent mesh: a pure function of the membership.

Every peer computes its own neighbours from the same membership list, with no
coordination and no I/O, and two peers agree on whether they are linked (the relation is
symmetric by construction):

* **Full mesh** while a peer has at most ``k`` others: everyone links to everyone.
* **Ring lattice** beyond that: peers sit on a ring in the order of a hash of their
  ids, and each links to its ``ceil(k/2)`` nearest peers on either side. That gives every
  peer at least ``k`` neighbours and keeps the mesh connected until ``k`` peers fail at
  once (a ring lattice of half-width r is 2r-connected); a join or a leave changes only
  the links of the ``k`` peers around it, and the survivors of a leave close the ring
  by themselves.
* **Chords**: a ring alone is ``N/k`` hops across (72 for 1,000 peers), too far for a
  broadcast. Each pair of peers is also linked when a hash of the pair falls below
  ``chords / 2**ceil(log2 N)``: about ``chords`` random long links a peer (Watts and
  Strogatz's small world), which brings the diameter to a few hops. A pair's chord
  depends only on the pair and the power of two above N, so chords survive churn.

``k`` is ``ceil(2 ln N)`` unless configured (k = 20 for 100 agents is a setting, not
the default; the default gives 10 there).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Ring", "Topology", "default_degree", "offerer", "position"]

_SPACE = 1 << 64


def position(peer: str) -> int:
    """Where ``peer`` sits on the ring: 64 bits of a hash of its id."""
    return int.from_bytes(hashlib.blake2b(peer.encode(), digest_size=8).digest(), "big")


def _pair(a: str, b: str) -> int:
    low, high = (a, b) if a < b else (b, a)
    data = low.encode() + b"\x00" + high.encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=b"ifmesh-chord").digest())


def default_degree(members: int) -> int:
    """The default ``k`` for a mesh of ``members`` peers: ``ceil(2 ln N)``."""
    return math.ceil(2 * math.log(members)) if members > 1 else 0


def offerer(a: str, b: str) -> str:
    """Which of two linked peers makes the WebRTC offer (the other answers): the lower
    id, so both sides know without asking and two offers never cross."""
    return min(a, b)


class Ring:
    """The members in ring order, for neighbour lookups and ring distances."""

    def __init__(self, members: Iterable[str]) -> None:
        self.peers = sorted(set(members), key=lambda peer: (position(peer), peer))
        self.index = {peer: n for n, peer in enumerate(self.peers)}

    def __len__(self) -> int:
        return len(self.peers)

    def distance(self, a: str, b: str) -> int:
        """Steps between two members along the ring, the shorter way round."""
        step = abs(self.index[a] - self.index[b])
        return min(step, len(self.peers) - step)

    def around(self, peer: str, half_width: int) -> set[str]:
        """The ``half_width`` members on each side of member ``peer``."""
        n, at = len(self.peers), self.index[peer]
        found: set[str] = set()
        for step in range(1, min(half_width, n - 1) + 1):
            found.add(self.peers[(at + step) % n])
            found.add(self.peers[(at - step) % n])
        found.discard(peer)
        return found


@dataclass(frozen=True, slots=True)
class Topology:
    """The mesh's shape: ``degree`` (k; ``None``: ``ceil(2 ln N)``) and ``chords`` (random
    long links a peer, on average)."""

    degree: int | None = None
    chords: int = 2

    def __post_init__(self) -> None:
        if self.degree is not None and self.degree < 1:
            raise ValueError("the mesh degree k is at least 1")
        if self.chords < 0:
            raise ValueError("chords is 0 or more")

    def k(self, members: int) -> int:
        return self.degree if self.degree is not None else default_degree(members)

    def neighbours(self, me: str, members: Iterable[str], ring: Ring | None = None) -> set[str]:
        """The peers ``me`` links to, given every member (``me`` is one, listed or not).
        Pass the members' :class:`Ring` (with ``me`` in it) to save sorting them again."""
        if ring is None or me not in ring.index:
            ring = Ring([*members, me])
        everyone = len(ring)
        others = [peer for peer in ring.peers if peer != me]
        k = self.k(everyone)
        if len(others) <= k:
            return set(others)
        linked = ring.around(me, math.ceil(k / 2))
        if self.chords:
            threshold = self.chords * _SPACE >> max(0, (everyone - 1).bit_length())
            linked.update(peer for peer in others if _pair(me, peer) < threshold)
        return linked

    def edges(self, members: Iterable[str]) -> set[frozenset[str]]:
        """Every link of the mesh (for tests and the simulator: O(N^2) hashes)."""
        ring = Ring(members)
        return {
            frozenset((peer, other))
            for peer in ring.peers
            for other in self.neighbours(peer, ring.peers, ring)
        }
