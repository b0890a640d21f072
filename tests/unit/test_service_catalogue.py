"""The service catalogue: what each service needs, and what a terminal can offer now."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from server.fleet_state import FleetState
from server.fleet_views import TerminalView
from server.service_catalogue import (
    MAX_SERVICES,
    Catalogue,
    service_label,
    services_available,
    unmet_needs,
    working_needs,
)
from server.usage_metrics import ServiceAvailabilityCollector
from tests.support.fleet_messages import READER_OK, at, periph, report, state

CATALOGUE = Catalogue.model_validate(
    {
        "services": [
            {"code": "tax.invoice.print", "needs": ["printer"]},
            {"code": "police.residence_permit.renew", "needs": ["identity_reader"]},
            {"code": "market.licence.print", "needs": ["identity_reader", "a4_printer"]},
            {"code": "info.opening_hours", "needs": []},
        ]
    }
)


def _terminal(*peripherals: dict[str, str], tid: str = "T-1", hall: str = "Hall A") -> TerminalView:
    fleet = FleetState()
    fleet.apply(report(tid, 1, peripherals=list(peripherals), hall=hall), at(1))
    view = fleet.get(tid)
    assert view is not None
    return view


def test_a_terminal_with_every_peripheral_working_offers_what_its_peripherals_allow() -> None:
    view = _terminal(periph("printer", "receipt_printer"), READER_OK)
    assert services_available(CATALOGUE, view) == (
        "tax.invoice.print",
        "police.residence_permit.renew",
        "info.opening_hours",
    )  # no A4 printer: no licence printing


def test_a_terminal_out_of_paper_still_offers_the_identity_services() -> None:
    view = _terminal(periph("printer", "receipt_printer", "paper_out"), READER_OK)
    assert services_available(CATALOGUE, view) == (
        "police.residence_permit.renew",
        "info.opening_hours",
    )


def test_the_unmet_needs_of_a_service_name_the_peripheral_that_is_missing() -> None:
    view = _terminal(periph("printer", "receipt_printer", "paper_out"), READER_OK)
    working = working_needs(view)
    licence, info = CATALOGUE.services[2], CATALOGUE.services[3]
    assert unmet_needs(licence, working) == ("a4_printer",)
    assert unmet_needs(CATALOGUE.services[0], working) == ("printer",)
    assert unmet_needs(CATALOGUE.services[1], working) == ()
    assert unmet_needs(info, frozenset()) == ()


def test_paper_low_still_prints_because_it_does_not_block_service() -> None:
    view = _terminal(periph("printer", "a4_printer", "paper_low"), READER_OK)
    assert "tax.invoice.print" in services_available(CATALOGUE, view)
    assert "market.licence.print" in services_available(CATALOGUE, view)


def test_a_faulty_reader_stops_the_identity_services_and_printing_goes_on() -> None:
    view = _terminal(
        periph("printer", "receipt_printer"), periph("idcard", "id_card_reader", "fault")
    )
    assert services_available(CATALOGUE, view) == ("tax.invoice.print", "info.opening_hours")


def test_a_second_working_printer_covers_one_out_of_paper() -> None:
    view = _terminal(
        periph("p1", "receipt_printer", "paper_out"), periph("p2", "receipt_printer"), READER_OK
    )
    assert "tax.invoice.print" in services_available(CATALOGUE, view)


def test_an_offline_terminal_offers_nothing() -> None:
    fleet = FleetState()
    fleet.apply(report("T-1", 1, peripherals=[READER_OK]), at(1))
    fleet.apply(state("T-1", False, seq=1, sent_at=at(2)), at(2))
    view = fleet.get("T-1")
    assert view is not None
    assert not view.online
    assert services_available(CATALOGUE, view) == ()


def test_a_code_outside_the_catalogue_is_labelled_other() -> None:
    assert service_label(CATALOGUE, "tax.invoice.print") == "tax.invoice.print"
    assert service_label(CATALOGUE, "tax.invoice.reprint") == "other"


@pytest.mark.parametrize(
    "services",
    [
        [{"code": "tax.invoice.print"}, {"code": "tax.invoice.print"}],  # a code twice
        [{"code": "tax.invoice.print", "needs": ["printer", "printer"]}],  # a need twice
        [{"code": "tax.invoice.print", "needs": ["toaster"]}],  # not in the taxonomy
        [{"code": "Tax Invoice"}],  # free text
        [{"code": "tax.invoice.print", "name": "Print an invoice"}],  # an unknown field
        [{"code": f"svc.s{i}"} for i in range(MAX_SERVICES + 1)],  # bounded: the labels
    ],
)
def test_a_malformed_catalogue_is_refused(services: list[dict[str, object]]) -> None:
    with pytest.raises(ValidationError):
        Catalogue.model_validate({"services": services})


def test_the_hall_gauge_counts_terminals_offering_each_service_zeros_included() -> None:
    fleet = FleetState()
    fleet.apply(report("T-1", 1, peripherals=[periph("p", "receipt_printer"), READER_OK]), at(1))
    fleet.apply(report("T-2", 1, peripherals=[periph("p", "receipt_printer", "paper_out"), READER_OK]), at(1))  # fmt: skip
    fleet.apply(report("T-3", 1, peripherals=[periph("p", "receipt_printer"), READER_OK]), at(1))
    fleet.apply(state("T-3", False, seq=1, sent_at=at(2)), at(2))  # offline: offers nothing
    clock = [0.0]
    collector = ServiceAvailabilityCollector(
        fleet, lambda: CATALOGUE, refresh_s=60, monotonic=lambda: clock[0]
    )
    registry = CollectorRegistry()
    registry.register(collector)

    def gauge(service: str) -> float | None:
        return registry.get_sample_value(
            "kioskfleet_hall_services_available",
            {"region": "North", "hall": "Hall A", "service": service},
        )

    assert gauge("tax.invoice.print") == 1
    assert gauge("police.residence_permit.renew") == 2
    assert gauge("market.licence.print") == 0
    assert gauge("info.opening_hours") == 2  # needs nothing, but only from online terminals
    fleet.apply(report("T-2", 2, peripherals=[periph("p", "receipt_printer"), READER_OK]), at(2))
    assert gauge("tax.invoice.print") == 1  # the reading is at most refresh_s old
    clock[0] = 60.0
    assert gauge("tax.invoice.print") == 2
