"""Check requests a fake receives against the vendor's OpenAPI document in openapi/vendors/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

VENDORS_DIR = Path(__file__).resolve().parents[2] / "openapi" / "vendors"


class VendorSpec:
    """One vendor's OpenAPI document, able to validate request bodies of its operations."""

    def __init__(self, vendor: str) -> None:
        self.document: dict[str, Any] = yaml.safe_load((VENDORS_DIR / f"{vendor}.yaml").read_text())
        self._components = self.document.get("components", {})

    def request_schema(self, method: str, path: str, content_type: str) -> dict[str, Any]:
        """The body schema of `method path` (a path template as written in the document)."""
        operation = self.document["paths"][path][method.lower()]
        schema: dict[str, Any] = operation["requestBody"]["content"][content_type]["schema"]
        return self.resolve(schema)

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        """`schema` with a local `$ref` followed to what it names."""
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            node: Any = self.document
            for part in ref[2:].split("/"):
                node = node[part]
            return self.resolve(node)
        return schema

    def violations(self, method: str, path: str, content_type: str, body: Any) -> list[str]:
        """Every way `body` breaks the documented schema (empty when it conforms)."""
        schema = dict(self.request_schema(method, path, content_type))
        schema["components"] = self._components  # so "#/components/..." refs resolve
        validator = jsonschema.Draft202012Validator(schema)
        return [
            f"{'/'.join(str(p) for p in error.absolute_path) or '<body>'}: {error.message}"
            for error in validator.iter_errors(body)
        ]

    def coerce_form(self, method: str, path: str, form: dict[str, Any]) -> dict[str, Any]:
        """Multipart fields arrive as text: convert those the schema types as numbers."""
        properties = self.request_schema(method, path, "multipart/form-data").get("properties", {})
        out: dict[str, Any] = {}
        for key, value in form.items():
            declared = self.resolve(properties.get(key, {})).get("type")
            out[key] = _as_number(value, declared) if isinstance(value, str) else value
        return out


def _as_number(value: str, declared: Any) -> Any:
    try:
        if declared == "integer":
            return int(value)
        if declared == "number":
            return float(value)
    except ValueError:
        return value  # left as text, so the schema reports the wrong type
    return value
