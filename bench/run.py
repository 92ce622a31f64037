"""`make bench`: throughput, acknowledgement latency and memory against real servers.

Starts a throw-away Dovecot (IMAP) and an aiosmtpd SMTP sink on loopback (the helpers from
tests/servers.py), generates N referral emails (PDF and Word forms, about one in ten failing a
rule, a few with no form; a distinct child and UPN each, so most are accepted), appends them to
Dovecot, then measures in one run:

  (a) baseline: IMAPClient fetch of every message (BODY.PEEK[], batches of 50) plus a
      mail-parser parse of each, nothing else; then again, for reference only, with imaplib's
      debugging off as cme-mailbot has it (see `baseline`);
  (b) drain: `cme-mailbot poll --once` in a subprocess taking the whole backlog to filed,
      replied outcomes (SQLite by default; `--database postgresql` uses a throw-away server);
  (c) acknowledgement latency: with `cme-mailbot run` idle in IMAP IDLE, one referral is
      appended and timed until its reply reaches the SMTP server (p50 and p95);
  (d) peak RSS of the poller process (VmHWM, polled from /proc; the poll's own rusage as a
      cross-check), in (b) and in a separate drain of `--memory-messages` messages (5,000)
      that include one 25 MB attachment (skip with --no-memory-phase).

Generation and delivery are not timed. Each distinct form is made once per child by filling a
template once per (format, valid/invalid) with fixed-width placeholders and substituting the
child's name and UPN into the bytes (same length, so the PDF's cross-reference offsets stay
right; the Word file's document.xml is rewritten inside the ZIP); forms are cached in memory
for the run, so the memory phase reuses the first phase's.

Prints a table with each target and PASS/FAIL; exits 0 whatever the targets say (1 if the run
itself went wrong, or with --strict if a target failed). Servers, subprocesses and temporary
directories are cleaned up on any exit, Ctrl-C included.

    .venv/bin/python -m bench.run [--messages N] [--latency-samples N] [--quick]
        [--memory-messages N | --no-memory-phase] [--database sqlite|postgresql]
        [--profile FILE] [--keep DIR] [--strict]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import email.utils
import io
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cme_mailbot.forms.fill import fill_docx, fill_pdf  # noqa: E402
from cme_mailbot.samples import (  # noqa: E402
    AUTHSERV_ID,
    SAMPLE_SCHOOL,
    SAMPLE_SENDER,
    SAMPLE_URN,
    make_upn,
    referral_values,
)

PASSWORD_ENV = "CME_BENCH_IMAP_PASSWORD"  # noqa: S105 - a variable name
DOMAIN = SAMPLE_SENDER.rsplit("@", 1)[-1]
TO = "cme-referrals@council.example.gov.uk"
DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

# Targets (ISSUE 7).
TARGET_RATIO = 0.3
TARGET_ACK_P95 = 2.0
TARGET_RSS_MB = 200.0

CONFIG = """\
[database]
url = "{database_url}"

[mailbox]
backend = "imap"
host = "127.0.0.1"
port = {imap_port}
security = "none"
username = "cme"
password_env = "{password_env}"
timeout_seconds = 30
max_message_bytes = {max_message_bytes}

[outbound]
backend = "smtp"
host = "127.0.0.1"
port = {smtp_port}
security = "none"
from_address = "cme-referrals@council.example.gov.uk"
timeout_seconds = 30

[sender_auth]
trusted_authserv_ids = ["{authserv}"]

[safeguarding]
alert_to = ["safeguarding@council.example.gov.uk"]
mash_phone = "01234 567890"
mash_email = "mash@council.example.gov.uk"

[limits]
max_attachment_bytes = {max_attachment_bytes}

[poller]
interval_seconds = 60
workers = {workers}

