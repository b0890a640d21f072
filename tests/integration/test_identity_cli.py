"""The identity commands end to end on a real database and CA folder: ``ca init``, ``agent keygen``,
``terminal preauthorize`` (one, or a CSV file), ``terminal token``, ``terminal tag`` and
``terminal revoke``."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from kioskfleet.cli import main
from server.access_store import AccessStore, AuditFilter
from server.audit import AuditResult, MemoryAudit
from server.device_ca import generate_key, write_private_key
from server.errors import EnrollmentRefusedError
from server.storage import Storage
from server.terminal_registry import TerminalRegistry
from tests.support.device_identity import csr_for, public_pem

pytestmark = pytest.mark.integration


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    assert main(["ca", "init", str(directory)]) == 0
    return directory


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, database_url: str, ca_dir: Path) -> str:
    monkeypatch.setenv("KIOSKFLEET_DATABASE_URL", database_url)
    monkeypatch.setenv("KIOSKFLEET_CA_DIR", str(ca_dir))
    return database_url


def registry(database_url: str, ca_dir: Path) -> tuple[Storage, TerminalRegistry]:
    storage = Storage(database_url)
    storage.open()
    r = TerminalRegistry(lambda: storage.engine, ca_dir, MemoryAudit())
    r.open()
    return storage, r


def test_ca_init_makes_a_ca_with_private_keys_0600_and_never_overwrites_it(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("root.key", "issuing.key"):
        assert stat.S_IMODE((ca_dir / name).stat().st_mode) == 0o600
    assert len(x509.load_pem_x509_certificates((ca_dir / "chain.pem").read_bytes())) == 2
    before = (ca_dir / "root.key").read_bytes()
    capsys.readouterr()
    assert main(["ca", "init", str(ca_dir)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (ca_dir / "root.key").read_bytes() == before


def test_agent_keygen_makes_the_key_0600_once_and_prints_its_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "agent" / "terminal.key"
    assert main(["agent", "keygen", "--key-file", str(key_file)]) == 0
    first = capsys.readouterr().out
    assert first.startswith("-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert main(["agent", "keygen", "--key-file", str(key_file)]) == 0
    assert capsys.readouterr().out == first  # an existing key is kept


def test_preauthorize_then_the_key_enrolls_and_revoke_lists_it_in_the_crl(
    settings_env: str, ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = generate_key()
    (tmp_path / "t1.pub").write_bytes(public_pem(key))
    assert main(["terminal", "preauthorize", "T-1", "--hall", "Hall A", "--region", "North",
                 "--model", "KX-200", "--key", str(tmp_path / "t1.pub")]) == 0  # fmt: skip
    storage, r = registry(settings_env, ca_dir)
    try:
        cert = r.enroll(csr_for(key, "T-1"))
    finally:
        storage.close()
    assert main(["terminal", "revoke", "T-1"]) == 0
    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    capsys.readouterr()
    assert main(["terminal", "revoke", "T-404"]) == 1
    assert "not registered" in capsys.readouterr().err
    storage = Storage(settings_env)
    storage.open()
    try:  # the CLI's changes are in the server's durable audit log, with who did them
        entries = AccessStore(storage).audit(AuditFilter(target="T-1"), limit=10).items
    finally:
        storage.close()
    assert [(e.action, e.result, e.actor.startswith("cli:")) for e in reversed(entries)] == [
        ("terminal.preauthorize", AuditResult.OK, True),
        ("terminal.revoke", AuditResult.OK, True),
    ]


def test_token_prints_a_one_time_secret(
    settings_env: str, ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["terminal", "token", "T-2", "--hall", "Hall B", "--region", "South",
                 "--model", "KX-300", "--ttl", "30m"]) == 0  # fmt: skip
    token = capsys.readouterr().out.strip()
    storage, r = registry(settings_env, ca_dir)
    try:
        r.enroll(csr_for(generate_key(), "T-2"), username="T-2", token=token)
        with pytest.raises(EnrollmentRefusedError, match="used"):
            r.enroll(csr_for(generate_key(), "T-2"), username="T-2", token=token)
    finally:
        storage.close()
    assert main(["terminal", "token", "T-2", "--hall", "H", "--region", "R", "--model", "M",
                 "--ttl", "soon"]) == 2  # fmt: skip


def test_preauthorize_from_a_csv_file_registers_every_line(
    settings_env: str, ca_dir: Path, tmp_path: Path
) -> None:
    keys = [generate_key() for _ in range(3)]
    lines = []
    for i, key in enumerate(keys):
        write_private_key(tmp_path / f"t{i}.key", key)
        (tmp_path / f"t{i}.pub").write_bytes(public_pem(key))
        lines.append(f"BULK-{i},Hall A,North,KX-200,t{i}.pub")
    (tmp_path / "terminals.csv").write_text("# id,hall,region,model,key\n" + "\n".join(lines))
    assert main(["terminal", "preauthorize", "--from-file", str(tmp_path / "terminals.csv")]) == 0
    storage, r = registry(settings_env, ca_dir)
    try:
        for i, key in enumerate(keys):
            r.enroll(csr_for(key, f"BULK-{i}"))
            assert r.is_active(f"BULK-{i}")
    finally:
        storage.close()


def test_terminal_commands_without_a_ca_dir_explain_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KIOSKFLEET_DATABASE_URL", f"sqlite:///{tmp_path}/kf.db")
    monkeypatch.delenv("KIOSKFLEET_CA_DIR", raising=False)
    assert main(["terminal", "revoke", "T-1"]) == 2
    assert "KIOSKFLEET_CA_DIR" in capsys.readouterr().err


def test_terminal_tag_replaces_the_tags_refuses_bad_ones_and_a_registry_refresh_sees_them(
    settings_env: str, ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage, r = registry(settings_env, ca_dir)  # a running server's registry, loaded before
    try:
        assert main(["terminal", "tag", "T-TAG", "pilot"]) == 1  # not registered yet
        assert main(["terminal", "token", "T-TAG", "--hall", "Hall A", "--region", "North",
                     "--model", "KX-200"]) == 0  # fmt: skip
        assert main(["terminal", "tag", "T-TAG", "pilot", "lobby", "pilot"]) == 0
        assert "T-TAG: tags lobby pilot" in capsys.readouterr().out
        assert main(["terminal", "tag", "T-TAG", "no spaces allowed"]) == 1
        assert main(["terminal", "tag", "T-TAG", *(f"t{i}" for i in range(17))]) == 1
        assert r.tags("T-TAG") == frozenset()  # memory: until its next refresh
        r.refresh()
        assert r.tags("T-TAG") == {"lobby", "pilot"}
        found = r.get("T-TAG")
        assert found is not None
        assert found.tags == ("lobby", "pilot")
        assert main(["terminal", "tag", "T-TAG"]) == 0  # no tags: cleared
        r.refresh()
        assert r.tags("T-TAG") == frozenset()
        entries = AccessStore(storage).audit(AuditFilter(action="terminal.tag"), limit=10).items
    finally:
        storage.close()
    assert [(e.result, e.detail.get("tags")) for e in reversed(entries)] == [
        (AuditResult.DENIED, None),  # unknown terminal
        (AuditResult.OK, "lobby,pilot"),
        (AuditResult.FAILED, None),  # a bad tag
        (AuditResult.FAILED, None),  # too many
        (AuditResult.OK, ""),
    ]
