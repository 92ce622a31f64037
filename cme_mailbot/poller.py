"""`cme-mailbot run`: the long-running poller.

APScheduler fires a cycle every `poller.interval_seconds` (`max_instances=1`, `coalesce=True`, so
cycles never overlap or pile up). A cycle polls, then waits for new mail until its tick is over:
with IMAP IDLE (renewed every few seconds, well inside the 10-minute limit) a referral appended
in the meantime is handled at once; without IDLE the next tick finds it. A mailbox failure backs
off exponentially, capped, and the next attempt reconnects from scratch. SIGTERM or SIGINT lets
the message in hand finish, then the process exits 0.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import structlog
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler

from cme_mailbot.mailbox import MailboxError
from cme_mailbot.pipeline import Pipeline, PollSummary

log = structlog.get_logger("cme_mailbot.poller")

WAIT_SLICE_SECONDS = 5.0  # one IDLE round: bounds how long a stop request waits
MAX_BACKOFF_SECONDS = 300.0


class Poller:
    def __init__(
        self,
        pipeline: Pipeline,
        interval_seconds: float,
        echo: Callable[[str], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.pipeline = pipeline
        self.interval = interval_seconds
        self.echo = echo
        self.monotonic = monotonic
        self.stop = threading.Event()
        self.failures = 0
        self.retry_at = 0.0

    def backoff(self) -> float:
        return float(min(2 ** max(self.failures - 1, 0) * 2.0, MAX_BACKOFF_SECONDS))

    def _poll(self) -> PollSummary:
        summary = self.pipeline.poll_once()
        if summary.errors:
            self.failures += 1
            self.retry_at = self.monotonic() + self.backoff()
            log.warning("mailbox_unavailable", failures=self.failures, retry_in=self.backoff())
        else:
            self.failures = 0
        if self.echo and (summary.new or summary.replies_sent or summary.errors):
            self.echo(summary.line())
        return summary

    def cycle(self) -> None:
        """One tick: poll, then wait for new mail (IDLE) until the tick is nearly over."""
        start = self.monotonic()
        deadline = start + max(self.interval - 1.0, 0.5)
        if start < self.retry_at or self.stop.is_set():
            return
        if self._poll().errors:
            return
        while not self.stop.is_set():
            remaining = deadline - self.monotonic()
            if remaining <= 0:
                return
            try:
                arrived = self.pipeline.mailbox.wait_for_new(min(WAIT_SLICE_SECONDS, remaining))
            except MailboxError as exc:
                log.warning("wait_failed", error=str(exc))
                self.failures += 1
                self.retry_at = self.monotonic() + self.backoff()
                return
            if arrived and not self.stop.is_set() and self._poll().errors:
                return

    def request_stop(self) -> None:
        self.stop.set()
        self.pipeline.stop_requested.set()

    def run(self) -> None:
        run_pollers([self])


def run_pollers(pollers: list[Poller]) -> None:
    """One process, one scheduler, one job per mailbox; SIGTERM/SIGINT stops them all."""
    scheduler = BlockingScheduler(
        executors={"default": {"type": "threadpool", "max_workers": max(len(pollers), 1)}}
    )

    received: list[int] = []
    stop_now = threading.Event()

    def stopper() -> None:
        stop_now.wait()
        log.info("stopping", signal=signal.Signals(received[0]).name)
        for poller in pollers:
            poller.request_stop()
        # Waits for the cycles in hand: the current messages finish, then start() returns.
        with contextlib.suppress(SchedulerNotRunningError):
            scheduler.shutdown(wait=True)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Only flags here. A handler runs between two steps of the main thread, which may hold
        # the scheduler's locks: shutting the scheduler down from here could deadlock (it did,
        # when a signal came while the scheduler was starting a job's thread).
        if received:
            return  # a second signal: the stop the first one began goes on
        received.append(signum)
        if not scheduler.running:  # still starting: nothing is in hand yet
            log.info("stopping", signal=signal.Signals(signum).name, starting=True)
            raise SystemExit(0)
        stop_now.set()

    threading.Thread(target=stopper, name="stopper", daemon=True).start()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for poller in pollers:
        scheduler.add_job(
            poller.cycle,
            "interval",
            seconds=poller.interval,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=dt.datetime.now(dt.UTC),
            id=poller.pipeline.mailbox.account,
        )
    log.info("running", mailboxes=len(pollers))
    scheduler.start()
    log.info("stopped")
