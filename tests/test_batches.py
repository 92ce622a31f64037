"""Deciding one message at a time, filing and answering a batch at once: never twice, never lost.

The in-process bot (tests/data/harness.py) over a Maildir, an .eml outbox and SQLite, with
faults injected where a real deployment meets them: the database failing while a batch is being
recorded, a reply whose claim ran out and was taken over, a sandbox that cannot start.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, func, select

from cme_mailbot.config import LimitsSettings
from cme_mailbot.db import WriteLockedConnection
from cme_mailbot.forms import read_form
from cme_mailbot.forms.fill import fill_pdf
from cme_mailbot.mailbox import MailboxError
from cme_mailbot.models import (
    InboundMessage,
    MessageBlob,
    MessageState,
    OutboundEmail,
    OutboundState,
)
from cme_mailbot.pipeline import _LATER, _LOOK_AHEAD, ReleaseError, _FetchAhead, _SendingThread
from cme_mailbot.samples import make_upn, referral_email, referral_values
from cme_mailbot.sandbox import SandboxedReader, SandboxError
from cme_mailbot.stages.extract import Extraction

from .data.harness import Bot

LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def referrals(n: int) -> list[bytes]:
    today = dt.date.today()
    out = []
    for i in range(n):
        values = referral_values(today, upn=make_upn(serial=300 + i), child_first_name=f"Kid{i}")
        pdf = fill_pdf(values)
        out.append(referral_email(subject=f"CME referral {i}", attachments=[("referral.pdf", pdf)]))
    return out


@pytest.fixture
def bot() -> Iterator[Bot]:
    with tempfile.TemporaryDirectory() as tmp:
        b = Bot(Path(tmp), read_form)
        yield b
        b.engine.dispose()


def outbox_rows(bot: Bot) -> list[OutboundEmail]:
    with Session(bot.engine) as s:
        return list(s.exec(select(OutboundEmail).order_by(col(OutboundEmail.id))).all())


def test_a_batch_whose_recording_fails_is_never_answered_twice(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot.deliver(*referrals(3))
    real = bot.pipeline._record
    calls = {"n": 0}

    def flaky(deliveries: list[Any], **kwargs: Any) -> None:
        calls["n"] += bool(deliveries)
        if calls["n"] == 2:  # the database fails while the batch's second reply is recorded
            raise OperationalError("UPDATE", {}, Exception("database is locked"))
        real(deliveries, **kwargs)

    monkeypatch.setattr(bot.pipeline, "_record", flaky)
    with pytest.raises(OperationalError):
        bot.poll()
    assert len(bot.sent_to()) == 2  # the first two went out once; the loop stopped there
    monkeypatch.setattr(bot.pipeline, "_record", real)
    # The unrecorded one is re-sent once its lease has run out (the documented window), and
    # the third, never sent, too: nothing lost, nothing sent a third time.
    with Session(bot.engine) as s:
        s.execute(update(OutboundEmail).values(next_attempt_at=LONG_AGO))
        s.execute(update(InboundMessage).values(lease_until=LONG_AGO))
        s.commit()
    bot.poll()
    assert len(bot.sent_to()) == 3  # one file per Message-ID: the re-sent copy is the same
    rows = outbox_rows(bot)
    assert [r.state for r in rows] == [OutboundState.SENT] * 3
    assert [r.attempts for r in rows] == [1, 2, 2]  # sent once, re-sent once, sent once
    assert bot.inbox() == []


def test_a_reply_taken_over_by_another_instance_is_not_sent_again(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot.deliver(*referrals(1))
    pipeline = bot.pipeline
    real = pipeline._finish

    def late(batch: list[Any]) -> None:
        # Our claim ran out meanwhile, and another instance claimed and sent the reply.
        with Session(bot.engine) as s:
            s.execute(
                update(OutboundEmail).values(
                    attempts=OutboundEmail.attempts + 1, state=OutboundState.SENT
                )
            )
            s.commit()
        for d in batch:
            for e in d.emails:
                e.next_attempt_at = pipeline.clock() - dt.timedelta(seconds=1)
        real(batch)

    monkeypatch.setattr(pipeline, "_finish", late)
    bot.poll()
    assert bot.sent_to() == []  # the other instance sent it; we did not
    [row] = outbox_rows(bot)
    assert row.state is OutboundState.SENT and row.attempts == 2  # its record is kept


def test_a_stale_claim_still_ours_is_renewed_and_sent(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot.deliver(*referrals(1))
    pipeline = bot.pipeline
    real = pipeline._finish

    def slow(batch: list[Any]) -> None:
        for d in batch:
            for e in d.emails:  # more than half the lease went by before the batch was sent
                e.next_attempt_at = pipeline.clock() + dt.timedelta(seconds=1)
        real(batch)

    monkeypatch.setattr(pipeline, "_finish", slow)
    bot.poll()
    assert len(bot.sent_to()) == 1
    [row] = outbox_rows(bot)
    assert row.state is OutboundState.SENT and row.attempts == 1


class _Unavailable(SandboxedReader):
    def read_message(self, raw: bytes, limits: LimitsSettings, *, forms: bool) -> Extraction:
        raise SandboxError("the sandbox worker did not start")


def test_a_sandbox_that_cannot_start_leaves_messages_claimed_for_a_retry() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bot = Bot(Path(tmp), _Unavailable(LimitsSettings()))
        bot.deliver(*referrals(1))
        summary = bot.poll()
        assert summary.new == 1 and summary.done == 0
        [row] = bot.messages()
        assert row["state"] == "claimed" and row["outcome"] is None  # not quarantined
        assert bot.sent_to() == [] and len(bot.inbox()) == 1
        # Once it can read again, the message is taken up when its lease has run out.
        with Session(bot.engine) as s:
            s.execute(update(InboundMessage).values(lease_until=LONG_AGO))
            s.commit()
        bot.pipeline.read_form = read_form
        bot.poll()
        [row] = bot.messages()
        assert row["outcome"] == "processed" and len(bot.sent_to()) == 1
        bot.engine.dispose()


def test_releasing_while_the_sandbox_cannot_start_changes_nothing() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bot = Bot(Path(tmp), read_form)
        bot.deliver(referral_email(attachments=[("referral.pdf", b"%PDF-1.7 damaged")]))
        bot.poll()
        [row] = bot.messages()
        assert row["outcome"] == "quarantined"
        bot.pipeline.read_form = _Unavailable(LimitsSettings())
        with pytest.raises(ReleaseError, match="unavailable"):
            bot.pipeline.release(row["id"])
        with Session(bot.engine) as s:
            again = s.get(InboundMessage, row["id"])
            assert again is not None and again.state is MessageState.FILED  # can be released
        bot.engine.dispose()


# ---- claiming a group of messages in one transaction ------------------------------------------


def on_second_decision(
    monkeypatch: pytest.MonkeyPatch,
    pipeline: Any,
    *,
    before: Callable[[], None] = lambda: None,
    after: Callable[[], None] = lambda: None,
) -> Callable[..., Any]:
    """Run `before` and `after` around the pipeline's second `_decide`; returns the real one."""
    real = pipeline._decide
    seen = {"n": 0}

    def wrapped(mm: Any, claim: Any) -> Any:
        seen["n"] += 1
        if seen["n"] == 2:
            before()
        out = real(mm, claim)
        if seen["n"] == 2:
            after()
        return out

    monkeypatch.setattr(pipeline, "_decide", wrapped)
    return cast("Callable[..., Any]", real)


