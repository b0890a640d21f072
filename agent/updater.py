"""The agent's updater core: one signed directive in, one install (or one refusal) out.

``Updater.handle(payload)`` takes the bytes of a ``kf.directive`` from the ``cmd`` channel
and, in this order (the first failing step ends it with its state and reason):

1. builds a NEW ``tuf.ngclient.Updater`` (python-tuf fixes "now" per instance) from the
   cached ``root.json`` or, when the cache is empty or wiped, the terminal's configured
   trusted root; ``refresh()``; reads the directive key the operator pinned
   (``_pins/directive-key.pub``); ``protocol.directives.verify_directive`` (signature,
   terminal id, seq above the last accepted one, expiry, target = TUF's targetinfo);
2. reads the target's release manifest and decides (``check_release``, pure): terminal
   model listed, ``release_counter`` not below the highest this terminal installed for the
   package (equal: ``already_installed``), ``min_agent_version`` met;
3. downloads through python-tuf (length and hashes checked) into ``downloads/``, resumably:
   ``agent.tuf_fetcher.ResumingFetcher`` keeps what arrived of a broken download and the
   next directive for the same target asks only for the rest (``Range``), never past TUF's
   length; a TUF refusal of metadata is named precisely (``agent.tuf_reasons``);
4. waits, polling every ``poll_s`` with the injected ``sleep``, until the directive's window
   has begun, the hall is closed (``hall_open(now)`` is False) unless the directive says
   ``install_while_open``, and ``InstallGate.try_begin_install()`` grants it (no citizen
   session, no deferral); past ``not_after`` it ends ``timed_out``;
5. installs with the manifest's handler through ``run_install`` and ends the gate's install;
   a release of the agent itself (handler ``agent``, agent/self_update.py) is instead staged
   in the agent's inactive slot, reported ``health_check`` and ``restart_agent()`` is
   called: the launcher puts the new agent on trial, and the final state comes from the
   agent that runs afterwards (``succeeded`` from the new one, ``rolled_back`` from the old).

Withdrawals (``kf.withdraw``, the server's request after a cancel or abort): the wiring hands
them to ``post_withdrawal`` from any thread; they are verified with the pinned key (signature,
terminal, expiry) right after the directive is accepted and at every poll of the wait (a
posted withdrawal wakes the wait). A verified withdrawal of the directive's rollout with a
higher seq ends the directive ``canceled`` before it installs; once ``installing`` is
reported, the install runs to its end (stopping halfway is worse than finishing). Verified
withdrawals are remembered in memory (the last 64 rollouts), so a directive of a withdrawn
rollout still queued behind the one in hand is canceled as soon as it is accepted.

Each state is handed to ``report(UpdateBody)`` (with the directive's ``attempt``) as it is
reached: notified, downloading,
downloaded, waiting_window (only if it has to wait; reason ``session_active`` when the gate
refused), installing, health_check, then one final state: succeeded, failed, rolled_back,
rejected (with reason), timed_out, canceled or already_installed. The wiring wraps each body in a
``kf.update`` envelope and sends it through the outbox.

What survives (``UpdaterState``, one JSON file moved into place with ``os.replace`` after
an fsync, kept OUTSIDE the TUF cache so wiping the cache forgets nothing): the highest
directive ``seq`` accepted, the highest ``release_counter`` installed per package, and the
install under way. The seq is stored as soon as a directive is accepted (a replay of it is
refused even if the install later fails); a counter after a committed install, or by
``reconcile()`` at start when the agent died after the health check passed and the
handler's ``recover()`` committed it (otherwise the committed release's counter would be
lost, and a release between the old and the new one would install as an "upgrade").

Public interface:

- ``UpdaterConfig``: terminal id and model, agent version, repository URLs, trusted root,
  ``work_dir`` (TUF cache ``tuf/``, ``downloads/``) and ``state_file``, ``poll_s``.
- ``Updater(config, *, handlers, gate, hall_open, report, clock, sleep=None)``;
  ``handlers`` maps a manifest ``install.handler`` name to an ``InstallHandler``.
  ``handle(payload) -> UpdateState`` (the final state) blocks until that state; it never
  raises for anything a directive, the repository or an artifact does (crashes of a
  handler propagate; ``InstallHandler.recover()`` is the wiring's job at start, followed
  by ``reconcile()``).
- ``check_release(manifest, *, model, agent_version, highest_counter) -> Ending | None``
  (pure), ``window_wait(directive, now, *, hall_is_open) -> str | None`` (pure),
  ``outcome_ending(InstallOutcome) -> Ending`` and ``Ending`` (final state, reason, detail).
- ``UpdaterState`` (``load``/``save``), ``UpdaterStateError``.

Never: act on a directive before it verifies, install bytes TUF did not verify, install
while the gate is held, or lower a stored counter.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final

from tuf.api.exceptions import (
    DownloadError,
    DownloadLengthMismatchError,
    LengthOrHashMismatchError,
    RepositoryError,
)
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater as TufUpdater

from agent.clock import Clock
from agent.errors import AgentError
from agent.install.commands import HealthReport, health_argv
from agent.install.errors import ArchiveRefusedError, InstallError
from agent.install.handler import (
    InstallHandler,
    InstallOutcome,
    InstallRequest,
    InstallResult,
    run_install,
)
from agent.install_gate import InstallGate
from agent.self_update import AGENT_HANDLER, AgentSlots
from agent.tuf_fetcher import ResumingFetcher
from agent.tuf_reasons import TOP_LEVEL_ROLES, metadata_reason, role_of_url
from firmware_manifests.keys import write_atomically
from firmware_manifests.release_manifest import ManifestError, ReleaseManifest, manifest_from_custom
from protocol.directives import (
    Directive,
    DirectiveKeyPinError,
    DirectiveRejected,
    PinnedKey,
    pinned_key_from_custom,
    verify_directive,
    verify_withdrawal,
)
from protocol.update_status import UpdateBody, UpdateReason, UpdateState

__all__ = [
    "DIRECTIVE_KEY_TARGET",
    "WINDOW_OVER",
    "Ending",
    "Updater",
    "UpdaterConfig",
    "UpdaterState",
    "UpdaterStateError",
    "check_release",
    "outcome_ending",
    "window_wait",
]

_log = logging.getLogger(__name__)

DIRECTIVE_KEY_TARGET: Final = "_pins/directive-key.pub"
_STATE_VERSION: Final = 1
_MAX_PENDING_WITHDRAWALS: Final = 32  # unverified kf.withdraw payloads kept; oldest dropped
_MAX_WITHDRAWN_ROLLOUTS: Final = 64  # verified withdrawals remembered (in memory)

Report = Callable[[UpdateBody], None]


class UpdaterStateError(AgentError):
    """The updater's state file cannot be read or is not one this version wrote; ``path``."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"updater state {path}: {reason}")


