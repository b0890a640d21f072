"""Regenerate the console screenshots in docs/console/ (referenced by docs/console.md).

Starts a mosquitto (``LocalBroker``), a server on a temporary SQLite database and the
terminal simulator (the real agent code, faults included) against it, logs in with
Debian's headless chromium through Playwright and saves one PNG per main page. Needs
nothing from the internet; leaves nothing behind but the PNGs.

    .venv/bin/python scripts/console_screenshots.py [--out docs/console]

The releases and rollout pages need a TUF repository and a rollout, which the demo has:
with ``make demo`` running, ``--from-demo`` logs in to its console (user ``demo``,
``var/demo/console.password``) and saves those pages only.

    .venv/bin/python scripts/console_screenshots.py --from-demo [--out docs/console]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from playwright.sync_api import Page, sync_playwright
from prometheus_client import CollectorRegistry

from agent.demand import planted_plan
from agent.simulator import Simulation, SimulationOptions
from kioskfleet.local_broker import LocalBroker
from server.access import Role
from server.config import Settings
from server.console_auth import UserRecord, hash_password
from server.main import Server
from server.service_catalogue import Catalogue

PASSWORD = "screenshots only, not a real one"  # noqa: S105 - a throwaway demo user
WIDTH, HEIGHT = 1280, 860


DEMO_BASE = "https://127.0.0.1:8080"
DEMO_PASSWORD_FILE = Path("var/demo/console.password")
DEMO_PAGES: Final = {
    "releases": "/console/releases",
    "rollouts": "/console/rollouts",
    "rollout": "/console/rollouts/R-DEMO-1",
}


def _log_in(page: Page, base: str, password: str = PASSWORD) -> None:
    page.goto(base + "/console/login")
    page.fill("input[name=username]", "demo")
    page.fill("input[name=password]", password)
    page.click("#login")


def _from_demo(out: Path, chromium: str) -> int:
    """The pages of a running ``make demo`` that need its repository and rollout."""
    if not DEMO_PASSWORD_FILE.exists():
        raise SystemExit(f"{DEMO_PASSWORD_FILE} is missing: start `make demo` first")
    password = DEMO_PASSWORD_FILE.read_text(encoding="utf-8").strip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for locale, suffix in (("en-US", ""), ("zh-CN", "-zh_CN")):
            context = browser.new_context(  # the demo's certificate is its own CA's
                locale=locale, viewport={"width": WIDTH, "height": HEIGHT}, ignore_https_errors=True
            )
            page = context.new_page()
            _log_in(page, DEMO_BASE, password)
            for name, path in DEMO_PAGES.items():
                page.goto(DEMO_BASE + path)
                shot = out / f"{name}{suffix}.png"
                page.screenshot(path=str(shot), full_page=True)
                print(shot)
            context.close()
        browser.close()
    return 0


def _wait(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/console"))
    parser.add_argument(
        "--from-demo", action="store_true", help="the releases and rollout pages of `make demo`"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if args.from_demo:
        return _from_demo(args.out, chromium)
    with tempfile.TemporaryDirectory(prefix="kf-shots-") as tmp, LocalBroker(Path(tmp)) as broker:
        server = Server(
            Settings(
                database_url=f"sqlite:///{tmp}/kioskfleet.db",
                broker_url=broker.url,
                http_port=0,
                mqtt_session_expiry_s=0,
            ),
            registry=CollectorRegistry(),
        )
        server.start()
        simulation = Simulation(
            SimulationOptions(
                terminals=18, halls=3, regions=2, broker_url=broker.url, report_interval_s=2,
                fault_rate=120.0, seed=7,
            )
        )  # fmt: skip
        try:
            simulation.start()
            server.console_store.create_user(
                UserRecord("demo", Role.ADMIN, hash_password(PASSWORD), datetime.now(UTC), "demo")
            )

            def needs(code: str, printer: bool) -> list[str]:
                return (
                    ["printer"]
                    if printer
                    else ["identity_reader"]
                    if code.startswith("police.")
                    else []
                )

            catalogue = Catalogue.model_validate(
                {"services": [{"code": s.code, "needs": needs(s.code, s.needs_printer)}
                              for s in planted_plan().services.values()]}
            )  # fmt: skip
            server.services.put(catalogue, actor="user:demo", now=datetime.now(UTC))
            _wait(lambda: sum(h.total for h in server.fleet.halls()) >= 18, 60, "the terminals")
            _wait(lambda: len(server.fleet.problem_terminals()) >= 2, 60, "planted faults")
            problem = sorted(v.id for v in server.fleet.problem_terminals() if v.online)[0]
            hall = server.fleet.get(problem).hall  # type: ignore[union-attr]
            base = server.base_url
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=chromium, args=["--no-sandbox"]
                )
                for locale, suffix in (("en-US", ""), ("zh-CN", "-zh_CN")):
                    context = browser.new_context(
                        locale=locale, viewport={"width": WIDTH, "height": HEIGHT}
                    )
                    page = context.new_page()
                    page.goto(base + "/console/login")
                    page.screenshot(path=str(args.out / f"login{suffix}.png"))
                    _log_in(page, base)
                    pages = {
                        "fleet": "/console",
                        "hall": f"/console/halls/{hall}",
                        "terminal": f"/console/terminals/{problem}",
                        "problems": "/console/problems",
                        "audit": "/console/audit",
                        "tokens": "/console/tokens",
                        "users": "/console/users",
                        "services": "/console/services",
                        "analytics": "/console/analytics",
                    }
                    for name, path in pages.items():
                        _wait(lambda: server.fleet.problem_terminals(), 60, "a current fault")
                        page.goto(base + path)
                        page.screenshot(path=str(args.out / f"{name}{suffix}.png"), full_page=True)
                    context.close()
                browser.close()
        finally:
            simulation.stop()
            server.stop()
    for png in sorted(args.out.glob("*.png")):
        print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
