"""The bundle install handler with real tar archives: refusals, A/B switch, health, rollback, recovery.

Every archive is built here with ``tarfile``; restart and health are real child
processes (the running Python): restart appends the slot ``current`` points at to a
log, health succeeds when the active slot holds a file ``healthy``.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.install import (
    ArchiveLimits,
    ArchiveRefusedError,
    BundleConfig,
    BundleHandler,
    InstallRequest,
    InstallResult,
    InstallStateError,
    RestartError,
    run_install,
)
from agent.install.bundle import STEPS
from agent.install.commands import health_argv, run_restart, wait_healthy
from agent.install.errors import REFUSAL_REASONS
from agent.install.safe_tar import unpack_into
from firmware_manifests.release_manifest import HealthCheck as ManifestHealthCheck
from tests.support.waiting import wait_until


class PowerCut(BaseException):
    """Raised from ``on_step``: the process dies right after that step's state write."""


Member = tuple[str, bytes] | tarfile.TarInfo


def build_tar(path: Path, members: list[Member]) -> Path:
    """A gzip tar at ``path``: (name, content) for a file, or a ready TarInfo for anything else."""
    with tarfile.open(path, "w:gz") as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def release(tmp: Path, version: str, *, healthy: bool = True) -> Path:
    files: list[Member] = [("app/VERSION", version.encode()), ("app/run.sh", b"#!/bin/sh\n")]
    if healthy:
        files.append(("healthy", b"yes"))
    return build_tar(tmp / f"release-{version}.tar.gz", files)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "app"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    return {"root": root, "outside": outside, "artifacts": artifacts, "log": tmp_path / "restarts"}


def restart_argv(root: Path, log: Path) -> tuple[str, ...]:
    code = (
        "import os, sys; p = sys.argv[1]; "
        "t = os.readlink(p) if os.path.islink(p) else '-'; "
        "open(sys.argv[2], 'a').write(t + '\\n')"
    )
    return (sys.executable, "-c", code, str(root / "current"), str(log))


def handler(
    env: dict[str, Path],
    *,
    on_step: Callable[[str], None] | None = None,
    restart: tuple[str, ...] | None = None,
    restart_timeout_s: float = 30.0,
    limits: ArchiveLimits | None = None,
    peripherals_answer: Callable[..., list[str]] | None = None,
) -> BundleHandler:
    config = BundleConfig(
        root=env["root"],
        restart_argv=restart or restart_argv(env["root"], env["log"]),
        restart_timeout_s=restart_timeout_s,
        health_interval_s=0.05,
        limits=limits or ArchiveLimits(),
    )
    return BundleHandler(config, on_step=on_step, peripherals_answer=peripherals_answer)


def request(env: dict[str, Path], artifact: Path, version: str, **extra: object) -> InstallRequest:
    check = "import os, sys; sys.exit(0 if os.path.exists(sys.argv[1]) else 3)"
    argv = (sys.executable, "-c", check, str(env["root"] / "current" / "healthy"))
    return InstallRequest(
        artifact=str(artifact),
        package="kiosk-app",
        version=version,
        release_counter=int(version.split(".")[0]),
        health_argv=argv,
        health_within_s=float(extra.pop("within", 30.0)),  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )


def install(env: dict[str, Path], version: str, **kw: object) -> BundleHandler:
    h = handler(env)
    outcome = run_install(h, request(env, release(env["artifacts"], version), version, **kw))
    assert outcome.result is InstallResult.SUCCEEDED, outcome
    return h


def restarts(env: dict[str, Path]) -> list[str]:
    return env["log"].read_text().split() if env["log"].exists() else []


# -- archive attacks ---------------------------------------------------------------

