"""AWS Signature Version 4 for S3-compatible stores: signed headers and presigned URLs.

Pure functions over strings and bytes, no I/O, so the signer is checked against AWS's
published examples and botocore without a server. Only what S3 needs is here: S3 signs the
path as sent (no double encoding, no dot-segment normalisation, unlike other AWS services),
and a request's payload hash travels in `x-amz-content-sha256`.

Reference: "Authenticating Requests (AWS Signature Version 4)" in the Amazon S3 API guide.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_PAYLOAD_SHA256 = hashlib.sha256(b"").hexdigest()
# S3 refuses presigned URLs that live longer than a week.
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600

_DEFAULT_PORTS = {"http": 80, "https": 443}


def sha256_hex(data: bytes) -> str:
    """The lowercase hex SHA-256 of `data`, as `x-amz-content-sha256` wants it."""
    return hashlib.sha256(data).hexdigest()


def uri_encode(value: str, *, keep_slash: bool = False) -> str:
    """Percent-encode every byte except the unreserved set `A-Z a-z 0-9 - . _ ~` (RFC 3986).

    Object keys are encoded with `keep_slash=True` (the slash separates path segments);
    query names and values encode it too.
    """
    return quote(value, safe="/~" if keep_slash else "~")


def _amz_date(now: datetime) -> str:
    if now.tzinfo is None:
        raise ValueError("signing time must be timezone-aware")
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def host_header(url: str) -> str:
    """The Host value a client sends for `url`: lowercase host, port only when not the default."""
    parts = urlsplit(url)
    if parts.hostname is None:
        raise ValueError(f"URL has no host: {url!r}")
    host = parts.hostname
    if ":" in host:  # an IPv6 literal keeps its brackets in Host
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme):
        return f"{host}:{port}"
    return host


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Query parameters encoded and sorted by name, then value, as the canonical request wants."""
    encoded = sorted((uri_encode(name), uri_encode(value)) for name, value in pairs)
    return "&".join(f"{name}={value}" for name, value in encoded)


def _canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    # Header names compare case-insensitively; values lose outer whitespace and inner runs of it.
    normalized = {name.strip().lower(): " ".join(value.split()) for name, value in headers.items()}
    names = sorted(normalized)
    block = "".join(f"{name}:{normalized[name]}\n" for name in names)
    return block, ";".join(names)


def canonical_request(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    payload_sha256: str,
) -> tuple[str, str]:
    """The canonical request and its signed-header list.

    `path` must already be percent-encoded (as `uri_encode(key, keep_slash=True)` makes it):
    S3 signs the path exactly as it goes on the wire.
    """
    header_block, signed_headers = _canonical_headers(headers)
    text = "\n".join([method.upper(), path or "/", query, header_block, signed_headers, payload_sha256])
    return text, signed_headers


def credential_scope(date_stamp: str, region: str, service: str) -> str:
    """`YYYYMMDD/region/service/aws4_request`: what a signing key is valid for."""
    return f"{date_stamp}/{region}/{service}/aws4_request"


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    """The text the derived key signs: algorithm, time, scope and the canonical request's hash."""
    return "\n".join([ALGORITHM, amz_date, scope, sha256_hex(canonical.encode())])


def signing_key(secret_key: str, date_stamp: str, region: str, service: str) -> bytes:
    """The day-scoped HMAC key derived from the secret (kDate -> kRegion -> kService -> kSigning)."""
    key = hmac.new(f"AWS4{secret_key}".encode(), date_stamp.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _signature(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


class SigV4Signer:
    """Signs requests for one set of credentials, region and service (`s3` by default)."""

    def __init__(self, access_key: str, secret_key: str, region: str, service: str = "s3") -> None:
        if not access_key or not secret_key:
            raise ValueError("access key and secret key must not be empty")
        self._access_key = access_key
        self._secret_key = secret_key
        self.region = region
        self.service = service

    def __repr__(self) -> str:
        # The secret must never reach a log line through a repr.
        return f"SigV4Signer(access_key={self._access_key!r}, region={self.region!r}, service={self.service!r})"

    def sign_headers(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        payload_sha256: str,
        now: datetime,
    ) -> dict[str, str]:
        """The headers to send: `headers` plus host, x-amz-date, x-amz-content-sha256 and authorization.

        Every header given is signed, so a proxy that alters one makes the server refuse the request.
        """
        parts = urlsplit(url)
        amz_date = _amz_date(now)
        signed = {name.lower(): value for name, value in headers.items()}
        signed["host"] = host_header(url)
        signed["x-amz-date"] = amz_date
        signed["x-amz-content-sha256"] = payload_sha256
        query = canonical_query(parse_qsl(parts.query, keep_blank_values=True))
        canonical, signed_headers = canonical_request(method, parts.path, query, signed, payload_sha256)
        scope = credential_scope(amz_date[:8], self.region, self.service)
        key = signing_key(self._secret_key, amz_date[:8], self.region, self.service)
        signature = _signature(key, string_to_sign(amz_date, scope, canonical))
        signed["authorization"] = (
            f"{ALGORITHM} Credential={self._access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
        )
        return signed

    def presign_url(self, method: str, url: str, expires_s: int, now: datetime) -> str:
        """`url` with query-string authentication, valid for `expires_s` seconds from `now`.

        Only the host header is signed, so any HTTP client (a vendor's fetcher) can use the URL
        as it is; the payload is `UNSIGNED-PAYLOAD`, as S3 requires for presigned URLs.
        """
        if not 1 <= expires_s <= MAX_PRESIGN_EXPIRES_S:
            raise ValueError(f"expires_s must be within 1..{MAX_PRESIGN_EXPIRES_S}, got {expires_s}")
        parts = urlsplit(url)
        amz_date = _amz_date(now)
        scope = credential_scope(amz_date[:8], self.region, self.service)
        pairs = [
            *parse_qsl(parts.query, keep_blank_values=True),
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{self._access_key}/{scope}"),
            ("X-Amz-Date", amz_date),
            ("X-Amz-Expires", str(expires_s)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        query = canonical_query(pairs)
        canonical, _ = canonical_request(method, parts.path, query, {"host": host_header(url)}, UNSIGNED_PAYLOAD)
        key = signing_key(self._secret_key, amz_date[:8], self.region, self.service)
        signature = _signature(key, string_to_sign(amz_date, scope, canonical))
        return f"{parts.scheme}://{parts.netloc}{parts.path or '/'}?{query}&X-Amz-Signature={signature}"
