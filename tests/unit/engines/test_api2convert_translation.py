"""api2convert: request translation, job outcomes and error classification, without the network."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from gateway.engines import api2convert as a2c
from gateway.engines import api2convert_jobs as a2c_jobs
from gateway.engines.base import EngineCredentialsRefused, EngineRateLimited, EngineRejected, EngineUnavailable
from tests.fakes.samples import sample_request


def test_one_conversion_per_image_with_consecutive_seeds() -> None:
    body = a2c.job_body(sample_request("text-to-image", 3, seed=10))
    assert [c["options"]["seed"] for c in body["conversion"]] == [10, 11, 12]
    assert {c["target"] for c in body["conversion"]} == {"text-to-image"}
    assert body["fail_on_conversion_error"] is False
    assert "input" not in body


def test_options_carry_the_documented_names() -> None:
    options = a2c.conversion_options(sample_request("text-to-image", style="photographic"), 0)
    assert options["cfg_scale"] == 7.5
    assert options["num_inference_steps"] == 20
    assert (options["width"], options["height"]) == (512, 512)
    assert options["style"] == "photorealistic"
    assert options["allow_multiple_outputs"] is True
    assert "denoising_strength" not in options


def test_seed_zero_is_left_to_the_vendor_because_its_minimum_is_one() -> None:
    assert "seed" not in a2c.conversion_options(sample_request(seed=0), 0)


def test_inpaint_sends_denoising_strength_resize_mode_and_both_inputs() -> None:
    request = sample_request("inpaint", strength=0.3, resize_mode="crop")
    body = a2c.job_body(request)
    options = body["conversion"][0]["options"]
    assert body["conversion"][0]["target"] == "image-inpaint"
    assert options["denoising_strength"] == 0.3
    assert options["resize_mode"] == "crop"
    assert [i["type"] for i in body["input"]] == ["remote", "remote"]
    assert body["input"][1]["source"].endswith("mask.png")


def test_inputs_without_url_travel_as_base64() -> None:
    body = a2c.job_body(sample_request("inpaint", urls=False))
    assert body["input"][0]["type"] == "base64"
    assert body["input"][0]["content_type"] == "image/png"


def test_aspect_ratio_option_replaces_width_and_height() -> None:
    options = a2c.conversion_options(sample_request(engine_options={"api2convert": {"aspect_ratio": "16:9"}}), 0)
    assert options["aspect_ratio"] == "16:9"
    assert "width" not in options


def test_outputs_are_locked_with_the_engines_own_password() -> None:
    # The tenant's password never reaches an engine: EngineRequest has no field for it.
    body = a2c.job_body(sample_request(n=2), "vendor-lock")
    assert [c["options"]["download_password"] for c in body["conversion"]] == ["vendor-lock", "vendor-lock"]


def test_image_to_image_is_not_offered() -> None:
    assert a2c.CAPABILITIES.check(sample_request("image-to-image")) == "operation image-to-image is not supported"


def test_capabilities_follow_the_option_tables() -> None:
    assert a2c.CAPABILITIES.check(sample_request(steps=61)) == "steps must be between 1 and 60"
    assert a2c.CAPABILITIES.check(sample_request(guidance_scale=31)) == "guidance_scale must be between 1 and 30"
    assert a2c.CAPABILITIES.check(sample_request(sampler="euler")) == "sampler euler is not supported"


def test_check_options_accepts_documented_options_only() -> None:
    assert a2c.check_options({"preset": "p", "aspect_ratio": "4:3"}) is None
    assert "aspect_ratio" in str(a2c.check_options({"aspect_ratio": "2:1"}))
    assert "not a api2convert option" in str(a2c.check_options({"sampler": "x"}))


def _job(**fields: object) -> a2c_jobs.Job:
    document = {"id": "j", "status": {"code": "completed"}, **fields}
    return msgspec.convert(document, a2c_jobs.Job)


def test_outputs_map_to_images_by_conversion_and_skip_disabled_files() -> None:
    job = _job(
        conversion=[{"id": "c0", "target": "text-to-image"}, {"id": "c1", "target": "text-to-image"}],
        output=[
            {"uri": "u1", "source": {"conversion": "c1"}},
            {"uri": "u0", "source": {"conversion": "c0"}, "status": "expired"},
        ],
        warnings=[{"source": "conversion", "id_source": "c0", "code": 51}],
    )
    uris, failed = a2c_jobs.job_outputs(job, 2)
    assert uris == {1: "u1"}
    assert failed == {0: "no output (code 51)"}


def test_outputs_without_a_source_fill_the_images_in_order() -> None:
    uris, failed = a2c_jobs.job_outputs(_job(output=[{"uri": "a"}, {"uri": "b"}]), 3)
    assert uris == {0: "a", 1: "b"}
    assert failed == {2: "no output"}


def test_failed_job_names_its_codes_and_what_it_spent() -> None:
    error = a2c_jobs.job_failure(_job(status={"code": "failed"}, errors=[{"source": "input", "code": 17}], spent=2))
    assert isinstance(error, EngineUnavailable)
    assert error.message == "api2convert: job failed (input code 17)"
    assert error.spend_vendor_credits == 2


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, EngineRejected), (401, EngineCredentialsRefused), (402, EngineUnavailable), (500, EngineUnavailable)],
)
def test_http_errors_are_classified_by_status(status: int, kind: type[Exception]) -> None:
    response = httpx.Response(status, json={"code": 8, "message": "The JSON body is empty"})
    error = a2c_jobs.http_failure(response, "create")
    assert type(error) is kind
    assert "code 8" in error.message


def test_429_carries_retry_after() -> None:
    error = a2c_jobs.http_failure(httpx.Response(429, headers={"Retry-After": "3"}, text="busy"), "create")
    assert isinstance(error, EngineRateLimited)
    assert error.retry_after == 3.0
