"""Enrollments per second through EST over HTTPS, against a bare CSR sign measured in the same run.

Prints figures; never a pass/fail timing test. One real server (SQLite, HTTPS
with a certificate of a fresh device CA, an in-memory message source: no
broker needed) and ``--terminals`` terminals whose keys exist already (the
terminals make them themselves, on their own CPUs; that cost is printed
apart). Steps, each timed:

  1. key generation (EC P-256), what each terminal does once;
  2. baseline: the issuing CA signs one certificate per CSR, nothing else
     (``DeviceCa.issue_terminal``): the floor of any enrollment;
  3. bulk pre-authorisation of all terminals in one transaction
     (``TerminalRegistry.preauthorize_many``, what ``kioskfleet terminal
     preauthorize --from-file`` does);
  4. enrollment of every terminal through the agent's own code
     (``agent.enrollment.enroll_many``: CSR, HTTPS POST simpleenroll, registry
     checks, sign, certificate and registry rows committed, PKCS#7 answer,
     certificate file written), ``--concurrency`` at a time.

    .venv/bin/python bench/enroll.py                      # 1000 terminals, 8 at a time
    .venv/bin/python bench/enroll.py --terminals 10000 --concurrency 16
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from cryptography import x509
from prometheus_client import CollectorRegistry

from agent.config import EnrollmentConfig
from agent.enrollment import Terminal, build_csr, enroll_many, public_key_pem
from server.config import Settings
from server.device_ca import DeviceCa, generate_key, init_ca, write_pem, write_private_key
from server.in_memory_source import InMemorySource
from server.main import Server
from server.terminal_registry import Preauthorization


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:9.0f}/s  ({seconds * 1000 / count:6.2f} ms each, {seconds:6.2f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n = args.terminals
    work = Path(tempfile.mkdtemp(prefix="kf-bench-enroll-"))
    paths = init_ca(work / "ca")
    ca = DeviceCa.load(paths.directory)
    https_key = generate_key()
    write_pem(
        work / "https.pem",
        ca.issue_service("127.0.0.1", https_key.public_key(), sans=["127.0.0.1"]),
        ca.issuing,
    )
    write_private_key(work / "https.key", https_key)

    began = time.perf_counter()
    keys = [generate_key() for _ in range(n)]
    keygen_s = time.perf_counter() - began
    terminals = []
    for i, key in enumerate(keys):
        terminal = Terminal(f"B-{i:06d}", work / "t" / f"{i}.key", work / "t" / f"{i}.pem")
        write_private_key(terminal.key_file, key)
        terminals.append(terminal)

    csrs = [
        x509.load_der_x509_csr(build_csr(k, t.terminal_id))
        for k, t in zip(keys, terminals, strict=True)
    ]
    began = time.perf_counter()
    for csr, terminal in zip(csrs, terminals, strict=True):
        ca.issue_terminal(csr, terminal.terminal_id)
    sign_s = time.perf_counter() - began

    built: list[InMemorySource] = []
    server = Server(
        Settings(
            database_url=f"sqlite:///{work}/kf.db",
            http_port=0,
            ca_dir=paths.directory,
            https_cert_file=work / "https.pem",
            https_key_file=work / "https.key",
        ),
        registry=CollectorRegistry(),
        source=InMemorySource.factory(built),
    )
    server.start()
    try:
        registry = server.terminal_registry
        assert registry is not None
        items = [
            Preauthorization(
                t.terminal_id, "Hall A", "North", "KF-200", public_key_pem(k).encode("ascii")
            )
            for k, t in zip(keys, terminals, strict=True)
        ]
        began = time.perf_counter()
        registry.preauthorize_many(items, actor="bench")
        preauth_s = time.perf_counter() - began

        config = EnrollmentConfig(url=server.base_url, ca_file=paths.chain)
        began = time.perf_counter()
        failed = enroll_many(terminals, config, concurrency=args.concurrency)
        enroll_s = time.perf_counter() - began
    finally:
        server.stop()
    if failed:
        raise SystemExit(f"{len(failed)} enrollments failed, e.g. {next(iter(failed.values()))}")

    print(f"{n} terminals, concurrency {args.concurrency}, SQLite, HTTPS on loopback")
    print(f"key generation (EC P-256)     {_rate(n, keygen_s)}")
    print(f"baseline: bare CSR sign       {_rate(n, sign_s)}")
    print(f"bulk pre-authorisation        {_rate(n, preauth_s)}")
    print(f"EST simpleenroll end to end   {_rate(n, enroll_s)}")
    print(f"enrollment / bare sign        {enroll_s / sign_s:9.1f}x the time")
    print(f"10 000 terminals would enroll in about {enroll_s / n * 10_000:.0f} s")


if __name__ == "__main__":
    main()
