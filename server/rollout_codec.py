"""A rollout's definition and planner state as JSON documents, and back.

The planner (``server.rollout_planner``) works on frozen dataclasses; the ``rollout`` table
(``server.rollout_store``) holds them as two JSON documents. This module is the only place
that maps one onto the other, so a field added to the planner is mapped here once.

``definition_from_json`` / ``rollout_from_json`` raise ValueError for a document that does not
describe a valid rollout (the API turns that into 422, the store into StorageDataError).
Never does I/O.

Why JSON documents, not a table per terminal progress: the planner reads and replaces the
whole state on every step, no query looks inside it, and the per-state counts the API shows
come from ``update_status`` (what the terminals said). Rejected: pickling (unsafe to read
back, unreadable by an operator with psql).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from server.rollout_planner import (
    MANUAL,
    AbortThreshold,
    Delay,
    Gate,
    PauseReason,
    Phase,
    Rollout,
    RolloutDefinition,
    RolloutStatus,
    TerminalProgress,
    TerminalState,
)

__all__ = ["definition_from_json", "definition_to_json", "rollout_from_json", "rollout_to_json"]


def _gate_to_json(gate: Gate) -> Any:
    return MANUAL if gate == MANUAL else {"delay_s": gate.seconds}


def _gate_from_json(value: Any) -> Gate:
    if value == MANUAL:
        return MANUAL
    if isinstance(value, dict) and set(value) == {"delay_s"}:
        return Delay(float(value["delay_s"]))
    raise ValueError(f"a gate is 'manual' or {{'delay_s': seconds}}, not {value!r}")


def definition_to_json(definition: RolloutDefinition) -> dict[str, Any]:
    """``definition`` as a JSON-able dict."""
    return {
        "rollout_id": definition.rollout_id,
        "target": definition.target,
        "created_by": definition.created_by,
        "phases": [
            {"size": p.size, "unit": p.unit, "gate": _gate_to_json(p.gate)}
            for p in definition.phases
        ],
        "success_threshold": definition.success_threshold,
        "abort": {
            "failure_ratio": definition.abort.failure_ratio,
            "min_decided": definition.abort.min_decided,
        },
        "terminal_timeout_s": definition.terminal_timeout_s,
        "max_attempts": definition.max_attempts,
        "retry_backoff_s": definition.retry_backoff_s,
        "retry_backoff_max_s": definition.retry_backoff_max_s,
        "install_while_open": definition.install_while_open,
    }


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"install_while_open is true or false, not {value!r}")
    return value


def definition_from_json(doc: Any) -> RolloutDefinition:
    """The definition ``doc`` describes. Raises ValueError."""
    try:
        phases = tuple(
            Phase(size=int(p["size"]), unit=p["unit"], gate=_gate_from_json(p["gate"]))
            for p in doc["phases"]
        )
        return RolloutDefinition(
            rollout_id=str(doc["rollout_id"]),
            target=str(doc["target"]),
            created_by=str(doc["created_by"]),
            phases=phases,
            success_threshold=float(doc["success_threshold"]),
            abort=AbortThreshold(
                failure_ratio=float(doc["abort"]["failure_ratio"]),
                min_decided=int(doc["abort"]["min_decided"]),
            ),
            terminal_timeout_s=float(doc["terminal_timeout_s"]),
            max_attempts=int(doc["max_attempts"]),
            retry_backoff_s=float(doc["retry_backoff_s"]),
            retry_backoff_max_s=float(doc["retry_backoff_max_s"]),
            install_while_open=_flag(doc.get("install_while_open", False)),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a rollout definition: {exc!r}") from None


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def rollout_to_json(rollout: Rollout) -> dict[str, Any]:
    """The planner state of ``rollout`` (its definition excluded) as a JSON-able dict."""
    return {
        "status": rollout.status.value,
        "pause_reason": None if rollout.pause_reason is None else rollout.pause_reason.value,
        "phase": rollout.phase,
        "gate_open": rollout.gate_open,
        "gate_opens_at": _time(rollout.gate_opens_at),
        "approved_by": rollout.approved_by,
        "terminals": [
            {
                "terminal_id": t.terminal_id,
                "state": t.state.value,
                "phase": t.phase,
                "attempts": t.attempts,
                "round_start": t.round_start,
                "notified_at": _time(t.notified_at),
                "retry_at": _time(t.retry_at),
            }
            for t in rollout.terminals
        ],
    }


def rollout_from_json(definition: RolloutDefinition, doc: Any) -> Rollout:
    """The rollout of ``definition`` in the state ``doc`` describes. Raises ValueError."""
    try:
        reason = doc["pause_reason"]
        return Rollout(
            definition=definition,
            status=RolloutStatus(doc["status"]),
            pause_reason=None if reason is None else PauseReason(reason),
            phase=int(doc["phase"]),
            gate_open=bool(doc["gate_open"]),
            gate_opens_at=_parse_time(doc["gate_opens_at"]),
            approved_by=doc["approved_by"],
            terminals=tuple(
                TerminalProgress(
                    terminal_id=str(t["terminal_id"]),
                    state=TerminalState(t["state"]),
                    phase=t["phase"],
                    attempts=int(t["attempts"]),
                    round_start=int(t["round_start"]),
                    notified_at=_parse_time(t["notified_at"]),
                    retry_at=_parse_time(t["retry_at"]),
                )
                for t in doc["terminals"]
            ),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a rollout state: {exc!r}") from None
