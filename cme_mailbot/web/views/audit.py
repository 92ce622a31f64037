"""The audit log: every operator action, newest first, filterable by who and what."""

from __future__ import annotations

from sqlmodel import col, select
from starlette.responses import Response
from starlette.routing import Route

from cme_mailbot.models import AuditEvent
from cme_mailbot.web.page import Ctx, allowed, page
from cme_mailbot.web.pagination import paginate

# Notes on casework may name a child: their detail shows only to those who work the cases.
DETAIL_NEEDS = {"referral.": "referrals.view", "quarantine.": "quarantine.view"}


@page("audit.view")
def audit_list(ctx: Ctx) -> Response:
    actor, action = ctx.query("actor").lower(), ctx.query("action")
    query = select(AuditEvent).order_by(col(AuditEvent.id).desc())
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if action:
        query = query.where(col(AuditEvent.action).startswith(action))
    with ctx.db() as s:
        rows, pager = paginate(s, query, ctx.query("page"), ctx.web.page_size)
        actions = sorted(set(s.exec(select(AuditEvent.action).distinct()).all()))
    filters = {"actor": actor, "action": action}
    return ctx.render(
        "audit.html",
        title="Audit log",
        rows=rows,
        actions=actions,
        filters=filters,
        pager=pager,
        links=pager.links(ctx.url("audit"), filters),
        detail_visible=lambda row: all(
            allowed(ctx.user, perm)
            for prefix, perm in DETAIL_NEEDS.items()
            if row.action.startswith(prefix)
        ),
    )


ROUTES = [Route("/audit", audit_list, methods=["GET"], name="audit")]
