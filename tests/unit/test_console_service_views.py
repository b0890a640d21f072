"""The console's arrangement of the catalogue and the analytics for its pages: the hall's
offers (what each terminal offers, why it cannot offer the rest, how many offer each
service), the catalogue form's text both ways, and the analytics page's per-hall figures
and heat map built from the API's answers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from server.analytics import Figures, GroupBy, TerminalUse, Thresholds
from server.analytics_api import (
    AvailabilityItem,
    AvailabilityPublic,
    RangePublic,
    TransactionsPublic,
    TurnedAwayItem,
    TurnedAwayPublic,
    _group,
    _use,
    utilisation_public,
)
from server.analytics_report import Range, Utilisation
from server.console.analytics_pages import HEAT_LEVELS, analytics_view
from server.console.service_offers import OFFLINE_REASON, hall_offers
from server.console.service_pages import catalogue_text, parse_catalogue_text
from server.fleet_state import FleetState
from server.fleet_views import TerminalView
from server.service_catalogue import Catalogue
from tests.support.fleet_messages import READER_OK, at, periph, report, state
from tests.unit.test_service_catalogue import CATALOGUE


def _views() -> list[TerminalView]:
    fleet = FleetState()
    fleet.apply(report("T-1", 1, peripherals=[periph("p", "receipt_printer"), READER_OK]), at(1))
    out_of_paper = [periph("p", "receipt_printer", "paper_out"), READER_OK]
    fleet.apply(report("T-2", 1, peripherals=out_of_paper), at(1))
    fleet.apply(report("T-3", 1, peripherals=[READER_OK]), at(1))
    fleet.apply(state("T-3", False, seq=2, sent_at=at(2)), at(2))
    views = [fleet.get(t) for t in ("T-1", "T-2", "T-3")]
    assert all(v is not None for v in views)
    return [v for v in views if v is not None]


def test_a_terminal_out_of_paper_offers_the_identity_services_and_names_the_missing_printer() -> (
    None
):
    offers = hall_offers(CATALOGUE, _views())
    paper_out = offers.terminals["T-2"]
    assert paper_out.offered == ("police.residence_permit.renew", "info.opening_hours")
    assert paper_out.missing == (
        ("tax.invoice.print", ("printer",)),
        ("market.licence.print", ("a4_printer",)),
    )
    assert offers.terminals["T-1"].missing == (("market.licence.print", ("a4_printer",)),)


def test_an_offline_terminal_offers_nothing_because_it_is_offline() -> None:
    offline = hall_offers(CATALOGUE, _views()).terminals["T-3"]
    assert (offline.online, offline.offered) == (False, ())
    assert {reasons for _code, reasons in offline.missing} == {(OFFLINE_REASON,)}


def test_the_hall_counts_the_terminals_offering_each_service() -> None:
    offers = hall_offers(CATALOGUE, _views())
    assert offers.total == 3
    assert offers.counts == (
        ("tax.invoice.print", 1),
        ("police.residence_permit.renew", 2),
        ("market.licence.print", 0),
        ("info.opening_hours", 2),
    )


def test_the_catalogue_form_text_reads_back_as_the_same_catalogue() -> None:
    text = catalogue_text(CATALOGUE)
    assert text.splitlines()[0] == "tax.invoice.print: printer"
    assert text.splitlines()[2] == "market.licence.print: identity_reader, a4_printer"
    assert text.splitlines()[3] == "info.opening_hours"
    assert parse_catalogue_text(text) == CATALOGUE
    assert parse_catalogue_text("# a comment\n\n  info.opening_hours  # why\n") == Catalogue(
        services=(CATALOGUE.services[3],)
    )


@pytest.mark.parametrize(
    "text",
    ["tax.invoice.print: laser_beam", "no dot: printer", "a.b: printer\na.b", "a.b: x, x"],
)
def test_a_catalogue_form_text_the_api_would_refuse_is_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_catalogue_text(text)


def test_a_catalogue_form_text_with_too_many_lines_is_refused() -> None:
    with pytest.raises(ValueError, match="at most"):
        parse_catalogue_text("\n" * 1000)


_R = Range(datetime(2026, 11, 23, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC))


def _figures(key: str | int, transactions: int, completed: int) -> Figures:
    return Figures(key, transactions, completed, 0, {"printer": transactions - completed}, 0.0, 0)


def test_the_analytics_view_gathers_each_halls_figures_from_the_apis_answers() -> None:
    thresholds = Thresholds()
    hot = TerminalUse("hall-b", None, 2, 0.9 * 2 * 36_000, 36_000.0)
    calm = TerminalUse("hall-a", None, 3, 0.1 * 3 * 36_000, 36_000.0)
    idle = TerminalUse("hall-a", "T-9", 1, 0.0, 36_000.0)

    class Sources:
        def utilisation(self, r: Range, *, hall: str | None = None) -> Utilisation:
            return Utilisation([idle], [calm, hot], [(idle, 0.1)], [hot], [], thresholds)

    use = utilisation_public(Sources(), _R)  # type: ignore[arg-type]  # only .utilisation
    span = RangePublic(since=_R.since, until=_R.until)
    by_hall = TransactionsPublic(
        range=span, by=GroupBy.HALL, groups=[_group(_figures("hall-a", 10, 8))]
    )
    availability = AvailabilityPublic(
        range=span,
        items=[AvailabilityItem(hall="hall-b", service="tax.invoice.print", open_s=10.0,
                                available_s=5.0, availability=0.5)],
    )  # fmt: skip
    away = TurnedAwayPublic(
        range=span,
        items=[
            TurnedAwayItem(hall="hall-a", service="tax.invoice.print", failed={"printer": 2},
                           unavailable_s=60.0, estimated=1.5),
            TurnedAwayItem(hall="hall-a", service="info.opening_hours", failed={"printer": 0},
                           unavailable_s=60.0, estimated=0.5),
        ],
    )  # fmt: skip
    by_hour = TransactionsPublic(
        range=span,
        by=GroupBy.HOUR_OF_WEEK,
        groups=[_group(_figures(9, 10, 10)), _group(_figures(24 + 10, 1, 1))],
    )
    view = analytics_view(by_hall, use, availability, away, by_hour)
    a, b = view.halls
    assert (a.hall, a.transactions, a.completion_rate, a.turned_away, a.failed) == (
        "hall-a", 10, 0.8, 2.0, 2
    )  # fmt: skip
    assert [i.terminal.terminal_id for i in a.idle] == ["T-9"]
    assert (b.hall, b.overloaded, b.use, b.transactions) == ("hall-b", True, _use(hot), 0)
    assert [x.availability for x in b.availability] == [0.5]
    assert [day for day, _cells in view.heat] == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    assert view.heat[0][1][9] == (10, HEAT_LEVELS)
    assert view.heat[1][1][10] == (1, 1)
    assert sum(n for _day, cells in view.heat for n, _level in cells) == 11
