"""Referrals: a filtered list, one referral with every field as printed on the form, the email it
came in, and closing (or reopening) it with a note.

Filters travel in the query string (status, URN, reason, dates): never a child's details.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlmodel import col, select
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route

from cme_mailbot import queries
from cme_mailbot.models import AuditEvent, InboundMessage, Referral, ReferralStatus
from cme_mailbot.schema import FieldSpec, default_schema
from cme_mailbot.web.original import download, read_original
from cme_mailbot.web.page import LONDON, Ctx, day, page
from cme_mailbot.web.pagination import paginate

Errors = list[dict[str, str]]


def _date(ctx: Ctx, name: str, label: str, errors: Errors) -> dt.date | None:
    raw = ctx.query(name)
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        errors.append({"text": f"{label} must be a date like 2026-03-14", "href": f"#{name}"})
        return None


def _start_of(day_: dt.date) -> dt.datetime:
    return dt.datetime.combine(day_, dt.time(), tzinfo=LONDON)


@page("referrals.view")
def referrals_list(ctx: Ctx) -> Response:
    schema = default_schema()
    reasons = schema["reason"].choices if "reason" in schema else ()
    errors: Errors = []
    filters = {k: ctx.query(k) for k in ("status", "urn", "reason", "from", "to")}
    query = select(Referral).order_by(col(Referral.id).desc())
    if filters["status"] in {s.value for s in ReferralStatus}:
        query = query.where(Referral.status == ReferralStatus(filters["status"]))
    elif filters["status"]:
        errors.append({"text": "Choose a status from the list", "href": "#status"})
    if filters["urn"]:
        if filters["urn"].isdigit() and len(filters["urn"]) == 6:
            query = query.where(Referral.school_urn == filters["urn"])
        else:
            errors.append({"text": "A school URN is 6 digits, like 109876", "href": "#urn"})
    if filters["reason"]:
        if filters["reason"] in {c.id for c in reasons}:
            query = query.where(Referral.reason == filters["reason"])
        else:
            errors.append({"text": "Choose a reason from the list", "href": "#reason"})
    start = _date(ctx, "from", "Received from", errors)
    end = _date(ctx, "to", "Received to", errors)
    if start:
        query = query.where(Referral.created_at >= _start_of(start))
    if end:
        query = query.where(Referral.created_at < _start_of(end + dt.timedelta(days=1)))
    if start and end and end < start:
        errors.append({"text": "Received to must be on or after received from", "href": "#to"})
    with ctx.db() as s:
        rows, pager = paginate(s, query, ctx.query("page"), ctx.web.page_size)
    reason_labels = {c.id: c.label for c in reasons}
    return ctx.render(
        "referrals/list.html",
        400 if errors else 200,
        title="Referrals",
        rows=rows,
        reasons=reasons,
        reason_labels=reason_labels,
        filters=filters,
        statuses=[s.value for s in ReferralStatus],
        pager=pager,
        links=pager.links(ctx.url("referrals"), filters),
        errors=errors,
    )


def _shown(spec: FieldSpec, value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, dt.date):
        return day(value)
    if spec.type == "choice":
        return spec.choice_label(str(value))
    return str(value)


def _referral(ctx: Ctx, s: Any) -> Referral:
    referral = queries.find_referral(s, str(ctx.path("reference")))
    if referral is None:
        raise HTTPException(404)
    return referral


@page("referrals.view")
def referrals_show(ctx: Ctx) -> Response:
    return _show(ctx)


def _show(ctx: Ctx, errors: Errors | None = None, status: int = 200) -> Response:
    schema = default_schema()
    with ctx.db() as s:
        referral = _referral(ctx, s)
        sections = [
            {
                "id": section.id,
                "title": section.title,
                "fields": [
                    (spec.id, spec.label, _shown(spec, getattr(referral, spec.id, None)))
                    for spec in schema.in_section(section.id)
                ],
            }
            for section in schema.sections
        ]
        message = s.get(InboundMessage, referral.inbound_id)
        original = read_original(s, referral.inbound_id)
        siblings = list(
            s.exec(
                select(Referral.reference)
                .where(col(Referral.inbound_id) == referral.inbound_id)
                .where(Referral.reference != referral.reference)
                .order_by(col(Referral.id))
            ).all()
        )
        history = list(
            s.exec(
                select(AuditEvent)
                .where(AuditEvent.target == referral.reference)
                .order_by(col(AuditEvent.id).desc())
            ).all()
        )
    return ctx.render(
        "referrals/show.html",
        status,
        title=f"Referral {referral.reference}",
        referral=referral,
        sections=sections,
        message=message,
        original=original,
        attachment_href=lambda i: ctx.url(
            "referrals_attachment", reference=referral.reference, index=i
        ),
        siblings=siblings,
        history=history,
        note=ctx.field("note"),
        errors=errors or [],
    )


@page("referrals.edit")
def referrals_status(ctx: Ctx) -> Response:
    note = ctx.field("note").strip()
    target = ctx.field("status")
    if target not in {s.value for s in ReferralStatus}:
        raise HTTPException(400)
    if not note:
        verb = "closing" if target == ReferralStatus.CLOSED else "reopening"
        return _show(
            ctx, [{"text": f"Enter a note saying why you are {verb} it", "href": "#note"}], 400
        )
    with ctx.db() as s:
        referral = _referral(ctx, s)
        if referral.status.value == target:
            return ctx.redirect("referrals_show", reference=referral.reference)
        referral.status = ReferralStatus(target)
        referral.status_note = note[:2000]
        referral.closed_at = ctx.console.clock() if target == ReferralStatus.CLOSED else None
        s.add(referral)
        action = "referral.close" if target == ReferralStatus.CLOSED else "referral.reopen"
        s.add(
            AuditEvent(
                actor=ctx.actor, action=action, target=referral.reference, detail=note[:2000]
            )
        )
        reference = referral.reference
    return ctx.redirect(
        "referrals_show", flash=f"Referral {reference} is now {target}.", reference=reference
    )


@page("referrals.view")
def referrals_attachment(ctx: Ctx) -> Response:
    with ctx.db() as s:
        referral = _referral(ctx, s)
        return download(s, referral.inbound_id, ctx.path("index"))


ROUTES = [
    Route("/referrals", referrals_list, methods=["GET"], name="referrals"),
    Route("/referrals/{reference}", referrals_show, methods=["GET"], name="referrals_show"),
    Route(
        "/referrals/{reference}/status",
        referrals_status,
        methods=["POST"],
        name="referrals_status",
    ),
    Route(
        "/referrals/{reference}/attachments/{index:int}",
        referrals_attachment,
        methods=["GET"],
        name="referrals_attachment",
    ),
]
