"""Inputs as multipart files, SSRF and decompression-bomb refusals, output formats, zip
downloads, and the download-password rules, each through the running gateway."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import struct
import zipfile
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from litestar import Litestar, Response, get
from PIL import Image

from tests.conftest import Gateway
from tests.e2e.test_generation_billing import T2I, audit_clean, auth, balance
from tests.fakes.images import png
from tests.fakes.server import ServerThread
from tests.waiting import eventually

MakeGateway = Callable[..., Awaitable[Gateway]]


def image_bytes(width: int, height: int, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), 128 if mode == "L" else (90, 140, 30)).save(out, format=fmt)
    return out.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def field_of(response: Any) -> str:
    errors = response.json().get("errors") or []
    assert errors, response.text
    return str(errors[0]["field"])


# -- multipart inputs ----------------------------------------------------------------------


async def test_image_to_image_accepts_the_image_as_a_multipart_file(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    response = await gateway.client.post(
        "/v1/image-to-image",
        data={"prompt": "the same, in autumn", "strength": "0.5", "width": "512", "height": "512", "seed": "7"},
        files={"image": ("in.png", png(512, 512), "image/png")},
        headers=auth(key),
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["operation"] == "image-to-image"
    assert job["state"] == "succeeded"
    assert job["results"][0]["seed"] == 7
    assert job["charged"] > 0
    assert (await balance(gateway, key))["balance"] == 10 - job["charged"]
    await audit_clean(gateway)


async def test_inpaint_accepts_image_and_mask_as_multipart_files(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    response = await gateway.client.post(
        "/v1/inpaint",
        data={"prompt": "a red door", "n": "2", "engines": "a2c"},
        files={
            "image": ("in.png", png(256, 256), "image/png"),
            "mask": ("mask.png", image_bytes(256, 256, "L"), "image/png"),
        },
        headers=auth(key),
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["state"] == "succeeded"
    assert job["images_succeeded"] == 2
    await audit_clean(gateway)


async def test_multipart_fields_are_validated_strictly_and_named(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    image = {"image": ("in.png", png(256, 256), "image/png")}
    cases: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        ({"prompt": "x", "n": "two"}, image, "n"),
        ({"prompt": "x", "strength": "1.5"}, image, "strength"),
        ({"prompt": "x", "async": "perhaps"}, image, "async"),
        ({"prompt": "x", "colour": "red"}, image, "colour"),
        ({"prompt": "x", "engine_options": "{not json"}, image, "engine_options"),
        ({"n": "1"}, image, ""),  # prompt missing: msgspec names it in the message
        ({"prompt": "x"}, {**image, "prompt": ("p.txt", b"x", "text/plain")}, "prompt"),
    ]
    for form, files, field in cases:
        response = await gateway.client.post("/v1/image-to-image", data=form, files=files, headers=auth(key))
        assert response.status_code == 422, (form, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        if field:
            assert field_of(response) == field, response.text
        else:
            assert "prompt" in response.json()["detail"]
    assert (await balance(gateway, key))["balance"] == 10
    await audit_clean(gateway)


async def test_a_multipart_file_that_is_not_an_image_is_refused_naming_the_field(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    response = await gateway.client.post(
        "/v1/image-to-image",
        data={"prompt": "x"},
        files={"image": ("in.gif", b"GIF89a" + b"\0" * 64, "image/gif")},
        headers=auth(key),
    )
    assert response.status_code == 422
    assert field_of(response) == "image"


async def test_a_file_part_without_a_filename_is_read_by_its_content_type(gateway: Gateway) -> None:
    """OpenAPI clients send a binary form field with its Content-Type and no filename."""
    _, key = await gateway.tenant(credits=10)

    def form(image: bytes, media_type: str = "image/png") -> bytes:
        return (
            b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n'
            b'--b\r\nContent-Disposition: form-data; name="image"\r\nContent-Type: '
            + media_type.encode()
            + b"\r\n\r\n"
            + image
            + b"\r\n--b--\r\n"
        )

    headers = {**auth(key), "Content-Type": "multipart/form-data; boundary=b"}
    made = await gateway.client.post("/v1/image-to-image", content=form(png(512, 512)), headers=headers)
    assert made.status_code == 200, made.text
    assert made.json()["state"] == "succeeded"
    broken = await gateway.client.post(
        "/v1/image-to-image", content=form(b"\xff\xd8\xff", "image/jpeg"), headers=headers
    )
    assert broken.status_code == 422, broken.text
    assert field_of(broken) == "image"
    not_text = await gateway.client.post("/v1/image-to-image", content=form(b"\xff\xd8", "text/plain"), headers=headers)
    assert not_text.status_code == 400, not_text.text
    assert "UTF-8" in not_text.json()["detail"]


async def test_a_repeated_multipart_request_is_replayed_under_its_idempotency_key(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    headers = {**auth(key), "Idempotency-Key": "form-1"}
    form = {"prompt": "a boat", "width": "512", "height": "512"}
    files = {"image": ("in.png", png(512, 512), "image/png")}
    first = await gateway.client.post("/v1/image-to-image", data=form, files=files, headers=headers)
    # httpx draws a new multipart boundary for each request, so the raw bodies differ.
    second = await gateway.client.post("/v1/image-to-image", data=form, files=files, headers=headers)
    assert first.status_code == 200, first.text
    assert second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]
    assert (await balance(gateway, key))["balance"] == 10 - first.json()["charged"]
    await audit_clean(gateway)


# -- input safety ---------------------------------------------------------------------------


@pytest.fixture
def redirecting_server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 that redirects to the cloud metadata address."""

    @get("/hop")
    async def hop() -> Response[bytes]:
        return Response(b"", status_code=302, headers={"Location": "https://169.254.169.254/latest/meta-data/"})

    @get("/hop-to-loopback")
    async def hop_to_loopback() -> Response[bytes]:
        return Response(b"", status_code=307, headers={"Location": "https://[::1]/image.png"})

    server = ServerThread(Litestar([hop, hop_to_loopback]))
    base_url = server.start()
    try:
        yield base_url
    finally:
        server.stop()