def test_a_group_is_claimed_in_one_transaction_and_each_answered_once(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot.deliver(*referrals(5))
    pipeline = bot.pipeline
    groups: list[int] = []
    real = pipeline._claim_many

    def counted(mms: list[Any], headers: Any = None, **kwargs: Any) -> list[Any]:
        groups.append(len(mms))
        return real(mms, headers, **kwargs)

    monkeypatch.setattr(pipeline, "_claim_many", counted)
    summary = bot.poll()
    assert groups == [5]  # file_batch (50) holds them all
    assert summary.new == 5 and summary.done == 5
    assert len(bot.sent_to()) == 5 and bot.inbox() == []
    assert [m["outcome"] for m in bot.messages()] == ["processed"] * 5


def test_a_copy_in_the_same_group_falls_back_to_claims_one_by_one(bot: Bot) -> None:
    [raw] = referrals(1)
    bot.deliver(raw, raw)  # the same message twice: one Message-ID, one sender
    summary = bot.poll()
    # The group's insert meets the unique key; each is then claimed on its own: the first is
    # decided and answered, the copy is left for a later pass (its twin was being decided).
    assert summary.done == 1 and len(bot.sent_to()) == 1
    bot.poll()
    assert len(bot.sent_to()) == 1  # the copy is filed where the original went, unanswered
    assert bot.inbox() == []
    [row] = bot.messages()
    assert row["outcome"] == "processed"


def test_a_stop_mid_group_gives_back_the_claims_not_started(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot.deliver(*referrals(4))
    pipeline = bot.pipeline
    # SIGTERM while the second message is in hand.
    real = on_second_decision(monkeypatch, pipeline, after=pipeline.stop_requested.set)
    summary = bot.poll()
    assert summary.new == 2 and summary.done == 2
    assert len(bot.sent_to()) == 2  # the two decided were filed and answered
    # The other two are not in the ledger at all: no lease to wait for.
    assert len(bot.messages()) == 2 and len(bot.inbox()) == 2
    pipeline.stop_requested.clear()
    monkeypatch.setattr(pipeline, "_decide", real)
    bot.poll()
    assert len(bot.sent_to()) == 4 and bot.inbox() == []
    assert [m["outcome"] for m in bot.messages()] == ["processed"] * 4


def test_groups_are_bounded_by_count_and_bytes() -> None:
    from cme_mailbot.mailbox import MailboxMessage
    from cme_mailbot.pipeline import _groups

    def mm(i: int, size: int) -> MailboxMessage:
        return MailboxMessage(f"1:{i}", size, b"x" * size)

    sizes = [10, 10, 10, 10, 10]
    assert [len(g) for g in _groups((mm(i, s) for i, s in enumerate(sizes)), 2, 1000)] == [2, 2, 1]
    big = [10, 600, 10, 10, 500, 600]
    got = [[m.location for m in g] for g in _groups((mm(i, s) for i, s in enumerate(big)), 20, 500)]
    assert got == [["1:0", "1:1"], ["1:2", "1:3", "1:4"], ["1:5"]]
    oversize = [MailboxMessage("1:9", 10**9, None)]  # never downloaded: counts no bytes
    assert [len(g) for g in _groups(iter(oversize), 20, 500)] == [1]
    assert list(_groups(iter([]), 20, 500)) == []


def test_an_error_escaping_one_message_gives_back_the_rest_of_its_group(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot.deliver(*referrals(4))
    pipeline = bot.pipeline

    def fail() -> None:
        raise OperationalError("UPDATE", {}, Exception("disk I/O error"))

    real = on_second_decision(monkeypatch, pipeline, before=fail)
    with pytest.raises(OperationalError):
        bot.poll()
    # The first was decided and answered; the second keeps its claim (its lease runs out);
    # the third and fourth were given back: not in the ledger, taken at once next pass.
    assert len(bot.sent_to()) == 1
    assert [m["state"] for m in bot.messages()] == ["filed", "claimed"]
    monkeypatch.setattr(pipeline, "_decide", real)
    bot.poll()
    assert len(bot.sent_to()) == 3 and len(bot.inbox()) == 1
    with Session(bot.engine) as s:
        s.execute(update(InboundMessage).values(lease_until=LONG_AGO))
        s.commit()
    bot.poll()
    assert len(bot.sent_to()) == 4 and bot.inbox() == []
    assert [m["outcome"] for m in bot.messages()] == ["processed"] * 4


def test_giving_back_leaves_a_message_another_instance_has_taken_over(bot: Bot) -> None:
    bot.deliver(*referrals(2))
    pipeline = bot.pipeline
    mms = list(pipeline.mailbox.fetch_new(frozenset()))
    claims = pipeline._claim_many(mms)
    assert [c[1] for c in claims if isinstance(c, tuple)] == [True, True]
    first, second = (c[0] for c in claims if isinstance(c, tuple))
    with Session(bot.engine) as s:  # our lease ran out; another instance took the first
        s.execute(
            update(InboundMessage)
            .where(col(InboundMessage.id) == first)
            .values(claimed_by="elsewhere", attempts=2)
        )
        s.commit()
    pipeline._give_back([(first, True), (second, True)])
    rows = {m["id"]: m for m in bot.messages()}
    assert set(rows) == {first}  # ours given back; theirs untouched, its original kept
    with Session(bot.engine) as s:
        assert s.get(MessageBlob, first) is not None


def _batches_of(n: int, bot: Bot, monkeypatch: pytest.MonkeyPatch) -> None:
    s = bot.pipeline.settings
    poller = s.poller.model_copy(update={"file_batch": n})
    monkeypatch.setattr(bot.pipeline, "settings", s.model_copy(update={"poller": poller}))


def test_replies_go_out_on_their_own_thread_while_the_next_message_is_decided(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    _batches_of(1, bot, monkeypatch)
    bot.deliver(*referrals(3))
    pipeline = bot.pipeline
    second_decided = threading.Event()
    finished = {"n": 0}
    real_finish, real_send = pipeline._finish, bot.outbox.send
    senders: list[str] = []

    def finish(batch: list[Any]) -> None:
        finished["n"] += 1
        if finished["n"] == 2:
            second_decided.set()
        real_finish(batch)

    def send(raw: bytes, sender: str, recipients: Any) -> list[str]:
        senders.append(threading.current_thread().name)
        if len(senders) == 1:  # the first reply waits until the next message is decided
            assert second_decided.wait(60), "the poller waited for the first reply to go"
        return real_send(raw, sender, recipients)

    monkeypatch.setattr(pipeline, "_finish", finish)
    monkeypatch.setattr(bot.outbox, "send", send)
    summary = bot.poll()
    assert summary.done == 3 and summary.replies_sent == 3
    assert set(senders) == {"cme-sending"}
    assert [r.state for r in outbox_rows(bot)] == [OutboundState.SENT] * 3
    assert all(m["state"] == MessageState.FILED.value for m in bot.messages())


def test_a_failure_on_the_sending_thread_stops_the_pass_and_loses_nothing(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    _batches_of(1, bot, monkeypatch)
    bot.deliver(*referrals(3))
    real_send = bot.outbox.send
    sent = {"n": 0}

    def send(raw: bytes, sender: str, recipients: Any) -> list[str]:
        sent["n"] += 1
        if sent["n"] == 1:
            raise RuntimeError("the transport broke")  # not a delivery failure: a bug
        return real_send(raw, sender, recipients)

    monkeypatch.setattr(bot.outbox, "send", send)
    with pytest.raises(RuntimeError, match="the transport broke"):
        bot.poll()  # raised in the poller's own thread
    assert bot.sent_to() == []  # the batches behind it were not sent either
    # No message left the inbox without being recorded as filed.
    with Session(bot.engine) as s:
        filed = s.exec(
            select(func.count()).where(col(InboundMessage.state) == MessageState.FILED)
        ).one()
    assert filed + len(bot.inbox()) == 3
    monkeypatch.setattr(bot.outbox, "send", real_send)
    with Session(bot.engine) as s:  # their claims run out
        s.execute(update(OutboundEmail).values(next_attempt_at=LONG_AGO))
        s.execute(update(InboundMessage).values(lease_until=LONG_AGO))
        s.commit()
    bot.poll()
    assert len(bot.sent_to()) == 3  # each reply once
    assert [r.state for r in outbox_rows(bot)] == [OutboundState.SENT] * 3
    assert bot.inbox() == []


def test_an_in_memory_database_keeps_sending_on_the_pollers_thread(bot: Bot) -> None:
    from sqlmodel import create_engine

    from cme_mailbot.pipeline import Pipeline

    assert bot.pipeline._threads_share_db
    for url in ("sqlite://", "sqlite:///:memory:"):
        p = Pipeline(create_engine(url), bot.settings, bot.mailbox, bot.outbox)
        assert not p._threads_share_db


def test_the_passs_own_error_is_the_one_reported_when_sending_failed_too(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    _batches_of(1, bot, monkeypatch)
    bot.deliver(*referrals(2))
    asked, failed = threading.Event(), threading.Event()
    real_fetch = bot.mailbox.fetch_new
    pipeline = bot.pipeline
    real_end = pipeline._end_group_plan

    def fetch_new(known: Any = frozenset()) -> Iterator[Any]:
        messages = real_fetch(known)
        yield next(messages)
        # Asked for the next group while the first message is decided: the error waits until
        # that message is filed and handed over.
        raise MailboxError("the connection dropped")

    def end_group_plan(**kwargs: Any) -> None:
        real_end(**kwargs)
        asked.set()  # the first is decided, filed and handed over; now the sender fails
        assert failed.wait(30)

    def send(raw: bytes, sender: str, recipients: Any) -> list[str]:
        assert asked.wait(30)
        failed.set()
        raise RuntimeError("the transport broke")

    monkeypatch.setattr(bot.mailbox, "fetch_new", fetch_new)
    monkeypatch.setattr(pipeline, "_end_group_plan", end_group_plan)
    monkeypatch.setattr(bot.outbox, "send", send)
    summary = bot.poll()  # the mailbox error is caught and recorded as the pass's
    assert summary.errors == ["the connection dropped"]


def test_interrupted_while_it_waits_for_the_sending_thread_it_stops_after_the_email_in_hand() -> (
    None
):
    sent: list[Any] = []
    started = threading.Event()

    def send(batch: list[Any], filed: Any, abandon: threading.Event) -> None:
        sent.append(batch)
        started.set()
        assert abandon.wait(30)  # the email in hand, done once the poller gives up

    sending = _SendingThread(send)
    sending.put(cast(Any, ["first"]))
    assert started.wait(30)
    sending.put(cast(Any, ["second"]))  # waits behind it
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT))
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            sending.close()  # Ctrl-C while waiting for the queue
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, saved)
    assert sent == [["first"]]  # the one behind it was not sent
    assert not any(t.name == "cme-sending" for t in threading.enumerate())


def test_a_stop_mid_group_leaves_nothing_sent_ahead_in_the_sandbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader = SandboxedReader(LimitsSettings(parse_timeout_seconds=20))
    with tempfile.TemporaryDirectory() as tmp:
        bot = Bot(Path(tmp), reader)
        try:
            bot.deliver(*referrals(5))
            pipeline = bot.pipeline
            on_second_decision(monkeypatch, pipeline, after=pipeline.stop_requested.set)
            summary = bot.poll()
            assert summary.done == 2
            # Coming messages were in the sandbox; their answers, and bytes, went.
            assert reader.prefetched == 2 and not reader._pending
        finally:
            reader.close()
            bot.engine.dispose()


# ---- a pass's decisions reach the disk together, before anything leaves -------------------------


def test_decisions_wait_for_the_disk_together_before_a_message_moves(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass commits each decision without waiting for the disk; before a batch is moved or
    answered, one transaction that does wait takes them all there (SQLite, WAL: synchronous
    NORMAL, then FULL; one fsync per batch instead of one per message)."""
    events: list[tuple[str, bool]] = []
    real_commit = WriteLockedConnection.commit

    def commit(self: WriteLockedConnection) -> None:
        wrote = self.in_transaction
        real_commit(self)
        if wrote:
            events.append(("commit", self._synchronous_full))

    monkeypatch.setattr(WriteLockedConnection, "commit", commit)
    real_file_many, real_send = bot.mailbox.file_many, bot.outbox.send

    def file_many(locations: Any, folder: str) -> None:
        events.append(("move", True))
        real_file_many(locations, folder)

    def send(raw: bytes, sender: str, recipients: Any) -> list[str]:
        events.append(("send", True))
        return real_send(raw, sender, recipients)

    monkeypatch.setattr(bot.mailbox, "file_many", file_many)
    monkeypatch.setattr(bot.outbox, "send", send)
    bot.deliver(*referrals(3))
    summary = bot.poll()
    assert summary.done == 3 and len(bot.sent_to()) == 3
    deferred = [i for i, (kind, full) in enumerate(events) if kind == "commit" and not full]
    assert len(deferred) == 3  # the three decisions
    for i, (kind, _) in enumerate(events):
        if kind in ("move", "send"):
            before = [e for e in events[:i] if e[0] == "commit"]
            assert before and before[-1] == ("commit", True), events
    # After a deferred commit, the connection goes back to waiting for the disk.
    with bot.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, WriteLockedConnection) and raw.durable
        level = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        assert level == 2  # FULL, as every connection starts


def test_a_decided_message_whose_claim_was_taken_over_is_left_to_its_new_holder(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot.deliver(*referrals(2))
    pipeline = bot.pipeline
    real = pipeline._finish

    def late(batch: list[Any]) -> None:
        # The first message's claim ran out and another instance holds it now.
        with Session(bot.engine) as s:
            s.execute(
                update(InboundMessage)
                .where(col(InboundMessage.id) == batch[0].row_id)
                .values(claimed_by="another:1:abc")
            )
            s.commit()
        real(batch)

    monkeypatch.setattr(pipeline, "_finish", late)
    summary = bot.poll()
    assert summary.done == 2
    assert len(bot.sent_to()) == 1  # only the one still ours was answered...
    assert len(bot.inbox()) == 1  # ...and moved; the other is its new holder's to file
    states = sorted(m["state"] for m in bot.messages())
    assert states == [MessageState.DECIDED.value, MessageState.FILED.value]


# ---- the next group, claimed while the last messages of this one are decided ----------------


def test_a_stop_gives_back_the_claims_of_the_group_claimed_ahead_too(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    _batches_of(3, bot, monkeypatch)
    bot.deliver(*referrals(7))
    pipeline = bot.pipeline
    claimed: list[int] = []
    real = pipeline._claim_many

    def counted(mms: list[Any], headers: Any = None, **kwargs: Any) -> list[Any]:
        claimed.append(len(mms))
        return real(mms, headers, **kwargs)

    monkeypatch.setattr(pipeline, "_claim_many", counted)
    real_decide = on_second_decision(monkeypatch, pipeline, after=pipeline.stop_requested.set)
    summary = bot.poll()
    assert summary.done == 2
    assert claimed == [3, 3]  # the second group was claimed with the first one's first message
    # The first group's third message and the whole second group went back: not in the ledger.
    assert [m["state"] for m in bot.messages()] == ["filed", "filed"]
    assert len(bot.sent_to()) == 2 and len(bot.inbox()) == 5
    monkeypatch.setattr(pipeline, "_decide", real_decide)
    pipeline.stop_requested.clear()
    summary = bot.poll()
    assert summary.done == 5 and bot.inbox() == [] and len(bot.sent_to()) == 7


def test_an_error_fetching_the_next_group_waits_until_this_group_is_filed_and_answered(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    _batches_of(2, bot, monkeypatch)
    bot.deliver(*referrals(4))
    real_fetch = bot.mailbox.fetch_new

    def fetch_new(known: Any = frozenset()) -> Iterator[Any]:
        messages = real_fetch(known)
        yield next(messages)
        yield next(messages)
        raise MailboxError("the connection dropped")  # asked for while the first is decided

    monkeypatch.setattr(bot.mailbox, "fetch_new", fetch_new)
    summary = bot.poll()
    assert summary.errors == ["the connection dropped"]
    assert summary.done == 2 and len(bot.sent_to()) == 2 and len(bot.inbox()) == 2
    assert [m["state"] for m in bot.messages()] == ["filed", "filed"]


def _attempts(bot: Bot) -> list[int]:
    with Session(bot.engine) as s:
        return list(s.exec(select(InboundMessage.attempts).order_by(col(InboundMessage.id))))


def test_a_known_message_claimed_ahead_waits_for_its_turn_even_alone(bot: Bot) -> None:
    """A group of one claimed ahead never takes over a lapsed claim early: that would spend one
    of the message's attempts on a turn a stop may never give it."""
    bot.deliver(*referrals(1))
    pipeline = bot.pipeline
    mms = list(pipeline.mailbox.fetch_new(frozenset()))
    [claim] = pipeline._claim_many(mms)
    assert isinstance(claim, tuple)
    with Session(bot.engine) as s:  # its lease has run out
        s.execute(update(InboundMessage).values(lease_until=LONG_AGO))
        s.commit()
    assert pipeline._claim_many(mms, later_if_known=True) == [_LATER]
    assert _attempts(bot) == [1]  # not taken over, not counted
    assert pipeline._claim_many(mms) == [(claim[0], False)]  # its turn: taken over
    assert _attempts(bot) == [2]


def test_a_copy_moves_only_once_the_decisions_before_it_are_on_the_disk(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy of a message decided earlier in the pass is filed at once, outside any batch: the
    decisions committed without waiting for the disk are taken there first."""
    from cme_mailbot import pipeline as pipeline_mod

    events: list[str] = []
    real_durable, real_file = pipeline_mod.make_durable, bot.mailbox.file

    def make_durable(engine: Any) -> None:
        events.append("durable")
        real_durable(engine)

    def file(location: str, folder: str) -> None:
        events.append("move")
        real_file(location, folder)

    monkeypatch.setattr(pipeline_mod, "make_durable", make_durable)
    monkeypatch.setattr(bot.mailbox, "file", file)
    [raw] = referrals(1)
    bot.deliver(raw, raw)  # the same message twice: the second is a copy
    summary = bot.poll()
    assert summary.done == 1 and len(bot.sent_to()) == 1 and bot.inbox() == []
    assert events[:2] == ["durable", "move"]  # the copy, filed where the original goes


# ---- the next group, read from the mailbox on a thread of its own ------------------------------


def _two_groups(
    bot: Bot, monkeypatch: pytest.MonkeyPatch, before_second: Callable[[], object]
) -> tuple[int, list[str]]:
    """Deliver two claim groups, each longer than the look-ahead (so the second is claimed only
    once some of the first are decided), and run `before_second()` before the second group's
    first message is read. Returns the group size and the names of the threads each message
    was read on."""
    group = _LOOK_AHEAD + 4
    _batches_of(group, bot, monkeypatch)
    bot.deliver(*referrals(2 * group))
    real = bot.mailbox.fetch_new
    threads: list[str] = []

    def fetch_new(known: Any = frozenset()) -> Iterator[Any]:
        for n, mm in enumerate(real(known), start=1):
            if n == group + 1:
                before_second()
            threads.append(threading.current_thread().name)
            yield mm

    monkeypatch.setattr(bot.mailbox, "fetch_new", fetch_new)
    return group, threads


def test_the_next_group_is_read_on_its_own_thread_while_this_one_is_decided(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    reading = threading.Event()
    # The second group's first message is read while the first group's first is being decided:
    # that decision waits until it has been (it would wait in vain were the read in line).
    group, threads = _two_groups(bot, monkeypatch, reading.set)
    seen = {"n": 0}
    real_decide = bot.pipeline._decide

    def decide(mm: Any, claim: Any) -> Any:
        seen["n"] += 1
        if seen["n"] == 1:
            assert reading.wait(30), "the next group was not read ahead"
        return real_decide(mm, claim)

    monkeypatch.setattr(bot.pipeline, "_decide", decide)
    summary = bot.poll()
    assert summary.done == 2 * group and bot.inbox() == [] and len(bot.sent_to()) == 2 * group
    assert len(threads) == 2 * group and all(t.startswith("cme-fetch") for t in threads)
    assert not any(t.name.startswith("cme-fetch") for t in threading.enumerate())


def test_the_mailbox_serves_one_thread_at_a_time(bot: Bot, monkeypatch: pytest.MonkeyPatch) -> None:
    _batches_of(2, bot, monkeypatch)
    bot.deliver(*referrals(8))
    inside, most = [0], [0]
    guard = threading.Lock()

    def using(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            try:
                threading.Event().wait(0.01)  # long enough for another thread to come in
                return fn(*args, **kwargs)
            finally:
                with guard:
                    inside[0] -= 1

        return wrapped

    real_fetch = bot.mailbox.fetch_new

    def fetch_new(known: Any = frozenset()) -> Iterator[Any]:
        messages = real_fetch(known)
        while (mm := using(next)(messages, None)) is not None:
            yield mm

    monkeypatch.setattr(bot.mailbox, "fetch_new", fetch_new)
    monkeypatch.setattr(bot.mailbox, "file_many", using(bot.mailbox.file_many))
    summary = bot.poll()
    assert summary.done == 8 and bot.inbox() == [] and len(bot.sent_to()) == 8
    assert most[0] == 1


def test_a_stop_waits_for_the_group_being_read_and_claims_none_of_it(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    stopped = threading.Event()
    # The next group's read goes on once the stop is asked.
    group, _ = _two_groups(bot, monkeypatch, lambda: stopped.wait(30))
    pipeline = bot.pipeline
    real_decide = pipeline._decide

    def decide(mm: Any, claim: Any) -> Any:
        out = real_decide(mm, claim)
        pipeline.stop_requested.set()
        stopped.set()
        return out

    monkeypatch.setattr(pipeline, "_decide", decide)
    summary = bot.poll()
    assert summary.done == 1 and len(bot.sent_to()) == 1 and len(bot.inbox()) == 2 * group - 1
    assert [m["state"] for m in bot.messages()] == ["filed"]  # nothing else claimed
    assert not any(t.name.startswith("cme-fetch") for t in threading.enumerate())
    monkeypatch.setattr(pipeline, "_decide", real_decide)
    pipeline.stop_requested.clear()
    summary = bot.poll()
    assert summary.done == 2 * group - 1 and bot.inbox() == []
    assert len(bot.sent_to()) == 2 * group


def test_an_interrupt_while_the_read_ahead_ends_still_files_and_answers_the_batch(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot.deliver(*referrals(3))
    real_close = _FetchAhead.close

    def close(self: _FetchAhead) -> None:
        real_close(self)
        raise KeyboardInterrupt  # a second Ctrl-C while the read in hand ends

    monkeypatch.setattr(_FetchAhead, "close", close)
    with pytest.raises(KeyboardInterrupt):
        bot.poll()
    assert [m["state"] for m in bot.messages()] == ["filed"] * 3
    assert len(bot.sent_to()) == 3 and bot.inbox() == []


def test_a_large_message_is_stored_whole_however_it_is_written(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over a megabyte, SQLite is given the bytes in pieces (no second whole copy in memory).
    opened: list[int] = []
    real_open = WriteLockedConnection.blobopen

    def blobopen(self: WriteLockedConnection, *args: Any, **kwargs: Any) -> Any:
        opened.append(args[2])
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(WriteLockedConnection, "blobopen", blobopen)
    values = referral_values(dt.date.today(), upn=make_upn(serial=900))
    big = referral_email(
        subject="CME referral with photos",
        attachments=[("referral.pdf", fill_pdf(values)), ("photos.bin", os.urandom(3 << 20))],
    )
    small = referrals(1)[0]
    bot.deliver(big, small)
    summary = bot.poll()
    assert summary.done == 2
    with Session(bot.engine) as s:
        stored = sorted(len(b.raw) for b in s.exec(select(MessageBlob)).all())
        raws = {bytes(b.raw) for b in s.exec(select(MessageBlob)).all()}
    assert stored == sorted([len(big), len(small)]) and raws == {big, small}
    assert len(opened) == (1 if bot.engine.dialect.name == "sqlite" else 0)  # the large one
