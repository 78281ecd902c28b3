"""A Google Cloud Storage server for tests: the XML API object_store speaks, checking credentials as GCS does.

No GCS emulator installable here speaks that API: gcp-storage-emulator (PyPI, 2026.7.19) answers
PUT and GET on it without ETag or Last-Modified (object_store refuses both) and has no DELETE and
no list; fake-gcs-server ships only as a Go binary or a container image. So this server keeps
objects in memory and implements, from Google's XML API reference, the calls a store makes: PUT,
GET, HEAD and DELETE Object, and GET Bucket with list-type=2, with GCS's error document.

Authentication is checked with Google's own libraries, an implementation independent of the
store's (object_store's Rust signer):
- `Authorization: Bearer` must be a JWT signed by a registered service account's key, unexpired and
  scoped for Cloud Storage (google.auth.jwt.decode);
- a signed URL must carry the signature google-cloud-storage's V4 signer computes for the same key,
  time, expiry and resource, must not have expired, and allows only the method it was signed for.
GCS checks a signed URL against its own host, storage.googleapis.com, whichever address the client
reached it by (object_store signs that host for every endpoint): so does this server.
Its clock can be moved forward, so a test sees a signed URL expire without waiting for it.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote
from xml.sax.saxutils import escape

from google.auth import exceptions as google_auth_errors
from google.auth import jwt
from google.cloud.storage._signing import generate_signed_url_v4
from google.oauth2 import service_account

from tests.integration.storage.wsgi_server import BackgroundWSGIServer, Refused

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

SIGNED_HOST = "storage.googleapis.com"
_STORAGE_SCOPES = frozenset(
    {
        "https://www.googleapis.com/auth/cloud-platform",
        "https://www.googleapis.com/auth/devstorage.full_control",
        "https://www.googleapis.com/auth/devstorage.read_write",
    }
)
_MAX_SIGNED_URL_S = 7 * 24 * 3600


@dataclass
class _Object:
    data: bytes
    content_type: str
    generation: int
    updated: datetime

    @property
    def etag(self) -> str:
        return f'"{hashlib.md5(self.data, usedforsecurity=False).hexdigest()}"'

    def metadata(self) -> list[tuple[str, str]]:
        """The headers GCS sends about an object, with a PUT's answer and with every GET's."""
        return [
            ("ETag", self.etag),
            ("Last-Modified", format_datetime(self.updated, usegmt=True)),
            ("x-goog-generation", str(self.generation)),
            ("x-goog-metageneration", "1"),
            ("x-goog-stored-content-length", str(len(self.data))),
        ]


@dataclass
class _Account:
    info: dict[str, str]  # the service account's JSON key: its email and private key
    public_pem: str


@dataclass
class GCSApp:
    """The WSGI app: buckets of objects in memory, every request authenticated first."""

    accounts: dict[str, _Account] = field(default_factory=dict)  # by client_email
    buckets: dict[str, dict[str, _Object]] = field(default_factory=dict)
    clock_offset: timedelta = field(default=timedelta(0))  # added to the real time for signed URLs
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of each request
    _generation: int = 1_700_000_000_000_000
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ["REQUEST_METHOD"])
        raw_path = str(environ.get("RAW_URI") or environ["PATH_INFO"]).partition("?")[0]
        query = dict(parse_qsl(str(environ.get("QUERY_STRING", "")), keep_blank_values=True))
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        bucket, _, name = unquote(raw_path).lstrip("/").partition("/")
        self.requests.append((method, raw_path))
        try:
            self._authenticate(environ, method, bucket, name, query)
            status, headers, payload = self._serve(method, bucket, name, query, body, environ)
        except Refused as refusal:
            return refusal.answer(start_response, "application/xml; charset=UTF-8")
        start_response(f"{status} OK", headers)
        return [b""] if method == "HEAD" else [payload]

    # Authentication

    def _authenticate(
        self, environ: WSGIEnvironment, method: str, bucket: str, name: str, query: Mapping[str, str]
    ) -> None:
        authorization = str(environ.get("HTTP_AUTHORIZATION", ""))
        if "X-Goog-Signature" in query:
            self._check_signed_url(method, bucket, name, query)
        elif authorization.startswith("Bearer "):
            self._check_token(authorization.removeprefix("Bearer "))
        else:
            raise Refused(401, "AuthenticationRequired", "Anonymous caller does not have storage access.")

    def _check_token(self, token: str) -> None:
        try:
            claims = jwt.decode(token, verify=False)
            account = self.accounts[claims["iss"]]
            claims = jwt.decode(token, certs=account.public_pem)
        except (KeyError, ValueError, google_auth_errors.GoogleAuthError) as exc:
            raise Refused(401, "AuthenticationRequired", f"Invalid Credentials: {exc}") from exc
        if not _STORAGE_SCOPES & set(str(claims.get("scope", "")).split()):
            raise Refused(403, "AccessDenied", "The token is not scoped for Cloud Storage.")

    def _check_signed_url(self, method: str, bucket: str, name: str, query: Mapping[str, str]) -> None:
        try:
            email, _date, _region, _service, _request = query["X-Goog-Credential"].split("/")
            issued = datetime.strptime(query["X-Goog-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            expires_s = int(query["X-Goog-Expires"])
            signed_headers = query["X-Goog-SignedHeaders"]
        except (KeyError, ValueError) as exc:
            raise Refused(400, "InvalidArgument", "Malformed signed URL.") from exc
        if query.get("X-Goog-Algorithm") != "GOOG4-RSA-SHA256" or signed_headers != "host":
            raise Refused(400, "InvalidArgument", "Only GOOG4-RSA-SHA256 URLs signing the host are accepted here.")
        if not 1 <= expires_s <= _MAX_SIGNED_URL_S:
            raise Refused(400, "InvalidArgument", "X-Goog-Expires must be between 1 second and 7 days.")
        now = datetime.now(UTC) + self.clock_offset
        if now > issued + timedelta(seconds=expires_s):
            raise Refused(400, "ExpiredToken", "Invalid argument: the signed URL has expired.")
        if email not in self.accounts:
            raise Refused(403, "SignatureDoesNotMatch", f"No service account {email}.")
        # The signature a V4 URL for this method and resource would carry, made by Google's signer.
        extra = {k: v for k, v in query.items() if not k.startswith("X-Goog-")}
        expected_url = generate_signed_url_v4(
            service_account.Credentials.from_service_account_info(self.accounts[email].info),
            f"/{bucket}/{name}",
            expiration=expires_s,
            api_access_endpoint=f"https://{SIGNED_HOST}",
            method=method,
            query_parameters=extra or None,
            _request_timestamp=query["X-Goog-Date"],
        )
        expected = dict(parse_qsl(expected_url.partition("?")[2]))["X-Goog-Signature"]
        if not hmac.compare_digest(expected, query["X-Goog-Signature"]):
            raise Refused(403, "SignatureDoesNotMatch", "The request signature we calculated does not match.")

    # The XML API

    def _serve(
        self,
        method: str,
        bucket: str,
        name: str,
        query: Mapping[str, str],
        body: bytes,
        environ: WSGIEnvironment,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        if bucket not in self.buckets:
            raise Refused(404, "NoSuchBucket", "The specified bucket does not exist.")
        objects = self.buckets[bucket]
        if not name:
            if method == "GET" and query.get("list-type") == "2":
                return 200, [("Content-Type", "application/xml; charset=UTF-8")], _list(bucket, objects, query)
            raise Refused(400, "InvalidArgument", f"{method} on a bucket is not served here.")
        if method == "PUT":
            with self._lock:
                self._generation += 1
                obj = _Object(
                    body,
                    str(environ.get("CONTENT_TYPE") or "application/octet-stream"),
                    self._generation,
                    datetime.now(UTC).replace(microsecond=0),
                )
                objects[name] = obj
            return 200, [*obj.metadata(), ("Content-Length", "0")], b""
        if name not in objects:
            raise Refused(404, "NoSuchKey", "The specified key does not exist.")
        if method in {"GET", "HEAD"}:
            obj = objects[name]
            body_headers = [("Content-Type", obj.content_type), ("Content-Length", str(len(obj.data)))]
            return 200, [*body_headers, *obj.metadata()], obj.data
        if method == "DELETE":
            del objects[name]
            return 204, [], b""
        raise Refused(405, "MethodNotAllowed", f"{method} is not allowed on an object.")


def _list(bucket: str, objects: Mapping[str, _Object], query: Mapping[str, str]) -> bytes:
    prefix = query.get("prefix", "")
    after = query.get("continuation-token") or query.get("start-after", "")
    max_keys = int(query.get("max-keys", "1000"))
    names = sorted(name for name in objects if name.startswith(prefix) and name > after)
    page, truncated = names[:max_keys], len(names) > max_keys
    contents = "".join(
        f"<Contents><Key>{escape(name)}</Key><Generation>{objects[name].generation}</Generation>"
        f"<LastModified>{objects[name].updated.strftime('%Y-%m-%dT%H:%M:%S.000Z')}</LastModified>"
        f"<ETag>{escape(objects[name].etag)}</ETag><Size>{len(objects[name].data)}</Size></Contents>"
        for name in page
    )
    token = f"<NextContinuationToken>{escape(page[-1])}</NextContinuationToken>" if truncated else ""
    return (
        "<?xml version='1.0' encoding='UTF-8'?>"
        '<ListBucketResult xmlns="http://doc.s3.amazonaws.com/2006-03-01">'
        f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(page)}</KeyCount>"
        f"<MaxKeys>{max_keys}</MaxKeys><IsTruncated>{str(truncated).lower()}</IsTruncated>{token}{contents}"
        "</ListBucketResult>"
    ).encode()


class VerifyingGCSServer(BackgroundWSGIServer):
    """`GCSApp` served by werkzeug on 127.0.0.1 on an ephemeral port."""

    def __init__(self) -> None:
        self.app = GCSApp()
        super().__init__(self.app, self.app, name="verifying-gcs")

    def add_service_account(self, info: dict[str, str], public_pem: str) -> None:
        """Accept tokens and signed URLs from the account whose JSON key is `info`."""
        self.app.accounts[info["client_email"]] = _Account(info, public_pem)

    def create_bucket(self, name: str) -> None:
        self.app.buckets[name] = {}

    def objects(self, bucket: str) -> dict[str, bytes]:
        """What `bucket` holds, read directly (no request)."""
        return {name: obj.data for name, obj in self.app.buckets[bucket].items()}
