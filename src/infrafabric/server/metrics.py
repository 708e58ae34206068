"""What a server exposes to Prometheus (``/metrics``) and to load balancers (``/healthz``,
``/readyz``).

Two kinds of figures. *Counters and histograms* count what this server did: messages
received and refused (by reason code), operations and their latency, board decisions
(claims, lease expiries, blockers, help requests), messages sent on. Over several
servers each counts its own; Prometheus sums them. *Gauges* are read from the fabric when
Prometheus scrapes: tasks by state, inbox depth, agents by health, witness size and
checkpoint age, budgets and breakers, connections. Over Redis every server reports the
same fabric-wide gauges (take ``max``, not ``sum``). A gauge that cannot be read (the
store is down) is left out of that scrape, and ``ifab_store_up`` says why.

Each server has its own registry, so several servers in one process (tests, the
embedded fabric) never mix their figures.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infrafabric.board.model import BoardEvent, TaskState
from infrafabric.errors import StoreError
from infrafabric.protocol.timefmt import parse_timestamp
from infrafabric.service import Delivery
from infrafabric.witness.checkpoint import CheckpointError, open_checkpoint
from infrafabric.witness.feeder import BOARD_SOURCE

if TYPE_CHECKING:
    from infrafabric.server.app import ServerState

__all__ = ["Metrics", "readiness"]

_log = logging.getLogger(__name__)

#: Latency buckets (seconds): a claim takes about a millisecond, a slow commit 100 ms.
BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Messages per group commit (at most ``committer.MAX_BATCH``, 64).
BATCH_SIZES: Final = (1, 2, 4, 8, 16, 32, 64)
#: Board events counted under their own names too (the alert rules use them).
_NAMED: Final = {
    "task.claimed": "claims",
    "task.expired": "lease_expiries",
    "task.blocked": "blockers",
    "help.requested": "help_requests",
}
#: Events not yet witnessed beyond which the witness is not ready (its feeder's batch).
WITNESS_BACKLOG_LIMIT: Final = 5000


class Metrics:
    """The server's Prometheus registry, fed by the service's hooks."""

    def __init__(self, state: ServerState) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.messages_in = Counter(
            "ifab_messages_in",
            "Signed messages received, by outcome (accepted or refused)",
            ["outcome"],
            registry=registry,
        )
        self.rejections = Counter(
            "ifab_rejections",
            "Messages refused, by reason code",
            ["reason"],
            registry=registry,
        )
        self.operations = Histogram(
            "ifab_operation_seconds",
            "Time to carry out and commit one message, by operation (claim, claim_next,"
            " complete..., direct, topic, keys, governor, mesh, inbox, unverified)",
            ["op"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.batches = Histogram(
            "ifab_commit_batch_seconds",
            "Time one group commit of signed messages takes, from its first message to its"
            " commit and announcements (on SQLite the event loop reads nothing meanwhile)",
            buckets=BUCKETS,
            registry=registry,
        )
        self.batch_sizes = Histogram(
            "ifab_commit_batch_messages",
            "Signed messages carried out by one group commit",
            buckets=BATCH_SIZES,
            registry=registry,
        )
        self.messages_out = Counter(
            "ifab_messages_out",
            "Messages passed on: direct (into an inbox) or topic (to subscribers)",
            ["kind"],
            registry=registry,
        )
        self.board_events = Counter(
            "ifab_board_events", "Decisions this server took, by kind", ["kind"], registry=registry
        )
        self.named = {
            name: Counter(f"ifab_{name}", f"Board decisions: {kind}", registry=registry)
            for kind, name in _NAMED.items()
        }
        self._by_op = _Children(self.operations)
        self._by_outcome = _Children(self.messages_in)
        self._by_reason = _Children(self.rejections)
        self._by_kind = _Children(self.board_events)
        self._by_out = _Children(self.messages_out)
        registry.register(_FabricGauges(state))
        service = state.service
        service.observers.append(self.observed)
        service.batch_observers.append(self.batch_done)
        service.on_events(self.on_events)
        service.on_delivery(self.on_delivery)
        service.on_topic(self.on_topic)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes (reads the store: call off the event loop)."""
        return generate_latest(self.registry)

    # -- hooks (any thread) -----------------------------------------------------------------

    def observed(self, op: str, refusal: str | None, seconds: float) -> None:
        self._by_op(op).observe(seconds)
        if refusal is None:
            self._by_outcome("accepted").inc()
        else:
            self._by_outcome("refused").inc()
            self._by_reason(refusal).inc()

    def batch_done(self, messages: int, seconds: float) -> None:
        self.batches.observe(seconds)
        self.batch_sizes.observe(messages)

    def on_events(self, events: Sequence[BoardEvent]) -> None:
        for event in events:
            self._by_kind(event.kind).inc()
            name = _NAMED.get(event.kind)
            if name is not None:
                self.named[name].inc()

    def on_delivery(self, delivery: Delivery) -> None:
        self._by_out("direct").inc()

    def on_topic(self, topic: str, body: bytes) -> None:
        self._by_out("topic").inc()


