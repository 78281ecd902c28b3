"""Building and closing what the app runs on: blob store, engines, router, runner, demo tenant.

With no engines configured, the diffusion backend runs in-process on the demo model (or
`gpu.model_path`), reached through the same HTTP client code as a remote `gateway gpu-worker`.
A configured `kind = "diffusion"` engine without `base_url` is served by that same in-process
service, so a vendor and the local model can share one route on one machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import NamedTuple

import httpx
import msgspec

from gateway.auth.keys import KeyAuthenticator
from gateway.config import EngineConfig, Settings
from gateway.db.embedded import EmbeddedPostgres
from gateway.db.notifications import JOB_EVENTS_CHANNEL, JobWatchers, Listener
from gateway.db.pool import Pool
from gateway.domain.generation import OPERATIONS
from gateway.engines.base import Engine
from gateway.engines.registry import build_engines, check_route_capabilities, in_process
from gateway.gpu.service import GpuService
from gateway.metrics import Metrics
from gateway.routing.router import Router
from gateway.state import Background, Services
from gateway.storage.azure import AzureBlobStore
from gateway.storage.base import BlobStore
from gateway.storage.filesystem import FilesystemBlobStore
from gateway.storage.gcs import GCSBlobStore
from gateway.storage.links import BlobLinks, load_or_create_key
from gateway.storage.s3 import S3BlobStore
from gateway.webhooks.dispatcher import WebhookDispatcher
from gateway.worker.retention import RetentionSweeper
from gateway.worker.runner import JobRunner

log = logging.getLogger(__name__)

LOCAL_ENGINE = "local-diffusion"


class Routing(NamedTuple):
    """The router over every engine, and the GPU service of this process when one of them runs here."""

    router: Router
    gpu_service: GpuService | None


async def _in_process_diffusion(
    settings: Settings, configs: dict[str, EngineConfig]
) -> tuple[GpuService, dict[str, Engine]]:
    """One GPU service in this process, and an engine over it for each of `configs`."""
    # Imported here: torch and diffusers load only when the in-process backend is used.
    from gateway.engines.diffusion import DiffusionEngine, in_process_client  # noqa: PLC0415
    from gateway.gpu.server import create_gpu_app, model_path  # noqa: PLC0415

    model = await asyncio.to_thread(model_path, settings)
    service = GpuService(settings.gpu, model)
    await service.start()
    app = create_gpu_app(settings.gpu, None, service=service)
    # The in-process app checks gpu.secret_env's secret when one is set, as a worker would.
    secret = settings.gpu.shared_secret
    return service, {
        name: DiffusionEngine(name, msgspec.structs.replace(cfg, api_key=secret), in_process_client(app))
        for name, cfg in configs.items()
    }


async def build_engines_and_router(settings: Settings, metrics: Metrics) -> Routing:
    """The configured engines (or, with none, the in-process model on every operation) and their router."""
    if not settings.engines:
        local = {LOCAL_ENGINE: EngineConfig(kind="diffusion", timeout_s=600)}
        gpu_service, engines = await _in_process_diffusion(settings, local)
        everywhere = {op: [LOCAL_ENGINE] for op in OPERATIONS}
        return Routing(Router(engines, everywhere, settings.routing, metrics), gpu_service)
    check_route_capabilities(settings)
    engines = build_engines(settings)
    local = {name: cfg for name, cfg in settings.engines.items() if in_process(cfg)}
    served_here: GpuService | None = None
    if local:
        served_here, served = await _in_process_diffusion(settings, local)
        engines.update(served)
    # Configuration order, whatever was built where: the router reports health in this order.
    ordered = {name: engines[name] for name in settings.engines}
    return Routing(Router.from_settings(settings, ordered, metrics), served_here)


def build_blob_links(settings: Settings) -> BlobLinks | None:
    """The signer of the gateway's own input URLs: filesystem store with `public_base_url` only."""
    if settings.storage.kind != "filesystem" or not settings.public_base_url:
        return None
    key = load_or_create_key(settings.data_path, settings.blob_signing_key)
    return BlobLinks(key, settings.public_base_url)


