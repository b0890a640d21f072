"""The release manifest: its schema file matches the model, bounds hold, bad input is named."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_manifests.release_manifest import (
    CUSTOM_KEY,
    SCHEMA_FILE,
    HealthCheck,
    InstallStep,
    ManifestError,
    ReleaseManifest,
    manifest_from_custom,
    manifest_json_schema,
    manifest_schema_text,
)


def manifest(**changes: Any) -> dict[str, Any]:
    base = ReleaseManifest(
        package="kiosk-app",
        version="2.1.0",
        release_counter=3,
        compatible_models=["KX-100", "KX-200"],
        install=InstallStep(handler="package", parameters={"restart": True}),
        health_check=HealthCheck(kind="service", target="kiosk-app.service", timeout_s=60),
        min_agent_version="0.1",
    ).model_dump(mode="json")
    base.update(changes)
    return base


def test_schema_file_is_generated_from_the_model() -> None:
    assert SCHEMA_FILE.read_text() == manifest_schema_text()
    required = set(json.loads(SCHEMA_FILE.read_text())["required"])
    assert required == {
        "package",
        "version",
        "release_counter",
        "compatible_models",
        "install",
        "health_check",
    }
    assert manifest_json_schema()["additionalProperties"] is False


def test_a_manifest_survives_custom_unchanged() -> None:
    m = ReleaseManifest.model_validate(manifest())
    assert manifest_from_custom(m.to_custom()) == m
    assert m.to_custom()[CUSTOM_KEY]["release_counter"] == 3


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"release_counter": 0}, "release_counter"),
        ({"release_counter": 2**53}, "release_counter"),
        ({"release_counter": "3"}, "release_counter"),
        ({"compatible_models": []}, "compatible_models"),
        ({"compatible_models": ["A", "A"]}, "compatible_models"),
        ({"compatible_models": ["M"] * 65}, "compatible_models"),
        ({"package": "Bad Name"}, "package"),
        ({"version": "x" * 65}, "version"),
        ({"min_agent_version": "one"}, "min_agent_version"),
        ({"unexpected": 1}, "unexpected"),
        ({"install": {"handler": "package", "parameters": {"k": "v" * 1025}}}, "install"),
    ],
)
def test_an_invalid_manifest_is_refused_with_the_field_named(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        manifest_from_custom({CUSTOM_KEY: manifest(**changes)})
    assert any(p.startswith(field) for p in caught.value.problems), caught.value.problems


def test_a_target_without_a_manifest_is_refused() -> None:
    with pytest.raises(ManifestError, match="no 'kioskfleet'"):
        manifest_from_custom({"other": 1})
    with pytest.raises(ManifestError):
        manifest_from_custom(None)


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(st.integers() | st.text(max_size=8), lambda c: st.lists(c, max_size=3)),
        max_size=6,
    )
)
def test_arbitrary_custom_data_is_a_manifest_error_never_a_crash(data: dict[str, Any]) -> None:
    with pytest.raises(ManifestError) as caught:
        manifest_from_custom({CUSTOM_KEY: data})
    assert caught.value.problems
