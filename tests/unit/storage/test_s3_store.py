"""S3BlobStore's addressing, retries and error translation, against a scripted S3 over real HTTP.

obstore's client is Rust (reqwest), so httpx.MockTransport cannot stand in for the server: a
small threaded HTTP server answers each request from a script and records what it was sent.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.config import ConfigError, Settings, load_settings
from gateway.storage.base import BlobNotFound
from gateway.storage.s3 import S3BlobStore, S3StorageError

DROP = "drop"  # close the connection without an answer
HANG = "hang"  # answer nothing until the test ends


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedS3:
    """Answers the n-th request with the n-th scripted answer and records every request."""

    answers: list[tuple[int, bytes] | str] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_answer(self, request: Seen) -> tuple[int, bytes] | str:
        with self.lock:
            self.seen.append(request)
            return self.answers.pop(0) if self.answers else (500, b"script exhausted")


def _handler(script: ScriptedS3) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            answer = script.next_answer(Seen(self.command, self.path, headers, body))
            if answer == HANG:
                script.released.wait(timeout=10)
            if isinstance(answer, str):
                self.close_connection = True
                return
            status, content = answer
            self.send_response(status)
            self.send_header("Content-Length", str(len(content)))
            self.send_header("Content-Type", "application/xml")
            self.send_header("ETag", '"0123456789abcdef"')  # object_store requires one on PUT answers
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def s3() -> Iterator[tuple[ScriptedS3, str]]:
    script = ScriptedS3()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    # A short poll interval: shutdown() waits for it, in every test's teardown.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), name="scripted-s3", daemon=True)
    thread.start()
    yield script, f"http://127.0.0.1:{server.server_port}"
    script.released.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _error_xml(code: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>m</Message></Error>'.encode()


def _store(endpoint: str, **overrides: object) -> S3BlobStore:
    options: dict[str, object] = {
        "endpoint_url": endpoint,
        "bucket": "images",
        "access_key": "AKIDEXAMPLE",
        "secret_key": "secret",
        "retry_backoff_s": 0.0,
    }
    options.update(overrides)
    return S3BlobStore(**options)  # type: ignore[arg-type]


async def test_path_style_puts_the_bucket_in_the_path_and_signs_the_payload(s3: tuple[ScriptedS3, str]) -> None:
    script, endpoint = s3
    script.answers.append((200, b""))

    await _store(endpoint).put("outputs/a b.png", b"data", "image/png")

    (request,) = script.seen
    assert (request.method, request.path) == ("PUT", "/images/outputs/a%20b.png")
    assert request.headers["content-type"] == "image/png"
    assert request.headers["x-amz-content-sha256"] == (
        "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7"  # sha256(b"data")
    )
    assert request.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert request.body == b"data"


async def test_aws_variables_in_the_environment_do_not_redirect_or_alter_the_store(
    s3: tuple[ScriptedS3, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store's settings come from `[storage]` alone; object_store would otherwise read these.
    script, endpoint = s3
    for name, value in {
        "AWS_ENDPOINT_URL_S3": "http://elsewhere.invalid:1",
        "AWS_ENDPOINT": "http://elsewhere.invalid:1",
        "AWS_SESSION_TOKEN": "someone-elses-token",
        "AWS_ACCESS_KEY_ID": "AKIDFROMTHEENV",
        "AWS_SKIP_SIGNATURE": "true",
        "AWS_BUCKET": "other",
    }.items():
        monkeypatch.setenv(name, value)
    script.answers.append((200, b"image"))
    store = _store(endpoint)

    assert await store.get("k.png") == b"image"
    url = await store.presigned_url("k.png", 60)

    (request,) = script.seen
    assert request.path == "/images/k.png"
    assert request.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "x-amz-security-token" not in request.headers
    assert url.startswith(f"{endpoint}/images/k.png?")
    assert "X-Amz-Security-Token" not in url


async def test_virtual_hosted_style_puts_the_bucket_in_the_host() -> None:
    store = _store("https://s3.eu-west-3.amazonaws.com", path_style=False, region="eu-west-3")

    url = urlsplit(await store.presigned_url("k.png", 60))

    assert (url.netloc, url.path) == ("images.s3.eu-west-3.amazonaws.com", "/k.png")
    assert parse_qs(url.query)["X-Amz-Credential"][0].endswith("/eu-west-3/s3/aws4_request")


async def test_no_such_key_becomes_blob_not_found(s3: tuple[ScriptedS3, str]) -> None:
    script, endpoint = s3
    script.answers.append((404, _error_xml("NoSuchKey")))

    with pytest.raises(BlobNotFound):
        await _store(endpoint).get("missing.png")


async def test_no_such_bucket_is_a_storage_error_not_a_missing_blob(s3: tuple[ScriptedS3, str]) -> None:
    script, endpoint = s3
    script.answers.append((404, _error_xml("NoSuchBucket")))

    with pytest.raises(S3StorageError) as caught:
        await _store(endpoint).get("k.png")

    assert (caught.value.status, caught.value.code) == (404, "NoSuchBucket")


async def test_access_denied_is_translated_with_its_code_and_not_retried(s3: tuple[ScriptedS3, str]) -> None:
    script, endpoint = s3
    script.answers.append((403, _error_xml("AccessDenied")))

    with pytest.raises(S3StorageError) as caught:
        await _store(endpoint).put("k.png", b"x", "image/png")

    assert (caught.value.status, caught.value.code) == (403, "AccessDenied")
    assert len(script.seen) == 1


async def test_slow_down_and_a_dropped_connection_are_retried_and_then_succeed(s3: tuple[ScriptedS3, str]) -> None:
    script, endpoint = s3
    script.answers += [(503, _error_xml("SlowDown")), DROP, (200, b"image")]

    assert await _store(endpoint).get("k.png") == b"image"
    assert len(script.seen) == 3


async def test_server_errors_past_the_last_attempt_are_a_storage_error(s3: tuple[ScriptedS3, str]) -> None:
    script, endpoint = s3
    script.answers += [(500, _error_xml("InternalError")) for _ in range(3)]

    with pytest.raises(S3StorageError) as caught:
        await _store(endpoint).get("k.png")

    assert (caught.value.status, caught.value.code) == (500, "InternalError")
    assert len(script.seen) == 3


async def test_a_hung_server_times_out_into_a_storage_error_without_a_status(s3: tuple[ScriptedS3, str]) -> None:
    script, endpoint = s3
    script.answers += [HANG, HANG]

    with pytest.raises(S3StorageError) as caught:
        await _store(endpoint, max_attempts=2, request_timeout_s=0.2).get("k.png")

    assert caught.value.status is None
    assert caught.value.__cause__ is not None
    assert len(script.seen) == 2


async def test_error_without_an_xml_body_still_translates(s3: tuple[ScriptedS3, str]) -> None:
    script, endpoint = s3
    script.answers.append((400, b"<html>bad gateway page"))

    with pytest.raises(S3StorageError) as caught:
        await _store(endpoint).get("k.png")

    assert (caught.value.status, caught.value.code) == (400, None)


@pytest.mark.parametrize("status", [204, 200])
async def test_delete_sends_one_delete_and_accepts_both_success_answers(
    s3: tuple[ScriptedS3, str], status: int
) -> None:
    script, endpoint = s3
    script.answers.append((status, b""))

    await _store(endpoint).delete("outputs/k.png")

    (request,) = script.seen
    assert (request.method, request.path) == ("DELETE", "/images/outputs/k.png")


async def test_delete_of_a_missing_key_on_servers_that_answer_404_is_not_an_error(s3: tuple[ScriptedS3, str]) -> None:
    script, endpoint = s3
    script.answers.append((404, _error_xml("NoSuchKey")))

    await _store(endpoint).delete("k.png")


async def test_delete_in_a_missing_bucket_is_an_error(s3: tuple[ScriptedS3, str]) -> None:
    script, endpoint = s3
    script.answers.append((404, _error_xml("NoSuchBucket")))

    with pytest.raises(S3StorageError):
        await _store(endpoint).delete("k.png")


@pytest.mark.parametrize("key", ["", "/abs.png", "a/../b.png", "a/./b.png", "..", "a//b.png"])
async def test_keys_that_a_url_path_would_rewrite_are_refused(key: str) -> None:
    store = _store("http://s3.test")

    with pytest.raises(ValueError, match="invalid blob key"):
        await store.put(key, b"x", "image/png")


async def test_presigned_url_is_signed_for_the_public_endpoint_without_a_request(s3: tuple[ScriptedS3, str]) -> None:
    script, endpoint = s3
    store = _store(endpoint, public_endpoint_url="https://files.example.com")

    url = await store.presigned_url("inputs/a.png", 600)

    assert url.startswith("https://files.example.com/images/inputs/a.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&")
    assert "X-Amz-Expires=600" in url
    assert script.seen == []


def test_endpoint_must_be_http_or_https() -> None:
    with pytest.raises(ValueError, match="http"):
        S3BlobStore(endpoint_url="s3.test:9000", bucket="b", access_key="a", secret_key="s")


CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s3-secret"}


def _storage_settings(toml: str, environ: dict[str, str] | None = None) -> Settings:
    """Settings read from `toml` as a gateway.toml file, as `gateway serve` reads it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gateway.toml"
        path.write_text(toml)
        return load_settings(CREDENTIALS if environ is None else environ, config_path=path)


