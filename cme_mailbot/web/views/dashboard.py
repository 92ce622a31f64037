"""The dashboard: today's and this week's mail by outcome, open work, and the poller's health."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from sqlmodel import Session, col, func, select
from starlette.responses import Response
from starlette.routing import Route

from cme_mailbot import quarantine
from cme_mailbot.models import (
    InboundMessage,
    OutboundEmail,
    OutboundState,
    Outcome,
    PollerStatus,
    Referral,
    ReferralStatus,
)
from cme_mailbot.web.page import LONDON, Ctx, page


def _outcomes_since(s: Session, since: dt.datetime) -> Counter[str]:
    rows = s.exec(
        select(InboundMessage.outcome, func.count())
        .where(InboundMessage.received_at >= since)
        .group_by(col(InboundMessage.outcome))
    ).all()
    return Counter({(str(o) if o else "in progress"): int(n) for o, n in rows})


def _count(s: Session, *where: object) -> int:
    query = select(func.count()).select_from(Referral)
    for clause in where:
        query = query.where(clause)  # type: ignore[arg-type]
    return int(s.exec(query).one())


@page("dashboard")
def dashboard(ctx: Ctx) -> Response:
    now = ctx.console.clock().astimezone(LONDON)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    week = today - dt.timedelta(days=today.weekday())
    with ctx.db() as s:
        by_day, by_week = _outcomes_since(s, today), _outcomes_since(s, week)
        open_referrals = _count(s, Referral.status == ReferralStatus.OPEN)
        open_alerts = _count(
            s, Referral.status == ReferralStatus.OPEN, col(Referral.safeguarding_alert).is_(True)
        )
        week_alerts = _count(
            s, Referral.created_at >= week, col(Referral.safeguarding_alert).is_(True)
        )
        pending = len(quarantine.pending(s))
        failed_replies = int(
            s.exec(
                select(func.count())
                .select_from(OutboundEmail)
                .where(OutboundEmail.state == OutboundState.FAILED)
            ).one()
        )
        pollers = list(s.exec(select(PollerStatus).order_by(col(PollerStatus.account))).all())
    outcomes = [o.value for o in Outcome]
    extra = sorted(set(by_week) - set(outcomes))
    return ctx.render(
        "dashboard.html",
        title="Dashboard",
        rows=[(o, by_day.get(o, 0), by_week.get(o, 0)) for o in [*outcomes, *extra]],
        total=(sum(by_day.values()), sum(by_week.values())),
        open_referrals=open_referrals,
        open_alerts=open_alerts,
        week_alerts=week_alerts,
        pending=pending,
        failed_replies=failed_replies,
        pollers=pollers,
    )


ROUTES = [Route("/", dashboard, methods=["GET"], name="dashboard")]
