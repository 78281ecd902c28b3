"""Request ids and the switches of tracing and log format."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_settings, otel_environment
from gateway.observability.context import accept_request_id, new_request_id
from gateway.observability.tracing import TracingConfigError, _exporters, tracing_requested


def test_a_well_formed_request_id_is_kept_and_anything_else_replaced() -> None:
    for kept in ("abc", "0af7651916cd43dd8448eb211c80319c", "svc-a:req/42@edge", "A" * 128):
        assert accept_request_id(kept) == kept
    for refused in (None, "", " lead", "a b", "x" * 129, "tab\there", "-dash", "\u00e9t\u00e9"):
        made = accept_request_id(refused)
        assert made != refused
        assert len(made) == 32
    assert new_request_id() != new_request_id()


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console,none"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_off_unless_the_otel_variables_ask_for_it(environ: dict[str, str], wanted: bool) -> None:
    assert tracing_requested(environ) is wanted


def test_an_unknown_exporter_or_protocol_is_named_in_the_error() -> None:
    with pytest.raises(TracingConfigError, match="OTEL_TRACES_EXPORTER"):
        _exporters({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(TracingConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        _exporters({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_otel_environment_is_the_otel_variables_only() -> None:
    assert otel_environment({"OTEL_SERVICE_NAME": "gw", "GATEWAY_PORT": "1", "PATH": "/bin"}) == {
        "OTEL_SERVICE_NAME": "gw"
    }


def test_the_log_format_comes_from_the_file_or_the_environment() -> None:
    assert load_settings({}).logging.format == "text"
    assert load_settings({"GATEWAY_LOG_FORMAT": "json"}).logging.format == "json"
    assert load_settings({}, overrides={"logging": {"format": "json"}}).logging.format == "json"
    with pytest.raises(ConfigError, match="format"):
        load_settings({"GATEWAY_LOG_FORMAT": "xml"})