ATTACKS: dict[str, tuple[str, list[Member]]] = {
    "path traversal": ("path_traversal", [("ok", b"1"), ("../outside/evil", b"x")]),
    "nested traversal": ("path_traversal", [("a/../../outside/evil", b"x")]),
    "absolute path": ("absolute_path", [("/tmp/kioskfleet-evil", b"x")]),
    "symlink to absolute path": (
        "symlink_escape",
        [special("etc", tarfile.SYMTYPE, "/etc")],
    ),
    "symlink leaving the slot": (
        "symlink_escape",
        [special("up", tarfile.SYMTYPE, "../outside")],
    ),
    "file written through a symlink": (
        "through_link",
        [special("here", tarfile.SYMTYPE, "sub"), ("here/evil", b"x")],
    ),
    "chained symlinks that escape once both exist": (
        "through_link",
        [special("f", tarfile.SYMTYPE, "d/e/.."), special("d/e", tarfile.SYMTYPE, "..")],
    ),
    "hardlink to an absolute path": (
        "hardlink_escape",
        [special("passwd", tarfile.LNKTYPE, "/etc/passwd")],
    ),
    "hardlink leaving the slot": (
        "hardlink_escape",
        [special("secret", tarfile.LNKTYPE, "../outside/secret")],
    ),
    "hardlink to nothing stored before": (
        "hardlink_escape",
        [special("copy", tarfile.LNKTYPE, "later"), ("later", b"x")],
    ),
    "character device": ("special_file", [special("dev/mem", tarfile.CHRTYPE)]),
    "block device": ("special_file", [special("dev/sda", tarfile.BLKTYPE)]),
    "fifo": ("special_file", [special("pipe", tarfile.FIFOTYPE)]),
    "sparse file": ("special_file", [special("holes", tarfile.GNUTYPE_SPARSE)]),
    "link target of 5000 characters": (
        "bad_name",
        [special("long", tarfile.SYMTYPE, "a/" * 2500)],
    ),
    "duplicate member": ("duplicate_member", [("a", b"1"), ("./a", b"2")]),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_each_archive_attack_is_refused_with_its_reason_and_writes_nothing(
    env: dict[str, Path], attack: str
) -> None:
    install(env, "1.0")
    reason, members = ATTACKS[attack]
    artifact = build_tar(env["artifacts"] / "evil.tar.gz", members)
    before = sorted(p.name for p in env["outside"].iterdir())
    h = handler(env)

    outcome = run_install(h, request(env, artifact, "2.0"))

    assert outcome.result is InstallResult.REJECTED
    assert outcome.reason == reason
    assert outcome.active_version == "1.0"
    assert sorted(p.name for p in env["outside"].iterdir()) == before
    assert (env["outside"] / "secret").read_text() == "keep"
    assert not Path("/tmp/kioskfleet-evil").exists()
    assert not (env["root"] / "slot-b").exists()  # the inactive slot is wiped
    assert h.active_slot() == "slot-a"
    assert h.active_version() == "1.0"
    assert restarts(env) == ["slot-a"]  # only the first install restarted anything
    assert h.recover() is None


def test_the_reason_codes_the_attacks_prove_are_the_documented_ones() -> None:
    proven = {reason for reason, _ in ATTACKS.values()}
    proven |= {"too_many_members", "too_large", "not_an_archive"}
    assert proven == set(REFUSAL_REASONS)


def test_an_archive_with_too_many_members_is_refused_before_reading_them_all(
    env: dict[str, Path],
) -> None:
    artifact = build_tar(env["artifacts"] / "many.tar.gz", [(f"f{i}", b"") for i in range(50)])
    outcome = run_install(
        handler(env, limits=ArchiveLimits(max_members=10)), request(env, artifact, "1.0")
    )
    assert (outcome.result, outcome.reason) == (InstallResult.REJECTED, "too_many_members")
    assert not (env["root"] / "slot-a").exists()
    assert not (env["root"] / "current").exists()


def test_an_archive_whose_files_exceed_the_size_cap_is_refused(env: dict[str, Path]) -> None:
    artifact = build_tar(env["artifacts"] / "big.tar.gz", [("a", b"x" * 600), ("b", b"x" * 600)])
    outcome = run_install(
        handler(env, limits=ArchiveLimits(max_total_bytes=1000)), request(env, artifact, "1.0")
    )
    assert (outcome.result, outcome.reason) == (InstallResult.REJECTED, "too_large")
    assert "'b'" in outcome.detail
    assert not (env["root"] / "slot-a").exists()


def test_a_file_that_is_no_tar_archive_is_refused(env: dict[str, Path]) -> None:
    artifact = env["artifacts"] / "garbage.tar.gz"
    artifact.write_bytes(b"\x1f\x8b not really gzip" * 10)
    outcome = run_install(handler(env), request(env, artifact, "1.0"))
    assert (outcome.result, outcome.reason) == (InstallResult.REJECTED, "not_an_archive")


def test_links_that_stay_inside_the_slot_are_unpacked(env: dict[str, Path]) -> None:
    artifact = build_tar(
        env["artifacts"] / "links.tar.gz",
        [
            ("healthy", b"yes"),
            ("lib/libkiosk.so.1", b"ELF"),
            special("lib/libkiosk.so", tarfile.SYMTYPE, "libkiosk.so.1"),
            special("bin/lib", tarfile.SYMTYPE, "../lib"),
            special("lib/copy.so", tarfile.LNKTYPE, "lib/libkiosk.so.1"),
        ],
    )
    h = handler(env)
    assert run_install(h, request(env, artifact, "1.0")).result is InstallResult.SUCCEEDED
    slot = env["root"] / "current"
    assert (slot / "lib" / "libkiosk.so").read_bytes() == b"ELF"
    assert (slot / "bin" / "lib" / "libkiosk.so.1").read_bytes() == b"ELF"
    assert os.stat(slot / "lib" / "copy.so").st_ino == os.stat(slot / "lib/libkiosk.so.1").st_ino


def test_set_uid_bits_are_dropped(env: dict[str, Path]) -> None:
    info = tarfile.TarInfo("suid")
    info.mode = 0o4755
    info.size = 1
    path = env["artifacts"] / "suid.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        archive.addfile(info, io.BytesIO(b"x"))
        healthy = tarfile.TarInfo("healthy")
        archive.addfile(healthy, io.BytesIO(b""))
    h = handler(env)
    assert run_install(h, request(env, path, "1.0")).result is InstallResult.SUCCEEDED
    assert os.stat(env["root"] / "current" / "suid").st_mode & 0o7000 == 0


# -- happy path, health check, rollback ----------------------------------------------


def test_installs_switch_between_the_slots_and_restart_each_time(env: dict[str, Path]) -> None:
    h = install(env, "1.0")
    assert (h.active_slot(), h.active_version()) == ("slot-a", "1.0")
    assert (env["root"] / "current" / "app" / "VERSION").read_text() == "1.0"

    outcome = run_install(h, request(env, release(env["artifacts"], "2.0"), "2.0"))

    assert (outcome.result, outcome.active_version) == (InstallResult.SUCCEEDED, "2.0")
    assert (h.active_slot(), h.active_version()) == ("slot-b", "2.0")
    assert (env["root"] / "current" / "app" / "VERSION").read_text() == "2.0"
    assert (env["root"] / "slot-a" / "app" / "VERSION").read_text() == "1.0"  # the fallback
    assert restarts(env) == ["slot-a", "slot-b"]  # restarted after each switch
    assert h.slot_release("slot-b") == {
        "package": "kiosk-app",
        "version": "2.0",
        "release_counter": 2,
    }
    install(env, "3.0")  # the third goes back into slot-a, never into the active slot
    assert (h.active_slot(), h.active_version()) == ("slot-a", "3.0")
    assert (env["root"] / "slot-b" / "app" / "VERSION").read_text() == "2.0"


def test_a_failing_health_command_rolls_back_to_the_previous_slot(env: dict[str, Path]) -> None:
    h = install(env, "1.0")
    artifact = release(env["artifacts"], "2.0", healthy=False)

    outcome = run_install(h, request(env, artifact, "2.0", within=2.0))

    assert (outcome.result, outcome.reason) == (InstallResult.ROLLED_BACK, "health_check_failed")
    assert "exit 3" in outcome.detail
    assert (outcome.active_version, h.active_slot(), h.active_version()) == ("1.0", "slot-a", "1.0")
    assert restarts(env) == ["slot-a", "slot-b", "slot-a"]  # the old release restarted
    assert h.recover() is None


def test_a_failing_first_install_leaves_no_current_link(env: dict[str, Path]) -> None:
    h = handler(env)
    artifact = release(env["artifacts"], "1.0", healthy=False)
    outcome = run_install(h, request(env, artifact, "1.0", within=0.3))
    assert outcome.result is InstallResult.ROLLED_BACK
    assert outcome.active_version is None
    assert not (env["root"] / "current").exists()
    assert h.active_slot() is None


def test_a_release_whose_peripherals_do_not_answer_rolls_back(env: dict[str, Path]) -> None:
    install(env, "1.0")
    asked: list[list[str]] = []

    def answer(names: list[str]) -> list[str]:
        asked.append(list(names))
        return [n for n in names if n == "receipt-printer"]

    h = handler(env, peripherals_answer=answer)
    req = request(
        env,
        release(env["artifacts"], "2.0"),
        "2.0",
        required_peripherals=("card-reader", "receipt-printer"),
    )
    outcome = run_install(h, req)
    assert (outcome.result, outcome.active_version) == (InstallResult.ROLLED_BACK, "1.0")
    assert "receipt-printer" in outcome.detail
    assert asked == [["card-reader", "receipt-printer"]]


def test_a_release_listing_peripherals_with_no_check_wired_is_not_healthy(
    env: dict[str, Path],
) -> None:
    req = request(
        env, release(env["artifacts"], "1.0"), "1.0", required_peripherals=("card-reader",)
    )
    outcome = run_install(handler(env), req)
    assert outcome.result is InstallResult.ROLLED_BACK
    assert "nothing can check" in outcome.detail


def test_the_health_command_is_retried_until_it_succeeds_within_the_time(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    code = (
        "import sys, pathlib; p = pathlib.Path(sys.argv[1]); "
        "n = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(n)); "
        "sys.exit(0 if n >= 3 else 1)"
    )
    report = wait_healthy([sys.executable, "-c", code, str(counter)], 60, interval_s=0.01)
    assert report.ok
    assert "3 run(s)" in report.detail
    assert counter.read_text() == "3"


def test_a_missing_health_command_is_unhealthy_not_a_crash(tmp_path: Path) -> None:
    report = wait_healthy([str(tmp_path / "no-such-command")], 5)
    assert not report.ok
    assert "cannot run" in report.detail


# -- the restart command -------------------------------------------------------------


def test_the_restart_command_is_killed_after_its_timeout() -> None:
    with pytest.raises(RestartError) as caught:
        run_restart([sys.executable, "-c", "import time; time.sleep(60)"], 0.5)
    assert "timed out after 0.5 s" in caught.value.reason


def test_a_restart_that_exits_non_zero_names_the_exit_code() -> None:
    with pytest.raises(RestartError) as caught:
        run_restart(
            [sys.executable, "-c", "import sys; sys.stderr.write('no unit'); sys.exit(5)"], 10
        )
    assert caught.value.reason == "exit 5: no unit"


def test_a_restart_that_times_out_on_activation_rolls_back(env: dict[str, Path]) -> None:
    install(env, "1.0")
    slow = (sys.executable, "-c", "import time; time.sleep(60)")
    h = handler(env, restart=slow, restart_timeout_s=0.5)

    outcome = run_install(h, request(env, release(env["artifacts"], "2.0"), "2.0"))

    assert (outcome.result, outcome.reason) == (InstallResult.ROLLED_BACK, "activate_failed")
    assert "timed out" in outcome.detail
    assert "restart after rollback failed" in outcome.detail  # reported, still rolled back
    assert (h.active_slot(), h.active_version()) == ("slot-a", "1.0")


# -- a power cut at every step -------------------------------------------------------

# step the power is cut after -> (healthy release?, result of recover(), version running)
CUTS = {
    "preparing": (True, InstallResult.FAILED, "1.0"),
    "prepared": (True, InstallResult.FAILED, "1.0"),
    "activating": (True, InstallResult.ROLLED_BACK, "1.0"),
    "active": (True, InstallResult.ROLLED_BACK, "1.0"),
    "healthy": (True, InstallResult.SUCCEEDED, "2.0"),
    "rolling_back": (False, InstallResult.ROLLED_BACK, "1.0"),
    "committed": (True, None, "2.0"),
    "rolled_back": (False, None, "1.0"),
}


def test_every_step_has_a_power_cut_case() -> None:
    assert set(CUTS) == set(STEPS) - {"aborted"}  # aborted: see the attack tests


@pytest.mark.parametrize("step", list(CUTS))
def test_a_power_cut_after_each_step_recovers_to_a_working_slot(
    env: dict[str, Path], step: str
) -> None:
    install(env, "1.0")
    healthy, expected, version = CUTS[step]

    def cut(reached: str) -> None:
        if reached == step:
            raise PowerCut(step)

    artifact = release(env["artifacts"], "2.0", healthy=healthy)
    with pytest.raises(PowerCut):
        run_install(
            handler(env, on_step=cut), request(env, artifact, "2.0", within=30 if healthy else 0.5)
        )

    after = handler(env)  # a new agent process
    outcome = after.recover()

    assert (outcome.result if outcome else None) is expected
    assert after.active_version() == version
    slot = after.active_slot()
    assert slot is not None
    assert (env["root"] / slot / "app" / "VERSION").read_text() == version
    assert (env["root"] / "current" / "healthy").exists()  # a working release runs
    assert after.recover() is None  # recovery is final
    assert restarts(env)[-1] == slot  # the service runs the slot current points at


def test_a_power_cut_mid_unpack_wipes_the_half_written_slot(env: dict[str, Path]) -> None:
    install(env, "1.0")

    def cut(reached: str) -> None:
        if reached == "preparing":
            (env["root"] / "slot-b").mkdir()
            (env["root"] / "slot-b" / "half").write_bytes(b"x")
            raise PowerCut(reached)

    with pytest.raises(PowerCut):
        run_install(
            handler(env, on_step=cut), request(env, release(env["artifacts"], "2.0"), "2.0")
        )
    after = handler(env)
    outcome = after.recover()
    assert outcome is not None
    assert outcome.reason == "interrupted"
    assert not (env["root"] / "slot-b").exists()
    assert after.slot_release("slot-b") is None
    assert after.active_version() == "1.0"


def test_a_power_cut_right_after_the_switch_rolls_back(env: dict[str, Path]) -> None:
    install(env, "1.0")

    def cut(reached: str) -> None:
        if reached == "activating":
            os.symlink("slot-b", env["root"] / ".current.tmp")  # the switch, then the cut
            os.replace(env["root"] / ".current.tmp", env["root"] / "current")
            raise PowerCut(reached)

    artifact = release(env["artifacts"], "2.0")
    with pytest.raises(PowerCut):
        run_install(handler(env, on_step=cut), request(env, artifact, "2.0"))
    after = handler(env)
    assert after.active_slot() == "slot-b"
    outcome = after.recover()
    assert outcome is not None
    assert outcome.result is InstallResult.ROLLED_BACK
    assert (after.active_slot(), after.active_version()) == ("slot-a", "1.0")
    assert restarts(env)[-1] == "slot-a"


def test_a_left_over_temporary_link_does_not_block_the_switch(env: dict[str, Path]) -> None:
    install(env, "1.0")
    os.symlink("slot-a", env["root"] / ".current.tmp")  # a cut between symlink and replace
    h = install(env, "2.0")
    assert h.active_slot() == "slot-b"


def test_a_new_install_is_refused_while_one_is_unrecovered(env: dict[str, Path]) -> None:
    install(env, "1.0")

    def cut(reached: str) -> None:
        if reached == "active":
            raise PowerCut(reached)

    with pytest.raises(PowerCut):
        run_install(
            handler(env, on_step=cut), request(env, release(env["artifacts"], "2.0"), "2.0")
        )
    outcome = run_install(handler(env), request(env, release(env["artifacts"], "3.0"), "3.0"))
    assert (outcome.result, outcome.reason) == (InstallResult.FAILED, "prepare_failed")
    assert "recover()" in outcome.detail


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"step": "dancing", "to_slot": "slot-b", "from_slot": "slot-a"}',
        '{"step": "prepared", "to_slot": "../../outside", "from_slot": "slot-a"}',
        '{"step": "prepared", "to_slot": "slot-a", "from_slot": "slot-a"}',
    ],
)
def test_a_corrupt_state_file_is_an_install_state_error_and_nothing_is_wiped(
    env: dict[str, Path], content: str
) -> None:
    install(env, "1.0")
    (env["root"] / "install.json").write_text(content)
    with pytest.raises(InstallStateError):
        handler(env).recover()
    assert (env["outside"] / "secret").read_text() == "keep"
    assert (env["root"] / "slot-a" / "app" / "VERSION").read_text() == "1.0"


