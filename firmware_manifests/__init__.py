"""The signed update format: the release manifest every TUF target carries, and key files.

- ``release_manifest``: ``ReleaseManifest`` (pydantic) and its generated JSON schema
  ``release-manifest.schema.json``; agent, server and vendor CLI import the same model.
- ``keys``: Ed25519 key files (private PKCS#8 PEM 0600, public TUF key JSON).
- ``examples/``: a small signed repository with THROW-AWAY keys
  (``scripts/firmware_examples.py``).

The trust chain is in docs/updates.md. Directives (the next issue) will live here too.
"""

__all__: list[str] = []
