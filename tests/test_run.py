"""`cme-mailbot run`: answers new mail while idle; SIGTERM finishes the message in hand, exits 0."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import structlog

from cme_mailbot.forms.fill import fill_pdf
from cme_mailbot.samples import referral_email, referral_values

from .conftest import Deployment
from .servers import catches_signal


def wait_for(predicate, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_run_answers_mail_that_arrives_while_idle_and_stops_on_sigterm(
    deployment: Deployment, today: dt.date
) -> None:
    with deployment.config.open("a") as fh:
        fh.write("\n[poller]\ninterval_seconds = 30\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cme_mailbot.cli", "--config", str(deployment.config), "run"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != "CME_MAILBOT_CONFIG"},
    )  # fmt: skip
    try:
        time.sleep(2)  # let it reach its first wait
        deployment.deliver(
            referral_email(attachments=[("f.pdf", fill_pdf(referral_values(today)))])
        )
        # Well inside the 30 s tick: the wait for new mail woke the poller.
        assert wait_for(lambda: len(deployment.sent()) == 1, timeout=20)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopping" in err
    [message] = deployment.messages()
    assert message["outcome"] == "processed"


def test_run_stopped_while_it_starts_exits_cleanly(deployment: Deployment) -> None:
    """A service manager may stop it at any moment: once it catches SIGTERM at all (before it
    has opened the database or the mailbox), being stopped is a clean exit, not a kill."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cme_mailbot.cli", "--config", str(deployment.config), "run"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != "CME_MAILBOT_CONFIG"},
    )  # fmt: skip
    try:
        assert wait_for(lambda: catches_signal(proc.pid, signal.SIGTERM), timeout=30)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopping" in err


def test_run_stopped_the_moment_it_catches_sigterm_says_so_on_stderr(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The earliest moment: just after `run` has installed its handler, before it opens the
    database or the mailbox. The logging is already set up, so "stopping" goes to stderr."""
    from cme_mailbot import cli

    def stopped_here(*_args: object, **_kwargs: object) -> list[object]:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler interrupts this
        raise AssertionError("SIGTERM was not caught")

    monkeypatch.setattr(cli, "_pipelines", stopped_here)
    monkeypatch.delenv("CME_MAILBOT_CONFIG", raising=False)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with pytest.raises(SystemExit) as stopped:
            cli.cli.main(["--config", str(deployment.config), "run"], standalone_mode=False)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        root.handlers[:] = handlers  # the logging set up above wrote to this test's capture
        root.setLevel(level)
        structlog.reset_defaults()
    assert stopped.value.code == 0
    captured = capsys.readouterr()
    assert "stopping" in captured.err and "stopping" not in captured.out
