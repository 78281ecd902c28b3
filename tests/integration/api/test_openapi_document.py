"""The committed OpenAPI document is what the code generates, and the docs UI works offline."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from gateway.app import create_app
from gateway.config import load_settings
from gateway.openapi import encode_document, openapi_document
from tests.conftest import Gateway

COMMITTED = Path(__file__).parents[3] / "openapi" / "gateway.json"


def test_committed_document_matches_the_code() -> None:
    generated = encode_document(openapi_document(create_app(load_settings({}))))
    assert COMMITTED.read_bytes() == generated, (
        "openapi/gateway.json is stale: run `gateway openapi --out openapi/gateway.json` and commit it"
    )


def test_request_schemas_carry_every_constraint_validation_enforces() -> None:
    doc = msgspec.json.decode(COMMITTED.read_bytes())
    t2i = doc["components"]["schemas"]["TextToImageRequest"]
    assert t2i["additionalProperties"] is False
    assert "prompt" in t2i["required"]
    n = t2i["properties"]["n"]
    assert n["minimum"] == 1
    assert "maximum" in n
    operation = doc["paths"]["/v1/text-to-image"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/TextToImageRequest")
    assert {"bearer", "apiKey"} <= doc["components"]["securitySchemes"].keys()


async def test_document_and_docs_ui_are_public_and_load_nothing_from_a_cdn(gateway: Gateway) -> None:
    document = await gateway.client.get("/schema/openapi.json")
    assert document.status_code == 200
    assert "/v1/text-to-image" in document.json()["paths"]

    page = await gateway.client.get("/schema/docs")
    assert page.status_code == 200
    sources = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert sources, page.text
    assert all(src.startswith("/schema/assets/") for src in sources), sources
    for src in sources:
        asset = await gateway.client.get(src)
        assert asset.status_code == 200, src
        assert asset.content, src
