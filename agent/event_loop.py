"""One selector loop that drives any number of (Agent, MqttConnection) pairs in one thread.

The real agent runs one pair through it; the simulator runs thousands. Each
iteration it (1) runs calls queued from other threads, (2) pops what is due
from one heap of (time, pair) entries: agent ticks at ``Agent.next_due`` and
connection housekeeping at ``MqttConnection.next_service_at``, (3) starts
connection attempts while fewer than ``max_connecting`` await their CONNACK
(mosquitto's listen backlog is 100: a burst beyond it loses SYNs and costs
each a one-second retransmit), (4) pumps each terminal's ``OutboxSender``
when it has work (``next_due``: window, drain rate, jitter), (5) waits in ``selector.select`` until the next
due time and hands readable/writable sockets to their connection. No thread
per terminal, no scan of all pairs per iteration, and never paho's
``select()``-based loop (it fails silently for descriptors >= 1024).

A stop (``request_stop``, thread-safe) is clean: every agent publishes its
retained ``offline``/``shutdown`` state, every sender stops handing new
messages (what is not handed stays in the outbox for the next start; a draining
stop, ``hand_stored``, still hands it), the loop
waits a bounded time for the PUBACKs of what was published, then sends
DISCONNECT on every session. ``request_abort`` ends the loop as a crash
would: sockets closed without DISCONNECT, nothing waited for.

This module never imports paho and never decides what a terminal reports.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

from agent.agent import Agent
from agent.mqtt_connection import MqttConnection
from agent.outbox_sender import OutboxSender

__all__ = ["EventLoop", "LoopPair", "LoopThread"]

log = logging.getLogger(__name__)

_TICK: Final = 0
_SERVICE: Final = 1
_PUMP: Final = 2
_MAX_WAIT_S: Final = 1.0
_DISCONNECT_WAIT_S: Final = 2.0


class LoopPair:
    """One terminal in the loop: its agent, its connection, and the loop's bookkeeping."""

    __slots__ = (
        "_loop",
        "agent",
        "connection",
        "fd",
        "first_report_in",
        "pump_at",
        "queued",
        "sender",
        "service_at",
        "tick_at",
        "writing",
    )

    def __init__(
        self,
        loop: EventLoop,
        agent: Agent,
        connection: MqttConnection,
        first_report_in: float | None,
        sender: OutboxSender | None = None,
    ) -> None:
        self._loop = loop
        self.agent = agent
        self.connection = connection
        self.sender = sender
        self.pump_at = math.inf
        self.first_report_in = first_report_in
        self.fd: int | None = None
        self.writing = False
        self.tick_at = math.inf
        self.service_at = math.inf
        self.queued = False

    # SocketWatcher: paho opened a socket / is about to close it.
    def socket_opened(self, fd: int) -> None:
        self._loop._register(self, fd)

    def socket_closed(self, fd: int) -> None:
        self._loop._unregister(self, fd)


class _SenderSession:
    """The session listener of a pair with an outbox: the sender hears first, then the agent.

    On connect the sender decides on its drain delay before the agent adds its
    connect report, so only what waited before the connect counts as a backlog.
    """

    __slots__ = ("_agent", "_sender")

    def __init__(self, sender: OutboxSender, agent: Agent) -> None:
        self._sender = sender
        self._agent = agent

    def on_connected(self) -> None:
        self._sender.on_connected()
        self._agent.on_connected()

    def on_disconnected(self) -> None:
        self._sender.on_disconnected()
        self._agent.on_disconnected()

    def will_message(self) -> bytes:
        return self._agent.will_message()


