"""The dashboard's actions (POST): requeue one or all dead letters, cancel a job.

Each action is two POSTs: the first (from the button) shows what will happen and asks; the
second (``confirm=yes``, from that page) does it and redirects (303) to a page that says what
happened. Both carry the CSRF token and pass the Origin check.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .app import Dashboard, message, render
from .pages import is_job_id


class NotAllowed(Exception):
    """The dashboard's key may not do this (a client key asked to requeue or cancel)."""


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    dash: Dashboard = request.app.state.dash
    dash.guard.check(request, fields.get("csrf", ""))
    access = dash.sampler.access
    if not access.may_act:  # said before the question is asked, not after "Yes, do it"
        raise NotAllowed(access.reason)
    return fields


def _ask(request: Request, action: str, question: str, fields: dict[str, str], back: str) -> Response:
    keep = {k: v for k, v in fields.items() if k not in ("csrf", "confirm")}
    return render(request, "confirm.html", action=action, question=question, fields=keep, back=back)


def _done(back: str, text: str) -> Response:
    return RedirectResponse(f"{back}?{urlencode({'done': text})}", 303)


async def requeue(request: Request) -> Response:
    """Requeue one dead job (same id, a fresh retry budget)."""
    fields = await _form(request)
    job_id = fields.get("id", "")
    if not is_job_id(job_id):
        return message(request, 400, "Not a job id", f"{job_id!r} is not a job id.")
    dash: Dashboard = request.app.state.dash
    if fields.get("confirm") != "yes":
        found = await dash.client.get(job_id)
        what = f" ({found.workflow} in group {found.group}, {found.status})" if found else ""
        return _ask(request, "/dead/requeue", f"Requeue job {job_id}{what} with a fresh retry budget?", fields, "/dead")
    if await dash.client.requeue(job_id):
        return _done("/dead", f"requeued job {job_id}")
    current = await dash.client.get(job_id)
    why = "it no longer exists" if current is None else f"it is {current.status}, not dead"
    return _done("/dead", f"job {job_id} was not requeued: {why}")


async def requeue_all(request: Request) -> Response:
    """Requeue every dead job (of one group, if given)."""
    fields = await _form(request)
    group = fields.get("group", "").strip()
    dash: Dashboard = request.app.state.dash
    scope = f" of group {group}" if group else ""
    if fields.get("confirm") != "yes":
        count = len(await dash.client.dead_letters(group or None))
        return _ask(request, "/dead/requeue-all", f"Requeue all {count} dead jobs{scope} with a fresh retry budget?",
                    fields, "/dead")
    count = await dash.client.requeue_all(group or None)
    return _done("/dead", f"requeued {count} dead job{'' if count == 1 else 's'}{scope}")


async def cancel(request: Request) -> Response:
    """Cancel a job: pending or scheduled at once; a running one is told to stop."""
    job_id = request.path_params["job_id"]
    fields: dict[str, Any] = await _form(request)
    if not is_job_id(job_id):
        return message(request, 400, "Not a job id", f"{job_id!r} is not a job id.")
    back = f"/jobs/{job_id}"
    if fields.get("confirm") != "yes":
        return _ask(request, f"{back}/cancel", f"Cancel job {job_id}?", fields, back)
    dash: Dashboard = request.app.state.dash
    outcome = await dash.client.cancel(job_id)
    return _done(back, outcome.message)
