"""What the app builds in its lifespan and hands to handlers and runners.

Everything with a lifetime (pool, clients, caches) lives here, built once per app and passed
in; no module keeps mutable state of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

# Imported at run time (not under TYPE_CHECKING): Litestar resolves these hints for injection.
from gateway.auth.keys import KeyAuthenticator
from gateway.auth.limits import DownloadLimits
from gateway.billing.admission import PriceCache
from gateway.config import Settings
from gateway.db.embedded import EmbeddedPostgres
from gateway.db.pool import Pool
from gateway.metrics import Metrics
from gateway.routing.router import Router
from gateway.storage.base import BlobStore
from gateway.worker.runner import JobRunner


@dataclass
class Services:
    settings: Settings
    pool: Pool
    metrics: Metrics
    blobs: BlobStore
    auth: KeyAuthenticator
    router: Router
    runner: JobRunner
    embedded: EmbeddedPostgres | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    # The newest price rules, checked against the database on every admission (gateway/billing/admission.py).
    prices: PriceCache = field(default_factory=PriceCache)
    # Database errors as one tuple, so handlers can catch them without importing asyncpg.
    db_errors: tuple[type[BaseException], ...] = (asyncpg.PostgresError, asyncpg.InterfaceError)
    # Password hashes downloads may cost per client address and per file (gateway/api/files.py).
    download_limits: DownloadLimits = field(default_factory=DownloadLimits)
