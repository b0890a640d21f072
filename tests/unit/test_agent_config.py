"""Loading agent.toml with environment overrides, and the errors a bad config gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import AgentConfigError, load_agent_config, parse_broker_url
from agent.probes.simulated import SimulatedProbeSpec

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "agent.example.toml"

MINIMAL = """
terminal_id = "T-0001"
hall = "hall-01"
region = "region-1"
model = "KF-200"
"""


@pytest.fixture(autouse=True)
def _no_agent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("KIOSKFLEET_AGENT_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_the_example_file_loads() -> None:
    config = load_agent_config(EXAMPLE)
    assert config.broker.port == 1883
    assert config.probes


def test_defaults_fill_what_the_file_leaves_out(tmp_path: Path) -> None:
    config = load_agent_config(write(tmp_path, MINIMAL))
    assert config.broker_url == "mqtt://127.0.0.1:1883"
    assert (config.report_interval_s, config.probe_interval_s, config.keepalive_s) == (60, 5, 30)
    assert (config.reconnect_min_s, config.reconnect_max_s) == (1, 60)
    assert config.session_expiry_s == 7 * 86400
    assert config.agent_version


def test_environment_wins_over_the_file_including_nested_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINIMAL + "report_interval_s = 30\n[limits]\nmax_queued_messages = 50\n")
    monkeypatch.setenv("KIOSKFLEET_AGENT_REPORT_INTERVAL_S", "15")
    monkeypatch.setenv("KIOSKFLEET_AGENT_LIMITS__MAX_CONNECTING", "3")
    config = load_agent_config(path)
    assert config.report_interval_s == 15
    assert config.limits.max_queued_messages == 50
    assert config.limits.max_connecting == 3


def test_the_environment_alone_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "TERMINAL_ID": "T-9",
        "HALL": "h",
        "REGION": "r",
        "MODEL": "m",
        "PROBES": '[{"type": "simulated", "name": "qr", "scenario": "qr_scanner"}]',
    }.items():
        monkeypatch.setenv("KIOSKFLEET_AGENT_" + key, value)
    config = load_agent_config(None)
    assert config.terminal_id == "T-9"
    assert isinstance(config.probes[0], SimulatedProbeSpec)


def test_a_table_as_json_takes_its_subvariables_over_it_and_a_nested_list_is_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINIMAL + "[limits]\nmax_queued_messages = 50\nmax_connecting = 9\n")
    monkeypatch.setenv(
        "KIOSKFLEET_AGENT_LIMITS", '{"max_connecting": 3, "max_inflight_messages": 7}'
    )
    monkeypatch.setenv("kioskfleet_agent_limits__max_inflight_messages", "5")  # any case
    monkeypatch.setenv("KIOSKFLEET_AGENT_UPDATES__RESTART_COMMAND", '["systemctl", "restart", "k"]')
    monkeypatch.setenv("KIOSKFLEET_AGENT_OUTBOX__REQUIRE_COMMIT_CONFIRMATION", "false")
    config = load_agent_config(path, report_interval_s=12)

    assert config.limits.max_queued_messages == 50  # the file's, where nothing overrides it
    assert (config.limits.max_connecting, config.limits.max_inflight_messages) == (3, 5)
    assert config.updates.restart_command == ["systemctl", "restart", "k"]
    assert config.outbox.require_commit_confirmation is False
    assert config.report_interval_s == 12


def test_a_list_variable_that_is_not_json_is_a_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KIOSKFLEET_AGENT_PROBES", "[{not json")
    with pytest.raises(AgentConfigError) as caught:
        load_agent_config(None, terminal_id="T-1", hall="h", region="r", model="m")
    assert caught.value.problems[0][0] == "KIOSKFLEET_AGENT_PROBES"
    assert "not valid JSON" in caught.value.problems[0][1]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("KIOSKFLEET_AGENT_BROKER_URLS", "null", "is null: unset the variable"),
        ("KIOSKFLEET_AGENT_LIMITS", '{"max_connecting": ' + "1" * 5000 + "}", "not valid JSON"),
    ],
)
def test_a_json_variable_that_is_null_or_unreadable_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    path = write(tmp_path, MINIMAL + 'broker_urls = ["mqtt://n1", "mqtt://n2"]\n')
    monkeypatch.setenv(name, value)
    with pytest.raises(AgentConfigError) as caught:
        load_agent_config(path)
    assert caught.value.problems[0][0] == name
    assert message in caught.value.problems[0][1]


def test_a_file_with_a_number_python_cannot_read_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError) as caught:
        load_agent_config(write(tmp_path, MINIMAL + "keepalive_s = " + "1" * 5000 + "\n"))
    assert caught.value.problems[0][0] == "<file>"


def test_a_table_variable_that_is_no_json_object_cannot_take_its_subvariables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KIOSKFLEET_AGENT_LIMITS", "[1, 2]")
    monkeypatch.setenv("KIOSKFLEET_AGENT_LIMITS__MAX_CONNECTING", "3")
    with pytest.raises(AgentConfigError) as caught:
        load_agent_config(None, terminal_id="T-1", hall="h", region="r", model="m")
    assert caught.value.problems == [
        (
            "KIOSKFLEET_AGENT_LIMITS__MAX_CONNECTING",
            "KIOSKFLEET_AGENT_LIMITS must be a JSON object to take"
            " KIOSKFLEET_AGENT_LIMITS__MAX_CONNECTING",
        )
    ]


def test_an_agent_without_updates_or_enrollment_loads_no_tuf_cryptography_or_settings_library() -> None:  # fmt: skip
    """The footprint (docs/benchmarks.md, "One agent's footprint"): what a terminal does
    not use is imported where it is used, never by ``kioskfleet agent`` at start."""
    code = "import json, sys, agent.main; print(json.dumps(sorted(sys.modules)))"
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    roots = {name.split(".")[0] for name in json.loads(found.stdout)}
    assert "agent" in roots  # the import happened
    assert roots & {"cryptography", "tuf", "urllib3", "pydantic_settings", "dotenv"} == set()


def test_simulated_probes_parse_from_toml_tables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + '[[probes]]\ntype = "simulated"\nname = "receipt_printer"\n'
        + 'scenario = "receipt_printer"\nfault_rate = 50\n',
    )
    (spec,) = load_agent_config(path).probes
    assert isinstance(spec, SimulatedProbeSpec)
    assert spec.build(lambda: 0.0).read().name == "receipt_printer"


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('terminal_id = "has space"', "terminal_id"),
        ('broker_url = "http://broker:1883"', "broker_url"),
        ('broker_url = "mqtt://:1883"', "broker_url"),
        ("keepalive_s = 0", "keepalive_s"),
        ("report_interval_s = -1", "report_interval_s"),
        ('unknown_setting = "x"', "unknown_setting"),
    ],
)
def test_an_invalid_value_names_its_field(tmp_path: Path, line: str, field: str) -> None:
    text = "\n".join(
        ln for ln in MINIMAL.splitlines() if not ln.startswith(line.split(" ")[0] + " ")
    )
    with pytest.raises(AgentConfigError) as info:
        load_agent_config(write(tmp_path, text + "\n" + line + "\n"))
    assert field in [f for f, _ in info.value.problems]
    assert field in str(info.value)


def test_a_missing_required_field_says_how_to_set_it(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match="hall: is required"):
        load_agent_config(write(tmp_path, 'terminal_id = "T-1"\nregion = "r"\nmodel = "m"\n'))


def test_reconnect_bounds_must_be_ordered(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match="reconnect_max_s"):
        load_agent_config(write(tmp_path, MINIMAL + "reconnect_min_s = 10\nreconnect_max_s = 5\n"))


def test_tls_files_require_an_mqtts_broker(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match="mqtts"):
        load_agent_config(write(tmp_path, MINIMAL + 'tls_ca_file = "/etc/ca.pem"\n'))
    config = load_agent_config(
        write(tmp_path, MINIMAL + 'broker_url = "mqtts://fleet.example"\ntls_ca_file = "/ca.pem"\n')
    )
    assert (config.broker.host, config.broker.port, config.broker.tls) == (
        "fleet.example",
        8883,
        True,
    )


def test_a_missing_or_broken_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match="does not exist"):
        load_agent_config(tmp_path / "nope.toml")
    with pytest.raises(AgentConfigError):
        load_agent_config(write(tmp_path, "terminal_id = \n"))


def test_broker_urls_parse_with_default_ports() -> None:
    assert parse_broker_url("mqtt://10.0.0.5").port == 1883
    assert parse_broker_url("mqtts://b:9000").port == 9000
    with pytest.raises(ValueError, match="credentials"):
        parse_broker_url("mqtt://user:pw@b")


# --- several brokers (failover) ---------------------------------------------------------------


def test_broker_urls_from_the_file_give_every_broker_in_order(tmp_path: Path) -> None:
    path = write(
        tmp_path, MINIMAL + 'broker_urls = ["mqtt://n1:1883", "mqtt://n2", "mqtt://n3:1884"]\n'
    )
    config = load_agent_config(path)
    assert [(b.host, b.port) for b in config.brokers] == [("n1", 1883), ("n2", 1883), ("n3", 1884)]
    assert config.broker == config.brokers[0]


def test_broker_urls_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIOSKFLEET_AGENT_BROKER_URLS", '["mqtts://n1", "mqtts://n2"]')
    config = load_agent_config(None, terminal_id="T-1", hall="h", region="r", model="m")
    assert [b.url for b in config.brokers] == ["mqtts://n1:8883", "mqtts://n2:8883"]


def test_broker_url_alone_is_the_one_element_list(tmp_path: Path) -> None:
    config = load_agent_config(write(tmp_path, MINIMAL + 'broker_url = "mqtt://solo:1999"\n'))
    assert [b.url for b in config.brokers] == ["mqtt://solo:1999"]
    assert config.broker_urls is None


@pytest.mark.parametrize(
    ("lines", "field", "message"),
    [
        (
            'broker_url = "mqtt://a"\nbroker_urls = ["mqtt://b"]',
            "<config>",
            "set broker_url or broker_urls, not both",
        ),
        ("broker_urls = []", "broker_urls", "at least 1 item"),
        (
            "broker_urls = [" + ", ".join(f'"mqtt://n{i}"' for i in range(17)) + "]",
            "broker_urls",
            "at most 16 items",
        ),
        ('broker_urls = ["mqtt://a", "http://b"]', "broker_urls.1", "mqtt:// or mqtts://"),
        ('broker_urls = ["mqtt://a", "mqtts://b"]', "<config>", "all be mqtt:// or all mqtts://"),
        ('broker_urls = ["mqtt://a", "mqtt://a:1883"]', "<config>", "names a broker twice"),
    ],
)
def test_broker_urls_that_cannot_work_are_refused_naming_why(
    tmp_path: Path, lines: str, field: str, message: str
) -> None:
    with pytest.raises(AgentConfigError) as info:
        load_agent_config(write(tmp_path, MINIMAL + lines + "\n"))
    assert [(f, m) for f, m in info.value.problems if message in m] != []
    assert field in [f for f, _ in info.value.problems]


def test_tls_files_apply_to_every_broker_of_broker_urls(tmp_path: Path) -> None:
    text = MINIMAL + 'broker_urls = ["mqtts://n1", "mqtts://n2"]\ntls_ca_file = "/ca.pem"\n'
    config = load_agent_config(write(tmp_path, text))
    assert all(b.tls for b in config.brokers)
    with pytest.raises(AgentConfigError, match="mqtts"):
        load_agent_config(
            write(tmp_path, MINIMAL + 'broker_urls = ["mqtt://n1"]\ntls_ca_file = "/ca.pem"\n')
        )
