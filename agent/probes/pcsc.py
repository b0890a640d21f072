"""The PC/SC card-reader probe: is the ID/IC card reader there and usable?

The reader's health comes from pcsc-lite (``pcscd``): the list of readers
and each reader's ``SCARD_STATE_*`` event-state flags. pyscard (the optional
``pcsc`` extra) is the only way in, and it is touched only by
``PyscardBackend``, imported lazily; everything else talks to the narrow
``PcscBackend`` port, which ``InMemoryPcscBackend`` fakes for tests.

``reader_condition(flags)`` is the pure flag mapping (table in
``docs/probes.md``). Card states belong to the citizen's card, not to the
reader: no card, a card present, or a mute card all leave the reader ``ok``.

Errors (raised by backends, turned into conditions by the probe)::

    PcscError                 base
    ├── PcscNotInstalledError pyscard is not installed          → unknown
    └── PcscServiceError      pcscd unreachable or a call failed → unknown
                              (``hresult`` carries the PC/SC code)

The probe never raises for device or service problems, never connects to a
card, and never sends an APDU.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol

from agent.errors import ProbeError
from agent.probes.base import Verdict, VerdictProbe
from protocol.messages import PeripheralCondition, PeripheralKind

__all__ = [
    "SCARD_STATE_ATRMATCH",
    "SCARD_STATE_CHANGED",
    "SCARD_STATE_EMPTY",
    "SCARD_STATE_EXCLUSIVE",
    "SCARD_STATE_IGNORE",
    "SCARD_STATE_INUSE",
    "SCARD_STATE_MUTE",
    "SCARD_STATE_PRESENT",
    "SCARD_STATE_UNAVAILABLE",
    "SCARD_STATE_UNAWARE",
    "SCARD_STATE_UNKNOWN",
    "SCARD_STATE_UNPOWERED",
    "InMemoryPcscBackend",
    "PcscBackend",
    "PcscError",
    "PcscNotInstalledError",
    "PcscProbe",
    "PcscServiceError",
    "PyscardBackend",
    "match_reader",
    "reader_condition",
]

# Reader event-state flags, values from pcsc-lite's PCSC/pcsclite.h.
SCARD_STATE_UNAWARE: Final = 0x0000
SCARD_STATE_IGNORE: Final = 0x0001
SCARD_STATE_CHANGED: Final = 0x0002
SCARD_STATE_UNKNOWN: Final = 0x0004
SCARD_STATE_UNAVAILABLE: Final = 0x0008
SCARD_STATE_EMPTY: Final = 0x0010
SCARD_STATE_PRESENT: Final = 0x0020
SCARD_STATE_ATRMATCH: Final = 0x0040
SCARD_STATE_EXCLUSIVE: Final = 0x0080
SCARD_STATE_INUSE: Final = 0x0100
SCARD_STATE_MUTE: Final = 0x0200
SCARD_STATE_UNPOWERED: Final = 0x0400

# pcsc-lite keeps an event counter in the high 16 bits of dwEventState.
_STATE_MASK: Final = 0xFFFF


class PcscError(ProbeError):
    """Base of the PC/SC probe's errors."""


class PcscNotInstalledError(PcscError):
    """pyscard (the ``pcsc`` extra) is not installed."""


class PcscServiceError(PcscError):
    """pcscd could not be reached or refused a call. ``hresult`` is the PC/SC code if known."""

    def __init__(self, message: str, hresult: int | None = None) -> None:
        super().__init__(message)
        self.hresult = None if hresult is None else hresult & 0xFFFFFFFF


class PcscBackend(Protocol):
    """The port: the two questions the probe asks pcsc-lite."""

    def readers(self) -> list[str]:
        """Names of the connected readers. Raises ``PcscError``."""
        ...

    def reader_flags(self, reader: str) -> int:
        """The reader's current ``SCARD_STATE_*`` event state. Raises ``PcscError``."""
        ...


def reader_condition(flags: int) -> Verdict:
    """Map a reader's ``SCARD_STATE_*`` event-state flags onto a reader condition.

    ``IGNORE``/``UNKNOWN`` (the reader is gone) → ``disconnected``;
    ``UNAVAILABLE`` (present but unusable) → ``fault``; otherwise the reader
    works and the flags only describe the card: ``ok`` with a detail (a
    ``MUTE`` card is the citizen's card failing, not the reader). No state at
    all (``UNAWARE``) → ``unknown``. Pure; never raises.
    """
    state = flags & _STATE_MASK
    if state & SCARD_STATE_IGNORE:
        return PeripheralCondition.DISCONNECTED, "SCARD_STATE_IGNORE", "pcscd ignores the reader"
    if state & SCARD_STATE_UNKNOWN:
        return (
            PeripheralCondition.DISCONNECTED,
            "SCARD_STATE_UNKNOWN",
            "pcscd does not know the reader",
        )
    if state & SCARD_STATE_UNAVAILABLE:
        return (
            PeripheralCondition.FAULT,
            "SCARD_STATE_UNAVAILABLE",
            "reader present but its state is unavailable",
        )
    notes: list[str] = []
    if state & SCARD_STATE_MUTE:
        notes.append("card present but mute (the card does not answer; the reader is fine)")
    elif state & SCARD_STATE_PRESENT:
        notes.append("card present")
    elif state & SCARD_STATE_EMPTY:
        notes.append("no card")
    if state & SCARD_STATE_UNPOWERED:
        notes.append("card unpowered")
    if state & SCARD_STATE_EXCLUSIVE:
        notes.append("in exclusive use")
    elif state & SCARD_STATE_INUSE:
        notes.append("in use")
    if not notes:
        return PeripheralCondition.UNKNOWN, None, f"reader reported no state (0x{state:04x})"
    return PeripheralCondition.OK, None, "; ".join(notes)


