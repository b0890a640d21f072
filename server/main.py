"""Wiring: ``Server`` builds and runs every server component; ``run_server`` is the CLI entry.

Threads of a running server: paho's network thread (receives and ingests every
message), the database writer's flusher (which also acknowledges messages to
the broker once committed), APScheduler's worker (offline sweep, event
pruning), and uvicorn's event loop serving the API (with its worker threads
for the handlers). ``Server(settings)`` only builds objects; ``start()`` opens
(and migrates) the database, loads the fleet from it, and starts the threads;
``stop()`` stops intake first (what arrives after is neither applied nor
acknowledged), then flushes and acknowledges what is pending, lets paho write
the acknowledgements, disconnects, then stops serving.

Nothing is started at import time.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

from protocol.topics import Channel, topic
from server.access_api import AccessServices
from server.access_store import AccessStore, DatabaseAudit
from server.analytics_api import analytics_router
from server.analytics_metrics import AnalyticsCollector
from server.analytics_report import AnalyticsSources
from server.api import ApiServices, add_routes, create_app
from server.audit import AuditSink, DeniedBudget
from server.config import Settings
from server.confirmations import ConfirmationMailbox, ConfirmationMetrics
from server.console.i18n import load_catalogs
from server.console.rollout_pages import RolloutPages, rollout_pages_router
from server.console.web import ConsoleServices, install_console
from server.console_store import ConsoleStore
from server.device_ca import CaPaths
from server.errors import BrokerError, ConfigError, ServerError, StorageError
from server.est import EstMetrics, est_router
from server.fleet_collector import UNKNOWN_LABEL, FleetCollector, LabelBudget
from server.fleet_state import FleetState
from server.fleet_views import TerminalFilter, TerminalView, Transition
from server.hall_openings import HallOpenings
from server.hall_report_api import hall_report_router
from server.hall_report_service import HallReports
from server.history_query import HistoryQuery, StoredPage
from server.holder_only import DescribedCollector, HolderOnly
from server.ingest import Ingest
from server.ingest_gate import IngestGate
from server.job_lease import JobLease, LeaseMetrics
from server.log_throttle import ThrottledLog
from server.maintenance import MaintenanceLimits
from server.maintenance_api import maintenance_router, operator_state
from server.maintenance_book import MaintenanceBook
from server.maintenance_service import MaintenanceActions
from server.maintenance_store import MaintenanceStore
from server.membership import IngestMembership, MembershipMetrics
from server.message_source import (
    ConnectionHandler,
    MessageHandler,
    MessageSource,
    SourceFactory,
)
from server.metrics import ServerMetrics
from server.mqtt_source import MqttOptions, MqttSource
from server.opening_hours import OpeningHours
from server.opening_hours_api import opening_hours_router
from server.opening_hours_store import OpeningHoursStore
from server.ownership import Ownership
from server.paper_api import paper_router
from server.paper_metrics import PaperCollector
from server.paper_tracker import PaperTracker
from server.records import EventRecord
from server.registry_api import registry_router
from server.report_gate import RenderGate, ReportLimits
from server.retention import retentions
from server.rollout_api import rollout_router
from server.rollout_service import DIRECTIVE_KEY_PIN, RolloutService, load_directive_signer
from server.rollout_store import RolloutStore
from server.scheduler import OfflineSweep, RetentionPruner, build_scheduler
from server.service_catalogue import services_available
from server.service_store import ServiceStore
from server.services_api import services_router
from server.storage import Storage
from server.terminal_registry import TerminalRegistry
from server.tls_client_cert import TlsH11Protocol
from server.tokens import Tokens
from server.update_status_api import update_status_router
from server.update_status_store import latest_states, timeline
from server.update_tally import UpdateTally
from server.update_wiring import UpdateService, build_updates
from server.usage_metrics import ServiceAvailabilityCollector, UsageMetrics
from server.usage_rollup import UsageRollupJob
from server.usage_rollup_store import UsageRollupStore
from server.write_behind import Confirmation, WriteBehind, no_confirm

__all__ = ["Server", "mqtt_options", "mqtt_source", "run_server", "storage_for", "upgrade_database"]

log = logging.getLogger(__name__)

_HTTP_START_TIMEOUT_S = 10.0


def storage_for(settings: Settings) -> Storage:
    """The repository over the configured database (not opened yet)."""
    return Storage(
        settings.database_url,
        sqlite_busy_timeout_s=settings.sqlite_busy_timeout_s,
        statement_timeout_s=settings.db_statement_timeout_s,
        connect_timeout_s=settings.db_connect_timeout_s,
    )


def mqtt_options(settings: Settings) -> MqttOptions:
    """What the paho adapter needs of ``settings``."""
    broker = settings.broker
    return MqttOptions(
        host=broker.host,
        port=broker.port,
        client_id=settings.mqtt_client_id,
        tls=broker.tls,
        ca_file=settings.broker_ca_file,
        cert_file=settings.broker_cert_file,
        key_file=settings.broker_key_file,
        keepalive_s=settings.mqtt_keepalive_s,
        session_expiry_s=settings.mqtt_session_expiry_s,
        reconnect_min_s=settings.mqtt_reconnect_min_s,
        reconnect_max_s=settings.mqtt_reconnect_max_s,
        shared_subscription=settings.shared_subscription,
        protocol=settings.mqtt_protocol,
        receive_maximum=settings.mqtt_receive_maximum,
        unwritten_max=settings.confirm_unwritten_max,
        drain_timeout_s=settings.mqtt_drain_timeout_s,
    )


def mqtt_source(settings: Settings) -> SourceFactory:
    """The real message source: paho, configured from ``settings``."""
    options = mqtt_options(settings)

    def build(
        on_message: MessageHandler, *, on_connection_change: ConnectionHandler
    ) -> MessageSource:
        return MqttSource(options, on_message, on_connection_change=on_connection_change)

    return build


class Server:
    """One server process's components. ``start()``, then ``stop()``; not restartable."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        *,
        source: SourceFactory | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        """``source`` builds where messages come from (default: ``mqtt_source(settings)``,
        the broker; tests pass ``InMemorySource.factory(...)``). ``audit`` receives the
        audit entries (default: in memory)."""
        self.settings = settings
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry
        self.storage = storage_for(settings)
        self.access_store = AccessStore(self.storage)
        self.console_store = ConsoleStore(self.storage)
        self.tokens = Tokens(self.access_store)
        # The audit log: enrollment, revocation and every API change record through it.
        suppressed = Counter(
            "kioskfleet_audit_denied_suppressed",
            "Refused attempts not stored in the audit log: their source spent its budget",
            registry=registry,
        )
        self.audit: AuditSink = DeniedBudget(
            audit if audit is not None else DatabaseAudit(self.access_store, registry),
            rate_per_s=settings.audit_denied_rate_per_s,
            burst=settings.audit_denied_burst,
            clock=time.monotonic,
            on_suppressed=suppressed.inc,
        )
        # The terminal registry and EST, when there is a device CA (docs/security.md).
        self.terminal_registry: TerminalRegistry | None = None
        if settings.ca_dir is not None:
            self.terminal_registry = TerminalRegistry(
                lambda: self.storage.engine,
                settings.ca_dir,
                self.audit,
                cert_days=settings.terminal_cert_days,
            )
        directory = self.terminal_registry if settings.enrollment_required else None
        self.metrics = ServerMetrics(registry)
        self.fleet = FleetState(
            offline_after_missed_reports=settings.offline_after_missed_reports,
            default_report_interval_s=settings.default_report_interval_s,
            max_seq_jump=settings.max_seq_jump,
            max_report_interval_s=settings.max_report_interval_s,
            gap_refill_window_s=settings.gap_refill_window_s,
            placements=None if directory is None else directory.placement,
        )
        self.opening_hours = OpeningHoursStore(
            self.storage, max_halls=settings.opening_hours_max_halls
        )
        self.services = ServiceStore(self.storage)
        self.usage_metrics = UsageMetrics(registry)
        self.service_availability = ServiceAvailabilityCollector(
            self.fleet,
            lambda: self.services.current,
            refresh_s=settings.services_metrics_refresh_s,
        )
        self.hall_openings = HallOpenings(
            self.opening_hours.all,
            refresh_s=settings.opening_hours_refresh_s,
            clock=lambda: datetime.now(UTC),
        )
        self.maintenance_store = MaintenanceStore(self.storage)
        self.maintenance_book = MaintenanceBook(
            lambda: self.maintenance_store.windows(active_at=datetime.now(UTC)),
            refresh_s=settings.maintenance_refresh_s,
            clock=lambda: datetime.now(UTC),
        )
        # The fleet's scheduled jobs run, and its gauges are exported, on the replica holding
        # this lease (docs/scale-out.md): every fleet-wide gauge is registered via holder_only.
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.job_lease = JobLease(
            self.storage,
            self.replica_id,
            LeaseMetrics(registry),
            duration=timedelta(seconds=settings.job_lease_duration_s),
            on_acquired=self._take_up_fleet_jobs,
        )

        def holder_only(collector: DescribedCollector) -> None:
            registry.register(HolderOnly(collector, self.job_lease.held))

        holder_only(  # fleet gauges, computed at scrape time
            FleetCollector(
                self.fleet,
                LabelBudget(
                    fault_codes_per_kind=settings.metrics_fault_codes_per_kind,
                    versions_per_package=settings.metrics_versions_per_package,
                    packages=settings.metrics_packages,
                    offline_terminals_per_hall=settings.metrics_offline_terminals_per_hall,
                    unreachable_share=settings.metrics_hall_unreachable_share,
                    peripheral_problem_terminals_per_hall=(
                        settings.metrics_peripheral_problem_terminals_per_hall
                    ),
                ),
                openings=self.hall_openings,
                maintenance=self.maintenance_book,
                on_lock_held=self.metrics.fleet_lock_held.observe,
            )
        )
        holder_only(self.service_availability)  # what each hall can offer, <= 1 min old
        # One writer per terminal among replicas that each receive everything
        # (docs/scale-out.md, "One writer per terminal"): None unless partitioned.
        self.ownership: Ownership | None = None
        if settings.ingest_ownership == "partition":
            self.ownership = Ownership(
                self.replica_id,
                grace_s=settings.ingest_heartbeat_interval_s + 2 * settings.db_flush_interval_s,
                clock=time.monotonic,
            )
        self.writer = WriteBehind(
            self.storage,
            self.fleet.snapshot,
            self.metrics,
            acknowledge=lambda deliveries: self.mqtt.ack(deliveries),
            confirm=self._publish_confirmations if settings.confirm_commits else no_confirm,
            open_gaps=self.fleet.open_gaps,
            kept_gaps=self.fleet.kept_gaps,
            writes=None if self.ownership is None else self.ownership.writes,
            interval_s=settings.db_flush_interval_s,
            max_pending_acks=settings.db_flush_max_pending_acks,
            max_pending_transitions=settings.db_max_pending_transitions,
            retry_max_s=settings.db_retry_max_s,
            stall_after_s=settings.db_stall_after_s,
        )
        self.metrics.unacknowledged.set_function(self.writer.pending_acks)
        self.membership: IngestMembership | None = None
        if self.ownership is not None:
            self.membership = IngestMembership(
                self.storage,
                self.ownership,
                self.fleet,
                MembershipMetrics(registry, self.ownership),
                ttl=timedelta(seconds=settings.ingest_member_ttl_s),
                applying=self.writer.applying,
            )
        self.update_tally = UpdateTally(registry)
        self.paper = PaperTracker(
            roll_pages=self._roll_pages,
            low_share=settings.paper_low_share,
            retention=timedelta(days=settings.paper_history_retention_days),
        )
        holder_only(  # paper forecast gauges, from the last refresh
            PaperCollector(
                self.paper,
                self.fleet,
                self.hall_openings,
                self.maintenance_book,
                clock=lambda: datetime.now(UTC),
            )
        )
        self.ingest = Ingest(
            self.fleet,
            self.writer,
            self.metrics,
            update_tally=self.update_tally,
            usage_metrics=self.usage_metrics,
            service_label=self.services.label,
            paper=self.paper,
            owner=self.ownership,
            max_payload_bytes=settings.max_payload_bytes,
            throttled_log=ThrottledLog(
                logging.getLogger("server.ingest"), interval_s=settings.reject_log_interval_s
            ),
            gate=IngestGate(
                rate_per_s=settings.ingest_rate_per_terminal_s,
                burst=settings.ingest_burst_per_terminal,
                clock=time.monotonic,
                directory=directory,
            ),
        )
        make_source = source if source is not None else mqtt_source(settings)
        self.mqtt: MessageSource = make_source(
            self.ingest.handle, on_connection_change=self._connection_changed
        )
        self.confirmations = ConfirmationMailbox(
            self.mqtt.publish_volatile, self.mqtt.publish_window, ConfirmationMetrics(registry)
        )
        self.mqtt.set_publish_listener(self.confirmations.pump)
        self.sweep = OfflineSweep(
            self.fleet,
            self.writer,
            self.metrics,
            listening_since=self.listening_since,
            writes=None if self.ownership is None else self.ownership.writes,
        )
        self.rollout_store = RolloutStore(self.storage)
        self.usage_rollups = UsageRollupStore(self.storage)
        self.usage_rollup = UsageRollupJob(
            self.usage_rollups,
            self.fleet,
            self.metrics,
            offered=self.service_availability.reading,
            hall_open=lambda hall: self.hall_openings(hall)[0],
            clock=lambda: datetime.now(UTC),
            interval_s=settings.usage_rollup_interval_s,
        )
        prunes: dict[str, Callable[..., int]] = {
            "events": self.storage.prune_events,
            "transitions": self.storage.prune_transitions,
            "update statuses": self.storage.prune_update_statuses,
            "usage events": self.storage.prune_usage_events,
            "usage rollups": self.usage_rollups.prune,
            "finished rollouts": self.rollout_store.prune_finished,
            "orphaned directive seqs": self.rollout_store.prune_orphaned_seqs,
            "revoked or expired API tokens": self.access_store.prune_tokens,
            "ended maintenance windows and acknowledgements": self.maintenance_store.prune,
            "audit entries": self.access_store.prune_audit,
            "console sessions past their expiry": lambda *, older_than, now: (
                self.console_store.prune_sessions(
                    idle=timedelta(seconds=settings.console_session_idle_s),
                    absolute=timedelta(seconds=settings.console_session_absolute_s),
                    now=now,
                )
            ),
        }
        if self.terminal_registry is not None:
            prunes["spent enrollment tokens and expired certificates"] = (
                self.terminal_registry.prune_spent
            )
            prunes["decommissioned terminals"] = self.terminal_registry.prune_decommissioned
        self.pruner = RetentionPruner(retentions(settings, prunes), self.metrics)
        self.app = create_app(
            ApiServices(
                fleet=self.fleet,
                history=self._history,
                events=self._events,
                readiness=self.readiness,
                registry=registry,
                decommission=lambda terminal_id, actor: self.decommission(
                    terminal_id, actor=actor, caller_audits=True
                ),
                access=AccessServices(
                    tokens=self.tokens, audit=self.audit, store=self.access_store
                ),
                clock=lambda: datetime.now(UTC),
                metrics_require_token=settings.metrics_require_token,
                page_limit_default=settings.api_page_limit_default,
                page_limit_max=settings.api_page_limit_max,
                history_limit=settings.history_limit,
                history_limit_max=settings.history_limit_max,
                hall_open=lambda hall: self.hall_openings(hall)[0],
                operator_state=lambda view: operator_state(
                    self.maintenance_store, view, datetime.now(UTC)
                ),
                services_available=lambda view: list(
                    services_available(self.services.current, view)
                ),
            )
        )
        add_routes(self.app, services_router(self.services, lambda: datetime.now(UTC)))
        self.maintenance_actions = MaintenanceActions(
            self.maintenance_store,
            self.fleet,
            lambda: datetime.now(UTC),
            limits=MaintenanceLimits(
                max_duration=timedelta(days=settings.maintenance_max_days),
                max_windows=settings.maintenance_max_windows,
                max_acks_per_terminal=settings.maintenance_max_acks_per_terminal,
            ),
            on_change=self.maintenance_book.invalidate,
        )
        add_routes(self.app, paper_router(self.paper, self.fleet))
        add_routes(
            self.app,
            analytics_router(self.analytics_sources(), lambda: datetime.now(UTC)),
        )
        self.hall_reports = HallReports(
            self.analytics_sources(),
            self.storage,
            load_catalogs(),
            gate=RenderGate(
                ReportLimits(
                    concurrent=settings.report_renders_max, cache_s=settings.report_cache_s
                ),
                registry,
            ),
        )
        add_routes(self.app, hall_report_router(self.hall_reports))
        holder_only(  # the analytics by hall and service, at most 5 minutes old
            AnalyticsCollector(
                self.analytics_sources(),
                self.services.label,
                lambda: [s.code for s in self.services.current.services],
                self._hall_regions,
                lambda: datetime.now(UTC),
                refresh_s=settings.analytics_metrics_refresh_s,
                window=timedelta(days=settings.analytics_metrics_window_days),
            )
        )
        add_routes(
            self.app,
            maintenance_router(
                self.maintenance_actions,
                self.fleet,
                lambda: datetime.now(UTC),
                active=self.maintenance_book,
                problems_limit_max=settings.api_page_limit_max,
            ),
        )
        add_routes(
            self.app,
            opening_hours_router(
                self.opening_hours,
                lambda: datetime.now(UTC),
                on_change=self.hall_openings.invalidate,
            ),
        )
        install_console(
            self.app,
            ConsoleServices(
                fleet=self.fleet,
                history=lambda terminal_id, limit: list(
                    self._history(terminal_id, HistoryQuery(limit=limit)).items
                ),
                events=lambda terminal_id, limit: list(
                    self._events(terminal_id, HistoryQuery(limit=limit)).items
                ),
                updates=lambda terminal_id, limit: timeline(
                    self.storage.engine, terminal_id, limit
                ),
                hours=self.opening_hours.get,
                registered=None if self.terminal_registry is None else self.terminal_registry.get,
                audit_log=self.access_store,
                store=self.console_store,
                clock=lambda: datetime.now(UTC),
                registry=registry,
                session_idle=timedelta(seconds=settings.console_session_idle_s),
                session_absolute=timedelta(seconds=settings.console_session_absolute_s),
                login_rate_per_s=settings.console_login_rate_per_s,
                login_burst=settings.console_login_burst,
                cookie_secure=settings.console_cookie_secure,
                maintenance=self.maintenance_actions,
                decommission=lambda terminal_id, actor: self.decommission(
                    terminal_id, actor=actor, caller_audits=True
                ),
                tokens=self.tokens,
                catalogue=self.services,
                analytics=self.analytics_sources(),
                reports=self.hall_reports,
            ),
        )
        add_routes(
            self.app,
            update_status_router(
                lambda: self.storage.engine,
                limit_default=settings.history_limit,
                limit_max=settings.history_limit_max,
            ),
        )
        if self.terminal_registry is not None:
            add_routes(self.app, registry_router(self.terminal_registry))
        if self.terminal_registry is not None and not settings.https:
            log.warning("EST is off: it needs HTTPS (KIOSKFLEET_HTTPS_CERT_FILE/_KEY_FILE)")
        elif self.terminal_registry is not None:  # RFC 7030: EST only over TLS
            add_routes(
                self.app,
                est_router(
                    self.terminal_registry,
                    EstMetrics(registry),
                    ThrottledLog(
                        logging.getLogger("server.est"), interval_s=settings.reject_log_interval_s
                    ),
                ),
            )
        # Signed releases (docs/updates.md): off unless updates_dir is set.
        self.updates: UpdateService | None = build_updates(settings, registry, self.app)
        self.rollouts = RolloutService(
            self.rollout_store,
            fleet=self.fleet,
            engine=lambda: self.storage.engine,
            source=lambda: self.mqtt,
            releases=lambda: [] if self.updates is None else self.updates.repository.releases(),
            pin=lambda: (
                None
                if self.updates is None
                else self.updates.repository.top_level_custom(DIRECTIVE_KEY_PIN)
            ),
            signer=load_directive_signer(settings.updates_directive_key_file),
            audit=self.audit,
            clock=lambda: datetime.now(UTC),
            hours=self._hall_hours,
            tags=self._terminal_tags,
        )
        registry.register(self.rollouts.board)  # rollout gauges, at scrape time
        add_routes(self.app, rollout_router(lambda: self.rollouts))
        add_routes(
            self.app,
            rollout_pages_router(
                RolloutPages(
                    rollouts=lambda: self.rollouts,
                    releases=lambda: (
                        [] if self.updates is None else self.updates.repository.releases()
                    ),
                    vendors=lambda: (
                        [] if self.updates is None else self.updates.repository.vendors()
                    ),
                )
            ),
        )
        self._scheduler: BackgroundScheduler | None = None
        self._http: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None
        self._port: int | None = None
        self._started = False

    # --- public ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http(s)://host:port`` of the API (the real port when ``http_port`` was 0)."""
        if self._port is None:
            raise ServerError("the server is not started")
        host = self.settings.http_host
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.settings.https else "http"
        return f"{scheme}://{host}:{self._port}"

    def _roll_pages(self, terminal_id: str) -> int:
        """Pages on a full roll of the terminal's model (``paper_roll_pages_by_model``)."""
        view = self.fleet.get(terminal_id)
        model = None if view is None else view.model
        by_model = self.settings.paper_roll_pages_by_model
        return (
            by_model.get(model, self.settings.paper_roll_pages)
            if model
            else self.settings.paper_roll_pages
        )

    def _hall_hours(self, hall: str) -> OpeningHours | None:
        """``hall``'s opening hours for the rollout driver. Raises StorageError."""
        stored = OpeningHoursStore(self.storage).get(hall)
        return None if stored is None else stored.hours

    def _terminal_tags(self, terminal_id: str) -> frozenset[str]:
        """A terminal's operator tags for rollout selectors; none without the registry."""
        registry = self.terminal_registry
        return frozenset() if registry is None else registry.tags(terminal_id)

    def analytics_sources(self) -> AnalyticsSources:
        """What the analytics read: the rollups, the opening hours and the fleet's halls."""
        store = self.usage_rollups
        return AnalyticsSources(
            rows=lambda since, until, hall, terminal_id, service: store.hourly(
                since, until, hall=hall, terminal_id=terminal_id, service=service
            ),
            availability=lambda since, until, hall: store.availability(since, until, hall=hall),
            hours=lambda: self.opening_hours.all()[0],
            terminals=self._terminal_halls,
        )

    def _placements(self) -> list[tuple[str, str, str]]:
        """(terminal id, region, hall) of every terminal of the fleet (``unknown`` if unset)."""
        out: list[tuple[str, str, str]] = []
        cursor: str | None = None
        while True:
            page = self.fleet.query(TerminalFilter(), limit=5000, cursor=cursor)
            out.extend(
                (v.id, v.region or UNKNOWN_LABEL, v.hall or UNKNOWN_LABEL) for v in page.items
            )
            if page.next_cursor is None:
                return out
            cursor = page.next_cursor

    def _terminal_halls(self) -> dict[str, str]:
        return {tid: hall for tid, _region, hall in self._placements()}

    def _hall_regions(self) -> dict[str, str]:
        """Hall -> region for the analytics gauges' labels, at every scrape: from the fleet
        state's hall tallies, never a walk over the terminals."""
        return {
            hall or UNKNOWN_LABEL: region or UNKNOWN_LABEL
            for hall, region in self.fleet.hall_regions().items()
        }

    def listening_since(self) -> datetime | None:
        """Since when silence proves something: the later of the broker connect and the last
        recovery of database writes; None while either is down (the broker then holds back
        the terminals' messages because they cannot be acknowledged)."""
        since = self.mqtt.connected_since
        if since is None or self.writer.failure is not None:
            return None
        recovered = self.writer.recovered_at
        return since if recovered is None or recovered < since else recovered

    def readiness(self) -> list[str]:
        """Why the server is not ready; empty when it is (broker, database, pending writes)."""
        reasons = []
        if not self.mqtt.connected:
            reasons.append("broker: not connected")
        try:
            self.storage.check_database()
        except StorageError as exc:
            self.metrics.db_errors.inc()
            reasons.append(f"database: {exc.message}")
        failure = self.writer.failure
        if failure is not None:
            reasons.append(f"database writes failing: {failure}")
        return reasons

    def decommission(
        self, terminal_id: str, *, actor: str = "system", caller_audits: bool = False
    ) -> TerminalView | None:
        """Remove a terminal: out of the fleet state, every tally and gauge, its row and
        peripherals deleted with the next flush, its retained ``state`` cleared at the
        broker. Its transitions and events stay (history, until their retention). With the
        terminal registry on, a registered terminal is also marked decommissioned there
        (its certificates revoked, the CRL rewritten; recorded as ``actor`` in the audit log,
        unless ``caller_audits``: the API's middleware records the call, once).

        Returns its last view, None if the server did not know it (the broker's retained
        state is cleared all the same). Raises BrokerError while the broker is not
        connected: nothing is changed then, so that a retained state cannot bring it back.
        """
        if not self.mqtt.connected:
            raise BrokerError("the broker is not connected: cannot clear the retained state")
        with self.writer.applying():  # no message of it is applied between the two
            view = self.fleet.remove(terminal_id)
            self.writer.remove(terminal_id)
            self.update_tally.forget(terminal_id)
            self.paper.forget(terminal_id)
        if not self.mqtt.clear_retained(topic(terminal_id, Channel.STATE)):
            raise BrokerError("the broker connection dropped: retained state not cleared")
        registry = self.terminal_registry
        if registry is not None and registry.placement(terminal_id) is not None:
            registry.decommission(terminal_id, actor=actor, record=not caller_audits)
        log.info("decommissioned terminal %s (known: %s)", terminal_id, view is not None)
        return view

    def start(self) -> None:
        """Open the database, load the fleet, start every thread; return once HTTP listens.

        Raises ServerError (StorageError, ConfigError, BrokerError) if a component
        cannot start; call ``stop()`` afterwards to release what did start.
        """
        if self._started:
            raise ServerError("a Server can be started once")
        self._started = True
        self.storage.open()
        self.hall_openings.invalidate()  # a scrape before the open read no hours
        self.maintenance_book.invalidate()
        self.tokens.bootstrap(
            self.audit, stderr=sys.stderr, token_file=self.settings.bootstrap_token_file
        )
        if self.terminal_registry is not None:
            self.terminal_registry.open()
        terminals = self.storage.load_fleet()
        self.fleet.load(terminals)
        log.info("loaded %d terminals from the database", len(terminals))
        if len(terminals) >= self.settings.gc_freeze_min_terminals:
            # A large loaded fleet lives as long as the process: take it out of the cyclic
            # GC's full collections, which otherwise walk every record (about 1 s at
            # 100 000 terminals; docs/benchmarks.md, "A mass outage"). Refcounting still
            # frees what is dropped; only cycles among frozen objects would never be.
            del terminals
            gc.collect()
            gc.freeze()
        self.update_tally.load(latest_states(self.storage.engine))
        self.services.load()
        if self.updates is not None:
            self.updates.repository.load()
        self.writer.start()
        self._start_http()
        if self.membership is not None:
            self.membership.tick()  # a member before the first message: its epoch begins
        self.mqtt.start()
        lease = self.job_lease
        lease.tick()  # a lone replica holds the lease before its first jobs are due
        self._scheduler = build_scheduler(
            # Partitioned, every replica sweeps its fleet state and records its own terminals.
            self.sweep.run
            if self.membership is not None
            else lease.guard("offline-sweep", self.sweep.run),
            offline_check_interval_s=self.settings.offline_check_interval_s,
            prune=lease.guard("retention-prune", self.pruner.run),
            prune_interval_s=self.settings.event_prune_interval_s,
        )
        scheduler = self._scheduler

        def every(seconds: float, job: Callable[[], object], job_id: str, name: str) -> None:
            scheduler.add_job(
                job,
                "interval",
                seconds=seconds,
                id=job_id,
                name=name,
                max_instances=1,
                coalesce=True,
            )

        if self.terminal_registry is not None:
            every(
                self.settings.registry_refresh_interval_s,
                self._refresh_registry,
                "registry-refresh",
                "terminal registry refresh",
            )
        if self.updates is not None:
            self.updates.schedule(self._scheduler, lease.guard)
        if self.membership is not None:
            every(  # on every replica: the live set, and the hand-over of terminals
                self.settings.ingest_heartbeat_interval_s,
                self.membership.tick,
                "ingest-membership",
                "ingest membership heartbeat",
            )
        every(  # on every replica: how a standby sees an expired lease
            self.settings.job_lease_renew_interval_s,
            lease.tick,
            "job-lease",
            "job lease renewal",
        )
        every(  # once per fleet: the watermark would also refuse a second replica's batch
            self.settings.usage_rollup_interval_s,
            lease.guard("usage-rollup", self.usage_rollup.run),
            "usage-rollup",
            "usage rollup and availability sample",
        )
        every(  # on every replica: each keeps its own forecasts in memory
            self.settings.paper_forecast_interval_s,
            lambda: self.paper.refresh(datetime.now(UTC)),
            "paper-forecast",
            "paper forecasts",
        )
        every(
            self.settings.rollout_tick_interval_s,
            lease.guard("rollout-tick", self.rollouts.tick),
            "rollout-tick",
            "rollout driver",
        )
        self._scheduler.start()

    def _publish_confirmations(self, confirmations: Sequence[Confirmation]) -> None:
        """``kf.committed`` on each terminal's ``cmd`` (the writer calls it after a commit):
        the newest per terminal, sent as the broker connection takes them
        (``server.confirmations``)."""
        self.confirmations.offer(confirmations)

    def _connection_changed(self, up: bool) -> None:
        self.metrics.broker_connected.set(up)
        if up:
            self.confirmations.pump()  # what waited while disconnected

    def stop(self) -> None:
        """Graceful: stop intake (later messages stay with the broker), stop the jobs,
        write and acknowledge what is pending, let paho send the acknowledgements (bounded
        wait), disconnect, stop serving. Bounded in time even if the database hangs (the
        statement timeout ends a hung flush)."""
        self.mqtt.pause()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
            self.job_lease.release()  # after the last job: a standby takes over at once
        self.writer.stop(timeout_s=self.settings.db_statement_timeout_s + 5)
        if self.membership is not None:
            self.membership.leave()  # after the last commit: the others take over at once
        self.mqtt.stop()
        self._stop_http()
        self.storage.close()

    # --- internals ------------------------------------------------------------------------

    def _take_up_fleet_jobs(self) -> None:
        """Before this replica's first sweep as the lease holder: adopt the offline states
        a previous holder's sweeps recorded, so it does not record them again. Raises
        StorageError."""
        adopted = self.fleet.adopt_offline(self.storage.offline_terminals())
        if adopted:
            log.info("adopted %d offline terminals from the previous lease holder", adopted)

    def _refresh_registry(self) -> None:
        if self.terminal_registry is None:
            return
        try:
            self.terminal_registry.refresh()
        except StorageError as exc:
            self.metrics.db_errors.inc()
            log.warning("terminal registry refresh failed: %s", exc)

    def _history(self, terminal_id: str, query: HistoryQuery) -> StoredPage[Transition]:
        try:
            return self.storage.history_page(terminal_id, query)
        except StorageError:
            self.metrics.db_errors.inc()
            raise

    def _events(self, terminal_id: str, query: HistoryQuery) -> StoredPage[EventRecord]:
        try:
            return self.storage.events_page(terminal_id, query)
        except StorageError:
            self.metrics.db_errors.inc()
            raise

    def _start_http(self) -> None:
        host, port = self.settings.http_host, self.settings.http_port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Accepted sockets inherit it. Without it every HTTPS answer waited ~40 ms for the
            # client's delayed ACK (Nagle): 46 ms per request instead of 3 (bench/enroll.py).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ServerError(f"cannot listen on {host}:{port}: {exc}") from exc
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=self.settings.http_keepalive_timeout_s,
            **self._https_options(),
        )
        self._http = uvicorn.Server(config)
        http = self._http
        self._http_thread = threading.Thread(
            target=lambda: http.run(sockets=[sock]), name="kf-http", daemon=True
        )
        self._http_thread.start()
        deadline = time.monotonic() + _HTTP_START_TIMEOUT_S
        while not http.started:
            if not self._http_thread.is_alive() or time.monotonic() > deadline:
                raise ServerError(f"the HTTP server did not start on {host}:{self._port}")
            time.sleep(0.01)
        log.info("API listening on %s", self.base_url)

    def _https_options(self) -> dict[str, Any]:
        """uvicorn's TLS options: the server certificate; with a device CA, client
        certificates are asked for (optional: only ``simplereenroll`` needs one) and handed
        to the app through the ASGI TLS extension."""
        settings = self.settings
        if settings.https_cert_file is None:
            return {}
        options: dict[str, Any] = {
            "ssl_certfile": str(settings.https_cert_file),
            "ssl_keyfile": str(settings.https_key_file),
        }
        if settings.ca_dir is not None:
            options |= {
                "ssl_cert_reqs": ssl.CERT_OPTIONAL,
                "ssl_ca_certs": str(CaPaths(settings.ca_dir).chain),
                "http": TlsH11Protocol,
            }
        return options

    def _stop_http(self) -> None:
        if self._http is not None:
            self._http.should_exit = True
        if self._http_thread is not None:
            self._http_thread.join(10)
            self._http_thread = None
        self._http = None


