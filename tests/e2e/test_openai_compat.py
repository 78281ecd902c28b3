"""The official `openai` package against a live gateway: generations and edits go through the
same admission, billing and engines as /v1, and errors come back in OpenAI's shape."""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import openai
import pytest
from PIL import Image

from gateway.storage.filesystem import FilesystemBlobStore
from tests.conftest import Gateway
from tests.e2e.test_generation_billing import audit_clean, auth, balance
from tests.waiting import eventually


@contextlib.asynccontextmanager
async def client_for(base_url: str, key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    # No retries: a test must see each answer as the gateway gave it.
    async with openai.AsyncOpenAI(api_key=key, base_url=f"{base_url}/openai/v1", max_retries=0, timeout=30) as client:
        yield client


def rgba_png(size: int, transparent_box: tuple[int, int, int, int] | None, opaque: bool = True) -> bytes:
    """An RGBA PNG, opaque (or half-transparent) except `transparent_box`, which has alpha 0."""
    image = Image.new("RGBA", (size, size), (200, 60, 60, 255 if opaque else 128))
    if transparent_box is not None:
        image.paste((0, 0, 0, 0), transparent_box)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def rgb_png(size: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (10, 100, 200)).save(out, format="PNG")
    return out.getvalue()


async def charges(gateway: Gateway, key: str) -> list[dict[str, Any]]:
    response = await gateway.client.get("/v1/ledger", headers=auth(key))
    assert response.status_code == 200
    return [entry for entry in response.json()["data"] if entry["kind"] == "charge"]


async def latest_job(gateway: Gateway, tenant_id: UUID) -> Any:
    async with gateway.pool.acquire() as conn:
        return await conn.fetchrow(
            "SELECT id, operation, n, state, charged FROM jobs WHERE tenant_id = $1 ORDER BY created_at DESC LIMIT 1",
            tenant_id,
        )


async def test_openai_client_generates_images_as_base64_and_they_are_charged(
    gateway: Gateway, live_gateway: str
) -> None:
    tenant_id, key = await gateway.tenant(credits=10)
    async with client_for(live_gateway, key) as client:
        result = await client.images.generate(
            model="dall-e-2", prompt="a lighthouse at dusk", n=2, size="512x512", response_format="b64_json"
        )
    assert len(result.data or []) == 2
    for image in result.data or []:
        assert image.b64_json is not None
        with Image.open(io.BytesIO(base64.b64decode(image.b64_json))) as decoded:
            assert decoded.format == "PNG"
            assert decoded.size == (512, 512)
    job = await latest_job(gateway, tenant_id)
    assert (job["operation"], job["n"], job["state"]) == ("text-to-image", 2, "succeeded")
    ledger = await charges(gateway, key)
    assert [UUID(entry["job_id"]) for entry in ledger] == [job["id"]]
    assert ledger[0]["amount"] == -job["charged"] / 1000
    assert (await balance(gateway, key))["balance"] == 10 + ledger[0]["amount"]
    await audit_clean(gateway)


async def test_openai_client_gets_urls_that_download_the_images(gateway: Gateway, live_gateway: str) -> None:
    _, key = await gateway.tenant(credits=10)
    async with client_for(live_gateway, key) as client:
        result = await client.images.generate(
            prompt="a red bicycle", size="256x256", output_format="webp", response_format="url"
        )
    assert result.created > 0
    (image,) = result.data or []
    assert image.url is not None
    assert image.url.startswith(f"{live_gateway}/v1/files/")
    async with httpx.AsyncClient() as http:
        download = await http.get(image.url)
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/webp"
    assert len(await charges(gateway, key)) == 1
    await audit_clean(gateway)


async def test_openai_edit_with_a_mask_repaints_its_transparent_area(
    gateway: Gateway, live_gateway: str, data_dir: Path
) -> None:
    tenant_id, key = await gateway.tenant(credits=10)
    box = (64, 64, 192, 192)
    async with client_for(live_gateway, key) as client:
        result = await client.images.edit(
            image=("photo.png", rgb_png(256), "image/png"),
            mask=("mask.png", rgba_png(256, box), "image/png"),
            prompt="a window in the wall",
            response_format="b64_json",
        )
    (image,) = result.data or []
    assert image.b64_json
    job = await latest_job(gateway, tenant_id)
    assert (job["operation"], job["state"]) == ("inpaint", "succeeded")
    # The mask the engines got is ours: white (repaint) exactly where OpenAI's was transparent.
    async with gateway.pool.acquire() as conn:
        blob_key = await conn.fetchval("SELECT blob_key FROM job_inputs WHERE job_id = $1 AND role = 'mask'", job["id"])
    mask_bytes = await FilesystemBlobStore(data_dir / "blobs").get(blob_key)
    with Image.open(io.BytesIO(mask_bytes)) as mask:
        assert mask.mode == "L"
        assert mask.size == (256, 256)
        assert mask.getpixel((100, 100)) == 255
        assert mask.getpixel((10, 10)) == 0
        assert mask.getpixel((191, 191)) == 255
        assert mask.getpixel((192, 192)) == 0
    assert len(await charges(gateway, key)) == 1
    await audit_clean(gateway)


async def test_openai_edit_without_a_mask_uses_the_images_transparency_or_none(
    gateway: Gateway, live_gateway: str
) -> None:
    tenant_id, key = await gateway.tenant(credits=10)
    async with client_for(live_gateway, key) as client:
        await edit_three_ways(gateway, tenant_id, client)
    assert len(await charges(gateway, key)) == 3
    await audit_clean(gateway)


async def edit_three_ways(gateway: Gateway, tenant_id: UUID, client: openai.AsyncOpenAI) -> None:
    # Transparent pixels in the image itself mark the edit, as in DALL·E 2.
    await client.images.edit(image=("cut.png", rgba_png(256, (0, 0, 128, 256)), "image/png"), prompt="a sea")
    assert (await latest_job(gateway, tenant_id))["operation"] == "inpaint"
    # A semi-transparent image has no fully transparent pixel: nothing is masked.
    await client.images.edit(image=("veil.png", rgba_png(512, None, opaque=False), "image/png"), prompt="a sea")
    assert (await latest_job(gateway, tenant_id))["operation"] == "image-to-image"
    # An opaque image with no mask is an image-to-image edit of the whole picture (at its size,
    # 512 x 512 here, which the image-to-image engine accepts).
    result = await client.images.edit(image=("photo.png", rgb_png(512), "image/png"), prompt="in winter", n=2)
    assert len(result.data or []) == 2
    job = await latest_job(gateway, tenant_id)
    assert (job["operation"], job["state"]) == ("image-to-image", "succeeded")


async def test_openai_errors_have_openais_shape_and_name_the_parameter(gateway: Gateway, live_gateway: str) -> None:
    _, key = await gateway.tenant(credits=10)
    async with client_for(live_gateway, key) as client:
        await refused_requests(client)
    async with client_for(live_gateway, "gw_not_a_key") as stranger:
        with pytest.raises(openai.AuthenticationError) as unauthenticated:
            await stranger.images.generate(prompt="x")
    assert unauthenticated.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert unauthenticated.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    _, poor_key = await gateway.tenant(credits=0.1)
    async with client_for(live_gateway, poor_key) as poor_client:
        with pytest.raises(openai.APIStatusError) as poor:
            await poor_client.images.generate(prompt="x")
    assert poor.value.status_code == 402
    assert poor.value.body["type"] == "insufficient_quota"  # type: ignore[index]
    assert (await balance(gateway, key))["balance"] == 10
    assert await charges(gateway, key) == []
    await audit_clean(gateway)


async def refused_requests(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as too_many:
        await client.images.generate(prompt="x", n=9)
    assert too_many.value.status_code == 400
    assert too_many.value.body == {
        "message": too_many.value.body["message"],  # type: ignore[index]
        "type": "invalid_request_error",
        "param": "n",
        "code": "validation_error",
    }

    with pytest.raises(openai.BadRequestError) as bad_size:
        await client.images.generate(prompt="x", size="100x100")
    assert bad_size.value.body["param"] == "size"  # type: ignore[index]

    with pytest.raises(openai.BadRequestError) as wrong_type:
        await client.images.generate(prompt="x", extra_body={"n": "two"})
    assert wrong_type.value.body["param"] == "n"  # type: ignore[index]

    with pytest.raises(openai.BadRequestError) as unknown:
        await client.images.generate(prompt="x", extra_body={"colour": "red"})
    assert "colour" in unknown.value.body["message"]  # type: ignore[index]

    with pytest.raises(openai.BadRequestError) as opaque_mask:
        await client.images.edit(
            image=("photo.png", rgb_png(256), "image/png"), mask=("m.png", rgb_png(256), "image/png"), prompt="x"
        )
    assert opaque_mask.value.body["param"] == "mask"  # type: ignore[index]

    with pytest.raises(openai.BadRequestError) as mismatched:
        await client.images.edit(
            image=("photo.png", rgb_png(256), "image/png"), mask=("m.png", rgba_png(128, None), "image/png"), prompt="x"
        )
    assert mismatched.value.body["param"] == "mask"  # type: ignore[index]

    with pytest.raises(openai.BadRequestError) as not_image:
        await client.images.edit(image=("photo.png", b"not an image", "image/png"), prompt="x")
    assert not_image.value.body["param"] == "image"  # type: ignore[index]


async def test_a_failed_job_is_an_openai_server_error_and_costs_nothing(gateway: Gateway, live_gateway: str) -> None:
    _, key = await gateway.tenant(credits=10)
    gateway.extra["a2c"].fail_with_status(500)
    gateway.extra["qolaba"].fail_with_status(500)
    async with client_for(live_gateway, key) as client:
        with pytest.raises(openai.InternalServerError) as failed:
            await client.images.generate(prompt="x")
    assert failed.value.status_code == 503
    assert failed.value.body["type"] == "server_error"  # type: ignore[index]
    assert (await balance(gateway, key))["balance"] == 10
    await audit_clean(gateway)


async def test_the_v1_routes_keep_problem_json_errors(gateway: Gateway, live_gateway: str) -> None:
    _, key = await gateway.tenant(credits=10)
    async with httpx.AsyncClient(base_url=live_gateway) as http:
        response = await http.post("/v1/text-to-image", json={"prompt": "x", "n": 9}, headers=auth(key))
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["field"] == "n"


async def test_a_job_outlasting_the_sync_wait_is_a_504_the_sdk_does_not_retry(
    gateway: Gateway, make_live_gateway: Callable[..., str]
) -> None:
    tenant_id, key = await gateway.tenant(credits=10)
    base_url = make_live_gateway(sync_wait_s=0.3)
    gateway.extra["a2c"].slow_job(polls=40)
    # The SDK's default retries are on: x-should-retry: false must stop it paying twice.
    async with openai.AsyncOpenAI(api_key=key, base_url=f"{base_url}/openai/v1", max_retries=2) as client:
        with pytest.raises(openai.InternalServerError) as pending:
            await client.images.generate(prompt="a slow one", size="256x256")
    assert pending.value.status_code == 504
    assert pending.value.response.headers["x-should-retry"] == "false"
    assert pending.value.body["code"] == "still_running"  # type: ignore[index]
    job = await latest_job(gateway, tenant_id)
    assert str(job["id"]) in pending.value.body["message"]  # type: ignore[index]
    async with gateway.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs WHERE tenant_id = $1", tenant_id) == 1

        async def succeeded() -> bool:
            return bool(await conn.fetchval("SELECT state FROM jobs WHERE id = $1", job["id"]) == "succeeded")

        await eventually(succeeded, what="the job succeeded")
    assert len(await charges(gateway, key)) == 1
    await audit_clean(gateway)
