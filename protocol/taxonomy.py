"""The peripheral taxonomy: every kind of peripheral a terminal can report, in one table.

Each kind belongs to one *family* (printers, identity readers, scanners,
payment devices, ...). A family says which normalised conditions its
peripherals can be in, which of those keep a citizen from being served
(*blocking*), which condition wins when a device reports several at once
(*precedence*), which one means "the device is not there" (*absent*), and its
human name. Everything else derives from this table: the wire's check that a
condition fits its kind (``protocol.messages``), the probes' precedence and
absent conditions (``agent.probes``), the server's health policy, the
collector's ``family`` label, and the alert rules, which select families
(``family="printer"``), never lists of kinds.

Adding a kind is one ``PeripheralKind`` member and one ``KindDescription`` in
``KINDS`` (a test fails for a kind without one); a new family is one
``Family`` member and one ``FamilyDescription``, plus an alert rule for its
blocking conditions (a test fails for a problem no alert covers).

Read it like Home Assistant's entity descriptions: frozen data, looked up,
never branched on by name. Pure: no I/O, imports nothing but the standard library.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

__all__ = [
    "FAMILIES",
    "KINDS",
    "Family",
    "FamilyDescription",
    "KindDescription",
    "PeripheralCondition",
    "PeripheralKind",
    "allowed_conditions",
    "describe",
    "family_of",
    "is_blocking",
    "kinds_of",
    "most_severe",
]


class PeripheralCondition(StrEnum):
    """Normalised peripheral states; which apply depends on the kind's family."""

    OK = "ok"
    PAPER_LOW = "paper_low"
    PAPER_OUT = "paper_out"
    JAM = "jam"
    COVER_OPEN = "cover_open"
    CUTTER_ERROR = "cutter_error"
    FULL = "full"  # a cash box or bin that staff must empty
    FAULT = "fault"
    DISCONNECTED = "disconnected"
    OFFLINE = "offline"
    UNKNOWN = "unknown"


class Family(StrEnum):
    """What a peripheral is for; the ``family`` label of the peripheral metrics."""

    PRINTER = "printer"
    IDENTITY_READER = "identity_reader"
    SCANNER = "scanner"
    PAYMENT = "payment"


class PeripheralKind(StrEnum):
    """The wire's ``kind`` of a peripheral; each has a ``KindDescription`` in ``KINDS``."""

    RECEIPT_PRINTER = "receipt_printer"
    A4_PRINTER = "a4_printer"
    ID_CARD_READER = "id_card_reader"
    IC_CARD_READER = "ic_card_reader"
    FINGERPRINT_READER = "fingerprint_reader"
    QR_SCANNER = "qr_scanner"
    BARCODE_SCANNER = "barcode_scanner"
    CASH_ACCEPTOR = "cash_acceptor"


_C = PeripheralCondition


@dataclass(frozen=True, slots=True)
class FamilyDescription:
    """The rules every peripheral of one family follows.

    ``precedence`` lists every problem condition the family can be in, most
    severe first (``ok`` is below them all); together with ``ok`` they are the
    family's allowed conditions. ``blocking`` are those that keep the device
    from serving a citizen (``paper_low`` and ``unknown`` never do).
    ``absent`` is the condition of a device that is not there at all.
    """

    family: Family
    name: str
    precedence: tuple[PeripheralCondition, ...]
    blocking: frozenset[PeripheralCondition]
    absent: PeripheralCondition

    def __post_init__(self) -> None:
        problems = set(self.precedence)
        if _C.OK in problems or len(problems) != len(self.precedence):
            raise ValueError(f"{self.family}: precedence lists problems once each, never ok")
        if not self.blocking <= problems or self.absent not in problems:
            raise ValueError(f"{self.family}: blocking and absent must be in precedence")
        if _C.UNKNOWN not in problems or _C.UNKNOWN in self.blocking:
            raise ValueError(f"{self.family}: every family can be unknown, which never blocks")

    @property
    def conditions(self) -> frozenset[PeripheralCondition]:
        """Every condition a peripheral of this family may report (``ok`` included)."""
        return frozenset((_C.OK, *self.precedence))

    def rank(self, condition: PeripheralCondition) -> int:
        """0 for the most severe condition, higher for milder ones, highest for ``ok``.

        Raises ValueError for a condition the family cannot be in.
        """
        if condition is _C.OK:
            return len(self.precedence)
        try:
            return self.precedence.index(condition)
        except ValueError:
            raise ValueError(
                f"condition {condition.value!r} does not apply to a {self.name}"
            ) from None


@dataclass(frozen=True, slots=True)
class KindDescription:
    """One kind of peripheral: its family and its human name."""

    kind: PeripheralKind
    family: Family
    name: str


