"""Command line: thin entry points over the pipeline, the contacts list and the read models.

Bad input (arguments or configuration) is a one-line error and exit status 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import structlog
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlmodel import Session

from cme_mailbot import contacts as contacts_mod
from cme_mailbot import queries
from cme_mailbot.config import ConfigError, Settings, load_settings
from cme_mailbot.db import session_scope
from cme_mailbot.logging import configure_logging
from cme_mailbot.migrate_cli import db
from cme_mailbot.models import InboundMessage
from cme_mailbot.schema import default_schema

log = structlog.get_logger("cme_mailbot.cli")


class Ctx:
    def __init__(self, config_path: Path | None):
        self.config_path = config_path
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
            configure_logging(self._settings.logging.format, self._settings.logging.level)
        return self._settings

    def engine(self) -> Any:
        from cme_mailbot.wiring import open_database

        return open_database(self.settings)


def fail(message: str) -> NoReturn:
    click.echo(f"cme-mailbot: error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML configuration file (default: $CME_MAILBOT_CONFIG, else embedded defaults).",
)
@click.version_option(package_name="cme-mailbot")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """Runs a council's Children Missing Education referral mailbox."""
    ctx.obj = Ctx(config_path)


cli.add_command(db)


# ---- the poller -----------------------------------------------------------------------------


def _pipelines(c: Ctx, scope: str | None = None, *, warm: bool = False) -> list[Any]:
    """One pipeline per mailbox served ([mailbox], or each [[mailboxes]] entry). With `warm`,
    the first mailbox's sandbox worker starts loading its readers at once, on the other core,
    while this process loads its own code and opens the database and the mailbox."""
    from cme_mailbot.sandbox import sandboxed_reader

    profiles = [p for p in c.settings.profiles() if scope is None or p.name == scope]
    if not profiles:
        fail(f"no mailbox named {scope!r} in the configuration")
    readers = [sandboxed_reader(p.settings.limits) for p in profiles]
    warm_up = getattr(readers[0], "warm_up", None)
    if warm and warm_up is not None:
        warm_up()

    from cme_mailbot.pipeline import Pipeline
    from cme_mailbot.wiring import open_mailbox, open_transport

    engine = c.engine()
    out = []
    for profile, reader in zip(profiles, readers, strict=True):
        s = profile.settings
        pipeline = Pipeline(
            engine,
            s,
            open_mailbox(s),
            open_transport(s),
            form_reader=reader,
            scope=profile.name,
        )
        pipeline.launch_helper = _helper_launcher(c.config_path, profile.name)
        out.append(pipeline)
    return out


def _close(pipelines: list[Any]) -> None:
    for p in pipelines:
        p.mailbox.close()
        p.transport.close()
        close = getattr(p.read_form, "close", None)
        if callable(close):
            close()


def _helper_launcher(config_path: Path | None, scope: str) -> Callable[[Any], Any]:
    """Starts `poll --once --share K/N` for one mailbox: a helper for a large backlog."""

    def launch(share: Any) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "cme_mailbot.cli"]
        if config_path is not None:
            argv += ["--config", str(config_path.resolve())]
        argv += ["poll", "--once", "--share", str(share), "--mailbox", scope,
                 "--parent", str(os.getpid())]  # fmt: skip
        # Standard error (its log lines and progress) is shared; standard output is its summary.
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)

    return launch


def _share(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    index, sep, count = value.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 0 < int(index) < int(count) <= 64):
        fail(f"--share {value!r}: expected K/N with 0 < K < N <= 64")
    return int(index), int(count)


