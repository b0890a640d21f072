"""Start a private Prometheus with the project's scrape config and alert rules (tests, demo).

Runs ``prometheus --config.file=<generated.yml>`` with its TSDB, log and
generated files under one work directory, listening on 127.0.0.1 only. The
generated configuration is ``monitoring/prometheus/prometheus.yml`` with the
``kioskfleet`` job pointed at the given targets, the ``prometheus`` job at this
process, absolute rule file paths, and optionally shorter scrape/evaluation
intervals; ``shortened_rules`` makes a copy of the rules file whose ``for:``
durations a test can afford to wait for.

It never touches the system Prometheus (``/etc/prometheus``, its data or its
service) and never sends alerts anywhere unless Alertmanager addresses are given.
Needs PyYAML (the ``dev`` extra, which ``make test`` and ``make demo`` install).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from kioskfleet.local_broker import free_port
from kioskfleet.shipped_files import shipped_file

__all__ = [
    "UI_PREFIXES",
    "LocalPrometheus",
    "PrometheusApiError",
    "PrometheusError",
    "local_config",
    "project_prometheus_config",
    "project_rules_file",
    "prometheus_binary",
    "shortened_rules",
]

KIOSKFLEET_JOB = "kioskfleet"
PROMETHEUS_JOB = "prometheus"
_DEBIAN_BINARY = "/usr/bin/prometheus"
UI_PREFIXES = ("", "/classic")
"""Where a Prometheus 2.x serves its web UI: the React UI at ``/``, the classic one under
``/classic`` (the only one in Debian's package)."""


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not start, or its configuration cannot be built.

    Subclass: ``PrometheusApiError`` (an HTTP API call failed).
    """


class PrometheusApiError(PrometheusError):
    """An HTTP API call failed: unreachable, a non-2xx answer, or ``status`` not ``success``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"Prometheus API {path}: {reason}")
        self.path = path
        self.reason = reason


def prometheus_binary() -> str | None:
    """The ``prometheus`` executable on PATH (or Debian's ``/usr/bin/prometheus``); None if absent."""
    found = shutil.which("prometheus")
    if found:
        return found
    return _DEBIAN_BINARY if Path(_DEBIAN_BINARY).is_file() else None


def project_rules_file() -> Path:
    """The alert rules, from the checkout or the installed package."""
    return shipped_file("kioskfleet.rules.yml")


def project_prometheus_config() -> Path:
    """``monitoring/prometheus/prometheus.yml``, from the checkout or the installed package."""
    return shipped_file("prometheus.yml")


def shortened_rules(rules_text: str, durations: Mapping[str, str]) -> str:
    """The rules file ``rules_text`` with ``for:`` replaced for the alerts named in ``durations``.

    Everything else (expressions, labels, annotations, order) is kept. Pure: text
    in, text out. Raises ValueError if an alert named in ``durations`` is not in
    the file (a renamed alert must not silently keep its long delay).
    """
    document = yaml.safe_load(rules_text)
    if not isinstance(document, dict) or not isinstance(document.get("groups"), list):
        raise ValueError("not a Prometheus rules file (no top-level `groups` list)")
    missing = set(durations)
    for group in document["groups"]:
        for rule in group.get("rules", []):
            name = rule.get("alert")
            if name in durations:
                rule["for"] = durations[name]
                missing.discard(name)
    if missing:
        raise ValueError(f"no such alert in the rules file: {', '.join(sorted(missing))}")
    return str(yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1000))


