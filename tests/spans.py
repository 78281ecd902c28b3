"""Spans recorded in memory by the SDK, for tests that look at traces.

The OpenTelemetry API takes one tracer provider per process, for good: the first test that asks
installs one whose processor keeps spans only while some test holds `recording_spans()`; for the
rest of the run, other tests' spans are dropped as they end.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class _WhileRecording(SpanProcessor):
    def __init__(self) -> None:
        self.exporter: InMemorySpanExporter | None = None

    def on_end(self, span: ReadableSpan) -> None:
        if self.exporter is not None:
            self.exporter.export((span,))


class Spans:
    """The spans that ended while recording, with lookups by name."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self._exporter = exporter

    def all(self) -> Sequence[ReadableSpan]:
        return self._exporter.get_finished_spans()

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r}: {[s.name for s in self.all()]}"
        return found[0]


def _processor() -> _WhileRecording:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(_WhileRecording())
        trace.set_tracer_provider(provider)
    for processor in provider._active_span_processor._span_processors:
        if isinstance(processor, _WhileRecording):
            return processor
    raise AssertionError("a tracer provider without the test's recorder was installed")


@contextmanager
def recording_spans() -> Iterator[Spans]:
    """Tracing on, 100 % sampled, every span that ends inside the block kept in memory."""
    processor = _processor()
    exporter = InMemorySpanExporter()
    processor.exporter = exporter
    try:
        yield Spans(exporter)
    finally:
        processor.exporter = None
