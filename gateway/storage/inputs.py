"""Turning a client's image reference into checked bytes.

A reference is an https URL (fetched only from public addresses, re-checked on every redirect),
a data: URI, or plain base64. Images are decoded with a pixel limit (no decompression bombs)
and must be PNG, JPEG or WebP.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image

from gateway.errors import PayloadTooLarge, ValidationFailed

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_MAX_REDIRECTS = 3


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    media_type: str
    width: int
    height: int
    mode: str


def decode_image(data: bytes, field: str, *, max_pixels: int) -> CheckedImage:
    """Check format and size from the header, then decode fully, refusing oversized images."""
    too_big = f"image has more than {max_pixels} pixels (the limit); refused without decoding"
    try:
        # Pillow refuses, from the header, images far above its own limit (and warns, or raises
        # where warnings are errors, a little above it); ours is checked just below.
        img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValidationFailed.field(field, too_big) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValidationFailed.field(field, "not a decodable image") from exc
    try:
        with img:
            fmt = img.format or ""
            if fmt not in FORMATS:
                raise ValidationFailed.field(
                    field, f"unsupported image format {fmt or 'unknown'}; use PNG, JPEG or WebP"
                )
            width, height = img.size
            if width * height > max_pixels:
                raise ValidationFailed.field(field, too_big)
            img.load()
            mode = img.mode
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ValidationFailed):
            raise
        raise ValidationFailed.field(field, "not a decodable image") from exc
    return CheckedImage(data=data, media_type=FORMATS[fmt], width=width, height=height, mode=mode)


def is_public_address(address: str) -> bool:
    """Whether the gateway may connect to `address`: the SSRF rule for every URL a client gives us."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_loopback)


async def check_public_url(url: str, field: str, allow_hosts: frozenset[str], *, what: str) -> None:
    """Refuse (ValidationFailed naming `field`) a URL that is not https or whose host resolves to any
    non-public address. `what` names the URL's kind in messages ("remote images", "webhook URLs").
    Hosts in `allow_hosts` (config `fetch_allow_hosts`, e.g. 127.0.0.1 in tests) skip both rules."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationFailed.field(field, "not a valid URL") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValidationFailed.field(field, "must be an https URL")
    host = parts.hostname
    if host in allow_hosts:
        return
    if parts.scheme != "https":
        raise ValidationFailed.field(field, f"{what} must use https")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValidationFailed.field(field, f"cannot resolve {host}") from exc
    for info in infos:
        if not is_public_address(str(info[4][0])):
            raise ValidationFailed.field(field, f"{host} resolves to a non-public address; refused")


async def fetch_remote(
    url: str, field: str, *, client: httpx.AsyncClient, max_bytes: int, allow_hosts: frozenset[str]
) -> bytes:
    """GET `url` following at most 3 redirects, checking every hop's resolved addresses."""
    for _ in range(_MAX_REDIRECTS + 1):
        await check_public_url(url, field, allow_hosts, what="remote images")
        try:
            async with client.stream("GET", url, follow_redirects=False) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                if response.status_code != 200:
                    raise ValidationFailed.field(field, f"fetching the image returned HTTP {response.status_code}")
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"{field}: the image is larger than {max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise ValidationFailed.field(field, f"fetching the image failed ({type(exc).__name__})") from exc
    raise ValidationFailed.field(field, "too many redirects")


def decode_inline(ref: str, field: str, max_bytes: int) -> bytes:
    """A data: URI or plain base64."""
    payload = ref
    if ref.startswith("data:"):
        header, _, payload = ref.partition(",")
        if ";base64" not in header:
            raise ValidationFailed.field(field, "data: URIs must be base64-encoded")
    if len(payload) * 3 // 4 > max_bytes:
        raise PayloadTooLarge(f"{field}: the image is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationFailed.field(field, "must be an https URL, a data: URI or valid base64") from exc


async def load_image(
    ref: str, field: str, *, client: httpx.AsyncClient, max_bytes: int, max_pixels: int, allow_hosts: frozenset[str]
) -> CheckedImage:
    """Resolve and check one image reference from a request."""
    if ref.startswith(("https://", "http://")):
        data = await fetch_remote(ref, field, client=client, max_bytes=max_bytes, allow_hosts=allow_hosts)
    else:
        data = decode_inline(ref, field, max_bytes)
    return await asyncio.to_thread(decode_image, data, field, max_pixels=max_pixels)


def _alpha(img: Image.Image) -> Image.Image | None:
    if "A" in img.getbands() or "transparency" in img.info:
        return img.convert("RGBA").getchannel("A")
    return None


def _encode_mask(repaint: Image.Image) -> bytes:
    out = io.BytesIO()
    repaint.save(out, format="PNG")
    return out.getvalue()


# Alpha 0 (fully transparent) becomes white (repaint); any other alpha becomes black (keep).
_TRANSPARENT_TO_WHITE = [255] + [0] * 255


def mask_from_alpha(image: CheckedImage, field: str, *, required: bool) -> bytes | None:
    """Our mask (white = repaint, black = keep) from an image whose fully transparent pixels mark
    the area to repaint, as OpenAI's image edits define masks.

    With `required`, an image without an alpha channel is refused (it cannot mark anything);
    otherwise None says the image marks nothing, as does one with no fully transparent pixel.
    """
    with Image.open(io.BytesIO(image.data)) as img:
        alpha = _alpha(img)
    if alpha is None:
        if required:
            raise ValidationFailed.field(field, "the mask needs an alpha channel; its transparent pixels mark the edit")
        return None
    repaint = alpha.point(_TRANSPARENT_TO_WHITE, "L")
    if repaint.getextrema()[1] == 0 and not required:
        return None
    return _encode_mask(repaint)
