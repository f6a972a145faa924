"""The dashboard's pages (GET): overview, workers, jobs, one job, dead letters, cron."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from shoal.client import Result
from shoal.errors import UnknownJob

from .app import Dashboard, message, render
from .chart import chart

PAGE_SIZE = 50
JOB_STATES = ("pending", "scheduled", "running", "dead")
MAX_FETCH = 10_000  # the broker's own cap on one listing


def _dash(request: Request) -> Dashboard:
    dash: Dashboard = request.app.state.dash
    return dash


async def overview(request: Request) -> Response:
    """``/``: one card per group with its state, queue depths and the live rate chart."""
    dash = _dash(request)
    if not await dash.sampler.poll(max_age_s=0.5):
        return render(request, "overview.html", 503, groups=[], unrouted={})
    now_ms = int(time.time() * 1000)
    groups = [{"name": name, **row, "chart": chart(dash.sampler.rates(name), now_ms)}
              for name, row in sorted(dash.sampler.stats.items())]
    return render(request, "overview.html", groups=groups, unrouted=dash.sampler.unrouted)


async def workers(request: Request) -> Response:
    """``/workers``: every connected worker, what it holds, and when it was last heard."""
    group = request.query_params.get("group") or None
    found = await _dash(request).client.workers(group)
    return render(request, "workers.html", workers=found, group=group or "")


@dataclass(frozen=True)
class JobFilter:
    """The jobs page's query: state, group, workflow and page number, checked."""

    state: str
    group: str
    workflow: str
    page: int

    @classmethod
    def parse(cls, query: Any) -> "JobFilter":
        """Read the query string; raise ``ValueError`` with a sentence for a bad value."""
        state = query.get("state", "")
        if state and state not in JOB_STATES:
            raise ValueError(f"unknown state {state!r}: choose one of {', '.join(JOB_STATES)} (or none for all active)")
        raw_page = query.get("page", "1") or "1"
        if not raw_page.isdigit() or int(raw_page) < 1:
            raise ValueError(f"page must be a whole number from 1, not {raw_page!r}")
        return cls(state, query.get("group", "").strip(), query.get("workflow", "").strip(), int(raw_page))

    def link(self, **change: Any) -> str:
        """This query with some fields changed, as a URL."""
        fields = {"state": self.state, "group": self.group, "workflow": self.workflow, "page": self.page, **change}
        return "/jobs?" + urlencode({k: v for k, v in fields.items() if v and not (k == "page" and v == 1)})


async def jobs(request: Request) -> Response:
    """``/jobs``: active or dead jobs, filtered and paged; ``?q=ID`` jumps to one job."""
    wanted = request.query_params.get("q", "").strip()
    if wanted:
        if not is_job_id(wanted):
            return message(request, 400, "Not a job id", f"{wanted!r} is not a job id (they look like "
                           "0190c3d2-7a1b-7c3e-9a4f-2b6d8e1f0a3c).")
        return RedirectResponse(f"/jobs/{uuid.UUID(wanted)}", 303)
    try:
        query = JobFilter.parse(request.query_params)
    except ValueError as exc:
        return message(request, 400, "Bad filter", str(exc))
    found = await _listing(_dash(request), query)
    start = (query.page - 1) * PAGE_SIZE
    shown = found[start:start + PAGE_SIZE]
    return render(request, "jobs.html", jobs=shown, query=query, states=JOB_STATES,
                  more=len(found) > start + PAGE_SIZE, first=start + 1, capped=len(found) >= MAX_FETCH)


async def _listing(dash: Dashboard, query: JobFilter) -> list[Result]:
    """Enough jobs for the asked page (all, up to the cap, when a workflow filter thins them)."""
    limit = MAX_FETCH if query.workflow else min(MAX_FETCH, query.page * PAGE_SIZE + 1)
    if query.state == "dead":
        found = await dash.client.dead_letters(query.group or None, limit=limit)
    else:
        found = await dash.client.jobs(query.state or None, query.group or None, limit=limit)
    return [r for r in found if not query.workflow or r.workflow == query.workflow]


def is_job_id(text: str) -> bool:
    """Whether ``text`` reads as a job id (a UUID)."""
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


async def job(request: Request) -> Response:
    """``/jobs/ID``: the job's record, payload, steps, children and its history from the log."""
    job_id = request.path_params["job_id"]
    if not is_job_id(job_id):
        return message(request, 400, "Not a job id", f"{job_id!r} is not a job id.")
    job_id = str(uuid.UUID(job_id))
    dash = _dash(request)
    result = await dash.client.get(job_id)
    steps = await dash.client.steps(job_id) if result is not None else []
    # the history is a scan of the broker's whole log: read it again only when the job changed
    seen = None if result is None else (result.status, result.attempts, result.started_ms, result.finished_ms,
                                        len(steps))
    history = dash.histories.get(job_id, seen)
    if history is None:
        try:
            history = await dash.client.history(job_id)
        except UnknownJob:
            history = []
        dash.histories.put(job_id, seen, history)
    if result is None and not history:
        return message(request, 404, "No such job", f"The broker has no job {job_id} (never enqueued, or expired "
                       "and compacted out of the log).")
    return render(request, "job.html", job=result, job_id=job_id, steps=steps, history=history,
                  children=_children([s.value for s in steps]), done=request.query_params.get("done", ""))


def _children(values: list[Any]) -> list[str]:
    """Job ids found in step results: what ``step.enqueue``/``enqueue_many`` made (and fan-in pairs)."""
    out: list[str] = []
    for value in values:
        items = value if isinstance(value, list) else [value]
        for item in items:
            first = item[0] if isinstance(item, list) and item else item
            if isinstance(first, str) and len(first) == 36 and is_job_id(first) and first not in out:
                out.append(first)
    return out


async def dead(request: Request) -> Response:
    """``/dead``: dead letters, with Requeue (one or all), each behind a confirmation."""
    group = request.query_params.get("group", "").strip()
    found = await _dash(request).client.dead_letters(group or None, limit=1000)
    return render(request, "dead.html", jobs=found, group=group, done=request.query_params.get("done", ""))


async def cron(request: Request) -> Response:
    """``/cron``: each entry with its schedule and last and next fire."""
    return render(request, "cron.html", entries=await _dash(request).client.cron())
