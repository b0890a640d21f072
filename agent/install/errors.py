"""The install branch of the agent's error tree (drawn in ``agent/errors.py``).

Every error carries the data a caller reports: ``ArchiveRefusedError.reason`` is
a short code from ``REFUSAL_REASONS`` and ``.member`` the archive member that
caused it, so the updater can report "rejected: symlink_escape (lib/evil)".
Imports nothing but ``agent.errors``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from agent.errors import AgentError

__all__ = [
    "REFUSAL_REASONS",
    "ArchiveRefusedError",
    "InstallError",
    "InstallStateError",
    "RestartError",
]

REFUSAL_REASONS: Final = (
    "absolute_path",
    "path_traversal",
    "bad_name",
    "duplicate_member",
    "special_file",
    "symlink_escape",
    "hardlink_escape",
    "through_link",
    "too_many_members",
    "too_large",
    "not_an_archive",
)
"""Why an archive is refused, one code each (``ArchiveRefusedError.reason``)."""


class InstallError(AgentError):
    """An install step failed; the handler has left (or will leave) a working slot."""


class ArchiveRefusedError(InstallError):
    """The artifact is not an archive the bundle handler unpacks; nothing was installed.

    ``reason`` is one of ``REFUSAL_REASONS``, ``member`` the offending member name
    (empty when the archive as a whole is refused), ``detail`` a sentence.
    """

    def __init__(self, reason: str, member: str, detail: str) -> None:
        if reason not in REFUSAL_REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        self.reason = reason
        self.member = member
        self.detail = detail
        super().__init__(f"archive refused ({reason}): {member!r}: {detail}")


class RestartError(InstallError):
    """The service restart command failed or timed out; ``argv``, ``reason``."""

    def __init__(self, argv: Sequence[str], reason: str) -> None:
        self.argv = tuple(argv)
        self.reason = reason
        super().__init__(f"restart command {list(self.argv)!r} failed: {reason}")


class InstallStateError(InstallError):
    """The install state file or the slot layout cannot be read or is inconsistent; ``path``."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"install state {path}: {reason}")
