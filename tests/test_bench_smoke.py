"""The benchmark (`make bench`) still runs end to end: a tiny run, no timing assertions.

It starts its own Dovecot and SMTP server, drains 20 messages and takes 2 latency samples
(about 15 s). Only the exit status and the table's rows are checked: the numbers are for
`make bench` on a quiet machine, never for the test suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .servers import skip_without_dovecot

pytestmark = pytest.mark.dovecot

ROOT = Path(__file__).resolve().parents[1]


def test_bench_runs_and_prints_the_table() -> None:
    skip_without_dovecot()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--messages", "20", "--latency-samples", "2",
         "--no-memory-phase"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in (
        "messages",
        "baseline: fetch + mail-parser",
        "drain: poll --once",
        "throughput ratio drain/baseline",
        "reference: baseline, imaplib debugging off",
        "ack latency p50 / p95 (n=2)",
        "peak RSS poller",
        "memory phase",
    ):
        assert row in proc.stdout, proc.stdout
    assert "20 new, 20 done" in proc.stdout