def _die_with_parent(parent: int) -> None:
    """A helper ends (gracefully, by SIGTERM) when the process that started it dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before we asked
        sys.exit(0)


def _poll_share(c: Ctx, share: tuple[int, int], scope: str | None, parent: int | None) -> None:
    from cme_mailbot.pipeline import Share

    if scope is None or parent is None:
        fail("--share needs --mailbox and --parent")
    pipelines = _pipelines(c, scope, warm=True)
    pipeline = pipelines[0]
    _die_with_parent(parent)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: pipeline.stop_requested.set())
    part = Share(*share)
    try:
        summary = pipeline.poll_share(part, progress=lambda line: _stderr(f"[{part}] {line}"))
    finally:
        _close(pipelines)
    click.echo(summary.to_json())


@cli.command()
@click.option("--once", is_flag=True, required=True, help="One pass over the mailbox, then exit.")
@click.option("--share", hidden=True, help="K/N: a helper's share of a large backlog.")
@click.option("--mailbox", "scope", hidden=True, help="The mailbox a helper works on.")
@click.option("--parent", type=int, hidden=True, help="The pid of the process it helps.")
@click.pass_obj
def poll(c: Ctx, once: bool, share: str | None, scope: str | None, parent: int | None) -> None:
    """One pass over every mailbox; prints progress and a summary."""
    part = _share(share)
    if part is not None:
        _poll_share(c, part, scope, parent)
        return
    pipelines = _pipelines(c, warm=True)
    failed = False
    try:
        for p in pipelines:
            prefix = f"{p.scope}: " if len(pipelines) > 1 else ""
            summary = p.poll_once(progress=lambda line, pre=prefix: _stderr(pre + line))
            click.echo(prefix + summary.line())
            failed = failed or bool(summary.errors)
    finally:
        _close(pipelines)
    if failed:
        sys.exit(1)


def _stopped_while_starting(signum: int, _frame: object) -> NoReturn:
    structlog.get_logger("cme_mailbot.cli").info(
        "stopping", signal=signal.Signals(signum).name, starting=True
    )
    raise SystemExit(0)


@cli.command()
@click.pass_obj
def run(c: Ctx) -> None:
    """The scheduled poller, until SIGTERM/SIGINT (finishes the message in hand, exits 0)."""
    from cme_mailbot.poller import Poller, run_pollers

    # Stopped while starting (a service manager may stop it at any moment): nothing is in hand
    # yet, so it simply exits 0, as it would once running (`run_pollers` takes over from here).
    # The configuration is read first: it sets up the logging that says so, on stderr.
    _ = c.settings
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stopped_while_starting)
    pipelines = _pipelines(c, warm=True)
    try:
        run_pollers(
            [Poller(p, p.settings.poller.interval_seconds, echo=_stderr) for p in pipelines]
        )
    finally:
        _close(pipelines)


@cli.command()
@click.option(
    "--max-missed",
    type=click.IntRange(1, 1000),
    default=3,
    show_default=True,
    help="Unhealthy when the last successful poll is older than this many intervals.",
)
@click.pass_obj
def health(c: Ctx, max_missed: int) -> None:
    """Exit 0 when every mailbox was polled recently and its login works; else exit 1."""
    from cme_mailbot.health import check

    with Session(c.engine()) as s:
        report = check(s, c.settings, max_missed)
    for line in report.lines:
        click.echo(line)
    if not report.healthy:
        sys.exit(1)


def _stderr(line: str) -> None:
    click.echo(line, err=True)


# ---- demo and forms -------------------------------------------------------------------------


@cli.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("demo-output"),
    show_default=True,
    help="Scratch folder (emptied first).",
)
def demo(directory: Path) -> None:
    """The whole flow on the embedded defaults in a scratch folder; no servers needed."""
    from cme_mailbot.demo import run_demo

    configure_logging("console", "error")
    run_demo(directory, echo=click.echo)


@cli.group()
def forms() -> None:
    """The blank referral form."""


@forms.command("export")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
def forms_export(directory: Path) -> None:
    """Write the blank referral form as fillable PDF and Word."""
    from cme_mailbot.forms.export import export_blank_forms

    for path in export_blank_forms(directory):
        click.echo(str(path))


# ---- the approved-sender list ---------------------------------------------------------------


@cli.group()
def contacts() -> None:
    """The approved-sender list."""


SCOPE = click.option(
    "--scope",
    default="default",
    show_default=True,
    help="Whose list: a [[mailboxes]] entry's name (one [mailbox]: 'default').",
)


@contacts.command("add")
@click.argument("email")
@click.option("--school-urn", required=True, help="The school's 6-digit URN.")
@click.option("--school-name", default=None)
@SCOPE
@click.pass_obj
def contacts_add(c: Ctx, email: str, school_urn: str, school_name: str | None, scope: str) -> None:
    """Approve EMAIL to refer for a school."""
    try:
        with session_scope(c.engine()) as s:
            added = contacts_mod.add_contact(
                s, email, school_urn, school_name, actor=_actor(), scope=scope
            )
    except contacts_mod.ContactError as exc:
        fail(str(exc))
    what = "added" if added else "already approved"
    click.echo(f"{what}: {email.strip().lower()} for URN {school_urn.strip()}")


@contacts.command("remove")
@click.argument("email")
@SCOPE
@click.pass_obj
def contacts_remove(c: Ctx, email: str, scope: str) -> None:
    """Remove EMAIL from the approved list."""
    try:
        with session_scope(c.engine()) as s:
            removed = contacts_mod.remove_contact(s, email, actor=_actor(), scope=scope)
    except contacts_mod.ContactError as exc:
        fail(str(exc))
    if not removed:
        fail(f"not on the approved list: {email.strip().lower()}")
    click.echo(f"removed: {email.strip().lower()}")


@contacts.command("list")
@click.option("--json", "as_json", is_flag=True)
@SCOPE
@click.pass_obj
def contacts_list(c: Ctx, as_json: bool, scope: str) -> None:
    """List approved contacts and their schools."""
    with Session(c.engine()) as s:
        rows = contacts_mod.list_contacts(s, scope)
    if as_json:
        click.echo(json.dumps([{"email": r.email, "schools": r.schools} for r in rows], indent=2))
        return
    for r in rows:
        schools = ", ".join(f"{x['urn']} {x['name']}".strip() for x in r.schools)
        click.echo(f"{r.email}\t{schools}")


@contacts.command("import")
@click.argument("csv_path", type=click.Path(path_type=Path, dir_okay=False))
@SCOPE
@click.pass_obj
def contacts_import(c: Ctx, csv_path: Path, scope: str) -> None:
    """Import rows of email,school_urn[,school_name] from a CSV file."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        fail(f"cannot read {csv_path}: {exc.strerror}")
    except UnicodeDecodeError:
        fail(f"{csv_path} is not UTF-8 text")
    try:
        with session_scope(c.engine()) as s:
            added, unchanged = contacts_mod.import_csv(s, text, actor=_actor(), scope=scope)
    except contacts_mod.ContactError as exc:
        fail(f"{csv_path}: {exc}; nothing imported")
    click.echo(f"imported: {added} added, {unchanged} already approved")


