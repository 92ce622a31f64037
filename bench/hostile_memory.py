"""Peak memory of the poller while it meets a ZIP bomb and very large attachments.

Builds a scratch deployment (SQLite, Maildir, .eml outbox), delivers the hostile big cases from
tests/data/make_hostile.py (a 1 GB ZIP bomb named .docx, a 25 MB attachment, a 16 MB one) and a
genuine referral, then runs `cme-mailbot poll --once` in a subprocess and prints the peak RSS of
the poller process and of any sandbox worker it starts. Measures; asserts nothing. Target: the
poller under 300 MB.

    .venv/bin/python bench/hostile_memory.py [--wiring cli|sandbox] [--keep DIR]

`--wiring cli` runs the real CLI as wired today; `--wiring sandbox` runs the same pass through a
small driver that hands the pipeline `sandboxed_reader(settings.limits)`, as the CLI will.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cme_mailbot.forms.fill import fill_pdf  # noqa: E402
from cme_mailbot.mailbox.maildir import MaildirMailbox  # noqa: E402
from cme_mailbot.samples import (  # noqa: E402
    AUTHSERV_ID,
    SAMPLE_SCHOOL,
    SAMPLE_SENDER,
    SAMPLE_URN,
    referral_email,
    referral_values,
)
from tests.data import make_hostile  # noqa: E402

CONFIG = """\
[database]
url = "sqlite:///{root}/cme.db"

[mailbox]
backend = "maildir"
path = "{root}/mailbox"

[outbound]
backend = "outbox"
path = "{root}/outbox"
from_address = "cme-referrals@council.example.gov.uk"

[sender_auth]
require = true
trusted_authserv_ids = ["{authserv}"]

[logging]
format = "json"
level = "warning"
"""

DRIVER = """\
import sys
from cme_mailbot.config import load_settings
from cme_mailbot.logging import configure_logging
from cme_mailbot.pipeline import Pipeline
from cme_mailbot.sandbox import sandboxed_reader
from cme_mailbot.wiring import open_database, open_mailbox, open_transport

from pathlib import Path
s = load_settings(Path(sys.argv[1]))
configure_logging(s.logging.format, s.logging.level)
p = Pipeline(open_database(s), s, open_mailbox(s), open_transport(s),
             form_reader=sandboxed_reader(s.limits))
print(p.poll_once().line())
"""


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def run(argv: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], int, int]:
    """Run `argv`, polling VmHWM (the kernel's own peak-RSS mark) of it and its children."""
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    poller_peak = worker_peak = 0
    while proc.poll() is None:
        poller_peak = max(poller_peak, _status_kb(proc.pid, "VmHWM"))
        for child in _children(proc.pid):
            worker_peak = max(worker_peak, _status_kb(child, "VmHWM"))
        time.sleep(0.01)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), poller_peak, worker_peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wiring", choices=["cli", "sandbox"], default="sandbox")
    parser.add_argument("--keep", type=Path, help="build the deployment here and keep it")
    parser.add_argument(
        "--near-cap",
        action="store_true",
        help="add a message just under the 30 MB message cap (a 21.5 MB attachment)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = (args.keep or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        config = root / "config.toml"
        config.write_text(CONFIG.format(root=root, authserv=AUTHSERV_ID), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("CME_MAILBOT_CONFIG", None)
        cli = [sys.executable, "-m", "cme_mailbot.cli", "--config", str(config)]
        subprocess.run(
            [*cli, "contacts", "add", SAMPLE_SENDER, "--school-urn", SAMPLE_URN,
             "--school-name", SAMPLE_SCHOOL],
            env=env, check=True, capture_output=True,
        )  # fmt: skip

        mailbox = MaildirMailbox(root / "mailbox")
        sizes = {}
        cases = make_hostile.big_cases()
        if args.near_cap:
            blob = b"%PDF-1.4\n" + bytes(21 * 2**20 + 2**19)
            cases["near_cap"] = make_hostile.with_attachments("near_cap", [("s.pdf", "", blob)])
        for name, raw in cases.items():
            mailbox.append(raw)
            sizes[name] = len(raw)
        mailbox.append(
            referral_email(
                attachments=[("referral.pdf", fill_pdf(referral_values(dt.date.today())))]
            )
        )
        for name, size in sizes.items():
            print(f"delivered {name:<20} {size / 2**20:8.1f} MB")

        if args.wiring == "cli":
            argv = [*cli, "poll", "--once"]
        else:
            argv = [sys.executable, "-c", DRIVER, str(config)]
        started = time.monotonic()
        done, poller_kb, worker_kb = run(argv, env)
        took = time.monotonic() - started
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss

        print(f"wiring: {args.wiring}; exit {done.returncode} in {took:.1f} s")
        print(f"summary: {done.stdout.strip()}")
        print(f"peak RSS, poller process:   {poller_kb / 1024:7.1f} MB (VmHWM)")
        print(f"peak RSS, sandbox worker:   {worker_kb / 1024:7.1f} MB (VmHWM)")
        print(f"largest child ru_maxrss:    {children / 1024:7.1f} MB (getrusage cross-check)")
        print(f"target: poller under 300 MB -> {'met' if poller_kb < 300 * 1024 else 'NOT met'}")
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
        return done.returncode


if __name__ == "__main__":
    sys.exit(main())