@pytest.fixture
def private_dns(monkeypatch: pytest.MonkeyPatch) -> str:
    """A hostname that resolves to a private address (the resolver the event loop uses)."""
    name = "images.attacker.test"
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == name:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.20.30.40", port or 443))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return name


async def test_image_urls_to_private_addresses_are_refused_naming_the_field(
    make_gateway: MakeGateway, redirecting_server: str, private_dns: str
) -> None:
    # Only the redirecting server's host is allow-listed, as the config allows for tests.
    gateway = await make_gateway(fetch_allow_hosts=["127.0.0.1"])
    _, key = await gateway.tenant(credits=10)
    strict = await make_gateway(fetch_allow_hosts=[])
    attempts: list[tuple[Gateway, str]] = [
        (strict, "https://127.0.0.1/image.png"),
        (strict, "http://127.0.0.1/image.png"),
        (gateway, "https://10.0.0.1/image.png"),
        (gateway, "https://169.254.169.254/latest/meta-data/"),
        (gateway, "https://[::1]/image.png"),
        (gateway, "https://[::ffff:10.0.0.1]/image.png"),
        (gateway, f"{redirecting_server}/hop"),
        (gateway, f"{redirecting_server}/hop-to-loopback"),
        (gateway, f"https://{private_dns}/image.png"),
    ]
    for gw, url in attempts:
        response = await gw.client.post("/v1/image-to-image", json={"prompt": "x", "image": url}, headers=auth(key))
        assert response.status_code == 422, (url, response.text)
        assert field_of(response) == "image", url
        reason = response.json()["errors"][0]["message"]
        assert ("must use https" if url == "http://127.0.0.1/image.png" else "non-public address") in reason, reason
        mask_response = await gw.client.post(
            "/v1/inpaint",
            json={"prompt": "x", "image": data_uri(png(64, 64)), "mask": url},
            headers=auth(key),
        )
        assert mask_response.status_code == 422, (url, mask_response.text)
        assert field_of(mask_response) == "mask", url
    assert (await balance(gateway, key))["balance"] == 10
    await audit_clean(gateway)


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming `width` x `height` with a tiny compressed body: decoding it
    fully would allocate gigabytes."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\0" * (width + 1) * 16, 9)  # 16 rows of zeros; the rest is implied
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