# ---- messages and referrals -----------------------------------------------------------------


@cli.group()
def messages() -> None:
    """Inbound messages and their outcomes."""


@messages.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def messages_list(c: Ctx, as_json: bool) -> None:
    """Every inbound message with its outcome."""
    with Session(c.engine()) as s:
        rows = queries.message_dicts(s)
    if as_json:
        keys = ("message_id", "sender", "received_at", "outcome", "forms")
        click.echo(json.dumps([{k: r[k] for k in keys} for r in rows], indent=2))
        return
    for r in rows:
        refs = ", ".join(f"{f['result']} {f['reference'] or ''}".strip() for f in r["forms"])
        click.echo(
            f"#{r['id']}\t{r['received_at'][:19]}\t{r['sender'] or '-'}\t"
            f"{r['outcome'] or r['state']}\t{refs}"
        )


@cli.group()
def referrals() -> None:
    """The referral records."""


@referrals.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def referrals_list(c: Ctx, as_json: bool) -> None:
    """Every referral."""
    with Session(c.engine()) as s:
        rows = queries.referral_dicts(s)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        sib = f"\tsibling of {r['sibling_of']}" if r["sibling_of"] else ""
        click.echo(
            f"{r['reference']}\t{r['status']}\t{r['school_urn']}\t{r['reason']}"
            f"{' SAFEGUARDING' if r['safeguarding_alert'] else ''}{sib}"
        )


@referrals.command("show")
@click.argument("reference")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def referrals_show(c: Ctx, reference: str, as_json: bool) -> None:
    """One referral, every field."""
    with Session(c.engine()) as s:
        r = queries.find_referral(s, reference)
        if r is None:
            fail(f"no referral {reference.strip().upper()}")
        data = queries.referral_dict(r)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    schema = default_schema()
    for key in ("reference", "status", "source_message_id", "sibling_of", "created_at"):
        click.echo(f"{key}: {data[key] if data[key] is not None else ''}")
    for section in schema.sections:
        click.echo(f"\n{section.id}. {section.title}")
        for f in schema.in_section(section.id):
            value = data.get(f.id)
            shown = "" if value is None else ("yes" if value is True else "no" if value is False
                                              else str(value))  # fmt: skip
            click.echo(f"  {f.label}: {shown}")


