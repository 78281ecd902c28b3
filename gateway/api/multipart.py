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
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from functools import cache
from types import MappingProxyType
from typing import Any, TypeVar, cast

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

S = TypeVar("S", bound=msgspec.Struct)


@dataclass(frozen=True)
class FormField:
    """How one field may arrive in a form."""

    text: bool = True  # as a text part
    file: bool = False  # as a file part
    many: bool = False  # a list: every part with this name is one item
    mapping: bool = False  # a dict: one text part holding a JSON object
    label: str | None = None  # the name errors give it, when not the part's own (OpenAI's `image[]`)


@dataclass(frozen=True)
class FilePart:
    """A file part's bytes, read."""

    media_type: str
    data: bytes

    def data_uri(self) -> str:
        return f"data:{self.media_type};base64,{base64.b64encode(self.data).decode()}"


def _unwrap(t: Any) -> Any:
    if isinstance(t, msgspec.inspect.Metadata):
        return _unwrap(t.type)
    if isinstance(t, msgspec.inspect.UnionType):
        inner = [x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)]
        return _unwrap(inner[0]) if len(inner) == 1 else t
    return t


@cache
def struct_fields(struct: type[msgspec.Struct]) -> Mapping[str, FormField]:
    """The form fields of `struct`: lists repeat, dicts are JSON text, `FILE_FIELDS` may be files."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = {}
    for f in info.fields:
        t = _unwrap(f.type)
        fields[f.encode_name] = FormField(
            file=f.encode_name in FILE_FIELDS,
            many=isinstance(t, msgspec.inspect.ListType),
            mapping=isinstance(t, msgspec.inspect.DictType),
        )
    return MappingProxyType(fields)


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


async def walk_form(form: FormMultiDict, fields: Mapping[str, FormField]) -> dict[str, Any]:
    """Each field of the form checked against its `FormField`, as the value it stands for: a
    list for a `many` field, the decoded object for a `mapping` one, a `FilePart` for a file,
    else the text. Every broken rule is a FieldError naming the field; all of them answer
    together (422; the OpenAI routes reshape it)."""
    out: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name in dict.fromkeys(form.keys()):
        values = form.getall(name)
        field = fields.get(name)
        if field is None:
            errors.append(FieldError(name, "unknown field"))
            continue
        label = field.label or name
        files = [v for v in values if isinstance(v, UploadFile)]
        if files and not field.file:
            errors.append(FieldError(label, "must be text, not a file"))
            continue
        if len(files) < len(values) and not field.text:
            errors.append(FieldError(label, "must be a file"))
            continue
        if len(values) > 1 and not field.many:
            errors.append(FieldError(label, "given more than once"))
            continue
        items = [await _read(v) if isinstance(v, UploadFile) else v for v in values]
        if field.many:
            out[name] = items
        elif field.mapping and isinstance(items[0], str):
            try:
                out[name] = msgspec.json.decode(items[0])
            except msgspec.DecodeError:
                errors.append(FieldError(label, "must be a JSON object"))
        else:
            out[name] = items[0]
    if errors:
        raise _invalid(errors)
    return out


async def _read(upload: UploadFile) -> FilePart:
    return FilePart(upload.content_type or "application/octet-stream", await upload.read())


async def form_fields(request: Request[Any, Any, Any], struct: type[msgspec.Struct]) -> dict[str, Any]:
    """The form as the JSON-shaped dict the Struct decodes from (files become data: URIs)."""
    # Read the whole body first: the form parser would otherwise consume the stream, and the
    # body stays readable for the idempotency fingerprint.
    await request.body()
    fields = await walk_form(await read_form(request), struct_fields(struct))
    return {name: value.data_uri() if isinstance(value, FilePart) else value for name, value in fields.items()}


def convert_form(fields: dict[str, Any], struct: type[S]) -> S:
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
