"""Qolaba: request bodies per operation, the envelope, ranges and options."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from gateway.engines import qolaba
from gateway.engines.base import EngineUnavailable
from tests.fakes.images import png
from tests.fakes.samples import sample_request


def test_text_to_image_body_is_queued_with_batch_and_size() -> None:
    body = qolaba.request_body(sample_request("text-to-image", 3), {})
    assert body["celery"] is True
    assert body["batch"] == 3
    assert body["app_id"] == qolaba.DEFAULT_APP_ID
    assert (body["width"], body["height"], body["guidance_scale"]) == (512, 512, 7.5)
    assert "image" not in body


def test_image_to_image_sends_the_input_url_and_strength_unchanged() -> None:
    body = qolaba.request_body(sample_request("image-to-image", strength=0.8), {})
    assert body["image"].endswith("image.png")
    assert body["strength"] == 0.8


def test_inpaint_sends_the_mask_url_as_is_and_no_size() -> None:
    body = qolaba.request_body(sample_request("inpaint"), {})
    # Both conventions are "white = repaint": the URL of our normalized mask goes as it is.
    assert body["mask_url"].endswith("mask.png")
    assert "width" not in body
    assert "guidance_scale" not in body


def test_model_and_options_choose_the_app_id_and_gpu() -> None:
    assert qolaba.request_body(sample_request(model="anime"), {})["app_id"] == qolaba.MODELS["anime"]
    options = {"qolaba": {"app_id": "ap-nM68b4WwQ6VzdNwwXBrOHE", "inference_type": "h100"}}
    body = qolaba.request_body(sample_request(engine_options=options), {"inference_type": "a10g"})
    assert body["app_id"] == "ap-nM68b4WwQ6VzdNwwXBrOHE"
    assert body["inference_type"] == "h100"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"guidance_scale": 1.5}, "guidance_scale must be between 2 and 25"),
        ({"n": 5}, "n must be at most 4"),
        ({"width": 448}, "width must be between 512 and 1536"),
        ({"height": 544}, "height must be a multiple of 64"),
        ({"model": "sd15"}, "model sd15 is not available"),
    ],
)
def test_capabilities_apply_the_stricter_documented_ranges(fields: dict[str, Any], reason: str) -> None:
    assert qolaba.CAPABILITIES.check(sample_request(**fields)) == reason


def test_inputs_must_have_urls() -> None:
    assert "URL" in str(qolaba.CAPABILITIES.check(sample_request("image-to-image", urls=False)))


def test_options_are_checked_against_the_documented_values() -> None:
    assert qolaba.check_options({"app_id": "ap-eRSyl0imzrUrbvgdAYwDTl", "inference_type": "a100"}) is None
    assert "inference_type" in str(qolaba.check_options({"inference_type": "t4"}))
    assert "app_id" in str(qolaba.check_options({"app_id": "sdxl"}))


def test_error_or_error_data_means_the_task_failed() -> None:
    assert qolaba.envelope_failure(qolaba.Envelope(error="boom"), "w") is not None
    assert qolaba.envelope_failure(qolaba.Envelope(error_data={"x": 1}), "w") is not None
    assert qolaba.envelope_failure(qolaba.Envelope(error="", error_data="", status="WHATEVER"), "w") is None


@pytest.mark.parametrize("status", ["FAILURE", "failed", "REVOKED", " Error ", "cancelled"])
def test_a_failed_status_alone_means_the_task_failed(status: str) -> None:
    failure = qolaba.envelope_failure(qolaba.Envelope(error="", error_data="", status=status), "w")
    assert failure is not None
    assert status.strip().upper() in failure.message


def test_a_finished_status_without_output_is_a_failure_and_with_output_a_result() -> None:
    assert qolaba.envelope_failure(qolaba.Envelope(status="SUCCESS", output=""), "w") is not None
    assert qolaba.envelope_failure(qolaba.Envelope(status="SUCCESS", output=["https://x/1.png"]), "w") is None
    assert qolaba.envelope_failure(qolaba.Envelope(status="PENDING", output=""), "w") is None


def test_output_may_be_one_url_or_a_list() -> None:
    assert qolaba.output_refs(qolaba.Envelope(output="https://x/1.png")) == ["https://x/1.png"]
    assert qolaba.output_refs(qolaba.Envelope(output=["a", "", "b"])) == ["a", "b"]
    assert qolaba.output_refs(qolaba.Envelope(output="", status="SOMETHING_NEW")) == []
    with pytest.raises(EngineUnavailable):
        qolaba.output_refs(qolaba.Envelope(output={"unexpected": True}))


def test_data_urls_are_decoded_in_place() -> None:
    image = png(8, 8)
    assert qolaba.decode_data_url("data:image/png;base64," + base64.b64encode(image).decode()) == image
    assert qolaba.decode_data_url("https://x/1.png") is None
