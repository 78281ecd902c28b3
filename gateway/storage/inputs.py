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
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image

from gateway.domain.generation import MEDIA_TYPES_OF_PIL
from gateway.errors import PayloadTooLarge, ValidationFailed

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
            if fmt not in MEDIA_TYPES_OF_PIL:
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
    return CheckedImage(data=data, media_type=MEDIA_TYPES_OF_PIL[fmt], width=width, height=height, mode=mode)


# NAT64's well-known prefix: the last 32 bits are an IPv4 address a translator connects to.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Every failed fetch says the same: which of refused, timed out, reset or HTTP 404 it was would
# tell a client which ports of a host are open.
FETCH_FAILED = "the image could not be fetched"
# A fetch as a whole, redirects included, ends after this long: per-read timeouts alone let a
# server trickling a byte at a time hold a request for hours.
FETCH_DEADLINE_S = 30.0


def is_public_address(address: str) -> bool:
    """Whether the gateway may connect to `address`: the SSRF rule for every URL a client gives us.

    An IPv6 address that carries an IPv4 one (mapped, 6to4 in 2002::/16, NAT64) is judged by the
    IPv4 address it reaches."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            if not is_public_address(str(ip.sixtofour)):
                return False
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_loopback)


@dataclass(frozen=True)
class CheckedURL:
    """A URL that passed the SSRF rule, with the address it was checked at (None: an allow-listed host,
    connected to by name)."""

    url: str
    address: str | None

    def request_args(self) -> dict[str, Any]:
        """`url`, `headers` and `extensions` for httpx that connect to the checked address itself, so
        no second DNS lookup (which an attacker's name server could answer differently) comes
        between the check and the connection. TLS still verifies the certificate for the host name
        (`sni_hostname`), and the Host header still names it."""
        if self.address is None:
            return {"url": self.url}
        parsed = httpx.URL(self.url)
        return {
            "url": parsed.copy_with(host=self.address),
            "headers": {"Host": parsed.netloc.decode("ascii")},
            "extensions": {"sni_hostname": parsed.host},
        }


async def check_public_url(url: str, field: str, allow_hosts: frozenset[str], *, what: str) -> CheckedURL:
    """Refuse (ValidationFailed naming `field`) a URL that is not https or whose host resolves to any
    non-public address; return it with the address to connect to. `what` names the URL's kind in
    messages ("remote images", "webhook URLs"). Hosts in `allow_hosts` (config `fetch_allow_hosts`,
    e.g. 127.0.0.1 in tests) skip both rules."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationFailed.field(field, "not a valid URL") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValidationFailed.field(field, "must be an https URL")
    host = parts.hostname
    if host in allow_hosts:
        return CheckedURL(url, None)
    if parts.scheme != "https":
        raise ValidationFailed.field(field, f"{what} must use https")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValidationFailed.field(field, f"cannot resolve {host}") from exc
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise ValidationFailed.field(field, f"cannot resolve {host}")
    for address in addresses:
        if not is_public_address(address):
            raise ValidationFailed.field(field, f"{host} resolves to a non-public address; refused")
    return CheckedURL(url, addresses[0])


async def fetch_remote(
    url: str,
    field: str,
    *,
    client: httpx.AsyncClient,
    max_bytes: int,
    allow_hosts: frozenset[str],
    deadline_s: float = FETCH_DEADLINE_S,
) -> bytes:
    """GET `url` following at most 3 redirects, checking every hop's resolved addresses and
    connecting to the address checked; all of it within `deadline_s`."""
    try:
        async with asyncio.timeout(deadline_s):
            return await _fetch(url, field, client=client, max_bytes=max_bytes, allow_hosts=allow_hosts)
    except TimeoutError as exc:
        raise ValidationFailed.field(field, FETCH_FAILED) from exc


async def _fetch(
    url: str, field: str, *, client: httpx.AsyncClient, max_bytes: int, allow_hosts: frozenset[str]
) -> bytes:
    for _ in range(_MAX_REDIRECTS + 1):
        checked = await check_public_url(url, field, allow_hosts, what="remote images")
        try:
            async with client.stream("GET", follow_redirects=False, **checked.request_args()) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                if response.status_code != 200:
                    raise ValidationFailed.field(field, FETCH_FAILED)
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"{field}: the image is larger than {max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise ValidationFailed.field(field, FETCH_FAILED) from exc
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