def build_blob_store(settings: Settings) -> BlobStore:
    """The store `[storage]` names: a shared folder (default `<data_dir>/blobs`), a bucket, a container."""
    storage = settings.storage
    # No bucket check here: a least-privilege policy (Get/Put/DeleteObject) may not allow
    # listing the bucket, and a wrong bucket or key surfaces on the first job as StorageError.
    if storage.kind == "s3":
        return S3BlobStore.from_config(storage)
    if storage.kind == "azure":
        return AzureBlobStore.from_config(storage)
    if storage.kind == "gcs":
        return GCSBlobStore.from_config(storage)
    return FilesystemBlobStore(Path(storage.path) if storage.path else settings.data_path / "blobs")


async def build_services(
    settings: Settings,
    *,
    pool: Pool,
    metrics: Metrics,
    auth: KeyAuthenticator,
    embedded: EmbeddedPostgres | None,
    dsn: str,
) -> Services:
    """Everything the app needs, in dependency order."""
    blobs = build_blob_store(settings)
    links = build_blob_links(settings)
    router, gpu_service = await build_engines_and_router(settings, metrics)
    fetch_client = httpx.AsyncClient(timeout=settings.fetch_timeout_s, follow_redirects=False)
    # One LISTEN connection per process wakes the runner and feeds every job event stream and the webhook dispatcher.
    listener = Listener(dsn)
    runner = JobRunner(
        pool=pool,
        router=router,
        blobs=blobs,
        settings=settings,
        metrics=metrics,
        listener=listener if settings.run_worker else None,
        signer=links.url if links is not None else None,
    )
    watchers = JobWatchers()
    listener.listen(JOB_EVENTS_CHANNEL, watchers.notify)
    background = Background(listener=listener, gpu_service=gpu_service)
    services = Services(
        settings=settings,
        pool=pool,
        metrics=metrics,
        blobs=blobs,
        auth=auth,
        router=router,
        runner=runner,
        fetch_client=fetch_client,
        job_watchers=watchers,
        background=background,
        blob_links=links,
        # Engines that fetch inputs by URL (Qolaba) can be offered jobs: the store presigns them,
        # or the gateway serves them at its own signed URLs.
        signs_inputs=settings.storage.presigns or links is not None,
        embedded=embedded,
    )
    dispatcher = None
    if settings.run_worker:
        dispatcher = WebhookDispatcher(
            pool=pool, listener=listener, config=settings.webhooks, allow_hosts=frozenset(settings.fetch_allow_hosts)
        )
    await listener.start()
    if settings.run_worker:
        await runner.start()
        background.runner_started = True
    if dispatcher is not None:
        await dispatcher.start()
        background.webhook_dispatcher = dispatcher
    if settings.run_worker and settings.retention.enabled:
        # Every runner process sweeps on a schedule; the sweep lock makes replicas take turns.
        sweeper = RetentionSweeper(pool=pool, blobs=blobs, settings=settings, metrics=metrics)
        await sweeper.start()
        background.retention_sweeper = sweeper
    background.flusher = asyncio.create_task(_flush_last_used(auth))
    if settings.demo_tenant and embedded is not None:
        await _demo_tenant(services)
    return services


async def _flush_last_used(auth: KeyAuthenticator) -> None:
    while True:
        await asyncio.sleep(15)
        try:
            await auth.flush_last_used()
        except OSError as exc:
            log.warning("recording key use failed: %s", exc)


async def _demo_tenant(services: Services) -> None:
    from gateway.auth.commands import ensure_demo_tenant  # noqa: PLC0415

    key = await ensure_demo_tenant(services.pool, services.settings.data_path)
    if key is not None:
        # Printed once, on first start, for the person who just ran the gateway.
        print(
            f"\nDemo tenant created. Its API key (also in {services.settings.data_path / 'demo-key.txt'}):\n  {key}\n",
            flush=True,
        )


async def close_services(services: Services) -> None:
    """Stop the runner (draining), then close clients and engines."""
    background = services.background
    if background.runner_started:
        await services.runner.stop()
    else:
        await services.runner.stop(drain_s=0)
    if background.webhook_dispatcher is not None:
        await background.webhook_dispatcher.stop()
    if background.retention_sweeper is not None:
        await background.retention_sweeper.stop()
    await background.listener.stop()
    if background.flusher is not None:
        background.flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await background.flusher
    await services.auth.flush_last_used()
    await services.router.aclose()
    if background.gpu_service is not None:
        await background.gpu_service.aclose()
    await services.fetch_client.aclose()
    await services.blobs.aclose()
