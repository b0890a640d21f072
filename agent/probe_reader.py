"""Reads a real terminal's probes in one worker thread, so that a slow device never stalls MQTT.

A probe may block for its whole timeout (an IPP printer that does not answer
holds the reader for ``timeout_s``, up to 30 s). Run on the event loop's
thread, that stops keepalive pings and PUBACK handling for as long, and the
broker drops a session that stays silent for 1.5 x keepalive: an unreachable
printer would make its terminal flap offline. ``ProbeReader`` therefore reads
the probes in its own thread every ``interval_s`` and keeps each one's last
result; the Agent is handed ``ProbeReader.probes``, stand-ins whose ``read``
returns that result at once (re-raising what the real probe raised, so the
Agent still turns it into ``unknown``). When a background read changes a
peripheral's condition or fault code, ``on_change`` is called (the runtime
passes ``EventLoop.check_now``) and the change goes out without waiting for the
Agent's next tick.

``start`` reads every probe once in the calling thread before the worker
starts, so the Agent's first read (its ``boot``) sees real conditions. The
simulator's scenario probes never block and do not use this module. This
module never decides what is reported and never touches MQTT.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from agent.probes.base import NamedProbe, Probe
from protocol.messages import PeripheralKind, PeripheralStatus

__all__ = ["CachedProbe", "ProbeReader"]

log = logging.getLogger(__name__)

_Result = PeripheralStatus | Exception


def _key(result: _Result | None) -> object:
    """What counts as a change: condition and fault code, or which error."""
    if isinstance(result, PeripheralStatus):
        return (result.condition, result.fault_code)
    if isinstance(result, Exception):
        return (type(result), str(result))
    return result


class CachedProbe(NamedProbe):
    """The Agent's view of one probe: the last result the worker read, returned at once."""

    def __init__(self, reader: ProbeReader, name: str, kind: PeripheralKind) -> None:
        super().__init__(name, kind)
        self._reader = reader

    def read(self) -> PeripheralStatus:
        """The last status read; raises what the real probe raised, or RuntimeError before any read."""
        result = self._reader.last_result(self._name)
        if result is None:
            raise RuntimeError("not read yet")
        if isinstance(result, Exception):
            # A fresh traceback each time: re-raising the stored one would make it grow forever.
            raise result.with_traceback(None)
        return result


class ProbeReader:
    """Reads ``probes`` every ``interval_s`` in one daemon thread; see the module docstring."""

    def __init__(
        self,
        probes: Sequence[Probe],
        interval_s: float,
        *,
        on_change: Callable[[], None] | None = None,
        name: str = "kioskfleet-probes",
    ) -> None:
        """Raises ValueError for a non-positive interval."""
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._probes = list(probes)
        self._interval_s = interval_s
        self._on_change = on_change
        self._thread_name = name
        self._lock = threading.Lock()
        self._results: dict[str, _Result] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.probes: list[CachedProbe] = [CachedProbe(self, p.name, p.kind) for p in self._probes]
        """What the Agent reads instead of the real probes, in the same order."""

    def last_result(self, name: str) -> PeripheralStatus | Exception | None:
        """The last status (or exception) probe ``name`` gave; None before its first read."""
        with self._lock:
            return self._results.get(name)

    def read_all(self) -> bool:
        """Read every probe once in this thread. Returns True if any condition, fault code or error changed."""
        changed = False
        for probe in self._probes:
            try:
                result: _Result = probe.read()
            except Exception as exc:  # noqa: BLE001 - stored; the Agent turns it into unknown
                result = exc
            with self._lock:
                previous = self._results.get(probe.name)
                self._results[probe.name] = result
            changed = changed or _key(previous) != _key(result)
        return changed

    def start(self) -> None:
        """Read every probe once now, then keep reading them in the worker thread. Idempotent."""
        if self._thread is not None:
            return
        self.read_all()
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker and wait up to ``timeout`` for a read in progress to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            if self.read_all() and self._on_change is not None:
                try:
                    self._on_change()
                except Exception:  # the worker must outlive a failing callback
                    log.exception("probe change callback failed")
