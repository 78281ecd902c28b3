"""What observability costs a sync request while tracing is off: the CPU of the calls one request
makes (the request-id middleware, the spans that are no-ops, the log-context binds), timed in a loop.

`bench/gateway.py --tracing` measures tracing on against off; this measures off against nothing,
which is too small for the whole-gateway benchmark to see on a shared machine.

    .venv/bin/python bench/tracing_off.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent)]

from gateway.observability import context  # noqa: E402
from gateway.observability.middleware import RequestContext  # noqa: E402
from gateway.observability.tracing import (  # noqa: E402
    child_span,
    current_context,
    enabled,
    link_to,
    span,
    traceparent,
)

SCOPE: dict[str, Any] = {
    "type": "http",
    "method": "POST",
    "path": "/v1/text-to-image",
    "headers": [(b"authorization", b"Bearer x"), (b"content-type", b"application/json")],
}


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def _send(message: Any) -> None:
    return None


def cpu_us(step: Callable[[], None], n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        step()
    return (time.process_time() - start) / n * 1e6


def main() -> int:
    assert not enabled(), "run without OTEL_* variables: this measures tracing off"
    loop = asyncio.new_event_loop()
    bare, wrapped = _app, RequestContext(_app)

    def request(app: Any) -> Callable[[], None]:
        return lambda: loop.run_until_complete(app(dict(SCOPE), None, _send))

    def spans() -> None:  # what one sync request opens: 4 spans, 3 child spans, and the engine bind
        for name in ("billing.admission", "job.run", "engine.attempt", "billing.settlement"):
            with span(name, None):
                pass
        for name in ("db.admit", "blob.put", "db.settle"):
            with child_span(name, None):
                pass
        with context.bind(engine="qolaba"):
            pass

    def job_context() -> None:  # the runner's log context, the admission's origin, the link it reads back
        token = context.start(context.LogFields(request_id="r", tenant_id="t", job_id="j"))
        traceparent()
        context.current_request_id()
        link_to(None) if current_context() is None else None
        context.finish(token)

    n = 20000
    middleware = cpu_us(request(wrapped), n) - cpu_us(request(bare), n)
    rows = [
        ("request-id middleware (over a bare ASGI app)", middleware),
        ("7 spans and 1 bind, tracing off", cpu_us(spans, n)),
        ("job log context, origin, link", cpu_us(job_context, n)),
    ]
    print("| what, per sync request | CPU µs |")
    print("|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")
    print(f"| total | {sum(us for _, us in rows):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
