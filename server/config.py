"""Server settings: every address, interval and limit the server uses, in one object.

Read from ``KIOSKFLEET_*`` environment variables and optionally an env file
(``kioskfleet server --env-file F``). Validation only: this module never opens a
socket or a database, and never creates folders (the storage adapter does that).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from protocol.broker_url import BrokerAddress, parse_broker_url
from protocol.codec import DEFAULT_MAX_PAYLOAD_BYTES

__all__ = ["BrokerAddress", "Settings", "default_client_id"]

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
    db_max_pending_transitions: Annotated[int, Field(ge=1000)] = 200_000
    db_retry_max_s: PositiveSeconds = 10.0  # longest backoff between retries of a failed flush
    db_statement_timeout_s: PositiveSeconds = 10.0  # PostgreSQL statement_timeout
    db_connect_timeout_s: PositiveSeconds = 5.0  # PostgreSQL connect timeout
    event_retention_days: Annotated[float, Field(gt=0, le=36500)] = 90.0
    event_prune_interval_s: PositiveSeconds = 3600.0

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

    # HTTP API.
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8080
    api_page_limit_default: Annotated[int, Field(ge=1, le=1000)] = 100
    api_page_limit_max: Annotated[int, Field(ge=1, le=10000)] = 1000
    history_limit: Annotated[int, Field(ge=1, le=10000)] = 50
    history_limit_max: Annotated[int, Field(ge=1, le=100000)] = 1000

    # Ingest and fleet state.
    max_payload_bytes: Annotated[int, Field(ge=256, le=1024 * 1024)] = DEFAULT_MAX_PAYLOAD_BYTES
    reject_log_interval_s: PositiveSeconds = 10.0
    offline_after_missed_reports: Annotated[int, Field(ge=1, le=100)] = 3
    offline_check_interval_s: PositiveSeconds = 5.0
    default_report_interval_s: PositiveSeconds = 60.0

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
        return self

    @property
    def broker(self) -> BrokerAddress:
        return parse_broker_url(self.broker_url)

    @classmethod
    def from_env(cls, env_file: Path | None = None) -> Settings:
        """Settings from the environment, plus ``env_file`` if given (the environment wins).

        Raises pydantic.ValidationError for invalid values.
        """
        if env_file is None:
            return cls()
        return cls(_env_file=env_file)
