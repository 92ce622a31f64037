"""Runs the stages for each inbound message and contains any failure to that one message.

fetch -> claim (ledger row + original bytes) -> parse -> automatic? -> genuine sender? ->
approved? -> extract forms -> [one transaction: validate, store, compose replies] -> file the
message -> send the replies. The ledger row moves forward one committed step at a time
(claimed -> decided -> filed), so a crash at any point resumes without losing or doubling work.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import datetime as dt
import functools
import hashlib
import json
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, TypeGuard, cast

import structlog
from sqlalchemy import ColumnElement, bindparam, delete, func, insert, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import SingletonThreadPool, StaticPool
from sqlmodel import Session, col, select

from cme_mailbot import forms as forms_pkg
from cme_mailbot.config import Settings
from cme_mailbot.contacts import schools_of
from cme_mailbot.db import defer_durability, make_durable, session_scope, wait_for_the_disk
from cme_mailbot.mailbox import Mailbox, MailboxAuthError, MailboxError, MailboxMessage
from cme_mailbot.models import (
    InboundMessage,
    MessageBlob,
    MessageState,
    OutboundEmail,
    OutboundState,
    Outcome,
    PollerStatus,
    new_row,
    row_values,
    utcnow,
)
from cme_mailbot.redact import forget_sensitive, remember_sensitive
from cme_mailbot.references import ensure_counter
from cme_mailbot.render import Renderer, Threading
from cme_mailbot.schema import FormSchema, default_schema
from cme_mailbot.stages.automatic import automatic_reason
from cme_mailbot.stages.decide import (
    Composer,
    decide_forms,
    outcome_template,
    reply_forms_context,
    reply_subject_base,
    safe_subject,
)
from cme_mailbot.stages.extract import (
    Extraction,
    FormReader,
    MessageReader,
    ReaderUnavailable,
    extract_forms,
)
from cme_mailbot.stages.parse import (
    ParsedMessage,
    ParseError,
    first_address,
    normalise_message_id,
    parse_headers,
    parse_message,
    read_headers,
)
from cme_mailbot.stages.sender import authenticate
from cme_mailbot.transport import PermanentFailure, TemporaryFailure, Transport
from cme_mailbot.validation import RuleBook, default_rulebook

log = structlog.get_logger("cme_mailbot.pipeline")


@dataclass
class PollSummary:
    new: int = 0
    done: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    replies_sent: int = 0
    replies_waiting: int = 0
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())) or "nothing new"
        return (
            f"{self.new} new, {self.done} done ({parts}); replies sent {self.replies_sent}, "
            f"waiting {self.replies_waiting}"
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "new": self.new,
                "done": self.done,
                "outcomes": dict(self.outcomes),
                "replies_sent": self.replies_sent,
                "errors": self.errors,
            }
        )

    def add_json(self, text: str) -> None:
        """Add a helper's summary (its `to_json`); anything malformed is an error line."""
        try:
            data = json.loads(text)
            self.new += int(data["new"])
            self.done += int(data["done"])
            self.outcomes.update({str(k): int(v) for k, v in data["outcomes"].items()})
            self.replies_sent += int(data["replies_sent"])
            self.errors.extend(str(e) for e in data["errors"])
        except (ValueError, KeyError, TypeError, AttributeError):
            self.errors.append("a helper process gave no summary")


@dataclass(frozen=True)
class Share:
    """One process's part of a backlog split between `count` processes.

    Only a hint to spread the work: the ledger's claim still decides who handles a message, so
    a location handled twice, or by nobody (a helper stopped early), is never wrong: the one
    that claims second skips it, and the parent's closing sweep picks up what is left.
    """

    index: int
    count: int

    def owns(self, location: str) -> bool:
        return zlib.crc32(location.encode()) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


# Statements run for every message, built once (building one costs more than running it) and
# run as Core statements (the ORM's bookkeeping is not needed for a row updated by its key).
_IN = InboundMessage.__table__  # type: ignore[attr-defined]
_OUT = OutboundEmail.__table__  # type: ignore[attr-defined]
_BLOB = MessageBlob.__table__  # type: ignore[attr-defined]
_INSERT_OUTBOUND = insert(_OUT).returning(_OUT.c.id)
_INSERT_LEDGER = insert(_IN).returning(_IN.c.id, sort_by_parameter_order=True)
_MARK_FILED = (
    update(_IN)
    .where(_IN.c.id == bindparam("row_id"))
    .values(
        state=MessageState.FILED,
        filed_at=bindparam("at"),
        filed_folder=bindparam("b_folder"),
        lease_until=None,
    )
)
_MARK_DECIDED = (
    update(_IN)
    .where(_IN.c.id == bindparam("row_id"))
    .where(_IN.c.state == MessageState.CLAIMED)
    .where(_IN.c.claimed_by == bindparam("instance"))
    .values(
        state=MessageState.DECIDED,
        outcome=bindparam("b_outcome"),
        detail=bindparam("b_detail"),
        decided_at=bindparam("at"),
        subject=bindparam("b_subject"),
        lease_until=bindparam("lease"),
    )
)
# Before a batch is filed: its claims renewed, in a transaction that waits for the disk.
_HOLD_FOR_FILING = (
    update(_IN)
    .where(_IN.c.id.in_(bindparam("ids", expanding=True)))
    .where(_IN.c.state == MessageState.DECIDED)
    .where(_IN.c.claimed_by == bindparam("instance"))
    # A lease run out is left to whoever files it now (`refile_decided`): two MOVEs of one UID
    # can leave two copies.
    .where(_IN.c.lease_until >= bindparam("now"))
    .values(lease_until=bindparam("lease"))
    .returning(_IN.c.id)
)

_RECORD_DELIVERY = (
    update(_OUT)
    .where(_OUT.c.id == bindparam("email_id"))
    # Only our own attempt: never undo what a later claimant recorded.
    .where(_OUT.c.state == OutboundState.PENDING)
    .where(_OUT.c.attempts == bindparam("attempt"))
    .values(
        state=bindparam("new_state"),
        last_error=bindparam("error"),
        next_attempt_at=bindparam("retry_at"),
        sent_at=bindparam("sent_at"),
    )
)


_APPROVED_FOR = 5.0  # seconds a sender's approved schools are remembered within a claim group
# With this many messages of a group left, the next group (read from the mailbox meanwhile, on
# a thread of its own: `_FetchAhead`) is claimed: the sandbox (which takes up to as many
# requests ahead, `sandbox._AHEAD`) starts on it while these are decided and filed.
_LOOK_AHEAD = 12


class _Later:
    """A message of a group to be claimed on its own when its turn comes."""


_LATER = _Later()
_Claim = tuple[int, bool] | None | _Later


def _fresh(claim: _Claim | None) -> TypeGuard[tuple[int, bool]]:
    """A claim of ours on a row we have just created (not taken over)."""
    return isinstance(claim, tuple) and claim[1]


# A group of messages claimed together holds at most this many bytes (and `file_batch`
# messages), so a backlog of large messages is never all in memory at once.
_GROUP_BYTES = 1 << 21


def _groups(
    messages: Iterable[MailboxMessage], count: int, budget: int
) -> Iterator[list[MailboxMessage]]:
    """The messages in order, a few at a time: up to `count` of them and about `budget` bytes."""
    group: list[MailboxMessage] = []
    size = 0
    for mm in messages:
        group.append(mm)
        size += len(mm.raw) if mm.raw is not None else 0
        if len(group) >= count or size >= budget:
            yield group
            group, size = [], 0
    if group:
        yield group


