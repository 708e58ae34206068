"""Replay state: the sequence window against a reference model, and the bounded nonce cache."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infrafabric.protocol.replay import NonceCache, SequenceWindow, SequenceWindows
from infrafabric.types import AgentId
from tests.conftest import NOW

ALICE = AgentId("if://agent/alice")
BOB = AgentId("if://agent/bob")


@given(size=st.integers(1, 70), numbers=st.lists(st.integers(1, 200), max_size=120))
def test_window_matches_a_set_based_model(size: int, numbers: list[int]) -> None:
    window = SequenceWindow(size)
    accepted: set[int] = set()
    for number in numbers:
        highest = max(accepted, default=0)
        expected = number not in accepted and (number > highest or highest - number < size)
        assert window.would_accept(number) == expected
        if expected:
            window.accept(number)
            accepted.add(number)
        assert window.highest == max(accepted, default=0)


def test_windows_are_per_sender() -> None:
    windows = SequenceWindows(window=1)
    windows.accept("if://agent/a", 5)
    assert windows.would_accept("if://agent/b", 1)
    assert not windows.would_accept("if://agent/a", 5)
    assert windows.highest("if://agent/a") == 5
    assert len(windows) == 1


def test_nonce_cache_is_bounded_by_time_and_size() -> None:
    cache = NonceCache(max_entries=3)
    for index in range(3):
        cache.add("s", f"n{index}", expires_at=100 + index, now=0)
    assert cache.seen("s", "n0", now=50)
    assert not cache.seen("t", "n0", now=50)  # nonces are per sender
    cache.add("s", "n3", expires_at=200, now=50)  # full: evicts the entry closest to expiry
    assert not cache.seen("s", "n0", now=50)
    assert cache.evictions == 1
    assert len(cache) == 3
    cache.add("s", "n4", expires_at=300, now=150)  # everything else expired by now
    assert len(cache) == 2
    assert not cache.seen("s", "n3", now=201)  # expired entries never count as seen


@pytest.mark.parametrize("bad", [0, -1])
def test_bounds_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        NonceCache(max_entries=bad)
    with pytest.raises(ValueError, match="at least 1"):
        SequenceWindows(window=bad)


def test_a_huge_jump_costs_nothing() -> None:
    window = SequenceWindow(64)
    window.accept(1)
    window.accept(2**53 - 1)  # shifting by the jump before masking would need 2**53 bits
    assert window.seen == 1
    assert window.highest == 2**53 - 1
    assert not window.would_accept(1)
    assert window.would_accept(2**53 - 2)


@given(size=st.integers(1, 70), numbers=st.lists(st.integers(1, 200), max_size=60))
def test_a_restored_window_refuses_what_the_original_refused(size: int, numbers: list[int]) -> None:
    original = SequenceWindows(window=size)
    for number in numbers:
        if original.would_accept("if://agent/a", number):
            original.accept("if://agent/a", number)
    snapshot = original.snapshot("if://agent/a")
    if snapshot is None:
        assert numbers == []
        return
    restored = SequenceWindows(window=size)
    restored.restore("if://agent/a", *snapshot)
    for number in range(1, 260):
        assert restored.would_accept("if://agent/a", number) == original.would_accept(
            "if://agent/a", number
        )


def test_a_forgotten_nonce_may_be_used_again_and_its_old_entry_expires_harmlessly() -> None:
    cache = NonceCache()
    cache.add(ALICE, "n1", expires_at=100.0, now=0.0)
    cache.forget(ALICE, "n1")
    assert not cache.seen(ALICE, "n1", now=1.0)
    cache.add(ALICE, "n1", expires_at=200.0, now=1.0)  # sent again, kept longer
    cache.add(ALICE, "n2", expires_at=150.0, now=120.0)  # prunes the stale entry for n1
    assert cache.seen(ALICE, "n1", now=120.0)  # the new entry survived the old one's pruning
    assert len(cache) == 2
    cache.forget(ALICE, "never-added")  # harmless
    assert len(cache) == 2


def test_eviction_passes_over_forgotten_entries() -> None:
    cache = NonceCache(max_entries=2)
    cache.add(ALICE, "a", expires_at=10.0, now=0.0)
    cache.add(ALICE, "b", expires_at=20.0, now=0.0)
    cache.forget(ALICE, "a")  # its heap entry, the first to evict, is stale
    cache.add(ALICE, "c", expires_at=30.0, now=0.0)
    assert cache.evictions == 0  # room was there: nothing live was evicted
    cache.add(ALICE, "d", expires_at=40.0, now=0.0)
    assert cache.evictions == 1
    assert [cache.seen(ALICE, n, now=0.0) for n in "abcd"] == [False, False, True, True]


def test_a_forgotten_sequence_number_is_accepted_once_more() -> None:
    windows = SequenceWindows(window=4)
    windows.accept(ALICE, 5)
    windows.forget(ALICE, 5)
    assert windows.would_accept(ALICE, 5)
    assert windows.highest(ALICE) == 5  # a window never moves back
    windows.accept(ALICE, 5)
    windows.accept(ALICE, 6)
    windows.forget(ALICE, 5)  # below the highest, inside the window
    assert windows.would_accept(ALICE, 5)
    assert not windows.would_accept(ALICE, 6)
    windows.accept(ALICE, 20)
    windows.forget(ALICE, 6)  # fell out of the window: still refused as too old
    assert not windows.would_accept(ALICE, 6)
    windows.forget(BOB, 1)  # a sender never seen: harmless
    assert windows.would_accept(BOB, 1)


def test_the_cache_vouches_for_a_missing_nonce_only_where_it_saw_everything() -> None:
    """A restart restores some senders' windows but no nonces; a full cache evicts."""
    cache = NonceCache(max_entries=1)
    alice, bob = AgentId("if://agent/alice"), AgentId("if://agent/bob")
    cache.unknown_before(alice, NOW + 30)  # alice's window came back at NOW (skew 30 s)
    assert not cache.vouches_for(alice, NOW + 30)
    assert cache.vouches_for(alice, NOW + 30.001)
    assert cache.vouches_for(bob, NOW)  # nothing of bob's was restored
    cache.add(bob, "n1", NOW + 300, NOW)
    cache.add(bob, "n2", NOW + 301, NOW)  # full: n1 (expiring at NOW + 300) goes
    assert not cache.vouches_for(bob, NOW + 299)
    assert cache.vouches_for(bob, NOW + 300.5)
