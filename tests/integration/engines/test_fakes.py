"""The fakes themselves: they refuse requests that break the vendor documents."""

from __future__ import annotations

import httpx

from tests.fakes.aithriving import FakeAithriving
from tests.fakes.api2convert import FakeApi2Convert
from tests.fakes.images import png


async def test_api2convert_fake_refuses_options_outside_the_documented_ranges(
    fake_api2convert: FakeApi2Convert,
) -> None:
    body = {"conversion": [{"category": "operation", "target": "text-to-image", "options": {"cfg_scale": 99}}]}
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"{fake_api2convert.base_url}/v2/jobs", json=body, headers={"X-Oc-Api-Key": "test-key"}
        )
    assert reply.status_code == 400
    assert fake_api2convert.violations == [
        "post /v2/jobs: conversion/0/options/cfg_scale: 99 is greater than the maximum of 30"
    ]
    fake_api2convert.violations.clear()


async def test_aithriving_fake_checks_form_fields_as_typed_values(fake_aithriving: FakeAithriving) -> None:
    form = {"prompt": "x", "width": "500", "height": "512"}
    files = {"init_image": ("i.png", png(8, 8), "image/png")}
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"{fake_aithriving.base_url}/api/generate/basic/imageToImage",
            data=form,
            files=files,
            headers={"Authentication": "test-key"},
        )
    assert reply.status_code == 400
    assert fake_aithriving.violations == ["post /api/generate/basic/imageToImage: width: 500 is not a multiple of 64"]
    fake_aithriving.violations.clear()