[logging]
format = "json"
level = "info"
"""

DEFAULT_MESSAGE_BYTES = 30 * 1024 * 1024
DEFAULT_ATTACHMENT_BYTES = 15 * 1024 * 1024
# The memory phase raises both caps so that its 25 MB attachment is really downloaded, parsed
# and handed to the sandbox (under the defaults it would be quarantined by size, unread).
BIG_MESSAGE_BYTES = 40 * 1024 * 1024
BIG_ATTACHMENT_BYTES = 30 * 1024 * 1024
BIG_ATTACHMENT = 25 * 1024 * 1024


# ---- generating referrals -------------------------------------------------------------------

# Fixed-width placeholders, substituted byte for byte by each child's own values.
_PH_NAME = "Qzxjvwpk"  # "Kid" + 5 letters
_PH_UPN = "Q987654321098"  # a letter and 12 digits, as make_upn gives
_PH_DOB = "29/02/1904"  # dd/mm/yyyy, like every date on the form


def child_dob(index: int, today: dt.date) -> str:
    """Children of compulsory school age (6 to 15) born on 3,285 different days, as a council's
    referrals are: rule 9 looks up open referrals by name and date of birth."""
    born = dt.date(today.year - 15, 9, 1) + dt.timedelta(days=(index * 37) % (9 * 365))
    return born.strftime("%d/%m/%Y")


def child_name(index: int) -> str:
    letters = []
    for _ in range(5):
        index, r = divmod(index, 26)
        letters.append(chr(ord("a") + r))
    return "Kid" + "".join(reversed(letters))


def child_upn(index: int) -> str:
    # 1000 serials per (school, year): distinct for any index below ~9.9 million.
    school, serial = divmod(index, 1000)
    year, school = divmod(school, 8000)
    return make_upn(school=2000 + school, year=10 + year % 90, serial=serial)


def _pdf_escaped(text: str) -> bytes:
    return text.replace("/", "\\057").encode()


class FormFactory:
    """Each (child, format, valid) form made once: templates filled once, then substituted."""

    def __init__(self, today: dt.date) -> None:
        self.today = today
        self._templates: dict[tuple[str, bool], bytes] = {}
        self._docx_parts: dict[bool, list[tuple[zipfile.ZipInfo, bytes]]] = {}
        self._cache: dict[tuple[int, str, bool], bytes] = {}

    def _values(self, valid: bool) -> dict[str, str]:
        overrides = {"upn": _PH_UPN, "child_first_name": _PH_NAME, "child_dob": _PH_DOB}
        if not valid:  # fails the ewo_consulted rule: a rejection with a reason
            overrides.update(reason="not_returned_from_leave", ewo_consulted="no", ewo_name="")
        return referral_values(self.today, **overrides)

    def _template(self, fmt: str, valid: bool) -> bytes:
        key = (fmt, valid)
        if key not in self._templates:
            values = self._values(valid)
            data = fill_pdf(values) if fmt == "pdf" else fill_docx(values)
            self._templates[key] = data
            if fmt == "docx":
                with zipfile.ZipFile(io.BytesIO(data)) as z:
                    self._docx_parts[valid] = [(i, z.read(i)) for i in z.infolist()]
        return self._templates[key]

    def form(self, index: int, fmt: str, valid: bool) -> bytes:
        key = (index, fmt, valid)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        template = self._template(fmt, valid)
        dob = child_dob(index, self.today)
        subs = [(_PH_NAME.encode(), child_name(index).encode()),
                (_PH_UPN.encode(), child_upn(index).encode()),
                (_PH_DOB.encode(), dob.encode())]  # fmt: skip
        if fmt == "pdf":  # a field's /V spells "/" as \057; its appearance stream does not
            subs.append((_pdf_escaped(_PH_DOB), _pdf_escaped(dob)))
            data = template
            for old, new in subs:
                assert len(old) == len(new) and old in data
                data = data.replace(old, new)
        else:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as out:
                for info, content in self._docx_parts[valid]:
                    if info.filename == "word/document.xml":
                        for old, new in subs:
                            assert old in content
                            content = content.replace(old, new)
                    out.writestr(info, content, compress_type=zipfile.ZIP_DEFLATED)
            data = buf.getvalue()
        self._cache[key] = data
        return data


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def compose(
    index: int,
    attachments: list[tuple[str, str, bytes]],
    run_id: str,
    subject: str = "CME referral",
) -> bytes:
    """An inbound referral as the council's border MTA would deliver it (CRLF, base64)."""
    head = (
        f"Authentication-Results: {AUTHSERV_ID}; spf=pass smtp.mailfrom={DOMAIN}; "
        f"dmarc=pass header.from={DOMAIN}\r\n"
        f"From: Riverside Primary School Office <{SAMPLE_SENDER}>\r\n"
        f"To: {TO}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {email.utils.formatdate()}\r\n"
        f"Message-ID: <bench-{run_id}-{index}@{DOMAIN}>\r\n"
        "MIME-Version: 1.0\r\n"
    ).encode()
    boundary = f"bench-{index}-boundary"
    text = b"Please find attached a CME referral form.\r\n"
    if not attachments:
        return head + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text
    body = [f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n".encode() + text]
    for filename, ctype, data in attachments:
        body.append(
            f'--{boundary}\r\nContent-Type: {ctype}; name="{filename}"\r\n'
            f'Content-Disposition: attachment; filename="{filename}"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n".encode()
            + _b64(data)
        )
    return (
        head
        + f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode()
        + b"\r\n".join(body)
        + f"\r\n--{boundary}--\r\n".encode()
    )


def referral(
    factory: FormFactory, index: int, run_id: str, *, form: bool = False
) -> tuple[bytes, str]:
    """Message `index` of the mix, and the outcome expected: half PDF, half Word; one in ten
    fails a rule (rejected with reasons, still `processed`); one in fifty has no form (unless
    `form`: the no_form replies are capped per sender per hour)."""
    if index % 50 == 49 and not form:
        return compose(index, [], run_id), "no_form"
    fmt = "docx" if index % 2 else "pdf"
    valid = index % 10 != 7
    data = factory.form(index, fmt, valid)
    ctype = "application/pdf" if fmt == "pdf" else DOCX_TYPE
    return compose(index, [(f"referral.{fmt}", ctype, data)], run_id), "processed"


def big_attachment_message(run_id: str) -> bytes:
    """One referral email carrying a 25 MB 'scan' (a PDF header then zeros)."""
    blob = b"%PDF-1.4\n" + bytes(BIG_ATTACHMENT - 9)
    return compose(10**7, [("scan.pdf", "application/pdf", blob)], run_id, "Scanned referral")


# ---- servers and deployments ---------------------------------------------------------------


@dataclass
class Deployment:
    root: Path
    config: Path
    dovecot: Any  # tests.servers.DovecotServer
    smtp: Any  # tests.servers.SmtpServer
    database_url: str

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "CME_MAILBOT_CONFIG"}
        env[PASSWORD_ENV] = self.dovecot.users["cme"]
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cme_mailbot.cli", "--config", str(self.config), *args]

    def cli(self, *args: str) -> str:
        proc = subprocess.run(
            self.argv(*args), capture_output=True, text=True, env=self.env(), timeout=600
        )
        if proc.returncode != 0:
            raise BenchError(f"cme-mailbot {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
        return proc.stdout

    def client(self) -> Any:
        from imapclient import IMAPClient

        client = IMAPClient("127.0.0.1", port=self.dovecot.port, ssl=False, timeout=60)
        client.login("cme", self.dovecot.users["cme"])
        return client

    def deliver(self, raws: list[bytes], connections: int = 2) -> None:
        """MULTIAPPEND in chunks, over a couple of connections (order within a chunk kept)."""
        chunks = [raws[i : i + 100] for i in range(0, len(raws), 100)]
        errors: list[BaseException] = []

        def worker(mine: list[list[bytes]]) -> None:
            try:
                client = self.client()
                try:
                    for chunk in mine:
                        client.multiappend("INBOX", chunk)
                finally:
                    client.logout()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=worker, args=(chunks[k::connections],), daemon=True)
            for k in range(connections)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise BenchError(f"delivery failed: {errors[0]!r}")

    def inbox_count(self) -> int:
        client = self.client()
        try:
            client.select_folder("INBOX", readonly=True)
            return len(client.search("ALL"))
        finally:
            client.logout()


