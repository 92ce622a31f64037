"""/healthz and /metrics: what monitoring sees, and who may see it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from cme_mailbot.config import (
    DatabaseSettings,
    MailboxSettings,
    OutboundSettings,
    SenderAuthSettings,
    Settings,
)
from cme_mailbot.contacts import add_contact
from cme_mailbot.db import session_scope
from cme_mailbot.forms.fill import fill_pdf
from cme_mailbot.mailbox.maildir import MaildirMailbox
from cme_mailbot.pipeline import Pipeline
from cme_mailbot.samples import SAMPLE_SENDER, SAMPLE_URN, referral_email, referral_values
from cme_mailbot.transport.outbox import OutboxTransport
from cme_mailbot.web import create_app
from cme_mailbot.web.settings import WebSettings
from cme_mailbot.wiring import open_database


def settings_for(root: Path, **web: object) -> Settings:
    return Settings(
        database=DatabaseSettings(url=f"sqlite:///{root}/cme.db"),
        mailbox=MailboxSettings(backend="maildir", path=root / "mb"),
        outbound=OutboundSettings(backend="outbox", path=root / "out"),
        sender_auth=SenderAuthSettings(require=False),
        web=WebSettings(**web),  # type: ignore[arg-type]
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as c:
        yield c


def poll(settings: Settings) -> None:
    engine = open_database(settings)
    with session_scope(engine) as s:
        add_contact(s, SAMPLE_SENDER, SAMPLE_URN)
    box = MaildirMailbox(settings.mailbox.path)
    box.append(referral_email(attachments=[("f.pdf", fill_pdf(referral_values(dt.date.today())))]))
    box.append(referral_email(attachments=[("f.pdf", b"%PDF-1.4 broken")]))
    Pipeline(engine, settings, box, OutboxTransport(settings.outbound.path)).poll_once()


def test_healthz_is_unhealthy_until_a_poll_then_ok(client: TestClient, settings: Settings) -> None:
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.text == "unhealthy\n"
    poll(settings)
    response = client.get("/healthz")
    assert (response.status_code, response.text) == (200, "ok\n")


def test_metrics_count_outcomes_replies_and_the_quarantine(
    client: TestClient, settings: Settings
) -> None:
    poll(settings)
    text = client.get("/metrics").text
    assert 'cme_messages_total{outcome="processed"} 1.0' in text
    assert 'cme_messages_total{outcome="quarantined"} 1.0' in text
    assert "cme_referrals_open 1.0" in text
    assert "cme_quarantine_pending 1.0" in text
    assert 'cme_outbound{state="sent"} 2.0' in text
    assert "cme_reply_failures_total 0.0" in text
    assert "cme_poll_duration_seconds{mailbox=" in text
    assert "cme_queue_depth{mailbox=" in text
    assert "Maya" not in text and "Okafor" not in text


def test_metrics_refuse_requests_through_a_proxy(client: TestClient) -> None:
    response = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 403


def test_metrics_with_a_token_need_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CME_TEST_METRICS_TOKEN", "s3cret-token")
    settings = settings_for(tmp_path, metrics_token_env="CME_TEST_METRICS_TOKEN")
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as c:
        assert c.get("/metrics").status_code == 403
        assert c.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 403
        ok = c.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
        assert "cme_referrals_open" in ok.text
