"""The mesh's shape, computed by every peer alone: symmetric, at least k links each,
connected through k-1 failures, and changed only near a peer that joins."""

from __future__ import annotations

import collections
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infrafabric.mesh.topology import Ring, Topology, default_degree, offerer


def names(count: int, prefix: str = "a") -> list[str]:
    return [f"if://agent/{prefix}{n}" for n in range(count)]


def connected(members: set[str], edges: set[frozenset[str]]) -> bool:
    links = collections.defaultdict(set)
    for edge in edges:
        a, b = tuple(edge)
        if a in members and b in members:
            links[a].add(b)
            links[b].add(a)
    start = next(iter(members))
    seen, todo = {start}, [start]
    while todo:
        for other in links[todo.pop()] - seen:
            seen.add(other)
            todo.append(other)
    return seen == members


def test_the_default_degree_is_twice_the_log_of_the_size() -> None:
    assert [default_degree(n) for n in (1, 2, 10, 100, 1000)] == [0, 2, 5, 10, 14]
    assert Topology().k(1000) == 14
    assert Topology(degree=20).k(100) == 20


def test_a_small_swarm_is_a_full_mesh() -> None:
    members = names(6)
    topology = Topology(degree=5)
    for me in members:
        assert topology.neighbours(me, members) == set(members) - {me}


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 120), st.integers(1, 12), st.integers(0, 3), st.integers(0, 10**6))
def test_links_are_symmetric_and_every_peer_has_at_least_k(
    size: int, k: int, chords: int, salt: int
) -> None:
    members = names(size, prefix=f"s{salt}-")
    topology = Topology(degree=k, chords=chords)
    edges = topology.edges(members)
    for me in members:
        mine = topology.neighbours(me, members)
        assert me not in mine
        assert len(mine) >= min(k, size - 1)
        for other in mine:
            assert me in topology.neighbours(other, members)  # both sides agree
    assert connected(set(members), edges)


@settings(max_examples=25, deadline=None)
@given(st.integers(30, 150), st.integers(2, 8), st.integers(0, 10**6))
def test_the_mesh_stays_connected_when_fewer_than_k_peers_fail(
    size: int, k: int, seed: int
) -> None:
    members = names(size, prefix=f"f{seed}-")
    edges = Topology(degree=k, chords=0).edges(members)  # the ring alone, the worst case
    failed = set(random.Random(seed).sample(members, k - 1))
    assert connected(set(members) - failed, edges)  # before anyone repairs anything


def test_a_join_changes_only_the_links_near_the_newcomer() -> None:
    members = names(300)
    topology = Topology(degree=10)
    before = topology.edges(members)
    newcomer = "if://agent/newcomer"
    after = topology.edges([*members, newcomer])
    ring = Ring([*members, newcomer])
    near = {p for p in ring.peers if ring.distance(p, newcomer) <= 5}
    added, removed = after - before, before - after
    assert all(newcomer in edge for edge in added)
    assert all(edge <= near for edge in removed)  # ring links pushed apart by the newcomer
    assert len(removed) <= 15
    # chords depend on the pair only (300 and 301 share the power of two above them)
    assert {e for e in before if e not in removed} <= after


def test_a_leave_closes_the_ring_and_keeps_k_links_each() -> None:
    members = names(200)
    topology = Topology(degree=8)
    survivors = members[:100] + members[101:]
    for me in survivors:
        assert len(topology.neighbours(me, survivors)) >= 8


def test_chords_shorten_the_mesh_to_a_few_hops() -> None:
    members = names(1000)
    edges = Topology().edges(members)
    links = collections.defaultdict(set)
    for edge in edges:
        a, b = tuple(edge)
        links[a].add(b)
        links[b].add(a)
    depth = {members[0]: 0}
    todo = collections.deque([members[0]])
    while todo:
        here = todo.popleft()
        for other in links[here]:
            if other not in depth:
                depth[other] = depth[here] + 1
                todo.append(other)
    assert len(depth) == 1000
    assert max(depth.values()) <= 8  # a ring of 1,000 with k = 14 alone is 72 across


def test_the_offerer_is_the_lower_id_whichever_side_asks() -> None:
    assert offerer("if://agent/b", "if://agent/a") == offerer("if://agent/a", "if://agent/b")
    assert offerer("if://agent/b", "if://agent/a") == "if://agent/a"


def test_a_non_member_is_placed_where_it_would_sit() -> None:
    members = names(50)
    topology = Topology(degree=4)
    outsider = "if://agent/outsider"
    assert topology.neighbours(outsider, members) == topology.neighbours(
        outsider, [*members, outsider]
    )


@pytest.mark.parametrize(("degree", "chords"), [(0, 2), (3, -1)])
def test_a_bad_shape_is_refused(degree: int, chords: int) -> None:
    with pytest.raises(ValueError, match=r"degree k is at least 1|chords is 0 or more"):
        Topology(degree=degree, chords=chords)
