"""``kf.committed`` to the terminals: the newest per terminal, sent as the connection takes them.

After each commit the writer hands over each terminal's committed position (``offer``).
A terminal has at most one confirmation waiting here: a newer one replaces the waiting one
in its place (it covers everything the older did; counted as coalesced), so what waits is
bounded by the fleet, whatever the flush rate. They go out oldest first at QoS 0
(``MessageSource.publish_volatile``) while fewer than ``confirm_unwritten_max`` handed
ones are not yet written to the socket (``publish_window``); each one written pumps again
(the source's publish listener), so do a (re)connection and the next offer. While the
source is disconnected they wait.

Why QoS 0 and this mailbox (before: one QoS 1 PUBLISH per terminal per flush through
paho). A broker sends its PUBACK to the server behind everything it already queued for
the server: draining a backlog after a restart, the PUBACKs of the server's own publishes
came only after the backlog (7 s for 20 000 queued reports here, while the messages
themselves reached the terminals within 0.15 s). Paho keeps 20 QoS 1 in flight and
queues the rest without a bound: it held 6 600 confirmations, tens of seconds behind the
commits, and the agents' bounded stop ended with committed rows unconfirmed. And what was
published between a restart's CONNACK and its SUBACK was dropped. A lost QoS 0
confirmation costs nothing: the next one covers it, or the agent re-sends after its
confirmation timeout and the duplicate is confirmed again (docs/reliability.md).

Locking: ``pump`` never publishes while holding the lock (paho calls it from its own
callbacks); one pump runs at a time, and a pump asked for meanwhile runs again in it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from protocol.committed import encode_committed
from protocol.topics import Channel, topic
from server.write_behind import Confirmation

__all__ = ["ConfirmationMailbox", "ConfirmationMetrics"]


class ConfirmationMetrics:
    """``kioskfleet_confirmations_waiting``, ``..._sent_total``, ``..._coalesced_total``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.waiting = Gauge(
            "kioskfleet_confirmations_waiting",
            "Terminals with a kf.committed waiting to be handed to the broker connection",
            registry=registry,
        )
        self.sent = Counter(
            "kioskfleet_confirmations_sent_total",
            "kf.committed messages handed to the broker connection",
            registry=registry,
        )
        self.coalesced = Counter(
            "kioskfleet_confirmations_coalesced_total",
            "kf.committed replaced by a newer one for the same terminal before it was sent",
            registry=registry,
        )


class ConfirmationMailbox:
    """See the module docstring. ``publish(topic, payload)`` is the source's QoS 0 publish
    (False: nothing sent), ``room()`` how many more it takes now."""

    def __init__(
        self,
        publish: Callable[[str, bytes], bool],
        room: Callable[[], int],
        metrics: ConfirmationMetrics,
    ) -> None:
        self._publish = publish
        self._room = room
        self._metrics = metrics
        self._lock = threading.Lock()
        self._waiting: dict[str, bytes] = {}  # terminal id -> payload, oldest first
        self._pumping = False
        self._again = False

    def __len__(self) -> int:
        return len(self._waiting)

    def offer(self, confirmations: Sequence[Confirmation]) -> None:
        """The positions one commit reached; each replaces its terminal's waiting one."""
        with self._lock:
            for terminal_id, boot_id, seq, missing in confirmations:
                if terminal_id in self._waiting:
                    self._metrics.coalesced.inc()
                self._waiting[terminal_id] = encode_committed(boot_id, seq, missing)
            self._metrics.waiting.set(len(self._waiting))
        self.pump()

    def pump(self) -> None:
        """Send what the room allows, oldest first; safe from any thread (see above)."""
        with self._lock:
            if self._pumping:
                self._again = True
                return
            self._pumping = True
        try:
            while self._send_batch():
                pass
        finally:
            with self._lock:
                self._pumping = False
                self._metrics.waiting.set(len(self._waiting))

    def _send_batch(self) -> bool:
        """One round: take what the room allows, publish it outside the lock. True when
        another round is due (all sent and more may fit, or a pump was asked meanwhile)."""
        with self._lock:
            self._again = False
            room = self._room()
            batch: list[str] = []
            for terminal_id in self._waiting:
                if len(batch) >= room:
                    break
                batch.append(terminal_id)
            taken = [(tid, self._waiting.pop(tid)) for tid in batch]
        sent = 0
        for terminal_id, payload in taken:
            if not self._publish(topic(terminal_id, Channel.CMD), payload):
                break
            sent += 1
        self._metrics.sent.inc(sent)
        with self._lock:
            for terminal_id, payload in taken[sent:]:  # not sent: back, unless a newer came
                self._waiting.setdefault(terminal_id, payload)
            if sent < len(taken):
                return False  # the source refused: disconnected, or its window is full
            return bool(taken) or self._again