class EventLoop:
    """Drives pairs until stopped; see the module docstring."""

    def __init__(
        self,
        *,
        max_connecting: int = 64,
        shutdown_timeout_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_connecting < 1:
            raise ValueError("max_connecting must be at least 1")
        self._max_connecting = max_connecting
        self._shutdown_timeout_s = shutdown_timeout_s
        self._monotonic = monotonic
        self._selector = selectors.DefaultSelector()
        self._pairs: list[LoopPair] = []
        self._by_id: dict[str, LoopPair] = {}
        self._heap: list[tuple[float, int, int, LoopPair]] = []
        self._counter = 0
        self._connect_queue: deque[LoopPair] = deque()
        self._connecting: set[LoopPair] = set()
        self._calls: deque[Callable[[], None]] = deque()
        self._calls_lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._abort_requested = False
        self._running = False
        self._stopping = False
        self._hand_stored = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)

    # -- setting up ----------------------------------------------------------------

    def add(
        self,
        agent: Agent,
        connection: MqttConnection,
        *,
        first_report_in: float | None = None,
        sender: OutboxSender | None = None,
    ) -> LoopPair:
        """Add a terminal before ``run``; ``sender`` is the agent's outbound port if it has an outbox.

        Raises RuntimeError once the loop runs, ValueError on a repeated id or
        when the connection's client id is not the agent's terminal id.
        """
        if self._running:
            raise RuntimeError("add pairs before run()")
        if connection.settings.client_id != agent.terminal_id:
            raise ValueError(
                f"terminal {agent.terminal_id} cannot use the connection of "
                f"{connection.settings.client_id}"
            )
        if agent.terminal_id in self._by_id:
            raise ValueError(f"terminal {agent.terminal_id} is already in the loop")
        pair = LoopPair(self, agent, connection, first_report_in, sender)
        if sender is None:
            connection.attach(agent, pair)
        else:
            connection.attach(_SenderSession(sender, agent), pair, sender.on_delivered)
        self._pairs.append(pair)
        self._by_id[agent.terminal_id] = pair
        return pair

    @property
    def pairs(self) -> list[LoopPair]:
        return self._pairs

    def pair(self, terminal_id: str) -> LoopPair:
        """Raises KeyError for an id not in this loop."""
        return self._by_id[terminal_id]

    # -- from other threads -----------------------------------------------------

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the loop's thread at its next iteration. Thread-safe."""
        with self._calls_lock:
            self._calls.append(fn)
        self._wake()

    def check_now(self, terminal_id: str) -> None:
        """Have one terminal read its probes right away (from any thread)."""
        pair = self._by_id[terminal_id]

        def check() -> None:
            pair.agent.check_now()
            self._after(pair)

        self.call_soon(check)

    def request_stop(self, *, hand_stored: bool = False) -> None:
        """Ask ``run`` to shut down cleanly and return. Thread-safe, signal-safe.

        ``hand_stored``: drain first: every agent stops saying things, then every sender
        still hands what its outbox holds, and the bounded wait also waits for that (a
        test's or a benchmark's stop, so nothing said before it stays unsent)."""
        self._hand_stored = hand_stored
        self._stop_requested.set()
        self._wake()

    def request_abort(self) -> None:
        """End ``run`` as a crash would: close every socket without DISCONNECT (the broker
        sends the wills), wait for nothing. Unsent and unacknowledged stream messages stay
        in the outbox. Thread-safe. For tests and a hard stop."""
        self._abort_requested = True
        self._stop_requested.set()
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # -- running ------------------------------------------------------------------

    def run(self, duration_s: float | None = None) -> None:
        """Run until ``request_stop`` (or ``duration_s``), then shut down cleanly.

        If anything raises out of the loop, every connection's socket is closed
        (no DISCONNECT: the broker publishes each will) before the error propagates.
        """
        self._running = True
        now = self._monotonic()
        deadline = math.inf if duration_s is None else now + duration_s
        try:
            for pair in self._pairs:
                pair.connection.start(now)
                self._schedule_tick(
                    pair, pair.agent.start(now, first_report_in=pair.first_report_in)
                )
                if pair.sender is not None:
                    pair.sender.mark_started()
                self._after(pair)
            while not self._stop_requested.is_set() and self._monotonic() < deadline:
                self._iterate(deadline)
            if self._abort_requested:
                self._abandon()
            else:
                self._shutdown()
        except BaseException:
            self._abandon()
            raise
        finally:
            self._close_loop_resources()

    def _iterate(self, deadline: float = math.inf) -> None:
        self._run_calls()
        now = self._monotonic()
        self._run_due(now)
        self._fill_connect_slots(now)
        wake_at = min(self._heap[0][0] if self._heap else math.inf, deadline)
        timeout = min(max(0.0, wake_at - self._monotonic()), _MAX_WAIT_S)
        if self._calls:
            timeout = 0.0
        for key, mask in self._selector.select(timeout):
            pair = key.data
            if pair is None:
                with contextlib.suppress(BlockingIOError, OSError):
                    self._wake_r.recv(4096)
                continue
            conn = pair.connection
            if mask & selectors.EVENT_READ:
                conn.on_readable()
            if mask & selectors.EVENT_WRITE and conn.fileno() is not None:
                conn.on_writable()
            self._after(pair)
            if self._connect_queue and len(self._connecting) < self._max_connecting:
                self._fill_connect_slots(self._monotonic())  # a CONNACK freed a slot

    def _run_calls(self) -> None:
        while True:
            with self._calls_lock:
                if not self._calls:
                    return
                fn = self._calls.popleft()
            try:
                fn()
            except Exception:  # a failing test hook must not take the fleet down
                log.exception("call_soon callback failed")

    def _run_due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, kind, pair = heapq.heappop(heap)
            if kind == _TICK:
                if when != pair.tick_at:
                    continue  # superseded
                pair.tick_at = math.inf
                self._schedule_tick(pair, pair.agent.tick(now))
            elif kind == _PUMP:
                if when != pair.pump_at:
                    continue
                pair.pump_at = math.inf
                if pair.sender is not None:
                    pair.sender.pump(now)
            else:
                if when != pair.service_at:
                    continue
                pair.service_at = math.inf
                pair.connection.service(now)
                if pair.connection.connect_due(now) and not pair.queued:
                    if self._stopping:
                        pair.connection.close()
                    else:
                        pair.queued = True
                        self._connect_queue.append(pair)
            self._after(pair)

    def _fill_connect_slots(self, now: float) -> None:
        queue = self._connect_queue
        while queue and len(self._connecting) < self._max_connecting and not self._stopping:
            pair = queue.popleft()
            pair.queued = False
            conn = pair.connection
            if not conn.connect_due(now):
                continue
            conn.connect(now)
            if conn.connecting:
                self._connecting.add(pair)
            self._after(pair)

    def _schedule_tick(self, pair: LoopPair, when: float) -> None:
        if when != pair.tick_at and when < math.inf:
            pair.tick_at = when
            self._push(when, _TICK, pair)

    def _after(self, pair: LoopPair) -> None:
        """Bring the loop's view of ``pair`` up to date after anything touched it."""
        conn = pair.connection
        if pair.fd is not None:
            want = conn.wants_write()
            if want != pair.writing:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
                self._selector.modify(pair.fd, events, pair)
                pair.writing = want
        if pair in self._connecting and not conn.connecting:
            self._connecting.discard(pair)
        when = conn.next_service_at()
        if pair.queued:
            pass  # waiting for a connect slot: _fill_connect_slots takes it from here
        elif when != pair.service_at and when < math.inf:
            pair.service_at = when
            self._push(when, _SERVICE, pair)
        if pair.agent.next_due < pair.tick_at:
            self._schedule_tick(pair, pair.agent.next_due)
        if pair.sender is not None:
            due = pair.sender.next_due()
            if due < pair.pump_at:
                pair.pump_at = due
                self._push(due, _PUMP, pair)

    def _push(self, when: float, kind: int, pair: LoopPair) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (when, self._counter, kind, pair))

    def _register(self, pair: LoopPair, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)  # a stale entry for a reused number
        self._selector.register(fd, selectors.EVENT_READ, pair)
        pair.fd = fd
        pair.writing = False

    def _unregister(self, pair: LoopPair, fd: int) -> None:
        if pair.fd == fd:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(fd)
            pair.fd = None
            pair.writing = False

    # -- stopping -----------------------------------------------------------------

    def _shutdown(self) -> None:
        self._stopping = True
        self._connect_queue.clear()
        drain = self._hand_stored
        for pair in self._pairs:
            pair.agent.stop()  # first: a draining stop hands all it said
            if pair.sender is not None:
                pair.sender.stop(hand_stored=drain)
            if not pair.connection.connected:
                pair.connection.close()
            self._after(pair)
        self._connecting.clear()
        deadline = self._monotonic() + self._shutdown_timeout_s
        self._drive_until(
            deadline,
            lambda: (
                p
                for p in self._pairs
                if p.connection.connected
                and (
                    p.connection.pending_acks()
                    or (
                        p.sender is not None
                        and (
                            p.sender.awaiting_confirmation()
                            or (drain and p.sender.may_hold_unhanded())
                        )
                    )
                )
            ),
        )
        for pair in self._pairs:
            pair.connection.disconnect()
            self._after(pair)
        self._drive_until(
            self._monotonic() + _DISCONNECT_WAIT_S,
            lambda: (p for p in self._pairs if not p.connection.closed),
        )
        for pair in self._pairs:
            if not pair.connection.closed:
                pair.connection.close()
        unacked = sum(p.connection.pending_acks() for p in self._pairs)
        if unacked:
            log.warning("stopped with %d message(s) never acknowledged by the broker", unacked)

    def _drive_until(self, deadline: float, waiting: Callable[[], Iterable[LoopPair]]) -> None:
        """Keep doing I/O until nothing is ``waiting`` or ``deadline`` passes."""
        while self._monotonic() < deadline:
            if next(iter(waiting()), None) is None:
                return
            self._iterate(deadline)

    def _abandon(self) -> None:
        """Close every connection's socket after an error, so that none outlives the loop."""
        for pair in self._pairs:
            try:
                pair.connection.close()
            except Exception:  # keep closing the others; the first error propagates
                log.exception("%s: closing the connection failed", pair.agent.terminal_id)

    def _close_loop_resources(self) -> None:
        self._running = False
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._wake_r)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


class LoopThread:
    """Runs an ``EventLoop``'s blocking ``run`` in a daemon thread; stops it cleanly or as a crash.

    ``AgentRuntime`` and ``Simulation`` use it for tests and benchmarks; ``kioskfleet
    agent`` runs its loop in the main thread instead.
    """

    def __init__(self, loop: EventLoop, run: Callable[[], None], name: str) -> None:
        self._loop = loop
        self._run = run
        self._name = name
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float, *, hand_stored: bool = False) -> None:
        """Ask for a clean stop (``EventLoop.request_stop``) and wait. Raises TimeoutError
        if the loop hangs."""
        self._loop.request_stop(hand_stored=hand_stored)
        self._join(timeout)

    def abort(self, timeout: float) -> None:
        """End the loop as a crash would and wait. Raises TimeoutError if the loop hangs."""
        self._loop.request_abort()
        self._join(timeout)

    def _join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"{self._name} did not stop in time")
