"""The agent's settings: one validated object built from ``agent.toml`` and the environment.

``load_agent_config(path)`` reads the TOML file, lets ``KIOSKFLEET_AGENT_*``
variables override it (``KIOSKFLEET_AGENT_LIMITS__MAX_QUEUED_MESSAGES`` for a
nested field; lists such as ``probes`` as JSON), and validates everything at
once. Any problem becomes an ``AgentConfigError`` whose message names the
field; a ``KIOSKFLEET_AGENT_*`` variable that names no field is one too (with
the nearest valid name), so a misspelt override never leaves the file's value
silently in force. Nothing here opens a socket or starts anything, and nothing is read at
import time.

The broker is ``broker_url`` (one) or ``broker_urls`` (1 to 16, for failover over a
cluster's nodes: agent.broker_rotation), never both: a config that names both is
refused rather than guessing which one wins; with neither, ``broker_url``'s default is
the list. Every URL goes through the one parser (``protocol.broker_url``); all share
one scheme, since the ``tls_*`` files apply to every broker. ``AgentConfig.brokers`` is
the list either way.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeGuard, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.broker_rotation import MAX_BROKERS
from agent.errors import AgentError
from agent.probes.factory import ProbeSpec
from protocol.broker_url import BrokerAddress, parse_broker_url
from protocol.codec import DEFAULT_MAX_PAYLOAD_BYTES
from protocol.messages import Label
from protocol.topics import is_valid_terminal_id
from protocol.version import __version__

__all__ = [
    "AgentConfig",
    "AgentConfigError",
    "AgentLimits",
    "BrokerAddress",
    "EnrollmentConfig",
    "OutboxConfig",
    "UpdatesConfig",
    "env_variables",
    "load_agent_config",
    "parse_broker_url",
    "unknown_variables",
]

ENV_PREFIX = "KIOSKFLEET_AGENT_"


def _parses_as_broker_url(value: str) -> str:
    parse_broker_url(value)
    return value


BrokerUrl = Annotated[str, AfterValidator(_parses_as_broker_url)]
"""A string that ``parse_broker_url`` accepts (its error names the field, and the list item)."""


class AgentConfigError(AgentError, ValueError):
    """The agent's configuration is missing, unreadable or invalid.

    ``problems`` is a list of ``(field, message)`` pairs; ``str()`` lists them all.
    """

    def __init__(self, problems: list[tuple[str, str]], source: str = "agent config") -> None:
        self.problems = problems
        self.source = source
        lines = "; ".join(f"{field}: {message}" for field, message in problems)
        super().__init__(f"invalid {source}: {lines}")


class AgentLimits(BaseModel):
    """Bounds the agent keeps to, whatever happens on the network."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_queued_messages: Annotated[int, Field(ge=10, le=1_000_000)] = 1000
    """QoS 1 messages held in memory while the broker is unreachable; beyond it new ones drop."""
    max_inflight_messages: Annotated[int, Field(ge=1, le=1000)] = 20
    connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    """TCP + TLS connect, and then the wait for CONNACK."""
    stable_connection_s: Annotated[float, Field(ge=0, le=86400)] = 30.0
    """A connection that stayed up this long resets the reconnect backoff."""
    shutdown_timeout_s: Annotated[float, Field(ge=0, le=120)] = 5.0
    """On stop, how long to wait for PUBACKs of what was already published."""
    max_connecting: Annotated[int, Field(ge=1, le=1000)] = 64
    """Connection attempts awaiting CONNACK at once in one loop (mosquitto's backlog is 100)."""
    max_message_bytes: Annotated[int, Field(ge=256, le=1024 * 1024)] = DEFAULT_MAX_PAYLOAD_BYTES
    """The largest message the agent stores and sends: keep it at the server's
    ``KIOSKFLEET_MAX_PAYLOAD_BYTES``. A larger one would only be refused there, or break the
    connection at the broker's size limit on every resend, so it is dropped and counted."""