class BenchError(Exception):
    pass


class Cleanup:
    """Everything started, stopped in reverse order on any exit (Ctrl-C and SIGTERM too)."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Cleanup:
        self._old = signal.signal(signal.SIGTERM, self._on_term)
        # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (a background
        # job of a non-interactive shell).
        self._old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        return self

    def _on_term(self, _signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    def add(self, fn: Callable[[], object]) -> None:
        self._stack.callback(_quietly, fn)

    def process(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        self.add(lambda: _kill(proc))
        return proc

    def __exit__(self, *exc: object) -> None:
        # Cleanup must not be cut short by a second Ctrl-C.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._stack.close()
        finally:
            del old_int
            signal.signal(signal.SIGINT, self._old_int)
            signal.signal(signal.SIGTERM, self._old)


def _quietly(fn: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):
        fn()


def _kill(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the poller and its sandbox worker
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


def deploy(
    cleanup: Cleanup,
    base: Path,
    name: str,
    database: str,
    pg: list[Any],
    *,
    max_message_bytes: int = DEFAULT_MESSAGE_BYTES,
    max_attachment_bytes: int = DEFAULT_ATTACHMENT_BYTES,
    workers: int = 1,
    smtp_delay: float = 0.0,
) -> Deployment:
    from tests.servers import start_dovecot, start_smtp

    root = base / name
    root.mkdir(parents=True)
    try:
        dovecot = start_dovecot(root / "dovecot")
    except BaseException as exc:
        if type(exc).__name__ == "Skipped":  # pytest.skip outside pytest: Dovecot missing
            raise BenchError(str(exc)) from None
        raise
    cleanup.add(dovecot.cleanup)
    smtp = start_smtp(delay=smtp_delay)
    cleanup.add(smtp.stop)
    if database == "postgresql":
        if not pg:
            pg.append(_start_postgres(cleanup))
        url = pg[0].create_database("bench")
    else:
        url = f"sqlite:///{root}/cme.db"
    config = root / "config.toml"
    config.write_text(
        CONFIG.format(
            database_url=url, imap_port=dovecot.port, smtp_port=smtp.port,
            password_env=PASSWORD_ENV, authserv=AUTHSERV_ID,
            max_message_bytes=max_message_bytes, max_attachment_bytes=max_attachment_bytes,
            workers=workers,
        ),
        encoding="utf-8",
    )  # fmt: skip
    live = Deployment(root, config, dovecot, smtp, url)
    live.cli("contacts", "add", SAMPLE_SENDER, "--school-urn", SAMPLE_URN,
             "--school-name", SAMPLE_SCHOOL)  # fmt: skip
    return live


def _start_postgres(cleanup: Cleanup) -> Any:
    try:
        from tests import pg as pg_mod
    except ImportError:
        raise BenchError("--database postgresql needs tests/pg.py") from None
    start = getattr(pg_mod, "start_postgres", None)
    if start is None:
        raise BenchError("tests/pg.py has no start_postgres()")
    server = start()
    cleanup.add(server.cleanup)
    return server


# ---- measuring ----------------------------------------------------------------------------


def baseline(live: Deployment, expected: int, batch: int = 50, *, quiet: bool = False) -> float:
    """Fetch every message (BODY.PEEK[]) and parse each with mail-parser: nothing else.

    IMAPClient as it comes sets imaplib's debugging to 5, so imaplib formats each response, the
    bodies included, into text it then drops (logger disabled). cme-mailbot turns that off.
    The baseline (ISSUE 7's "imapclient fetch plus mail-parser parse") keeps IMAPClient's
    default; with `quiet`, for reference, it is turned off as cme-mailbot does. Seconds taken;
    BenchError unless it read `expected` messages."""
    import mailparser

    started = time.perf_counter()
    client = live.client()
    if quiet:
        client._imap.debug = 0
    try:
        client.select_folder("INBOX", readonly=True)
        uids = sorted(client.search(["ALL"]))
        parsed = 0
        for i in range(0, len(uids), batch):
            for data in client.fetch(uids[i : i + batch], ["BODY.PEEK[]"]).values():
                mailparser.parse_from_bytes(data[b"BODY[]"])
                parsed += 1
    finally:
        client.logout()
    seconds = time.perf_counter() - started
    if parsed != expected:
        raise BenchError(f"baseline read {parsed} messages, expected {expected}")
    return seconds


def _status_kb(pid: int, key: str = "VmHWM") -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    return []


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def _kind(pid: int) -> str:
    """ "worker" (a sandbox worker), "helper" (a poll helper) or "" (anything else)."""
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"cme_mailbot.sandbox" in argv:
            return "worker"
        if b"--share" in argv:
            return "helper"
    return ""


@dataclass
class Drain:
    seconds: float
    summary: str
    poller_kb: int  # largest VmHWM of a poll process (the parent or a helper)
    worker_kb: int  # largest VmHWM of a sandbox worker
    rusage_kb: int  # wait4 ru_maxrss (the poll process and its waited-for children)
    tree_kb: int = 0  # peak of the summed VmRSS of the poll process and all its descendants
    processes: int = 1  # poll processes seen (the parent and its helpers)
    stderr_tail: str = ""
    cpu_poll: float = 0.0  # CPU seconds of the poll process and its waited-for children
    cpu_dovecot: float = 0.0  # CPU seconds of the Dovecot processes during the drain
    cpu_bench: float = 0.0  # CPU seconds of this process (the SMTP sink) during the drain


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live descendants, each with its reaped children."""
    ticks = 0
    for p in [pid, *_descendants(pid)]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def drain(live: Deployment, profile: Path | None = None) -> Drain:
    """`cme-mailbot poll --once` until it exits; wall time, peak RSS and CPU by process."""
    argv = live.argv("poll", "--once")
    if profile is not None:
        argv = [sys.executable, "-m", "cProfile", "-o", str(profile), *argv[1:]]
    err_path = live.root / "poll.stderr"
    out_path = live.root / "poll.stdout"
    dovecot = live.dovecot._proc.pid if live.dovecot._proc else 0
    dovecot_cpu, bench_cpu = _tree_cpu(dovecot) if dovecot else 0.0, _self_cpu()
    with err_path.open("wb") as err, out_path.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, env=live.env(), start_new_session=True
        )
        poller = worker = tree = 0
        pollers: set[int] = {proc.pid}
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                poller = max(poller, _status_kb(proc.pid))
                total = _status_kb(proc.pid, "VmRSS")
                for child in _descendants(proc.pid):
                    kind = _kind(child)
                    if kind == "worker":
                        worker = max(worker, _status_kb(child))
                    elif kind == "helper":
                        pollers.add(child)
                        poller = max(poller, _status_kb(child))
                    total += _status_kb(child, "VmRSS")
                tree = max(tree, total)
                time.sleep(0.02)
        except BaseException:
            _kill(proc)
            raise
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    dovecot_cpu = (_tree_cpu(dovecot) if dovecot else 0.0) - dovecot_cpu
    bench_cpu = _self_cpu() - bench_cpu
    stderr = err_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"poll --once exited {proc.returncode}:\n{stderr[-3000:]}")
    summary = out_path.read_text().strip().splitlines()[-1]
    return Drain(seconds, summary, poller, worker, usage.ru_maxrss, tree, len(pollers),
                 stderr[-2000:], usage.ru_utime + usage.ru_stime, dovecot_cpu,
                 bench_cpu)  # fmt: skip


