"""OpenTelemetry tracing: set up from the standard `OTEL_*` variables, off unless they ask for it.

Off (the default) no tracer provider is installed and `span()` hands back one shared no-op
context manager: no span object, no context switch, nothing allocated per call. On, spans go
through a batch processor to the exporters `OTEL_TRACES_EXPORTER` names (`otlp`, `console`),
OTLP over HTTP/protobuf by default or gRPC with `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`; the SDK
itself reads the endpoint, headers, sampler (`OTEL_TRACES_SAMPLER`), service name and resource
attributes from the same variables.

Trace context crosses process boundaries only where we choose: the call to our own GPU service
carries W3C `traceparent`; vendors never get it (no HTTP client here is instrumented).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

log = logging.getLogger(__name__)

Attributes = Mapping[str, AttributeValue | None]

_TRACER = trace.get_tracer("gateway")  # a proxy: it follows the provider `setup_tracing` installs
_PROPAGATOR = TraceContextTextMapPropagator()  # W3C traceparent/tracestate only, whatever OTEL_PROPAGATORS says
_OFF: AbstractContextManager[Span] = contextlib.nullcontext(INVALID_SPAN)


class TracingConfigError(Exception):
    """The OTEL_* variables ask for something this installation cannot do; names the variable."""


def tracing_requested(environ: Mapping[str, str]) -> bool:
    """Whether the OTEL_* variables ask for traces: an exporter other than `none`, or an OTLP
    endpoint; never with `OTEL_SDK_DISABLED=true`. (Unlike the SDK's own default, an unconfigured
    process exports nothing: a gateway must not post spans to a collector nobody set up.)"""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return any(name.strip().lower() not in ("", "none") for name in exporters.split(","))
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def enabled() -> bool:
    """Whether a tracer provider is installed (by `setup_tracing`, or a test)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def setup_tracing(environ: Mapping[str, str], *, service_name: str) -> Any | None:
    """Install the SDK's tracer provider when the variables ask for traces; returns it (for
    `shutdown_tracing`), or None when tracing stays off or a provider was already installed.

    `service_name` applies when `OTEL_SERVICE_NAME` (or `service.name` in
    `OTEL_RESOURCE_ATTRIBUTES`) does not set one."""
    if not tracing_requested(environ) or enabled():
        return None
    # Deferred: the SDK and exporters cost import time that a process without tracing never pays.
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (the detector reads them) override our default name.
    resource = Resource.create({"service.name": service_name}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER(_ARG)
    for exporter in _exporters(environ):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing on: exporting spans as %s", environ.get("OTEL_SERVICE_NAME") or service_name)
    return provider


def shutdown_tracing(provider: Any | None) -> None:
    """Flush and stop what `setup_tracing` installed (spans still buffered are exported)."""
    if provider is not None:
        provider.shutdown()


def _exporters(environ: Mapping[str, str]) -> list[Any]:
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    exporters: list[Any] = []
    for name in names:
        if name in ("", "none"):
            continue
        if name == "otlp":
            exporters.append(_otlp_exporter(environ))
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

            exporters.append(ConsoleSpanExporter())
        else:
            raise TracingConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console or none)")
    return exporters


def _otlp_exporter(environ: Mapping[str, str]) -> Any:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip() or "http/protobuf"
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]  # noqa: PLC0415
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError as exc:
            raise TracingConfigError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the package opentelemetry-exporter-otlp-proto-grpc"
            ) from exc
        return GrpcExporter()
    raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (http/protobuf or grpc)")


def span(
    name: str,
    attributes: Attributes | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    links: Sequence[Link] | None = None,
    context: otel_context.Context | None = None,
) -> AbstractContextManager[Span]:
    """A child of the current span for the block (an exception marks it failed), or, with tracing
    off, a shared no-op whose span ignores every call."""
    if not enabled():
        return _OFF
    return _TRACER.start_as_current_span(name, context=context, kind=kind, attributes=_clean(attributes), links=links)


