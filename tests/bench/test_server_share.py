"""The bench's reading of a real server's own claim times (bench/claims.py): the row that
says how much of a claim's tail the server's work from verification to commit explains."""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
from claims import claim_next_buckets
from infrafabric.client import Client
from tests.harness import Fabric, enroll


def test_the_claim_next_buckets_of_a_real_server_count_its_claims(fabric: Fabric) -> None:
    admin = (fabric.data / "admin.token").read_text().strip()
    agent = enroll(fabric.url, admin, "counted")
    before = asyncio.run(claim_next_buckets(fabric.url, admin))

    async def three_claims() -> None:
        async with Client.connect(fabric.url, agent) as client:
            await client.create_tasks([{"title": "x"} for _ in range(2)])
            for _ in range(3):  # the third finds none: a claim_next all the same
                await client.claim_next()

    asyncio.run(three_claims())
    after = asyncio.run(claim_next_buckets(fabric.url, admin))
    assert after[math.inf] - before.get(math.inf, 0.0) == 3
    assert 0.005 in after  # the bound the bench reads
    bounds = sorted(after)
    assert all(after[a] <= after[b] for a, b in itertools.pairwise(bounds))