class OutboxConfig(BaseModel):
    """The durable outbox: where it lives, its quota, and how a backlog drains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Path("/var/lib/kioskfleet/outbox.sqlite")
    """The SQLite file (WAL); its directory is created if missing."""
    max_messages: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000
    """Messages kept per terminal; beyond it the oldest reports are dropped (and counted)."""
    max_bytes: Annotated[int, Field(ge=1024, le=2**40)] = 16 * 2**20
    """Payload bytes kept per terminal; beyond it the oldest reports are dropped too."""
    drain_rate_per_s: Annotated[float, Field(gt=0, le=100_000)] = 20.0
    """Messages per second handed to the broker while a backlog drains (token bucket)."""
    drain_burst: Annotated[int, Field(ge=1, le=100_000)] = 50
    """Messages that may go at once (the bucket's size): normal traffic never waits."""
    drain_jitter_s: Annotated[float, Field(ge=0, le=3600)] = 10.0
    """After a (re)connect that finds a backlog, wait uniform(0, this) before draining."""
    synchronous: Literal["full", "normal"] = "full"
    """SQLite's synchronous: full survives a power loss, normal only a process kill."""
    require_commit_confirmation: bool = True
    """Keep each sent message until the server's ``kf.committed`` says it is committed
    (docs/reliability.md). False: a broker PUBACK removes it (only for a server older
    than confirmations: with one, a confirming agent stops sending new reports once its
    quota is full of unconfirmed ones)."""
    resend_grace_s: Annotated[float, Field(ge=0, le=600)] = 1.0
    """After a reconnect, wait this long (plus the drain jitter) for the confirmations the
    broker kept for this session before re-sending what is still unconfirmed."""
    confirm_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """Rows sent this long ago with no ``kf.committed`` since (one can be lost, and a quiet
    terminal sends nothing that would bring the next): re-send the oldest unconfirmed
    ones, waiting twice as long each time nothing answers (docs/reliability.md)."""


class EnrollmentConfig(BaseModel):
    """How the terminal gets and renews its client certificate over EST (agent.enrollment).

    The key and certificate go to ``tls_key_file`` and ``tls_cert_file`` (both required
    with enrollment), where the MQTT connection reads them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[str, Field(pattern=r"^https://[^/?#]+(/[^?#]*)?$")]
    """The EST server's base, e.g. ``https://fleet.example:8443`` (its
    ``/.well-known/est/...`` is appended). HTTPS only."""
    ca_file: Path
    """The fleet CA chain the server's certificate must chain to (never trust on first use)."""
    token: Annotated[str, Field(min_length=16, max_length=256)] | None = None
    """A one-time enrollment token; without one the terminal's key must be pre-authorised."""
    renew_at: Annotated[float, Field(gt=0, lt=1)] = 2 / 3
    """Renew once this fraction of the certificate's lifetime has passed."""
    check_interval_s: Annotated[float, Field(ge=1, le=86400)] = 3600.0
    """How often a running agent checks whether renewal is due."""
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 30.0


class UpdatesConfig(BaseModel):
    """The updater (agent/updater.py): where the TUF repository is, what the terminal trusts,
    where it keeps its files and slots, how it restarts the kiosk, and the kiosk socket.

    ``server_url`` is the shortcut: metadata from ``{server_url}/tuf/metadata/`` and
    targets from ``{server_url}/tuf/targets/``; ``metadata_base_url``/``target_base_url``
    override either (a mirror). HTTPS is required outside ``allow_http`` (tests, a lab)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    server_url: Annotated[str, Field(pattern=r"^https?://[^/?#]+(/[^?#]*)?$")] | None = None
    metadata_base_url: Annotated[str, Field(pattern=r"^https?://[^?#]+/$")] | None = None
    target_base_url: Annotated[str, Field(pattern=r"^https?://[^?#]+/$")] | None = None
    allow_http: bool = False
    """Accept ``http://`` repository URLs (TUF still verifies every byte; only for labs)."""
    trusted_root: Path = Path("/etc/kioskfleet/root.json")
    """The root.json shipped with the terminal: trusted on first boot and after a wiped cache."""
    work_dir: Path = Path("/var/lib/kioskfleet/updates")
    """TUF cache (``tuf/``), downloads (``downloads/``) and the updater's ``state.json``."""
    slots_root: Path = Path("/var/lib/kioskfleet/slots")
    """The bundle handler's A/B slots and its ``current`` link."""
    agent_slots_root: Path | None = None
    """The agent's own A/B slots (the launcher's ``--root``): with it, releases whose
    handler is ``agent`` install the agent itself (agent/self_update.py); None: refused."""
    restart_command: Annotated[list[str], Field(min_length=1, max_length=32)] = [
        "systemctl",
        "restart",
        "kiosk-app.service",
    ]
    restart_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    health_interval_s: Annotated[float, Field(gt=0, le=300)] = 1.0
    """How often the manifest's health command is run until it passes or its timeout ends."""
    poll_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """How often a waiting install asks the window and the install gate again."""
    kiosk_socket: Path = Path("/run/kioskfleet/kiosk.sock")
    kiosk_socket_group: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    """The group the kiosk application runs as (the socket is 0660 for it); None: the agent's."""
    max_queued_directives: Annotated[int, Field(ge=1, le=100)] = 4
    """Directives waiting for the worker; one more is refused and logged."""

    @model_validator(mode="after")
    def _repository_known(self) -> Self:
        if not self.enabled:
            return self
        if self.server_url is None and (
            self.metadata_base_url is None or self.target_base_url is None
        ):
            raise ValueError("needs server_url, or metadata_base_url and target_base_url")
        urls = [u for u in (self.server_url, self.metadata_base_url, self.target_base_url) if u]
        if not self.allow_http and any(u.startswith("http://") for u in urls):
            raise ValueError("repository URLs must be https:// (or set allow_http)")
        return self

    @property
    def metadata_url(self) -> str:
        return self.metadata_base_url or f"{(self.server_url or '').rstrip('/')}/tuf/metadata/"

    @property
    def targets_url(self) -> str:
        return self.target_base_url or f"{(self.server_url or '').rstrip('/')}/tuf/targets/"


