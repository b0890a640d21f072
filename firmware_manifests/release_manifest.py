"""The kioskfleet release manifest: what one signed target says about itself.

Every target a vendor signs carries one ``ReleaseManifest`` in its TUF ``custom``
field (``{"kioskfleet": {...}}``). The vendor's signature covers it, so the
server can neither invent nor alter it. The agent, the server and the vendor CLI
all import this model; ``release-manifest.schema.json`` beside it is generated
from it (``scripts/firmware_examples.py``) and checked by a test.

Every string and list is bounded: a manifest is read by terminals before any
decision, and a hostile one must not cost them memory. Pure: no I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "CUSTOM_KEY",
    "SCHEMA_FILE",
    "HealthCheck",
    "InstallStep",
    "ManifestError",
    "ReleaseManifest",
    "manifest_from_custom",
    "manifest_json_schema",
    "manifest_schema_text",
]

CUSTOM_KEY: Final = "kioskfleet"
"""The key of a target's ``custom`` that holds its release manifest."""

SCHEMA_FILE: Final = Path(__file__).with_name("release-manifest.schema.json")
"""The JSON schema, generated from ``ReleaseManifest`` (``scripts/firmware_examples.py``)."""
MAX_RELEASE_COUNTER: Final = 2**53 - 1  # exact in every JSON reader

Identifier = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
"""A package, handler or parameter name: lower-case, 1-64 characters."""
TerminalModel = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
HumanVersion = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.+~_-]{0,63}$")]
AgentVersion = Annotated[str, Field(pattern=r"^[0-9]{1,5}(\.[0-9]{1,5}){0,3}$")]
ParameterValue = Annotated[str, Field(max_length=1024)] | bool | int


class ManifestError(ValueError):
    """A target's ``custom`` holds no valid release manifest; ``problems`` lists why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class InstallStep(_Frozen):
    """How the agent installs the artifact: a handler the agent knows, and its parameters."""

    handler: Identifier = Field(description="an install handler of the agent, e.g. `package`")
    parameters: dict[Identifier, ParameterValue] = Field(
        default_factory=dict, max_length=32, description="the handler's parameters"
    )


class HealthCheck(_Frozen):
    """What proves the installed release works, and how long to wait for it."""

    kind: Literal["service", "command", "http"]
    target: str = Field(min_length=1, max_length=512, description="unit, command or URL")
    timeout_s: int = Field(ge=1, le=3600)


class ReleaseManifest(_Frozen):
    """One release of one package, as its vendor signed it."""

    schema_version: Literal[1] = 1
    package: Identifier
    version: HumanVersion = Field(description="the human version, shown, never compared")
    release_counter: int = Field(
        gt=0,
        le=MAX_RELEASE_COUNTER,
        description="monotonic per package: a release must carry a higher one than the last",
    )
    compatible_models: list[TerminalModel] = Field(min_length=1, max_length=64)
    install: InstallStep
    health_check: HealthCheck
    min_agent_version: AgentVersion | None = None

    @field_validator("compatible_models")
    @classmethod
    def _unique_models(cls, models: list[str]) -> list[str]:
        if len(set(models)) != len(models):
            raise ValueError("compatible_models lists a model twice")
        return models

    def to_custom(self) -> dict[str, Any]:
        """The ``custom`` of the target this manifest describes."""
        return {CUSTOM_KEY: self.model_dump(mode="json", exclude_none=True)}


def manifest_from_custom(custom: Mapping[str, Any] | None) -> ReleaseManifest:
    """The manifest in a target's ``custom``. Raises ManifestError naming every problem."""
    if not custom or CUSTOM_KEY not in custom:
        raise ManifestError([f"custom has no {CUSTOM_KEY!r} release manifest"])
    try:
        return ReleaseManifest.model_validate(custom[CUSTOM_KEY])
    except ValidationError as exc:
        raise ManifestError(
            [
                f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}"
                for e in exc.errors()
            ]
        ) from None


def manifest_json_schema() -> dict[str, Any]:
    """The JSON schema of ``ReleaseManifest`` (the content of release-manifest.schema.json)."""
    schema = ReleaseManifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://kioskfleet.example/schemas/release-manifest-1.json"
    return schema


def manifest_schema_text() -> str:
    """``manifest_json_schema()`` as SCHEMA_FILE holds it."""
    return json.dumps(manifest_json_schema(), indent=2, sort_keys=True) + "\n"
