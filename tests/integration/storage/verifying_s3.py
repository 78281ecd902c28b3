"""A real S3-compatible server for tests: moto's S3 backend behind a SigV4-checking WSGI layer.

moto implements the S3 REST API faithfully but, by default, accepts any signature and never
expires a presigned URL. AWS and MinIO refuse both, so this layer does what they do before a
request reaches moto: it recomputes every signature (Authorization header or presigned query)
with botocore's signer, an implementation independent of the store's (obstore's Rust signer), checks
the payload hash, the clock skew and presigned expiry, and answers refusals with S3's error XML.
Its clock can be moved forward, so a test sees a presigned URL expire without waiting for it.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import percent_encode, percent_encode_sequence
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

from tests.integration.storage.wsgi_server import BackgroundWSGIServer, Refused

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

_AUTH_HEADER = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/s3/aws4_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})"
)
_MAX_SKEW = timedelta(minutes=15)
_MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600
_UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


def _headers_of(environ: WSGIEnvironment) -> dict[str, str]:
    headers = {
        name[5:].replace("_", "-").lower(): str(value) for name, value in environ.items() if name.startswith("HTTP_")
    }
    for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(name):
            headers[name.replace("_", "-").lower()] = str(environ[name])
    return headers


def _canonical_url(host: str, raw_path: str, pairs: Iterable[tuple[str, str]]) -> str:
    # Like S3: decode what the client sent, then re-encode canonically, so a client that encodes
    # a key differently from the spec fails here as it would against AWS.
    path = percent_encode(unquote(raw_path), safe="/~")
    query = percent_encode_sequence(dict(pairs))  # S3 requests never repeat a parameter
    return f"http://{host}{path}" + (f"?{query}" if query else "")


def _parse_time(value: str) -> datetime:
    try:
        return datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise Refused(403, "AccessDenied", "X-Amz-Date is not an ISO 8601 basic timestamp") from exc


@dataclass
class SigV4Verifier:
    """WSGI middleware: let a request through only if AWS would accept its signature."""

    app: WSGIApplication
    secrets: Mapping[str, str]  # access key id -> secret key
    clock_offset: timedelta = field(default=timedelta(0))  # added to the real time for every check

    def _now(self) -> datetime:
        return datetime.now(UTC) + self.clock_offset

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)  # moto reads the body again
        try:
            self._verify(environ, body)
        except Refused as refusal:
            return refusal.answer(start_response)
        return self.app(environ, start_response)

    def _secret(self, access_key: str) -> str:
        if access_key not in self.secrets:
            raise Refused(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist.")
        return self.secrets[access_key]

    def _verify(self, environ: WSGIEnvironment, body: bytes) -> None:
        raw_uri = str(environ.get("RAW_URI") or environ["PATH_INFO"])
        raw_path, _, raw_query = raw_uri.partition("?")
        pairs = parse_qsl(raw_query, keep_blank_values=True)
        headers = _headers_of(environ)
        method = str(environ["REQUEST_METHOD"])
        if "authorization" in headers:
            self._verify_header_auth(method, headers, raw_path, pairs, body)
        elif any(name == "X-Amz-Signature" for name, _ in pairs):
            self._verify_query_auth(method, headers, raw_path, pairs)
        else:
            raise Refused(403, "AccessDenied", "Anonymous access is forbidden for this bucket")

    def _verify_header_auth(
        self, method: str, headers: dict[str, str], raw_path: str, pairs: list[tuple[str, str]], body: bytes
    ) -> None:
        match = _AUTH_HEADER.fullmatch(headers["authorization"])
        if match is None:
            raise Refused(400, "AuthorizationHeaderMalformed", "Authorization header is not SigV4 for s3")
        secret = self._secret(match["key"])
        amz_date = headers.get("x-amz-date", "")
        if abs(_parse_time(amz_date) - self._now()) > _MAX_SKEW:
            raise Refused(403, "RequestTimeTooSkewed", "The difference between the request time and now is large")
        content_sha256 = headers.get("x-amz-content-sha256", "")
        if content_sha256 != _UNSIGNED_PAYLOAD and content_sha256 != hashlib.sha256(body).hexdigest():
            raise Refused(400, "XAmzContentSHA256Mismatch", "The provided x-amz-content-sha256 does not match")
        signed_names = match["signed"].split(";")
        request = AWSRequest(
            method=method,
            url=_canonical_url(headers["host"], raw_path, pairs),
            headers={name: headers.get(name, "") for name in signed_names},
            data=body,
        )
        request.context["timestamp"] = amz_date
        auth = S3SigV4Auth(Credentials(match["key"], secret), "s3", match["region"])
        expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
        if not hmac.compare_digest(expected, match["signature"]):
            raise Refused(403, "SignatureDoesNotMatch", "The request signature we calculated does not match")

    def _verify_query_auth(
        self, method: str, headers: dict[str, str], raw_path: str, pairs: list[tuple[str, str]]
    ) -> None:
        params = dict(pairs)
        try:
            access_key, _date, region, _service, _terminator = params["X-Amz-Credential"].split("/")
            expires_s = int(params["X-Amz-Expires"])
            signed_names = params["X-Amz-SignedHeaders"].split(";")
            issued = _parse_time(params["X-Amz-Date"])
        except (KeyError, ValueError) as exc:
            raise Refused(400, "AuthorizationQueryParametersError", "Malformed query-string auth") from exc
        if not 0 <= expires_s <= _MAX_PRESIGN_EXPIRES_S:
            raise Refused(400, "AuthorizationQueryParametersError", "X-Amz-Expires must be less than a week")
        if self._now() > issued + timedelta(seconds=expires_s):
            raise Refused(403, "AccessDenied", "Request has expired")
        secret = self._secret(access_key)
        request = AWSRequest(
            method=method,
            url=_canonical_url(headers["host"], raw_path, [p for p in pairs if p[0] != "X-Amz-Signature"]),
            headers={name: headers.get(name, "") for name in signed_names},
        )
        request.context["timestamp"] = params["X-Amz-Date"]
        auth = S3SigV4QueryAuth(Credentials(access_key, secret), "s3", region, expires=expires_s)
        expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
        if not hmac.compare_digest(expected, params["X-Amz-Signature"]):
            raise Refused(403, "SignatureDoesNotMatch", "The request signature we calculated does not match")


class VerifyingS3Server(BackgroundWSGIServer):
    """moto's S3 behind `SigV4Verifier`, served by werkzeug on 127.0.0.1 on an ephemeral port."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        verifier = SigV4Verifier(DomainDispatcherApplication(create_backend_app), secrets)
        super().__init__(verifier, verifier, name="verifying-s3", request_handler=MotoRequestHandler)
