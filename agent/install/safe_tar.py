"""Unpack a tar archive into an empty slot directory, refusing anything that could escape it.

``check_members`` is the pure core: it reads ``tarfile.TarInfo`` headers only and
raises ``ArchiveRefusedError`` with a precise reason for the first member that

- has an absolute name (``absolute_path``) or a ``..`` component (``path_traversal``),
  an empty name, a NUL or a name longer than ``limits.max_name_length`` (``bad_name``);
- appears twice (``duplicate_member``: a later header would replace an earlier one);
- is a device file, a FIFO, a sparse file (its real size is not its stored size)
  or any type but file, directory, symlink, hardlink (``special_file``);
- is a symlink whose target is absolute or leaves the slot when resolved from the
  link's directory (``symlink_escape``), or a hardlink whose target is absolute,
  leaves the slot or is not a regular file stored earlier in the archive
  (``hardlink_escape``);
- has a path, or a link target, that passes through a symlink of the archive
  (``through_link``). This is what makes lexical checks enough: with no path ever
  traversing a link, ``d/e -> ..`` plus ``f -> d/e/..`` (which resolves above the
  slot only once ``d/e`` exists) cannot be built;
- makes the archive exceed ``limits.max_members`` (``too_many_members``) or the sum
  of file sizes exceed ``limits.max_total_bytes`` (``too_large``).

``unpack_into`` reads every header first (stopping as soon as a cap is passed),
checks them all, and only then extracts, into a slot that must be empty, with
``tarfile``'s ``data`` filter as a second line (it also drops set-uid bits and
ownership). So a refused archive writes nothing at all, in or outside the slot
(tests/unit/test_bundle_handler.py). It never follows a link while writing and
never runs as anything but the agent's own user.
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.install.errors import ArchiveRefusedError

__all__ = ["ArchiveLimits", "check_members", "unpack_into"]


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on one archive: members, summed file bytes, length of one name."""

    max_members: int = 20_000
    max_total_bytes: int = 2 * 1024**3
    max_name_length: int = 1024


def _parts(name: str, member: str) -> list[str]:
    """The components of a member name; refuses absolute names and ``..``."""
    if name.startswith("/") or name.startswith("\\"):
        raise ArchiveRefusedError("absolute_path", member, "an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveRefusedError("path_traversal", member, "a '..' component")
    return parts


def _walk_link(
    start: list[str], target: str, symlinks: set[str], member: str, reason: str
) -> list[str]:
    """Resolve ``target`` from directory ``start`` lexically, refusing escapes and link hops."""
    if target.startswith("/"):
        raise ArchiveRefusedError(reason, member, f"points to the absolute path {target!r}")
    stack = list(start)
    components = [p for p in target.split("/") if p not in ("", ".")]
    for index, part in enumerate(components):
        if part == "..":
            if not stack:
                raise ArchiveRefusedError(reason, member, f"{target!r} leaves the slot")
            stack.pop()
            continue
        stack.append(part)
        if "/".join(stack) in symlinks and index < len(components) - 1:
            raise ArchiveRefusedError(
                "through_link", member, f"{target!r} passes through the link {'/'.join(stack)!r}"
            )
    if not stack:
        raise ArchiveRefusedError(reason, member, f"{target!r} is the slot itself")
    return stack


def check_members(members: Sequence[tarfile.TarInfo], limits: ArchiveLimits) -> None:
    """Refuse (``ArchiveRefusedError``) the first member that could write outside the slot."""
    if len(members) > limits.max_members:
        raise ArchiveRefusedError("too_many_members", "", f"more than {limits.max_members} members")
    names: dict[str, tarfile.TarInfo] = {}
    paths: list[tuple[tarfile.TarInfo, list[str]]] = []
    total = 0
    for info in members:
        if not info.name or "\x00" in info.name or len(info.name) > limits.max_name_length:
            raise ArchiveRefusedError("bad_name", info.name[:80], "empty, NUL or too long")
        if "\x00" in info.linkname or len(info.linkname) > limits.max_name_length:
            raise ArchiveRefusedError("bad_name", info.name[:80], "link target NUL or too long")
        parts = _parts(info.name, info.name)
        if not parts:
            if info.isdir():
                continue  # the archive's own "./" entry
            raise ArchiveRefusedError("bad_name", info.name, "names the slot itself")
        key = "/".join(parts)
        if key in names:
            raise ArchiveRefusedError("duplicate_member", info.name, "stored twice")
        if info.issparse() or not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
            raise ArchiveRefusedError(
                "special_file", info.name, "a device file, FIFO, sparse or other special file"
            )
        if info.isreg():
            total += info.size
            if total > limits.max_total_bytes:
                raise ArchiveRefusedError(
                    "too_large", info.name, f"files exceed {limits.max_total_bytes} bytes"
                )
        names[key] = info
        paths.append((info, parts))
    symlinks = {key for key, info in names.items() if info.issym()}
    seen_files: set[str] = set()
    for info, parts in paths:
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in symlinks:
                raise ArchiveRefusedError(
                    "through_link", info.name, f"its path passes through the link {prefix!r}"
                )
        if info.issym():
            _walk_link(parts[:-1], info.linkname, symlinks, info.name, "symlink_escape")
        elif info.islnk():
            target = "/".join(_walk_link([], info.linkname, symlinks, info.name, "hardlink_escape"))
            if target not in seen_files:
                raise ArchiveRefusedError(
                    "hardlink_escape",
                    info.name,
                    f"{info.linkname!r} is not a regular file stored before it",
                )
        if info.isreg():
            seen_files.add("/".join(parts))


def _read_headers(archive: tarfile.TarFile, limits: ArchiveLimits) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    while (info := archive.next()) is not None:
        members.append(info)
        if len(members) > limits.max_members:
            break  # check_members refuses it; never read an unbounded header list
    return members


def unpack_into(archive_path: Path, slot: Path, limits: ArchiveLimits) -> int:
    """Check every header, then extract into the empty directory ``slot``; the member count.

    Raises ArchiveRefusedError (nothing written) for a refused or unreadable archive;
    OSError from the file system while extracting (the caller wipes the slot).
    """
    if any(slot.iterdir()):
        raise ValueError(f"{slot} is not empty")
    try:
        with tarfile.open(archive_path, mode="r:*") as archive:
            members = _read_headers(archive, limits)
            check_members(members, limits)
            archive.extractall(slot, members=members, filter="data")
    except tarfile.TarError as exc:
        raise ArchiveRefusedError("not_an_archive", "", str(exc)) from None
    return len(members)