async def test_a_decompression_bomb_is_refused_before_it_is_decoded(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    # One above our limit (4096 x 4096) but under Pillow's, one far above both.
    for side in (5000, 60_000):
        bomb = bomb_png(side, side)
        assert len(bomb) < 100_000
        as_json = await gateway.client.post(
            "/v1/image-to-image", json={"prompt": "x", "image": data_uri(bomb)}, headers=auth(key)
        )
        as_file = await gateway.client.post(
            "/v1/inpaint",
            data={"prompt": "x"},
            files={"image": ("in.png", png(64, 64), "image/png"), "mask": ("bomb.png", bomb, "image/png")},
            headers=auth(key),
        )
        for response, field in ((as_json, "image"), (as_file, "mask")):
            assert response.status_code == 422, response.text
            assert field_of(response) == field
            assert "pixels" in response.json()["errors"][0]["message"]
    assert (await balance(gateway, key))["balance"] == 10


async def test_bodies_are_read_up_to_two_inputs_at_the_size_limit_and_no_further(
    make_gateway: Callable[..., Awaitable[Gateway]],
) -> None:
    gw = await make_gateway(max_input_bytes=1024 * 1024)
    _, key = await gw.tenant(credits=10)
    # Too big for one input, small enough for the body: our own check answers, naming the field.
    big_image = data_uri(b"\x89PNG" + bytes(1024 * 1024 + 1))
    over_input = await gw.client.post("/v1/image-to-image", json={"prompt": "x", "image": big_image}, headers=auth(key))
    assert over_input.status_code == 413, over_input.text
    assert over_input.json()["detail"].startswith("image: ")
    # Beyond two such inputs: refused before the body is read, as problem+json.
    huge = await gw.client.post(
        "/v1/image-to-image", json={"prompt": "x", "image": "A" * (4 * 1024 * 1024)}, headers=auth(key)
    )
    assert huge.status_code == 413, huge.text
    assert huge.headers["content-type"].startswith("application/problem+json")
    assert not huge.json().get("detail", "").startswith("image")
    assert (await balance(gw, key))["balance"] == 10


# -- outputs: formats and zip ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "media_type", "magic"), [("jpeg", "image/jpeg", b"\xff\xd8"), ("webp", "image/webp", b"RIFF")]
)
async def test_output_format_converts_the_engines_png(
    gateway: Gateway, fmt: str, media_type: str, magic: bytes
) -> None:
    _, key = await gateway.tenant(credits=10)
    job = (await gateway.client.post("/v1/text-to-image", json={**T2I, "output_format": fmt}, headers=auth(key))).json()
    assert job["state"] == "succeeded", job
    file = await gateway.client.get(job["results"][0]["url"])
    assert file.headers["content-type"] == media_type
    assert file.content.startswith(magic)
    assert file.headers["content-disposition"].endswith(f'.{"jpg" if fmt == "jpeg" else fmt}"')
    with Image.open(io.BytesIO(file.content)) as img:
        assert img.size == (512, 512)
    await audit_clean(gateway)


