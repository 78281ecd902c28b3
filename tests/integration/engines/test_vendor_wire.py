"""Vendor specifics on the wire, against the fakes: auth headers, passwords, seeds, cancellation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.engines.base import EngineCredentialsRefused, EngineTimeout, EngineUnavailable
from gateway.engines.registry import build_client, build_engine
from tests.fakes.aithriving import FakeAithriving
from tests.fakes.api2convert import FakeApi2Convert
from tests.fakes.qolaba import FakeQolaba
from tests.fakes.samples import engine_config, sample_request


def _nothing(fraction: float) -> None:
    del fraction


@pytest.fixture
def own_api2convert() -> Iterator[FakeApi2Convert]:
    """A fake of this test's own: tests that count the vendor's jobs must not see a job that an
    earlier test's engine is still polling or cancelling on the shared session fake."""
    fake = FakeApi2Convert()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
    assert not fake.violations, fake.violations


async def test_api2convert_locks_outputs_with_its_own_password_and_reports_spend(
    own_api2convert: FakeApi2Convert,
) -> None:
    config = engine_config("api2convert", own_api2convert.base_url)
    engine = build_engine("a2c", config, build_client(config))
    try:
        result = await engine.generate(sample_request("text-to-image", 2), _nothing)
    finally:
        await engine.aclose()
    assert len(result.images) == 2
    assert result.spend.vendor_credits == 2
    (job,) = own_api2convert.jobs.values()
    locks = {c["options"]["download_password"] for c in job.conversions}
    assert len(locks) == 1
    (lock,) = locks
    assert len(lock) >= 16  # made up per attempt; the tenant's own password never reaches an engine
    downloads = [c for c in own_api2convert.calls if c.path.startswith("/dl/")]
    # The fake answers 401 without the job's password; both images came, so it was sent.
    assert [c.headers.get("x-oc-download-password") for c in downloads] == [lock, lock]
    assert all("x-oc-api-key" not in c.headers for c in downloads)


async def test_api2convert_invalid_key_is_the_engine_failing_not_the_request(fake_api2convert: FakeApi2Convert) -> None:
    config = engine_config("api2convert", fake_api2convert.base_url, api_key="wrong")
    engine = build_engine("a2c", config, build_client(config))
    with pytest.raises(EngineUnavailable, match="HTTP 401"):
        await engine.generate(sample_request(), _nothing)
    await engine.aclose()


async def test_api2convert_payment_required_falls_back(fake_api2convert: FakeApi2Convert) -> None:
    fake_api2convert.fail_with_status(402)
    config = engine_config("api2convert", fake_api2convert.base_url)
    engine = build_engine("a2c", config, build_client(config))
    with pytest.raises(EngineUnavailable, match="HTTP 402") as caught:
        await engine.generate(sample_request(), _nothing)
    assert caught.value.retryable
    await engine.aclose()


async def test_api2convert_cancels_the_job_when_its_budget_runs_out(own_api2convert: FakeApi2Convert) -> None:
    own_api2convert.slow_job(10_000)
    # Long enough for the job to be created even on a loaded machine, so there is one to cancel.
    config = engine_config("api2convert", own_api2convert.base_url, timeout_s=1.0)
    engine = build_engine("a2c", config, build_client(config))
    with pytest.raises(EngineTimeout):
        await engine.generate(sample_request(), _nothing)
    await engine.aclose()  # waits for the cancellation it sent
    (job,) = own_api2convert.jobs.values()
    assert job.status == "canceled"
    assert any(c.method == "DELETE" for c in own_api2convert.calls)


async def test_qolaba_polls_through_unknown_statuses_with_bearer_auth(fake_qolaba: FakeQolaba) -> None:
    fake_qolaba.slow_job(5)
    config = engine_config("qolaba", fake_qolaba.base_url)
    engine = build_engine("q", config, build_client(config))
    result = await engine.generate(sample_request("image-to-image", 2), _nothing)
    await engine.aclose()
    assert len(result.images) == 2
    statuses = [c for c in fake_qolaba.calls if c.path == "/getImage"]
    assert len(statuses) == 5
    assert all(c.headers["authorization"] == "Bearer test-key" for c in fake_qolaba.calls if c.method == "POST")
    assert all("authorization" not in c.headers for c in fake_qolaba.calls if c.method == "GET")


async def test_qolaba_task_failing_only_through_status_is_answered_at_the_first_poll(fake_qolaba: FakeQolaba) -> None:
    fake_qolaba.failed_status = "FAILURE"  # error and error_data stay empty
    # A budget far beyond the test: reaching it would mean the failure was polled past.
    config = engine_config("qolaba", fake_qolaba.base_url, timeout_s=30.0)
    engine = build_engine("q", config, build_client(config))
    try:
        with pytest.raises(EngineUnavailable, match="status FAILURE"):
            await engine.generate(sample_request("text-to-image"), _nothing)
    finally:
        await engine.aclose()
    assert len([c for c in fake_qolaba.calls if c.path == "/getImage"]) == 1


async def test_qolaba_inpaint_goes_to_the_inpainting_path_with_the_mask_url(fake_qolaba: FakeQolaba) -> None:
    config = engine_config("qolaba", fake_qolaba.base_url)
    engine = build_engine("q", config, build_client(config))
    await engine.generate(sample_request("inpaint"), _nothing)
    await engine.aclose()
    submit = fake_qolaba.calls[0]
    assert submit.path == "/getImagetoImage"
    assert submit.body["mask_url"] == "https://gateway.example/v1/inputs/mask.png"


