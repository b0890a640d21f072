"""The agent's [updates] section: repository URLs derived or given, refused when unusable."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfigError, load_agent_config

BASE = {"terminal_id": "T-1", "hall": "h", "region": "r", "model": "KX-100"}


def test_updates_are_off_by_default_and_the_example_file_loads() -> None:
    config = load_agent_config(Path("agent.example.toml"))
    assert config.updates.enabled is False


def test_the_server_url_gives_the_tuf_metadata_and_targets_urls() -> None:
    updates = load_agent_config(
        None, **BASE, updates={"enabled": True, "server_url": "https://fleet.example:8443/"}
    ).updates
    assert updates.metadata_url == "https://fleet.example:8443/tuf/metadata/"
    assert updates.targets_url == "https://fleet.example:8443/tuf/targets/"


def test_explicit_base_urls_override_the_server_url() -> None:
    updates = load_agent_config(
        None,
        **BASE,
        updates={
            "enabled": True,
            "server_url": "https://fleet.example",
            "target_base_url": "https://mirror.example/t/",
        },
    ).updates
    assert updates.metadata_url == "https://fleet.example/tuf/metadata/"
    assert updates.targets_url == "https://mirror.example/t/"


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ({"enabled": True}, "needs server_url"),
        ({"enabled": True, "server_url": "http://fleet.example"}, "must be https://"),
        ({"enabled": True, "server_url": "https://f", "restart_command": []}, "restart_command"),
    ],
)
def test_an_enabled_updater_without_a_usable_repository_is_refused(
    updates: dict[str, object], message: str
) -> None:
    with pytest.raises(AgentConfigError, match=message):
        load_agent_config(None, **BASE, updates=updates)
