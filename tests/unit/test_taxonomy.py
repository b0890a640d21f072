"""The peripheral taxonomy is complete and consistent, and everything else derives from it.

Guardrails: a kind without a description, a family without kinds, or a
condition that no family uses fails here. The facts an operator relies on
(paper low never blocks, an unknown state never blocks, a jammed printer does)
are stated once below, per family.
"""

from __future__ import annotations

import pytest

from agent.probes.usb import UsbPresenceProbe
from protocol.messages import PeripheralStatus
from protocol.taxonomy import (
    FAMILIES,
    KINDS,
    Family,
    FamilyDescription,
    PeripheralCondition,
    PeripheralKind,
    allowed_conditions,
    describe,
    family_of,
    is_blocking,
    kinds_of,
    most_severe,
)

C = PeripheralCondition


@pytest.mark.parametrize("kind", list(PeripheralKind))
def test_every_kind_has_a_description_with_a_family_and_a_human_name(
    kind: PeripheralKind,
) -> None:
    description = describe(kind)
    assert description.kind is kind
    assert description.family in FAMILIES
    assert description.name
    assert description.name != kind.value
    assert kind in kinds_of(description.family)


def test_the_tables_cover_every_kind_and_every_family_exactly() -> None:
    assert set(KINDS) == set(PeripheralKind)
    assert set(FAMILIES) == set(Family)
    assert all(kinds_of(family) for family in Family)


def test_every_condition_is_used_by_some_family() -> None:
    used = set().union(*(f.conditions for f in FAMILIES.values()))
    assert used == set(PeripheralCondition)


@pytest.mark.parametrize("family", list(Family))
def test_a_family_is_ok_unknown_or_one_of_its_problems_and_unknown_never_blocks(
    family: Family,
) -> None:
    description = FAMILIES[family]
    assert C.OK in description.conditions
    assert C.UNKNOWN in description.conditions
    assert not is_blocking(next(iter(kinds_of(family))), C.UNKNOWN)
    assert description.absent in description.blocking


@pytest.mark.parametrize(
    ("kind", "blocking", "not_blocking"),
    [
        (
            PeripheralKind.RECEIPT_PRINTER,
            {C.PAPER_OUT, C.JAM, C.COVER_OPEN, C.CUTTER_ERROR, C.OFFLINE},
            {C.OK, C.PAPER_LOW, C.UNKNOWN},
        ),
        (PeripheralKind.ID_CARD_READER, {C.FAULT, C.DISCONNECTED}, {C.OK, C.UNKNOWN}),
        (PeripheralKind.QR_SCANNER, {C.FAULT, C.DISCONNECTED}, {C.OK, C.UNKNOWN}),
        (
            PeripheralKind.CASH_ACCEPTOR,
            {C.FULL, C.JAM, C.FAULT, C.DISCONNECTED},
            {C.OK, C.UNKNOWN},
        ),
    ],
)
def test_what_blocks_a_citizen(
    kind: PeripheralKind, blocking: set[PeripheralCondition], not_blocking: set[PeripheralCondition]
) -> None:
    assert blocking | not_blocking == allowed_conditions(kind)
    assert all(is_blocking(kind, c) for c in blocking)
    assert not any(is_blocking(kind, c) for c in not_blocking)


def test_a_condition_of_another_family_is_refused_on_the_wire() -> None:
    with pytest.raises(ValueError, match="does not apply to id_card_reader"):
        PeripheralStatus(name="id", kind=PeripheralKind.ID_CARD_READER, condition=C.PAPER_OUT)
    status = PeripheralStatus(name="p", kind=PeripheralKind.A4_PRINTER, condition=C.PAPER_OUT)
    assert status.condition is C.PAPER_OUT


def test_the_most_severe_condition_wins_by_the_familys_precedence() -> None:
    printer = PeripheralKind.RECEIPT_PRINTER
    assert most_severe(printer, [C.PAPER_LOW, C.JAM, C.OK]) is C.JAM
    assert most_severe(printer, [C.PAPER_OUT, C.COVER_OPEN]) is C.COVER_OPEN
    assert most_severe(printer, [C.OK, C.OK]) is C.OK
    assert most_severe(printer, []) is C.OK
    assert most_severe(PeripheralKind.QR_SCANNER, [C.FAULT, C.DISCONNECTED]) is C.DISCONNECTED
    with pytest.raises(ValueError, match="'paper_out' does not apply to a scanner"):
        most_severe(PeripheralKind.QR_SCANNER, [C.PAPER_OUT])


def test_a_family_description_refuses_an_inconsistent_table() -> None:
    with pytest.raises(ValueError, match="blocking and absent"):
        FamilyDescription(
            Family.SCANNER, "x", (C.FAULT, C.UNKNOWN), frozenset({C.JAM}), absent=C.FAULT
        )
    with pytest.raises(ValueError, match="unknown"):
        FamilyDescription(Family.SCANNER, "x", (C.FAULT,), frozenset({C.FAULT}), absent=C.FAULT)
    with pytest.raises(ValueError, match="once each"):
        FamilyDescription(
            Family.SCANNER, "x", (C.OK, C.FAULT, C.UNKNOWN), frozenset(), absent=C.FAULT
        )


def test_usb_presence_serves_every_kind_that_can_be_disconnected_and_no_printer() -> None:
    for kind in PeripheralKind:
        if C.DISCONNECTED in allowed_conditions(kind):
            assert UsbPresenceProbe("p", kind, "1234", "abcd").kind is kind
        else:
            assert family_of(kind).family is Family.PRINTER
            with pytest.raises(ValueError, match="USB presence"):
                UsbPresenceProbe("p", kind, "1234", "abcd")
