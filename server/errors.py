"""The server's exception hierarchy: what its boundaries raise instead of library errors.

Every adapter (database, broker, settings, HTTP) translates the errors of the
library it wraps into one of these, so callers never catch ``sqlalchemy``,
``paho`` or ``pydantic`` exceptions. Every class carries the data a caller needs
(attributes named below); ``str()`` is a sentence for a log line::

    ServerError                   (base)
    ├── ConfigError               settings that cannot work (bad URL, missing TLS file)
    │   ├── InvalidSettingsError  values that do not validate; .problems [(setting, message)]
    │   └── UnknownSettingError   KIOSKFLEET_* names that are no setting (a misspelling);
    │                             .names, .suggestions {name: nearest setting or None}
    ├── StorageError              the database could not be reached or failed for now
    │   │                         (.operation names what was being done); worth retrying
    │   ├── StorageDataError      the database refused these rows (a constraint or data
    │   │                         error): retrying the same rows fails again
    │   └── FencedOffError        a once-per-fleet job's write refused because another
    │                             replica took the job lease over (.lease, .token: the
    │                             holding the write was made under); server.lease_fence
    ├── BrokerError               the MQTT client could not be set up or used
    ├── DeviceCaError             the device CA is missing, incomplete or already there,
    │                             or a request to it is invalid (bad CSR, wrong key type)
    ├── EnrollmentRefusedError         the terminal registry refused an enrollment, renewal or
    │                             registry change; .reason (bounded: a metric label), .status
    ├── ReleaseRejectedError      uploaded TUF metadata or an artifact the server refuses
    │                             (.code: a server.tuf_verify.RejectCode value, .message)
    ├── UpdatesError              the update repository or artifact store failed or is
    │                             misconfigured (missing online key, unreadable file)
    ├── RolloutNotFoundError      server.rollout_service: no rollout has this id (also a
    │                             LookupError); the API answers 404
    ├── RolloutConflictError      server.rollout_service: the planner refused the event, or the
    │                             rollout cannot be created (.reason); the API answers 409
    ├── RolloutFormError          server.console.rollout_pages: a create form field that
    │                             cannot be read (.field, .message; also a ValueError); 422
    ├── AnalyticsRangeError       server.analytics_report: a range longer than MAX_SPAN,
    │                             reversed, or outside 2000-2100 (also a ValueError); 422
    ├── MaintenanceRefusedError   server.maintenance_service refused a window, its end or an
    │                             ack (.code: a MaintenanceRefusal value, no_maintenance,
    │                             unknown_terminal); the API answers 404, 409 or 422
    ├── TooManyHallsError         opening hours for one more hall than
    │                             ``opening_hours_max_halls`` (.limit); the API answers 409
    ├── InvalidCursorError        a page cursor this server did not hand out (also a
    │                             ValueError); the fleet state raises it, the API answers 422
    ├── InvalidTimeRangeError     a history or events range without an offset, or whose
    │                             since is not before its until (also a ValueError); 422
    ├── ReportRefusedError        a hall report that cannot be made: a week that is no ISO
    │                             week, or a page naming a URL the PDF renderer would fetch
    │                             (also a ValueError); the API answers 422
    ├── ReportsBusyError          as many hall reports as allowed are rendering now
    │                             (.limit, .retry_after_s); the API answers 429
    ├── AccessError               a token or console user that cannot be made or changed as
    │                             asked (.code: invalid_token, invalid_expiry, token_exists,
    │                             no_such_token, invalid_user, weak_password, user_exists,
    │                             no_such_user; malformed, unknown, revoked, expired when
    │                             authenticating)
    └── ApiError                  an HTTP error answer (.status, .error, .message): raised
        │                         by a handler, turned into ``{"error", "message"}`` by the app
        └── ConsoleError          a console request refused: answered with an HTML page, or
                                  a redirect to the login page (.login) for a GET without a
                                  usable session

Wire rejections are not here: they are ``protocol.errors.ProtocolError`` and
never leave the ingest, which counts and logs them. The test harness's
``kioskfleet.local_broker.LocalBrokerError`` (a mosquitto it could not start)
is not the server's either. This module does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = [
    "AccessError",
    "ApiError",
    "BrokerError",
    "ConfigError",
    "ConsoleError",
    "DeviceCaError",
    "EnrollmentRefusedError",
    "FencedOffError",
    "InvalidCursorError",
    "InvalidSettingsError",
    "InvalidTimeRangeError",
    "MaintenanceRefusedError",
    "ReleaseRejectedError",
    "ReportRefusedError",
    "ReportsBusyError",
    "ServerError",
    "StorageDataError",
    "StorageError",
    "TooManyHallsError",
    "UnknownSettingError",
    "UpdatesError",
]


class ServerError(Exception):
    """Base class of every error the server raises on purpose."""


class ConfigError(ServerError):
    """Settings that cannot work."""


class InvalidSettingsError(ConfigError):
    """Settings whose values do not validate. ``problems`` is ``(setting, message)`` pairs,
    the setting named as its environment variable; ``str()`` lists them all."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            "invalid settings: " + "; ".join(f"{name}: {message}" for name, message in problems)
        )


