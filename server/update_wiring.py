"""Builds the signed-release side of a server from its settings: repository, artifact store,
online keys, routes, metrics and the re-signing job. Nothing happens at import time;
``build_updates`` returns None while ``updates_dir`` is unset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from firmware_manifests.keys import KeyFileError, load_signer
from server.artifact_store import FilesystemArtifactStore
from server.config import Settings
from server.errors import ConfigError, FencedOffError, StorageError, UpdatesError
from server.lease_fence import current_fence
from server.tuf_repository import OnlineExpiry, TufRepository
from server.update_api import add_update_routes
from server.update_metrics import UpdateMetrics

__all__ = ["UpdateService", "build_updates"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UpdateService:
    repository: TufRepository
    metrics: UpdateMetrics
    resign_interval_s: float
    upload_retention: timedelta

    def resign(self) -> list[str]:
        """The scheduled job: re-sign what is due, prune uploads never published; a failure
        is logged, never raised. Under the job lease, the lease row is read again right
        before the files are replaced: a holder whose lease was taken over (or that cannot
        read it) writes nothing (``server.lease_fence``)."""
        fence = current_fence()

        def recheck() -> None:
            if fence is not None:
                fence.recheck("re-sign TUF metadata")

        try:
            done = self.repository.refresh_online(before_write=recheck)
        except FencedOffError:  # counted and logged by the lease
            return []
        except StorageError as exc:
            log.warning("re-signing skipped: cannot read the job lease: %s", exc)
            return []
        except UpdatesError as exc:
            log.error("re-signing the timestamp failed, will retry: %s", exc)
            return []
        if done:
            log.info("re-signed %s", ", ".join(done))
        try:
            pruned = self.repository.store.prune_uploads(self.upload_retention, datetime.now(UTC))
        except UpdatesError as exc:
            log.warning("%s", exc)
        else:
            if pruned:
                log.info("pruned %d uploads never published", pruned)
        return done

    def schedule(
        self,
        scheduler: BackgroundScheduler,
        guard: Callable[[str, Callable[[], list[str]]], Callable[[], object]],
    ) -> None:
        """Add the re-signing job, wrapped by ``guard`` (the job lease: once per fleet)."""
        scheduler.add_job(
            guard("tuf-resign", self.resign),
            "interval",
            seconds=self.resign_interval_s,
            id="tuf-resign",
            name="TUF timestamp re-signing",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC),
        )


def build_updates(
    settings: Settings, registry: CollectorRegistry, app: FastAPI
) -> UpdateService | None:
    """The update service (routes on ``app``, metrics on ``registry``), None when off.
    Raises ConfigError for an online key that cannot be read."""
    if settings.updates_dir is None:
        return None
    assert settings.updates_snapshot_key_file is not None  # the settings validator checks
    assert settings.updates_timestamp_key_file is not None
    try:
        snapshot = load_signer(settings.updates_snapshot_key_file)
        timestamp = load_signer(settings.updates_timestamp_key_file)
    except KeyFileError as exc:
        raise ConfigError(f"online TUF key: {exc}") from None
    repository = TufRepository(
        settings.updates_dir,
        FilesystemArtifactStore(
            settings.updates_dir / "artifacts", max_bytes=settings.updates_max_artifact_bytes
        ),
        snapshot_signer=snapshot,
        timestamp_signer=timestamp,
        expiry=OnlineExpiry(
            snapshot=timedelta(seconds=settings.updates_snapshot_expiry_s),
            timestamp=timedelta(seconds=settings.updates_timestamp_expiry_s),
        ),
    )
    metrics = UpdateMetrics(registry, repository)
    add_update_routes(
        app,
        repository,
        max_metadata_bytes=settings.updates_max_metadata_bytes,
        on_rejected=metrics.rejected,
    )
    return UpdateService(
        repository,
        metrics,
        settings.updates_resign_check_interval_s,
        timedelta(seconds=settings.updates_upload_retention_s),
    )