def _load_settings(env_file: Path | None) -> Settings | None:
    """Settings from the environment and ``env_file``; None (logged) if they are unusable."""
    if env_file is not None and not env_file.is_file():
        log.error("env file %s does not exist", env_file)
        return None
    try:
        return Settings.from_env(env_file)
    except ConfigError as exc:
        log.error("%s", exc)
        return None


def run_server(env_file: Path | None) -> int:
    """Run until SIGINT or SIGTERM. Returns the process exit code (0 after a clean stop)."""
    settings = _load_settings(env_file)
    if settings is None:
        return 2
    server = Server(settings)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except ServerError as exc:
            log.error("cannot start: %s", exc)
            return 1
        log.info(
            "kioskfleet server running: API %s, broker %s, database %s",
            server.base_url,
            settings.broker_url,
            settings.database_url.split("@")[-1],
        )
        stop.wait()
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def upgrade_database(env_file: Path | None) -> int:
    """``kioskfleet db upgrade``: migrate the configured database to the newest schema.

    For deployments that migrate before rolling out servers (a Helm hook job);
    ``Server.start()`` does the same. Returns the process exit code.
    """
    settings = _load_settings(env_file)
    if settings is None:
        return 2
    storage = storage_for(settings)
    try:
        storage.open()
    except ServerError as exc:
        log.error("cannot migrate: %s", exc)
        return 1
    finally:
        storage.close()
    log.info("database %s is at the newest schema", settings.database_url.split("@")[-1])
    return 0
