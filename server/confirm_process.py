"""The ``kf.committed`` publishes, from a child process with a connection of its own.

After each commit the writer hands ``publish`` one ``Confirmation`` per terminal of the
batch (``server.write_behind``). Published by the ingest's own paho client, each cost
about 60 us of the ingest process's CPU (building the PUBLISH, writing it, reading and
handling the broker's PUBACK; docs/benchmarks.md): in a drain, as much as receiving a
message, under the same GIL. Here the batch is pickled (a few hundred small tuples) into
a bounded queue and a child process (``multiprocessing`` spawn context) encodes and
publishes it through ``server.mqtt_source.MqttPublisher``: the server's identity, the
client id ``<mqtt_client_id>-confirm``, QoS 1, a clean session.

What it keeps of the rules (docs/reliability.md):

- only committed positions are confirmed: the writer calls ``publish`` after the commit,
  as before; one child and one connection keep each terminal's confirmations in order;
- a confirmation is a hint, never the only copy of anything: one lost (the queue full,
  the child dead or not connected) is covered by the next, or by the confirmation an
  agent's re-send triggers (a duplicate confirms the terminal's position again);
- bounded: at most ``max_batches`` batches wait in the queue (``publish`` then refuses
  the batch and says so), at most ``max_queued`` messages in the child's paho client;
- a child that died is replaced at the next ``publish`` (that batch goes to the new
  child); ``stop`` lets the child publish what is queued and wait for the broker's
  acknowledgements, up to ``stop_timeout_s``, and kills it after that.

Never decides what to confirm (that is the writer) and never imports paho.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from typing import Final

from protocol.committed import encode_committed
from protocol.topics import Channel, topic
from server.errors import BrokerError
from server.mqtt_source import MqttOptions, MqttPublisher
from server.write_behind import Confirmation

__all__ = ["ConfirmProcess"]

log = logging.getLogger(__name__)

_SPAWN: Final = multiprocessing.get_context("spawn")  # no fork of a threaded server
_CONNECT_WAIT_S: Final = 10.0  # the child's first connection, before it takes batches
Batch = list[Confirmation]


class ConfirmProcess:
    """The writer's ``confirm``: hands each batch to a child process that publishes it."""

    def __init__(
        self,
        options: MqttOptions,
        *,
        max_batches: int = 64,
        max_queued: int = 20_000,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self._options = options
        self._max_batches = max_batches
        self._max_queued = max_queued
        self._stop_timeout = stop_timeout_s
        self._queue: Queue[Batch | None] | None = None
        self._child: BaseProcess | None = None
        self.replaced = 0  # children started after one died (for tests and logs)

    @property
    def pid(self) -> int | None:
        """The current child's process id (None before ``start`` and after ``stop``)."""
        return None if self._child is None else self._child.pid

    @property
    def alive(self) -> bool:
        """Whether the current child runs (a dead one is replaced at the next ``publish``)."""
        return self._child is not None and self._child.is_alive()

    def start(self) -> None:
        """Start the child; it connects in the background."""
        self._queue = _SPAWN.Queue(self._max_batches)
        self._child = _SPAWN.Process(
            target=_serve,
            args=(self._options, self._queue, self._max_queued, self._stop_timeout),
            name="kf-confirm",
            daemon=True,
        )
        self._child.start()

    def publish(self, confirmations: Sequence[Confirmation]) -> bool:
        """Queue one batch for the child; never blocks. False when it was refused (the
        queue full, or no child)."""
        if self._child is None or self._queue is None:
            return False
        if not self._child.is_alive():
            log.warning(
                "the kf.committed publisher (pid %s) ended with %s; starting another",
                self._child.pid,
                self._child.exitcode,
            )
            self._discard_queue()
            self.replaced += 1
            self.start()
        assert self._queue is not None
        try:
            self._queue.put_nowait(list(confirmations))
        except queue.Full:
            log.warning("kf.committed queue full: %d confirmations not sent", len(confirmations))
            return False
        return True

    def stop(self) -> None:
        """Let the child publish what is queued (bounded wait), then end it."""
        child, q = self._child, self._queue
        if child is None or q is None:
            return
        try:
            q.put(None, timeout=1.0)
        except queue.Full:
            log.warning("kf.committed queue full at stop; ending the publisher")
        child.join(self._stop_timeout + _CONNECT_WAIT_S)
        if child.is_alive():
            log.error("the kf.committed publisher did not stop; killing it")
            child.kill()
            child.join(1.0)
        self._discard_queue()
        self._child = None

    def _discard_queue(self) -> None:
        if self._queue is not None:
            self._queue.cancel_join_thread()  # a dead reader: never wait to flush to it
            self._queue.close()
            self._queue = None


def _serve(
    options: MqttOptions, batches: Queue[Batch | None], max_queued: int, stop_timeout_s: float
) -> None:
    """The child: connect, then publish every batch until the ``None`` that ends it."""
    client_id = f"{options.client_id}-confirm"
    publisher = MqttPublisher(options, client_id, max_queued=max_queued)
    try:
        publisher.start()
    except BrokerError as exc:
        log.error("kf.committed publisher cannot start: %s", exc)
        return
    if not publisher.wait_connected(_CONNECT_WAIT_S):
        log.warning("kf.committed publisher not connected yet; confirmations dropped till then")
    while (batch := batches.get()) is not None:
        for terminal_id, boot_id, seq, missing in batch:
            payload = encode_committed(boot_id, seq, missing)
            publisher.publish(topic(terminal_id, Channel.CMD), payload)
    publisher.stop(stop_timeout_s)
