"""The shortcuts the drain takes (issue 7) give what the slow ways gave.

Rows written without making ORM objects, the sender screening remembered within one claim
group, the subject scrubbed in one pass, a sandbox worker started before it is needed and
ended without waiting.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from unittest import mock

import pytest
import structlog
import structlog.testing
from apscheduler.schedulers.blocking import BlockingScheduler

from cme_mailbot import pipeline as pipeline_mod
from cme_mailbot.config import LimitsSettings
from cme_mailbot.db import session_scope
from cme_mailbot.forms import ExtractedForm, read_form
from cme_mailbot.forms.fill import fill_pdf
from cme_mailbot.models import (
    FormResult,
    FormResultKind,
    InboundMessage,
    MessageState,
    Referral,
    ReferralStatus,
    new_row,
    row_values,
)
from cme_mailbot.poller import Poller, run_pollers
from cme_mailbot.samples import SAMPLE_SENDER, make_upn, referral_email, referral_values
from cme_mailbot.sandbox import SandboxedReader, SandboxError
from cme_mailbot.schema import default_schema, normalise_label
from cme_mailbot.stages.decide import safe_subject

from .data.harness import Bot

LIMITS = LimitsSettings(parse_cpu_seconds=5, parse_memory_mb=512, parse_timeout_seconds=20)
NOW = dt.datetime(2026, 11, 28, 9, 30, tzinfo=dt.UTC)

# ---- rows without ORM objects ----------------------------------------------------------------


def _without(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in keys}


def test_a_new_row_is_what_the_model_object_would_have_written() -> None:
    ledger = {
        "account": "imap://cme@127.0.0.1",
        "folder": "INBOX",
        "location": "7:42",
        "dedupe_key": "mid:<a@b> from:x@y",
        "sha256": "ab" * 32,
        "size": 1234,
        "received_at": NOW,
        "state": MessageState.CLAIMED,
        "attempts": 1,
    }
    referral = {
        "reference": "CME-2026-00001",
        "inbound_id": 3,
        "child_first_name": "Amy",
        "child_dob": dt.date(2015, 3, 4),
        "upn": make_upn(serial=1),
    }
    result = {"inbound_id": 3, "filename": "a.pdf", "result": FormResultKind.ACCEPTED}
    for model, values, stamped in (
        (InboundMessage, ledger, ()),
        (Referral, referral, ("created_at",)),
        (FormResult, result, ()),
    ):
        made = new_row(model, **values)
        assert _without(made, *stamped) == _without(row_values(model(**values)), *stamped)
        assert "id" not in made  # left to the database


def test_a_new_row_takes_defaults_and_fresh_factory_values() -> None:
    first = new_row(FormResult, inbound_id=1, filename="a.pdf", result=FormResultKind.REJECTED)
    second = new_row(FormResult, inbound_id=1, filename="b.pdf", result=FormResultKind.REJECTED)
    assert first["reasons"] == [] and first["reference"] is None
    assert first["reasons"] is not second["reasons"]  # a list of its own, as the model makes
    referral = new_row(Referral, reference="CME-2026-00002", inbound_id=1)
    assert referral["status"] is ReferralStatus.OPEN and referral["safeguarding_alert"] is False
    assert referral["created_at"].tzinfo is not None


def test_a_new_row_refuses_a_column_the_table_does_not_have() -> None:
    with pytest.raises(TypeError, match="no column"):
        new_row(FormResult, inbound_id=1, filename="a.pdf", result="accepted", colour="red")


# ---- the reply subject -------------------------------------------------------------------------


def _form(**fields: str) -> ExtractedForm:
    return ExtractedForm(filename="referral.pdf", format="pdf", fields=fields)


@pytest.mark.parametrize(
    ("subject", "fields", "expected"),
    [
        # The whole name goes before its parts, whatever the case; punctuation is literal.
        (
            "CME referral mary-jane o'neil (Y4)",
            {"child_first_name": "Mary-Jane", "child_last_name": "O'Neil"},
            "CME referral [redacted] [redacted] (Y4)",
        ),
        (
            "CME referral for Ben (a.k.a. B.)",
            {"child_first_name": "Ben", "child_other_names": "B. (Benny)"},
            "CME referral for [redacted] (a.k.a. [redacted])",
        ),
        ("Referral Jo Ann Lee", {"child_first_name": "Jo Ann", "child_last_name": "Lee"},
         "Referral [redacted] [redacted]"),
        # Names that overlap in the subject are taken out whole, not leaving a fragment.
        ("Referral Mary Jones", {"child_first_name": "Mary Jo", "child_last_name": "Jones"},
         "Referral [redacted]"),
        ("CME: Ali Khan", {"child_first_name": "Al", "child_last_name": "Li Khan"},
         "CME: [redacted]"),
        # A name that is also in the marker's own word is no trouble.
        ("CME referral for Ed", {"child_first_name": "Ed"}, "CME referral for [redacted]"),
        # A one-letter token is too short to take out (it would take letters out of words).
        ("CME referral", {"child_first_name": "E"}, "CME referral"),
        # Letters whose cases lower-casing does not pair ("ı" and "I") still match, as re.I does.
        ("CME referral for AYDIN", {"child_first_name": "Aydın", "child_last_name": "Yıldız"},
         "CME referral for [redacted]"),
        ("CME referral: aydin yildiz", {"child_first_name": "Aydın", "child_last_name": "Yıldız"},
         "CME referral: [redacted] [redacted]"),
        ("cme referral - YILDIZ", {"child_first_name": "Aydın", "child_last_name": "Yıldız"},
         "cme referral - [redacted]"),
    ],
)  # fmt: skip
def test_known_names_are_taken_out_of_the_reply_subject(
    subject: str, fields: dict[str, str], expected: str
) -> None:
    assert safe_subject(subject, [_form(**fields)], default_schema()) == expected


def test_labels_are_normalised_the_same_however_often_they_are_asked() -> None:
    assert normalise_label("Child's DOB:") == normalise_label("childs  dob") == "childs dob"
    assert default_schema().personal_ids is default_schema().personal_ids
    assert "child_first_name" in default_schema().personal_ids


# ---- the sender screening, remembered within a claim group ------------------------------------


@pytest.fixture
def bot() -> Iterator[Bot]:
    with tempfile.TemporaryDirectory() as tmp:
        b = Bot(Path(tmp), read_form)
        yield b
        b.engine.dispose()


def test_a_sender_is_looked_up_once_per_claim_group_and_afresh_after(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up: list[str] = []
    real = pipeline_mod.schools_of

    def counting(session: Any, address: str, scope: str = "default") -> frozenset[str]:
        looked_up.append(address)
        return real(session, address, scope)

    monkeypatch.setattr(pipeline_mod, "schools_of", counting)
    today = dt.date.today()
    raws = [
        referral_email(
            subject=f"CME referral {i}",
            attachments=[("r.pdf", fill_pdf(referral_values(today, upn=make_upn(serial=500 + i))))],
        )
        for i in range(3)
    ]
    bot.deliver(*raws)
    summary = bot.poll()
    assert summary.outcomes["processed"] == 3
    assert looked_up == [SAMPLE_SENDER]  # one group, one sender: one query
    assert bot.pipeline._approved is None  # nothing remembered once the group is done

    # Off the list between two polls: the next group asks again and refuses.
    from cme_mailbot.contacts import remove_contact

    with session_scope(bot.engine) as s:
        assert remove_contact(s, SAMPLE_SENDER, actor="test")
    bot.deliver(referral_email(subject="CME referral 4"))
    assert bot.poll().outcomes["unapproved_sender"] == 1
    assert looked_up == [SAMPLE_SENDER, SAMPLE_SENDER]


def test_a_remembered_sender_is_asked_about_again_after_a_few_seconds(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up: list[str] = []
    real = pipeline_mod.schools_of
    monkeypatch.setattr(
        pipeline_mod, "schools_of", lambda *a, **k: looked_up.append(a[1]) or real(*a, **k)
    )
    monkeypatch.setattr(pipeline_mod, "_APPROVED_FOR", 0.0)  # every answer already too old
    bot.deliver(*(referral_email(subject=f"CME referral {i}") for i in range(3)))
    assert bot.poll().new == 3
    assert len(looked_up) == 3  # one group, but each message asked afresh


def test_outside_a_claim_group_every_lookup_asks_the_database(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = pipeline_mod.schools_of
    monkeypatch.setattr(
        pipeline_mod, "schools_of", lambda *a, **k: calls.append(a[1]) or real(*a, **k)
    )
    assert bot.pipeline._schools(SAMPLE_SENDER)
    assert bot.pipeline._schools(SAMPLE_SENDER)
    assert len(calls) == 2  # a release or a console action sees the list as it is now


# ---- the sandbox worker: started early, ended at once -------------------------------------------


def test_a_warmed_up_worker_is_the_one_that_reads() -> None:
    reader = SandboxedReader(LIMITS)
    try:
        reader.warm_up()
        reader.warm_up()  # one is enough
        worker = reader._worker
        assert worker is not None and reader.workers_started == 1
        form = fill_pdf(referral_values(dt.date.today()))
        assert reader("referral.pdf", "application/pdf", form) is not None
        assert reader._worker is worker and reader.workers_started == 1
    finally:
        reader.close()
    assert worker.proc.poll() is not None  # ended, not left behind


def read_pdf_forms(reader: SandboxedReader, count: int) -> None:
    form = fill_pdf(referral_values(dt.date.today()))
    for _ in range(count):
        assert reader("referral.pdf", "application/pdf", form) is not None


def test_the_next_worker_starts_while_the_last_twentieth_is_read() -> None:
    reader = SandboxedReader(LIMITS, max_files_per_worker=40)  # its last twentieth: 2 files
    try:
        read_pdf_forms(reader, 38)
        first = reader._worker
        assert first is not None and reader._successor is None and reader.workers_started == 1
        read_pdf_forms(reader, 1)  # file 39
        successor = reader._successor
        assert successor is not None and reader.workers_started == 2
        read_pdf_forms(reader, 1)  # file 40
        read_pdf_forms(reader, 1)  # the successor's
        assert reader._worker is successor and reader._successor is None
        assert reader.workers_started == 2 and successor.files == 1
        assert first.proc.poll() is not None  # retired
    finally:
        reader.close()
    assert successor.proc.poll() is not None


def test_a_successor_not_yet_needed_ends_with_the_reader() -> None:
    reader = SandboxedReader(LIMITS, max_files_per_worker=20)  # its last twentieth: 1 file
    try:
        read_pdf_forms(reader, 20)
        successor = reader._successor
        assert successor is not None and successor.files == 0
    finally:
        reader.close()
    assert successor.proc.poll() is not None and reader._successor is None


def test_a_successor_that_died_is_not_taken() -> None:
    reader = SandboxedReader(LIMITS, max_files_per_worker=20)
    try:
        read_pdf_forms(reader, 20)
        successor = reader._successor
        assert successor is not None
        successor.proc.kill()
        successor.proc.wait()
        read_pdf_forms(reader, 1)
        assert reader._worker is not successor and reader.workers_started == 3
    finally:
        reader.close()


def test_a_worker_loads_its_readers_without_the_database_or_web_stack() -> None:
    """Half of a worker's start-up went on SQLAlchemy, pulled in by the configuration's web
    settings; a worker starts every thousand messages and each start keeps one waiting."""
    code = (
        "import sys; from cme_mailbot.sandbox import DEFAULT_READER, _load_readers; "
        "_load_readers(DEFAULT_READER); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'sqlalchemy', 'sqlmodel', 'starlette', 'jinja2', 'alembic'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_a_warmed_up_worker_that_died_is_replaced() -> None:
    reader = SandboxedReader(LIMITS)
    try:
        reader.warm_up()
        assert reader._worker is not None
        reader._worker.proc.kill()
        reader._worker.proc.wait()
        form = fill_pdf(referral_values(dt.date.today()))
        assert reader("referral.pdf", "application/pdf", form) is not None
        assert reader.workers_started == 2
    finally:
        reader.close()


def test_a_worker_that_cannot_start_is_reported_at_the_first_read_not_the_warm_up() -> None:
    reader = SandboxedReader(LIMITS, reader="tests.data.no_such_module:read")
    try:
        reader.warm_up()  # never raises
        with pytest.raises(SandboxError, match="did not start"):
            reader("referral.pdf", "application/pdf", b"%PDF-1.7")
        assert reader._worker is None  # the next read starts another
    finally:
        reader.close()


# ---- run: a second signal while stopping --------------------------------------------------------


class _SlowPoller:
    """Enough of a Poller for run_pollers: one cycle that holds a message until let go."""

    interval = 3600

    def __init__(self) -> None:
        self.started, self.let_go, self.finished = (threading.Event() for _ in range(3))
        self.stops = 0
        self.pipeline = SimpleNamespace(mailbox=SimpleNamespace(account="slow"))

    def cycle(self) -> None:
        self.started.set()
        self.let_go.wait(30)
        self.finished.set()

    def request_stop(self) -> None:
        self.stops += 1


def test_a_second_signal_while_stopping_lets_the_message_in_hand_finish() -> None:
    poller = _SlowPoller()
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def signal_twice_then_let_go() -> None:
        assert poller.started.wait(30)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 30
        while poller.stops < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)  # as a second Ctrl-C would
        time.sleep(0.2)  # the main thread handles it (or would have died of it)
        poller.let_go.set()

    helper = threading.Thread(target=signal_twice_then_let_go)
    helper.start()
    try:
        run_pollers([cast(Poller, poller)])
    finally:
        poller.let_go.set()
        helper.join(30)
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert poller.finished.is_set()  # run_pollers returned only once the cycle had finished
    assert poller.stops == 1


def test_a_signal_before_the_scheduler_runs_is_a_clean_exit() -> None:
    poller = _SlowPoller()
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with (
            structlog.testing.capture_logs() as logs,
            pytest.raises(SystemExit) as stopped,
            mock.patch.object(
                BlockingScheduler, "start", lambda self: os.kill(os.getpid(), signal.SIGTERM)
            ),
        ):
            run_pollers([cast(Poller, poller)])
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert stopped.value.code == 0 and poller.stops == 0  # nothing was running to stop
    # Said as when stopped running: an operator (and the test of `run`) looks for it.
    assert {"event": "stopping", "signal": "SIGTERM", "starting": True} in [
        {k: e.get(k) for k in ("event", "signal", "starting")} for e in logs
    ]
