"""The OpenAPI document: the product's contract, generated from the code.

Litestar builds the skeleton from the route handlers (paths, parameters, success bodies);
`document.finish` then adds what Litestar cannot express (every problem answer with its headers,
security per operation, links, examples, binary and event-stream bodies). The same finished
document is served at /schema/openapi.json and committed as openapi/gateway.json.
"""

from gateway.openapi.config import docs_assets, openapi_config
from gateway.openapi.document import encode_document, openapi_document

__all__ = ["docs_assets", "encode_document", "openapi_config", "openapi_document"]
