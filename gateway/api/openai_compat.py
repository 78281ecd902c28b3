"""OpenAI-compatible image endpoints under /openai/v1, so the official OpenAI SDKs work with
`base_url=<gateway>/openai/v1` and a gateway key as the API key.

Both endpoints translate the OpenAI request into our own request Struct and hand it to
`gateway.api.submission.generate`: admission, pricing, billing, routing and storage are the /v1 ones.
Only the shapes differ: OpenAI's request fields, its `{"created", "data": [...]}` answer, and its
`{"error": {"message", "type", "param", "code"}}` error body (on these routes only).

Mapping: `size` "WxH" sets width and height ("auto" or absent: our default, or the input image's
size for edits); `quality` low/high map to fewer/more steps; OpenAI model names (dall-e-*,
gpt-image-*) pick our default model, any other name is one of ours; `style`, `user`,
`background`, `moderation` and the like are accepted and ignored. Edits: a `mask` marks the area
to repaint with fully transparent pixels (converted to our white-is-repaint mask); with no mask,
an input image with transparent pixels is repainted there (DALL·E 2 behaviour), and an opaque one
is an image-to-image request. Validation errors answer 400 `invalid_request_error`, naming the
OpenAI parameter, because OpenAI clients treat 400 as "fix the request".
"""

from __future__ import annotations

import asyncio
import base64
import typing
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from litestar import Request, Router, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.openapi.spec import Encoding, OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from litestar.params import JSONBody

from gateway.api.images import IdempotencyKey
from gateway.api.multipart import (
    FILE_MEDIA_TYPES,
    FilePart,
    FormField,
    convert_form,
    read_form,
    struct_fields,
    walk_form,
)
from gateway.api.openai_shapes import (
    OPENAI_PROBLEMS,
    OpenAIImage,
    OpenAIImageEdit,
    OpenAIImageGeneration,
    OpenAIImagesResponse,
    OpenAIOptions,
    Quality,
    StillRunning,
    common_fields,
    openai_exception_handler,
    our_request,
)
from gateway.api.submission import Submitted, generate
from gateway.auth.keys import Principal
from gateway.db import files as fq
from gateway.domain.generation import OutputFormat
from gateway.domain.requests import (
    GenerationRequest,
    ImageToImageRequest,
    InpaintRequest,
    TextToImageRequest,
)
from gateway.errors import GatewayError, ValidationFailed
from gateway.state import Services
from gateway.storage.inputs import CheckedImage, decode_image, mask_from_alpha


async def _answer(
    services: Services,
    request: Request[Any, Any, Any],
    submitted: Submitted,
    options: OpenAIOptions,
    body: GenerationRequest,
) -> OpenAIImagesResponse:
    """The finished job as OpenAI's images response, or the job's failure as an error."""
    view = submitted.view
    if submitted.pending:
        raise StillRunning(
            f"The images are still being made (job {view.id}); they will be at /v1/jobs/{view.id}. "
            "Retrying would start (and charge) a new job.",
            # OpenAI's SDKs retry 5xx answers unless told not to; a retry here would pay twice.
            headers={"x-should-retry": "false"},
        )
    if view.state != "succeeded":
        error = view.error or {}
        failure = GatewayError(str(error.get("detail") or f"The job {view.state}."))
        failure.http_status = int(error.get("status") or 500)
        raise failure
    response_format = options.response_format or "url"
    data: list[OpenAIImage] = []
    base = (services.settings.public_base_url or str(request.base_url)).rstrip("/")
    if response_format == "url":
        data = [OpenAIImage(url=f"{base}{r.url}") for r in view.results if r.url]
    else:
        async with services.pool.acquire() as conn:
            blob_keys = await fq.image_blob_keys(conn, view.id)
        for result in view.results:
            if result.file_id:
                image = await services.blobs.get(blob_keys[result.file_id])
                data.append(OpenAIImage(b64_json=base64.b64encode(image).decode()))
    width, height = body.size()
    return OpenAIImagesResponse(
        created=int(view.created_at.timestamp()), data=data, output_format=body.output_format, size=f"{width}x{height}"
    )


# -- handlers -------------------------------------------------------------------------------


@post(
    "/images/generations",
    operation_id="openaiCreateImage",
    summary="Create images (OpenAI-compatible)",
    tags=["openai"],
    opt={"scope": "generate", "problems": OPENAI_PROBLEMS},
    status_code=200,
)
async def create_image(
    *,
    services: NamedDependency[Services],
    principal: NamedDependency[Principal],
    request: Request[Any, Any, Any],
    data: JSONBody[OpenAIImageGeneration],
    idempotency_key: IdempotencyKey = None,
) -> OpenAIImagesResponse:
    """OpenAI's image generation: a text-to-image job, answered when it has finished."""
    body = our_request(common_fields(data), TextToImageRequest)
    submitted = await generate(
        services=services,
        principal=principal,
        request=request,
        operation="text-to-image",
        body=body,
        idempotency_key=idempotency_key,
        prefer=None,
    )
    return await _answer(services, request, submitted, data, body)


