"""What the server knows of the agent mesh: each peer's latest link report.

Peers report to ``if://service/mesh`` every few seconds; the service witnesses their
link events and publishes the report on :data:`~infrafabric.ops.MESH_STATUS_TOPIC`,
which reaches every server of the fabric (over Redis through the relay). A
:class:`MeshView` keeps the latest report of each peer for ``/v1/mesh``, ``ifab mesh
status``, the dashboard and ``/metrics``; a peer silent for ``stale_after`` seconds is
left out (it left, or died).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from infrafabric import ops
from infrafabric.protocol.message import decode_json

__all__ = ["MeshView"]

#: A peer reports every 5 s by default: three missed reports and it is gone from view.
STALE_AFTER: Final = 15.0


@dataclass(frozen=True, slots=True)
class _Seen:
    at: float
    report: ops.MeshReport


class MeshView:
    def __init__(
        self, clock: Callable[[], float] = time.time, stale_after: float = STALE_AFTER
    ) -> None:
        self.clock = clock
        self.stale_after = stale_after
        self._reports: dict[str, _Seen] = {}
        self._lock = threading.Lock()

    def on_topic(self, topic: str, body: bytes) -> None:
        """A topic message (from this server or, over Redis, from any): keep mesh reports."""
        if topic != ops.MESH_STATUS_TOPIC:
            return
        try:
            message = decode_json(body)
            report = msgspec.convert(message.content, ops.MeshReport)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            return  # (the service checked it before publishing: not expected)
        if message.receiver != ops.MESH:
            return  # only what the mesh service took and published is a report
        with self._lock:
            self._reports[message.sender] = _Seen(self.clock(), report)

    def reports(self) -> dict[str, tuple[float, ops.MeshReport]]:
        """The live peers' latest reports (those silent too long are forgotten)."""
        now = self.clock()
        with self._lock:
            for agent in [
                a for a, seen in self._reports.items() if now - seen.at > self.stale_after
            ]:
                del self._reports[agent]
            return {agent: (seen.at, seen.report) for agent, seen in self._reports.items()}

    def snapshot(self) -> dict[str, Any]:
        """``/v1/mesh``: every live peer, its links and their quality."""
        peers = []
        for agent, (at, report) in sorted(self.reports().items()):
            links = [msgspec.to_builtins(link) for link in report.links]
            peers.append(
                {
                    "agent": agent,
                    "reported_at": at,
                    "members": report.members,
                    "links": links,
                    "retrying": list(report.retrying),
                    "routes": dict(report.routes),
                }
            )
        return {"peers": peers, "stale_after": self.stale_after, "now": self.clock()}
