"""Server settings: every address, interval and limit the server uses, in one object.

Read from ``KIOSKFLEET_*`` environment variables and optionally an env file
(``kioskfleet server --env-file F``). Validation only: this module never opens a
socket or a database, and never creates folders (the storage adapter does that).

``Settings.from_env`` (what ``kioskfleet server`` and ``kioskfleet db upgrade``
use) refuses a ``KIOSKFLEET_*`` variable that names no setting, in the
environment or the env file, with ``UnknownSettingError`` naming the nearest
valid one: a misspelt limit must not silently leave the default in force. The
``KIOSKFLEET_`` names that belong to others are listed once, in
``FOREIGN_VARIABLES``; every other name is the server's. Variables without the
prefix are none of the server's business and are ignored.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Final, Literal

from dotenv import dotenv_values  # pydantic-settings' own env-file reader
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from protocol.broker_url import BrokerAddress, parse_broker_url
from protocol.codec import DEFAULT_MAX_PAYLOAD_BYTES
from server.errors import InvalidSettingsError, UnknownSettingError

__all__ = [
    "ENV_PREFIX",
    "FOREIGN_VARIABLES",
    "BrokerAddress",
    "Settings",
    "default_client_id",
    "is_foreign",
    "setting_variables",
    "settings_table",
    "unknown_variables",
]

ENV_PREFIX: Final = "KIOSKFLEET_"

FOREIGN_VARIABLES: Final[Mapping[str, str]] = {
    # name, or prefix when it ends in "_"  -> whose it is
    "KIOSKFLEET_AGENT_": "the terminal agent (agent/config.py, agent.toml overrides)",
    "KIOSKFLEET_TEST_": "the test suite (KIOSKFLEET_TEST_POSTGRES_URL)",
    "KIOSKFLEET_SKIP_POSTGRES": "the test suite (skip the PostgreSQL tests)",
    "KIOSKFLEET_LOG_FORMAT": "the kioskfleet command, every subcommand (--log-format)",
}
"""``KIOSKFLEET_*`` names that are not the server's: the server neither reads nor refuses
them. No setting's variable may fall under one of them."""

PositiveSeconds = Annotated[float, Field(gt=0, le=86400)]


