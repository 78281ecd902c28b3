"""aithriving: the form fields, the strength inversion, enums and the answer envelope."""

from __future__ import annotations

import base64

import pytest

from gateway.domain.generation import SAMPLERS, STYLES
from gateway.engines import aithriving
from gateway.engines.aithriving import ResultFailed
from tests.fakes.images import png
from tests.fakes.samples import sample_request


@pytest.mark.parametrize(("strength", "image_strength"), [(0.0, 1.0), (0.25, 0.75), (0.65, 0.35), (1.0, 0.0)])
def test_image_strength_is_one_minus_our_strength(strength: float, image_strength: float) -> None:
    assert aithriving.image_strength(strength) == pytest.approx(image_strength)
    fields = aithriving.form_fields(sample_request("image-to-image", strength=strength), 0)
    assert float(fields["image_strength"]) == pytest.approx(image_strength)


def test_fields_use_the_documented_names_and_per_image_seeds() -> None:
    request = sample_request("image-to-image", 2, seed=41, steps=30, guidance_scale=7.6)
    first, second = (aithriving.form_fields(request, i) for i in range(2))
    assert (first["seed"], second["seed"]) == ("41", "42")
    assert first["steps"] == "30"
    assert first["cfg_scale"] == "8"  # documented as an int
    assert (first["width"], first["height"]) == ("512", "512")


def test_the_last_seed_wraps_instead_of_leaving_the_documented_range() -> None:
    fields = aithriving.form_fields(sample_request("image-to-image", 2, seed=4294967295), 1)
    assert fields["seed"] == "0"


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "pndm"])
def test_every_sampler_but_pndm_maps_to_a_documented_name(sampler: str) -> None:
    fields = aithriving.form_fields(sample_request("image-to-image", sampler=sampler), 0)
    assert fields["sampler"] in {"DDIM", "DDPM"} or fields["sampler"].startswith("K_")


def test_pndm_and_other_operations_are_not_offered() -> None:
    caps = aithriving.CAPABILITIES
    assert caps.check(sample_request("image-to-image", sampler="pndm")) == "sampler pndm is not supported"
    assert caps.check(sample_request("text-to-image")) == "operation text-to-image is not supported"
    assert caps.check(sample_request("image-to-image", steps=60)) == "steps must be between 10 and 50"
    assert caps.check(sample_request("image-to-image", width=256)) == "width must be between 320 and 1536"


def test_styles_are_sent_as_style_preset() -> None:
    assert aithriving.CAPABILITIES.styles == frozenset(STYLES)
    assert aithriving.form_fields(sample_request("image-to-image", style="neon-punk"), 0)["style_preset"] == "neon-punk"


def test_clip_guidance_preset_comes_from_engine_options() -> None:
    request = sample_request("image-to-image", engine_options={"aithriving": {"clip_guidance_preset": "FAST_BLUE"}})
    assert aithriving.form_fields(request, 0)["clip_guidance_preset"] == "FAST_BLUE"
    assert aithriving.check_options({"clip_guidance_preset": "FAST"}) is not None


def test_a_success_answer_yields_the_image_and_seed() -> None:
    image = png(8, 8)
    answer = aithriving.Answer(code=0, data=aithriving.ImageData(image=base64.b64encode(image).decode(), seed=5))
    assert aithriving.decode_answer(answer, "w") == (image, 5)


@pytest.mark.parametrize(
    "answer",
    [
        aithriving.Answer(code=-1, message="content filtered"),
        aithriving.Answer(code=0, message="success"),
        aithriving.Answer(code=0, data=aithriving.ImageData(image="***not base64***")),
    ],
)
def test_failed_or_broken_answers_fail_only_that_image(answer: aithriving.Answer) -> None:
    with pytest.raises(ResultFailed):
        aithriving.decode_answer(answer, "w")
