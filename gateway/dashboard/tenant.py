"""The tenant's dashboard: balance, usage charts and CSV, recent jobs with thumbnails, and keys.

Every number comes from the functions behind /v1/balance, /v1/usage, /v1/jobs and /v1/keys. Every
lookup is scoped to the session's tenant, so another tenant's job, file or key answers 404.
"""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from litestar import Request, Response, get, post
from litestar.datastructures import FormMultiDict
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from PIL import Image

from gateway.api.usage import UsageRow, tenant_balance, usage_csv, usage_rows
from gateway.api.views import load_job_view
from gateway.auth import service
from gateway.auth.keys import SCOPES
from gateway.dashboard import pages
from gateway.dashboard.charts import daily_series, every_day, stacked_bars
from gateway.dashboard.sessions import DashboardSession, checked_form
from gateway.db import dashboard as dq
from gateway.db import jobs as jq
from gateway.db import keys as kq
from gateway.errors import GatewayError, NotFound, PermissionDenied, ValidationFailed
from gateway.state import Services
from gateway.storage.base import BlobNotFound

USAGE_GROUPS = ["day", "operation", "engine"]
RECENT_JOBS = 10
THUMBNAIL_PX = 160
EXPIRY_CHOICES = {"": None, "7": 7, "30": 30, "90": 90, "365": 365}
GRACE_CHOICES = {"0": 0, "3600": 3600, "86400": 86400, "604800": 604800}


def _tenant(session: DashboardSession, scope: str) -> UUID:
    """The session's tenant when its key holds `scope`; an operator has no tenant pages (404)."""
    if session.tenant_id is None:
        raise NotFound("Operators have no tenant pages.")
    if scope not in session.principal.scopes:
        raise PermissionDenied(f"The key you signed in with lacks the {scope!r} scope this page needs.")
    return session.tenant_id


def usage_figures(rows: list[UsageRow], days: list[Any]) -> dict[str, Any]:
    """The two charts (images and credits by day, split by operation and engine) and their totals."""

    def label(r: UsageRow) -> str:
        return f"{r.operation} · {r.engine}"

    images = daily_series(rows, days, day_of=lambda r: r.day, label_of=label, value_of=lambda r: r.images)
    spent = daily_series(rows, days, day_of=lambda r: r.day, label_of=label, value_of=lambda r: r.credits)
    return {
        "images_chart": stacked_bars(
            chart_id="images-chart",
            title="Images by day",
            days=days,
            series=images,
            fmt=lambda v: f"{v:,.0f}",
            unit="images",
            integer=True,
        ),
        "credits_chart": stacked_bars(
            chart_id="credits-chart",
            title="Credits by day",
            days=days,
            series=spent,
            fmt=pages.credits,
            unit="credits",
        ),
        "total_images": sum(r.images for r in rows),
        "total_credits": sum(round(r.credits * 1000) for r in rows) / 1000,
    }


@get("/overview")
async def overview(
    *,
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    session: NamedDependency[DashboardSession],
    days: FromQuery[int | None] = None,
) -> Response[str]:
    """Balance, usage over the chosen range, and the newest jobs."""
    tenant_id = _tenant(session, "usage:read")
    chosen, start, end = pages.day_range(days)
    can_see_jobs = "jobs:read" in session.principal.scopes
    async with services.pool.acquire() as conn:
        balance = await tenant_balance(conn, tenant_id)
        rows = await usage_rows(conn, tenant_id, start, end, USAGE_GROUPS)
        jobs = await jq.list_jobs(conn, tenant_id, before=None, state=None, operation=None, limit=RECENT_JOBS)
        results = await dq.results_of_jobs(conn, [j["id"] for j in jobs]) if can_see_jobs else []
    files: dict[UUID, list[str]] = {}
    for r in results:
        if r["file_id"]:
            files.setdefault(r["job_id"], []).append(r["file_id"])
    return pages.page(
        request,
        "overview.html",
        title="Overview",
        session=session,
        balance=balance,
        days=chosen,
        ranges=pages.RANGES,
        start=start,
        end=end,
        rows=rows,
        jobs=jobs if can_see_jobs else None,
        files=files,
        **usage_figures(rows, every_day(start, end)),
    )


@get("/usage.csv", media_type="text/csv")
async def usage_export(
    *,
    services: NamedDependency[Services],
    session: NamedDependency[DashboardSession],
    days: FromQuery[int | None] = None,
) -> Response[str]:
    """The usage on the page as CSV (the same rows and columns as /v1/usage with Accept: text/csv)."""
    tenant_id = _tenant(session, "usage:read")
    _, start, end = pages.day_range(days)
    async with services.pool.acquire() as conn:
        rows = await usage_rows(conn, tenant_id, start, end, USAGE_GROUPS)
    return Response(
        usage_csv(rows, USAGE_GROUPS),
        media_type="text/csv; charset=utf-8",
        headers={**pages.NO_STORE, "Content-Disposition": f'attachment; filename="usage-{start}-{end}.csv"'},
    )


@get("/jobs/{job_id:uuid}")
async def job_page(
    *,
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    session: NamedDependency[DashboardSession],
    job_id: FromPath[UUID],
) -> Response[str]:
    """One job: state, progress, each image (a thumbnail unless the files are password-protected), attempts."""
    tenant_id = _tenant(session, "jobs:read")
    async with services.pool.acquire() as conn:
        job = await load_job_view(conn, job_id, tenant_id)
    if job is None:
        raise NotFound("No such job.")
    return pages.page(request, "job.html", title=f"Job {job.id}", session=session, job=job)


def _thumbnail(data: bytes, max_pixels: int) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        if img.width * img.height > max_pixels:
            raise ValueError("image larger than the configured pixel limit")
        img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        out = io.BytesIO()
        img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB").save(out, format="PNG")
        return out.getvalue()