def default_client_id() -> str:
    """``kioskfleet-server-<hostname>``: stable across restarts so the broker keeps the session."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40] or "host"
    return f"kioskfleet-server-{host}"


class Settings(BaseSettings):
    """Everything the server can be told. Env names are ``KIOSKFLEET_`` + the upper-case field."""

    model_config = SettingsConfigDict(
        env_prefix="KIOSKFLEET_", extra="ignore", env_file_encoding="utf-8"
    )

    # Database: any SQLAlchemy URL; SQLite (WAL) by default, PostgreSQL through psycopg 3.
    database_url: str = "sqlite:///var/kioskfleet.db"
    sqlite_busy_timeout_s: PositiveSeconds = 5.0
    db_flush_interval_s: PositiveSeconds = 1.0
    # Flush early once this many received messages wait for their commit to be acknowledged.
    # Keep it well below the broker's in-flight window to the server (mosquitto
    # max_inflight_messages, 1000 in broker/mosquitto.conf), or the broker stalls until the
    # next interval.
    db_flush_max_pending_acks: Annotated[int, Field(ge=1, le=65535)] = 400
    # After each commit, publish kf.committed (boot_id, highest committed seq) on the cmd
    # topic of every terminal that had messages in it: agents keep messages until then
    # (docs/reliability.md). Off only for a test of agents facing a server that never confirms.
    confirm_commits: bool = True
    db_max_pending_transitions: Annotated[int, Field(ge=1000)] = 200_000
    db_retry_max_s: PositiveSeconds = 10.0  # longest backoff between retries of a failed flush
    db_statement_timeout_s: PositiveSeconds = 10.0  # PostgreSQL statement_timeout
    db_connect_timeout_s: PositiveSeconds = 5.0  # PostgreSQL connect timeout
    # A flush still writing after this long counts as a failure while it lasts (readiness,
    # the offline sweep's pause): a database cut off by the network raises nothing for minutes.
    db_stall_after_s: PositiveSeconds = 5.0
    event_retention_days: Annotated[float, Field(gt=0, le=36500)] = 90.0
    transition_retention_days: Annotated[float, Field(gt=0, le=36500)] = 365.0
    update_status_retention_days: Annotated[float, Field(gt=0, le=36500)] = 365.0
    rollout_retention_days: Annotated[float, Field(gt=0, le=36500)] = 365.0  # after finishing
    # Raw citizen transactions (usage_event); only the rollups outlive them (docs/analytics.md).
    usage_retention_days: Annotated[float, Field(gt=0, le=36500)] = 180.0
    # The hourly rollups (usage_hourly, usage_availability), by the hour they cover.
    usage_rollup_retention_days: Annotated[float, Field(gt=0, le=36500)] = 1095.0
    # How often raw transactions are rolled up and service availability is sampled.
    usage_rollup_interval_s: Annotated[float, Field(ge=1, le=3600)] = 60.0
    # The analytics gauges (kioskfleet_hall_utilisation_ratio, ...) read the rollups this often.
    analytics_metrics_refresh_s: PositiveSeconds = 300.0
    # ... over the last this many days.
    analytics_metrics_window_days: Annotated[float, Field(gt=0, le=366)] = 7.0
    # kioskfleet_hall_services_available is recomputed (one pass over the fleet) this often.
    services_metrics_refresh_s: PositiveSeconds = 60.0
    # Weekly hall reports (docs/analytics.md): renders at once in this process (one more
    # answers 429), and how long the last rendered one is answered again (0: never).
    report_renders_max: Annotated[int, Field(ge=1, le=64)] = 2
    report_cache_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    event_prune_interval_s: PositiveSeconds = 3600.0
    # Paper forecasts (docs/analytics.md, "Paper forecasts"): pages on a full roll (or tray)
    # of a terminal's model, the default for models not listed; the share of a roll left
    # when a printer reports paper_low (until one paper_low -> paper_out was seen); how
    # often forecasts are recomputed; a terminal silent this long loses its history.
    paper_roll_pages: Annotated[int, Field(ge=1, le=100_000)] = 600
    paper_roll_pages_by_model: dict[str, Annotated[int, Field(ge=1, le=100_000)]] = Field(
        default_factory=dict
    )
    paper_low_share: Annotated[float, Field(gt=0, lt=1)] = 0.1
    paper_forecast_interval_s: PositiveSeconds = 60.0
    paper_history_retention_days: Annotated[float, Field(gt=0, le=365)] = 14.0
    # The lease under which the fleet's scheduled jobs run on one replica (docs/scale-out.md):
    # a killed holder's jobs move to another replica at most this long after its last
    # renewal; every replica tries to take or renew it this often (well below the duration).
    job_lease_duration_s: Annotated[float, Field(ge=0.5, le=3600)] = 30.0
    job_lease_renew_interval_s: PositiveSeconds = 5.0

    # Broker.
    broker_url: str = "mqtt://127.0.0.1:1883"
    broker_ca_file: Path | None = None
    broker_cert_file: Path | None = None
    broker_key_file: Path | None = None
    mqtt_client_id: Annotated[str, Field(min_length=1, max_length=128)] = Field(
        default_factory=default_client_id
    )
    mqtt_keepalive_s: Annotated[int, Field(ge=5, le=300)] = 30
    mqtt_session_expiry_s: Annotated[int, Field(ge=0, le=7 * 86400)] = 86400
    mqtt_reconnect_min_s: Annotated[int, Field(ge=1, le=60)] = 1
    mqtt_reconnect_max_s: Annotated[int, Field(ge=1, le=600)] = 30
    # One replica (the default) subscribes directly: mosquitto 2.0 does not restore a
    # `$share/...` subscription from its persistence file after a restart, so terminals that
    # reconnect before the server publish into nothing (docs/reliability.md). Turn it on for
    # several replicas, on a broker that keeps shared subscriptions across restarts.
    shared_subscription: bool = False
    # "5" (default): session expiry under our control. "3.1.1": ~1/3 less paho CPU per
    # message; the broker's persistent_client_expiration bounds the session instead.
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    # QoS 1 messages the broker may have in flight to the server; 0 = the broker's limit.
    mqtt_receive_maximum: Annotated[int, Field(ge=0, le=65535)] = 0
    # On stop, how long paho may take to write the acknowledgements already queued.
    mqtt_drain_timeout_s: Annotated[float, Field(ge=0, le=120)] = 2.0

    # HTTP API.
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8080
    # Idle HTTP keep-alive connections are closed after this long. Behind a load balancer,
    # keep it above the balancer's idle timeout, or it reuses connections the server closed.
    http_keepalive_timeout_s: Annotated[int, Field(ge=1, le=3600)] = 5
    api_page_limit_default: Annotated[int, Field(ge=1, le=1000)] = 100
    api_page_limit_max: Annotated[int, Field(ge=1, le=10000)] = 1000
    history_limit: Annotated[int, Field(ge=1, le=10000)] = 50
    history_limit_max: Annotated[int, Field(ge=1, le=100000)] = 1000
    # API access (docs/security.md): /metrics needs a viewer token unless this is off
    # (Prometheus sends one with `authorization: {credentials_file: ...}`).
    metrics_require_token: bool = True
    # On a first start (no token in the database) the admin token "bootstrap" is printed
    # once to stderr and, if this is set, written to this file (mode 0600).
    bootstrap_token_file: Path | None = None
    audit_retention_days: Annotated[float, Field(gt=0, le=36500)] = 365.0
    # used/expired enrollment tokens and expired device certificates are kept this long
    identity_retention_days: Annotated[float, Field(gt=0, le=36500)] = 90.0
    # a decommissioned terminal's registry row (its tombstone) is kept this long, then pruned
    # with its directive seq; at least a day: longer than any directive lives (24 h), so no
    # directive signed for the old hardware is still valid when the seq starts again
    decommissioned_retention_days: Annotated[float, Field(ge=1, le=36500)] = 365.0
    # API tokens revoked or expired longer ago than this are deleted
    token_retention_days: Annotated[float, Field(gt=0, le=36500)] = 90.0
    # refused attempts (denied) stored per source address: a token bucket; beyond it counted only
    audit_denied_rate_per_s: Annotated[float, Field(gt=0, le=10_000)] = 1.0
    audit_denied_burst: Annotated[int, Field(ge=1, le=1_000_000)] = 60
    # The operations console (docs/console.md): a session ends after this long unused, and
    # this long after its login whatever happens; login attempts per username and per source
    # address: a token bucket of console_login_burst refilled at console_login_rate_per_s.
    console_session_idle_s: Annotated[float, Field(gt=0, le=7 * 86400)] = 1800.0
    console_session_absolute_s: Annotated[float, Field(gt=0, le=30 * 86400)] = 12 * 3600.0
    console_login_rate_per_s: Annotated[float, Field(gt=0, le=1000)] = 0.1
    console_login_burst: Annotated[int, Field(ge=1, le=1000)] = 5
    # The session cookie's Secure flag. Off only for a console reached over plain HTTP
    # from another machine (a browser keeps Secure cookies over http only for localhost).
    console_cookie_secure: bool = True

    # Signed releases (docs/updates.md): the TUF repository and artifacts live in updates_dir
    # (off while unset); the online snapshot and timestamp keys come from `kioskfleet repo
    # init` (DIR/online/*.key). Timestamp is re-signed once half its lifetime is gone.
    updates_dir: Path | None = None
    updates_snapshot_key_file: Path | None = None
    # Ed25519 private key (PEM, PKCS#8) signing rollout directives; its public key must be the
    # one pinned in the top-level targets (_pins/directive-key.pub). None: rollouts never notify.
    updates_directive_key_file: Path | None = None
    rollout_tick_interval_s: PositiveSeconds = 5.0
    updates_timestamp_key_file: Path | None = None
    updates_max_artifact_bytes: Annotated[int, Field(ge=1024, le=2**40)] = 2 * 1024**3
    updates_max_metadata_bytes: Annotated[int, Field(ge=1024, le=64 * 1024**2)] = 8 * 1024**2
    updates_snapshot_expiry_s: Annotated[int, Field(ge=60, le=365 * 86400)] = 7 * 86400
    updates_timestamp_expiry_s: Annotated[int, Field(ge=60, le=30 * 86400)] = 86400
    updates_resign_check_interval_s: PositiveSeconds = 300.0
    # Artifact uploads never published are deleted after this long (a vendor's disk budget).
    updates_upload_retention_s: Annotated[int, Field(ge=3600, le=365 * 86400)] = 7 * 86400
    # Device identity (docs/security.md, "Device identity and enrollment"). ``ca_dir`` is the
    # device CA's folder (``kioskfleet ca init``): with it the server runs the terminal
    # registry and EST. ``require_enrollment`` (default: on exactly when ``ca_dir`` is set)
    # admits only messages of enrolled, active terminals and takes hall, region and model
    # from the registry.
    ca_dir: Path | None = None
    require_enrollment: bool | None = None
    terminal_cert_days: Annotated[int, Field(ge=1, le=3650)] = 365
    # How often a running server re-reads the registry (changes by the CLI or other replicas).
    registry_refresh_interval_s: PositiveSeconds = 30.0
    # HTTPS: the server's certificate and key (e.g. issued by the device CA for its host
    # name); without them the API is plain HTTP.
    https_cert_file: Path | None = None
    https_key_file: Path | None = None

    # Ingest and fleet state.
    max_payload_bytes: Annotated[int, Field(ge=256, le=1024 * 1024)] = DEFAULT_MAX_PAYLOAD_BYTES
    reject_log_interval_s: PositiveSeconds = 10.0
    offline_after_missed_reports: Annotated[int, Field(ge=1, le=100)] = 3
    offline_check_interval_s: PositiveSeconds = 5.0
    default_report_interval_s: PositiveSeconds = 60.0
    # offline detection uses a terminal's own interval, never more than this (a forged or
    # broken "every 86400 s" must not hide a dead terminal for three days)
    max_report_interval_s: PositiveSeconds = 3600.0
    # Distrust of what terminals send (docs/security.md): a message budget per terminal
    # (a real agent drains a backlog at 20/s with bursts of 50), a bound on seq jumps, and
    # how many distinct device-text values reach a metric label before folding into "other".
    ingest_rate_per_terminal_s: Annotated[float, Field(gt=0, le=100_000)] = 30.0
    ingest_burst_per_terminal: Annotated[int, Field(ge=1, le=1_000_000)] = 200
    max_seq_jump: Annotated[int, Field(ge=1, le=2**53)] = 1_000_000
    # A sequence gap stays open this long: listed in the terminal's kf.committed (the agent
    # re-sends what it still has) and filled by a late message (docs/reliability.md).
    gap_refill_window_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    metrics_fault_codes_per_kind: Annotated[int, Field(ge=1, le=10_000)] = 20
    metrics_versions_per_package: Annotated[int, Field(ge=1, le=10_000)] = 10
    metrics_packages: Annotated[int, Field(ge=1, le=10_000)] = 30
    # above this many offline terminals in one hall (or half of it), the hall is one
    # kioskfleet_hall_unreachable series instead of two per terminal (docs/monitoring.md)
    metrics_offline_terminals_per_hall: Annotated[int, Field(ge=1, le=100_000)] = 10
    # ... or at least this share of its terminals (2 or more offline); above 1: never
    metrics_hall_unreachable_share: Annotated[float, Field(gt=0, le=2)] = 0.5
    # above this many online terminals with a peripheral problem in one hall, the hall
    # withholds their per-terminal problem series (kioskfleet_hall_peripheral_problems_withheld)
    metrics_peripheral_problem_terminals_per_hall: Annotated[int, Field(ge=1, le=100_000)] = 20
    # gc.freeze() after loading a fleet of at least this many terminals (docs/benchmarks.md)
    gc_freeze_min_terminals: Annotated[int, Field(ge=0)] = 10_000
    # how often the metrics re-read every hall's opening hours (one query; hours set over
    # the API are seen at once, those set with `kioskfleet hall hours set` within this)
    opening_hours_refresh_s: PositiveSeconds = 60.0
    # halls with stored opening hours: setting the hours of one more is refused
    opening_hours_max_halls: Annotated[int, Field(ge=1, le=100_000)] = 2000
    # operator actions (docs/operations.md, "Maintenance and acknowledgements"): the longest
    # maintenance window, how many may be active fleet-wide, acks per terminal, how long
    # ended windows and acks are kept, how often the metrics re-read the windows (changes
    # through the API are seen at once)
    maintenance_max_days: Annotated[float, Field(gt=0, le=366)] = 30.0
    maintenance_max_windows: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    maintenance_max_acks_per_terminal: Annotated[int, Field(ge=1, le=1000)] = 32
    maintenance_retention_days: Annotated[float, Field(gt=0, le=36500)] = 90.0
    maintenance_refresh_s: PositiveSeconds = 60.0

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, value: str) -> str:
        """``postgresql://`` and ``postgres://`` mean psycopg 3 (the driver we ship)."""
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        if "://" not in value:
            raise ValueError("database_url must be a SQLAlchemy URL such as sqlite:///var/kf.db")
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        parse_broker_url(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.mqtt_reconnect_max_s < self.mqtt_reconnect_min_s:
            raise ValueError("mqtt_reconnect_max_s must be >= mqtt_reconnect_min_s")
        if self.api_page_limit_default > self.api_page_limit_max:
            raise ValueError("api_page_limit_default must be <= api_page_limit_max")
        if self.history_limit > self.history_limit_max:
            raise ValueError("history_limit must be <= history_limit_max")
        if (self.broker_cert_file is None) != (self.broker_key_file is None):
            raise ValueError("broker_cert_file and broker_key_file go together")
        for path in (self.broker_ca_file, self.broker_cert_file, self.broker_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
        if self.updates_dir is not None:
            for key in (self.updates_snapshot_key_file, self.updates_timestamp_key_file):
                if key is None or not key.is_file():
                    raise ValueError(
                        "updates_dir needs updates_snapshot_key_file and "
                        f"updates_timestamp_key_file (online keys), not {key}"
                    )
        if self.updates_resign_check_interval_s * 2 >= self.updates_timestamp_expiry_s:
            raise ValueError(
                "updates_resign_check_interval_s must be well below half the timestamp expiry"
            )
        if self.job_lease_renew_interval_s * 2 > self.job_lease_duration_s:
            raise ValueError("job_lease_renew_interval_s must be at most half job_lease_duration_s")
        if (self.https_cert_file is None) != (self.https_key_file is None):
            raise ValueError("https_cert_file and https_key_file go together")
        for path in (self.https_cert_file, self.https_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"HTTPS file {path} does not exist")
        if self.require_enrollment and self.ca_dir is None:
            raise ValueError("require_enrollment needs ca_dir (the device CA)")
        if self.ca_dir is not None and not self.ca_dir.is_dir():
            raise ValueError(f"ca_dir {self.ca_dir} is not a folder (kioskfleet ca init DIR)")
        return self

    @property
    def enrollment_required(self) -> bool:
        """Whether only enrolled terminals are admitted (default: when ``ca_dir`` is set)."""
        if self.require_enrollment is None:
            return self.ca_dir is not None
        return self.require_enrollment

    @property
    def https(self) -> bool:
        return self.https_cert_file is not None

    @property
    def broker(self) -> BrokerAddress:
        return parse_broker_url(self.broker_url)

    @classmethod
    def from_env(cls, env_file: Path | None = None) -> Settings:
        """Settings from the environment, plus ``env_file`` if given (the environment wins).

        Raises UnknownSettingError for a ``KIOSKFLEET_*`` name that is no setting and not
        in ``FOREIGN_VARIABLES`` (environment or file), InvalidSettingsError for values
        that do not validate.
        """
        names = list(os.environ)
        if env_file is not None and env_file.is_file():
            names += list(dotenv_values(env_file, encoding="utf-8"))
        unknown = unknown_variables(names)
        if unknown:
            raise UnknownSettingError(unknown)
        try:
            return cls() if env_file is None else cls(_env_file=env_file)
        except ValidationError as exc:
            raise InvalidSettingsError(_problems(exc)) from None


def setting_variables() -> frozenset[str]:
    """The environment variable of every setting (``KIOSKFLEET_`` + the upper-case field)."""
    return frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)


def is_foreign(name: str) -> bool:
    """Whether ``name`` belongs to someone else per ``FOREIGN_VARIABLES``."""
    upper = name.upper()
    return any(
        upper.startswith(entry) if entry.endswith("_") else upper == entry
        for entry in FOREIGN_VARIABLES
    )


def unknown_variables(names: Iterable[str]) -> dict[str, str | None]:
    """The ``KIOSKFLEET_*`` names (case-insensitive, as pydantic-settings reads them) that
    name no setting and are not foreign, each with the nearest setting variable or None."""
    known = setting_variables()
    unknown: dict[str, str | None] = {}
    for name in names:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or is_foreign(upper):
            continue
        unknown[name] = _nearest(upper, known)
    return unknown


def _nearest(name: str, known: Iterable[str]) -> str | None:
    """The known variable most like ``name``, compared without the common prefix."""
    suffixes = {k.removeprefix(ENV_PREFIX): k for k in known}
    close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), sorted(suffixes), n=1)
    return suffixes[close[0]] if close else None


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(part) for part in err["loc"])
        name = ENV_PREFIX + field.upper() if field else "settings"
        problems.append((name, err["msg"].removeprefix("Value error, ")))
    return problems


def settings_table() -> list[tuple[str, str]]:
    """Every setting as (environment variable, default as text), in the model's order.

    What ``kioskfleet server --help`` prints: derived from ``Settings``, never retyped.
    A setting without a fixed default reads ``(computed)`` (``mqtt_client_id``) or
    ``(none)``.
    """
    rows = []
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "(computed)"
        elif field.default is None:
            default = "(none)"
        elif isinstance(field.default, bool):
            default = str(field.default).lower()
        else:
            default = str(field.default)
        rows.append((ENV_PREFIX + name.upper(), default))
    return rows
