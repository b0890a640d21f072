"""What one recomputation of ``kioskfleet_hall_services_available`` costs.

Prints figures; never a pass/fail timing test. A fleet of ``--terminals`` (one receipt
printer, every seventh out of paper, and an ID-card reader each, in ``--halls`` halls) and
a catalogue of ``--services`` services (half need a printer, half a reader); then the
collector's pass over the fleet (``server.usage_metrics.ServiceAvailabilityCollector``),
which runs at most every ``KIOSKFLEET_SERVICES_METRICS_REFRESH_S`` (docs/analytics.md).

    .venv/bin/python bench/service_gauge.py                       # 10 000 x 200, 100 halls
    .venv/bin/python bench/service_gauge.py --terminals 50000
"""

from __future__ import annotations

import argparse
import time

from server.fleet_state import FleetState
from server.service_catalogue import Catalogue
from server.usage_metrics import ServiceAvailabilityCollector
from tests.support.fleet_messages import READER_OK, at, periph, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--terminals", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--halls", type=int, default=100)
    args = parser.parse_args()
    fleet = FleetState()
    for i in range(args.terminals):
        printer = periph("p", "receipt_printer", "paper_out" if i % 7 == 0 else "ok")
        hall = f"Hall {i % args.halls}"
        fleet.apply(report(f"T-{i}", 1, peripherals=[printer, READER_OK], hall=hall), at(1))
    needs = (["printer"], ["identity_reader"])
    catalogue = Catalogue.model_validate(
        {"services": [{"code": f"svc.s{i}", "needs": needs[i % 2]} for i in range(args.services)]}
    )
    collector = ServiceAvailabilityCollector(fleet, lambda: catalogue, refresh_s=0)
    for _ in range(3):
        started = time.perf_counter()
        series = len(collector.reading())
        took = time.perf_counter() - started
        print(
            f"{args.terminals} terminals x {args.services} services, {args.halls} halls:"
            f" {took:.3f} s per recomputation, {series} series"
        )


if __name__ == "__main__":
    main()