# A message at least this large is written to SQLite in pieces (`_insert_blobs`).
_BLOB_PIECE = 1 << 20


def _insert_blobs(conn: Connection, blobs: list[dict[str, Any]]) -> None:
    """Store messages' bytes ({"inbound_id", "raw"} each). On SQLite a large one is inserted as
    zeros and then written in pieces (incremental blob I/O): bound as a parameter, it would be
    copied whole into SQLite's memory, and a 25 MB attachment would need twice its size."""
    raw_conn = conn.connection.dbapi_connection if conn.dialect.name == "sqlite" else None
    small: list[dict[str, Any]] = []
    large: list[dict[str, Any]] = []
    for blob in blobs:
        piecewise = raw_conn is not None and len(blob["raw"]) >= _BLOB_PIECE
        (large if piecewise else small).append(blob)
    if small:
        conn.execute(insert(_BLOB), small)
    for blob in large:
        assert isinstance(raw_conn, sqlite3.Connection)
        data = memoryview(blob["raw"])
        conn.execute(
            insert(_BLOB).values(inbound_id=blob["inbound_id"], raw=func.zeroblob(len(data)))
        )
        # inbound_id, the INTEGER PRIMARY KEY, is the table's rowid.
        with raw_conn.blobopen(_BLOB.name, "raw", blob["inbound_id"]) as out:
            for start in range(0, len(data), _BLOB_PIECE):
                out.write(data[start : start + _BLOB_PIECE])


class _Skip:
    """The locations a pass leaves alone: those in the ledger, and those of other shares."""

    def __init__(self, known: frozenset[str], share: Share | None) -> None:
        self.known, self.share = known, share

    def __contains__(self, location: object) -> bool:
        if location in self.known:
            return True
        return self.share is not None and not self.share.owns(str(location))


# Starts a helper process that runs `poll_share(share)` for the same mailbox and prints its
# summary (`PollSummary.to_json`) as the last line of its standard output.
HelperLauncher = Callable[[Share], "subprocess.Popen[bytes]"]


@dataclass
class _Verdict:
    """What the stages before the decision transaction concluded."""

    outcome: Outcome
    detail: str
    parsed: ParsedMessage | None = None
    reply_to: str | None = None  # the authenticated From address, when a reply may be sent
    sender_urns: frozenset[str] = frozenset()
    forms: list[forms_pkg.ExtractedForm] = field(default_factory=list)


class StageError(Exception):
    def __init__(self, stage: str, exc: BaseException):
        super().__init__(f"{stage} failed: {type(exc).__name__}")
        self.stage = stage


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _folder_for(settings: Settings, outcome: Outcome) -> str:
    mb = settings.mailbox
    if outcome is Outcome.PROCESSED:
        return mb.processed_folder
    if outcome in (Outcome.UNAUTHENTICATED_SENDER, Outcome.QUARANTINED):
        return mb.quarantine_folder
    return mb.rejected_folder


