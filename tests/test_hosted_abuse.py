"""hosted-ft against a provider that misbehaves: a cursor that never moves, a state fewtune does not know, a
job that never ends, answers that are not the API's, and event text carrying terminal escape sequences. A
stand-in provider on loopback answers each way; every case ends in bounded time, in one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from servers import serving

from fewtune.backends.endpoint import ServerFailed, endpoint_spec
from fewtune.hosted.api import MAX_PAGES, HostedAPI, JobFailed, JobTimedOut, clean_text
from fewtune.run.events import QuietEvents
from fewtune.run.hosted_rows import follow

JOB = "ftjob-1"


@dataclass
class Provider:
    """How the stand-in answers: the job's states in turn (the last repeats), its events, and raw bodies
    that replace the job's answer."""

    states: list[str] = field(default_factory=lambda: ["running", "succeeded"])
    events: list[dict[str, Any]] = field(default_factory=list)
    ignore_cursor: bool = False
    job_body: tuple[str, str] | None = None
    """(content type, body) sent for the job instead of its JSON."""
    requests: list[str] = field(default_factory=list)


def job_json(status: str) -> dict[str, Any]:
    return {"id": JOB, "object": "fine_tuning.job", "status": status, "created_at": 1, "model": "m",
            "fine_tuned_model": "ft:m:1" if status == "succeeded" else None, "result_files": []}  # fmt: skip


@contextmanager
def provider(setup: Provider) -> Iterator[HostedAPI]:
    app = FastAPI()

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def job(job_id: str) -> Any:
        setup.requests.append("job")
        if setup.job_body:
            return Response(setup.job_body[1], media_type=setup.job_body[0])
        return job_json(setup.states.pop(0) if len(setup.states) > 1 else setup.states[0])

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def events(job_id: str, request: Request) -> Any:
        setup.requests.append("events")
        after = request.query_params.get("after")
        ids = [e.get("id") for e in setup.events]
        start = 0 if setup.ignore_cursor or after is None or after not in ids else ids.index(after) + 1
        page = setup.events[start : start + 2]
        return {"object": "list", "data": page, "has_more": setup.ignore_cursor or start + 2 < len(ids)}

    @app.get("/v1/fine_tuning/jobs")
    def jobs() -> Any:
        setup.requests.append("jobs")
        return {"object": "list", "data": [job_json("running")], "has_more": True}  # always "more"

    with serving(app) as url:
        api = HostedAPI(endpoint_spec(f"{url}/v1#m", "none"))
        try:
            yield api
        finally:
            api.close()


def event(i: int, message: str = "step", **extra: Any) -> dict[str, Any]:
    return {"id": f"ev-{i}", "object": "fine_tuning.job.event", "created_at": i, "level": "info",
            "message": message, "type": "message", **extra}  # fmt: skip


class Told(QuietEvents):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)


def test_a_provider_that_ignores_the_cursor_is_read_in_bounded_requests() -> None:
    setup = Provider(events=[event(i) for i in range(4)], ignore_cursor=True)
    with provider(setup) as api:
        fresh = api.new_events(JOB, set())
        listed = api.jobs()
    assert [e.id for e in fresh] == ["ev-1", "ev-0"]  # the first page, then the same page: stop
    assert setup.requests.count("events") == 2 and setup.requests.count("jobs") == 2 and len(listed) == 1


def test_paging_stops_after_the_page_cap() -> None:
    setup = Provider(events=[event(i) for i in range(2 * MAX_PAGES + 10)])
    with provider(setup) as api:
        fresh = api.new_events(JOB, set())
    assert len(fresh) == 2 * MAX_PAGES and setup.requests.count("events") == MAX_PAGES


def test_an_unknown_state_is_reported_not_followed() -> None:
    setup = Provider(states=["running", "paused"])
    with provider(setup) as api, pytest.raises(JobFailed) as caught:
        follow(api, JOB, QuietEvents(), "hosted-ft n=12", poll_seconds=0.01, max_wait_hours=1)
    message = str(caught.value)
    assert "is 'paused', a state fewtune does not follow" in message and "\n" not in message
    assert setup.requests.count("job") == 2


def test_a_job_that_never_ends_stops_at_the_wait_limit() -> None:
    setup = Provider(states=["running"])
    with provider(setup) as api, pytest.raises(JobTimedOut, match=r"still running after 0.0005 h"):
        follow(api, JOB, QuietEvents(), "hosted-ft n=12", poll_seconds=0.05, max_wait_hours=0.0005)
    assert setup.requests.count("job") < 100


@pytest.mark.parametrize(
    "body",
    [
        ("text/html", "<html><body>Service maintenance</body></html>"),
        ("application/json", '{"id": "ftjob-1", "status": "runn'),
        ("application/json", json.dumps({"id": "ftjob-1", "status": ["running"], "created_at": 1})),
        ("application/json", json.dumps({"status": "running"})),
        ("application/json", "[1, 2, 3]"),
    ],
)
def test_a_malformed_job_answer_is_one_line(body: tuple[str, str]) -> None:
    with provider(Provider(job_body=body)) as api, pytest.raises(ServerFailed) as caught:
        api.job(JOB)
    message = str(caught.value)
    assert message.startswith("http://127.0.0.1:") and "/fine_tuning/jobs/ftjob-1: " in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "odd",
    [
        {"id": "ev-9", "message": 12345, "type": "message"},
        {"message": "no id", "type": "message"},
        {"id": ["ev-9"], "message": "a list for an id", "type": "message"},
    ],
)
def test_odd_event_fields_are_one_line(odd: dict[str, Any]) -> None:
    with provider(Provider(events=[odd])) as api, pytest.raises(ServerFailed) as caught:
        api.new_events(JOB, set())
    assert "/events: not a fine-tuning API's answer" in str(caught.value) and "\n" not in str(caught.value)


def test_odd_metrics_are_shown_as_a_message_and_escape_sequences_never_reach_the_terminal() -> None:
    hostile = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\x1b[0m \x9b31m and\u202e txet\r\nnext"
    events = [event(1, hostile), event(0, "metrics", type="metrics", data={"step": "abc", "total_steps": 2})]
    told = Told()
    with provider(Provider(events=events)) as api:
        follow(api, JOB, told, "hosted-ft n=12", poll_seconds=0.01, max_wait_hours=1)
    shown = "\n".join(told.lines)
    assert "red" in shown and "txet" in shown and "next" in shown and "metrics" in shown
    assert not any(ch in shown for ch in "\x1b\x07\x9b\u202e\r")


def test_clean_text_keeps_ordinary_text() -> None:
    assert (
        clean_text("Step 3/10: training loss=0.52 — ünïcode ✓") == "Step 3/10: training loss=0.52 — ünïcode ✓"
    )