def child_span(name: str, attributes: Attributes | None = None) -> AbstractContextManager[Span]:
    """Like `span`, but only inside a recording span: work done for many requests at once (a batched
    statement run by a task of its own) starts no trace of its own."""
    if not enabled() or not trace.get_current_span().is_recording():
        return _OFF
    return _TRACER.start_as_current_span(name, attributes=_clean(attributes))


def db_attributes(statement: str, batch: int = 1) -> dict[str, AttributeValue]:
    """The attributes of a span around one of our PostgreSQL statements (by its name in gateway/db)."""
    attributes: dict[str, AttributeValue] = {"db.system.name": "postgresql", "db.operation.name": statement}
    if batch > 1:
        attributes["db.operation.batch.size"] = batch
    return attributes


def record_span(
    name: str,
    *,
    parent: otel_context.Context | None,
    start_ns: int,
    end_ns: int,
    attributes: Attributes | None = None,
    failed: str | None = None,
) -> Span:
    """A finished span with given times (work measured elsewhere, e.g. a worker thread); returns it
    so children can be recorded under it with `child_context`."""
    recorded = _TRACER.start_span(name, context=parent, attributes=_clean(attributes), start_time=start_ns)
    if failed is not None:
        recorded.set_status(Status(StatusCode.ERROR, failed))
    recorded.end(end_time=end_ns)
    return recorded


def child_context(parent: Span) -> otel_context.Context:
    """A context whose current span is `parent`, to start children of it outside its block."""
    return trace.set_span_in_context(parent)


def current_context() -> otel_context.Context | None:
    """The current trace context when a recording span is current, else None (nothing to join)."""
    if not trace.get_current_span().is_recording():
        return None
    return otel_context.get_current()


def annotate_span(attributes: Attributes) -> None:
    """Set attributes on the current span (no-op when nothing is recording)."""
    current = trace.get_current_span()
    cleaned = _clean(attributes)
    if cleaned and current.is_recording():
        current.set_attributes(cleaned)


def fail_span(current: Span, description: str) -> None:
    """Mark `current` as failed without an exception (an attempt that returned an error)."""
    current.set_status(Status(StatusCode.ERROR, description))


def inject_traceparent(headers: MutableMapping[str, str]) -> None:
    """Add W3C `traceparent` (and `tracestate`) for the current span to outgoing `headers`."""
    if trace.get_current_span().get_span_context().is_valid:
        _PROPAGATOR.inject(headers)


def extract_context(headers: Mapping[str, str]) -> otel_context.Context | None:
    """The remote parent an incoming `traceparent` names, or None (a new trace starts)."""
    if "traceparent" not in headers:
        return None
    return _PROPAGATOR.extract(headers)


def traceparent() -> str | None:
    """The current span as a `traceparent` value (stored with a job, to link its later run)."""
    carrier: dict[str, str] = {}
    inject_traceparent(carrier)
    return carrier.get("traceparent")


def link_to(parent: str | None) -> list[Link]:
    """A link to the span a stored `traceparent` names (none for a missing or malformed one)."""
    if not parent:
        return []
    remote = trace.get_current_span(_PROPAGATOR.extract({"traceparent": parent})).get_span_context()
    return [Link(remote)] if remote.is_valid else []


def trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current recording span in hex, for log lines and exemplars."""
    current = trace.get_current_span()
    if not current.is_recording():
        return None
    ctx = current.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def _clean(attributes: Attributes | None) -> dict[str, AttributeValue] | None:
    if not attributes:
        return None
    return {k: v for k, v in attributes.items() if v is not None}


@contextlib.contextmanager
def detached() -> Iterator[None]:
    """Run the block outside any trace (background loops must not join whichever request woke them)."""
    token = otel_context.attach(otel_context.Context())
    try:
        yield
    finally:
        otel_context.detach(token)
