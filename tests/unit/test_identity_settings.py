"""The device-identity settings: enrollment is required exactly when a CA folder is given (unless
said otherwise), cannot be required without one, and HTTPS files go together and must exist."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.config import Settings


def test_without_a_ca_dir_enrollment_is_off_and_the_api_is_http() -> None:
    settings = Settings()
    assert settings.enrollment_required is False
    assert settings.https is False


def test_a_ca_dir_turns_enrollment_on_unless_it_is_turned_off(tmp_path: Path) -> None:
    assert Settings(ca_dir=tmp_path).enrollment_required is True
    assert Settings(ca_dir=tmp_path, require_enrollment=False).enrollment_required is False


def test_requiring_enrollment_without_a_ca_dir_is_refused() -> None:
    with pytest.raises(ValidationError, match="require_enrollment needs ca_dir"):
        Settings(require_enrollment=True)


def test_a_ca_dir_that_is_no_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="is not a folder"):
        Settings(ca_dir=tmp_path / "missing")


def test_https_files_go_together_and_must_exist(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    with pytest.raises(ValidationError, match="go together"):
        Settings(https_cert_file=cert)
    with pytest.raises(ValidationError, match="does not exist"):
        Settings(https_cert_file=cert, https_key_file=key)
    key.write_text("x")
    assert Settings(https_cert_file=cert, https_key_file=key).https is True
