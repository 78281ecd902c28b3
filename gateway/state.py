"""What the app builds in its lifespan and hands to handlers and runners.

Everything with a lifetime (pool, clients, caches) lives here, built once per app and passed
in; no module keeps mutable state of its own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

# Imported at run time (not under TYPE_CHECKING): Litestar resolves these hints for injection.
# httpx only for the fetch client's type (gateway/storage/inputs.py is what uses it); importing
# gateway.gpu.service is light: torch and diffusers load only when a GPU service starts.
import httpx

from gateway.auth.keys import KeyAuthenticator
from gateway.auth.limits import DownloadLimits
from gateway.billing.admission import PriceCache
from gateway.config import Settings
from gateway.db.embedded import EmbeddedPostgres
from gateway.db.notifications import JobWatchers, Listener
from gateway.db.pool import Pool
from gateway.gpu.service import GpuService
from gateway.metrics import Metrics
from gateway.routing.router import Router
from gateway.storage.base import BlobStore
from gateway.storage.links import BlobLinks
from gateway.webhooks.dispatcher import WebhookDispatcher
from gateway.worker.retention import RetentionSweeper
from gateway.worker.runner import JobRunner


@dataclass
class Background:
    """What this process runs beside its handlers; close_services stops each one that started."""

    # The one LISTEN connection of the process: it feeds job event streams and the webhook dispatcher.
    listener: Listener
    # The in-process diffusion backend, when one of the engines is served by this process.
    gpu_service: GpuService | None = None
    # Whether this process runs the job runner loop (settings.run_worker): it is drained on close.
    runner_started: bool = False
    webhook_dispatcher: WebhookDispatcher | None = None
    retention_sweeper: RetentionSweeper | None = None
    # Writes the keys' last-used times every few seconds.
    flusher: asyncio.Task[None] | None = None


@dataclass
class Services:
    settings: Settings
    pool: Pool
    metrics: Metrics
    blobs: BlobStore
    auth: KeyAuthenticator
    router: Router
    runner: JobRunner
    # Fetches the input images a request names by URL (gateway/storage/inputs.py).
    fetch_client: httpx.AsyncClient
    # Wakes each job event stream (GET /v1/jobs/{id}/events) when its job changes.
    job_watchers: JobWatchers
    background: Background
    # Signs the gateway's own URLs of input blobs: filesystem store with a public base URL only.
    blob_links: BlobLinks | None = None
    # Whether engines can be given input images by URL: the store presigns them, or blob_links signs them.
    signs_inputs: bool = False
    embedded: EmbeddedPostgres | None = None
    # The newest price rules, checked against the database on every admission (gateway/billing/admission.py).
    prices: PriceCache = field(default_factory=PriceCache)
    # Password hashes downloads may cost per client address and per file (gateway/api/files.py).
    download_limits: DownloadLimits = field(default_factory=DownloadLimits)