def test_storage_section_reads_from_toml_with_defaults() -> None:
    storage = _storage_settings('[storage]\nkind = "s3"\nbucket = "gateway"\n').storage

    assert storage.region == "us-east-1"
    assert storage.s3_endpoint_url == "https://s3.us-east-1.amazonaws.com"
    assert storage.path_style is True
    assert storage.presign_ttl_s == 3600
    assert (storage.access_key, storage.secret_key) == ("AKID", "s3-secret")
    assert "s3-secret" not in repr(storage)


def test_storage_defaults_to_the_filesystem_without_credentials() -> None:
    storage = load_settings({}).storage

    assert storage.kind == "filesystem"
    assert storage.access_key is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('secret_key = "inline"', "only come from the environment"),
        ("presign_ttl_s = 604801", "presign_ttl_s"),
        ("presign_ttl_s = 0", "presign_ttl_s"),
        ("colour = 1", "colour"),
        ('endpoint_url = "minio:9000"', "endpoint_url"),
    ],
    ids=["inline-secret", "ttl-over-a-week", "ttl-zero", "unknown-field", "not-a-url"],
)
def test_storage_section_refuses_inline_secrets_unknown_fields_and_bad_values(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _storage_settings(f'[storage]\nkind = "s3"\nbucket = "gateway"\n{extra}\n')


def test_s3_storage_needs_a_bucket_and_its_credential_variables() -> None:
    with pytest.raises(ConfigError, match=r"storage\.bucket"):
        _storage_settings('[storage]\nkind = "s3"\n')
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY"):
        _storage_settings('[storage]\nkind = "s3"\nbucket = "b"\n', {"AWS_ACCESS_KEY_ID": "AKID"})


def test_storage_fields_come_from_gateway_storage_variables_over_the_file() -> None:
    environ = {**CREDENTIALS, "GATEWAY_STORAGE_BUCKET": "from-env", "GATEWAY_STORAGE_PRESIGN_TTL_S": "60"}

    storage = _storage_settings('[storage]\nkind = "s3"\nbucket = "from-file"\nregion = "eu-west-1"\n', environ).storage

    assert (storage.bucket, storage.presign_ttl_s, storage.region) == ("from-env", 60, "eu-west-1")


async def test_store_built_from_config_uses_its_addressing_and_prefix(s3: tuple[ScriptedS3, str]) -> None:
    script, endpoint = s3
    script.answers.append((200, b""))
    storage = _storage_settings(
        f'[storage]\nkind = "s3"\nendpoint_url = "{endpoint}/"\nbucket = "gw"\n'
        'region = "eu-central-1"\nprefix = "prod/"\n'
    ).storage

    await S3BlobStore.from_config(storage).put("k.png", b"x", "image/png")

    assert script.seen[0].path == "/gw/prod/k.png"
    assert "/eu-central-1/s3/aws4_request" in script.seen[0].headers["authorization"]


@pytest.mark.parametrize("prefix", ["/abs/", "a/../b/", "./"])
def test_key_prefix_that_escapes_or_normalises_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        S3BlobStore(endpoint_url="http://s3.test", bucket="b", access_key="a", secret_key="s", prefix=prefix)