# ---- the quarantine -------------------------------------------------------------------------


def _actor() -> str:
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or getpass.getuser()


@cli.group()
def quarantine() -> None:
    """Messages held for a person to review."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def quarantine_list(c: Ctx, as_json: bool) -> None:
    """Quarantined messages awaiting review, oldest first."""
    from cme_mailbot import quarantine as q

    with Session(c.engine()) as s:
        rows = [q.summary(s, r) for r in q.pending(s)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(
            f"#{r['id']}\t{r['received_at'][:19]}\t{r['sender'] or '-'}\t{r['outcome']}\t"
            f"{r['detail'] or ''}"
        )


@quarantine.command("show")
@click.argument("message_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def quarantine_show(c: Ctx, message_id: int, as_json: bool) -> None:
    """One quarantined message: why it is held, and its attachments."""
    from cme_mailbot import quarantine as q

    with Session(c.engine()) as s:
        try:
            data = q.summary(s, q.get(s, message_id))
        except q.QuarantineError as exc:
            fail(str(exc))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key in ("id", "received_at", "sender", "subject", "outcome", "detail", "size", "review"):
        click.echo(f"{key}: {data[key] if data[key] is not None else ''}")
    for a in data["attachments"]:
        click.echo(
            f"attachment {a['index']}: {a['filename']} ({a['content_type']}, {a['size']} bytes)"
        )


@quarantine.command("release")
@click.argument("message_id", type=int)
@click.option("--reason", required=True, help="Why (recorded in the audit log).")
@click.option("--trust-sender", is_flag=True, help="A person has vouched for the sender.")
@click.pass_obj
def quarantine_release(c: Ctx, message_id: int, reason: str, trust_sender: bool) -> None:
    """Process a quarantined message again (e.g. after adding an approved contact)."""
    from cme_mailbot import quarantine as q

    pipelines = _pipelines(c)
    with Session(pipelines[0].engine) as s:
        row = s.get(InboundMessage, message_id)
        account = row.account if row else None
    pipeline = next((p for p in pipelines if p.mailbox.account == account), pipelines[0])
    try:
        outcome = q.release(pipeline, message_id, _actor(), reason, trust_sender=trust_sender)
    except q.QuarantineError as exc:
        fail(str(exc))
    finally:
        _close(pipelines)
    click.echo(f"released #{message_id}: {outcome}")


@quarantine.command("reject")
@click.argument("message_id", type=int)
@click.option("--reason", required=True, help="Why (recorded in the audit log).")
@click.pass_obj
def quarantine_reject(c: Ctx, message_id: int, reason: str) -> None:
    """Close a quarantined message with no further processing."""
    from cme_mailbot import quarantine as q

    try:
        with session_scope(c.engine()) as s:
            q.reject(s, message_id, _actor(), reason)
    except q.QuarantineError as exc:
        fail(str(exc))
    click.echo(f"rejected #{message_id}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@click.pass_obj
def audit(c: Ctx, as_json: bool, limit: int) -> None:
    """The audit log of operator actions, newest first."""
    from sqlmodel import col, select

    from cme_mailbot.models import AuditEvent

    with Session(c.engine()) as s:
        rows = s.exec(select(AuditEvent).order_by(col(AuditEvent.id).desc()).limit(limit)).all()
        data = [
            {"at": r.at.isoformat(), "actor": r.actor, "action": r.action, "target": r.target,
             "detail": r.detail}
            for r in rows
        ]  # fmt: skip
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for d in data:
        click.echo(f"{d['at'][:19]}\t{d['actor']}\t{d['action']}\t{d['target']}\t{d['detail']}")


def _register_console() -> None:
    from cme_mailbot.web.commands import users, web

    cli.add_command(web)
    cli.add_command(users)


_register_console()


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except ConfigError as exc:
        fail(str(exc))
    except SQLAlchemyError as exc:
        # Never a traceback (it could echo row values); the class and the first line suffice.
        first = str(exc.orig if isinstance(exc, DBAPIError) else exc).splitlines()[0][:200]
        click.echo(f"cme-mailbot: database error: {type(exc).__name__}: {first}", err=True)
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
