"""The HTTP side of signed releases: TUF metadata and targets for terminals, uploads for the
operator and vendors, and the release listings.

- ``GET /tuf/metadata/{file}`` (open: terminals hold no token; TUF signatures, not the
  transport, are what they trust): ``<N>.root.json`` for every root ever accepted (404
  for the next one, which the client always asks for), ``<v>.<role>.json``,
  ``timestamp.json``. Versioned files never change: ``Cache-Control: public,
  max-age=31536000, immutable``; ``timestamp.json`` changes: ``no-cache``.
- ``GET /tuf/targets/{vendor}/{sha256}.{name}`` (open): content-addressed artifact bytes
  with ``Range`` support (a broken download resumes), immutable caching.
- ``POST /api/v1/updates/root`` and ``/targets`` (admin): operator-signed metadata.
- ``PUT /api/v1/updates/vendors/{vendor}/uploads/{name}?offset=N`` (vendor): artifact
  bytes, streamed to disk, appended at ``offset`` (``GET`` the same path: how much has
  arrived). ``POST /api/v1/updates/vendors/{vendor}/role`` (vendor): the signed role;
  its new targets' bytes must have been uploaded.
- ``GET /api/v1/updates/vendors``, ``/packages``, ``/releases``, ``/publications`` (viewer).

A refused upload answers ``{"error": <RejectCode>, "message": ...}`` (422, 409 or 413)
and is audited as failed with the code; nothing is stored.
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the handlers' annotations.
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Final

import anyio
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from server.access import Principal, Role
from server.access_api import note_audit, require, role_dependencies
from server.errors import ApiError, ReleaseRejectedError, UpdatesError
from server.tuf_repository import ReleaseView, TufRepository, metadata_kind

__all__ = ["IMMUTABLE", "MUTABLE", "add_update_routes"]

log = logging.getLogger(__name__)

IMMUTABLE: Final = "public, max-age=31536000, immutable"
MUTABLE: Final = "no-cache"
_SEGMENT = Annotated[str, Path(max_length=200)]


def _rejected(request: Request, exc: ReleaseRejectedError) -> ApiError:
    note_audit(request, code=exc.code)
    log.info("refused upload: %s", exc)
    return ApiError(exc.status, exc.code, exc.message)


def _failed(exc: UpdatesError) -> ApiError:
    log.error("update repository: %s", exc)
    return ApiError(503, "updates_unavailable", str(exc))


def _too_large(cap: int) -> ReleaseRejectedError:
    return ReleaseRejectedError(
        "metadata_too_large", f"metadata is capped at {cap} bytes", status=413
    )


async def _read_capped(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise _too_large(cap)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise _too_large(cap)
    return bytes(body)


def _own_vendor(principal: Principal, vendor: str) -> None:
    if principal.vendor != vendor:
        raise ReleaseRejectedError(
            "vendor_mismatch", f"a token of vendor {principal.vendor!r} cannot act for {vendor!r}"
        )


def add_update_routes(
    app: FastAPI,
    repository: TufRepository,
    *,
    max_metadata_bytes: int,
    on_rejected: Callable[[str], None] = lambda _code: None,
) -> None:
    """Serve ``repository`` on ``app`` (see the module docstring). ``on_rejected(code)``
    counts each refused upload."""
    viewer = role_dependencies(Role.VIEWER)

    def rejected(request: Request, exc: ReleaseRejectedError) -> ApiError:
        on_rejected(exc.code)
        return _rejected(request, exc)

    @app.get("/tuf/metadata/{filename}", tags=["updates"], summary="TUF metadata (open)")
    def tuf_metadata(filename: _SEGMENT) -> Response:
        path = repository.metadata_file(filename)
        if path is None:
            raise ApiError(404, "not_found", f"no metadata {filename}")
        cache = MUTABLE if metadata_kind(filename) == "timestamp" else IMMUTABLE
        return FileResponse(path, media_type="application/json", headers={"Cache-Control": cache})

    @app.get(
        "/tuf/targets/{vendor}/{filename}",
        tags=["updates"],
        summary="A target's bytes by <sha256>.<name> (open, Range)",
    )
    def tuf_target(vendor: _SEGMENT, filename: _SEGMENT) -> Response:
        path = repository.target_blob(vendor, filename)
        if path is None:
            raise ApiError(404, "not_found", f"no target {vendor}/{filename}")
        return FileResponse(
            path, media_type="application/octet-stream", headers={"Cache-Control": IMMUTABLE}
        )

    def operator_upload(role: str, upload: Callable[[bytes], Any], summary: str) -> None:
        """``POST /api/v1/updates/{role}``: the operator's signed ``role`` metadata."""

        @app.post(
            f"/api/v1/updates/{role}",
            name=f"repository.{role}",
            dependencies=role_dependencies(Role.ADMIN),
            tags=["updates"],
            summary=summary,
        )
        async def upload_metadata(request: Request) -> dict[str, Any]:
            try:
                data = await _read_capped(request, max_metadata_bytes)
                version = (await anyio.to_thread.run_sync(upload, data)).signed.version
            except ReleaseRejectedError as exc:
                raise rejected(request, exc) from None
            except UpdatesError as exc:
                raise _failed(exc) from None
            note_audit(request, target=role, version=str(version))
            return {"role": role, "version": version}

    operator_upload("root", repository.upload_root, "Upload the next operator-signed root")
    operator_upload(
        "targets",
        repository.upload_targets,
        "Upload operator-signed top-level targets (vendors, pins)",
    )

    @app.get(
        "/api/v1/updates/vendors/{vendor}/uploads/{name}",
        tags=["updates"],
        summary="How many bytes of an artifact upload have arrived",
    )
    def upload_status(
        vendor: _SEGMENT,
        name: _SEGMENT,
        principal: Annotated[Principal, Depends(require(Role.VENDOR))],
    ) -> dict[str, Any]:
        try:
            _own_vendor(principal, vendor)
            return {"received": repository.store.received(vendor, name)}
        except ReleaseRejectedError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None

    @app.put(
        "/api/v1/updates/vendors/{vendor}/uploads/{name}",
        name="release.upload",
        tags=["updates"],
        summary="Upload artifact bytes at an offset (resumable)",
    )
    async def upload_artifact(
        request: Request,
        vendor: _SEGMENT,
        name: _SEGMENT,
        principal: Annotated[Principal, Depends(require(Role.VENDOR))],
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        note_audit(request, target=f"{vendor}/{name}", offset=str(offset))

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in request.stream():
                yield chunk

        try:
            _own_vendor(principal, vendor)
            if not repository.is_delegated(vendor):
                raise ReleaseRejectedError("unknown_vendor", f"no vendor {vendor!r} is delegated")
            received = await repository.store.append(vendor, name, offset, chunks())
        except ReleaseRejectedError as exc:
            raise rejected(request, exc) from None
        except UpdatesError as exc:
            raise _failed(exc) from None
        return {"received": received}

    @app.post(
        "/api/v1/updates/vendors/{vendor}/role",
        name="release.publish",
        tags=["updates"],
        summary="Publish the vendor's signed role (its new targets' bytes uploaded first)",
    )
    async def publish_role(
        request: Request,
        vendor: _SEGMENT,
        principal: Annotated[Principal, Depends(require(Role.VENDOR))],
    ) -> dict[str, Any]:
        note_audit(request, target=vendor)
        try:
            data = await _read_capped(request, max_metadata_bytes)
            verified = await anyio.to_thread.run_sync(
                lambda: repository.publish_vendor_role(
                    vendor, data, token_vendor=principal.vendor, actor=principal.actor
                )
            )
        except ReleaseRejectedError as exc:
            raise rejected(request, exc) from None
        except UpdatesError as exc:
            raise _failed(exc) from None
        version = verified.metadata.signed.version
        note_audit(request, version=str(version), targets=",".join(sorted(verified.new_targets)))
        return {"vendor": vendor, "version": version, "new_targets": sorted(verified.new_targets)}

    @app.get(
        "/api/v1/updates/vendors",
        dependencies=viewer,
        tags=["updates"],
        summary="Delegated vendors: keys, threshold, path patterns, role version",
    )
    def list_vendors() -> JSONResponse:
        return JSONResponse({"items": repository.vendors()})

    @app.get(
        "/api/v1/updates/releases",
        dependencies=viewer,
        tags=["updates"],
        summary="Every release with its verification status and signing keys",
    )
    def list_releases(vendor: Annotated[str | None, Query(max_length=64)] = None) -> JSONResponse:
        items = [
            _release_dict(r) for r in repository.releases() if vendor is None or r.vendor == vendor
        ]
        return JSONResponse({"items": items})

    @app.get(
        "/api/v1/updates/packages",
        dependencies=viewer,
        tags=["updates"],
        summary="Packages per vendor: releases held and the highest release counter",
    )
    def list_packages() -> JSONResponse:
        packages: dict[tuple[str, str], dict[str, Any]] = {}
        for r in repository.releases():
            if r.manifest is None:
                continue
            key = (r.vendor, str(r.manifest["package"]))
            entry = packages.setdefault(
                key, {"vendor": key[0], "package": key[1], "releases": 0, "latest_counter": 0}
            )
            entry["releases"] += 1
            entry["latest_counter"] = max(entry["latest_counter"], r.manifest["release_counter"])
        return JSONResponse({"items": [packages[k] for k in sorted(packages)]})

    @app.get(
        "/api/v1/updates/publications",
        dependencies=viewer,
        tags=["updates"],
        summary="Who published which vendor role version, when, signed by which keys",
    )
    def list_publications() -> JSONResponse:
        return JSONResponse({"items": [dataclasses.asdict(p) for p in repository.publications()]})


def _release_dict(r: ReleaseView) -> dict[str, Any]:
    return {**dataclasses.asdict(r), "signed_by": list(r.signed_by)}
