"""How obstore's failures read in the gateway's terms, for the Azure messages Azurite may not be here to send.

The texts are obstore 0.12.1's (pinned exactly), as Azurite's answers produced them.
"""

from __future__ import annotations

import pytest

from gateway.storage.cloud import _is_missing_object, _translate

_GET_404 = (
    "Object at location k.png not found: Error performing GET http://127.0.0.1:1/devstoreaccount1/c/k.png in 2ms"
    ' - Server returned non-2xx status code: 404 Not Found: <?xml version="1.0"?>\n<Error>\n'
    "  <Code>{code}</Code>\n  <Message>The specified thing does not exist.</Message>\n</Error>\n\n"
    "Debug source:\nNotFound {{ ... }}"
)
_BATCH_404 = (
    "Object at location k.png not found: Bulk delete request failed for key k.png: {reason} (code: 404)\n\n"
    "Debug source:\nNotFound {{ ... }}"
)


@pytest.mark.parametrize(
    ("text", "code", "missing"),
    [
        (_GET_404.format(code="BlobNotFound"), "BlobNotFound", True),
        (_GET_404.format(code="ContainerNotFound"), "ContainerNotFound", False),
        (_BATCH_404.format(reason="The specified blob does not exist."), "BlobNotFound", True),
        (_BATCH_404.format(reason="The specified container does not exist."), "ContainerNotFound", False),
    ],
    ids=["get-blob", "get-container", "delete-blob", "delete-container"],
)
def test_azure_404s_tell_a_missing_blob_from_a_missing_container(text: str, code: str, missing: bool) -> None:
    exc = FileNotFoundError(text)

    failure = _translate("GET", "k.png", exc)

    assert (failure.status, failure.code) == (404, code)
    assert _is_missing_object(exc, failure) is missing
    assert "Debug source" not in str(failure)
