"""Is the poller healthy? Each mailbox polled recently, and its login accepted."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlmodel import Session

from cme_mailbot.config import Settings
from cme_mailbot.models import PollerStatus, utcnow
from cme_mailbot.wiring import mailbox_account


@dataclass
class HealthReport:
    healthy: bool = True
    lines: list[str] = field(default_factory=list)
    mailboxes: list[dict[str, object]] = field(default_factory=list)


def check(
    session: Session, settings: Settings, max_missed: int = 3, now: dt.datetime | None = None
) -> HealthReport:
    now = now or utcnow()
    report = HealthReport()
    for profile in settings.profiles():
        account = mailbox_account(profile.settings)
        status = session.get(PollerStatus, account)
        limit = dt.timedelta(seconds=profile.settings.poller.interval_seconds * max_missed)
        problem: str | None = None
        if status is None or status.last_success_at is None:
            problem = "never polled successfully"
        elif status.auth_failing:
            problem = f"login refused: {status.last_error or ''}".strip()
        elif now - status.last_success_at > limit:
            age = int((now - status.last_success_at).total_seconds())
            problem = f"last successful poll {age} s ago (limit {int(limit.total_seconds())} s)"
            if status.last_error:
                problem += f"; last error: {status.last_error}"
        ok = problem is None
        report.healthy = report.healthy and ok
        report.lines.append(f"{profile.name}: {'ok' if ok else 'UNHEALTHY'}" +
                            ("" if ok else f" - {problem}"))  # fmt: skip
        report.mailboxes.append(
            {
                "name": profile.name,
                "healthy": ok,
                "problem": problem,
                "last_success_at": status.last_success_at.isoformat()
                if status and status.last_success_at
                else None,
            }
        )
    return report
