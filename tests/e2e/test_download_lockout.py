"""The download-password lockout under concurrency, and the limits checked before any hashing.

Every candidate password costs an argon2id hash; these tests count the hashes themselves (a
hasher that counts its `verify` calls stands in for the module's) rather than trusting counters.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Literal

import pytest
from argon2 import PasswordHasher

from gateway.auth.limits import DownloadLimits, KeyedLimiter
from gateway.storage import passwords
from tests.conftest import Gateway
from tests.e2e.test_files_and_inputs import SIMPLE, protected_job
from tests.e2e.test_generation_billing import T2I, auth

LIMIT = 10  # gateway.api.files.MAX_FAILURES


class CountingHasher(PasswordHasher):
    """The module's hasher, counting every verification (each is one argon2id hash)."""

    def __init__(self) -> None:
        super().__init__(time_cost=2, memory_cost=19 * 1024, parallelism=1)
        self.calls = 0
        self._lock = threading.Lock()

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        with self._lock:
            self.calls += 1
        return super().verify(hash, password)


@pytest.fixture
def hasher(monkeypatch: pytest.MonkeyPatch) -> CountingHasher:
    counting = CountingHasher()
    monkeypatch.setattr(passwords, "_HASHER", counting)
    return counting


def limits(gateway: Gateway, *, per_client: float = 10_000, per_file: float = 10_000) -> DownloadLimits:
    """Replace the app's per-address and per-file hash budgets (so a test sees one rule at a time)."""
    services: Any = gateway.app.state.services
    services.download_limits = DownloadLimits(KeyedLimiter(per_client), KeyedLimiter(per_file))
    return services.download_limits  # type: ignore[no-any-return]


async def failures(gateway: Gateway, job_id: str) -> tuple[int, list[int]]:
    """(the job's failure counter, each of its files' counters)."""
    async with gateway.pool.acquire() as conn:
        job = await conn.fetchval("SELECT download_failures FROM jobs WHERE id = $1", job_id)
        files = await conn.fetch("SELECT failed_attempts FROM files WHERE job_id = $1 ORDER BY id", job_id)
    return job, [r["failed_attempts"] for r in files]


async def test_concurrent_wrong_guesses_never_hash_more_than_the_limit(
    gateway: Gateway, hasher: CountingHasher
) -> None:
    _, key = await gateway.tenant(credits=10)
    job = await protected_job(gateway, key, n=2)
    urls = [r["url"] for r in job["results"]]
    limits(gateway)
    hasher.calls = 0
    # Twelve requests at once, three wrong candidates each, spread over both files of the job.
    responses = await asyncio.gather(
        *(gateway.client.get(urls[i % 2], headers={"X-Download-Password": f"a{i},b{i},c{i}"}) for i in range(12))
    )
    statuses = sorted(r.status_code for r in responses)
    assert hasher.calls == LIMIT
    assert set(statuses) == {403, 429}
    assert statuses.count(403) <= LIMIT
    assert all(int(r.headers["retry-after"]) > 0 for r in responses if r.status_code == 429)
    job_failures, file_failures = await failures(gateway, job["id"])
    assert job_failures == LIMIT
    assert sum(file_failures) == LIMIT
    # The job is locked as a whole: the right password opens neither file, and nothing is hashed.
    for url in urls:
        locked = await gateway.client.get(url, headers={"X-Download-Password": SIMPLE})
        assert locked.status_code == 429
        assert locked.json()["limit"] == "download_password_failures"
    assert hasher.calls == LIMIT


async def test_each_wrong_candidate_counts_and_the_right_one_does_not(gateway: Gateway, hasher: CountingHasher) -> None:
    _, key = await gateway.tenant(credits=10)
    job = await protected_job(gateway, key)
    url = job["results"][0]["url"]
    hasher.calls = 0
    # The whole value is tried first (a password may contain commas), then each piece.
    response = await gateway.client.get(url, headers={"X-Download-Password": f"x,y,{SIMPLE},z"})
    assert response.status_code == 200
    assert hasher.calls == 4
    assert await failures(gateway, job["id"]) == (3, [3])
    wrong = await gateway.client.get(url, headers={"X-Download-Password": "p,q,r,s,t,u"})
    assert wrong.status_code == 403
    # Seven candidates, but only the seven attempts left of the ten were hashed.
    assert hasher.calls == 4 + 7
    assert await failures(gateway, job["id"]) == (LIMIT, [LIMIT])
    assert (await gateway.client.get(url, headers={"X-Download-Password": SIMPLE})).status_code == 429


