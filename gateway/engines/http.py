"""The HTTP boundary shared by the vendor engines.

Foreign exceptions (httpx's) and HTTP statuses are translated into `EngineError`s here, once,
by type and status code; nothing in the engines looks at exception or message text.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import itertools
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
import msgspec
from PIL import Image, UnidentifiedImageError

from gateway.backoff import exponential_step
from gateway.config import EngineConfig
from gateway.domain.generation import MEDIA_TYPES_OF_PIL
from gateway.engines.base import (
    EngineCredentialsRefused,
    EngineError,
    EngineRateLimited,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
)

T = TypeVar("T")

# Vendors answer with images of a few MB at most; anything far above is a broken answer.
DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def error_for_status(
    status: int,
    what: str,
    *,
    retry_after: str | None = None,
    detail: str = "",
    rejected: frozenset[int] = frozenset({400, 413, 415, 422}),
) -> EngineError:
    """The `EngineError` for a non-success HTTP status of a vendor call.

    Only statuses that say "your request is wrong" reject the request (no fallback); auth and
    payment problems are our account's, so another engine may still serve the same request.
    """
    suffix = f", {detail}" if detail else ""
    if status == 429:
        return EngineRateLimited(f"{what}: rate limited (HTTP 429{suffix})", retry_after=parse_retry_after(retry_after))
    if status in rejected:
        return EngineRejected(f"{what}: request rejected (HTTP {status}{suffix})")
    if status in (401, 403):
        return EngineCredentialsRefused(f"{what}: vendor refused our credentials (HTTP {status}{suffix})")
    if status == 402:
        return EngineUnavailable(f"{what}: vendor account out of credits or over its contract (HTTP 402{suffix})")
    if status in (408, 504):
        return EngineTimeout(f"{what}: vendor timed out (HTTP {status}{suffix})")
    return EngineUnavailable(f"{what}: vendor answered HTTP {status}{suffix}")


@asynccontextmanager
async def translate_transport_errors(what: str) -> AsyncIterator[None]:
    """Turn httpx transport exceptions raised inside the block into `EngineError`s."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise EngineTimeout(f"{what}: no answer in time ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise EngineUnavailable(f"{what}: connection failed ({type(exc).__name__})") from exc


def json_post(client: httpx.AsyncClient, url: str, body: Any, headers: dict[str, str]) -> httpx.Request:
    """A POST with a JSON body encoded by msgspec (httpx's `json=` goes through the slower `json` module)."""
    return client.build_request(
        "POST", url, content=msgspec.json.encode(body), headers={**headers, "Content-Type": "application/json"}
    )


async def send(client: httpx.AsyncClient, request: httpx.Request, what: str) -> httpx.Response:
    """Send `request` and return the response read in full, translating transport errors."""
    async with translate_transport_errors(what):
        return await client.send(request)


def decode_json(response: httpx.Response, schema: type[T], what: str) -> T:
    """Decode a vendor's JSON body into `schema`; a malformed body is the vendor failing."""
    try:
        return msgspec.json.decode(response.content, type=schema)
    except msgspec.DecodeError as exc:
        raise EngineUnavailable(f"{what}: malformed answer from the vendor ({exc})") from exc


async def download(
    client: httpx.AsyncClient,
    url: str,
    what: str,
    *,
    headers: Mapping[str, str] | None = None,
    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
) -> bytes:
    """GET `url` (a vendor's output link) with a size cap. No vendor credentials are sent."""
    async with translate_transport_errors(what), client.stream("GET", url, headers=headers) as response:
        if response.status_code in (401, 403):
            # An output link is fetched without our account key: its refusal says nothing of our credentials.
            raise EngineUnavailable(f"{what}: the output link was refused (HTTP {response.status_code})")
        if response.status_code != 200:
            raise error_for_status(response.status_code, what, retry_after=response.headers.get("retry-after"))
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise EngineUnavailable(f"{what}: output larger than {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


class ImageInfo(msgspec.Struct, frozen=True):
    """What we learn from an image's header: its media type and size."""

    media_type: str
    width: int
    height: int


# What an engine may answer: our formats, and GIF (re-encoded into the requested output format).
_FORMAT_MEDIA_TYPES = {**MEDIA_TYPES_OF_PIL, "GIF": "image/gif"}


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IHDR = struct.Struct(">I4sII5sI")  # length, type, width, height, 5 more bytes, CRC


def _png_header(data: bytes) -> ImageInfo | None:
    """The size from a PNG's first chunk (IHDR), when that chunk is well formed; else None.

    Every engine output we have seen is PNG, and opening it with Pillow (plugin probing, reading the
    chunks up to the pixel data) cost about 3 % of the gateway's CPU per sync request."""
    if len(data) < 8 + _PNG_IHDR.size or not data.startswith(_PNG_SIGNATURE):
        return None
    length, kind, width, height, _, crc = _PNG_IHDR.unpack_from(data, 8)
    if length != 13 or kind != b"IHDR" or zlib.crc32(data[12:29]) != crc or not (width and height):
        return None
    return ImageInfo("image/png", width, height)


def inspect_image(data: bytes) -> ImageInfo | None:
    """Media type and size of `data`, or None when it is not an image we accept.

    Only the header is parsed (Pillow opens lazily; a PNG's size is read from its IHDR chunk), so
    this is cheap even for large outputs.
    """
    png = _png_header(data)
    if png is not None:
        return png
    try:
        with Image.open(io.BytesIO(data)) as image:
            media_type = _FORMAT_MEDIA_TYPES.get(image.format or "")
            if media_type is None:
                return None
            return ImageInfo(media_type, image.width, image.height)
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def poll_delays(config: EngineConfig) -> AsyncIterator[None]:
    """Sleep between job polls: `poll_interval_s`, growing by half each time up to the max (the
    first wait is `poll_interval_s` as configured, even above the max). No jitter: one job's polls
    do not synchronise with other jobs'."""

    async def delays() -> AsyncIterator[None]:
        await asyncio.sleep(config.poll_interval_s)
        yield
        for n in itertools.count(1):
            await asyncio.sleep(exponential_step(config.poll_interval_s, 1.5, n, config.max_poll_interval_s))
            yield

    return delays()


async def within_budget(config: EngineConfig, what: str, work: Callable[[], Awaitable[T]]) -> T:
    """Run one attempt under the engine's whole-job budget (`timeout_s`)."""
    try:
        async with asyncio.timeout(config.timeout_s):
            return await work()
    except TimeoutError as exc:
        raise EngineTimeout(f"{what}: no result within {config.timeout_s:g}s") from exc


def option_error(
    options: Mapping[str, Any], allowed: Mapping[str, Callable[[Any], str | None]], kind: str
) -> str | None:
    """Check `engine_options.<kind>` against per-option validators; the first problem, or None."""
    for key, value in options.items():
        validator = allowed.get(key)
        if validator is None:
            known = ", ".join(sorted(allowed))
            return f"engine_options.{kind}.{key} is not a {kind} option (known: {known})"
        problem = validator(value)
        if problem is not None:
            return f"engine_options.{kind}.{key} {problem}"
    return None


def one_of(values: frozenset[str] | tuple[str, ...]) -> Callable[[Any], str | None]:
    """A validator accepting one of `values`."""
    choices = ", ".join(sorted(values))

    def check(value: Any) -> str | None:
        if isinstance(value, str) and value in values:
            return None
        return f"must be one of {choices}"

    return check


def is_bool(value: Any) -> str | None:
    """A validator accepting a boolean."""
    return None if isinstance(value, bool) else "must be a boolean"
