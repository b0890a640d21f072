"""The service catalogue: which citizen services exist, what each needs, what a terminal
can offer now. Pure: models and functions of data, no I/O, no clock.

Each service is a code (``protocol.usage.ServiceCode``, e.g. ``tax.invoice.print``) and
the peripherals it needs, each named by a *family* or a *kind* of ``protocol.taxonomy``
(``printer``, ``identity_reader``, ``a4_printer``, ...). A need is met by a peripheral of
that family or kind whose condition does not block service (``protocol.taxonomy.
is_blocking``: the one rule of what "working" means, so ``paper_low`` still prints and
``paper_out`` does not). A terminal offers a service when it is online and every need of
the service is met (``working_needs`` then ``offered``: many terminals share one set of
working needs, so a pass over the fleet works each set out once); so a terminal whose printer is out of paper still offers the identity
services (``tests/unit/test_service_catalogue.py``).

Public interface: ``Need``, ``Service``, ``Catalogue`` (the API body and the stored
form), ``services_available(catalogue, terminal)``, ``unmet_needs`` (why not),
``OTHER_SERVICE`` and ``service_label(catalogue, code)`` (a code for a metric label: the code when catalogued,
else ``other``, so device text never becomes an unbounded label), ``MAX_SERVICES``.
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.taxonomy import Family, PeripheralKind, family_of, is_blocking
from protocol.usage import ServiceCode
from server.fleet_views import TerminalView

__all__ = [
    "MAX_NEEDS",
    "MAX_SERVICES",
    "OTHER_SERVICE",
    "Catalogue",
    "Need",
    "Service",
    "offered",
    "service_label",
    "services_available",
    "unmet_needs",
    "working_needs",
]

MAX_SERVICES: Final = 200
"""Bounds the ``service`` label of the metrics (and the gauge's series: services x halls)."""
MAX_NEEDS: Final = 8
OTHER_SERVICE: Final = "other"
"""The ``service`` label of a transaction whose code is not in the catalogue."""

Need = Family | PeripheralKind
"""A family (any printer) or a kind (an A4 printer): values never overlap in the taxonomy."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Service(_Model):
    """One citizen service and the peripherals it cannot do without."""

    code: ServiceCode
    needs: Annotated[
        tuple[Need, ...],
        Field(max_length=MAX_NEEDS, description="families or kinds of protocol/taxonomy.py"),
    ] = ()

    @model_validator(mode="after")
    def _needs_once(self) -> Service:
        if len(set(self.needs)) != len(self.needs):
            raise ValueError(f"{self.code}: a need is listed once")
        return self


class Catalogue(_Model):
    """Every service, each code once (what ``PUT /api/v1/services`` replaces whole)."""

    services: Annotated[tuple[Service, ...], Field(max_length=MAX_SERVICES)] = ()

    @model_validator(mode="after")
    def _codes_once(self) -> Catalogue:
        codes = [s.code for s in self.services]
        if len(set(codes)) != len(codes):
            raise ValueError("each service code appears once")
        if OTHER_SERVICE in codes:  # unreachable by the pattern (needs a dot); kept explicit
            raise ValueError(f"{OTHER_SERVICE!r} is reserved")
        return self

    @property
    def codes(self) -> frozenset[str]:
        return frozenset(s.code for s in self.services)


def working_needs(terminal: TerminalView) -> frozenset[Need]:
    """The kinds and families of ``terminal``'s peripherals that can serve now (their
    condition does not block); empty for an offline terminal."""
    if not terminal.online:
        return frozenset()
    working: set[Need] = set()
    for p in terminal.peripherals:
        if not is_blocking(p.kind, p.condition):
            working.update((p.kind, family_of(p.kind).family))
    return frozenset(working)


def offered(catalogue: Catalogue, working: frozenset[Need]) -> tuple[str, ...]:
    """The codes whose every need is in ``working`` (``working_needs``), in catalogue order."""
    return tuple(s.code for s in catalogue.services if working.issuperset(s.needs))


def unmet_needs(service: Service, working: frozenset[Need]) -> tuple[Need, ...]:
    """The needs of ``service`` that ``working`` (``working_needs``) does not meet, in the
    service's order: why a terminal cannot offer it (empty: it can)."""
    return tuple(n for n in service.needs if n not in working)


def services_available(catalogue: Catalogue, terminal: TerminalView) -> tuple[str, ...]:
    """The codes ``terminal`` can serve now, in catalogue order: online, and every need met
    by at least one working peripheral. An offline terminal offers none."""
    if not terminal.online:
        return ()
    return offered(catalogue, working_needs(terminal))


def service_label(catalogue: Catalogue, code: str) -> str:
    """``code`` when catalogued, else ``other``: the ``service`` label of the metrics."""
    return code if code in catalogue.codes else OTHER_SERVICE
