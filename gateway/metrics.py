"""Prometheus metrics, one registry per app (no module-level global registry)."""

from __future__ import annotations

import gc

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

OPENMETRICS = "application/openmetrics-text"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The gateway's metrics. Build one per app and pass it to what records into it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # The process's own figures (CPU seconds, memory, open fds, Python GC runs and pauses), as the
        # default registry would export them: stateless collectors, safe to share between registries.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        Gauge(
            "python_gc_frozen_objects",
            "Objects gc.freeze() took out of the collector's passes (gateway serve freezes its startup heap)",
            registry=self.registry,
        ).set_function(gc.get_freeze_count)
        self.http_requests = Counter(
            "gateway_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.http_latency = Histogram(
            "gateway_http_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.engine_latency = Histogram(
            "gateway_engine_attempt_seconds",
            "Latency of one engine attempt",
            ["engine", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.engine_attempts = Counter(
            "gateway_engine_attempts", "Engine attempts by outcome", ["engine", "outcome"], registry=self.registry
        )
        self.engine_breaker_open = Gauge(
            "gateway_engine_breaker_open",
            "1 while the engine's circuit breaker is open",
            ["engine"],
            registry=self.registry,
        )
        self.engine_in_flight = Gauge(
            "gateway_engine_in_flight", "Attempts in flight per engine", ["engine"], registry=self.registry
        )
        self.jobs_finished = Counter(
            "gateway_jobs_finished", "Jobs reaching a terminal state", ["operation", "state"], registry=self.registry
        )
        self.images_produced = Counter(
            "gateway_images_produced", "Images produced and charged", ["operation", "engine"], registry=self.registry
        )
        # The retention sweeper (gateway/worker/retention.py). kind: output_blobs, input_blobs, jobs,
        # job_blobs, idempotency_keys, dashboard_sessions, webhook_messages.
        self.retention_swept = Counter(
            "gateway_retention_swept", "Things the retention sweeper deleted", ["kind"], registry=self.registry
        )
        self.retention_blob_errors = Counter(
            "gateway_retention_blob_errors",
            "Blob deletes that failed (their rows stay for the next sweep)",
            registry=self.registry,
        )
        self.retention_sweep_seconds = Histogram(
            "gateway_retention_sweep_seconds",
            "Duration of one completed retention sweep",
            buckets=(0.01, 0.1, 1, 10, 60, 300, 1800, 3600),
            registry=self.registry,
        )
        self.retention_last_sweep = Gauge(
            "gateway_retention_last_sweep_timestamp_seconds",
            "Unix time the last retention sweep of this process completed (alert when it lags)",
            registry=self.registry,
        )

    def render(self, *, openmetrics: bool = False) -> bytes:
        """The Prometheus text exposition of every metric, or OpenMetrics (which carries exemplars)."""
        if openmetrics:
            body: bytes = openmetrics_latest(self.registry)  # type: ignore[no-untyped-call]
            return body
        return generate_latest(self.registry)
