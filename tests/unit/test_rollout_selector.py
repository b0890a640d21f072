"""Rollout selectors (``server.rollout_service.selects``): every key given must match: region,
hall and model the terminal's, ``tags`` all among its operator tags, ``current_version`` the
version of the release's package it reports now. The console's form reads tags from one text
field; a rollout id that is a console route word is refused; the planner's refusals read as
catalogue sentences."""

from __future__ import annotations

import inspect
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from server import rollout_planner
from server.console.i18n import load_catalogs
from server.console.rollout_pages import (
    REFUSAL_TEXTS,
    RolloutPages,
    refusal_sentence,
    rollout_pages_router,
    selector_form,
)
from server.fleet_views import TerminalView
from server.rollout_api import RESERVED_ROLLOUT_IDS, RolloutCreate
from server.rollout_service import (
    SELECTOR_KEYS,
    RolloutService,
    Selector,
    release_package,
    selects,
)
from server.tuf_repository import ReleaseView

NOW = datetime(2026, 12, 4, tzinfo=UTC)
PACKAGE = "kiosk-app"


def _terminal(**fields: Any) -> TerminalView:
    base: dict[str, Any] = {
        "id": "T-1",
        "online": True,
        "state_since": NOW,
        "last_seen": NOW,
        "first_seen": NOW,
        "hall": "hall-01",
        "region": "north",
        "model": "KF-200",
        "software": {PACKAGE: "1.4.2"},
    }
    return TerminalView(**{**base, **fields})


TAGS = frozenset({"pilot", "lobby"})


def test_an_empty_selector_selects_every_terminal() -> None:
    assert selects({}, _terminal(hall=None, region=None, model=None), frozenset(), None)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({"hall": "hall-01", "region": "north", "model": "KF-200"}, True),
        ({"hall": "hall-02"}, False),
        ({"model": "KF-100"}, False),
        ({"tags": ["pilot"]}, True),
        ({"tags": ["pilot", "lobby"]}, True),
        ({"tags": ["pilot", "night"]}, False),  # every listed tag must be present
        ({"current_version": "1.4.2"}, True),
        ({"current_version": "1.4.1"}, False),
        ({"hall": "hall-01", "tags": ["lobby"], "current_version": "1.4.2"}, True),
    ],
)
def test_every_key_given_must_match(selector: Selector, expected: bool) -> None:
    assert selects(selector, _terminal(), TAGS, PACKAGE) is expected


def test_current_version_matches_nothing_without_the_package_or_its_report() -> None:
    assert not selects({"current_version": "1.4.2"}, _terminal(), TAGS, None)
    assert not selects({"current_version": "1.4.2"}, _terminal(software={}), TAGS, PACKAGE)
    other = _terminal(software={"kioskfleet-agent": "1.4.2"})
    assert not selects({"current_version": "1.4.2"}, other, TAGS, PACKAGE)


def test_a_terminal_without_tags_matches_no_tag_selector() -> None:
    assert not selects({"tags": ["pilot"]}, _terminal(), frozenset(), PACKAGE)


_SELECTORS = st.fixed_dictionaries(
    {},
    optional={
        "hall": st.sampled_from(["hall-01", "hall-02"]),
        "tags": st.lists(st.sampled_from(["pilot", "lobby", "night"]), min_size=1),
        "current_version": st.sampled_from(["1.4.2", "1.4.1"]),
    },
)


@given(_SELECTORS, st.sampled_from(["hall", "tags", "current_version"]))
def test_dropping_a_key_never_selects_fewer(selector: dict[str, Any], key: str) -> None:
    wider = {k: v for k, v in selector.items() if k != key}
    if selects(selector, _terminal(), TAGS, PACKAGE):
        assert selects(wider, _terminal(), TAGS, PACKAGE)


def test_the_release_package_is_its_manifests() -> None:
    release = ReleaseView(
        "acme", "acme/app.bin", 1, "0" * 64, {"package": PACKAGE}, 1, "verified", ()
    )
    assert release_package(release) == PACKAGE
    assert release_package(None) is None


def test_the_form_reads_tags_split_at_commas_and_spaces_and_leaves_empty_fields_out() -> None:
    form = {
        "hall": " hall-01 ",
        "region": "",
        "tags": "pilot, lobby  night,",
        "current_version": "",
    }
    assert selector_form(form) == {"hall": "hall-01", "tags": ["pilot", "lobby", "night"]}
    assert set(selector_form({k: "x" for k in SELECTOR_KEYS})) == set(SELECTOR_KEYS)


_BODY: dict[str, Any] = {
    "target": "acme/app.bin",
    "phases": [{"size": 1}],
    "success_threshold": 1,
    "abort_failure_ratio": 1,
    "abort_min_decided": 1,
    "terminal_timeout_s": 60,
}


@pytest.mark.parametrize("rollout_id", ["new", "preview", "NEW"])
def test_a_rollout_id_that_is_a_console_route_word_is_refused(rollout_id: str) -> None:
    with pytest.raises(ValidationError, match="console route word"):
        RolloutCreate(rollout_id=rollout_id, **_BODY)
    assert RolloutCreate(rollout_id=f"{rollout_id}-1", **_BODY).rollout_id == f"{rollout_id}-1"


@pytest.mark.parametrize(
    "selector",
    [{"tags": ["bad tag"]}, {"tags": []}, {"tags": ["t"] * 17}, {"current_version": ""}],
)
def test_a_selector_the_registry_could_never_match_is_refused(selector: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RolloutCreate(rollout_id="R-1", selector=selector, **_BODY)


def test_every_fixed_word_of_the_console_rollout_routes_is_reserved() -> None:
    """Guardrail: a new console route ``/console/rollouts/<word>`` must reserve its word."""

    def no_service() -> RolloutService:
        raise AssertionError("building the routes reads nothing")

    pages = RolloutPages(rollouts=no_service, releases=list, vendors=list)
    prefix = "/console/rollouts/"
    paths = [str(getattr(route, "path", "")) for route in rollout_pages_router(pages).routes]
    words = {p.removeprefix(prefix).split("/")[0] for p in paths if p.startswith(prefix)}
    fixed = {w for w in words if not w.startswith("{")}
    assert fixed == set(RESERVED_ROLLOUT_IDS)


def test_the_planners_refusals_read_as_translated_sentences() -> None:
    zh = load_catalogs()["zh_CN"]
    creator = refusal_sentence("approver_is_creator")
    assert creator.text == REFUSAL_TEXTS["approver_is_creator"]
    assert zh.gettext(creator.text) not in ("", creator.text)
    paused = refusal_sentence("not_running_paused")
    assert (paused.text, paused.status) == (REFUSAL_TEXTS["not_running_"], "paused")
    assert refusal_sentence("rollout_canceled").status == "canceled"


def test_a_reason_without_a_sentence_shows_as_it_is() -> None:
    assert refusal_sentence("the rollout changed meanwhile; try again").text.startswith(
        "the rollout"
    )
    assert refusal_sentence("not_running_bogus").text == "not_running_bogus"
    assert refusal_sentence("100%").text == "100%%"  # the page formats it


def test_every_refusal_of_an_operator_event_has_a_sentence() -> None:
    """Guardrail: a new reason in the planner's ``apply`` needs its console sentence."""
    source = inspect.getsource(rollout_planner._Run.apply)
    reasons = set(re.findall(r'return f?"([a-z_]+)', source)) - {"unknown_event"}  # unreachable
    assert reasons  # the scan finds them
    assert sorted(r for r in reasons if r not in REFUSAL_TEXTS) == []
