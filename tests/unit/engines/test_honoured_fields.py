"""Which request fields each vendor engine passes on as asked: declared (Capabilities.honours) and
reported (Engine.received) alike, and compared against what the tenant set."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.config import EngineKind
from gateway.domain.generation import HONOURABLE_FIELDS, EngineRequest, Operation
from gateway.engines.base import Engine, dropped_fields
from gateway.engines.registry import build_engine
from tests.fakes.samples import engine_config, sample_request

CASES: list[tuple[EngineKind, Operation]] = [
    ("api2convert", "text-to-image"),
    ("api2convert", "inpaint"),
    ("qolaba", "text-to-image"),
    ("qolaba", "image-to-image"),
    ("qolaba", "inpaint"),
    ("aithriving", "image-to-image"),
]


def engine(kind: EngineKind) -> Engine:
    config = engine_config(kind, "https://vendor.invalid")
    return build_engine(kind, config, httpx.AsyncClient())  # never sends: only translation is used


def everything_set(engine: Engine, operation: Operation) -> EngineRequest:
    """A request setting every honourable field, to values the engine's ranges accept."""
    caps = engine.capabilities
    fields: dict[str, Any] = {"guidance_scale": 7.0, "steps": 20, "seed": 42}
    if caps.styles:
        fields["style"] = sorted(caps.styles)[0]
    if caps.samplers:
        fields["sampler"] = sorted(caps.samplers)[0]
    if caps.models:
        # Qolaba's size applies to its SDXL model only.
        fields["model"] = "sdxl" if "sdxl" in caps.models else sorted(caps.models)[0]
    request = sample_request(operation, **fields)
    explicit = frozenset(f for f in HONOURABLE_FIELDS if getattr(request, f) is not None)
    return sample_request(operation, explicit=explicit, **fields)


@pytest.mark.parametrize(("kind", "operation"), CASES, ids=[f"{k}-{o}" for k, o in CASES])
def test_received_drops_exactly_what_the_capabilities_say_is_not_honoured(
    kind: EngineKind, operation: Operation
) -> None:
    subject = engine(kind)
    request = everything_set(subject, operation)
    honours = subject.capabilities.honours
    assert honours is not None
    dropped = dropped_fields(request, subject.received(request))
    assert set(dropped) == request.explicit - honours[operation]


def test_aithriving_drops_negative_prompt_and_would_round_fractional_guidance() -> None:
    ait = engine("aithriving")
    request = sample_request(
        "image-to-image", guidance_scale=7.5, explicit=frozenset({"negative_prompt", "guidance_scale"})
    )
    dropped = dropped_fields(request, ait.received(request))
    assert set(dropped) == {"negative_prompt", "guidance_scale"}
    assert "8" in dropped["guidance_scale"]
    whole = sample_request("image-to-image", guidance_scale=7.0, explicit=frozenset({"guidance_scale"}))
    assert dropped_fields(whole, ait.received(whole)) == {}


def test_aithriving_seed_zero_is_the_vendors_random_so_not_honoured() -> None:
    ait = engine("aithriving")
    request = sample_request("image-to-image", seed=0, explicit=frozenset({"seed"}))
    assert set(dropped_fields(request, ait.received(request))) == {"seed"}


def test_qolaba_never_takes_steps_or_seed_and_inpaint_no_size_guidance_or_strength() -> None:
    qolaba = engine("qolaba")
    t2i = sample_request("text-to-image", explicit=frozenset({"steps", "seed", "width", "guidance_scale"}))
    assert set(dropped_fields(t2i, qolaba.received(t2i))) == {"steps", "seed"}
    inpaint = sample_request("inpaint", explicit=frozenset({"width", "height", "guidance_scale", "strength"}))
    assert set(dropped_fields(inpaint, qolaba.received(inpaint))) == {"width", "height", "guidance_scale", "strength"}


def test_qolaba_models_other_than_sdxl_ignore_the_size() -> None:
    qolaba = engine("qolaba")
    request = sample_request("text-to-image", model="anime", explicit=frozenset({"width", "height", "model"}))
    assert set(dropped_fields(request, qolaba.received(request))) == {"width", "height"}


def test_api2convert_drops_the_size_beside_an_aspect_ratio_option_and_a_style_replaced_raw() -> None:
    a2c = engine("api2convert")
    ratio = sample_request(
        engine_options={"api2convert": {"aspect_ratio": "16:9"}}, explicit=frozenset({"width", "height"})
    )
    assert set(dropped_fields(ratio, a2c.received(ratio))) == {"width", "height"}
    defaulted = sample_request(engine_options={"api2convert": {"aspect_ratio": "16:9"}})
    assert dropped_fields(defaulted, a2c.received(defaulted)) == {}  # the size was not asked for
    raw = sample_request(
        style="anime", engine_options={"api2convert": {"style": "generic"}}, explicit=frozenset({"style"})
    )
    assert set(dropped_fields(raw, a2c.received(raw))) == {"style"}


def test_api2convert_raw_style_is_checked_against_the_operations_own_table() -> None:
    a2c = engine("api2convert")
    assert a2c.check_options({"style": "generic"}, "text-to-image") is None
    problem = a2c.check_options({"style": "watercolour"}, "text-to-image")
    assert problem is not None
    assert "anime, artistic, generic, photorealistic" in problem
    # The image-inpaint page gives style a pattern only: any text up to 255 characters.
    assert a2c.check_options({"style": "watercolour"}, "inpaint") is None
