"""The bench's reading of a real server's own times (bench/claims.py): the rows that say
how much of a claim's tail the server's work from verification to commit explains, and
how many of its group commits took long."""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
from claims import histogram_buckets
from infrafabric.client import Client
from tests.harness import Fabric, enroll


def test_the_buckets_of_a_real_server_count_its_claims_and_commits(fabric: Fabric) -> None:
    admin = (fabric.data / "admin.token").read_text().strip()
    agent = enroll(fabric.url, admin, "counted")
    before = asyncio.run(histogram_buckets(fabric.url, admin))

    async def three_claims() -> None:
        async with Client.connect(fabric.url, agent) as client:
            await client.create_tasks([{"title": "x"} for _ in range(2)])
            for _ in range(3):  # the third finds none: a claim_next all the same
                await client.claim_next()

    asyncio.run(three_claims())
    after = asyncio.run(histogram_buckets(fabric.url, admin))
    claims, was = (
        after[("ifab_operation_seconds", "claim_next")],
        before.get(("ifab_operation_seconds", "claim_next"), {}),
    )
    assert claims[math.inf] - was.get(math.inf, 0.0) == 3
    commits = after[("ifab_commit_batch_seconds", "")]
    earlier = before.get(("ifab_commit_batch_seconds", ""), {}).get(math.inf, 0.0)
    assert 1 <= commits[math.inf] - earlier <= 4  # the create and the claims, some together
    for buckets in (claims, commits):
        assert {0.002, 0.005} <= set(buckets)  # the bounds the bench reads
        bounds = sorted(buckets)
        assert all(buckets[a] <= buckets[b] for a, b in itertools.pairwise(bounds))
