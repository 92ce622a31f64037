"""Command-line behaviour: one-line errors with exit status 2, the contacts list, forms export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import Deployment


def one_line_error(proc_stderr: str) -> str:
    lines = [line for line in proc_stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc_stderr
    assert "Traceback" not in proc_stderr
    return lines[0]


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[mailbox]\nbakend = 'imap'\n", "mailbox.bakend: unknown key"),
        ("[mailbox]\nbackend = 'pop3'\n", "mailbox.backend"),
        ("[poller]\ninterval_seconds = -5\n", "poller.interval_seconds"),
        ("[sender_auth]\nrequire = true\n", "sender_auth.trusted_authserv_ids"),
        ("[mailbox]\nbackend = 'imap'\nhost = 'imap.example.gov.uk'\n", "mailbox.username"),
        ("[database\nurl = 1", "not valid TOML"),
        ("[outbound]\nusername = 'a'\n", "outbound"),
    ],
)
def test_bad_config_is_a_one_line_error_with_status_2(
    deployment: Deployment, toml: str, needle: str
) -> None:
    deployment.config.write_text(toml, encoding="utf-8")
    proc = deployment.cli("messages", "list", check=False)
    assert proc.returncode == 2
    assert needle in one_line_error(proc.stderr)


def test_missing_config_file_and_unset_secret(deployment: Deployment, tmp_path: Path) -> None:
    proc = deployment.cli("--config", str(tmp_path / "nope.toml"), "poll", "--once", check=False)
    assert proc.returncode == 2
    assert "file not found" in one_line_error(proc.stderr)

    deployment.config.write_text(
        "[outbound]\nbackend='smtp'\nusername='u'\npassword_env='CME_TEST_UNSET_SECRET'\n"
        "[sender_auth]\nrequire=false\n"
        f"[mailbox]\npath='{tmp_path}/mb'\n[database]\nurl='sqlite:///{tmp_path}/x.db'\n",
        encoding="utf-8",
    )
    proc = deployment.cli("poll", "--once", check=False)
    assert proc.returncode == 2
    assert "CME_TEST_UNSET_SECRET" in one_line_error(proc.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["poll"],
        ["contacts", "add", "someone@school.example.org"],
        ["contacts", "add", "not-an-email", "--school-urn", "123456"],
        ["contacts", "add", "a@school.example.org", "--school-urn", "12AB"],
        ["contacts", "remove", "nobody@school.example.org"],
        ["referrals", "show", "CME-2026-99999"],
    ],
)
def test_bad_arguments_exit_2_without_traceback(deployment: Deployment, args: list[str]) -> None:
    proc = deployment.cli(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr


def test_contacts_add_list_remove_import(deployment: Deployment, tmp_path: Path) -> None:
    deployment.cli("contacts", "add", "Admin@Hill.sch.example.uk", "--school-urn", "111111",
                   "--school-name", "Hill School")  # fmt: skip
    deployment.cli("contacts", "add", "admin@hill.sch.example.uk", "--school-urn", "222222")
    listed = json.loads(deployment.cli("contacts", "list", "--json").stdout)
    hill = next(c for c in listed if c["email"] == "admin@hill.sch.example.uk")
    assert [s["urn"] for s in hill["schools"]] == ["111111", "222222"]

    csv = tmp_path / "contacts.csv"
    csv.write_text("email,school_urn,school_name\nnew@vale.sch.example.uk,333333,Vale\n")
    out = deployment.cli("contacts", "import", str(csv)).stdout
    assert "1 added" in out

    bad = tmp_path / "bad.csv"
    bad.write_text("ok@a.example.uk,444444\nbroken-row\n")
    proc = deployment.cli("contacts", "import", str(bad), check=False)
    assert proc.returncode == 2
    assert "row 2" in proc.stderr and "nothing imported" in proc.stderr
    emails = [c["email"] for c in json.loads(deployment.cli("contacts", "list", "--json").stdout)]
    assert "ok@a.example.uk" not in emails

    deployment.cli("contacts", "remove", "admin@hill.sch.example.uk")
    emails = [c["email"] for c in json.loads(deployment.cli("contacts", "list", "--json").stdout)]
    assert "admin@hill.sch.example.uk" not in emails


def test_forms_export_writes_pdf_and_word(deployment: Deployment, tmp_path: Path) -> None:
    out = deployment.cli("forms", "export", str(tmp_path / "forms")).stdout
    paths = [Path(p) for p in out.split()]
    assert {p.suffix for p in paths} == {".pdf", ".docx"}
    assert all(p.stat().st_size > 1000 for p in paths)


def test_demo_runs_offline(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "cme_mailbot.cli", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for outcome in ("processed", "unapproved_sender", "auto_reply_ignored", "no_form"):
        assert outcome in proc.stdout
    assert "accepted CME-" in proc.stdout and "rejected" in proc.stdout