@dataclass(frozen=True)
class UpdaterConfig:
    """Who the terminal is, where the repository is, where the updater keeps its files."""

    terminal_id: str
    terminal_model: str
    agent_version: str
    metadata_base_url: str
    target_base_url: str
    trusted_root: bytes  # the root.json shipped with the terminal (first boot, wiped cache)
    work_dir: Path  # tuf/ (python-tuf's cache) and downloads/
    state_file: Path  # must not live inside work_dir/tuf
    poll_s: float = 30.0  # how often a waiting install asks the window and the gate again


# --- persistent state ------------------------------------------------------------------------


@dataclass
class UpdaterState:
    """What the updater must never forget: last accepted seq, highest counter per package."""

    last_seq: int = 0
    highest_counter: dict[str, int] = field(default_factory=dict)
    # the install under way: handler, package, version, release_counter (None: none)
    installing: dict[str, str | int] | None = None

    @classmethod
    def load(cls, path: Path) -> UpdaterState:
        """The state in ``path`` (empty when it does not exist). Raises UpdaterStateError."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise UpdaterStateError(path, str(exc)) from None
        counters = data.get("highest_counter") if isinstance(data, dict) else None
        if (
            not isinstance(data, dict)
            or data.get("schema_version") != _STATE_VERSION
            or type(data.get("last_seq")) is not int
            or not isinstance(counters, dict)
            or not all(isinstance(k, str) and type(v) is int for k, v in counters.items())
            or not _is_installing(data.get("installing"))
        ):
            raise UpdaterStateError(path, "not an updater state of version 1")
        return cls(data["last_seq"], dict(counters), data.get("installing"))

    def save(self, path: Path) -> None:
        """Write a temporary file, fsync, ``os.replace`` onto ``path``, fsync the directory."""
        data = {
            "schema_version": _STATE_VERSION,
            "last_seq": self.last_seq,
            "highest_counter": self.highest_counter,
            "installing": self.installing,
        }
        write_atomically(path, json.dumps(data, sort_keys=True).encode())
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _is_installing(value: object) -> bool:
    if value is None:
        return True
    return (
        isinstance(value, dict)
        and set(value) == {"handler", "package", "version", "release_counter"}
        and all(isinstance(value[k], str) for k in ("handler", "package", "version"))
        and type(value["release_counter"]) is int
    )


# --- pure decisions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Ending:
    """How a directive ends: its final state, a reason code (None for good ends), a sentence."""

    state: UpdateState
    reason: UpdateReason | None
    detail: str


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def check_release(
    manifest: ReleaseManifest, *, model: str, agent_version: str, highest_counter: int | None
) -> Ending | None:
    """None if this terminal may install ``manifest``; otherwise why not.

    ``highest_counter`` is the highest ``release_counter`` installed for the manifest's
    package (None: never installed). An agent version that is not dotted digits (a
    development build) is treated as 0 and so meets no ``min_agent_version``.
    """
    if model not in manifest.compatible_models:
        return Ending(
            UpdateState.REJECTED,
            UpdateReason("wrong_model"),
            f"model {model!r} is not in {manifest.compatible_models}",
        )
    if highest_counter is not None and manifest.release_counter < highest_counter:
        return Ending(
            UpdateState.REJECTED,
            UpdateReason("downgrade"),
            f"release_counter {manifest.release_counter} < installed {highest_counter}",
        )
    if highest_counter is not None and manifest.release_counter == highest_counter:
        return Ending(
            UpdateState.ALREADY_INSTALLED, None, f"release_counter {highest_counter} installed"
        )
    wanted = manifest.min_agent_version
    if wanted is not None and _version_tuple(agent_version) < _version_tuple(wanted):
        # No dedicated reason code yet in protocol.update_status: the release does not fit
        # this terminal, as a wrong model does.
        return Ending(
            UpdateState.REJECTED,
            UpdateReason("wrong_model"),
            f"needs agent {wanted}, this agent is {agent_version}",
        )
    return None


WINDOW_OVER: Final = "the install window closed"


def window_wait(directive: Directive, now: datetime, *, hall_is_open: bool) -> str | None:
    """Why the install must wait at ``now`` (``WINDOW_OVER``: it never may), None if it may.

    The install gate (citizen sessions) is asked after this, by the caller.
    """
    if now >= directive.not_after:
        return WINDOW_OVER
    if now < directive.not_before:
        return "the install window has not begun"
    if hall_is_open and not directive.install_while_open:
        return "the hall is open"
    return None


_OUTCOME_STATE: Final = {
    InstallResult.SUCCEEDED: (UpdateState.SUCCEEDED, None),
    InstallResult.ROLLED_BACK: (UpdateState.ROLLED_BACK, UpdateReason("install_failed")),
    InstallResult.REJECTED: (UpdateState.REJECTED, UpdateReason("unsafe_archive")),
    InstallResult.FAILED: (UpdateState.FAILED, UpdateReason("install_failed")),
}


def outcome_ending(outcome: InstallOutcome) -> Ending:
    """The final state and reason that report an install's outcome."""
    state, reason = _OUTCOME_STATE[outcome.result]
    if outcome.reason in ("health_check_failed", "interrupted"):  # the handler's precise cause
        reason = UpdateReason(outcome.reason)
    return Ending(state, reason, f"{outcome.reason}: {outcome.detail}")