class UnknownSettingError(ConfigError):
    """``KIOSKFLEET_*`` variables that name no setting (in the environment or the env file).

    ``names`` are the unknown variables, sorted; ``suggestions`` maps each to the
    nearest valid variable, or None when nothing is close.
    """

    def __init__(self, suggestions: Mapping[str, str | None]) -> None:
        self.names = tuple(sorted(suggestions))
        self.suggestions = dict(suggestions)
        parts = []
        for name in self.names:
            nearest = self.suggestions[name]
            parts.append(f"{name} (did you mean {nearest}?)" if nearest else name)
        super().__init__("unknown server settings: " + ", ".join(parts))


class StorageError(ServerError):
    """A database operation failed; ``operation`` says which one."""

    def __init__(self, operation: str, message: str) -> None:
        super().__init__(f"{operation}: {message}")
        self.operation = operation
        self.message = message


class StorageDataError(StorageError):
    """The database refused the data itself (integrity or data error); a retry cannot help."""


class FencedOffError(StorageError):
    """A write of a job run under the job lease's holding ``token`` of ``lease``: the lease's
    fencing token moved on (another replica took it over), so nothing of it was written."""

    def __init__(self, operation: str, lease: str, token: int) -> None:
        super().__init__(
            operation, f"fenced off: job lease {lease!r} is no longer at token {token}"
        )
        self.lease = lease
        self.token = token


class BrokerError(ServerError):
    """The MQTT client could not be configured, connected or used."""


class InvalidCursorError(ServerError, ValueError):
    """A page cursor that this server did not hand out (tampered with, truncated, or from
    another API): the caller should start again without a cursor."""


class InvalidTimeRangeError(ServerError, ValueError):
    """A time range that cannot be read: a bound without a UTC offset, or ``since`` not
    before ``until``."""


class ReportRefusedError(ServerError, ValueError):
    """A hall report that cannot be made (``server.hall_report``, ``server.hall_report_pdf``):
    a week that is no ISO week, or a page naming a URL other than a ``data:`` URI."""


class ReportsBusyError(ServerError):
    """``limit`` hall reports are rendering in this process already
    (``server.report_gate``); worth asking again after ``retry_after_s`` seconds."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(f"{limit} reports are rendering; ask again in {retry_after_s} s")
        self.limit = limit
        self.retry_after_s = retry_after_s


class AccessError(ServerError):
    """A token or console-user request that cannot be done: ``code`` says why
    (``invalid_token``, ``invalid_expiry``, ``token_exists``, ``no_such_token``,
    ``invalid_user``, ``weak_password``, ``user_exists``, ``no_such_user``), ``message`` for
    a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ApiError(ServerError):
    """An HTTP error answer: ``status`` code, machine ``error`` code, human ``message``, and
    the ``headers`` to send with it (``WWW-Authenticate`` on a 401)."""

    def __init__(
        self, status: int, error: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = dict(headers or {})


class ConsoleError(ApiError):
    """A console request refused (``server.console``): an HTML page with ``status``, or a
    redirect to the login page when ``login`` (a page asked for without a usable session)."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        login: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, error, message, headers)
        self.login = login


class DeviceCaError(ServerError):
    """The CA directory is missing, incomplete or already initialised, or a request to the CA
    is invalid (a CSR whose signature does not verify, a key that is not EC P-256...)."""


class EnrollmentRefusedError(ServerError):
    """The terminal registry refused a request: an enrollment (no or bad credentials, a key
    or CN that is not the terminal's), a renewal (revoked or foreign certificate) or an
    operator's change (unknown id, bad key). ``reason`` is one of a fixed set (it becomes a
    metric label); ``status`` the HTTP status an EST answer carries (400, 401, 403, 404, 409)."""

    def __init__(self, reason: str, message: str, *, status: int = 403) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status


class MaintenanceRefusedError(ServerError):
    """An operator action ``server.maintenance_service`` refused: ``code`` says why (a
    ``server.maintenance.MaintenanceRefusal`` value, ``no_maintenance`` to end a window
    that is not there, ``unknown_terminal`` to acknowledge on a terminal the fleet does not
    know), ``message`` for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TooManyHallsError(ServerError):
    """Opening hours for a new hall were refused: ``limit`` halls already have some (the
    table's bound, ``opening_hours_max_halls``)."""

    def __init__(self, hall: str, limit: int) -> None:
        super().__init__(f"hall {hall!r} refused: {limit} halls already have opening hours")
        self.hall = hall
        self.limit = limit


class ReleaseRejectedError(ServerError):
    """Uploaded metadata or bytes the server refuses before storing anything. ``code`` is
    one of ``server.tuf_verify.RejectCode`` (documented in docs/updates.md); ``status`` the
    HTTP status the API answers with."""

    def __init__(self, code: str, message: str, *, status: int = 422) -> None:
        self.code = code
        self.message = message
        self.status = status
        super().__init__(f"{code}: {message}")


class UpdatesError(ServerError):
    """The update repository or artifact store cannot work (configuration, disk)."""
