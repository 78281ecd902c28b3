"""walk_form: the one reading of multipart forms, shared by /v1's form bodies and OpenAI's edits."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.datastructures import FormMultiDict, UploadFile

from gateway.api.multipart import FilePart, FormField, walk_form
from gateway.errors import ValidationFailed

FIELDS = {
    "prompt": FormField(),
    "engines": FormField(many=True),
    "engine_options": FormField(mapping=True),
    "image": FormField(file=True),
    "photo[]": FormField(text=False, file=True, label="photo"),
}


def _file(data: bytes = b"\x89PNG", media_type: str = "image/png") -> UploadFile:
    return UploadFile(content_type=media_type, filename="f", file_data=data)


async def _errors(parts: list[tuple[str, Any]]) -> dict[str, str]:
    form = FormMultiDict(parts)
    with pytest.raises(ValidationFailed) as refused:
        await walk_form(form, FIELDS)
    await form.close()
    return {e.field: e.message for e in refused.value.errors or []}


async def test_each_part_becomes_the_value_its_field_stands_for() -> None:
    form = FormMultiDict(
        [
            ("prompt", "a boat"),
            ("engines", "b"),
            ("engines", "a"),
            ("engine_options", '{"a": {"x": 1}}'),
            ("image", _file(b"png bytes")),
            ("photo[]", _file(b"jpeg", "image/jpeg")),
        ]
    )
    walked = await walk_form(form, FIELDS)
    await form.close()
    assert walked == {
        "prompt": "a boat",
        "engines": ["b", "a"],
        "engine_options": {"a": {"x": 1}},
        "image": FilePart("image/png", b"png bytes"),
        "photo[]": FilePart("image/jpeg", b"jpeg"),
    }
    assert FilePart("image/png", b"hi").data_uri() == "data:image/png;base64,aGk="


async def test_a_field_that_may_be_text_or_file_takes_text() -> None:
    assert await walk_form(FormMultiDict([("image", "https://example.com/a.png")]), FIELDS) == {
        "image": "https://example.com/a.png"
    }


async def test_every_broken_rule_is_named_and_all_answer_together() -> None:
    errors = await _errors(
        [
            ("colour", "red"),
            ("prompt", _file()),
            ("engine_options", "not json"),
            ("image", "a"),
            ("image", "b"),
            ("photo[]", "text"),
        ]
    )
    assert errors == {
        "colour": "unknown field",
        "prompt": "must be text, not a file",
        "engine_options": "must be a JSON object",
        "image": "given more than once",
        "photo": "must be a file",  # `photo[]`, under the name its errors give it
    }


async def test_a_single_field_given_twice_is_refused() -> None:
    assert await _errors([("prompt", "a"), ("prompt", "b")]) == {"prompt": "given more than once"}
