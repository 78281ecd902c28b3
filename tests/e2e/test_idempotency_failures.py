"""An Idempotency-Key whose request failed before anything was admitted is free for a retry, also
when the failure was unexpected (not one of the API's own errors)."""

from __future__ import annotations

from typing import Any

from gateway.storage.base import BlobStore
from tests.conftest import Gateway
from tests.e2e.test_generation_billing import audit_clean, auth, balance
from tests.fakes.images import png


class FailingOnce:
    """The app's blob store, whose first `put` fails as a full disk would."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.failed = False

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        if not self.failed:
            self.failed = True
            raise OSError(28, "No space left on device")
        await self.inner.put(key, data, content_type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_key_whose_request_failed_unexpectedly_is_free_for_the_retry(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    services: Any = gateway.app.state.services
    services.blobs = FailingOnce(services.blobs)
    headers = {**auth(key), "Idempotency-Key": "retry-after-500"}
    form = {"prompt": "a boat", "width": "512", "height": "512"}
    files = {"image": ("in.png", png(512, 512), "image/png")}
    failed = await gateway.client.post("/v1/image-to-image", data=form, files=files, headers=headers)
    assert failed.status_code == 500
    async with gateway.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 0
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
    retried = await gateway.client.post("/v1/image-to-image", data=form, files=files, headers=headers)
    assert retried.status_code == 200, retried.text
    assert "idempotent-replayed" not in retried.headers
    replayed = await gateway.client.post("/v1/image-to-image", data=form, files=files, headers=headers)
    assert replayed.headers["idempotent-replayed"] == "true"
    assert (await balance(gateway, key))["balance"] == 10 - retried.json()["charged"]
    services.blobs = services.blobs.inner
    await audit_clean(gateway)
