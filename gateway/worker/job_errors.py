"""Why a job failed or was canceled: its `error` member, a `Problem` (gateway/errors.py) whose
`type` is under the same PROBLEM_BASE as every problem the gateway answers. A failed sync request
answers its job's error as its own problem+json (gateway/api/images.py), so the two must agree.

The job row keeps the error as jsonb and `Outcome.error` carries it there as a mapping: `stored`
makes that mapping, the problem's members that are set (type, title, status, detail), no more.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.errors import PROBLEM_BASE, Problem
from gateway.routing.errors import AllEnginesFailed, NoEngineCanServe, RequestRejected

# How routing can end without images (gateway/routing/errors.py).
ROUTING_FAILURES = (RequestRejected, NoEngineCanServe, AllEnginesFailed)


def job_problem(slug: str, title: str, status: int, detail: str) -> Problem:
    return Problem(type=PROBLEM_BASE + slug, title=title, status=status, detail=detail)


def stored(problem: Problem) -> dict[str, Any]:
    """`problem` as a job's `error` column holds it."""
    member: dict[str, Any] = msgspec.to_builtins(problem)
    return member


def canceled() -> Problem:
    return job_problem("canceled", "Canceled", 409, "The job was canceled.")


def abandoned(max_runs: int) -> Problem:
    """The job was claimed `max_runs` times and never finished: it keeps killing its runners."""
    detail = f"The job was started {max_runs} times without finishing."
    return job_problem("job-abandoned", "Job abandoned", 500, detail)


def deadline_exceeded() -> Problem:
    return job_problem("deadline-exceeded", "Deadline exceeded", 504, "The job did not finish before its deadline.")


def crashed(exc: Exception) -> Problem:
    """A bug in the gateway ended the run."""
    return job_problem("internal-error", "Internal error", 500, str(exc))


def database_lost() -> Problem:
    """The request that created the job was answered with an error when the database went away."""
    detail = "The database became unreachable while the request was answered; the job was stopped and costs nothing."
    return job_problem("database-unavailable", "Database unavailable", 503, detail)


def routing_failed(exc: RequestRejected | NoEngineCanServe | AllEnginesFailed) -> Problem:
    """What the router's failure means to the tenant: 422 for the request's own fault, 503 otherwise."""
    if isinstance(exc, RequestRejected):
        return job_problem("engine-rejected-request", "The request was rejected", 422, str(exc))
    if isinstance(exc, NoEngineCanServe):
        return job_problem("no-engine-can-serve", "No engine can serve this request", 422, str(exc))
    return job_problem("engines-unavailable", "No engine could produce the images", 503, str(exc))
