"""Prometheus metrics, read from the database at scrape time (counts only: no child data)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cme_mailbot.models import (
    InboundMessage,
    MessageState,
    OutboundEmail,
    OutboundState,
    PollerStatus,
    Referral,
    ReferralStatus,
)
from cme_mailbot.pipeline import QUARANTINE_OUTCOMES


class CmeCollector(Collector):
    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        with Session(self.engine) as s:
            messages = CounterMetricFamily(
                "cme_messages", "Inbound messages by recorded outcome", labels=["outcome"]
            )
            for outcome, n in s.exec(
                select(InboundMessage.outcome, func.count())
                .where(col(InboundMessage.outcome).is_not(None))
                .group_by(col(InboundMessage.outcome))
            ).all():
                messages.add_metric([str(outcome)], float(n))
            yield messages

            in_hand = s.exec(
                select(func.count())
                .select_from(InboundMessage)
                .where(InboundMessage.state != MessageState.FILED)
            ).one()
            yield GaugeMetricFamily(
                "cme_messages_in_hand", "Messages claimed or decided but not yet filed",
                value=float(in_hand),
            )  # fmt: skip

            open_refs = s.exec(
                select(func.count())
                .select_from(Referral)
                .where(Referral.status == ReferralStatus.OPEN)
            ).one()
            yield GaugeMetricFamily("cme_referrals_open", "Open referrals", value=float(open_refs))

            held = s.exec(
                select(func.count())
                .select_from(InboundMessage)
                .where(col(InboundMessage.outcome).in_(QUARANTINE_OUTCOMES))
                .where(col(InboundMessage.review).is_(None))
            ).one()
            yield GaugeMetricFamily(
                "cme_quarantine_pending", "Quarantined messages awaiting review", value=float(held)
            )

            replies = GaugeMetricFamily(
                "cme_outbound", "Outbound emails by state", labels=["state"]
            )
            counts = dict(
                s.exec(
                    select(OutboundEmail.state, func.count()).group_by(col(OutboundEmail.state))
                ).all()
            )
            for state in OutboundState:
                replies.add_metric([state.value], float(counts.get(state, 0)))
            yield replies
            yield CounterMetricFamily(
                "cme_reply_failures", "Outbound emails that failed permanently",
                value=float(counts.get(OutboundState.FAILED, 0)),
            )  # fmt: skip

            duration = GaugeMetricFamily(
                "cme_poll_duration_seconds", "Duration of the last successful pass",
                labels=["mailbox"],
            )  # fmt: skip
            backlog = GaugeMetricFamily(
                "cme_queue_depth", "Messages found waiting at the last pass", labels=["mailbox"]
            )
            last_ok = GaugeMetricFamily(
                "cme_last_successful_poll_timestamp_seconds", "When the mailbox was last polled",
                labels=["mailbox"],
            )  # fmt: skip
            auth = GaugeMetricFamily(
                "cme_mailbox_auth_failing", "1 while the mailbox refuses our login",
                labels=["mailbox"],
            )  # fmt: skip
            for row in s.exec(select(PollerStatus)).all():
                label = [row.account]
                if row.last_duration_seconds is not None:
                    duration.add_metric(label, row.last_duration_seconds)
                backlog.add_metric(label, float(row.last_backlog))
                if row.last_success_at is not None:
                    last_ok.add_metric(label, row.last_success_at.timestamp())
                auth.add_metric(label, 1.0 if row.auth_failing else 0.0)
            yield from (duration, backlog, last_ok, auth)


def registry_for(engine: Engine) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CmeCollector(engine))
    return registry
