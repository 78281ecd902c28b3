"""A job's `error` member: the problem the runner and the cancel endpoint store, as the API shows it."""

from __future__ import annotations

import msgspec
import pytest

from gateway.routing.errors import AllEnginesFailed, NoEngineCanServe, RequestRejected
from gateway.worker import job_errors
from gateway.worker.job_errors import stored


def test_a_stored_job_error_holds_exactly_the_members_the_api_has_always_shown() -> None:
    error = stored(job_errors.canceled())
    assert error == {
        "type": "https://gateway.invalid/problems/canceled",
        "title": "Canceled",
        "status": 409,
        "detail": "The job was canceled.",
    }
    assert msgspec.json.encode(error) == (
        b'{"type":"https://gateway.invalid/problems/canceled","title":"Canceled","status":409,'
        b'"detail":"The job was canceled."}'
    )


@pytest.mark.parametrize(
    ("failure", "slug", "status"),
    [
        (RequestRejected([], "prompt refused"), "engine-rejected-request", 422),
        (NoEngineCanServe({"a2c": "width above 2048"}), "no-engine-can-serve", 422),
        (AllEnginesFailed([]), "engines-unavailable", 503),
    ],
)
def test_routing_failures_become_the_job_error_of_their_kind(
    failure: RequestRejected | NoEngineCanServe | AllEnginesFailed, slug: str, status: int
) -> None:
    error = stored(job_errors.routing_failed(failure))
    assert error["type"] == f"https://gateway.invalid/problems/{slug}"
    assert error["status"] == status
    assert error["detail"] == str(failure)


def test_each_kind_of_job_error_has_its_own_type_and_status() -> None:
    errors = [
        job_errors.abandoned(3),
        job_errors.deadline_exceeded(),
        job_errors.crashed(RuntimeError("boom")),
        job_errors.database_lost(),
    ]
    assert [(e.type.rsplit("/", 1)[1], e.status) for e in errors] == [
        ("job-abandoned", 500),
        ("deadline-exceeded", 504),
        ("internal-error", 500),
        ("database-unavailable", 503),
    ]
    assert errors[0].detail == "The job was started 3 times without finishing."
    assert errors[2].detail == "boom"
