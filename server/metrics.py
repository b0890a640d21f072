"""The server's own Prometheus metrics (ingest, broker link, database writes, offline detection).

Everything is registered on the ``CollectorRegistry`` passed in (tests use a
fresh one); nothing is registered at import time. Label values are pre-set so
that every series exists from the start at 0 and ``rate()`` works. Fleet-wide
gauges (terminals by status, peripherals by condition, per-terminal problem
series) come from ``server.fleet_collector`` over the fleet state; this module
must never create a series per terminal.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from protocol.errors import REJECT_REASONS
from protocol.topics import AGENT_CHANNELS
from protocol.version import __version__

__all__ = [
    "INTERNAL_REASON",
    "OFFLINE_REASONS",
    "REJECT_LABELS",
    "SERVER_REJECT_REASONS",
    "ServerMetrics",
]

INTERNAL_REASON: Final = "internal"
"""Reject reason for a message whose processing raised an unexpected exception."""
SERVER_REJECT_REASONS: Final = ("unknown_terminal", "rate_limited", "seq_jump")
"""Reject reasons the server adds to the wire's: the ingest gate's and the rules' bounds."""
REJECT_LABELS: Final = (*REJECT_REASONS, *SERVER_REJECT_REASONS, INTERNAL_REASON)
OFFLINE_REASONS: Final = ("will", "shutdown", "timeout")

_DELAY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_LOCK_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5)
_FLUSH_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ServerMetrics:
    """The server's counters, gauges and histograms, all on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.ingest_messages = Counter(
            "kioskfleet_ingest_messages",
            "Messages accepted by the ingest, by channel.",
            ["channel"],
            registry=registry,
        )
        self.ingest_rejected = Counter(
            "kioskfleet_ingest_rejected",
            "Messages rejected by the ingest, by reason (protocol reject reasons and internal).",
            ["reason"],
            registry=registry,
        )
        self.ingest_duplicates = Counter(
            "kioskfleet_ingest_duplicates",
            "Live messages not applied because they were already applied or superseded.",
            registry=registry,
        )
        self.ingest_seq_gaps = Counter(
            "kioskfleet_ingest_seq_gaps",
            "Sequence numbers never received (missing messages of a terminal's sequence stream),"
            " counted by this process since it started.",
            registry=registry,
        )
        self.ingest_not_owned = Counter(
            "kioskfleet_ingest_not_owned",
            "Messages applied to this process's fleet state but neither written nor confirmed:"
            " another replica owns the terminal, or this one took it over and has not reloaded"
            " it yet (ingest_ownership = partition; docs/scale-out.md).",
            registry=registry,
        )
        self.ingest_gap_fills = Counter(
            "kioskfleet_ingest_gap_fills",
            "Messages that arrived late inside a terminal's open sequence gap and filled it"
            " (re-sent by the agent after a kf.committed listed them missing), counted by this"
            " process since it started. kioskfleet_ingest_seq_gaps_total never goes down:"
            " gaps left = gaps - fills.",
            registry=registry,
        )
        self.ingest_delay = Histogram(
            "kioskfleet_ingest_delay_seconds",
            "Server receive time minus the message's sent_at for accepted live messages"
            " (clock skew below zero is counted as 0).",
            buckets=_DELAY_BUCKETS,
            registry=registry,
        )
        self.fleet_lock_held = Histogram(
            "kioskfleet_fleet_lock_held_seconds",
            "Time a metrics scrape held the fleet lock to read the fleet (ingest waits"
            " meanwhile); observed by the fleet collector at every scrape.",
            buckets=_LOCK_BUCKETS,
            registry=registry,
        )
        self.broker_connected = Gauge(
            "kioskfleet_broker_connected",
            "1 while the server's MQTT connection to the broker is up, else 0.",
            registry=registry,
        )
        self.db_errors = Counter(
            "kioskfleet_db_errors",
            "Database operations that failed (flushes, reads, readiness checks).",
            registry=registry,
        )
        self.db_flush_seconds = Histogram(
            "kioskfleet_db_flush_seconds",
            "Duration of one batched database flush (latest state and transitions).",
            buckets=_FLUSH_BUCKETS,
            registry=registry,
        )
        self.db_dropped_transitions = Counter(
            "kioskfleet_db_dropped_transitions",
            "Transitions dropped because the database stayed unavailable past the pending bound.",
            registry=registry,
        )
        self.db_rejected_rows = Counter(
            "kioskfleet_db_rejected_rows",
            "Rows the database refused for good (a constraint or data error), dropped after"
            " isolating the terminal they belong to; its messages were acknowledged.",
            registry=registry,
        )
        self.unacknowledged = Gauge(
            "kioskfleet_ingest_unacknowledged_messages",
            "Messages received but not yet acknowledged to the broker (waiting for their"
            " database commit).",
            registry=registry,
        )
        self.state_cleared = Counter(
            "kioskfleet_ingest_state_cleared",
            "Empty retained-state messages (a decommissioned terminal's presence cleared at the"
            " broker): nothing applied, nothing rejected.",
            registry=registry,
        )
        self.offline_detected = Counter(
            "kioskfleet_terminals_offline_detected",
            "Terminals that went offline, by how it was detected (will, shutdown, timeout).",
            ["reason"],
            registry=registry,
        )
        self.build_info = Gauge(
            "kioskfleet_build_info",
            "Always 1; the version label is the running server's kioskfleet version.",
            ["version"],
            registry=registry,
        )
        self.build_info.labels(__version__).set(1)
        for channel in AGENT_CHANNELS:
            self.ingest_messages.labels(channel.value)
        for reason in REJECT_LABELS:
            self.ingest_rejected.labels(reason)
        for reason in OFFLINE_REASONS:
            self.offline_detected.labels(reason)
