"""The Helm chart's ``values.schema.json``, generated from its ``values.yaml`` and the server's settings.

Helm validates the values of every install, upgrade, ``template`` and ``lint``
against ``helm/kioskfleet/values.schema.json``, so a misspelt value or server
setting is refused before anything reaches the cluster, with the offending key
named. The schema is derived, never written by hand:

- the shape of every value comes from the defaults in ``values.yaml``: an object
  with keys accepts exactly those keys, an empty object (labels, annotations,
  selectors) any map, a list any list, a string default a string or a number
  (``minAvailable: ""`` may become ``2``), a number a number, a boolean a boolean;
- ``config`` accepts the server settings of ``server.config.Settings`` by field
  name, with the types and bounds pydantic derives from the model, except
  ``CHART_SETTINGS``: the chart sets those itself (addresses, file paths of its
  mounts), so they are refused there.

``python -m kioskfleet.chart_schema`` rewrites the file;
``tests/unit/test_helm_chart.py`` fails when the file and this function differ.
Pure apart from ``main``: values in, schema out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

import yaml

from server.config import Settings

__all__ = [
    "CHART",
    "CHART_DEFAULTS",
    "CHART_SETTINGS",
    "SCHEMA_FILE",
    "main",
    "schema_text",
    "values_schema",
]

CHART: Final = Path(__file__).resolve().parents[1] / "helm" / "kioskfleet"
SCHEMA_FILE: Final = CHART / "values.schema.json"

CHART_SETTINGS: Final = frozenset(
    {
        "http_host",
        "http_port",
        "database_url",
        "broker_url",
        "broker_ca_file",
        "broker_cert_file",
        "broker_key_file",
        "https_cert_file",
        "https_key_file",
        "updates_dir",
        "updates_snapshot_key_file",
        "updates_timestamp_key_file",
        "updates_directive_key_file",
        "ca_dir",
    }
)
"""Settings the chart writes from its own values (``service.port``, ``broker.url``, the
Secrets' mounts); ``config`` may not set them."""

CHART_DEFAULTS: Final = frozenset({"mqtt_client_id"})
"""Settings the chart sets unless ``config`` does: one replica gets a client id that
survives a new pod (the server's default follows the host name, the pod's name)."""

_SETTINGS_DROPPED_KEYS: Final = frozenset({"title", "description", "default", "format"})


def _shape(default: Any) -> dict[str, Any]:
    """The schema of a value whose default is ``default``."""
    if isinstance(default, bool):
        return {"type": "boolean"}
    if isinstance(default, int | float):
        return {"type": "number"}
    if isinstance(default, str):
        return {"type": ["string", "number"]}
    if isinstance(default, list):
        return {"type": "array"}
    if isinstance(default, dict):
        if not default:
            return {"type": "object"}
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {key: _shape(value) for key, value in default.items()},
        }
    return {}


def _clean(schema: Any) -> Any:
    """pydantic's schema without what Helm need not see (titles, defaults, ``format: path``)."""
    if isinstance(schema, list):
        return [_clean(s) for s in schema]
    if isinstance(schema, dict):
        return {k: _clean(v) for k, v in schema.items() if k not in _SETTINGS_DROPPED_KEYS}
    return schema


def _config_schema() -> dict[str, Any]:
    properties = Settings.model_json_schema()["properties"]
    unknown = CHART_SETTINGS - properties.keys()
    if unknown:
        raise ValueError(f"CHART_SETTINGS names no setting: {sorted(unknown)}")
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "server settings by their server/config.py name, less those the chart sets",
        "properties": {
            name: _clean(field)
            for name, field in sorted(properties.items())
            if name not in CHART_SETTINGS
        },
    }


def values_schema(values: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema for a chart whose default values are ``values``."""
    schema = _shape(values)
    schema["properties"]["config"] = _config_schema()
    image_tag = schema["properties"]["image"]["properties"]["tag"]
    image_tag.update({"type": "string", "not": {"const": "latest"}})
    schema["properties"]["replicaCount"] = {"type": "integer", "minimum": 1}
    return {"$schema": "https://json-schema.org/draft-07/schema#", **schema}


def schema_text(values_yaml: str) -> str:
    """The content of values.schema.json for the chart's ``values.yaml`` text."""
    values = yaml.safe_load(values_yaml)
    return json.dumps(values_schema(values), indent=2, sort_keys=True) + "\n"


def main() -> int:
    """Rewrite ``helm/kioskfleet/values.schema.json``."""
    text = schema_text((CHART / "values.yaml").read_text(encoding="utf-8"))
    SCHEMA_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