# --- the I/O shell ---------------------------------------------------------------------------


class _Done(Exception):  # noqa: N818 -- control flow inside handle(), never escapes it
    def __init__(self, ending: Ending) -> None:
        super().__init__(ending.detail)
        self.ending = ending


class _ReportingHandler:
    """Delegates to a handler and reports ``health_check`` as the check starts."""

    def __init__(self, inner: InstallHandler, on_health_check: Callable[[], None]) -> None:
        self._inner = inner
        self._on_health_check = on_health_check
        self.name = inner.name

    def prepare(self, request: InstallRequest) -> None:
        self._inner.prepare(request)

    def activate(self) -> None:
        self._inner.activate()

    def health_check(self) -> HealthReport:
        self._on_health_check()
        return self._inner.health_check()

    def commit(self) -> InstallOutcome:
        return self._inner.commit()

    def rollback(self, reason: str, detail: str) -> InstallOutcome:
        return self._inner.rollback(reason, detail)

    def recover(self) -> InstallOutcome | None:
        return self._inner.recover()

    def active_version(self) -> str | None:
        return self._inner.active_version()


def _printable(text: str) -> str:
    """``text`` as the wire's Text accepts it: no control characters, at most 256."""
    return "".join(c if c.isprintable() else " " for c in text)[:256]


