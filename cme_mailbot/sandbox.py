"""Reading untrusted form files in a child process with CPU, memory and wall-clock limits.

`sandboxed_reader(limits)` returns a `FormReader` (same call as `forms.read_form`) that hands each
attachment to a worker process, `python -m cme_mailbot.sandbox`, over a pipe. The worker sets its
resource limits before it reads anything: RLIMIT_AS (memory), RLIMIT_CPU (per file), no core
files, no file writes, no child processes, and neither pikepdf (which reads PDF forms) nor pypdf
may call an external jbig2dec. The parent enforces the wall-clock limit and kills the worker on
any breach.

One worker serves many files (a fresh interpreter costs ~0.2 s; a round trip ~1 ms), and is
retired after a bounded number of files, after any file it could not read, and on any breach,
so a hostile file never shares a process with the next message's forms for long and a damaged
heap is never reused. Only JSON crosses back (never pickle: a subverted worker must not be able
to run code in the poller). No error text from here carries a filename or file content.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from cme_mailbot.config import LimitsSettings
from cme_mailbot.forms import ExtractedForm, FormUnreadable
from cme_mailbot.stages.extract import ReaderUnavailable

if TYPE_CHECKING:
    from cme_mailbot.stages.extract import Extraction, FormReader

log = structlog.get_logger("cme_mailbot.sandbox")

_HEADER = struct.Struct(">II")  # metadata length, data length
_LENGTH = struct.Struct(">I")
_READY = b"CME-SANDBOX-READY\n"
_MAX_REPLY_BYTES = 4 * 1024 * 1024  # a form's fields are a few kilobytes
_MAX_REASON_CHARS = 300
_STARTUP_SECONDS = 30.0
_BODY_GRACE = 5.0  # seconds to read an answer whose length has arrived
_FORMATS = ("pdf", "docx")
# Pipes this large (Linux's default cap for a user) take a whole referral, and the one after it,
# without waiting for the worker to read: sending ahead costs the poller a copy, not a wait.
_PIPE_BYTES = 1 << 20
# Requests a worker may have unanswered at once: the one it reads and eleven waiting, so that
# it never idles between messages while the poller writes a decision, files a batch or claims
# the next group (with three the poller waited for the worker 12 % of a drain; with six the
# worker still idled 13 % of it, at the batch and group boundaries; twelve drained 2.8 % faster).
_AHEAD = 12
# ... and no more of their bytes than this share of the pipe, so that writing one never waits
# for the worker (the rest is room for the requests' headers): three quarters takes about twelve
# referrals, and drained 2.4 % faster than half, which took eight.
_PIPE_SHARE = 3 / 4
DEFAULT_READER = "cme_mailbot.forms:read_form"


class SandboxError(ReaderUnavailable):
    """The worker could not be started; the message names no file."""


def sandboxed_reader(limits: LimitsSettings, *, max_files_per_worker: int = 1000) -> FormReader:
    """The form reader the pipeline should use: sandboxed unless `limits.sandbox` is false."""
    if not limits.sandbox:
        from cme_mailbot.forms import read_form

        log.warning("sandbox_disabled")
        return read_form
    return SandboxedReader(limits, max_files_per_worker=max_files_per_worker)


class SandboxedReader:
    """A `FormReader` that reads each file in a resource-limited worker process."""

    def __init__(
        self,
        limits: LimitsSettings,
        *,
        max_files_per_worker: int = 1000,
        reader: str = DEFAULT_READER,
    ) -> None:
        """`reader` is the "module:function" the worker calls; tests substitute a hostile one."""
        self.limits = limits
        self.max_files_per_worker = max_files_per_worker
        self.reader = reader
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        # The next worker, started while the current one serves its last files (`_ready_worker`).
        self._successor: _Worker | None = None
        # Requests sent ahead (`prefetch`), oldest first, all to the current worker; their
        # answers come back in that order.
        self._pending: deque[_Prefetched] = deque()
        self._answered_at = 0.0  # when the last answer was read: the next one's clock starts
        self.workers_started = 0  # for tests and the benchmark
        self.prefetched = 0  # requests answered from a prefetch, for tests and the benchmark

    def __call__(self, filename: str, content_type: str, data: bytes) -> ExtractedForm | None:
        with self._lock:
            self._drop_all()  # their answers must never be taken for this file's
            worker = self._ready_worker()
            try:
                reply = worker.read(filename, content_type, data)
            except FormUnreadable:
                self._retire(kill=True)
                raise
            except BaseException as exc:  # an I/O failure on our side: the file is not to blame
                self._abandon_worker(exc)
                raise FormUnreadable(
                    f"the sandboxed reader failed ({type(exc).__name__})"
                ) from None
            if reply.get("status") != "form" and reply.get("status") != "none":
                # Retire a worker that met a file it could not read: its heap may be damaged.
                self._retire()
            return _to_form(reply, filename)

    def read_message(self, raw: bytes, limits: LimitsSettings, *, forms: bool) -> Extraction:
        """Parse a whole message in the worker and, with `forms`, read its forms there too
        (`MessageReader`): the MIME walk of untrusted bytes, and its copies of a large message,
        stay out of the poller. Raises `ParseError` for a message that cannot be parsed (and,
        without `forms`, for a breach of the worker's limits: only the parse ran); with `forms`
        a breach is an unreadable extraction. Raises `SandboxError` if no worker can start."""
        from cme_mailbot.stages.extract import Extraction
        from cme_mailbot.stages.parse import ParseError

        meta = _message_meta(limits, forms)
        with self._lock:
            pending = self._pending[0] if self._pending else None
            if pending is not None and pending.matches(raw, meta):
                self._pending.popleft()
            else:  # not what was sent ahead: the plan changed, ask afresh
                self._drop_all()
                pending = None
            # SandboxError (no worker can start) goes to the caller: the message is not to blame.
            worker = pending.worker if pending is not None else self._ready_worker()
            try:
                if pending is not None:
                    reply = worker.receive(pending.deadline(self._answered_at), what="message")
                    self.prefetched += 1
                else:
                    reply = worker.request(meta, raw, what="message")
                self._answered_at = time.monotonic()
            except BaseException as exc:
                self._abandon_worker(exc)
                reason = (
                    str(exc)
                    if isinstance(exc, FormUnreadable)  # a limit breach, or a crash
                    else f"the sandboxed reader failed ({type(exc).__name__})"  # our side's I/O
                )
                if not forms:
                    raise ParseError(reason) from None
                return Extraction(unreadable=[reason])
            status = reply.get("status")
            if status == "unparseable":
                self._retire()
                why = reply.get("reason")
                raise ParseError(
                    why[:_MAX_REASON_CHARS]
                    if isinstance(why, str) and why
                    else "the message could not be parsed"
                )
            try:
                extraction = _to_extraction(reply, limits)
            except FormUnreadable as exc:
                extraction = Extraction(unreadable=[str(exc)])
            if not forms and (extraction.forms or extraction.unreadable):
                extraction = Extraction(unreadable=["the sandboxed reader gave a malformed answer"])
            if extraction.unreadable:
                self._retire()  # it met a file it could not read: its heap may be damaged
            return extraction

    def prefetch(self, raw: bytes, limits: LimitsSettings, *, forms: bool) -> bool:
        """Send the worker a coming message now, so it parses while the caller finishes the
        ones before; `read_message` with the same bytes and arguments, in the same order, then
        collects the answer (anything else first drops every answer sent ahead). Up to `_AHEAD`
        requests wait at once, and no more bytes than the pipe holds, so sending never waits for
        the worker. A request's wall-clock budget runs from when the worker can start on it.
        Returns whether it was sent. Never raises: should sending fail, `read_message` does it
        all again and reports what goes wrong."""
        meta = _message_meta(limits, forms)
        with self._lock:
            if self._pending:
                worker = self._pending[-1].worker
                waiting = sum(len(p.raw) for p in self._pending) + len(raw)
                if (
                    len(self._pending) >= _AHEAD
                    or worker.files >= self.max_files_per_worker  # the next goes to its successor
                    or waiting > worker.pipe_bytes * _PIPE_SHARE
                ):
                    return False
                self._start_successor_if_due(worker)
            try:
                if not self._pending:
                    worker = self._ready_worker()
                sent_at = time.monotonic()
                worker.send(meta, raw)
            except BaseException as exc:  # SandboxError, a broken pipe: read_message will say
                self._abandon_worker(exc)
                log.info("sandbox_prefetch_failed", error=type(exc).__name__)
                return False
            self._pending.append(_Prefetched(raw, meta, worker, sent_at))
            return True

    def discard(self, *, kill: bool = False) -> None:
        """Forget every answer sent ahead and not asked for (the caller's plan ended: a stop, an
        error), so no message's bytes or answer waits here for a later one. With `kill`, the
        worker owing them is killed rather than waited for (a stop should not wait for up to
        `_AHEAD` messages' time budgets); the next read starts another."""
        with self._lock:
            if kill and self._pending:
                self._retire(kill=True)
                self._pending.clear()
                return
            self._drop_all()

    def _drop_all(self) -> None:
        """Collect and forget the answers sent ahead that nobody asked for (or retire the
        worker trying)."""
        while self._pending:
            pending = self._pending.popleft()
            try:
                reply = pending.worker.receive(pending.deadline(self._answered_at), what="message")
            except BaseException as exc:  # a breach or a crash: the worker is gone or going
                self._abandon_worker(exc)
                return
            self._answered_at = time.monotonic()
            if reply.get("status") != "message" or reply.get("unreadable"):
                self._retire()  # as after any answer about a file it could not read
                return

    def _abandon_worker(self, exc: BaseException) -> None:
        """Kill the worker after a failed exchange with it, with the answers it still owes, so
        no answer is ever read in step with the wrong request (a request half written, an answer
        half read). An interrupt (Ctrl-C) goes on up; any other error is the caller's to report.
        """
        self._retire(kill=True)
        if not isinstance(exc, Exception):
            raise exc

    def _retire(self, *, kill: bool = False) -> None:
        """Take the current worker out of service (ended, or killed after a breach)."""
        worker, self._worker = self._worker, None
        self._pending = deque(p for p in self._pending if p.worker is not worker)
        if worker is not None and kill:
            worker.kill()
        elif worker is not None:
            worker.stop()

    def warm_up(self) -> None:
        """Start a worker now, without waiting for it: it loads its readers (half a second) on
        the other core while the caller connects to the mailbox. Never raises: should it fail,
        the first read starts one again and says what went wrong."""
        with self._lock:
            if self._worker is None:
                with contextlib.suppress(SandboxError):
                    self._worker = self._start_worker()

    def _ready_worker(self) -> _Worker:
        worker = self._worker
        if worker is None or not worker.alive() or worker.files >= self.max_files_per_worker:
            self._retire()
            worker = self._worker = self._take_successor() or self._start_worker()
        else:
            self._start_successor_if_due(worker)
        try:
            worker.wait_ready()
        except SandboxError:
            self._worker = None  # killed: the next read starts another
            raise
        return worker

    def _start_successor_if_due(self, worker: _Worker) -> None:
        """A worker costs half a second to start: its successor loads its readers on the other
        core while this one serves its last twentieth, and takes over at once."""
        last_twentieth = self.max_files_per_worker - self.max_files_per_worker // 20
        if self._successor is None and worker.files >= last_twentieth:
            with contextlib.suppress(SandboxError):  # then it starts when it is needed
                self._successor = self._start_worker()

    def _take_successor(self) -> _Worker | None:
        """The worker started ahead, if it is still there to take over (it has read nothing)."""
        successor, self._successor = self._successor, None
        if successor is not None and not successor.alive():
            successor.kill()
            return None
        return successor

    def _start_worker(self) -> _Worker:
        try:
            worker = _Worker(self.limits, self.reader)
        except OSError as exc:  # no fork, no pipes: nothing to do with any message
            log.error("sandbox_start_failed", error=type(exc).__name__)
            raise SandboxError("the sandbox worker could not be started") from None
        self.workers_started += 1
        return worker

    def close(self) -> None:
        with self._lock:
            self._pending.clear()  # their worker is stopped below, answers unread
            self._retire()
            successor, self._successor = self._successor, None
            if successor is not None:
                successor.stop()


def _message_meta(limits: LimitsSettings, forms: bool) -> dict[str, Any]:
    return {
        "op": "message",
        "forms": forms,
        "max_attachments": limits.max_attachments,
        "max_attachment_bytes": limits.max_attachment_bytes,
    }


@dataclass(frozen=True)
class _Prefetched:
    """A whole-message request sent ahead of its `read_message`."""

    raw: bytes
    meta: dict[str, Any]
    worker: _Worker
    sent_at: float

    def matches(self, raw: bytes, meta: dict[str, Any]) -> bool:
        return raw is self.raw and meta == self.meta

    def deadline(self, answered_before: float) -> float:
        """The wall-clock limit runs from when the worker could start on it: once sent, and
        once the answer before it was read (a little later than the worker wrote it, so the
        budget errs towards the message, never against it)."""
        return max(self.sent_at, answered_before) + self.worker.limits.parse_timeout_seconds


def _to_form(reply: dict[str, Any], filename: str) -> ExtractedForm | None:
    """Check the worker's reply field by field: it came from a process that read hostile bytes."""
    status = reply.get("status")
    if status == "none":
        return None
    if status == "unreadable":
        reason = reply.get("reason")
        if not isinstance(reason, str) or not reason:
            reason = "unreadable attachment"
        raise FormUnreadable(reason[:_MAX_REASON_CHARS])
    if status == "limit":
        raise FormUnreadable(_limit_text(str(reply.get("limit")), None))
    fmt, fields = reply.get("format"), reply.get("fields")
    if status != "form" or fmt not in _FORMATS or not isinstance(fields, dict):
        raise FormUnreadable("the sandboxed reader gave a malformed answer")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
        raise FormUnreadable("the sandboxed reader gave a malformed answer")
    return ExtractedForm(filename=filename, format=fmt, fields=dict(fields))


def _to_extraction(reply: dict[str, Any], limits: LimitsSettings) -> Extraction:
    """Check a whole-message reply item by item (it came from a process that read hostile
    bytes); raises `FormUnreadable` for anything malformed."""
    from cme_mailbot.stages.extract import Extraction

    status, forms, unreadable = reply.get("status"), reply.get("forms"), reply.get("unreadable")
    if status == "limit":
        raise FormUnreadable(_limit_text(str(reply.get("limit")), None, "message"))
    if status != "message" or not isinstance(forms, list) or not isinstance(unreadable, list):
        raise FormUnreadable("the sandboxed reader gave a malformed answer")
    if len(forms) + len(unreadable) > limits.max_attachments + 1:
        raise FormUnreadable("the sandboxed reader gave a malformed answer")
    out = Extraction()
    for item in forms:
        if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
            raise FormUnreadable("the sandboxed reader gave a malformed answer")
        checked = {"status": "form", "format": item.get("format"), "fields": item.get("fields")}
        form = _to_form(checked, item["filename"])
        assert form is not None  # status "form": a form or FormUnreadable
        out.forms.append(form)
    for reason in unreadable:
        if not isinstance(reason, str):
            raise FormUnreadable("the sandboxed reader gave a malformed answer")
        out.unreadable.append(reason[:_MAX_REASON_CHARS] or "unreadable attachment")
    return out


def _limit_text(limit: str, limits: LimitsSettings | None, what: str = "attachment") -> str:
    if limit == "memory":
        size = f" ({limits.parse_memory_mb} MB)" if limits else ""
        return f"reading the {what} exceeded the sandbox memory limit{size}"
    if limit == "cpu":
        size = f" ({limits.parse_cpu_seconds} s)" if limits else ""
        return f"reading the {what} exceeded the sandbox CPU time limit{size}"
    if limit == "wall":
        size = f" ({limits.parse_timeout_seconds:g} s)" if limits else ""
        return f"reading the {what} exceeded the sandbox wall-clock limit{size}"
    return f"the sandboxed reader crashed while reading the {what}"


class _Worker:
    """One `python -m cme_mailbot.sandbox` process and its two pipes."""

    def __init__(self, limits: LimitsSettings, reader: str) -> None:
        self.limits = limits
        self.files = 0
        env = {
            "PATH": os.defpath,
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "PYTHONDONTWRITEBYTECODE": "1",
            "LC_ALL": "C.UTF-8",
        }  # nothing else from our environment: it may name secrets
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-s",
                "-m",
                "cme_mailbot.sandbox",
                str(limits.parse_memory_mb),
                str(limits.parse_cpu_seconds),
                reader,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # library warnings may quote the file
            env=env,
            cwd="/",
            close_fds=True,
            start_new_session=True,  # a Ctrl-C to the poller must not kill the file in hand
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._in, False)
        os.set_blocking(self._out, False)
        for fd in (self._in, self._out):
            with contextlib.suppress(OSError, AttributeError):  # elsewhere: the default size
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        self.pipe_bytes = 1 << 16  # POSIX promises less; Linux gives at least this
        with contextlib.suppress(OSError, AttributeError):
            self.pipe_bytes = fcntl.fcntl(self._in, fcntl.F_GETPIPE_SZ)
        self._finalizer = weakref.finalize(self, _reap, self.proc)
        self._starting_until: float | None = time.monotonic() + _STARTUP_SECONDS

    def wait_ready(self) -> None:
        """Wait for the worker to say it has loaded its readers (once; started, it is ready).
        Raises SandboxError, having killed it, if it does not say so in time."""
        if self._starting_until is None:
            return
        try:
            ready = _read_exact(self._out, len(_READY), self._starting_until)
        except (TimeoutError, EOFError) as exc:
            self.kill()
            log.error("sandbox_start_failed", error=type(exc).__name__)
            raise SandboxError("the sandbox worker did not start") from None
        if ready != _READY:
            self.kill()
            raise SandboxError("the sandbox worker did not start")
        self._starting_until = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def read(self, filename: str, content_type: str, data: bytes) -> dict[str, Any]:
        return self.request({"filename": filename, "content_type": content_type}, data)

    def request(
        self, fields: dict[str, Any], data: bytes, what: str = "attachment"
    ) -> dict[str, Any]:
        return self.receive(self.send(fields, data, what), what)

    def send(self, fields: dict[str, Any], data: bytes, what: str = "attachment") -> float:
        """Write one request; returns its deadline (the wall-clock limit runs from now)."""
        self.files += 1
        meta = json.dumps(fields).encode()
        deadline = time.monotonic() + self.limits.parse_timeout_seconds
        with self._breaches(what):
            _write_all(self._in, _HEADER.pack(len(meta), len(data)) + meta, deadline)
            _write_all(self._in, data, deadline)
        return deadline

    def receive(self, deadline: float, what: str = "attachment") -> dict[str, Any]:
        """Read the answer to the request sent last; an answer already there is taken even if
        the caller comes for it after the deadline."""
        with self._breaches(what):
            (size,) = _LENGTH.unpack(_read_exact(self._out, _LENGTH.size, deadline))
            if size > _MAX_REPLY_BYTES:
                raise FormUnreadable("the sandboxed reader gave a malformed answer")
            # The answer is written: a long one fills the pipe and waits for us to read on,
            # even when we come for it after the deadline (a prefetched answer).
            body = _read_exact(self._out, size, max(deadline, time.monotonic() + _BODY_GRACE))
        try:
            reply = json.loads(body)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise FormUnreadable("the sandboxed reader gave a malformed answer")
        if reply.get("status") == "limit":
            self.kill()
            log.warning("sandbox_limit", limit=str(reply.get("limit")))
            raise FormUnreadable(_limit_text(str(reply.get("limit")), self.limits, what))
        return reply

    @contextlib.contextmanager
    def _breaches(self, what: str) -> Iterator[None]:
        """A wall-clock overrun or a worker gone (a limit, a crash) while talking to it, as the
        `FormUnreadable` that names the limit."""
        try:
            yield
        except TimeoutError:
            self.kill()
            log.warning("sandbox_limit", limit="wall")
            raise FormUnreadable(_limit_text("wall", self.limits, what)) from None
        except (EOFError, BrokenPipeError):
            limit = self._why_dead()
            log.warning("sandbox_limit", limit=limit)
            raise FormUnreadable(_limit_text(limit, self.limits, what)) from None

    def _why_dead(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            return "crash"
        if code == -signal.SIGXCPU:
            return "cpu"
        if code == _EXIT_MEMORY:
            return "memory"
        return "crash"

    def stop(self) -> None:
        """End a worker that is not reading anything. It holds nothing to save, so it is killed
        rather than asked to exit: a graceful exit (unloading its libraries, and, for one still
        starting, loading them first) kept the poller waiting up to half a second."""
        self.kill()

    def kill(self) -> None:
        _reap(self.proc)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL does not take this long
        proc.wait(timeout=5)


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        _, writable, _ = select.select([], [fd], [], remaining)
        if not writable:
            continue
        try:
            n = os.write(fd, view[: 1 << 20])
        except BlockingIOError:
            continue
        view = view[n:]


def _read_exact(fd: int, n: int, deadline: float) -> bytes:
    """`n` bytes from `fd`; TimeoutError once the deadline has passed with nothing to read."""
    chunks: list[bytes] = []
    need = n
    while need:
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not readable:
            if remaining <= 0:
                raise TimeoutError
            continue
        try:
            chunk = os.read(fd, min(need, 1 << 20))
        except BlockingIOError:
            continue
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        need -= len(chunk)
    return b"".join(chunks)


# ---- the worker side ---------------------------------------------------------------------------

_EXIT_MEMORY = 86  # the worker's exit status after a MemoryError it could not report


def _set_limits(memory_mb: int) -> None:
    import resource

    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # No file writes: an over-size write fails with EFBIG instead of killing us (SIGXFSZ).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    # No child processes (not enforced for root, hence also no jbig2dec in `serve`).
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def _cpu_budget(seconds: int) -> None:
    """Allow `seconds` more CPU time from now; past it the kernel sends SIGXCPU, which kills."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _read_exact_blocking(stream: Any, n: int) -> bytes | None:
    data = stream.read(n)
    if not data:
        return None
    if len(data) != n:
        raise EOFError
    return bytes(data)


def _answer(read_form: Any, filename: str, content_type: str, data: bytes) -> dict[str, Any]:
    try:
        form = read_form(filename, content_type, data)
    except FormUnreadable as exc:
        return {"status": "unreadable", "reason": str(exc)[:_MAX_REASON_CHARS]}
    except MemoryError:
        return {"status": "limit", "limit": "memory"}
    except RecursionError:
        return {"status": "unreadable", "reason": "the attachment is nested too deeply to read"}
    except Exception as exc:
        return {"status": "unreadable", "reason": f"the reader failed ({type(exc).__name__})"}
    if form is None:
        return {"status": "none"}
    return {"status": "form", "format": form.format, "fields": form.fields}


def _answer_message(
    read_form: Any, raw: bytes, meta: dict[str, Any], cpu_seconds: int
) -> dict[str, Any]:
    """Parse a whole message and, if asked, read its forms here (`read_message`)."""
    from cme_mailbot.config import LimitsSettings
    from cme_mailbot.stages.extract import Extraction, extract_forms
    from cme_mailbot.stages.parse import ParseError, parse_message

    def contained(filename: str, content_type: str, data: bytes) -> ExtractedForm | None:
        # Exactly as a file sent on its own: its own CPU budget, every failure its own reason.
        _cpu_budget(cpu_seconds)
        return _to_form(_answer(read_form, filename, content_type, data), filename)

    try:
        parsed = parse_message(raw)
    except ParseError as exc:
        return {"status": "unparseable", "reason": str(exc)[:_MAX_REASON_CHARS]}
    except MemoryError:
        return {"status": "limit", "limit": "memory"}
    except RecursionError:
        return {"status": "unparseable", "reason": "the message is nested too deeply to read"}
    except Exception as exc:
        return {"status": "unparseable", "reason": f"the parser failed ({type(exc).__name__})"}
    extraction = Extraction()
    if meta.get("forms"):
        try:
            limits = LimitsSettings(
                max_attachments=int(meta["max_attachments"]),
                max_attachment_bytes=int(meta["max_attachment_bytes"]),
            )
            extraction = extract_forms(parsed.attachments, contained, limits)
        except MemoryError:
            return {"status": "limit", "limit": "memory"}
        except Exception as exc:  # as the extract stage failing in process: quarantined
            extraction = Extraction(unreadable=[f"the reader failed ({type(exc).__name__})"])
    return {
        "status": "message",
        "forms": [
            {"filename": f.filename, "format": f.format, "fields": f.fields}
            for f in extraction.forms
        ],
        "unreadable": extraction.unreadable,
    }


def _no_external_decoders(pypdf: Any) -> None:
    """pypdf and pikepdf would run a jbig2dec binary for JBIG2 images; the worker never runs a
    program. (The form reader decodes no image: this is a second line of defence.)"""
    from pikepdf import DataDecodingError, DependencyError
    from pikepdf.jbig2 import JBIG2DecoderInterface, set_decoder

    class NoJBIG2(JBIG2DecoderInterface):
        def check_available(self) -> None:
            raise DependencyError("JBIG2 decoding is off in the sandbox")

        def decode_jbig2(self, jbig2: bytes, jbig2_globals: bytes) -> bytes:
            raise DataDecodingError("JBIG2 decoding is off in the sandbox")

    set_decoder(NoJBIG2())
    if hasattr(pypdf, "overwrite_configuration"):  # pypdf >= 7
        pypdf.overwrite_configuration(jbig2dec_binary=None)
        return
    import pypdf.filters

    pypdf.filters.JBIG2DEC_BINARY = None  # pypdf 6


def _load_readers(reader: str) -> Any:
    """Load everything a request needs once, before the limits, rather than per file; returns
    the form reader ("module:function"). Nothing here loads SQLAlchemy or the web stack: a
    worker is started every thousand messages, and each start keeps a message waiting."""
    import importlib

    import pikepdf  # noqa: F401 - reads PDF forms: its C++ library loads before the limits

    import cme_mailbot.forms.docx
    import cme_mailbot.forms.pdf
    import cme_mailbot.stages.extract
    import cme_mailbot.stages.parse  # noqa: F401 - mail-parser, for whole messages
    from cme_mailbot.schema import default_schema

    default_schema()
    module, _, function = reader.partition(":")
    return getattr(importlib.import_module(module), function)


def serve(memory_mb: int, cpu_seconds: int, reader: str = DEFAULT_READER) -> int:
    """The worker's loop: one framed request in, one JSON reply out, until end of input."""
    import logging
    import warnings

    import pypdf  # writes forms; cme_mailbot.forms.pdf imports it too

    read_form = _load_readers(reader)
    logging.disable(logging.CRITICAL)  # library log lines may quote the file
    warnings.simplefilter("ignore")
    _no_external_decoders(pypdf)
    _set_limits(memory_mb)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(_READY)
    stdout.flush()
    while True:
        header = _read_exact_blocking(stdin, _HEADER.size)
        if header is None:
            return 0
        meta_len, data_len = _HEADER.unpack(header)
        meta = json.loads(_read_exact_blocking(stdin, meta_len) or b"{}")
        data = _read_exact_blocking(stdin, data_len) if data_len else b""
        _cpu_budget(cpu_seconds)
        try:
            if meta.get("op") == "message":
                reply = _answer_message(read_form, data or b"", meta, cpu_seconds)
            else:
                reply = _answer(
                    read_form,
                    str(meta.get("filename", "")),
                    str(meta.get("content_type", "")),
                    data or b"",
                )
            body = json.dumps(reply).encode()
            del data
            stdout.write(_LENGTH.pack(len(body)) + body)
            stdout.flush()
        except MemoryError:
            return _EXIT_MEMORY


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return serve(int(args[0]), int(args[1]), *args[2:3])


if __name__ == "__main__":
    sys.exit(main())