def _wait(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(step)


def latency(
    live: Deployment, cleanup: Cleanup, factory: FormFactory, start_index: int, samples: int,
    run_id: str,
) -> list[float]:  # fmt: skip
    """With `cme-mailbot run` idle in IDLE: append one referral, time until its reply arrives."""
    log = (live.root / "run.log").open("wb")
    cleanup.add(log.close)
    proc = cleanup.process(
        subprocess.Popen(live.argv("run"), stdout=log, stderr=log, env=live.env(),
                         start_new_session=True)
    )  # fmt: skip
    client = live.client()
    cleanup.add(client.logout)
    times: list[float] = []
    try:
        for k in range(samples + 1):  # the first one warms up (sandbox worker start), untimed
            index = start_index + k
            raw, _ = referral(factory, index, run_id, form=True)
            before = len(live.smtp.messages)
            time.sleep(0.3)  # let the poller settle back into IDLE
            if proc.poll() is not None:
                raise BenchError(f"cme-mailbot run exited {proc.returncode}")
            started = time.perf_counter()
            client.append("INBOX", raw)
            _wait(lambda b=before: len(live.smtp.messages) > b, 60, "a reply")  # type: ignore[misc]
            took = time.perf_counter() - started
            if k:
                times.append(took)
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    return times


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


# ---- the run ------------------------------------------------------------------------------


@dataclass
class Results:
    messages: int = 0
    baseline_s: float = 0.0
    quiet_baseline_s: float = 0.0  # imaplib's debugging off, as in cme-mailbot (reference)
    drain: Drain | None = None
    ack: list[float] = field(default_factory=list)
    memory_messages: int = 0
    memory: Drain | None = None
    notes: list[str] = field(default_factory=list)


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPU(s) (nproc {len(os.sched_getaffinity(0))}), {model}"


def _mb(kb: int) -> str:
    return f"{kb / 1024:.1f} MB"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def table(r: Results, database: str) -> tuple[str, bool]:
    rows: list[tuple[str, str, str]] = []
    ok_all = True
    n = r.messages
    base_rate = n / r.baseline_s if r.baseline_s else 0.0
    rows.append(("messages", f"{n}", ""))
    base = f"{r.baseline_s:.2f} s  {base_rate:.1f} msg/s"
    rows.append(("baseline: fetch + mail-parser", base, ""))
    if r.drain:
        rate = n / r.drain.seconds
        ratio = rate / base_rate if base_rate else 0.0
        ok = ratio >= TARGET_RATIO
        ok_all &= ok
        rows.append(("drain: poll --once", f"{r.drain.seconds:.2f} s  {rate:.1f} msg/s", ""))
        rows.append(("throughput ratio drain/baseline", f"{ratio:.2f}",
                     f">= {TARGET_RATIO:.2f}  {_verdict(ok)}"))  # fmt: skip
        if r.quiet_baseline_s:
            quiet_rate = n / r.quiet_baseline_s
            rows.append(("  reference: baseline, imaplib debugging off",
                         f"{r.quiet_baseline_s:.2f} s  {quiet_rate:.1f} msg/s",
                         f"ratio {rate / quiet_rate:.2f} (not a target)"))  # fmt: skip
        d = r.drain
        per = 1000 / n
        rows.append(("CPU per message: poll processes + workers", f"{d.cpu_poll * per:.1f} ms",
                     f"Dovecot {d.cpu_dovecot * per:.1f} ms; SMTP sink (this process) "
                     f"{d.cpu_bench * per:.1f} ms"))  # fmt: skip
        rows.append((f"peak RSS poller (this drain, {d.processes} process(es))", _mb(d.poller_kb),
                     f"worker {_mb(d.worker_kb)}; all together {_mb(d.tree_kb)}"))  # fmt: skip
    if r.ack:
        p50, p95 = _percentile(r.ack, 50), _percentile(r.ack, 95)
        ok = p95 <= TARGET_ACK_P95
        ok_all &= ok
        rows.append((f"ack latency p50 / p95 (n={len(r.ack)})", f"{p50:.3f} s / {p95:.3f} s",
                     f"p95 <= {TARGET_ACK_P95:g} s  {_verdict(ok)}"))  # fmt: skip
    if r.memory:
        ok = r.memory.poller_kb / 1024 < TARGET_RSS_MB
        ok_all &= ok
        rows.append((f"memory phase: drain {r.memory_messages} + 25 MB",
                     f"{r.memory.seconds:.2f} s  {r.memory_messages / r.memory.seconds:.1f} msg/s",
                     ""))  # fmt: skip
        rows.append(("peak RSS poller (memory phase)", _mb(r.memory.poller_kb),
                     f"< {TARGET_RSS_MB:g} MB  {_verdict(ok)}"))  # fmt: skip
        rows.append(("peak RSS sandbox worker (memory phase)", _mb(r.memory.worker_kb), ""))
        rows.append((f"peak RSS all {r.memory.processes} poll process(es) and workers",
                     _mb(r.memory.tree_kb), "(the sum, sampled every 20 ms)"))  # fmt: skip
    else:
        rows.append(("memory phase", "skipped", ""))
    width = max(len(a) for a, _, _ in rows)
    vwidth = max(len(b) for _, b, _ in rows)
    lines = [
        f"cme-mailbot benchmark, {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"machine: {_machine()}; Python {platform.python_version()}; database {database}",
        "-" * (width + vwidth + 30),
        *(f"{a:<{width}}  {b:<{vwidth}}  {c}".rstrip() for a, b, c in rows),
        "-" * (width + vwidth + 30),
    ]
    if r.drain:
        lines.append(f"drain summary: {r.drain.summary}")
    if r.memory:
        lines.append(f"memory phase summary: {r.memory.summary}")
    lines.extend(r.notes)
    return "\n".join(lines), ok_all


def _expect(summary: str, n: int, what: str) -> None:
    if f"{n} new, {n} done" not in summary or "waiting 0" not in summary:
        raise BenchError(f"{what}: unexpected summary {summary!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--messages", type=int, default=None, help="drain size (2000)")
    parser.add_argument("--latency-samples", type=int, default=None, help="(50)")
    parser.add_argument(
        "--memory-messages",
        type=int,
        default=5000,
        help="messages in the memory phase, plus one 25 MB attachment (5000)",
    )
    parser.add_argument("--no-memory-phase", action="store_true")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 200 messages, 10 latency samples, no memory phase",
    )
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--workers", type=int, default=1, help="[poller] workers: processes sharing the drain (1)"
    )
    parser.add_argument(
        "--smtp-delay-ms",
        type=float,
        default=0.0,
        help="the SMTP sink takes this long to answer each DATA, as a distant server does (0)",
    )
    parser.add_argument("--profile", type=Path, help="cProfile the drain into this file")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
    args = parser.parse_args(argv)  # fmt: skip
    n = args.messages or (200 if args.quick else 2000)
    samples = args.latency_samples if args.latency_samples is not None else (
        10 if args.quick else 50)  # fmt: skip
    memory_phase = not (args.no_memory_phase or args.quick)
    if n < 1 or samples < 0 or args.memory_messages < 1:
        parser.error("counts must be positive")

    today = dt.date.today()
    factory = FormFactory(today)
    run_id = f"{os.getpid()}-{int(time.time())}"
    results = Results(messages=n)
    pg: list[Any] = []
    try:
        with Cleanup() as cleanup:
            if args.keep:
                base = args.keep.resolve()
                base.mkdir(parents=True, exist_ok=True)
            else:
                base = Path(tempfile.mkdtemp(prefix="cme-bench-"))
                cleanup.add(lambda: shutil.rmtree(base, ignore_errors=True))
            print(f"working in {base}", file=sys.stderr)

            t0 = time.perf_counter()
            raws = [referral(factory, i, run_id)[0] for i in range(n)]
            live = deploy(cleanup, base, "drain", args.database, pg, workers=args.workers,
                          smtp_delay=args.smtp_delay_ms / 1000)  # fmt: skip
            live.deliver(raws)
            del raws
            print(f"generated and delivered {n} messages in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)  # fmt: skip

            # The reference first: the baseline proper then meets a server as warm as it left.
            results.quiet_baseline_s = baseline(live, n, quiet=True)
            results.baseline_s = baseline(live, n)
            print(f"baseline {results.baseline_s:.2f} s", file=sys.stderr)

            results.drain = drain(live, args.profile)
            print(f"drain {results.drain.seconds:.2f} s: {results.drain.summary}", file=sys.stderr)
            _expect(results.drain.summary, n, "drain")
            if live.inbox_count() != 0:
                raise BenchError("the drain left messages in the inbox")
            # Fewer replies than messages is right: replies not about forms (no_form) are
            # capped per sender per hour (poller.replies_per_sender_per_hour).
            sent = int(results.drain.summary.split("replies sent ", 1)[1].split(",", 1)[0])
            replies = len(live.smtp.messages)
            if replies < sent or sent < n - n // 50:
                raise BenchError(f"{replies} replies reached the SMTP server, {sent} sent")

            if samples:
                results.ack = latency(live, cleanup, factory, n, samples, run_id)
                print(f"latency samples {len(results.ack)}", file=sys.stderr)

            if memory_phase:
                m = args.memory_messages
                t0 = time.perf_counter()
                big = deploy(cleanup, base, "memory", args.database, pg, workers=args.workers,
                             smtp_delay=args.smtp_delay_ms / 1000,
                             max_message_bytes=BIG_MESSAGE_BYTES,
                             max_attachment_bytes=BIG_ATTACHMENT_BYTES)  # fmt: skip
                middle = m // 2
                for start in range(0, m, 1000):
                    chunk = [referral(factory, i, run_id)[0]
                             for i in range(start, min(start + 1000, m))]  # fmt: skip
                    if start <= middle < start + 1000:
                        chunk.insert(middle - start, big_attachment_message(run_id))
                    big.deliver(chunk)
                print(f"memory phase: delivered {m + 1} in {time.perf_counter() - t0:.1f} s",
                      file=sys.stderr)  # fmt: skip
                results.memory_messages = m + 1
                results.memory = drain(big)
                _expect(results.memory.summary, m + 1, "memory phase")
                results.notes.append(
                    f"memory phase: {m} referrals + 1 message with a 25 MB attachment; caps "
                    f"raised to max_message_bytes {BIG_MESSAGE_BYTES >> 20} MB and "
                    f"max_attachment_bytes {BIG_ATTACHMENT_BYTES >> 20} MB so it is read"
                )
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; servers and temporary files cleaned up", file=sys.stderr)
        return 130

    setting = args.database
    if args.smtp_delay_ms:
        setting += f"; the SMTP sink answers each DATA after {args.smtp_delay_ms:g} ms"
    text, ok = table(results, setting)
    print(text)
    if args.profile:
        print(f"profile of the drain written to {args.profile}")
    return 1 if (args.strict and not ok) else 0


if __name__ == "__main__":
    sys.exit(main())
