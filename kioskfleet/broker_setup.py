"""What ``kioskfleet broker-config`` writes: the broker's TLS files, the server's MQTT client
certificates, and the mosquitto configuration that ties them to the fleet CA.

Given the device CA directory (``kioskfleet ca init``), ``write_broker_setup`` issues

- the broker's certificate (``serverAuth``, SANs = the host names and addresses clients
  dial) and key: ``broker.pem``, ``broker.key``;
- one MQTT client certificate (``clientAuth``, CN = the identity) and key per server
  identity: ``server-<identity>.pem``, ``server-<identity>.key`` (``:`` becomes ``_``
  in the file name);
- ``chain.pem``: the fleet chain (issuing CA, root), the broker's ``cafile`` and what the
  server gives as ``broker_ca_file``;

and writes ``mosquitto.conf`` and ``acl`` through ``kioskfleet.broker_config``, with
``crlfile`` pointing at the CRL that ``kioskfleet terminal revoke`` rewrites (the CA's
``crl.pem`` unless told otherwise).

Who may read the keys: mosquitto started as root drops to the ``mosquitto`` user before
it reads its key (docs/security.md), so ``broker.key`` is given to that group, mode
0640, when we run as root and the group exists; the server's client keys stay 0600:
the broker never needs them. It never touches the CA's own keys or files.
"""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kioskfleet.broker_config import BrokerIdentity, write_broker_config
from kioskfleet.local_broker import project_broker_conf
from server.device_ca import CaPaths, DeviceCa, generate_key, write_pem, write_private_key

__all__ = ["BrokerSetup", "server_credential_files", "write_broker_setup"]

BROKER_GROUP = "mosquitto"
_ANY_ADDRESS = ("0.0.0.0", "::")  # noqa: S104 - names a bind address, binds nothing


@dataclass(frozen=True, slots=True)
class BrokerSetup:
    """The files ``write_broker_setup`` wrote."""

    conf: Path
    acl: Path
    identity: BrokerIdentity
    server_credentials: dict[str, tuple[Path, Path]]  # identity -> (certificate, key)
    notes: tuple[str, ...] = ()  # what the operator must still do (printed by the CLI)


def server_credential_files(out_dir: Path, identity: str) -> tuple[Path, Path]:
    """Where the MQTT client certificate and key of server ``identity`` are in ``out_dir``."""
    stem = "server-" + identity.replace(":", "_")
    return out_dir / f"{stem}.pem", out_dir / f"{stem}.key"


def _crl_notes(crl: Path) -> tuple[str, ...]:
    """Why a broker running as its own user may not read ``crl``: a missing file, or a
    directory on the way (the CA's is 0700) or the file itself closed to others."""
    if not crl.is_file():
        return (f"{crl} does not exist: mosquitto will not start without its crlfile",)
    closed = [p for p in crl.parents if not p.stat().st_mode & stat.S_IXOTH]
    if closed or not crl.stat().st_mode & stat.S_IROTH:
        return (
            f"{crl} is not readable by other users ({closed[0] if closed else crl} is"
            " closed): if mosquitto runs as its own user, copy the CRL where it can read it"
            " after each revocation and pass --crl-file (docs/security.md)",
        )
    return ()


def _give_to_broker_group(path: Path, group: str | None) -> None:
    if group is None or os.geteuid() != 0:
        return  # a non-root mosquitto runs as whoever owns the file already
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return
    os.chown(path, 0, gid)
    path.chmod(0o640)


def write_broker_setup(
    out_dir: Path,
    ca_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8883,
    sans: Sequence[str] = (),
    server_identities: Sequence[str],
    crl_file: Path | None = None,
    key_group: str | None = BROKER_GROUP,
    extra_conf: str = "",
) -> BrokerSetup:
    """Issue the broker's and the servers' certificates and write the configuration.

    ``host`` is where the listener binds and the broker certificate's first SAN (unless it
    is an any-address, ``0.0.0.0`` or ``::``); ``sans`` adds names (a load balancer's DNS
    name). Raises DeviceCaError if the CA cannot be loaded, ValueError for a server
    identity a terminal could also be or a certificate without a name, OSError if a file
    cannot be written.
    """
    out = out_dir.absolute()
    crl = (crl_file or CaPaths(ca_dir).crl).absolute()
    identity = BrokerIdentity(  # validates the server identities before anything is issued
        ca_file=out / "chain.pem",
        cert_file=out / "broker.pem",
        key_file=out / "broker.key",
        crl_file=crl,
        server_identities=tuple(server_identities),
    )
    names = [n for n in dict.fromkeys([host, *sans]) if n not in _ANY_ADDRESS]
    if not names:
        raise ValueError(f"the listener binds {host}: name the broker with --san")
    ca = DeviceCa.load(ca_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_pem(identity.ca_file, *ca.chain)
    broker_key = generate_key()
    broker_cert = ca.issue_service(names[0], broker_key.public_key(), sans=names)
    write_private_key(identity.key_file, broker_key)
    _give_to_broker_group(identity.key_file, key_group)
    write_pem(identity.cert_file, broker_cert)
    credentials: dict[str, tuple[Path, Path]] = {}
    for name in identity.server_identities:
        cert_path, key_path = server_credential_files(out, name)
        key = generate_key()
        cert = ca.issue_service(name, key.public_key(), server_auth=False, client_auth=True)
        write_private_key(key_path, key)
        write_pem(cert_path, cert)
        credentials[name] = (cert_path, key_path)
    conf, acl = write_broker_config(
        out,
        base_conf=project_broker_conf().read_text(encoding="utf-8"),
        port=port,
        host=host,
        identity=identity,
        extra=extra_conf,
    )
    return BrokerSetup(
        conf=conf,
        acl=acl,
        identity=identity,
        server_credentials=credentials,
        notes=_crl_notes(crl),
    )
