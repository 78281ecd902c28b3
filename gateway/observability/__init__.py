"""Observability: request ids, the log context, JSON logs and OpenTelemetry tracing.

- context.py: the request id, tenant, job and engine of the work the current task does.
- middleware.py: the ASGI layer that gives each request its id and server span.
- logs.py: text or JSON log lines carrying those fields, with secrets masked.
- tracing.py: set-up from the OTEL_* variables, spans that cost nothing while tracing is off.
"""