async def test_aithriving_sends_inverted_strength_under_the_authentication_header(
    fake_aithriving: FakeAithriving,
) -> None:
    config = engine_config("aithriving", fake_aithriving.base_url)
    engine = build_engine("ai", config, build_client(config))
    request = sample_request("image-to-image", 2, strength=0.7, seed=100, sampler="euler_ancestral")
    result = await engine.generate(request, _nothing)
    await engine.aclose()
    assert [image.seed for image in result.images] == [100, 101]
    forms = [c.body for c in fake_aithriving.calls]
    assert [f["image_strength"] for f in forms] == ["0.3", "0.3"]
    assert {f["sampler"] for f in forms} == {"K_EULER_ANCESTRAL"}
    assert all(c.headers["authentication"] == "test-key" for c in fake_aithriving.calls)


async def test_aithriving_with_only_base_url_and_key_serves_a_vendor_written_from_the_example(
    fake_aithriving: FakeAithriving,
) -> None:
    # The operator: no auth_header option, a server that reads `Authorization: <token>`.
    fake_aithriving.read_as("authorization_header")
    config = engine_config("aithriving", fake_aithriving.base_url)
    engine = build_engine("ai", config, build_client(config))
    try:
        result = await engine.generate(sample_request("image-to-image"), _nothing)
    finally:
        await engine.aclose()
    assert len(result.images) == 1
    (call,) = fake_aithriving.calls
    assert (call.headers["authorization"], call.headers["authentication"]) == ("test-key", "test-key")


async def test_aithriving_auth_header_option_sends_the_key_under_that_name_only(
    fake_aithriving: FakeAithriving,
) -> None:
    fake_aithriving.read_as("authorization_header")
    config = engine_config("aithriving", fake_aithriving.base_url, options={"auth_header": "Authorization"})
    engine = build_engine("ai", config, build_client(config))
    try:
        await engine.generate(sample_request("image-to-image"), _nothing)
    finally:
        await engine.aclose()
    assert "authentication" not in fake_aithriving.calls[0].headers


async def test_qolaba_keeps_the_path_spelling_and_token_form_that_worked(fake_qolaba: FakeQolaba) -> None:
    fake_qolaba.read_as("one_spelling", "raw_token")
    config = engine_config("qolaba", fake_qolaba.base_url)
    engine = build_engine("q", config, build_client(config))
    try:
        await engine.generate(sample_request("image-to-image"), _nothing)
        first = len(fake_qolaba.calls)
        await engine.generate(sample_request("image-to-image"), _nothing)
    finally:
        await engine.aclose()
    posts = [(c.path, c.headers["authorization"]) for c in fake_qolaba.calls[first:] if c.method == "POST"]
    # The second job goes straight to what answered: no 404, no refused Bearer.
    assert posts[0] == ("/getImagetoImage", "test-key")
    assert all(auth == "test-key" for _, auth in posts)


async def test_qolaba_auth_scheme_option_pins_the_form(fake_qolaba: FakeQolaba) -> None:
    fake_qolaba.read_as("raw_token")
    config = engine_config("qolaba", fake_qolaba.base_url, options={"auth_scheme": "bearer"})
    engine = build_engine("q", config, build_client(config))
    try:
        with pytest.raises(EngineCredentialsRefused):
            await engine.generate(sample_request("text-to-image"), _nothing)
    finally:
        await engine.aclose()
    assert len(fake_qolaba.calls) == 1  # no second try under the other form


async def test_aithriving_keeps_the_images_made_before_the_engine_failed(fake_aithriving: FakeAithriving) -> None:
    config = engine_config("aithriving", fake_aithriving.base_url)
    engine = build_engine("ai", config, build_client(config))

    def break_after_first(fraction: float) -> None:
        # Progress is reported after each image: from the second request on, the vendor is down.
        del fraction
        fake_aithriving.fail_with_status(503)

    result = await engine.generate(sample_request("image-to-image", 3), break_after_first)
    await engine.aclose()
    assert [image.index for image in result.images] == [0]
    assert set(result.failed) == {1, 2}


async def test_api2convert_base_url_with_the_version_still_reaches_v2_jobs(fake_api2convert: FakeApi2Convert) -> None:
    # The SDK's OpenAPI server is https://api.api2convert.com/v2; the pages' Host is the bare host.
    config = engine_config("api2convert", f"{fake_api2convert.base_url}/v2/")
    engine = build_engine("a2c", config, build_client(config))
    try:
        result = await engine.generate(sample_request(), _nothing)
    finally:
        await engine.aclose()
    assert len(result.images) == 1
    assert {c.path for c in fake_api2convert.calls if c.method == "POST"} == {"/v2/jobs"}


async def test_api2convert_refused_output_link_is_not_a_credentials_refusal(fake_api2convert: FakeApi2Convert) -> None:
    # Output links are fetched without the account key: their 401 says nothing of our credentials.
    fake_api2convert.fail_with_status(401, on="download")
    config = engine_config("api2convert", fake_api2convert.base_url)
    engine = build_engine("a2c", config, build_client(config))
    try:
        with pytest.raises(EngineUnavailable) as caught:
            await engine.generate(sample_request(), _nothing)
    finally:
        await engine.aclose()
    assert not isinstance(caught.value, EngineCredentialsRefused)