class _Children:
    """The children of a metric with one label, kept by label value: ``labels()`` checks
    its arguments and takes a lock at every call, which cost about 3 % of the server's
    CPU at saturation (every message is observed, every decision counted). The values
    are few (operations, outcomes, reason codes, event kinds)."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._kept: dict[str, Any] = {}

    def __call__(self, value: str) -> Any:
        child = self._kept.get(value)
        if child is None:  # two threads at once get the same child: labels() keeps it
            child = self._kept[value] = self._metric.labels(value)
        return child


#: Links with figures of their own in one scrape at most (a large mesh has k links a
#: peer, each reported by both ends: the bands and /v1/mesh still count them all).
MAX_LINK_SERIES = 4096


class _FabricGauges(Collector):
    """The gauges, read from the fabric at each scrape."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._lock = threading.Lock()  # one scrape at a time reads the store

    def describe(self) -> list[Metric]:
        return []  # read at scrape time only: no store access at registration

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        state = self.state
        store = state.service.store
        up = GaugeMetricFamily("ifab_store_up", "1 if the store answered this scrape, else 0")
        try:
            counts = store.task_counts()
            depth = store.inbox_depth()
            agents = store.agents()
        except StoreError as exc:
            _log.warning("metrics: the store did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            yield from self._connections()
            return
        up.add_metric([], 1)
        yield up
        tasks = GaugeMetricFamily("ifab_tasks", "Tasks on the board, by state", labels=["state"])
        for task_state in TaskState:
            tasks.add_metric([str(task_state)], counts.get(task_state, 0))
        yield tasks
        yield GaugeMetricFamily(
            "ifab_inbox_depth", "Direct messages waiting in inboxes, unacknowledged", value=depth
        )
        health = GaugeMetricFamily(
            "ifab_agents",
            "Enrolled agents by heartbeat health (green < 30 s, yellow < 5 min, red beyond)",
            labels=["health"],
        )
        coordinator = state.service.coordinator
        by_health = {"green": 0, "yellow": 0, "red": 0}
        seen = coordinator.seen_times([agent.id for agent in agents])
        for agent in agents:
            colour = str(coordinator.health_at(seen.get(agent.id)))
            by_health[colour] = by_health.get(colour, 0) + 1
        for colour, count in by_health.items():
            health.add_metric([colour], count)
        yield health
        yield from self._witness()
        yield from self._governor()
        yield from self._connections()
        yield from self._mesh()

    def _witness(self) -> Iterator[Metric]:
        witness = self.state.witness
        if witness is None:
            return
        try:
            detail = witness_detail(self.state)
        except Exception as exc:  # a damaged or unreadable log: say so in /readyz, not here
            _log.warning("metrics: the witness log did not answer: %s", exc)
            return
        yield GaugeMetricFamily(
            "ifab_witness_size", "Entries in the witness log", value=detail["size"]
        )
        yield GaugeMetricFamily(
            "ifab_witness_backlog",
            "Board events not yet witnessed",
            value=detail["backlog"],
        )
        if detail["checkpoint_age_seconds"] is not None:
            yield GaugeMetricFamily(
                "ifab_witness_checkpoint_age_seconds",
                "Seconds since the latest signed checkpoint",
                value=detail["checkpoint_age_seconds"],
            )

    def _governor(self) -> Iterator[Metric]:
        governor = self.state.service.governor
        if governor is None:
            return
        report = governor.report()
        spent = GaugeMetricFamily("ifab_spent_usd", "USD spent, by agent", labels=["agent"])
        remaining = GaugeMetricFamily(
            "ifab_budget_remaining_usd",
            "USD left of the agent's budget (only agents with a USD budget)",
            labels=["agent"],
        )
        tokens = GaugeMetricFamily("ifab_spent_tokens", "Tokens spent, by agent", labels=["agent"])
        breaker = GaugeMetricFamily(
            "ifab_breaker",
            "1 for the state each agent's circuit breaker is in",
            labels=["agent", "state"],
        )
        for book in report["agents"]:
            agent = book["agent"]
            spent.add_metric([agent], book["spent_usd"])
            tokens.add_metric([agent], book["spent_tokens"])
            if book["budget_usd"] is not None:
                remaining.add_metric([agent], book["budget_usd"] - book["spent_usd"])
            for position in ("closed", "open", "half_open"):
                breaker.add_metric([agent, position], 1 if book["breaker"] == position else 0)
        swarm_spent = GaugeMetricFamily(
            "ifab_swarm_spent_usd", "USD spent, by swarm", labels=["swarm"]
        )
        swarm_remaining = GaugeMetricFamily(
            "ifab_swarm_budget_remaining_usd", "USD left of the swarm's budget", labels=["swarm"]
        )
        for swarm in report["swarms"]:
            swarm_spent.add_metric([swarm["swarm"]], swarm["spent_usd"])
            if swarm["budget_usd"] is not None:
                swarm_remaining.add_metric(
                    [swarm["swarm"]], swarm["budget_usd"] - swarm["spent_usd"]
                )
        yield from (spent, remaining, tokens, breaker, swarm_spent, swarm_remaining)

    def _mesh(self) -> Iterator[Metric]:
        """The mesh peers' latest reports (the same on every server of a fabric)."""
        reports = self.state.mesh.reports()
        yield GaugeMetricFamily(
            "ifab_mesh_peers", "Mesh peers that reported within the last 15 s", value=len(reports)
        )
        by_band = GaugeMetricFamily(
            "ifab_mesh_links",
            "Mesh links by quality band, as their peers see them (each link counted by both ends)",
            labels=["band"],
        )
        relayed = GaugeMetricFamily(
            "ifab_mesh_relay_links", "Mesh links through the TURN relay (counted by both ends)"
        )
        rtt = GaugeMetricFamily(
            "ifab_mesh_link_rtt_seconds", "Round-trip time of a mesh link", labels=["agent", "peer"]
        )
        jitter = GaugeMetricFamily(
            "ifab_mesh_link_jitter_seconds", "Jitter of a mesh link", labels=["agent", "peer"]
        )
        loss = GaugeMetricFamily(
            "ifab_mesh_link_loss_ratio",
            "Probes lost on a mesh link (0-1)",
            labels=["agent", "peer"],
        )
        bands = dict.fromkeys(("excellent", "good", "fair", "poor", "unjudged"), 0)
        relay_count = 0
        series = 0
        for agent, (_, report) in sorted(reports.items()):
            for link in report.links:
                bands[link.band or "unjudged"] += 1
                relay_count += link.relay
                series += 1
                if series > MAX_LINK_SERIES:
                    continue  # (counted above; per-link figures for the first ones only)
                if link.rtt_ms is not None:
                    rtt.add_metric([agent, link.peer], link.rtt_ms / 1000)
                if link.jitter_ms is not None:
                    jitter.add_metric([agent, link.peer], link.jitter_ms / 1000)
                if link.loss_percent is not None:
                    loss.add_metric([agent, link.peer], link.loss_percent / 100)
        for band, count in bands.items():
            by_band.add_metric([band], count)
        relayed.add_metric([], relay_count)
        yield from (by_band, relayed, rtt, jitter, loss)

    def _connections(self) -> Iterator[Metric]:
        hub = self.state.hub
        # (a copy in one step: the event loop adds and removes connections meanwhile)
        connections = hub.connections.copy() if hub is not None else set()
        agents = {connection.agent for connection in connections if connection.agent}
        yield GaugeMetricFamily(
            "ifab_connected_agents",
            "Agents with a WebSocket open to this server",
            value=len(agents),
        )
        yield GaugeMetricFamily(
            "ifab_websocket_connections", "WebSockets open to this server", value=len(connections)
        )
        depths = [connection.queue.qsize() for connection in connections]
        yield GaugeMetricFamily(
            "ifab_websocket_queue_max",
            "Frames waiting in the fullest WebSocket send queue (closed at the limit)",
            value=max(depths, default=0),
        )
        yield GaugeMetricFamily(
            "ifab_websocket_queue_frames",
            "Frames waiting in all WebSocket send queues",
            value=sum(depths),
        )


def witness_detail(state: ServerState) -> dict[str, Any]:
    """The witness log's size, the board events it has not taken yet, and the age of its
    latest checkpoint (``None`` before the first)."""
    witness = state.witness
    assert witness is not None
    log = witness.log
    size = log.refresh()
    witnessed = log.cursor(BOARD_SOURCE)
    backlog = len(state.service.store.events_since(witnessed, WITNESS_BACKLOG_LIMIT))
    age = None
    latest = log.checkpoints(limit=1)
    if latest:
        try:
            signed = open_checkpoint(latest[0][1], witness.key)
            if signed.time:
                age = max(0.0, state.clock() - parse_timestamp(signed.time))
        except CheckpointError as exc:
            _log.warning("the latest checkpoint does not open: %s", exc)
    return {"size": size, "backlog": backlog, "checkpoint_age_seconds": age}


def readiness(state: ServerState) -> tuple[bool, dict[str, Any]]:
    """May this server take requests? The store must answer, and the witness (if kept)
    must be readable and keeping up. Returns the verdict and what each check found."""
    checks: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        state.service.store.task_counts()
        checks["store"] = {"ok": True, "seconds": round(time.perf_counter() - started, 4)}
    except StoreError as exc:
        checks["store"] = {"ok": False, "error": str(exc)}
    if state.witness is not None:
        try:
            detail = witness_detail(state)
            detail["ok"] = detail["backlog"] < WITNESS_BACKLOG_LIMIT
            checks["witness"] = detail
        except Exception as exc:
            checks["witness"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return all(check["ok"] for check in checks.values()), checks
