"""The server image's HEALTHCHECK: exit 0 when ``GET /healthz`` on this container answers 200.

Reads the port and the scheme from the server's own settings variables
(``KIOSKFLEET_HTTP_PORT``; HTTPS when ``KIOSKFLEET_HTTPS_CERT_FILE`` is set). The
certificate is not checked: the probe asks its own process over loopback whether it is
alive, it trusts nothing it reads. Standard library only (runs before any import of ours).
"""

import os
import ssl
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("KIOSKFLEET_HTTP_PORT", "8080")
    https = bool(os.environ.get("KIOSKFLEET_HTTPS_CERT_FILE"))
    url = f"{'https' if https else 'http'}://127.0.0.1:{port}/healthz"
    context = ssl._create_unverified_context() if https else None  # noqa: S323 -- loopback liveness
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as answer:  # noqa: S310 -- fixed scheme
            return 0 if answer.status == 200 else 1
    except OSError as exc:
        print(f"kioskfleet-healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