def local_config(
    kioskfleet_targets: Sequence[str],
    *,
    self_target: str,
    rule_files: Sequence[Path],
    scrape_interval: str | None = None,
    evaluation_interval: str | None = None,
    alertmanagers: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
    token_file: Path | None = None,
    ca_file: Path | None = None,
) -> dict[str, Any]:
    """A Prometheus configuration derived from the project's ``prometheus.yml`` (or ``base``).

    The ``kioskfleet`` job scrapes ``kioskfleet_targets`` (``host:port``), the
    ``prometheus`` job scrapes ``self_target``, ``rule_files`` become absolute
    paths, and the ``alerting`` block lists ``alertmanagers`` (dropped when
    empty: nothing is sent). ``scrape_interval`` replaces the global and every
    job's interval and timeout; ``evaluation_interval`` the rule evaluation
    interval. ``token_file`` (a file holding a viewer token) becomes the
    ``kioskfleet`` job's bearer ``credentials_file``; without it the job sends no
    token (for a server with ``metrics_require_token`` off). ``ca_file`` (the fleet
    chain) makes the job scrape over HTTPS, verifying the server with it. Pure apart from
    reading the project file when ``base`` is None.
    Raises PrometheusError if the base has no ``kioskfleet`` job.
    """
    if base is None:
        base = yaml.safe_load(project_prometheus_config().read_text())
    config: dict[str, Any] = json.loads(json.dumps(base))  # deep copy of plain data
    config["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
    if alertmanagers:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": [*alertmanagers]}]}]
        }
    else:
        config.pop("alerting", None)
    glob = config.setdefault("global", {})
    if scrape_interval is not None:
        glob["scrape_interval"] = scrape_interval
        glob["scrape_timeout"] = scrape_interval
    if evaluation_interval is not None:
        glob["evaluation_interval"] = evaluation_interval
    jobs = config.setdefault("scrape_configs", [])
    names = [job.get("job_name") for job in jobs]
    if KIOSKFLEET_JOB not in names:
        raise PrometheusError(f"the base configuration has no `{KIOSKFLEET_JOB}` scrape job")
    if PROMETHEUS_JOB not in names:
        jobs.append({"job_name": PROMETHEUS_JOB})
    for job in jobs:
        if job["job_name"] == KIOSKFLEET_JOB:
            job["static_configs"] = [{"targets": [*kioskfleet_targets]}]
            job.pop("authorization", None)  # the base's path is relative to the base's folder
            if token_file is not None:
                job["authorization"] = {
                    "type": "Bearer",
                    "credentials_file": str(Path(token_file).resolve()),
                }
            if ca_file is not None:
                job["scheme"] = "https"
                job["tls_config"] = {"ca_file": str(Path(ca_file).resolve())}
        elif job["job_name"] == PROMETHEUS_JOB:
            job["static_configs"] = [{"targets": [self_target]}]
        if scrape_interval is not None:
            job["scrape_interval"] = scrape_interval
            job["scrape_timeout"] = scrape_interval
    return config


