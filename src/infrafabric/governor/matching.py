"""Who may take a task, and who should: coverage, qualification and ranking.

* **coverage** = |have ∩ need| / |need| (1.0 when a task needs nothing). A capability
  ending in ``*`` covers every skill of its category (``code:*`` covers ``code:python``).
* an agent **qualifies** for a task when coverage >= ``min_capability_match``;
* qualified agents **rank** by ``coverage x reputation / unit_cost``, where
  ``unit_cost`` is what the agent would charge for the policy's reference task (its
  token prices, or its hourly price, applied to ``reference_task``). Ties go to the
  higher coverage, then the cheaper agent, then the agent id (so rankings are stable).

Pure functions; the governor keeps the per-agent values they need precomputed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from infrafabric.governor.policy import Price, ReferenceTask

__all__ = ["Candidate", "coverage", "rank", "unit_cost"]

#: The cost a free agent is ranked with (a division by zero would rank it first forever
#: whatever its coverage; this ranks it first among equals).
FREE: float = 1e-9


def coverage(
    have: frozenset[str], need: Iterable[str], wildcards: tuple[str, ...] | None = None
) -> float:
    """``wildcards``: the prefixes of ``have``'s ``category:*`` entries, if precomputed
    (the governor keeps them per agent: ranking 1,000 agents is then one C-level set
    intersection each)."""
    wanted = need if isinstance(need, frozenset) else frozenset(need)
    if not wanted:
        return 1.0
    if wildcards is None:
        wildcards = wildcard_prefixes(have)
    if not wildcards:
        return len(wanted & have) / len(wanted)
    covered = sum(
        1
        for capability in wanted
        if capability in have or any(capability.startswith(prefix) for prefix in wildcards)
    )
    return covered / len(wanted)


def wildcard_prefixes(have: Iterable[str]) -> tuple[str, ...]:
    return tuple(capability[:-1] for capability in have if capability.endswith("*"))


def unit_cost(price: Price, reference: ReferenceTask) -> float:
    """USD the agent would charge for the reference task."""
    return price.cost(reference.tokens_in, reference.tokens_out, reference.hours * 3600)


@dataclass(frozen=True, slots=True)
class Candidate:
    agent: str
    coverage: float
    reputation: float
    unit_cost: float

    @property
    def score(self) -> float:
        return self.coverage * self.reputation / max(self.unit_cost, FREE)


def rank(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Best first: score, then coverage, then the cheaper, then the agent id."""
    return sorted(candidates, key=lambda c: (-c.score, -c.coverage, c.unit_cost, c.agent))