class AgentConfig(BaseModel):
    """Everything one terminal agent needs to know; see docs/agent.md for each field.

    A plain pydantic model: ``load_agent_config`` reads the file and the environment
    itself (pydantic-settings would add ~5 MB to every terminal's agent, docs/agent.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    terminal_id: str
    hall: Label
    region: Label
    model: Label
    broker_url: BrokerUrl = "mqtt://127.0.0.1:1883"
    broker_urls: Annotated[list[BrokerUrl], Field(min_length=1, max_length=MAX_BROKERS)] | None = (
        None
    )
    """Several brokers (failover, agent.broker_rotation); exclusive with ``broker_url``."""
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    report_interval_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    probe_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    keepalive_s: Annotated[int, Field(ge=1, le=300)] = 30
    reconnect_min_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    session_expiry_s: Annotated[int, Field(ge=0, le=2**32 - 1)] = 7 * 86400
    # "5" (default). "3.1.1" for a broker without MQTT 5 (nats-server): a persistent session
    # (clean session off) whose lifetime the broker decides; session_expiry_s is not sent.
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    probes: Annotated[list[ProbeSpec], Field(max_length=32)] = []
    agent_version: Annotated[str, Field(min_length=1, max_length=32)] = __version__
    limits: AgentLimits = AgentLimits()
    outbox: OutboxConfig = OutboxConfig()
    enrollment: EnrollmentConfig | None = None
    updates: UpdatesConfig = UpdatesConfig()

    @field_validator("terminal_id")
    @classmethod
    def _terminal_id_is_one_topic_level(cls, value: str) -> str:
        if not is_valid_terminal_id(value):
            raise ValueError(
                "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _one_list_of_brokers(self) -> Self:
        if self.broker_urls is None:
            return self
        if "broker_url" in self.model_fields_set:
            raise ValueError(
                "set broker_url or broker_urls, not both (broker_url is a one-element list)"
            )
        brokers = [parse_broker_url(url) for url in self.broker_urls]
        if len({b.tls for b in brokers}) > 1:
            raise ValueError("broker_urls must all be mqtt:// or all mqtts://")
        if len(set(brokers)) < len(brokers):
            raise ValueError("broker_urls names a broker twice")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be below reconnect_min_s")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        uses_tls_files = any(
            f is not None for f in (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        )
        if uses_tls_files and not self.broker.tls:
            raise ValueError("tls_* files need an mqtts:// broker_url (or broker_urls)")
        if self.enrollment is not None and (self.tls_cert_file is None or not self.broker.tls):
            raise ValueError(
                "enrollment needs an mqtts:// broker_url (or broker_urls), tls_cert_file"
                " and tls_key_file"
            )
        names = [p.name for p in self.probes]
        if len(names) != len(set(names)):
            raise ValueError("probe names must be unique")
        return self

    @property
    def brokers(self) -> tuple[BrokerAddress, ...]:
        """Every broker, in the configured order: ``broker_urls``, or ``broker_url`` alone."""
        return tuple(parse_broker_url(url) for url in self.broker_urls or [self.broker_url])

    @property
    def broker(self) -> BrokerAddress:
        """The first broker (all share its scheme)."""
        return self.brokers[0]


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<config>"


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            message = "is required (set it in the file or as " + ENV_PREFIX + "<FIELD>)"
        problems.append((_location(err["loc"]), message))
    return problems


def env_variables() -> frozenset[str]:
    """Every ``KIOSKFLEET_AGENT_*`` name the config reads: one per field, and
    ``<FIELD>__<SUBFIELD>`` for the fields of the tables that always exist (``limits``,
    ``outbox``, ``updates``; not the optional ``enrollment``)."""
    names: set[str] = set()
    for name, info in AgentConfig.model_fields.items():
        names.add(ENV_PREFIX + name.upper())
        model = info.annotation
        if _is_model(model):
            names.update(f"{ENV_PREFIX}{name.upper()}__{sub.upper()}" for sub in model.model_fields)
    return frozenset(names)


def unknown_variables(names: Iterable[str]) -> list[tuple[str, str]]:
    """``(name, message)`` for each ``KIOSKFLEET_AGENT_*`` name (case-insensitive, as it is
    read) that names no field; the message names the nearest valid variable."""
    known = sorted(n.removeprefix(ENV_PREFIX) for n in env_variables())
    problems = []
    for name in names:
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper.removeprefix(ENV_PREFIX) not in known:
            # Compared without the common prefix, which would make every name look alike.
            close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), known, n=1)
            hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
            problems.append((name, f"unknown variable{hint}"))
    return sorted(problems)


def load_agent_config(path: Path | None, **overrides: Any) -> AgentConfig:
    """Build the agent's settings from ``path`` (optional), the environment and ``overrides``.

    Precedence: ``overrides`` > ``KIOSKFLEET_AGENT_*`` > the TOML file > defaults.
    Raises AgentConfigError (naming each bad field) if the file is missing or
    unreadable, a ``KIOSKFLEET_AGENT_*`` variable names no field, or any value is
    invalid.
    """
    source = f"agent config {path}" if path is not None else "agent config"
    unknown = unknown_variables(os.environ)
    if unknown:
        raise AgentConfigError(unknown, source)
    if path is not None and not path.is_file():
        raise AgentConfigError([("<file>", f"{path} does not exist or is not a file")], source)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8")) if path is not None else {}
    except (OSError, ValueError, RecursionError) as exc:  # TOMLDecodeError, UTF-8, digits
        raise AgentConfigError([("<file>", str(exc))], source) from None
    data = _merged(_merged(data, _from_environment(os.environ, source)), overrides)
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise AgentConfigError(_problems(exc), source) from None


def _from_environment(environ: Mapping[str, str], source: str) -> dict[str, Any]:
    """The ``KIOSKFLEET_AGENT_*`` variables (names case-insensitive) as the file's shape:
    ``<FIELD>`` sets a field, ``<FIELD>__<SUBFIELD>`` one field of a table (after a JSON
    ``<FIELD>`` if both are set). A list or a table is JSON; other values stay text for the
    model to convert. Only names ``unknown_variables`` accepted reach here."""
    data: dict[str, Any] = {}
    for name in sorted(environ, key=lambda n: n.count("__")):  # whole tables first
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        path = upper.removeprefix(ENV_PREFIX).lower().split("__")
        model: type[BaseModel] = AgentConfig
        target = data
        for part in path[:-1]:
            model = _table(model.model_fields[part].annotation)
            table = target.setdefault(part, {})
            if not isinstance(table, dict):
                problem = f"{ENV_PREFIX}{part.upper()} must be a JSON object to take {name}"
                raise AgentConfigError([(name, problem)], source)
            target = table
        annotation = model.model_fields[path[-1]].annotation
        raw = environ[name]
        if _is_structured(annotation):
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError, too many digits
                raise AgentConfigError([(name, f"is not valid JSON: {exc}")], source) from None
            if value is None:  # pydantic-settings ignored it; a null must not hide the file's
                problem = "is null: unset the variable to keep the file's value"
                raise AgentConfigError([(name, problem)], source)
            target[path[-1]] = value
        else:
            target[path[-1]] = raw
    return data


def _merged(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``top`` over it; tables (dicts) are merged key by key."""
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, dict):
            out[key] = _merged(below, value)
        else:
            out[key] = value
    return out


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types an annotation admits: ``X | None`` gives both, ``Annotated`` is unwrapped."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(m for arg in get_args(annotation) for m in _members(arg))
    return (annotation,)


def _is_structured(annotation: Any) -> bool:
    """Whether a field's value is a list or a table (given as JSON in the environment)."""
    return any(
        get_origin(m) in (list, dict) or m in (list, dict) or _is_model(m)
        for m in _members(annotation)
    )


def _is_model(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _table(annotation: Any) -> type[BaseModel]:
    """The model a ``<FIELD>__`` variable reaches into (``unknown_variables`` checked it)."""
    return next(m for m in _members(annotation) if _is_model(m))
