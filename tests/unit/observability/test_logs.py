"""Log lines: the JSON shape, the correlation fields, and the masking of secret-shaped text."""

from __future__ import annotations

import io
import json
import logging

import pytest

from gateway.auth import tokens
from gateway.observability import context
from gateway.observability.logs import MAX_MESSAGE_CHARS, configure_logging, log_handler, redact


def emit(handler: logging.Handler, message: str, *args: object, exc: BaseException | None = None) -> str:
    logger = logging.getLogger("gateway.test")
    record = logger.makeRecord(
        "gateway.test", logging.WARNING, __file__, 1, message, args, (type(exc), exc, None) if exc else None
    )
    assert handler.filter(record)
    return handler.format(record)


def test_a_json_line_has_the_fields_of_the_work_it_was_written_for() -> None:
    handler = log_handler("json", io.StringIO())
    token = context.start(context.LogFields(request_id="r-1", tenant_id="t-1"))
    try:
        with context.bind(job_id="j-1", engine="a2c"):
            line = json.loads(emit(handler, "attempt %s failed", 2))
        outside = json.loads(emit(handler, "after"))
    finally:
        context.finish(token)
    assert line["message"] == "attempt 2 failed"
    assert line["level"] == "warning"
    assert line["logger"] == "gateway.test"
    assert line["time"].endswith("+00:00")
    assert (line["request_id"], line["tenant_id"], line["job_id"], line["engine"]) == ("r-1", "t-1", "j-1", "a2c")
    assert "trace_id" not in line, "no trace id while tracing records nothing"
    assert (outside["request_id"], outside.get("job_id")) == ("r-1", None)


def test_a_json_line_carries_the_traceback_as_one_field() -> None:
    handler = log_handler("json", io.StringIO())
    try:
        raise ValueError("boom")
    except ValueError as exc:
        text = emit(handler, "crashed", exc=exc)
    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["exception"]


def test_a_text_line_shows_the_request_id_or_a_dash() -> None:
    handler = log_handler("text", io.StringIO())
    assert "[-] plain" in emit(handler, "plain")
    with context.bind(request_id="r-9"):
        assert "[r-9] inside" in emit(handler, "inside")


@pytest.mark.parametrize(
    "secret",
    [
        tokens.new_key("tenant"),
        tokens.new_key("operator"),
        "whsec_dGhpcyBpcyBhIHNlY3JldCBrZXkgb2YgMzIgYnl0ZXM=",
    ],
)
def test_secret_shaped_text_is_masked(secret: str) -> None:
    assert secret not in redact(f"refused {secret} for tenant")
    assert "[redacted]" in redact(f"refused {secret} for tenant")


def test_a_bearer_credential_is_masked_and_a_long_message_cut() -> None:
    assert "s3cr3t" not in redact('header "Authorization: Bearer s3cr3t" was sent')
    long = "p" * (MAX_MESSAGE_CHARS * 3)
    cut = redact(long)
    assert len(cut) < MAX_MESSAGE_CHARS + 50
    assert cut.endswith("characters cut]")


def test_configure_logging_replaces_the_root_handlers_and_quiets_httpx() -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        configure_logging("info", "json", stream)
        logging.getLogger("gateway.x").info("hello")
        logging.getLogger("httpx").info("HTTP Request: GET https://bucket/key?X-Amz-Signature=abc")
        assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["hello"]
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in before:
            root.addHandler(handler)
        root.setLevel(level)
        logging.getLogger("httpx").setLevel(logging.NOTSET)