_FAMILY_TABLE: Final = (
    FamilyDescription(
        Family.PRINTER,
        name="printer",
        precedence=(
            _C.OFFLINE,
            _C.COVER_OPEN,
            _C.CUTTER_ERROR,
            _C.JAM,
            _C.PAPER_OUT,
            _C.PAPER_LOW,
            _C.UNKNOWN,
        ),
        blocking=frozenset({_C.OFFLINE, _C.COVER_OPEN, _C.CUTTER_ERROR, _C.JAM, _C.PAPER_OUT}),
        absent=_C.OFFLINE,
    ),
    FamilyDescription(
        Family.IDENTITY_READER,
        name="identity reader",
        precedence=(_C.DISCONNECTED, _C.FAULT, _C.UNKNOWN),
        blocking=frozenset({_C.DISCONNECTED, _C.FAULT}),
        absent=_C.DISCONNECTED,
    ),
    FamilyDescription(
        Family.SCANNER,
        name="scanner",
        precedence=(_C.DISCONNECTED, _C.FAULT, _C.UNKNOWN),
        blocking=frozenset({_C.DISCONNECTED, _C.FAULT}),
        absent=_C.DISCONNECTED,
    ),
    FamilyDescription(
        Family.PAYMENT,
        name="payment device",
        precedence=(_C.DISCONNECTED, _C.FAULT, _C.JAM, _C.FULL, _C.UNKNOWN),
        blocking=frozenset({_C.DISCONNECTED, _C.FAULT, _C.JAM, _C.FULL}),
        absent=_C.DISCONNECTED,
    ),
)

_KIND_TABLE: Final = (
    KindDescription(PeripheralKind.RECEIPT_PRINTER, Family.PRINTER, "receipt printer"),
    KindDescription(PeripheralKind.A4_PRINTER, Family.PRINTER, "A4 printer"),
    KindDescription(PeripheralKind.ID_CARD_READER, Family.IDENTITY_READER, "ID card reader"),
    KindDescription(PeripheralKind.IC_CARD_READER, Family.IDENTITY_READER, "IC card reader"),
    KindDescription(
        PeripheralKind.FINGERPRINT_READER, Family.IDENTITY_READER, "fingerprint reader"
    ),
    KindDescription(PeripheralKind.QR_SCANNER, Family.SCANNER, "QR code scanner"),
    KindDescription(PeripheralKind.BARCODE_SCANNER, Family.SCANNER, "barcode scanner"),
    KindDescription(PeripheralKind.CASH_ACCEPTOR, Family.PAYMENT, "cash acceptor"),
)

FAMILIES: Final[Mapping[Family, FamilyDescription]] = MappingProxyType(
    {d.family: d for d in _FAMILY_TABLE}
)
"""Every family's description, by family."""

KINDS: Final[Mapping[PeripheralKind, KindDescription]] = MappingProxyType(
    {d.kind: d for d in _KIND_TABLE}
)
"""Every kind's description, by kind (``tests/unit/test_taxonomy.py`` checks none is missing)."""

# Derived lookups for the hot paths (validation of every peripheral, health of every terminal).
_FAMILY_OF: Final = {d.kind: FAMILIES[d.family] for d in _KIND_TABLE}
_ALLOWED: Final = {kind: family.conditions for kind, family in _FAMILY_OF.items()}
_BLOCKING: Final = frozenset(
    (kind, condition) for kind, family in _FAMILY_OF.items() for condition in family.blocking
)


def describe(kind: PeripheralKind) -> KindDescription:
    """The description of ``kind``. Raises KeyError for a kind the table lacks."""
    return KINDS[kind]


def family_of(kind: PeripheralKind) -> FamilyDescription:
    """The family ``kind`` belongs to. Raises KeyError for a kind the table lacks."""
    return _FAMILY_OF[kind]


def kinds_of(family: Family) -> frozenset[PeripheralKind]:
    """Every kind of ``family``."""
    return frozenset(d.kind for d in _KIND_TABLE if d.family is family)


def allowed_conditions(kind: PeripheralKind) -> frozenset[PeripheralCondition]:
    """Every condition a peripheral of ``kind`` may report (``ok`` included)."""
    return _ALLOWED[kind]


def is_blocking(kind: PeripheralKind, condition: PeripheralCondition) -> bool:
    """True when ``condition`` keeps a peripheral of ``kind`` from serving citizens."""
    return (kind, condition) in _BLOCKING


def most_severe(
    kind: PeripheralKind, conditions: Iterable[PeripheralCondition]
) -> PeripheralCondition:
    """The condition that wins by the family's precedence; ``ok`` when ``conditions`` has no
    problem. Raises ValueError for a condition the kind's family cannot be in."""
    family = _FAMILY_OF[kind]
    return min(conditions, key=family.rank, default=_C.OK)
