"""A fake aithriving: multipart image-to-image, one base64 image per request."""

from __future__ import annotations

import base64
import io
import random
from dataclasses import dataclass
from typing import Any, ClassVar

from litestar import Litestar, Request, Response, post
from litestar.datastructures import UploadFile
from PIL import Image, UnidentifiedImageError

from tests.fakes.base import FakeVendor
from tests.fakes.images import png

PATH = "/api/generate/basic/imageToImage"


@dataclass
class FakeAithriving(FakeVendor):
    """The fake; `served` counts image requests since the last reset (for `fewer_outputs`)."""

    vendor: str = "aithriving"
    served: int = 0

    READINGS: ClassVar[tuple[str, ...]] = (
        "authorization_header",  # the example's `Authorization: <token>`, not the table's `Authentication`
        "data_url_image",  # data.image as a data: URL rather than bare base64
        "filename_extension",  # init_image must be uploaded under a file name with an image extension
    )

    def reset_state(self) -> None:
        self.served = 0

    def error_body(self, status: int) -> Any:
        return {"code": -1, "message": f"HTTP {status}"}

    async def _form(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        form = await request.form()
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                named = (value.filename or "").rsplit(".", 1)[-1].lower() in ("png", "jpg", "jpeg", "webp")
                if "filename_extension" in self.readings and not named:
                    self.violation(f"{key}: uploaded as {value.filename!r}, without an image extension")
                try:
                    Image.open(io.BytesIO(data)).verify()
                except (UnidentifiedImageError, OSError):
                    self.violation(f"{key}: the uploaded file is not an image")
                fields[key] = "<file>"
            else:
                fields[key] = value
        return fields

    def app(self) -> Litestar:
        fake = self

        @post(PATH, status_code=200)
        async def image_to_image(request: Request[Any, Any, Any]) -> Response[Any]:
            fields = await fake._form(request)
            fake.record(request, fields)
            header = "authorization" if "authorization_header" in fake.readings else "authentication"
            if request.headers.get(header) != fake.api_key:
                return Response({"code": -1, "message": "invalid api key"}, status_code=401)
            if (fault := await fake.intercept("submit")) is not None:
                return fault
            if fields.get("init_image") != "<file>":
                fake.violation("init_image must be a file part")
            body = fake.spec.coerce_form("post", PATH, fields)
            if problems := fake.check("post", PATH, "multipart/form-data", body):
                return Response({"code": -1, "message": "; ".join(problems)}, status_code=400)
            fake.served += 1
            if fake.faults.fail_job or (fake.faults.outputs is not None and fake.served > fake.faults.outputs):
                return Response({"code": -1, "message": "generation failed, not charged"})
            seed = body.get("seed") or random.randint(1, 4294967295)
            image = base64.b64encode(png(body["width"], body["height"])).decode("ascii")
            if "data_url_image" in fake.readings:
                image = f"data:image/png;base64,{image}"
            return Response({"code": 0, "message": "success", "data": {"image": image, "seed": seed}})

        return Litestar([image_to_image], debug=False)
