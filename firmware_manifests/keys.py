"""TUF signing keys on disk: Ed25519, private keys PEM/PKCS#8 (mode 0600), public keys JSON.

Key format (a design choice): a private key is ``<name>.key``, unencrypted PKCS#8
PEM, the format ``securesystemslib``'s ``CryptoSigner`` reads and writes, written
0600 through a temporary file and ``os.replace``; the directory holding it is the
thing to keep offline (an encrypted USB stick, an HSM later). A public key is
``<name>.pub.json``: ``{"keyid": ..., "keytype": "ed25519", "scheme": "ed25519",
"keyval": {"public": hex}}``, exactly the TUF key dict plus its id, so it is what
``repo add-vendor --key`` takes and what root and targets list. Rejected: PEM public
keys (the keyid would be recomputed by each reader) and passphrase-encrypted PEM
(it needs a secret prompt in every ceremony step; the offline medium protects them).

Ed25519: small signatures, fast verification on terminals with ``cryptography``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

__all__ = [
    "KeyFileError",
    "generate_key",
    "load_public_key",
    "load_signer",
    "public_key_dict",
    "write_atomically",
    "write_key_pair",
]


class KeyFileError(ValueError):
    """A key file is missing, unreadable or not an Ed25519 key of the expected format."""


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate_key() -> CryptoSigner:
    """A new Ed25519 signer."""
    return CryptoSigner.generate_ed25519()


def public_key_dict(key: Key) -> dict[str, Any]:
    """The JSON form of a public key: the TUF key dict plus its ``keyid``."""
    return {"keyid": key.keyid, **key.to_dict()}


def write_key_pair(signer: CryptoSigner, directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``name.key`` (0600) and ``name.pub.json`` into ``directory``; never overwrite."""
    private, public = directory / f"{name}.key", directory / f"{name}.pub.json"
    for path in (private, public):
        if path.exists():
            raise KeyFileError(f"{path} exists: a key is never overwritten")
    write_atomically(private, signer.private_bytes, mode=0o600)
    write_atomically(public, json.dumps(public_key_dict(signer.public_key), indent=1).encode())
    return private, public


def load_signer(path: Path) -> CryptoSigner:
    """The signer of a ``.key`` file. Raises KeyFileError."""
    try:
        private = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a readable unencrypted PKCS#8 key ({exc})") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))


def load_public_key(path: Path) -> Key:
    """The public key of a ``.pub.json`` file (or of a ``.key`` file). Raises KeyFileError."""
    if path.suffix == ".key":
        return load_signer(path).public_key
    try:
        data = json.loads(path.read_bytes())
        keyid = data.pop("keyid")
        key = SSlibKey.from_dict(keyid, data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyFileError(f"{path}: not a public key file ({exc})") from None
    if key.keytype != "ed25519":
        raise KeyFileError(f"{path}: keytype {key.keytype!r}, expected ed25519")
    return key
