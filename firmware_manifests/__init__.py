"""The signed update format (TUF metadata, release manifests, directives).

Empty until the signed-updates issue: see ``../shared/ARCHITECTURE.md`` and
``docs/architecture.md`` for the trust chain it will hold.
"""

__all__: list[str] = []