@get("/thumbnails/{file_id:str}", media_type="image/png")
async def thumbnail(
    *,
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    session: NamedDependency[DashboardSession],
    file_id: FromPath[str],
) -> Response[bytes]:
    """A small PNG of one of the tenant's images. Never for a password-protected job: 404 like a stranger's."""
    tenant_id = _tenant(session, "jobs:read")
    async with services.pool.acquire() as conn:
        row = await dq.thumbnail_source(conn, file_id, tenant_id)
    if row is None:
        raise NotFound("No such file.")
    etag = f'"thumb-{row["etag"]}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
    if request.headers.get("if-none-match") == etag:
        return Response(b"", status_code=304, headers=headers)
    try:
        data = await services.blobs.get(row["blob_key"])
        png = await asyncio.to_thread(_thumbnail, data, services.settings.max_input_pixels)
    except (BlobNotFound, OSError, ValueError) as exc:
        raise NotFound("This image is no longer available.") from exc
    return Response(png, media_type="image/png", headers=headers)


def _key_status(row: Any, now: datetime) -> str:
    if row["revoked_at"] is not None:
        return "revoked"
    if row["expires_at"] is not None and row["expires_at"] <= now:
        return "expired"
    return "active"


async def _keys_page(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    session: DashboardSession,
    *,
    status: int = 200,
    issued: service.IssuedKey | None = None,
    error: str | None = None,
    notice: str | None = None,
) -> Response[str]:
    tenant_id = _tenant(session, "keys:manage")
    async with services.pool.acquire() as conn:
        rows = await kq.list_tenant_keys(conn, tenant_id)
    now = datetime.now(UTC)
    keys = [{"row": r, "status": _key_status(r, now)} for r in rows]
    return pages.page(
        request,
        "keys.html",
        status=status,
        title="API keys",
        session=session,
        keys=keys,
        issued=issued,
        error=error,
        notice=notice,
        grantable=[s for s in SCOPES if s in session.principal.scopes],
        expiry_choices=EXPIRY_CHOICES,
        grace_choices=GRACE_CHOICES,
    )


@get("/keys")
async def keys_page(
    *,
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    session: NamedDependency[DashboardSession],
    revoked: FromQuery[UUID | None] = None,
) -> Response[str]:
    """The tenant's keys with their state, and forms to create, rotate and revoke."""
    notice = f"Key {revoked} is revoked; it no longer works anywhere." if revoked else None
    return await _keys_page(request, services, session, notice=notice)


def _choice(form: FormMultiDict, field: str, choices: dict[str, Any]) -> Any:
    value = str(form.get(field) or "")
    if value not in choices:
        raise ValidationFailed.field(field, f"choose one of the offered values, not {value!r}")
    return choices[value]


def _key_spec(form: FormMultiDict) -> service.KeySpec:
    days = _choice(form, "expires_in_days", EXPIRY_CHOICES)
    return service.KeySpec(
        name=str(form.get("name") or ""),
        scopes=[str(s) for s in form.getall("scopes", [])],
        expires_at=None if days is None else datetime.now(UTC) + timedelta(days=days),
    )


@post("/keys")
async def create_key(
    *,
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    session: NamedDependency[DashboardSession],
) -> Response[str]:
    """A new key, its secret shown in this one response and never again."""
    form = await checked_form(request, session)
    tenant_id = _tenant(session, "keys:manage")
    try:
        # The rule the API applies: no wider scopes, higher rate, larger cap or later expiry than
        # the key this session signed in with.
        spec = service.within_creator(_key_spec(form), session.principal, rate_limit_given=False)
        async with services.pool.acquire() as conn, conn.transaction():
            issued = await service.create_tenant_key(
                conn,
                tenant_id=tenant_id,
                spec=spec,
                created_by_key_id=session.principal.key_id,
                grantable=session.principal.scopes,
            )
    except GatewayError as exc:
        return await _keys_page(request, services, session, status=exc.http_status, error=exc.detail)
    return await _keys_page(request, services, session, status=201, issued=issued)


@post("/keys/{key_id:uuid}/rotate")
async def rotate_key(
    *,
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    session: NamedDependency[DashboardSession],
    key_id: FromPath[UUID],
) -> Response[str]:
    """A new secret for the key, shown once; the old one works for the chosen grace period."""
    form = await checked_form(request, session)
    tenant_id = _tenant(session, "keys:manage")
    try:
        grace = _choice(form, "grace_period_s", GRACE_CHOICES)
        async with services.pool.acquire() as conn, conn.transaction():
            issued = await service.rotate(
                conn, tenant_id=tenant_id, key_id=key_id, caller=session.principal, grace_period_s=grace
            )
    except NotFound:
        raise
    except GatewayError as exc:
        return await _keys_page(request, services, session, status=exc.http_status, error=exc.detail)
    services.auth.invalidate()
    return await _keys_page(request, services, session, issued=issued)


@post("/keys/{key_id:uuid}/revoke")
async def revoke_key(
    *,
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    session: NamedDependency[DashboardSession],
    key_id: FromPath[UUID],
) -> Response[Any]:
    """Revoke the key everywhere, and end every dashboard session signed in with it."""
    await checked_form(request, session)
    tenant_id = _tenant(session, "keys:manage")
    async with services.pool.acquire() as conn, conn.transaction():
        await service.revoke(conn, tenant_id=tenant_id, key_id=key_id)
        await dq.delete_key_sessions(conn, key_id)
    services.auth.invalidate()
    return pages.see_other(f"/dashboard/keys?revoked={key_id}")


routes = [overview, usage_export, job_page, thumbnail, keys_page, create_key, rotate_key, revoke_key]