async def test_a_job_with_several_images_downloads_as_one_zip(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    job = (await gateway.client.post("/v1/text-to-image", json={**T2I, "n": 3}, headers=auth(key))).json()
    assert job["images_succeeded"] == 3, job
    assert job["zip_url"] == f"/v1/jobs/{job['id']}/files.zip"
    single = (await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).json()
    assert "zip_url" not in single or single["zip_url"] is None
    response = await gateway.client.get(job["zip_url"], headers=auth(key))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"] == f'attachment; filename="{job["id"]}.zip"'
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = archive.namelist()
        assert names == [f"{job['id']}-{i}.png" for i in range(3)]
        singles = [(await gateway.client.get(r["url"])).content for r in job["results"]]
        assert [archive.read(name) for name in names] == singles
    # The zip is a file of its own: its capability URL works without the API key, with the same ETag.
    shared = await gateway.client.get(response.headers["content-location"])
    assert shared.status_code == 200
    assert shared.content == response.content
    again = await gateway.client.get(f"/v1/jobs/{job['id']}/files.zip", headers=auth(key))
    assert again.headers["content-location"] == response.headers["content-location"]
    assert again.headers["etag"] == response.headers["etag"]
    async with gateway.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM files WHERE job_id = $1 AND kind = 'zip'", job["id"]) == 1
    await audit_clean(gateway)


async def test_concurrent_first_zip_requests_agree_on_one_zip(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    job = (await gateway.client.post("/v1/text-to-image", json={**T2I, "n": 2}, headers=auth(key))).json()
    url = f"/v1/jobs/{job['id']}/files.zip"
    responses = await asyncio.gather(*(gateway.client.get(url, headers=auth(key)) for _ in range(4)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.headers["content-location"] for r in responses}) == 1


async def test_the_zip_of_another_tenants_job_is_not_found(gateway: Gateway) -> None:
    _, key_a = await gateway.tenant(credits=10)
    _, key_b = await gateway.tenant(credits=10)
    job = (await gateway.client.post("/v1/text-to-image", json={**T2I, "n": 2}, headers=auth(key_a))).json()
    response = await gateway.client.get(f"/v1/jobs/{job['id']}/files.zip", headers=auth(key_b))
    assert response.status_code == 404


async def test_a_failed_job_has_no_zip(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].fail_with_status(500)
    gateway.extra["qolaba"].fail_with_status(500)
    failed = await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))
    assert failed.status_code == 503
    job = failed.json()["job"]  # a failed sync job is a problem document carrying the job
    assert job["state"] == "failed"
    response = await gateway.client.get(f"/v1/jobs/{job['id']}/files.zip", headers=auth(key))
    assert response.status_code == 409
    await audit_clean(gateway)


# -- download passwords ---------------------------------------------------------------------

PASSWORD = "correct horse, battery"
SIMPLE = "s3cret-Pass word!"


async def protected_job(gateway: Gateway, key: str, password: str = SIMPLE, n: int = 1) -> dict[str, Any]:
    response = await gateway.client.post(
        "/v1/text-to-image", json={**T2I, "n": n, "download_password": password}, headers=auth(key)
    )
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    assert job["download_protected"] is True
    return job


