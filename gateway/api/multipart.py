"""multipart/form-data as a second encoding of the image request Structs.

A form maps onto the same Struct as the JSON body: each text part is one field (numbers and
booleans written as text), a repeated part fills a list field (`engines`), a dict field takes
a JSON object as text (`engine_options`), and the image fields (`image`, `mask`) take either a
file part or the same URL / data: URI / base64 text as in JSON. Validation is the Struct's own,
so a bad value answers 422 naming the field, exactly as in JSON.

`FormOrJsonRequest` is the handlers' `request_class`: Litestar reads `data` through
`Request.json()`, which this class answers from the form when the body is multipart.
The OpenAPI document describes the second encoding (gateway/openapi/operations.py, `forms`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from functools import cache
from typing import Any, cast

import msgspec
from litestar import Request
from litestar.datastructures import FormMultiDict, UploadFile
from litestar.enums import RequestEncodingType
from litestar.utils.scope.state import ScopeState

from gateway.domain.generation import IMAGE_MEDIA_TYPES
from gateway.errors import FieldError, MalformedBody, ValidationFailed, field_errors_from_msgspec

# The fields that may arrive as file parts; every other field is text.
FILE_FIELDS = frozenset({"image", "mask"})
# What a file part may hold (the formats gateway/storage/inputs.py decodes).
FILE_MEDIA_TYPES = ", ".join(IMAGE_MEDIA_TYPES)


@dataclass(frozen=True)
class _FieldShape:
    many: bool  # a list: every part with this name is one item
    mapping: bool  # a dict: one part holding a JSON object


def _unwrap(t: Any) -> Any:
    if isinstance(t, msgspec.inspect.Metadata):
        return _unwrap(t.type)
    if isinstance(t, msgspec.inspect.UnionType):
        inner = [x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)]
        return _unwrap(inner[0]) if len(inner) == 1 else t
    return t


@cache
def _shapes(struct: type[msgspec.Struct]) -> dict[str, _FieldShape]:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    shapes = {}
    for f in info.fields:
        t = _unwrap(f.type)
        shapes[f.encode_name] = _FieldShape(
            many=isinstance(t, msgspec.inspect.ListType), mapping=isinstance(t, msgspec.inspect.DictType)
        )
    return shapes


def _invalid(errors: list[FieldError]) -> ValidationFailed:
    return ValidationFailed("; ".join(f"{e.field}: {e.message}" for e in errors), errors=errors)


async def read_form(request: Request[Any, Any, Any]) -> FormMultiDict:
    """The request's form. OpenAPI sends a binary field as a part with its Content-Type and no
    filename, which Litestar's parser decodes as UTF-8 text (and fails on); such a form is read
    again with the standard library's MIME parser, where a part that is not text is a file."""
    try:
        return await request.form()
    except UnicodeDecodeError:
        form = _mime_form(await request.body(), request.headers.get("content-type", ""))
    # Kept where Litestar keeps the form it parsed: the route closes its files when the request ends.
    # (Litestar's annotation says list[str]; its own parser puts files in those lists too.)
    parsed = cast("dict[str, Any]", form)
    ScopeState.from_scope(request.scope).form = parsed
    return FormMultiDict.from_form_data(parsed)


def _mime_form(body: bytes, content_type: str) -> dict[str, list[str | UploadFile]]:
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise MalformedBody("The form could not be parsed.")
    form: dict[str, list[str | UploadFile]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise MalformedBody("The form could not be parsed: a part has no name.")
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        media_type = part.get_content_type()
        filename = part.get_filename()
        if filename or media_type != "text/plain":
            form.setdefault(name, []).append(
                UploadFile(content_type=media_type, filename=filename or name, file_data=data)
            )
            continue
        try:
            form.setdefault(name, []).append(data.decode(part.get_content_charset() or "utf-8"))
        except UnicodeDecodeError as exc:
            raise MalformedBody(f"The form could not be parsed: the text part {name!r} is not UTF-8.") from exc
    return form


async def form_fields(request: Request[Any, Any, Any], struct: type[msgspec.Struct]) -> dict[str, Any]:
    """The form as the JSON-shaped dict the Struct decodes from (files become data: URIs)."""
    # Read the whole body first: the form parser would otherwise consume the stream, and the
    # body stays readable for the idempotency fingerprint.
    await request.body()
    form = await read_form(request)
    shapes = _shapes(struct)
    out: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name in dict.fromkeys(form.keys()):
        values = form.getall(name)
        shape = shapes.get(name)
        if shape is None:
            errors.append(FieldError(name, "unknown field"))
            continue
        files = [v for v in values if isinstance(v, UploadFile)]
        if files and name not in FILE_FIELDS:
            errors.append(FieldError(name, "must be text, not a file"))
            continue
        if shape.many:
            out[name] = [str(v) for v in values]
            continue
        if len(values) > 1:
            errors.append(FieldError(name, "given more than once"))
            continue
        value = values[0]
        if isinstance(value, UploadFile):
            data = await value.read()
            media_type = value.content_type or "application/octet-stream"
            out[name] = f"data:{media_type};base64,{base64.b64encode(data).decode()}"
        elif shape.mapping:
            try:
                out[name] = msgspec.json.decode(value)
            except msgspec.DecodeError:
                errors.append(FieldError(name, "must be a JSON object"))
        else:
            out[name] = value
    if errors:
        raise _invalid(errors)
    return out


def convert_form(fields: dict[str, Any], struct: type[msgspec.Struct]) -> msgspec.Struct:
    """Validate form fields against `struct`: text may stand for numbers and booleans, nothing else is loose."""
    try:
        return msgspec.convert(fields, struct, strict=False)
    except msgspec.ValidationError as exc:
        raise _invalid(field_errors_from_msgspec(str(exc))) from exc


def _data_struct(request: Request[Any, Any, Any]) -> type[msgspec.Struct] | None:
    field = request.scope["route_handler"].parsed_fn_signature.parameters.get("data")
    annotation = field.annotation if field is not None else None
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    return None


def is_multipart(request: Request[Any, Any, Any]) -> bool:
    return request.content_type[0] == RequestEncodingType.MULTI_PART.value


class FormOrJsonRequest(Request[Any, Any, Any]):
    """A request whose `data` may come as JSON or as multipart/form-data."""

    async def json(self) -> Any:
        struct = _data_struct(self)
        if struct is None or not is_multipart(self):
            return await super().json()
        return msgspec.to_builtins(convert_form(await form_fields(self, struct), struct))
