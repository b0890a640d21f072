"""Settings hygiene on both sides: a misspelt KIOSKFLEET_* variable is refused, with the nearest
valid name; names that belong to others pass; every limit is a setting; what CI, the demo and
the docs set is a name someone reads."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import agent.config
from agent.config import AgentConfigError, env_variables, load_agent_config
from agent.main import sender_settings
from protocol.codec import DEFAULT_MAX_PAYLOAD_BYTES
from server.config import (
    ENV_PREFIX,
    FOREIGN_VARIABLES,
    Settings,
    is_foreign,
    setting_variables,
    unknown_variables,
)
from server.errors import InvalidSettingsError, UnknownSettingError
from server.main import mqtt_options

ROOT = Path(__file__).resolve().parents[2]
AGENT_MINIMAL = 'terminal_id = "T-1"\nhall = "h"\nregion = "r"\nmodel = "m"\n'


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


# --- server -----------------------------------------------------------------------------------


def test_a_misspelt_server_variable_is_refused_naming_the_nearest_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KIOSKFLEET_DB_FLUSH_INTERVAL", "2")  # the _S is missing
    monkeypatch.setenv("KIOSKFLEET_NOTHING_LIKE_IT", "1")
    with pytest.raises(UnknownSettingError) as caught:
        Settings.from_env()
    assert caught.value.names == ("KIOSKFLEET_DB_FLUSH_INTERVAL", "KIOSKFLEET_NOTHING_LIKE_IT")
    assert caught.value.suggestions == {
        "KIOSKFLEET_DB_FLUSH_INTERVAL": "KIOSKFLEET_DB_FLUSH_INTERVAL_S",
        "KIOSKFLEET_NOTHING_LIKE_IT": None,
    }
    assert "KIOSKFLEET_DB_FLUSH_INTERVAL (did you mean KIOSKFLEET_DB_FLUSH_INTERVAL_S?)" in str(
        caught.value
    )


def test_a_misspelt_variable_in_the_env_file_is_refused_too(tmp_path: Path) -> None:
    env = tmp_path / "server.env"
    env.write_text("KIOSKFLEET_HTTP_PORT=9999\nkioskfleet_http_prot=1\nOTHER_TOOL_SETTING=x\n")
    with pytest.raises(UnknownSettingError) as caught:
        Settings.from_env(env)
    assert caught.value.suggestions == {"kioskfleet_http_prot": "KIOSKFLEET_HTTP_PORT"}


def test_the_agent_and_test_suite_variables_are_not_the_server_s_to_refuse(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("KIOSKFLEET_AGENT_TERMINAL_ID", "KIOSKFLEET_TEST_POSTGRES_URL"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("KIOSKFLEET_SKIP_POSTGRES", "1")
    monkeypatch.setenv("kioskfleet_http_port", "8181")  # read case-insensitively, so valid
    env = tmp_path / "server.env"
    env.write_text("KIOSKFLEET_AGENT_LIMITS__MAX_CONNECTING=3\n")
    assert Settings.from_env(env).http_port == 8181
    # An exact foreign name is no prefix: what merely starts with it is still refused.
    assert set(unknown_variables(["KIOSKFLEET_SKIP_POSTGRES_NOW"])) == {
        "KIOSKFLEET_SKIP_POSTGRES_NOW"
    }


def test_invalid_server_values_are_a_config_error_naming_each_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KIOSKFLEET_BROKER_URL", "ftp://nope")
    monkeypatch.setenv("KIOSKFLEET_HTTP_PORT", "70000")
    with pytest.raises(InvalidSettingsError) as caught:
        Settings.from_env()
    assert [name for name, _ in caught.value.problems] == [
        "KIOSKFLEET_BROKER_URL",
        "KIOSKFLEET_HTTP_PORT",
    ]
    assert "mqtt:// or mqtts://" in str(caught.value)


def test_no_server_setting_falls_under_a_name_that_belongs_to_someone_else() -> None:
    assert sorted(n for n in setting_variables() if is_foreign(n)) == []
    assert agent.config.ENV_PREFIX in FOREIGN_VARIABLES


def test_the_server_limits_that_were_hard_coded_are_settings_with_the_old_defaults() -> None:
    s = Settings()
    assert (s.db_stall_after_s, s.mqtt_drain_timeout_s, s.http_keepalive_timeout_s) == (5, 2, 5)
    tuned = Settings(mqtt_drain_timeout_s=0.5)
    assert mqtt_options(tuned).drain_timeout_s == 0.5


# --- agent ------------------------------------------------------------------------------------


def test_a_misspelt_agent_variable_is_refused_naming_the_nearest_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(AGENT_MINIMAL)
    monkeypatch.setenv("KIOSKFLEET_AGENT_REPORT_INTERVAL", "30")
    monkeypatch.setenv("KIOSKFLEET_AGENT_LIMITS__MAX_QUEUED", "50")
    with pytest.raises(AgentConfigError) as caught:
        load_agent_config(toml)
    assert caught.value.problems == [
        (
            "KIOSKFLEET_AGENT_LIMITS__MAX_QUEUED",
            "unknown variable; did you mean KIOSKFLEET_AGENT_LIMITS__MAX_QUEUED_MESSAGES?",
        ),
        (
            "KIOSKFLEET_AGENT_REPORT_INTERVAL",
            "unknown variable; did you mean KIOSKFLEET_AGENT_REPORT_INTERVAL_S?",
        ),
    ]


def test_every_agent_field_and_nested_limit_has_a_variable_that_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert {
        "KIOSKFLEET_AGENT_REPORT_INTERVAL_S",
        "KIOSKFLEET_AGENT_PROBES",
        "KIOSKFLEET_AGENT_LIMITS",
        "KIOSKFLEET_AGENT_LIMITS__MAX_MESSAGE_BYTES",
        "KIOSKFLEET_AGENT_OUTBOX__DRAIN_RATE_PER_S",
    } <= env_variables()
    toml = tmp_path / "agent.toml"
    toml.write_text(AGENT_MINIMAL)
    monkeypatch.setenv("KIOSKFLEET_AGENT_LIMITS__MAX_MESSAGE_BYTES", "4096")
    monkeypatch.setenv("KIOSKFLEET_DATABASE_URL", "sqlite:///x.db")  # the server's: not looked at
    assert load_agent_config(toml).limits.max_message_bytes == 4096


def test_the_agent_message_cap_comes_from_its_config_and_defaults_to_the_wire_limit(
    tmp_path: Path,
) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(AGENT_MINIMAL)
    default = load_agent_config(toml)
    assert default.limits.max_message_bytes == DEFAULT_MAX_PAYLOAD_BYTES
    assert sender_settings(default).max_message_bytes == DEFAULT_MAX_PAYLOAD_BYTES
    toml.write_text(AGENT_MINIMAL + "[limits]\nmax_message_bytes = 2048\n")
    assert sender_settings(load_agent_config(toml)).max_message_bytes == 2048


# --- what the repository sets or documents ---------------------------------------------------

_SCANNED = [
    ROOT / ".ci" / "run",
    ROOT / "Makefile",
    ROOT / "README.md",
    ROOT / "agent.example.toml",
    *sorted((ROOT / "scripts").iterdir()),
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "helm").rglob("*")),
]


def _read_by_someone(name: str) -> bool:
    if name.startswith(agent.config.ENV_PREFIX):  # the agent's: must be one it reads
        return name in env_variables() or name == agent.config.ENV_PREFIX
    return name in setting_variables() or is_foreign(name) or name == ENV_PREFIX


def test_every_kioskfleet_variable_ci_the_demo_and_the_docs_name_is_read_by_someone() -> None:
    unread = sorted(
        {
            f"{path.relative_to(ROOT)}: {name}"
            for path in _SCANNED
            if path.is_file()
            for name in re.findall(r"KIOSKFLEET_[A-Z0-9_]*", path.read_text(errors="replace"))
            if not _read_by_someone(name)
        }
    )
    assert unread == []