async def test_a_file_without_a_password_downloads_freely(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    job = (await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).json()
    assert job["download_protected"] is False
    response = await gateway.client.get(job["results"][0]["url"], headers={"X-Download-Password": "anything"})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "private, max-age=3600"


async def test_download_password_matrix_header_cookie_list_wrong_and_missing(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    job = await protected_job(gateway, key)
    url = job["results"][0]["url"]
    client = gateway.client

    missing = await client.get(url)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Password")

    wrong = await client.get(url, headers={"X-Download-Password": "guess"})
    assert wrong.status_code == 403

    header = await client.get(url, headers={"X-Download-Password": SIMPLE})
    assert header.status_code == 200
    assert header.content.startswith(b"\x89PNG")
    assert header.headers["cache-control"] == "private, no-store"

    listed = await client.get(url, headers={"X-Download-Password": f"guess,other,{SIMPLE}"})
    assert listed.status_code == 200

    client.cookies.set("download_password", SIMPLE)
    try:
        cookie = await client.get(url)
        assert cookie.status_code == 200
        client.cookies.set("download_password", f"nope,{SIMPLE}")
        cookie_list = await client.get(url)
        assert cookie_list.status_code == 200
        client.cookies.set("download_password", "nope,still-no")
        cookie_wrong = await client.get(url)
        assert cookie_wrong.status_code == 403
    finally:
        client.cookies.clear()

    # Each wrong candidate above counted against the job's ten: the zip checks start on a new job.
    job = await protected_job(gateway, key)
    zipped = await client.get(f"/v1/jobs/{job['id']}/files.zip", headers=auth(key))
    assert zipped.status_code == 401
    zipped = await client.get(f"/v1/jobs/{job['id']}/files.zip", headers={**auth(key), "X-Download-Password": "x"})
    assert zipped.status_code == 403
    zipped = await client.get(f"/v1/jobs/{job['id']}/files.zip", headers={**auth(key), "X-Download-Password": SIMPLE})
    assert zipped.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(zipped.content)).namelist() == [f"{job['id']}-0.png"]
    await audit_clean(gateway)


async def test_ten_wrong_passwords_lock_the_file_even_for_the_right_one(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    job = await protected_job(gateway, key, n=2)
    locked_url, other_url = (r["url"] for r in job["results"])
    for attempt in range(10):
        response = await gateway.client.get(locked_url, headers={"X-Download-Password": f"guess-{attempt}"})
        assert response.status_code == 403, attempt
    locked = await gateway.client.get(locked_url, headers={"X-Download-Password": SIMPLE})
    assert locked.status_code == 429
    retry_after = int(locked.headers["retry-after"])
    assert 0 < retry_after <= 15 * 60
    assert locked.headers["content-type"].startswith("application/problem+json")
    # One password guards the whole job: its other image is locked as well.
    assert (await gateway.client.get(other_url, headers={"X-Download-Password": SIMPLE})).status_code == 429
    # Failures older than the 15-minute window no longer count.
    async with gateway.pool.acquire() as conn:
        await conn.execute(
            "UPDATE files SET failures_since = now() - interval '16 minutes' WHERE id = $1",
            job["results"][0]["file_id"],
        )
        await conn.execute(
            "UPDATE jobs SET download_failures_since = now() - interval '16 minutes' WHERE id = $1", job["id"]
        )
    assert (await gateway.client.get(locked_url, headers={"X-Download-Password": SIMPLE})).status_code == 200


async def test_an_expired_file_is_gone_whatever_the_password(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(file_ttl_s=1)
    _, key = await gateway.tenant(credits=10)
    job = await protected_job(gateway, key, n=2)
    assert (
        await gateway.client.get(job["results"][0]["url"], headers={"X-Download-Password": SIMPLE})
    ).status_code == 200

    async def expired() -> bool:
        url = job["results"][0]["url"]
        return (await gateway.client.get(url, headers={"X-Download-Password": SIMPLE})).status_code == 410

    await eventually(expired, what="the file expired after its one-second TTL")
    for headers in ({"X-Download-Password": SIMPLE}, {"X-Download-Password": "wrong"}, {}):
        response = await gateway.client.get(job["results"][0]["url"], headers=headers)
        assert response.status_code == 410, headers
    zipped = await gateway.client.get(
        f"/v1/jobs/{job['id']}/files.zip", headers={**auth(key), "X-Download-Password": SIMPLE}
    )
    assert zipped.status_code == 410
    await audit_clean(gateway)


async def test_a_password_containing_a_comma_works_whole_but_not_by_its_pieces(gateway: Gateway) -> None:
    # The value is a comma-separated list, yet any printable ASCII may be a password: the whole
    # value is tried as well as its pieces.
    _, key = await gateway.tenant(credits=10)
    job = await protected_job(gateway, key, password=PASSWORD)
    url = job["results"][0]["url"]
    assert (await gateway.client.get(url, headers={"X-Download-Password": PASSWORD})).status_code == 200
    for piece in PASSWORD.split(","):
        assert (await gateway.client.get(url, headers={"X-Download-Password": piece})).status_code == 403