# The edit's text fields, and its files: one image (as `image`, or `image[]` as newer SDKs send
# it) and at most one mask; unlike /v1 forms, these take no URLs or base64 text.
_EDIT_FIELDS = MappingProxyType(
    {
        **struct_fields(OpenAIImageEdit),
        "image": FormField(text=False, file=True, many=True),
        "image[]": FormField(text=False, file=True, many=True, label="image"),
        "mask": FormField(text=False, file=True),
    }
)


async def _edit_form(request: Request[Any, Any, Any]) -> tuple[OpenAIImageEdit, bytes, bytes | None]:
    if request.content_type[0] != RequestEncodingType.MULTI_PART.value:
        raise ValidationFailed.field("image", "send the edit as multipart/form-data with the image as a file")
    fields = await walk_form(await read_form(request), _EDIT_FIELDS)
    images: list[FilePart] = [*fields.pop("image", []), *fields.pop("image[]", [])]
    mask: FilePart | None = fields.pop("mask", None)
    if len(images) != 1:
        raise ValidationFailed.field(
            "image", "give exactly one image to edit" if images else "an image file is required"
        )
    return convert_form(fields, OpenAIImageEdit), images[0].data, mask.data if mask else None


def _data_uri(image: CheckedImage | bytes, media_type: str = "image/png") -> str:
    data = image.data if isinstance(image, CheckedImage) else image
    kind = image.media_type if isinstance(image, CheckedImage) else media_type
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def _fits(side: int) -> bool:
    return 64 <= side <= 2048 and side % 8 == 0


async def _edit_request(
    services: Services, options: OpenAIImageEdit, image_bytes: bytes, mask_bytes: bytes | None
) -> tuple[str, GenerationRequest]:
    """The operation and our request for an OpenAI edit: inpaint where a mask (or the image's own
    transparency) marks an area, image-to-image otherwise."""
    max_pixels = services.settings.max_input_pixels
    image = await asyncio.to_thread(decode_image, image_bytes, "image", max_pixels=max_pixels)
    if mask_bytes is not None:
        checked = await asyncio.to_thread(decode_image, mask_bytes, "mask", max_pixels=max_pixels)
        mask = await asyncio.to_thread(mask_from_alpha, checked, "mask", required=True)
    else:
        mask = await asyncio.to_thread(mask_from_alpha, image, "image", required=False)
    fields = common_fields(options)
    if "width" not in fields and _fits(image.width) and _fits(image.height):
        fields["width"], fields["height"] = image.width, image.height
    fields["image"] = _data_uri(image)
    if mask is None:
        return "image-to-image", our_request(fields, ImageToImageRequest)
    fields["mask"] = _data_uri(mask)
    return "inpaint", our_request(fields, InpaintRequest)


@dataclass
class _EditOperation(Operation):
    """Documents the multipart body the handler parses itself."""

    def __post_init__(self) -> None:
        text = Schema(type=OpenAPIType.STRING)
        binary = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
        schema = Schema(
            type=OpenAPIType.OBJECT,
            required=["image", "prompt"],
            properties={
                "image": binary,
                "mask": Schema(
                    type=OpenAPIType.STRING,
                    format=OpenAPIFormat.BINARY,
                    description="PNG, same size as image; fully transparent pixels are repainted.",
                ),
                "prompt": Schema(type=OpenAPIType.STRING, min_length=1, max_length=4000),
                "n": Schema(type=OpenAPIType.INTEGER, minimum=1, maximum=8),
                "size": Schema(type=OpenAPIType.STRING, pattern=r"^(auto|[0-9]{2,4}x[0-9]{2,4})$"),
                "response_format": Schema(type=OpenAPIType.STRING, enum=["url", "b64_json"]),
                "output_format": Schema(type=OpenAPIType.STRING, enum=list(typing.get_args(OutputFormat))),
                "quality": Schema(type=OpenAPIType.STRING, enum=list(typing.get_args(Quality))),
                "model": text,
                "user": text,
            },
        )
        self.request_body = RequestBody(
            required=True,
            content={
                RequestEncodingType.MULTI_PART.value: OpenAPIMediaType(
                    schema=schema,
                    encoding={
                        "image": Encoding(content_type=FILE_MEDIA_TYPES),
                        "mask": Encoding(content_type="image/png"),
                    },
                )
            },
        )


@post(
    "/images/edits",
    operation_id="openaiEditImage",
    summary="Edit an image (OpenAI-compatible)",
    tags=["openai"],
    opt={"scope": "generate", "problems": OPENAI_PROBLEMS},
    status_code=200,
    operation_class=_EditOperation,
)
async def edit_image(
    *,
    services: NamedDependency[Services],
    principal: NamedDependency[Principal],
    request: Request[Any, Any, Any],
    idempotency_key: IdempotencyKey = None,
) -> OpenAIImagesResponse:
    """OpenAI's image edit (multipart): an inpaint or image-to-image job, answered when finished."""
    await request.body()  # keep the body readable after the form parser has run
    options, image, mask = await _edit_form(request)
    operation, body = await _edit_request(services, options, image, mask)
    submitted = await generate(
        services=services,
        principal=principal,
        request=request,
        operation=operation,
        body=body,
        idempotency_key=idempotency_key,
        prefer=None,
    )
    return await _answer(services, request, submitted, options, body)


router = Router(
    path="/openai/v1",
    route_handlers=[create_image, edit_image],
    exception_handlers={Exception: openai_exception_handler},
)
routes = [router]