class LocalPrometheus:
    """A Prometheus process on 127.0.0.1:``port`` scraping kioskfleet servers, with the project's rules.

    ``rule_files`` defaults to the project's rules file; pass a shortened copy
    (``shortened_rules``) in tests. ``token_file`` holds the viewer token it sends to
    ``/metrics`` (see ``local_config``). Files live under ``workdir``: the generated
    ``prometheus.yml``, ``data/`` (TSDB) and ``prometheus.log``.
    """

    def __init__(
        self,
        workdir: Path,
        kioskfleet_targets: Sequence[str],
        *,
        port: int | None = None,
        rule_files: Sequence[Path] | None = None,
        scrape_interval: str | None = None,
        evaluation_interval: str | None = None,
        alertmanagers: Sequence[str] = (),
        retention: str = "1d",
        token_file: Path | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.kioskfleet_targets = list(kioskfleet_targets)
        self.rule_files = list(rule_files) if rule_files is not None else [project_rules_file()]
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.alertmanagers = list(alertmanagers)
        self.retention = retention
        self.token_file = token_file
        self.ca_file = ca_file
        self.config_path = workdir / "prometheus.yml"
        self.data_path = workdir / "data"
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._ui_prefix: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self.proc is not None and self.proc.poll() is None

    def ui_page(self, page: str) -> str:
        """The URL of the web UI's ``page`` (``alerts``, ``targets``, ``graph``) as this
        Prometheus serves it, found by asking it (see ``ui_prefix``)."""
        return f"{self.url}{self.ui_prefix()}/{page}"

    @property
    def alerts_page(self) -> str:
        """The web UI's alerts page (pending and firing alerts with their labels)."""
        return self.ui_page("alerts")

    @property
    def targets_page(self) -> str:
        """The web UI's targets page (each scrape target's health and last error)."""
        return self.ui_page("targets")

    def ui_prefix(self) -> str:
        """``""`` when the running Prometheus serves its web UI at ``/alerts``, ``/classic``
        when it serves only the classic UI under ``/classic/...`` (Debian's prometheus 2.x
        is built without the React UI: ``/alerts`` is a 404 there).

        Decided once by GET requests to the running server (HEAD is a 405 on the classic
        pages) and remembered. Raises PrometheusError if it serves neither.
        """
        if self._ui_prefix is None:
            for prefix in UI_PREFIXES:
                if self._get_status(f"{prefix}/alerts") == 200:
                    self._ui_prefix = prefix
                    break
            else:
                raise PrometheusError(f"{self.url} serves neither /alerts nor /classic/alerts")
        return self._ui_prefix

    def write_config(self) -> Path:
        """Write the generated ``prometheus.yml`` (temp file + os.replace) and return its path."""
        config = local_config(
            self.kioskfleet_targets,
            self_target=f"127.0.0.1:{self.port}",
            rule_files=self.rule_files,
            scrape_interval=self.scrape_interval,
            evaluation_interval=self.evaluation_interval,
            alertmanagers=self.alertmanagers,
            token_file=self.token_file,
            ca_file=self.ca_file,
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = self.config_path.with_suffix(".yml.tmp")
        tmp.write_text(
            "# Generated by kioskfleet.local_prometheus; edits are overwritten.\n"
            + yaml.safe_dump(config, sort_keys=False)
        )
        tmp.replace(self.config_path)
        return self.config_path

    def start(self, timeout: float = 30.0) -> LocalPrometheus:
        """Start Prometheus and wait until ``/-/ready`` answers 200.

        Raises PrometheusError if the binary is missing, the process exits (a bad
        configuration or rule file: its log is in the message) or it is not ready
        within ``timeout``.
        """
        binary = prometheus_binary()
        if binary is None:
            raise PrometheusError("prometheus is not installed (apt-get install prometheus)")
        config = self.write_config()
        self.data_path.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - fixed binary, generated config
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.data_path}",
                f"--storage.tsdb.retention.time={self.retention}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise PrometheusError(f"prometheus exited with {code}: {self._log_tail()}")
            if self._ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise PrometheusError(
            f"prometheus was not ready on {self.url} within {timeout}s: {self._log_tail()}"
        )

    def stop(self) -> None:
        """Terminate (SIGTERM, then SIGKILL after 10 s) and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL, then release the log file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stop()

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP API -------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """``data`` of a GET on the HTTP API (``/api/v1/...``). Raises PrometheusApiError."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:  # noqa: S310 - loopback URL we built
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise PrometheusApiError(path, f"HTTP {exc.code}: {_read_error(exc)}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PrometheusApiError(path, str(exc)) from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            raise PrometheusApiError(path, f"unexpected answer {body!r}")
        return body.get("data")

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (``pending`` and ``firing``) with ``labels``, ``annotations``, ``state``."""
        data = self.api("/api/v1/alerts")
        return list(data["alerts"])

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the vector's samples (``metric`` labels, ``value`` [time, "text"])."""
        data = self.api("/api/v1/query", query=expr)
        if data.get("resultType") != "vector":
            raise PrometheusApiError("/api/v1/query", f"{expr!r} is not an instant vector")
        return list(data["result"])

    def alerting_rules(self) -> dict[str, dict[str, Any]]:
        """The loaded alerting rules by name (``query``, ``duration`` in seconds, ``health``, ...)."""
        data = self.api("/api/v1/rules", type="alert")
        return {rule["name"]: rule for group in data["groups"] for rule in group["rules"]}

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets (``labels``, ``health``, ``lastError``, ``scrapeUrl``)."""
        data = self.api("/api/v1/targets", state="active")
        return list(data["activeTargets"])

    # --- internals ------------------------------------------------------------------------

    def _get_status(self, path: str) -> int | None:
        """The HTTP status of a GET on ``path``; None if nothing answered."""
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:  # noqa: S310 - loopback URL we built
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return None

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:  # noqa: S310 - loopback URL we built
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def _read_error(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read().decode(errors="replace")[:500]
    except OSError:
        return exc.reason if isinstance(exc.reason, str) else str(exc.reason)