async def test_failures_on_one_file_count_for_every_file_of_the_job(gateway: Gateway) -> None:
    _, key = await gateway.tenant(credits=10)
    job = await protected_job(gateway, key, n=2)
    first, second = (r["url"] for r in job["results"])
    for attempt in range(LIMIT):
        response = await gateway.client.get(first, headers={"X-Download-Password": f"guess-{attempt}"})
        assert response.status_code == 403
    assert (await gateway.client.get(second, headers={"X-Download-Password": SIMPLE})).status_code == 429
    zipped = await gateway.client.get(
        f"/v1/jobs/{job['id']}/files.zip", headers={**auth(key), "X-Download-Password": SIMPLE}
    )
    assert zipped.status_code == 429
    async with gateway.pool.acquire() as conn:
        await conn.execute(
            "UPDATE jobs SET download_failures_since = now() - interval '16 minutes' WHERE id = $1",
            job["id"],
        )
        await conn.execute(
            "UPDATE files SET failures_since = now() - interval '16 minutes' WHERE job_id = $1", job["id"]
        )
    assert (await gateway.client.get(second, headers={"X-Download-Password": SIMPLE})).status_code == 200


async def test_password_checks_per_client_address_are_limited_before_hashing(
    gateway: Gateway, hasher: CountingHasher
) -> None:
    _, key = await gateway.tenant(credits=10)
    job = await protected_job(gateway, key, n=2)
    urls = [r["url"] for r in job["results"]]
    limits(gateway, per_client=3)
    hasher.calls = 0
    for url in (urls[0], urls[1], urls[0]):
        assert (await gateway.client.get(url, headers={"X-Download-Password": SIMPLE})).status_code == 200
    limited = await gateway.client.get(urls[1], headers={"X-Download-Password": SIMPLE})
    assert limited.status_code == 429
    assert limited.headers["content-type"].startswith("application/problem+json")
    assert limited.json()["limit"] == "download_password_checks"
    assert int(limited.headers["retry-after"]) >= 1
    assert hasher.calls == 3
    # A file without a password costs no hash and is not limited.
    free = (await gateway.client.post("/v1/text-to-image", json=T2I, headers=auth(key))).json()
    assert (await gateway.client.get(free["results"][0]["url"])).status_code == 200


async def test_password_checks_per_file_are_limited_before_hashing(gateway: Gateway, hasher: CountingHasher) -> None:
    _, key = await gateway.tenant(credits=10)
    job = await protected_job(gateway, key, n=2)
    urls = [r["url"] for r in job["results"]]
    limits(gateway, per_file=3)
    hasher.calls = 0
    for _ in range(3):
        assert (await gateway.client.get(urls[0], headers={"X-Download-Password": SIMPLE})).status_code == 200
    assert (await gateway.client.get(urls[0], headers={"X-Download-Password": SIMPLE})).status_code == 429
    # The job's other file has a budget of its own; a list of candidates spends one unit per candidate.
    many = await gateway.client.get(urls[1], headers={"X-Download-Password": f"a,{SIMPLE}"})
    assert many.status_code == 200
    assert (await gateway.client.get(urls[1], headers={"X-Download-Password": SIMPLE})).status_code == 429
    assert hasher.calls == 3 + 3


async def test_the_zip_is_not_built_before_the_password_is_checked(gateway: Gateway, hasher: CountingHasher) -> None:
    _, key = await gateway.tenant(credits=10)
    job = await protected_job(gateway, key, n=2)
    url = f"/v1/jobs/{job['id']}/files.zip"
    for headers in ({}, {"X-Download-Password": "wrong"}):
        response = await gateway.client.get(url, headers={**auth(key), **headers})
        assert response.status_code in (401, 403)
    async with gateway.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM files WHERE job_id = $1 AND kind = 'zip'", job["id"]) == 0
    hasher.calls = 0
    ok = await gateway.client.get(url, headers={**auth(key), "X-Download-Password": SIMPLE})
    assert ok.status_code == 200
    assert hasher.calls == 1  # checked once, not again when the zip is served
    # The zip's own URL is under the same password and the same job counter.
    zip_url = ok.headers["content-location"]
    assert (await gateway.client.get(zip_url)).status_code == 401
    assert (await gateway.client.get(zip_url, headers={"X-Download-Password": SIMPLE})).status_code == 200
