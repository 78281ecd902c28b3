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

    def tree(self) -> str:
        """The spans as an indented tree (name, duration), children in start order: for failure messages."""
        spans = sorted(self.all(), key=lambda s: s.start_time or 0)
        ids = {s.context.span_id for s in spans}

        def lines(parent: int | None, depth: int) -> list[str]:
            out = []
            for s in spans:
                up = s.parent.span_id if s.parent is not None and s.parent.span_id in ids else None
                if up == parent:
                    ms = ((s.end_time or 0) - (s.start_time or 0)) / 1e6
                    out.append(f"{'  ' * depth}{s.name}  {ms:.2f} ms")
                    out.extend(lines(s.context.span_id, depth + 1))
            return out

        return "\n".join(lines(None, 0))

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r} in:\n{self.tree()}"
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
