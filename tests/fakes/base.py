"""What every fake vendor shares: switchable faults, a request log and spec checking."""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from litestar import Litestar, Request, Response

from tests.fakes.server import ServerThread
from tests.fakes.spec import VendorSpec

Stage = Literal["submit", "poll", "download"]


class FaultControl(Protocol):
    """How a contract test breaks a fake engine backend (vendor fake or GPU-service fake)."""

    def reset(self) -> None:
        """Back to answering correctly and at once."""

    def fail_with_status(self, status: int, *, retry_after: str | None = None, on: Stage = "submit") -> None:
        """Answer calls of stage `on` with HTTP `status` (and a Retry-After header when given)."""

    def hang(self, seconds: float, *, on: Stage = "submit") -> None:
        """Sit on calls of stage `on` for `seconds` before answering."""

    def malformed(self, *, on: Stage = "submit") -> None:
        """Answer calls of stage `on` with 200 and a body that is not the documented JSON."""

    def fail_job(self) -> None:
        """Let the job (or every image of it) fail on the vendor's side."""

    def slow_job(self, polls: int) -> None:
        """Let the job finish only at the `polls`-th status poll."""

    def fewer_outputs(self, count: int) -> None:
        """Produce only `count` images, whatever was asked."""


@dataclass
class Faults:
    """The switches a test flips; read by the server thread on each request."""

    status: int | None = None
    retry_after: str | None = None
    hang_s: float = 0.0
    malformed: bool = False
    stage: Stage = "submit"
    fail_job: bool = False
    polls_before_done: int = 1
    outputs: int | None = None
    status_times: int | None = None  # None: the status fault lasts until reset


@dataclass
class Call:
    """One request a fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any = None


@dataclass
class FakeVendor(ABC):
    """Base of the fakes: state shared between the server thread and the test."""

    vendor: str
    api_key: str = "test-key"
    faults: Faults = field(default_factory=Faults)
    calls: list[Call] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    base_url: str = ""
    # Where the vendor's pages can be read two ways, the fake follows the reading the adapter was
    # written from; each name switched on here makes it follow the other one (READINGS lists them).
    readings: set[str] = field(default_factory=set)

    READINGS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.spec = VendorSpec(self.vendor)
        self._lock = threading.Lock()
        self._server: ServerThread | None = None

    # -- FaultControl --------------------------------------------------------------------------

    def reset(self) -> None:
        """Clear faults, the request log, the violations and per-job state."""
        with self._lock:
            self.faults = Faults()
            self.calls.clear()
            self.violations.clear()
            self.readings.clear()
            self.reset_state()

    @abstractmethod
    def reset_state(self) -> None:
        """Forget the vendor's jobs or counters."""

    def fail_with_status(
        self, status: int, *, retry_after: str | None = None, on: Stage = "submit", times: int | None = None
    ) -> None:
        """The FaultControl switch; with `times`, only the next `times` calls fail, then they succeed."""
        self.faults.status, self.faults.retry_after, self.faults.stage = status, retry_after, on
        self.faults.status_times = times

    def hang(self, seconds: float, *, on: Stage = "submit") -> None:
        self.faults.hang_s, self.faults.stage = seconds, on

    def malformed(self, *, on: Stage = "submit") -> None:
        self.faults.malformed, self.faults.stage = True, on

    def fail_job(self) -> None:
        self.faults.fail_job = True

    def read_as(self, *readings: str) -> None:
        """Follow the other reading of each named ambiguity (one of READINGS)."""
        unknown = set(readings) - set(self.READINGS)
        if unknown:
            raise ValueError(f"{self.vendor} has no reading {sorted(unknown)}; known: {self.READINGS}")
        self.readings.update(readings)

    def slow_job(self, polls: int) -> None:
        self.faults.polls_before_done = polls

    def fewer_outputs(self, count: int) -> None:
        self.faults.outputs = count

    # -- helpers for the vendor apps -----------------------------------------------------------

    def record(self, request: Request[Any, Any, Any], body: Any = None) -> None:
        """Log a call (header names lower-cased)."""
        with self._lock:
            self.calls.append(Call(request.method, request.url.path, dict(request.headers.items()), body))

    def check(self, method: str, path: str, content_type: str, body: Any) -> list[str]:
        """Validate a body against the vendor document; violations are kept for the test."""
        problems = self.spec.violations(method, path, content_type, body)
        with self._lock:
            self.violations.extend(f"{method} {path}: {p}" for p in problems)
        return problems

    def violation(self, problem: str) -> None:
        """Keep a protocol violation the schema cannot express (headers, encodings)."""
        with self._lock:
            self.violations.append(problem)

    async def intercept(self, stage: Stage) -> Response[Any] | None:
        """Apply the faults switched on for `stage`; a response replaces the normal answer."""
        faults = self.faults
        if faults.stage != stage:
            return None
        if faults.hang_s:
            await asyncio.sleep(faults.hang_s)  # a vendor slow to answer is the fault asked for
        if faults.status is not None:
            status = faults.status
            if faults.status_times is not None:
                faults.status_times -= 1
                if faults.status_times <= 0:
                    faults.status = faults.status_times = None
            headers = {"Retry-After": faults.retry_after} if faults.retry_after is not None else {}
            return Response(self.error_body(status), status_code=status, headers=headers)
        if faults.malformed:
            return Response(b"<html>502 Bad Gateway</html>", status_code=200, media_type="text/html")
        return None

    def error_body(self, status: int) -> Any:
        """The vendor's documented error body for an HTTP error."""
        return {"message": f"HTTP {status}"}

    # -- lifecycle -----------------------------------------------------------------------------

    @abstractmethod
    def app(self) -> Litestar:
        """The vendor's ASGI app; each fake builds its own."""

    def start(self) -> None:
        """Serve on an ephemeral port of 127.0.0.1."""
        self._server = ServerThread(self.app())
        self.base_url = self._server.start()

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.stop()