class Pipeline:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        mailbox: Mailbox,
        transport: Transport,
        *,
        rulebook: RuleBook | None = None,
        renderer: Renderer | None = None,
        schema: FormSchema | None = None,
        form_reader: FormReader | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        instance: str | None = None,
        scope: str = "default",
    ):
        self.engine = engine
        self.settings = settings
        self.scope = scope  # whose approved list (a [[mailboxes]] entry's name)
        self.mailbox = mailbox
        self.transport = transport
        self.rulebook = rulebook or default_rulebook()
        self.renderer = renderer or Renderer()
        self.schema = schema or default_schema()
        self.read_form: FormReader = form_reader or forms_pkg.read_form
        self.clock = clock
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.composer = Composer(settings, self.renderer)
        self.stop_requested = threading.Event()
        self._lease = dt.timedelta(seconds=settings.poller.lease_seconds)
        self.sent_total = 0  # replies and alerts this pipeline has handed to the transport
        # Set by the command line: how to start a helper process for a share of a backlog.
        self.launch_helper: HelperLauncher | None = None
        # The messages of the claim group (claimed by us) not yet sent ahead to the sandbox, in
        # order, each with whether its forms are to be read (worked out once).
        self._upcoming: deque[tuple[MailboxMessage, bool | None]] = deque()
        # Header facts of the claim group's messages, from the block read for their ledger rows,
        # for `_send_ahead` and then `_stages` (by the identity of their bytes).
        self._headers_seen: dict[int, tuple[bytes, ParsedMessage]] = {}
        # Within one claim group, whose schools each sender is approved for, for at most
        # _APPROVED_FOR seconds: the prefetch and the stages both ask, and a backlog tends to
        # come from few senders. A change to the list takes effect within those seconds.
        self._approved: dict[str, frozenset[str]] | None = None
        self._approved_until = 0.0
        # During a pass, the thread that sends decided messages' replies (`_finish`).
        self._sending: _SendingThread | None = None
        # During a pass, decisions commit without waiting for the disk; `_finish` makes them
        # durable, all at once, before it moves a message or sends a reply.
        self._defer_decisions = False
        # Held while the mailbox is used, by the poller (to file) and by the thread fetching
        # the next claim group (`_FetchAhead`): a mailbox serves one thread at a time.
        self._mailbox_lock = threading.Lock()

    # ---- one pass ------------------------------------------------------------------------

    def poll_once(self, progress: Callable[[str], None] | None = None) -> PollSummary:
        """One pass: everything new in the watched folder to a filed, answered outcome.

        A backlog of at least `poller.parallel_from` messages is split between this process
        and `poller.workers - 1` helper processes (form reading is CPU-bound, and each process
        has its own sandbox worker); then one closing sweep here takes whatever is left.
        """
        summary = PollSummary()
        sent_before = self.sent_total
        started = time.monotonic()
        helpers: list[subprocess.Popen[bytes]] = []
        try:
            self.refile_decided()
            known = self._known_locations()
            shares = self._shares(known)
            helpers = self._start_helpers(shares)
            share = Share(0, shares) if helpers else None
            self._handle_all(self.mailbox.fetch_new(_Skip(known, share)), summary, progress)
            if helpers:
                self._join_helpers(helpers, summary)
                helpers = []
                if not self.stop_requested.is_set():
                    fresh = self.mailbox.fetch_new(self._known_locations())
                    self._handle_all(fresh, summary, progress)
            self._record_poll(None, time.monotonic() - started, summary.new)
        except MailboxError as exc:
            summary.errors.append(str(exc))
            log.error("mailbox_error", error=str(exc))
            self._record_poll(exc, None, summary.new)
        finally:
            if helpers:  # this pass failed: stop them too
                self._join_helpers(helpers, summary, stop=True)
        _sent, summary.replies_waiting = self.drain_outbox()
        summary.replies_sent += self.sent_total - sent_before
        return summary

    def poll_share(
        self, share: Share, progress: Callable[[str], None] | None = None
    ) -> PollSummary:
        """A helper's pass: only the new messages of `share`; the parent records the poll."""
        summary = PollSummary()
        try:
            known = self._known_locations()
            self._handle_all(self.mailbox.fetch_new(_Skip(known, share)), summary, progress)
        except MailboxError as exc:
            summary.errors.append(str(exc))
            log.error("mailbox_error", error=str(exc))
        summary.replies_sent = self.sent_total
        return summary

    def _handle_all(
        self,
        messages: Iterable[MailboxMessage],
        summary: PollSummary,
        progress: Callable[[str], None] | None,
    ) -> None:
        """Decide each message; file and answer them a few at a time (one MOVE per folder)."""
        batch: list[_Decided] = []
        started = 0.0
        # Well inside the lease that keeps other instances off decided messages and their replies.
        max_age = self.settings.poller.lease_seconds / 4
        self._sending = _SendingThread(self._send_decided) if self._threads_share_db else None
        self._defer_decisions = True
        groups = _FetchAhead(
            messages, self.settings.poller.file_batch, _GROUP_BYTES, self._mailbox_lock
        )
        try:
            try:
                current = self._claim_group(groups)
                while current is not None:
                    group, claims = current
                    current = None
                    groups.start()  # the next group is read from the mailbox meanwhile
                    # The next group, claimed while this one's last messages are decided, so the
                    # sandbox has them to start on while this group is filed and answered.
                    ahead: tuple[list[MailboxMessage], list[_Claim]] | None = None
                    ahead_error: Exception | None = None
                    looked_ahead = False
                    begun = 0  # how many of the group have been started
                    self._approved, self._approved_until = {}, time.monotonic() + _APPROVED_FOR
                    try:
                        for k, (mm, claim) in enumerate(zip(group, claims, strict=True)):
                            if self.stop_requested.is_set():
                                break
                            if not looked_ahead and len(group) - k <= _LOOK_AHEAD:
                                looked_ahead = True
                                try:
                                    ahead = self._claim_group(groups)
                                except Exception as exc:  # raised once this group is done
                                    log.warning("next_group_failed", error=type(exc).__name__)
                                    ahead_error = exc
                            begun = k + 1
                            summary.new += 1
                            decided = self._decide(
                                mm, self._claim(mm) if isinstance(claim, _Later) else claim
                            )
                            if decided is None:
                                continue
                            if not batch:
                                started = time.monotonic()
                            batch.append(decided)
                            summary.done += 1
                            summary.outcomes[decided.outcome.value] += 1
                            if progress:
                                progress(f"message {summary.done}: {decided.outcome.value}")
                            full = len(batch) >= self.settings.poller.file_batch
                            if full or time.monotonic() - started > max_age:
                                done, batch = batch, []
                                self._finish(done)
                                error = self._sending.error if self._sending else None
                                if error is not None:
                                    raise error  # the replies stopped going out
                        if not self.stop_requested.is_set():
                            current, ahead = ahead, None
                    finally:
                        # Claims not started (a stop, or an error escaping the message before),
                        # this group's and the next's, go back at once rather than waiting out
                        # their lease.
                        unstarted = claims[begun:] + (ahead[1] if ahead is not None else [])
                        self._give_back([c for c in unstarted if _fresh(c)])
                        self._approved = None
                        if current is None:  # the pass ends here
                            failing = sys.exc_info()[0] is not None
                            self._end_group_plan(abandon=failing or self.stop_requested.is_set())
                    if ahead_error is not None:
                        raise ahead_error
            finally:  # decided ones are filed and answered whatever stopped the loop
                self._defer_decisions = False
                try:
                    groups.close()
                finally:
                    if batch:
                        done, batch = batch, []
                        self._finish(done)
        except BaseException as exc:
            self._end_sending(exc)
            raise
        self._end_sending(None)

    def _claim_group(self, groups: _FetchAhead) -> tuple[list[MailboxMessage], list[_Claim]] | None:
        """Fetch the next group and claim it (one transaction); its new messages join the queue
        of those to send ahead to the sandbox. None when the mailbox has no more."""
        group = groups.take()
        if group is None:
            return None
        headers: dict[int, Message] = {}
        # A message known already is claimed on its own when its turn comes, even in a group of
        # one: taking over a lapsed claim ahead of its turn would spend one of its attempts.
        claims = self._claim_many(group, headers, later_if_known=True)
        prefetch = getattr(self.read_form, "prefetch", None)
        for mm, claim in zip(group, claims, strict=True):
            if _fresh(claim) and mm.raw is not None and prefetch is not None:
                self._upcoming.append((mm, None))
                block = headers.get(id(mm.raw))  # read for the ledger row
                # Its facts, for `_send_ahead` and the stages; should working them out fail, the
                # message's own pass through the stages will say what is wrong.
                with contextlib.suppress(Exception):
                    if block is not None:
                        self._headers_seen[id(mm.raw)] = (mm.raw, parse_headers(mm.raw, block))
        return group, claims

    def _end_group_plan(self, *, abandon: bool = False) -> None:
        """The pass's plan ends (the last group done, a stop, an error): nothing sent ahead or
        queued to be stays behind for a later message. On a stop or an error (`abandon`), the
        sandbox worker still owing answers is killed rather than waited for."""
        self._upcoming.clear()
        self._headers_seen.clear()
        discard = getattr(self.read_form, "discard", None)
        if discard is not None:
            discard(kill=abandon)  # what was sent ahead and never asked for, if anything

    def _end_sending(self, propagating: BaseException | None) -> None:
        """Wait until the sending thread has sent every reply handed to it. What stopped it is
        raised here, unless the pass is already ending with an exception of its own (which is
        the one to report; the sender's is logged)."""
        sending, self._sending = self._sending, None
        error = sending.close() if sending is not None else None
        if error is None or error is propagating:
            return
        if propagating is None:
            raise error
        log.error("sending_failed", error=type(error).__name__)

    @functools.cached_property
    def _threads_share_db(self) -> bool:
        """Whether a second thread may use the database alongside the poller's: not with an
        in-memory SQLite database (each thread would see its own, or share one connection)."""
        if isinstance(self.engine.pool, SingletonThreadPool | StaticPool):
            return False
        url = self.engine.url
        database = str(url.database or "")
        in_memory = database in ("", ":memory:") or "mode=memory" in str(url)
        return not (url.get_backend_name() == "sqlite" and in_memory)

    # ---- sharing a backlog between processes -----------------------------------------------

    def _shares(self, known: frozenset[str]) -> int:
        """How many processes this pass should use: one unless the backlog is worth splitting."""
        workers = self.settings.poller.workers
        if workers < 2 or self.launch_helper is None:
            return 1
        backlog = len(self.mailbox.pending(known))
        if backlog < self.settings.poller.parallel_from:
            return 1
        return workers

    def _start_helpers(self, shares: int) -> list[subprocess.Popen[bytes]]:
        if shares < 2 or self.launch_helper is None:
            return []
        helpers = []
        for index in range(1, shares):
            try:
                helpers.append(self.launch_helper(Share(index, shares)))
            except Exception as exc:  # no helper: the closing sweep does its share here
                log.error("helper_start_failed", error=type(exc).__name__)
        log.info("backlog_shared", processes=len(helpers) + 1)
        return helpers

    def _join_helpers(
        self, helpers: list[subprocess.Popen[bytes]], summary: PollSummary, *, stop: bool = False
    ) -> None:
        """Wait for the helpers (each joined one is taken off the list), passing a stop request
        on to all of them at once; add each one's summary to ours."""
        asked = False
        while helpers:
            if (stop or self.stop_requested.is_set()) and not asked:
                for proc in helpers:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)  # it finishes the message in hand
                asked = True
            proc = helpers[0]
            try:
                out, _ = proc.communicate(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
            helpers.pop(0)
            last = out.decode("utf-8", "replace").strip().splitlines()[-1:] if out else []
            if not last:  # what it left, the closing sweep takes
                log.error("helper_failed", status=proc.returncode)
                continue
            summary.add_json(last[0])

    def _in_watched_folder(self) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
        """The ledger rows of this mailbox's watched folder."""
        return (
            col(InboundMessage.account) == self.mailbox.account,
            col(InboundMessage.folder) == self.mailbox.folder,
        )

    def _known_locations(self) -> frozenset[str]:
        """Locations in the watched folder that a pass need not download again.

        Filed ones count too: on a server with neither MOVE nor UIDPLUS a filed original stays
        behind flagged \\Deleted (we never EXPUNGE other UIDs), and must not come round again.
        """
        now = self.clock()
        with Session(self.engine) as s:
            rows = s.exec(
                select(
                    InboundMessage.location, InboundMessage.state, InboundMessage.lease_until
                ).where(*self._in_watched_folder())
            ).all()
        return frozenset(
            loc
            for loc, state, lease in rows
            if state != MessageState.CLAIMED or (lease is not None and lease > now)
        )

    def _record_poll(
        self, error: MailboxError | None, duration: float | None, backlog: int
    ) -> None:
        now = self.clock()
        try:
            with session_scope(self.engine) as s:
                row = s.get(PollerStatus, self.mailbox.account) or PollerStatus(
                    account=self.mailbox.account
                )
                row.last_backlog = backlog
                if error is None:
                    row.last_success_at, row.auth_failing = now, False
                    row.last_duration_seconds = duration
                else:
                    row.last_error_at, row.last_error = now, str(error)[:500]
                    row.auth_failing = isinstance(error, MailboxAuthError)
                s.add(row)
        except IntegrityError:
            pass  # another instance wrote it at the same moment

    # ---- one message ---------------------------------------------------------------------

    def handle(self, mm: MailboxMessage) -> Outcome | None:
        """Take one message from the mailbox to a committed, filed outcome. Never raises for
        anything the message contains; returns None when the message is not ours to handle now
        (another instance holds it)."""
        decided = self._decide(mm, self._claim(mm))
        if decided is None:
            return None
        self._finish([decided])
        return decided.outcome

    def _decide(self, mm: MailboxMessage, claim: tuple[int, bool] | None) -> _Decided | None:
        """Judge a message we claimed (`_claim`) and commit the decision (with its replies,
        claimed by us)."""
        bound = structlog.contextvars.bound_contextvars
        forget_sensitive()
        if claim is None:
            return None
        row_id, fresh = claim
        with bound(ledger_id=row_id):
            try:
                return self._process_claimed(row_id, mm, fresh)
            finally:
                forget_sensitive()

    def _finish(self, batch: list[_Decided]) -> None:
        """File decided messages (one move per folder), then send each one's replies: here, or
        during a pass on the sending thread (`_SendingThread`) while the next ones are decided.
        Each delivery is recorded as soon as it is made, so a crash re-sends at most one email."""
        if self._sending is not None and self._sending.error is not None:
            return  # the replies stopped going out: these stay decided, for the next pass
        batch = self._hold_for_filing(batch)
        by_folder: dict[str, list[_Decided]] = {}
        for d in batch:
            by_folder.setdefault(d.folder, []).append(d)
        filed: list[tuple[int, str]] = []
        for folder, group in by_folder.items():
            try:
                with self._mailbox_lock:
                    self.mailbox.file_many([d.location for d in group], folder)
            except MailboxError as exc:
                log.warning("file_failed", error=str(exc), count=len(group))
                continue  # still DECIDED: the next pass files them
            filed.extend((d.row_id, folder) for d in group)
        if self._sending is None:
            self._send_decided(batch, filed)
            return
        # With a sending thread, the messages are recorded as filed here and now: never behind
        # replies still waiting to go.
        self._record([], filed=filed)
        self._sending.put(batch)

    def _hold_for_filing(self, batch: list[_Decided]) -> list[_Decided]:
        """Those of `batch` still ours, their claims renewed in a transaction that waits for the
        disk. It takes every decision before it to the disk too (a pass's decisions do not wait
        for it, `defer_durability`), so no message is moved and no reply sent on a decision a
        power cut could still undo. A message whose claim has run out and been taken over is
        left to the instance holding it (two MOVEs of one UID can leave two copies)."""
        if not batch:
            return batch
        now = self.clock()
        with self.engine.begin() as conn:
            wait_for_the_disk(conn)
            held = set(
                conn.execute(
                    _HOLD_FOR_FILING,
                    {
                        "ids": [d.row_id for d in batch],
                        "instance": self.instance,
                        "now": now,
                        "lease": now + self._lease,
                    },
                ).scalars()
            )
        if len(held) < len(batch):
            log.warning("claim_lost", count=len(batch) - len(held))
        return [d for d in batch if d.row_id in held]

    def _send_decided(
        self,
        batch: list[_Decided],
        filed: list[tuple[int, str]],
        abandon: threading.Event | None = None,
    ) -> None:
        """Send filed messages' replies, recording each delivery (and, with the first, which
        messages were filed) as soon as it is made; with `abandon` set, stop after the one in
        hand (the rest stay pending, claimed, for the outbox to send)."""
        for d in batch:
            for e in d.emails:
                if abandon is not None and abandon.is_set():
                    break
                if not self._still_ours(e):
                    continue  # our claim ran out and another instance has taken it
                self._record([self._deliver(e)], filed=filed)
                filed = []
        self._record([], filed=filed)

    def _still_ours(self, email: OutboundEmail) -> bool:
        """True while the claim written with the decision holds; renewed once half spent."""
        now = self.clock()
        if now < email.next_attempt_at - self._lease / 2:
            return True
        with session_scope(self.engine) as s:
            renewed = s.execute(
                update(OutboundEmail)
                .where(col(OutboundEmail.id) == email.id)
                .where(col(OutboundEmail.state) == OutboundState.PENDING)
                .where(col(OutboundEmail.attempts) == email.attempts)
                .values(next_attempt_at=now + self._lease)
            )
        return bool(renewed.rowcount == 1)  # type: ignore[attr-defined]

    def _claim(self, mm: MailboxMessage) -> tuple[int, bool] | None:
        """(ledger id, whether the row is new) once this instance holds the message."""
        claim = self._claim_many([mm])[0]
        assert not isinstance(claim, _Later)  # one message alone is claimed or not, at once
        return claim

    def _claim_many(
        self,
        mms: list[MailboxMessage],
        headers: dict[int, Message] | None = None,
        *,
        later_if_known: bool = False,
    ) -> list[_Claim]:
        """Claim several messages in one transaction: for each, (ledger id, whether the row is
        new) once this instance holds it, or None. Should any of them be known already (a
        unique key says so), nothing is claimed and each is `_LATER`: to be claimed on its
        own (`_claim`) when its turn comes; so is a message alone, with `later_if_known`.
        `headers` receives each message's header block as read for its ledger row (by the
        identity of its bytes)."""
        now = self.clock()
        rows = [self._ledger_row(mm, now, headers) for mm in mms]
        try:
            with self.engine.begin() as conn:
                ids = list(conn.execute(_INSERT_LEDGER, rows).scalars())
                blobs = [
                    {"inbound_id": row_id, "raw": mm.raw}
                    for row_id, mm in zip(ids, mms, strict=True)
                    if mm.raw is not None
                ]
                _insert_blobs(conn, blobs)
        except IntegrityError:
            if len(mms) > 1 or later_if_known:
                # One of them is known already: each is claimed on its own when its turn comes,
                # so a message that keeps failing never holds the ones after it.
                return [_LATER] * len(mms)
            taken = self._claim_existing(mms[0], rows[0]["dedupe_key"])
            return [None if taken is None else (taken, False)]
        return [(row_id, True) for row_id in ids]

    def _ledger_row(
        self, mm: MailboxMessage, now: dt.datetime, keep: dict[int, Message] | None = None
    ) -> dict[str, Any]:
        if mm.raw is None:
            sha, message_id, sender = "", None, None
            dedupe = f"oversize:{self.mailbox.account}:{self.mailbox.folder}:{mm.location}"
        else:
            sha = _digest(mm.raw)
            try:
                headers = read_headers(mm.raw)
                if keep is not None:
                    keep[id(mm.raw)] = headers
                message_id = normalise_message_id(headers.get("Message-ID"))
                sender = first_address(" ".join(str(v) for v in headers.get_all("From", [])))
            except Exception:  # hostile headers: identify the message by its bytes alone
                message_id, sender = None, None
            dedupe = f"mid:{message_id} from:{sender}" if message_id else f"sha256:{sha}"
        return new_row(
            InboundMessage,
            account=self.mailbox.account,
            folder=self.mailbox.folder,
            location=mm.location,
            dedupe_key=dedupe[:900],
            message_id=message_id[:900] if message_id else None,
            sha256=sha,
            size=mm.size,
            sender=sender,
            received_at=now,
            state=MessageState.CLAIMED,
            attempts=1,
            claimed_by=self.instance,
            lease_until=now + self._lease,
        )

    def _give_back(self, claims: list[tuple[int, bool]]) -> None:
        """Give back messages claimed with a group but never started, as if never claimed: the
        next pass, ours or another instance's, takes them at once. Only rows still claimed by
        us are touched (locked first, so no one takes one over meanwhile); should the database
        fail here, their lease runs out instead."""
        row_ids = [row_id for row_id, _ in claims]
        if not row_ids:
            return
        try:
            with self.engine.begin() as conn:
                mine = list(
                    conn.execute(
                        update(_IN)
                        .where(_IN.c.id.in_(row_ids))
                        .where(_IN.c.state == MessageState.CLAIMED)
                        .where(_IN.c.claimed_by == self.instance)
                        .values(lease_until=None)
                        .returning(_IN.c.id)
                    ).scalars()
                )
                if mine:
                    conn.execute(delete(_BLOB).where(_BLOB.c.inbound_id.in_(mine)))
                    conn.execute(delete(_IN).where(_IN.c.id.in_(mine)))
        except Exception as exc:
            log.warning("give_back_failed", error=type(exc).__name__, count=len(row_ids))

    def _claim_existing(self, mm: MailboxMessage, dedupe: str) -> int | None:
        now = self.clock()
        with Session(self.engine) as s:
            same_place = s.exec(
                select(InboundMessage)
                .where(*self._in_watched_folder())
                .where(InboundMessage.location == mm.location)
            ).first()
            original = (
                same_place
                or s.exec(
                    select(InboundMessage).where(InboundMessage.dedupe_key == dedupe[:900])
                ).first()
            )
        if original is None:
            return None  # lost a race with a row that has since gone: next pass sees it
        assert original.id is not None
        if original.state != MessageState.CLAIMED:
            # Decided already: this is the same message again (a re-delivered copy, or our own
            # copy whose filing did not finish). File it where the original went; no reply.
            assert original.outcome is not None
            if same_place is not None and not self._may_file(original, now):
                return None  # its decider is filing it right now
            folder = original.filed_folder or _folder_for(self.settings, original.outcome)
            with structlog.contextvars.bound_contextvars(ledger_id=original.id):
                log.info("already_handled", copy=same_place is None, folder=folder)
                self._file(original.id, mm.location, folder, mark=same_place is not None)
            return None
        if same_place is None:
            return None  # a copy of a message another instance is deciding: next pass
        # Same place, still claimed: take it over only if the holder's lease has run out.
        with session_scope(self.engine) as s:
            taken = s.execute(
                update(InboundMessage)
                .where(col(InboundMessage.id) == original.id)
                .where(col(InboundMessage.state) == MessageState.CLAIMED)
                .where(col(InboundMessage.lease_until) < now)
                .values(
                    claimed_by=self.instance,
                    lease_until=now + self._lease,
                    attempts=InboundMessage.attempts + 1,
                )
            )
        return original.id if taken.rowcount == 1 else None  # type: ignore[attr-defined]

    def _process_claimed(self, row_id: int, mm: MailboxMessage, fresh: bool) -> _Decided | None:
        raw, attempts, location = mm.raw, 1, mm.location
        if not fresh:  # taken over: count the attempts, and the bytes may be in the ledger only
            with Session(self.engine) as s:
                row = s.get(InboundMessage, row_id)
                assert row is not None
                attempts, location = row.attempts, row.location
                if raw is None and row.size <= self.settings.mailbox.max_message_bytes:
                    blob = s.get(MessageBlob, row_id)
                    raw = blob.raw if blob else None
        if attempts > self.settings.poller.max_attempts:
            verdict = _Verdict(
                Outcome.QUARANTINED, f"processing did not finish after {attempts - 1} attempts"
            )
        elif raw is None:
            verdict = _Verdict(Outcome.QUARANTINED, "message larger than the configured limit")
        else:
            self._send_ahead(mm)
            try:
                verdict = self._judge(raw)
            except _Retry:
                return None  # still claimed: taken up again once the lease has run out
        self._send_ahead()
        emails = self._commit_decision(row_id, verdict)
        if emails is None:
            return None
        log.info("decided", outcome=verdict.outcome.value, detail=verdict.detail)
        folder = _folder_for(self.settings, verdict.outcome)
        return _Decided(row_id, location, folder, verdict.outcome, emails)

    # ---- a person's second look -----------------------------------------------------------

    def release(self, row_id: int, *, trust_sender: bool = False) -> Outcome:
        """Process a quarantined message again from its stored bytes (after a fix such as adding
        an approved contact). `trust_sender` skips the Authentication-Results check: a person
        has vouched for the sender. The mailbox copy stays where it was filed."""
        now = self.clock()
        with session_scope(self.engine) as s:
            taken = s.execute(
                update(InboundMessage)
                .where(col(InboundMessage.id) == row_id)
                .where(col(InboundMessage.state) == MessageState.FILED)
                .where(col(InboundMessage.outcome).in_(QUARANTINE_OUTCOMES))
                .where(col(InboundMessage.review).is_(None))
                .values(
                    state=MessageState.CLAIMED,
                    claimed_by=self.instance,
                    lease_until=now + self._lease,
                )
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                raise ReleaseError("not a quarantined message awaiting review")
            blob = s.get(MessageBlob, row_id)
        if blob is None:
            self._unclaim_filed(row_id)
            raise ReleaseError("the original bytes were not kept (oversized message)")
        with structlog.contextvars.bound_contextvars(ledger_id=row_id):
            forget_sensitive()
            try:
                verdict = self._judge(blob.raw, trust_sender=trust_sender)
                emails = self._commit_decision(row_id, verdict) or []
            except _Retry:
                self._unclaim_filed(row_id)
                raise ReleaseError("the form reader is unavailable; try again later") from None
            finally:
                forget_sensitive()
            log.info("released", outcome=verdict.outcome.value)
        with session_scope(self.engine) as s:
            s.execute(
                update(InboundMessage)
                .where(col(InboundMessage.id) == row_id)
                .values(state=MessageState.FILED, filed_at=self.clock())
            )
        for e in emails:
            self._record([self._deliver(e)], filed=[])
        return verdict.outcome

    def _unclaim_filed(self, row_id: int) -> None:
        with session_scope(self.engine) as s:
            s.execute(
                update(InboundMessage)
                .where(col(InboundMessage.id) == row_id)
                .values(state=MessageState.FILED, claimed_by=None, lease_until=None)
            )

    # ---- the stages before the decision --------------------------------------------------

    def _judge(self, raw: bytes, *, trust_sender: bool = False) -> _Verdict:
        try:
            return self._stages(raw, trust_sender=trust_sender)
        except StageError as exc:
            if isinstance(exc.__cause__, ReaderUnavailable):
                # Not the message's fault (the sandbox could not start): try it again later.
                log.error("reader_unavailable", error=str(exc.__cause__))
                raise _Retry from None
            log.error("stage_failed", stage=exc.stage, error=str(exc))
            return self._quarantine_verdict(raw, str(exc))

    def _stage(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # contain the failure to this message
            raise StageError(name, exc) from exc

    def _stages(self, raw: bytes, *, trust_sender: bool = False) -> _Verdict:
        # With the sandboxed reader the MIME walk runs in the sandbox (memory- and CPU-limited,
        # off this process's core) and only the header block is parsed here; the forms are read
        # there too, but only for a genuine, approved sender. Outcomes and their order are those
        # of the in-process path: a message that cannot be parsed is quarantined first.
        reader = self.read_form
        whole = cast(MessageReader, reader) if hasattr(reader, "read_message") else None
        try:
            parsed: ParsedMessage = self._stage(
                "parse", lambda: self._headers_of(raw) if whole else parse_message(raw)
            )
        except StageError as exc:
            if isinstance(exc.__cause__, ParseError):
                return self._quarantine_verdict(raw, str(exc.__cause__))
            raise
        reason = self._stage("automatic", lambda: automatic_reason(parsed, self._own_addresses))
        auth = self.settings.sender_auth
        if trust_sender:
            auth = auth.model_copy(update={"require": False})
        verdict = None if reason else self._stage("sender", lambda: authenticate(parsed, auth))
        sender = parsed.sender
        urns: frozenset[str] = frozenset()
        if verdict is not None and verdict.genuine:
            assert sender is not None
            urns = self._stage("approved", lambda: self._schools(sender))
        extraction: Extraction | None = None
        if whole is not None:
            limits, wanted = self.settings.limits, bool(urns)
            try:
                extraction = self._stage(
                    "parse", lambda: whole.read_message(raw, limits, forms=wanted)
                )
            except StageError as exc:
                if isinstance(exc.__cause__, ParseError):
                    return self._quarantine_verdict(raw, str(exc.__cause__))
                raise
        if reason:
            return _Verdict(Outcome.AUTO_REPLY_IGNORED, reason, parsed)
        assert verdict is not None
        if not verdict.genuine:
            return _Verdict(Outcome.UNAUTHENTICATED_SENDER, verdict.why, parsed)
        assert sender is not None
        if not urns:
            return _Verdict(Outcome.UNAPPROVED_SENDER, "not on the approved list", parsed, sender)
        if extraction is None:
            extraction = self._stage(
                "extract",
                lambda: extract_forms(parsed.attachments, self.read_form, self.settings.limits),
            )
        for form in extraction.forms:
            remember_sensitive(v for k, v in form.fields.items() if k in self.schema.personal_ids)
        if extraction.unreadable:
            detail = "; ".join(extraction.unreadable)
            return _Verdict(Outcome.QUARANTINED, detail, parsed, sender, urns)
        if not extraction.forms:
            return _Verdict(Outcome.NO_FORM, "no referral form attached", parsed, sender, urns)
        return _Verdict(
            Outcome.PROCESSED, f"{len(extraction.forms)} form(s)", parsed, sender, urns,
            extraction.forms,
        )  # fmt: skip

    def _send_ahead(self, in_hand: MailboxMessage | None = None) -> None:
        """Let the sandbox start on the coming messages of the group while this one is judged
        and its decision written, as many as it takes (`SandboxedReader.prefetch`): it never
        waits between messages for the poller.

        Each is asked exactly what `_stages` will ask of it (forms only for a genuine, approved
        sender), so `read_message` then finds the answer waiting; anything else is simply asked
        again there. `in_hand`, about to be judged, is sent if it is next; if it is still
        waiting after that (no room), it is asked directly and never sent ahead after."""
        prefetch = getattr(self.read_form, "prefetch", None)
        while prefetch is not None and self._upcoming:
            mm, wanted = self._upcoming[0]
            if wanted is None and mm.raw is not None:
                try:
                    seen = self._headers_seen.get(id(mm.raw))
                    parsed = seen[1] if seen and seen[0] is mm.raw else parse_headers(mm.raw)
                    self._headers_seen[id(mm.raw)] = (mm.raw, parsed)
                    wanted = self._genuine_and_approved(parsed)
                except Exception:  # its own pass through the stages will say what is wrong
                    wanted = None
                self._upcoming[0] = (mm, wanted)
            if mm.raw is None or wanted is None:
                self._upcoming.popleft()
                continue
            if not prefetch(mm.raw, self.settings.limits, forms=wanted):
                break  # no room: more once an answer has been collected
            self._upcoming.popleft()
        if in_hand is not None and self._upcoming and self._upcoming[0][0] is in_hand:
            self._upcoming.popleft()

    def _headers_of(self, raw: bytes) -> ParsedMessage:
        """The header facts of `raw`: as parsed when it was sent ahead, or parsed now."""
        seen = self._headers_seen.pop(id(raw), None)
        if seen is not None and seen[0] is raw:
            return seen[1]
        return parse_headers(raw)

    def _genuine_and_approved(self, parsed: ParsedMessage) -> bool:
        """Not automatic mail, from a sender shown genuine and on the approved list: the one
        case in which forms are read and a reply may be sent (`_stages` decides it step by
        step, naming the stage that fails)."""
        return bool(
            automatic_reason(parsed, self._own_addresses) is None
            and authenticate(parsed, self.settings.sender_auth).genuine
            and parsed.sender
            and self._schools(parsed.sender)
        )

    @property
    def _own_addresses(self) -> frozenset[str]:
        """Mail from these is our own and never answered."""
        return frozenset({self.settings.outbound.from_address.lower()})

    def _schools(self, sender: str) -> frozenset[str]:
        known = self._approved
        if known is not None and time.monotonic() > self._approved_until:
            known.clear()
            self._approved_until = time.monotonic() + _APPROVED_FOR
        if known is not None and sender in known:
            return known[sender]
        with Session(self.engine) as s:
            urns = schools_of(s, sender, self.scope)
        if known is not None:
            known[sender] = urns
        return urns

    def _quarantine_verdict(self, raw: bytes, detail: str) -> _Verdict:
        """Quarantine; acknowledge only to a sender shown genuine and approved."""
        reply_to: str | None = None
        parsed: ParsedMessage | None = None
        try:
            parsed = parse_headers(raw)
            if self._genuine_and_approved(parsed):
                reply_to = parsed.sender
        except Exception as exc:  # even the headers are hostile: no acknowledgement
            log.warning("quarantine_headers_unreadable", error=type(exc).__name__)
        return _Verdict(Outcome.QUARANTINED, detail, parsed, reply_to)

    # ---- the decision transaction --------------------------------------------------------

    def _commit_decision(self, row_id: int, verdict: _Verdict) -> list[OutboundEmail] | None:
        """Write the decision; the emails it queued (claimed by us), or None if the claim was
        lost."""
        today = self.clock().date()
        ensure_counter(self.engine, today.year)
        try:
            return self._write_decision(row_id, verdict, today)
        except _LostClaim:
            log.warning("claim_lost")
            return None
        except Exception as exc:
            if verdict.outcome is Outcome.QUARANTINED:
                raise  # nothing simpler left to write: let the lease expire and retry
            log.error("decide_failed", error=type(exc).__name__)
            fallback = _Verdict(
                Outcome.QUARANTINED,
                f"decide failed: {type(exc).__name__}",
                verdict.parsed,
                verdict.reply_to,
            )
            return self._write_decision(row_id, fallback, today)

    def _write_decision(
        self, row_id: int, verdict: _Verdict, today: dt.date
    ) -> list[OutboundEmail]:
        now = self.clock()
        queued: list[OutboundEmail] = []
        # A Core connection, not an ORM Session: every statement here is Core, and a Session
        # cost ~0.17 ms more per decision.
        with self.engine.begin() as conn:
            if self._defer_decisions:
                defer_durability(conn)  # made durable by `_finish`, before filing
            moved = conn.execute(
                _MARK_DECIDED,
                {
                    "row_id": row_id,
                    "instance": self.instance,
                    "b_outcome": verdict.outcome,
                    "b_detail": verdict.detail[:1000],
                    "at": now,
                    "b_subject": verdict.parsed.subject[:998] if verdict.parsed else None,
                    # The lease is kept until filing: no other instance files it meanwhile
                    # (two concurrent MOVEs of one UID can leave two copies on some servers).
                    "lease": now + self._lease,
                },
            )
            if moved.rowcount != 1:
                raise _LostClaim
            parsed = verdict.parsed
            context: dict[str, Any] = {"outcome": verdict.outcome.value}
            if verdict.outcome is Outcome.PROCESSED:
                assert parsed is not None
                outcomes = decide_forms(
                    conn,
                    inbound_id=row_id,
                    source_message_id=parsed.message_id,
                    forms=verdict.forms,
                    sender_urns=verdict.sender_urns,
                    rulebook=self.rulebook,
                    settings=self.settings,
                    today=today,
                )
                context["forms"] = reply_forms_context(outcomes)
                context["any_safeguarding"] = any(o.result.safeguarding_alert for o in outcomes)
                queued.extend(self._safeguarding_alerts(row_id, outcomes))
            template = outcome_template(verdict.outcome)
            if template and verdict.reply_to and parsed is not None:
                # A loop between robots never carries a valid referral form, so replies about
                # forms are never capped: a school may send many referrals in an hour.
                capped = verdict.outcome is not Outcome.PROCESSED
                if not capped or self._reply_allowed(conn, verdict.reply_to, now):
                    subject = safe_subject(parsed.subject, verdict.forms, self.schema)
                    context["subject"] = reply_subject_base(subject)
                    email = self.composer.outbound(
                        template,
                        context,
                        [verdict.reply_to],
                        "reply",
                        row_id,
                        Threading(parsed.message_id, parsed.references),
                    )
                    queued.append(email)
                else:
                    log.warning("reply_rate_limited")
            # Claimed by this instance, as `_send_one` would: sent right after filing. Should we
            # die first, anyone sends them once the lease has run out.
            for email in queued:
                email.attempts, email.next_attempt_at = 1, now + self._lease
                email.id = conn.execute(_INSERT_OUTBOUND, row_values(email)).scalar_one()
        return queued

    def _safeguarding_alerts(self, row_id: int, outcomes: list[Any]) -> list[OutboundEmail]:
        alerts = [o for o in outcomes if o.result.safeguarding_alert]
        if not alerts:
            return []
        to = list(self.settings.safeguarding.alert_to)
        if not to:
            log.error("safeguarding_alert_not_configured")
            return []
        context = {
            "alerts": [
                {
                    "reference": o.reference,
                    "result": o.kind.value,
                    "school_name": o.result.values.get("school_name", ""),
                    "school_urn": o.result.values.get("school_urn", ""),
                    "referrer_name": o.result.values.get("referrer_name", ""),
                    "referrer_phone": o.result.values.get("referrer_phone", ""),
                    "referrer_email": o.result.values.get("referrer_email", ""),
                    "ledger_id": row_id,
                }
                for o in alerts
            ]
        }
        alert = self.composer.outbound("safeguarding_alert", context, to, "safeguarding_alert",
                                       row_id, None)  # fmt: skip
        log.warning("safeguarding_alert_queued", count=len(alerts))
        return [alert]

    def _reply_allowed(self, conn: Connection, to: str, now: dt.datetime) -> bool:
        """A per-sender cap on replies per hour (those not about forms), so two robots can never
        ping-pong."""
        since = now - dt.timedelta(hours=1)
        recent = conn.execute(
            select(func.count())
            .select_from(OutboundEmail)
            .join(InboundMessage, col(InboundMessage.id) == col(OutboundEmail.inbound_id))
            .where(OutboundEmail.kind == "reply")
            .where(col(OutboundEmail.created_at) >= since)
            .where(OutboundEmail.reply_to == to)
            .where(InboundMessage.outcome != Outcome.PROCESSED)
        ).scalar_one()
        return int(recent) < self.settings.poller.replies_per_sender_per_hour

    # ---- filing ---------------------------------------------------------------------------

    def _file(self, row_id: int, location: str, folder: str, *, mark: bool) -> None:
        # Its decision (or its original's) may have been committed without waiting for the disk
        # earlier in this pass: nothing moves on a decision a power cut could still undo.
        make_durable(self.engine)
        try:
            with self._mailbox_lock:
                self.mailbox.file(location, folder)
        except MailboxError as exc:
            log.warning("file_failed", error=str(exc))
            return  # still DECIDED: the next pass files it
        if mark:
            with session_scope(self.engine) as s:
                self._mark_filed(s, row_id, folder)

    def _mark_filed(self, s: Session, row_id: int, folder: str) -> None:
        s.connection().execute(
            _MARK_FILED, {"row_id": row_id, "b_folder": folder, "at": self.clock()}
        )

    def _may_file(self, row: InboundMessage, now: dt.datetime) -> bool:
        """A decided message is filed by its decider, or by anyone once that lease has run out."""
        if row.state != MessageState.DECIDED:
            return True
        return row.claimed_by == self.instance or row.lease_until is None or row.lease_until < now

    def refile_decided(self) -> None:
        now = self.clock()
        with Session(self.engine) as s:
            rows = s.exec(
                select(InboundMessage)
                .where(*self._in_watched_folder())
                .where(InboundMessage.state == MessageState.DECIDED)
            ).all()
        for row in rows:
            if not self._may_file(row, now):
                continue
            assert row.id is not None and row.outcome is not None
            self._file(row.id, row.location, _folder_for(self.settings, row.outcome), mark=True)

    # ---- sending (the transactional outbox) ------------------------------------------------

    def drain_outbox(self) -> tuple[int, int]:
        """Send what is due (retries, and replies whose sender died). Returns (sent now, still
        waiting)."""
        sent = 0
        for email_id in self._due():
            if self._send_one(email_id):
                sent += 1
        with Session(self.engine) as s:
            waiting = s.exec(
                select(func.count())
                .select_from(OutboundEmail)
                .where(OutboundEmail.state == OutboundState.PENDING)
            ).one()
        return sent, int(waiting)

    def _due(self) -> list[int]:
        now = self.clock()
        with Session(self.engine) as s:
            q = (
                select(OutboundEmail.id)
                .where(OutboundEmail.state == OutboundState.PENDING)
                .where(col(OutboundEmail.next_attempt_at) <= now)
                .order_by(col(OutboundEmail.id))
            )
            return [i for i in s.exec(q).all() if i is not None]

    def _send_one(self, email_id: int) -> bool:
        now = self.clock()
        # Claim it by pushing its next attempt past a lease: a second instance skips it.
        with session_scope(self.engine) as s:
            claimed = s.execute(
                update(OutboundEmail)
                .where(col(OutboundEmail.id) == email_id)
                .where(col(OutboundEmail.state) == OutboundState.PENDING)
                .where(col(OutboundEmail.next_attempt_at) <= now)
                .values(next_attempt_at=now + self._lease, attempts=OutboundEmail.attempts + 1)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return False
            email = s.get(OutboundEmail, email_id)
            assert email is not None
        result = self._deliver(email)
        self._record([result], filed=[])
        return result.state is OutboundState.SENT

    def _deliver(self, email: OutboundEmail) -> _Delivery:
        """Hand one email we hold the claim on to the transport; what to record about it."""
        email_id, attempts = email.id, email.attempts
        assert email_id is not None
        now = self.clock()
        sender = self.settings.outbound.from_address
        state, error, retry_at = OutboundState.SENT, None, now
        try:
            refused = self.transport.send(email.raw, sender, list(email.recipients))
            if refused:
                error = f"{len(refused)} recipient(s) refused"
        except TemporaryFailure as exc:
            error = str(exc)[:500]
            if attempts >= self.settings.outbound.max_attempts:
                state = OutboundState.FAILED
            else:
                state = OutboundState.PENDING
                base = self.settings.outbound.retry_base_seconds
                retry_at = now + dt.timedelta(seconds=min(base * 2 ** (attempts - 1), 3600))
        except PermanentFailure as exc:
            state, error = OutboundState.FAILED, str(exc)[:500]
        log.info("outbound", email_id=email_id, state=state.value, error=error)
        if state is OutboundState.SENT:
            self.sent_total += 1
        return _Delivery(email_id, attempts, state, error, retry_at)

    def _record(self, deliveries: list[_Delivery], *, filed: list[tuple[int, str]]) -> None:
        """One transaction: what became of these emails, and which messages were filed."""
        if not deliveries and not filed:
            return
        now = self.clock()
        with self.engine.begin() as conn:
            if filed:
                conn.execute(
                    _MARK_FILED,
                    [{"row_id": row_id, "b_folder": folder, "at": now} for row_id, folder in filed],
                )
            if deliveries:
                conn.execute(
                    _RECORD_DELIVERY,
                    [
                        {
                            "email_id": d.email_id,
                            "attempt": d.attempts,
                            "new_state": d.state,
                            "error": d.error,
                            "retry_at": d.retry_at,
                            "sent_at": now if d.state is OutboundState.SENT else None,
                        }
                        for d in deliveries
                    ],
                )


class _FetchAhead:
    """The claim groups of a pass, each read from the mailbox on a thread of its own while the
    poller decides the group before it (`start`, then `take`): the IMAP fetch waits on the
    network, and the poller and the sandbox worker go on meanwhile. One group at a time is
    read ahead, so no more messages are in memory than when the fetch waited in line. The
    thread holds `lock` for each message it reads (one IMAP command at most), so the poller,
    which holds it to file, waits for one command, never a whole group. A fetch's error is
    raised by `take`, in the poller, as the fetch's own would have been."""

    def __init__(
        self,
        messages: Iterable[MailboxMessage],
        count: int,
        budget: int,
        lock: threading.Lock,
    ) -> None:
        self._messages = iter(messages)
        self._lock = lock
        self._closing = threading.Event()
        self._groups = _groups(self._locked(), count, budget)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: concurrent.futures.Future[list[MailboxMessage] | None] | None = None

    def start(self) -> None:
        """Begin reading the next group, unless that has begun already."""
        if self._pending is not None:
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, "cme-fetch")
        # Log lines keep the pass's context (the mailbox).
        self._pending = self._executor.submit(contextvars.copy_context().run, self._next)

    def take(self) -> list[MailboxMessage] | None:
        """The next group (None when the mailbox has no more), waiting for it if need be."""
        self.start()
        assert self._pending is not None
        pending, self._pending = self._pending, None
        return pending.result()

    def close(self) -> None:
        """Stop a read in hand after the message it is reading (its group is not claimed, so a
        later pass has it) and wait for it: the mailbox is the poller's alone again."""
        self._closing.set()
        pending, self._pending = self._pending, None
        executor, self._executor = self._executor, None
        try:
            if pending is not None:
                concurrent.futures.wait([pending])
                error = pending.exception()
                if error is not None:  # never asked for: the next pass meets it again
                    log.info("read_ahead_dropped", error=type(error).__name__)
        finally:
            if executor is not None:
                executor.shutdown(wait=True)

    def _next(self) -> list[MailboxMessage] | None:
        return next(self._groups, None)

    def _locked(self) -> Iterator[MailboxMessage]:
        while not self._closing.is_set():
            with self._lock:
                mm = next(self._messages, None)
            if mm is None:
                return
            yield mm


@dataclass(frozen=True)
class _Decided:
    """A committed decision whose message is still to be filed and its emails sent."""

    row_id: int
    location: str
    folder: str
    outcome: Outcome
    emails: list[OutboundEmail]


class _SendingThread:
    """Sends the replies of filed batches on a thread of its own, one email at a time, while
    the poller decides the next messages: the SMTP exchange and the record of each delivery
    wait on the network and the disk, not on the poller's CPU. At most one batch waits behind
    the one being sent, so the poller never gets far ahead of its replies (their claims hold
    for a lease). Started at the first batch; `close` waits until all are sent.

    What stops it (a database error) is kept in `error` for the poller to raise; the batches
    after it are not sent: pending and claimed, they are sent by the outbox once the claim runs
    out. Interrupted while it waits in `close`, the poller has the thread stop after the email
    in hand, so the transport is never used by two threads at once."""

    def __init__(
        self, send: Callable[[list[_Decided], list[tuple[int, str]], threading.Event], None]
    ) -> None:
        self._send = send
        self._queue: queue.Queue[list[_Decided] | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self._abandon = threading.Event()
        self.error: BaseException | None = None

    def put(self, batch: list[_Decided]) -> None:
        if self._thread is None:  # log lines keep the pass's context (the mailbox)
            run = contextvars.copy_context().run
            thread = threading.Thread(
                target=run, args=(self._serve,), name="cme-sending", daemon=True
            )
            thread.start()
            self._thread = thread
        self._queue.put(batch)

    def close(self) -> BaseException | None:
        """Wait until every batch handed over is sent (or skipped after an error); the error."""
        thread, self._thread = self._thread, None
        if thread is not None:
            try:
                self._queue.put(None)
                thread.join()
            except BaseException:  # Ctrl-C while waiting: the email in hand finishes, no more
                self._abandon.set()
                self._queue.put(None)
                thread.join()
                raise
        return self.error

    def _serve(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self.error is not None or self._abandon.is_set():
                continue  # left pending under their claims: the outbox sends them later
            try:
                self._send(batch, [], self._abandon)
            except BaseException as exc:  # the poller raises it
                self.error = exc


@dataclass(frozen=True)
class _Delivery:
    email_id: int
    attempts: int  # the attempt this was (the claim it was made under)
    state: OutboundState
    error: str | None
    retry_at: dt.datetime


QUARANTINE_OUTCOMES = (Outcome.QUARANTINED, Outcome.UNAUTHENTICATED_SENDER)


class ReleaseError(Exception):
    """A release that cannot be done; the message says why in one line."""


class _LostClaim(Exception):
    """Another instance took this message over (our lease ran out)."""


class _Retry(Exception):
    """This message cannot be judged now, through no fault of its own: leave it claimed."""