def match_reader(readers: Iterable[str], name_contains: str) -> str | None:
    """The first reader (in sorted order) whose name contains ``name_contains``, ignoring case."""
    needle = name_contains.casefold()
    matches = sorted(r for r in readers if needle in r.casefold())
    return matches[0] if matches else None


class PyscardBackend:
    """The real adapter over pyscard. Raises ``PcscNotInstalledError`` when it is missing.

    Readers are listed with ``smartcard.System.readers()``; a reader's flags
    come from ``SCardGetStatusChange`` with a zero timeout in a context that
    is established and released on every call (so a restarted pcscd is
    picked up without restarting the agent).
    """

    def __init__(self) -> None:
        try:
            from smartcard import scard
            from smartcard.Exceptions import SmartcardException
            from smartcard.pcsc.PCSCExceptions import BaseSCardException
            from smartcard.System import readers
        except ImportError as exc:
            raise PcscNotInstalledError("pyscard not installed") from exc
        self._scard: Any = scard
        self._list_readers: Any = readers
        self._errors: tuple[type[BaseException], ...] = (SmartcardException, BaseSCardException)

    def readers(self) -> list[str]:
        try:
            return [str(reader) for reader in self._list_readers()]
        except self._errors as exc:
            raise PcscServiceError(str(exc), getattr(exc, "hresult", None)) from exc

    def reader_flags(self, reader: str) -> int:
        scard = self._scard
        hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if hresult != scard.SCARD_S_SUCCESS:
            raise PcscServiceError(
                f"cannot establish a PC/SC context: {scard.SCardGetErrorMessage(hresult)}",
                int(hresult),
            )
        try:
            hresult, states = scard.SCardGetStatusChange(
                context, 0, [(reader, scard.SCARD_STATE_UNAWARE)]
            )
            if hresult == scard.SCARD_E_UNKNOWN_READER:
                return SCARD_STATE_UNKNOWN
            if hresult != scard.SCARD_S_SUCCESS:
                raise PcscServiceError(
                    f"SCardGetStatusChange failed: {scard.SCardGetErrorMessage(hresult)}",
                    int(hresult),
                )
            for name, event_state, _atr in states:
                if name == reader:
                    return int(event_state)
            return SCARD_STATE_UNKNOWN
        finally:
            scard.SCardReleaseContext(context)


class InMemoryPcscBackend:
    """The fake: readers and their flags in a dict; ``failure`` makes every call raise it."""

    def __init__(
        self, flags_by_reader: Mapping[str, int] | None = None, failure: PcscError | None = None
    ) -> None:
        self.flags_by_reader: dict[str, int] = dict(flags_by_reader or {})
        self.failure = failure

    def readers(self) -> list[str]:
        if self.failure is not None:
            raise self.failure
        return list(self.flags_by_reader)

    def reader_flags(self, reader: str) -> int:
        if self.failure is not None:
            raise self.failure
        return self.flags_by_reader.get(reader, SCARD_STATE_UNKNOWN)


def _default_backend() -> PcscBackend:
    return PyscardBackend()


class PcscProbe(VerdictProbe):
    """Reads one PC/SC reader, found by a substring of its name.

    Without a ``backend`` the probe builds ``PyscardBackend`` on first use; if
    pyscard is missing it reports ``unknown`` ("pyscard not installed").
    """

    def __init__(
        self,
        name: str,
        reader_name_contains: str,
        *,
        kind: PeripheralKind = PeripheralKind.IC_CARD_READER,
        backend: PcscBackend | None = None,
    ) -> None:
        if not reader_name_contains:
            raise ValueError("reader_name_contains must not be empty")
        super().__init__(name, kind)
        self._needle = reader_name_contains
        self._backend = backend
        self._missing: PcscNotInstalledError | None = None

    def _get_backend(self) -> PcscBackend:
        if self._backend is None:
            if self._missing is not None:
                raise self._missing
            try:
                self._backend = _default_backend()
            except PcscNotInstalledError as exc:
                self._missing = exc  # installing pyscard means restarting the agent
                raise
        return self._backend

    def _verdict(self) -> Verdict:
        try:
            backend = self._get_backend()
            readers = backend.readers()
            reader = match_reader(readers, self._needle)
            if reader is None:
                present = ", ".join(sorted(readers)) or "none"
                return (
                    PeripheralCondition.DISCONNECTED,
                    "reader-not-found",
                    f"no reader matching {self._needle!r} (readers: {present})",
                )
            flags = backend.reader_flags(reader)
        except PcscNotInstalledError:
            return PeripheralCondition.UNKNOWN, "pyscard-missing", "pyscard not installed"
        except PcscServiceError as exc:
            code = f"0x{exc.hresult:08X}" if exc.hresult is not None else "pcsc-error"
            return PeripheralCondition.UNKNOWN, code, f"pcscd not available: {exc}"
        except PcscError as exc:
            return PeripheralCondition.UNKNOWN, "pcsc-error", str(exc)
        condition, fault_code, detail = reader_condition(flags)
        return condition, fault_code, f"{reader}: {detail}" if detail else reader
