"""A generation's parameters: resolved once from the body, stored with the job, turned into the
EngineRequest the routes are checked with and the engines run."""

from __future__ import annotations

import msgspec
import pytest

from gateway.api.submission import generation_params
from gateway.domain.generation import GenerationParams, ImageInput, Operation, operation_named
from gateway.domain.requests import ImageToImageRequest, InpaintRequest, TextToImageRequest

EVERY_FIELD_SET = GenerationParams(
    operation="inpaint",
    prompt="a lighthouse",
    negative_prompt="fog",
    width=640,
    height=384,
    steps=12,
    guidance_scale=4.5,
    strength=0.35,
    seed=7,
    n=3,
    style="anime",
    sampler="heun",
    model="sdxl",
    output_format="webp",
    resize_mode="crop",
    engine_options={"qolaba": {"quality": "high"}},
    explicit=frozenset({"steps", "seed"}),
)


def test_engine_request_carries_every_parameter_and_the_job_s_inputs() -> None:
    image = ImageInput(data=b"i", media_type="image/png", width=640, height=384)
    mask = ImageInput(data=b"m", media_type="image/png", width=640, height=384)

    request = EVERY_FIELD_SET.engine_request("job-9", image=image, mask=mask)

    for name in GenerationParams.__struct_fields__:
        assert getattr(request, name) == getattr(EVERY_FIELD_SET, name), name
    assert (request.job_id, request.image, request.mask) == ("job-9", image, mask)


def test_stored_parameters_read_back_as_they_were() -> None:
    stored = EVERY_FIELD_SET.stored()

    # What the job's row keeps is plain JSON, with the set of explicit fields in one order.
    assert msgspec.json.decode(msgspec.json.encode(stored)) == stored
    assert stored["explicit"] == ["seed", "steps"]
    assert GenerationParams.from_stored(msgspec.json.decode(msgspec.json.encode(stored))) == EVERY_FIELD_SET


def test_a_row_stored_without_the_optional_fields_gets_their_defaults() -> None:
    # A text-to-image job's row from before strength, resize_mode and explicit were always written.
    stored: dict[str, object] = {
        "operation": "text-to-image",
        "prompt": "p",
        "negative_prompt": None,
        "width": 512,
        "height": 512,
        "steps": 30,
        "guidance_scale": 7.5,
        "seed": 1,
        "n": 1,
        "style": None,
        "sampler": None,
        "model": None,
        "output_format": "png",
        "engine_options": {},
    }

    params = GenerationParams.from_stored(stored)

    assert (params.strength, params.resize_mode, params.explicit) == (None, "simple", frozenset())


def test_text_to_image_takes_no_strength_and_resolves_its_size() -> None:
    body = msgspec.convert({"prompt": "p", "aspect_ratio": "16:9", "steps": 12}, TextToImageRequest)

    params = generation_params("text-to-image", body, seed=5)

    assert (params.width, params.height) == body.size()
    assert (params.strength, params.resize_mode, params.seed) == (None, "simple", 5)
    assert params.explicit == {"steps", "width", "height"}


@pytest.mark.parametrize(
    ("operation", "body_type", "extra", "strength"),
    [("image-to-image", ImageToImageRequest, {}, 0.6), ("inpaint", InpaintRequest, {"mask": "m"}, 1.0)],
)
def test_an_input_image_brings_its_strength_and_resize_mode(
    operation: Operation, body_type: type[ImageToImageRequest | InpaintRequest], extra: dict[str, str], strength: float
) -> None:
    body = msgspec.convert({"prompt": "p", "image": "i", "resize_mode": "fill", **extra}, body_type)

    params = generation_params(operation, body, seed=0)

    assert (params.strength, params.resize_mode, params.explicit) == (strength, "fill", frozenset())


def test_an_unknown_operation_name_is_refused() -> None:
    assert operation_named("inpaint") == "inpaint"
    with pytest.raises(ValueError, match="outpaint"):
        operation_named("outpaint")
