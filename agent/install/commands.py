"""The two commands an install runs: the service restart and the application's health check.

``run_restart(argv, timeout_s)`` runs the configured restart command once with a
timeout and raises ``RestartError`` (timeout, non-zero exit, not found); the child
is killed when its time is up. ``wait_healthy(argv, within_s, ...)`` runs the health
command until it exits 0 or ``within_s`` seconds have passed, each run bounded by
what is left, and returns a ``HealthReport``; ``peripherals_answer`` is the hook for
"the peripherals the manifest lists answer" (the updater passes one backed by the
agent's probes). Neither ever raises for what the command does. Both pass argv as
a list (no shell) with stdin and stdout closed, stderr's last 200 characters kept
for the report, and the command in its own process group, killed as a whole at
the timeout.
``health_argv(check)`` maps a manifest ``HealthCheck`` onto an argv: ``command``
(split like a shell, never run by one), ``service`` (``systemctl is-active``),
``http`` (a GET by the running Python, 2xx is healthy; loopback URLs only, so a
manifest cannot make terminals probe the network).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.install.errors import RestartError
from firmware_manifests.release_manifest import HealthCheck

__all__ = ["HealthReport", "PeripheralCheck", "health_argv", "run_restart", "wait_healthy"]

_TAIL = 200
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_HTTP_CHECK = (
    "import sys, urllib.request\n"
    "try:\n"
    "    status = urllib.request.urlopen(sys.argv[1], timeout=10).status\n"
    "except Exception as exc:\n"
    "    sys.exit(f'GET failed: {exc}')\n"
    "sys.exit(0 if 200 <= status < 300 else f'HTTP {status}')\n"
)

PeripheralCheck = Callable[[Sequence[str]], Sequence[str]]
"""Given the peripheral names a release needs, the names of those that do not answer."""


@dataclass(frozen=True)
class HealthReport:
    """Did the release prove healthy; ``detail`` says why not (or how many attempts it took)."""

    ok: bool
    detail: str


def _run(argv: Sequence[str], timeout_s: float) -> tuple[int, str]:
    """Exit code and stderr tail of one run; on timeout its whole process group is killed.

    stderr goes to a temporary file, not a pipe: memory stays bounded and a child
    that leaves a grandchild holding the pipe cannot make us wait past the timeout.
    Raises subprocess.TimeoutExpired and OSError.
    """
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen(  # noqa: S603 - argv from the settings or the signed manifest
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        try:
            code = child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            raise
        size = err.seek(0, os.SEEK_END)
        err.seek(max(0, size - _TAIL))
        return code, err.read().decode("utf-8", "replace").strip()


def run_restart(argv: Sequence[str], timeout_s: float) -> None:
    """Run the restart command; raises RestartError on timeout, non-zero exit or no such file."""
    try:
        code, stderr = _run(argv, timeout_s)
    except subprocess.TimeoutExpired:
        raise RestartError(argv, f"timed out after {timeout_s} s") from None
    except OSError as exc:
        raise RestartError(argv, f"cannot run: {exc.strerror or exc}") from None
    if code != 0:
        raise RestartError(argv, f"exit {code}: {stderr}")


def health_argv(check: HealthCheck) -> list[str]:
    """The argv that checks a manifest's health check; ValueError for a kind not supported here."""
    if check.kind == "command":
        return shlex.split(check.target)
    if check.kind == "service":
        return ["systemctl", "is-active", "--quiet", check.target]
    url = urllib.parse.urlsplit(check.target)
    if url.scheme != "http" or url.hostname not in _LOOPBACK:
        raise ValueError(f"an http health check must be http:// on loopback, not {check.target!r}")
    return [sys.executable, "-c", _HTTP_CHECK, check.target]


def wait_healthy(
    argv: Sequence[str],
    within_s: float,
    *,
    interval_s: float = 1.0,
    required_peripherals: Sequence[str] = (),
    peripherals_answer: PeripheralCheck | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> HealthReport:
    """Run the health command until it succeeds within ``within_s``; then check peripherals."""
    deadline = monotonic() + within_s
    attempts = timed_out = 0
    last = "never completed"
    while True:
        left = deadline - monotonic()
        if left <= 0:
            cut = f", {timed_out} cut off at the deadline" if timed_out else ""
            return HealthReport(
                False, f"not healthy within {within_s} s ({attempts} runs{cut}): {last}"
            )
        attempts += 1
        try:
            code, stderr = _run(argv, left)
        except subprocess.TimeoutExpired:
            timed_out += 1
            continue
        except OSError as exc:
            return HealthReport(False, f"health command cannot run: {exc.strerror or exc}")
        if code == 0:
            break
        last = f"exit {code}: {stderr}"
        sleep(min(interval_s, max(deadline - monotonic(), 0.0)))
    if required_peripherals and peripherals_answer is None:
        return HealthReport(False, "the release lists peripherals but nothing can check them")
    if required_peripherals and peripherals_answer is not None:
        silent = list(peripherals_answer(required_peripherals))
        if silent:
            return HealthReport(False, f"peripherals do not answer: {', '.join(silent)}")
    return HealthReport(True, f"healthy after {attempts} run(s)")