def test_refused_archive_errors_carry_reason_and_member() -> None:
    error = ArchiveRefusedError("path_traversal", "../x", "a '..' component")
    assert (error.reason, error.member) == ("path_traversal", "../x")
    with pytest.raises(ValueError, match="unknown refusal reason"):
        ArchiveRefusedError("made_up", "", "")


# -- property: whatever the headers say, nothing lands outside the slot ---------------

_component = st.sampled_from(["a", "b", "..", ".", ""])
_name = st.builds(
    lambda absolute, parts: ("/" if absolute else "") + "/".join(parts),
    st.booleans(),
    st.lists(_component, min_size=1, max_size=4),
)
_member = st.tuples(st.sampled_from(["file", "dir", "sym", "hard"]), _name, _name)


def _tar_of(members: list[tuple[str, str, str]], path: Path) -> None:
    types = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE}
    with tarfile.open(path, "w") as archive:
        for kind, name, link in members:
            info = tarfile.TarInfo(name or "x")
            if kind == "file":
                info.size = 1
                archive.addfile(info, io.BytesIO(b"x"))
                continue
            info.type = types[kind]
            info.linkname = link
            archive.addfile(info)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_member, max_size=6))
def test_any_archive_is_refused_or_stays_inside_the_slot(
    members: list[tuple[str, str, str]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        slot = base / "root" / "slot"
        slot.mkdir(parents=True)
        _tar_of(members, base / "t.tar")
        # refused, or the file system said no part-way: what was written is checked below
        with contextlib.suppress(ArchiveRefusedError, OSError):
            unpack_into(base / "t.tar", slot, ArchiveLimits())
        assert sorted(p.name for p in base.iterdir()) == ["root", "t.tar"]
        assert sorted(p.name for p in (base / "root").iterdir()) == ["slot"]
        inside = os.path.realpath(slot)
        for directory, dirs, files in os.walk(slot):  # never follows a link
            for name in dirs + files:
                real = os.path.realpath(os.path.join(directory, name))
                assert real == inside or real.startswith(inside + os.sep), (name, real)


# -- the manifest's health check kinds ---------------------------------------------


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ok" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_an_http_health_check_is_healthy_on_2xx_only() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        good = health_argv(ManifestHealthCheck(kind="http", target=f"{base}/ok", timeout_s=5))
        bad = health_argv(ManifestHealthCheck(kind="http", target=f"{base}/down", timeout_s=5))
        assert wait_healthy(good, 30).ok
        report = wait_healthy(bad, 1, interval_s=0.1)
        assert not report.ok
        assert "503" in report.detail
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "target", ["https://127.0.0.1/health", "http://10.0.0.8/health", "file:///etc/passwd"]
)
def test_an_http_health_check_off_loopback_is_refused(target: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        health_argv(ManifestHealthCheck(kind="http", target=target, timeout_s=5))


def test_command_and_service_health_checks_become_argv_without_a_shell() -> None:
    command = ManifestHealthCheck(
        kind="command", target="/opt/kiosk/bin/check --quick 'a b'", timeout_s=5
    )
    service = ManifestHealthCheck(kind="service", target="kiosk-app.service", timeout_s=5)
    assert health_argv(command) == ["/opt/kiosk/bin/check", "--quick", "a b"]
    assert health_argv(service) == ["systemctl", "is-active", "--quiet", "kiosk-app.service"]


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status  # killed, waiting for init to reap it


def test_a_timed_out_restart_kills_the_children_it_started_too(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    with pytest.raises(RestartError, match="timed out"):
        run_restart(["/bin/sh", "-c", script], 2.0)
    grandchild = int(pidfile.read_text())
    # SIGKILL is delivered asynchronously: wait for the kernel to finish it off
    wait_until(lambda: _gone(grandchild), 10, "the grandchild to die")