def _rejected(reason: UpdateReason, detail: str) -> _Done:
    return _Done(Ending(UpdateState.REJECTED, reason, detail))


def _record_counter(state: UpdaterState, package: str, counter: int) -> None:
    state.highest_counter[package] = max(state.highest_counter.get(package, 0), counter)


class Updater:
    """Handles one directive at a time (see the module docstring)."""

    def __init__(
        self,
        config: UpdaterConfig,
        *,
        handlers: Mapping[str, InstallHandler],
        gate: InstallGate,
        hall_open: Callable[[datetime], bool],
        report: Report,
        clock: Clock,
        sleep: Callable[[float], None] | None = None,
        agent_slots: AgentSlots | None = None,
        restart_agent: Callable[[], None] | None = None,
    ) -> None:
        """``sleep`` waits between polls of a waiting install; by default a wait that a
        withdrawal (``post_withdrawal``) cuts short. ``agent_slots`` enables releases of the
        agent itself (handler ``agent``): they are staged there and ``restart_agent()`` is
        called so the launcher starts the new one."""
        self._config = config
        self._agent_slots = agent_slots
        self._restart_agent = restart_agent
        self._handlers = dict(handlers)
        self._gate = gate
        self._hall_open = hall_open
        self._report = report
        self._clock = clock
        self._sleep = sleep or self._wait_for_wake
        self._wake = threading.Event()
        self._pending_lock = threading.Lock()
        self._pending: deque[bytes] = deque(maxlen=_MAX_PENDING_WITHDRAWALS)
        self._withdrawn: dict[str, int] = {}  # rollout id -> highest verified withdrawal seq
        self._pinned: PinnedKey | None = None  # from the latest refresh

    def post_withdrawal(self, payload: bytes) -> None:
        """Hand over a ``kf.withdraw`` payload (any thread; never blocks, never raises). It is
        verified with the pinned key of the next refresh, or of the directive in hand at its
        next poll, which it wakes."""
        with self._pending_lock:
            self._pending.append(payload)
        self._wake.set()

    def _wait_for_wake(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def reconcile(self) -> None:
        """Call once at start, AFTER every handler's ``recover()``: if the agent stopped
        during an install whose release the handler now runs (``recover()`` committed a
        release that had passed its health check), record its ``release_counter``, so a
        lower release is still a downgrade. The pending install is forgotten either way.
        Raises UpdaterStateError or OSError (the state file)."""
        state = UpdaterState.load(self._config.state_file)
        pending = state.installing
        if pending is None:
            return
        handler = self._handlers.get(str(pending["handler"]))
        if handler is not None and handler.active_version() == pending["version"]:
            _record_counter(state, str(pending["package"]), int(pending["release_counter"]))
            _log.warning("an interrupted install of %s was committed", pending["version"])
        state.installing = None
        state.save(self._config.state_file)

    @property
    def _tuf_dir(self) -> Path:
        return self._config.work_dir / "tuf"

    @property
    def _download_dir(self) -> Path:
        return self._config.work_dir / "downloads"

    def handle(self, payload: bytes) -> UpdateState:
        """Verify, download, wait for the window and the gate, install; the final state."""
        directive: Directive | None = None
        try:
            state = UpdaterState.load(self._config.state_file)
            fetcher = ResumingFetcher(
                target_base_url=self._config.target_base_url, partial_dir=self._download_dir
            )
            tuf = self._refreshed_tuf(fetcher)
            directive = self._verified(payload, tuf, state, fetcher)
            state.last_seq = directive.seq
            state.save(self._config.state_file)
            self._send(directive, UpdateState.NOTIFIED)
            self._unless_withdrawn(directive)
            info, manifest = self._release(tuf, directive, state)
            artifact = self._download(tuf, directive, info, fetcher)
            try:
                self._wait_for_window(directive)
                try:
                    if manifest.install.handler == AGENT_HANDLER:
                        raise _Done(self._stage_agent(directive, manifest, artifact))
                    state.installing = {
                        "handler": manifest.install.handler,
                        "package": manifest.package,
                        "version": manifest.version,
                        "release_counter": manifest.release_counter,
                    }
                    state.save(self._config.state_file)  # see reconcile()
                    outcome = self._install(directive, manifest, artifact)
                finally:
                    self._gate.end_install()
            finally:
                artifact.unlink(missing_ok=True)
            if outcome.result is InstallResult.SUCCEEDED:
                _record_counter(state, manifest.package, manifest.release_counter)
            state.installing = None
            state.save(self._config.state_file)
            raise _Done(outcome_ending(outcome))
        except (UpdaterStateError, OSError) as exc:
            # the state file or the work dir cannot be read or written: fail closed
            _log.error("updater storage: %s", exc)
            done = Ending(UpdateState.FAILED, UpdateReason("install_failed"), str(exc))
        except _Done as finished:
            done = finished.ending
        level = logging.INFO if done.state is UpdateState.SUCCEEDED else logging.WARNING
        _log.log(level, "directive ends %s (%s): %s", done.state, done.reason, done.detail)
        self._send(directive, done.state, done.reason, done.detail)
        if done.state is UpdateState.HEALTH_CHECK and self._restart_agent is not None:
            self._restart_agent()  # the agent release is staged: the new agent reports the end
        return done.state

    def record_installed(self, package: str, release_counter: int) -> None:
        """Raise the stored highest counter of ``package`` (a confirmed agent release).

        Raises UpdaterStateError, OSError."""
        state = UpdaterState.load(self._config.state_file)
        known = state.highest_counter.get(package, 0)
        state.highest_counter[package] = max(known, release_counter)
        state.save(self._config.state_file)

    # -- steps ----------------------------------------------------------------------------

    @property
    def _metadata_dir(self) -> Path:
        return self._tuf_dir / "metadata"

    def _refreshed_tuf(self, fetcher: ResumingFetcher) -> TufUpdater:
        metadata = self._metadata_dir
        metadata.mkdir(parents=True, exist_ok=True)
        self._download_dir.mkdir(parents=True, exist_ok=True)
        cached = metadata / "root.json"
        root = cached.read_bytes() if cached.is_file() else self._config.trusted_root
        try:
            tuf = TufUpdater(
                metadata_dir=str(metadata),
                metadata_base_url=self._config.metadata_base_url,
                target_dir=str(self._download_dir),
                target_base_url=self._config.target_base_url,
                fetcher=fetcher,
                bootstrap=root,
            )
            tuf.refresh()
        except (RepositoryError, DownloadLengthMismatchError) as exc:
            raise self._tuf_refusal(exc, fetcher) from None
        except DownloadError as exc:  # the repository cannot be reached: worth a retry
            failed = Ending(UpdateState.FAILED, UpdateReason("download_failed"), str(exc))
            raise _Done(failed) from None
        except (OSError, ValueError) as exc:
            raise _rejected(UpdateReason("tuf_error"), f"{type(exc).__name__}: {exc}") from None
        return tuf

    def _tuf_refusal(self, exc: Exception, fetcher: ResumingFetcher) -> _Done:
        """python-tuf refused metadata: rejected, with the precise reason (agent/tuf_reasons)."""
        role = role_bytes = delegator = None
        if fetcher.last_metadata is not None:
            url, role_bytes = fetcher.last_metadata
            role = role_of_url(url)
            trusted = self._metadata_dir / (
                "root.json" if role in TOP_LEVEL_ROLES else "targets.json"
            )
            try:
                delegator = trusted.read_bytes()
            except OSError:
                delegator = self._config.trusted_root if role in TOP_LEVEL_ROLES else None
        reason = metadata_reason(exc, role=role, role_bytes=role_bytes, delegator_bytes=delegator)
        where = f" ({role})" if role else ""
        return _rejected(UpdateReason(reason), f"{type(exc).__name__}{where}: {exc}")

    def _verified(
        self, payload: bytes, tuf: TufUpdater, state: UpdaterState, fetcher: ResumingFetcher
    ) -> Directive:
        try:
            pin = tuf.get_targetinfo(DIRECTIVE_KEY_TARGET)
            if pin is None:
                raise _rejected(UpdateReason("unknown_key"), "the operator pinned no directive key")
            pinned = pinned_key_from_custom(pin.custom)
            self._pinned = pinned
            return verify_directive(
                payload,
                pinned_key=pinned,
                terminal_id=self._config.terminal_id,
                last_seq=state.last_seq,
                now=self._clock.wall(),
                target_info=tuf.get_targetinfo,
            )
        except DirectiveKeyPinError as exc:
            raise _rejected(UpdateReason("unknown_key"), f"the pinned key: {exc}") from None
        except DirectiveRejected as exc:
            raise _rejected(UpdateReason(exc.reason), exc.message) from None
        except (RepositoryError, DownloadLengthMismatchError) as exc:  # a vendor role, lazily
            raise self._tuf_refusal(exc, fetcher) from None
        except DownloadError as exc:
            failed = Ending(UpdateState.FAILED, UpdateReason("download_failed"), str(exc))
            raise _Done(failed) from None

    def _release(
        self, tuf: TufUpdater, directive: Directive, state: UpdaterState
    ) -> tuple[TargetFile, ReleaseManifest]:
        info = tuf.get_targetinfo(directive.target.path)  # verify_directive saw it exist
        if info is None:
            raise _rejected(UpdateReason("target_mismatch"), "the target vanished")
        try:
            manifest = manifest_from_custom(info.custom)
        except ManifestError as exc:
            raise _rejected(UpdateReason("malformed"), f"release manifest: {exc}") from None
        ending = check_release(
            manifest,
            model=self._config.terminal_model,
            agent_version=self._config.agent_version,
            highest_counter=state.highest_counter.get(manifest.package),
        )
        if ending is not None:
            raise _Done(ending)
        agent_release = manifest.install.handler == AGENT_HANDLER and self._agent_slots
        if manifest.install.handler not in self._handlers and not agent_release:
            raise _rejected(
                UpdateReason("install_failed"),
                f"this agent has no install handler {manifest.install.handler!r}",
            )
        try:
            health_argv(manifest.health_check)
        except ValueError as exc:  # e.g. an http check off loopback: refused before download
            raise _rejected(UpdateReason("install_failed"), str(exc)) from None
        return info, manifest

    def _download(
        self, tuf: TufUpdater, directive: Directive, info: TargetFile, fetcher: ResumingFetcher
    ) -> Path:
        """The verified artifact's path. A broken download keeps what arrived (the fetcher's
        partial file) for the next directive to resume; refused bytes are discarded."""
        self._send(directive, UpdateState.DOWNLOADING)
        path = self._download_dir / directive.target.sha256
        try:
            tuf.download_target(info, filepath=str(path))
        except DownloadLengthMismatchError as exc:
            fetcher.discard_partial()
            raise _rejected(UpdateReason("artifact_too_long"), str(exc)) from None
        except LengthOrHashMismatchError as exc:
            fetcher.discard_partial()
            raise _rejected(UpdateReason("artifact_mismatch"), str(exc)) from None
        except (DownloadError, RepositoryError, OSError) as exc:
            path.unlink(missing_ok=True)
            failed = Ending(UpdateState.FAILED, UpdateReason("download_failed"), str(exc))
            raise _Done(failed) from None
        fetcher.discard_partial()
        if fetcher.resumed_from:
            _log.info("download of %s resumed at byte %d", info.path, fetcher.resumed_from)
        self._send(directive, UpdateState.DOWNLOADED)
        return path

    def _wait_for_window(self, directive: Directive) -> None:
        """Return holding the gate's install, or raise _Done(timed_out)."""
        reported: str | None = None
        while True:
            self._unless_withdrawn(directive)
            now = self._clock.wall()
            why = window_wait(directive, now, hall_is_open=self._hall_open(now))
            if why == WINDOW_OVER:
                raise _Done(Ending(UpdateState.TIMED_OUT, None, why))
            if why is None and not self._gate.try_begin_install():
                why = "session_active"
            if why is None:
                return
            if why != reported:
                reason = UpdateReason("session_active") if why == "session_active" else None
                self._send(directive, UpdateState.WAITING_WINDOW, reason, why)
                reported = why
            self._sleep(self._config.poll_s)

    def _unless_withdrawn(self, directive: Directive) -> None:
        """Raise _Done(canceled) if a verified withdrawal of the directive's rollout came
        after it (a higher seq). Verifies the withdrawals posted since the last call."""
        with self._pending_lock:
            posted, self._pending = list(self._pending), deque(maxlen=_MAX_PENDING_WITHDRAWALS)
        for payload in posted:
            self._note_withdrawal(payload)
        withdrawn = self._withdrawn.get(directive.rollout_id, 0)
        if withdrawn > directive.seq:
            raise _Done(Ending(UpdateState.CANCELED, None, f"withdrawn (seq {withdrawn})"))

    def _note_withdrawal(self, payload: bytes) -> None:
        if self._pinned is None:  # no refresh yet: nothing could have been withdrawn
            return
        try:
            withdrawal = verify_withdrawal(
                payload,
                pinned_key=self._pinned,
                terminal_id=self._config.terminal_id,
                now=self._clock.wall(),
            )
        except DirectiveRejected as exc:
            _log.warning("withdrawal refused: %s", exc)
            return
        rollout = withdrawal.rollout_id
        self._withdrawn[rollout] = max(self._withdrawn.pop(rollout, 0), withdrawal.seq)
        while len(self._withdrawn) > _MAX_WITHDRAWN_ROLLOUTS:
            del self._withdrawn[next(iter(self._withdrawn))]

    @staticmethod
    def _request(manifest: ReleaseManifest, artifact: Path) -> InstallRequest:
        return InstallRequest(
            artifact=str(artifact),
            package=manifest.package,
            version=manifest.version,
            release_counter=manifest.release_counter,
            health_argv=tuple(health_argv(manifest.health_check)),  # checked in _release
            health_within_s=float(manifest.health_check.timeout_s),
            parameters=dict(manifest.install.parameters),
        )

    def _stage_agent(
        self, directive: Directive, manifest: ReleaseManifest, artifact: Path
    ) -> Ending:
        """Stage an agent release in the agent's inactive slot; HEALTH_CHECK when staged."""
        slots = self._agent_slots
        if slots is None:  # _release refused it already
            return Ending(UpdateState.FAILED, UpdateReason("install_failed"), "no agent slots")
        self._send(directive, UpdateState.INSTALLING)
        try:
            slots.stage(
                self._request(manifest, artifact),
                rollout_id=directive.rollout_id,
                directive_seq=directive.seq,
                target=directive.target.path,
            )
        except ArchiveRefusedError as exc:
            return Ending(UpdateState.REJECTED, UpdateReason("unsafe_archive"), str(exc))
        except (InstallError, OSError) as exc:
            return Ending(UpdateState.FAILED, UpdateReason("install_failed"), str(exc))
        detail = f"agent {manifest.version} staged; on trial once the launcher starts it"
        return Ending(UpdateState.HEALTH_CHECK, None, detail)

    def _install(
        self, directive: Directive, manifest: ReleaseManifest, artifact: Path
    ) -> InstallOutcome:
        self._send(directive, UpdateState.INSTALLING)
        request = self._request(manifest, artifact)
        handler = _ReportingHandler(
            self._handlers[manifest.install.handler],
            lambda: self._send(directive, UpdateState.HEALTH_CHECK),
        )
        return run_install(handler, request)

    def _send(
        self,
        directive: Directive | None,
        state: UpdateState,
        reason: UpdateReason | None = None,
        detail: str | None = None,
    ) -> None:
        body = UpdateBody(
            rollout_id=directive.rollout_id if directive else None,
            directive_seq=directive.seq if directive else 0,
            attempt=directive.attempt if directive else None,
            target=directive.target.path if directive else None,
            state=state,
            reason=reason,
            detail=_printable(detail) if detail else None,
        )
        self._report(body)
