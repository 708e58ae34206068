"""Logging a background job that retries through an outage: once per outage."""

from __future__ import annotations

import logging

__all__ = ["Outage"]


class Outage:
    """Whether a retried job (a sweep, a witness round, the relay's read) is failing.

    Call :meth:`failed` from the ``except`` block: the first failure of an outage is
    logged with its traceback, the retries that follow are not (a round every 20 ms
    would fill the log); :meth:`ended` after a success starts afresh."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.failing = False

    def failed(self) -> None:
        if not self.failing:
            self.logger.exception("%s failed; retrying", self.what)
        self.failing = True

    def ended(self) -> None:
        self.failing = False
