"""A job retried through an outage logs its first failure of each outage only."""

from __future__ import annotations

import logging

import pytest

from infrafabric.outage import Outage


def test_the_first_failure_of_each_outage_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    outage = Outage(logging.getLogger("test.outage"), "lease sweep")
    for _ in range(2):  # two outages, three failed rounds each
        for _ in range(3):
            try:
                raise ConnectionError("Redis is down")
            except ConnectionError:
                outage.failed()
        outage.ended()
    failures = [r for r in caplog.records if r.name == "test.outage"]
    assert [r.getMessage() for r in failures] == ["lease sweep failed; retrying"] * 2
    assert all(r.exc_info is not None for r in failures)  # with the traceback
