"""The quarantine: messages that could not be handled safely, for a person to release (process
again, optionally vouching for the sender) or reject, each with a reason that is audited."""

from __future__ import annotations

from sqlmodel import col, select
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route

from cme_mailbot import quarantine as q
from cme_mailbot.config import ConfigError
from cme_mailbot.models import InboundMessage, MessageState
from cme_mailbot.pipeline import QUARANTINE_OUTCOMES
from cme_mailbot.web.original import download, read_original
from cme_mailbot.web.page import Ctx, page
from cme_mailbot.web.pagination import paginate

Errors = list[dict[str, str]]


@page("quarantine.view")
def quarantine_list(ctx: Ctx) -> Response:
    reviewed = ctx.query("show") == "reviewed"
    query = (
        select(InboundMessage)
        .where(col(InboundMessage.outcome).in_(QUARANTINE_OUTCOMES))
        .where(InboundMessage.state == MessageState.FILED)
    )
    if reviewed:
        query = query.where(col(InboundMessage.review).is_not(None)).order_by(
            col(InboundMessage.reviewed_at).desc()
        )
    else:
        query = query.where(col(InboundMessage.review).is_(None)).order_by(col(InboundMessage.id))
    with ctx.db() as s:
        rows, pager = paginate(s, query, ctx.query("page"), ctx.web.page_size)
    show = "reviewed" if reviewed else ""
    return ctx.render(
        "quarantine/list.html",
        title="Quarantine: reviewed" if reviewed else "Quarantine",
        rows=rows,
        reviewed=reviewed,
        pager=pager,
        links=pager.links(ctx.url("quarantine"), {"show": show}),
    )


def _show(ctx: Ctx, errors: Errors | None = None, status: int = 200) -> Response:
    with ctx.db() as s:
        try:
            message = q.get(s, ctx.path("message_id"))
        except q.QuarantineError:
            raise HTTPException(404) from None
        original = read_original(s, ctx.path("message_id"))
    return ctx.render(
        "quarantine/show.html",
        status,
        title=f"Quarantined message {message.id}",
        message=message,
        original=original,
        attachment_href=lambda i: ctx.url("quarantine_attachment", message_id=message.id, index=i),
        form=ctx.field("action"),
        reason=ctx.field("reason"),
        vouched=ctx.field("trust_sender") == "yes",
        errors=errors or [],
    )


@page("quarantine.view")
def quarantine_show(ctx: Ctx) -> Response:
    return _show(ctx)


def _reason(ctx: Ctx) -> str | None:
    reason = ctx.field("reason").strip()
    return reason[:2000] if reason else None


@page("quarantine.act")
def quarantine_release(ctx: Ctx) -> Response:
    message_id: int = ctx.path("message_id")
    reason = _reason(ctx)
    if reason is None:
        return _show(
            ctx, [{"text": "Enter a reason for releasing it", "href": "#release-reason"}], 400
        )
    try:
        pipeline = ctx.console.pipeline_factory()
    except ConfigError as exc:
        return _show(ctx, [{"text": f"Cannot release now: {exc}", "href": "#release-reason"}], 500)
    try:
        outcome = q.release(
            pipeline,
            message_id,
            ctx.actor,
            reason,
            trust_sender=ctx.field("trust_sender") == "yes",
        )
    except q.QuarantineError as exc:
        return _show(ctx, [{"text": str(exc), "href": "#release-reason"}], 409)
    finally:
        pipeline.mailbox.close()
        pipeline.transport.close()
    return ctx.redirect(
        "quarantine", flash=f"Message {message_id} released. New outcome: {outcome}."
    )


@page("quarantine.act")
def quarantine_reject(ctx: Ctx) -> Response:
    message_id: int = ctx.path("message_id")
    reason = _reason(ctx)
    if reason is None:
        return _show(
            ctx, [{"text": "Enter a reason for rejecting it", "href": "#reject-reason"}], 400
        )
    try:
        with ctx.db() as s:
            q.reject(s, message_id, ctx.actor, reason)
    except q.QuarantineError as exc:
        return _show(ctx, [{"text": str(exc), "href": "#reject-reason"}], 409)
    return ctx.redirect("quarantine", flash=f"Message {message_id} rejected.")


@page("quarantine.view")
def quarantine_attachment(ctx: Ctx) -> Response:
    with ctx.db() as s:
        try:
            q.get(s, ctx.path("message_id"))
        except q.QuarantineError:
            raise HTTPException(404) from None
        return download(s, ctx.path("message_id"), ctx.path("index"))


ROUTES = [
    Route("/quarantine", quarantine_list, methods=["GET"], name="quarantine"),
    Route("/quarantine/{message_id:int}", quarantine_show, methods=["GET"], name="quarantine_show"),
    Route(
        "/quarantine/{message_id:int}/release",
        quarantine_release,
        methods=["POST"],
        name="quarantine_release",
    ),
    Route(
        "/quarantine/{message_id:int}/reject",
        quarantine_reject,
        methods=["POST"],
        name="quarantine_reject",
    ),
    Route(
        "/quarantine/{message_id:int}/attachments/{index:int}",
        quarantine_attachment,
        methods=["GET"],
        name="quarantine_attachment",
    ),
]
