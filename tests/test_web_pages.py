"""The console's pages do what an officer or administrator expects, and record who did it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, col, select
from starlette.testclient import TestClient

from cme_mailbot.contacts import list_contacts
from cme_mailbot.db import session_scope
from cme_mailbot.models import AuditEvent, InboundMessage, Referral, ReferralStatus
from cme_mailbot.samples import SAMPLE_SENDER, SAMPLE_URN, make_upn
from cme_mailbot.web import create_app
from cme_mailbot.web.models import User
from tests.web_browser.support import ADMIN, OFFICER, Clock, Site, csrf_of, make_site, sign_in


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path / "site")


@pytest.fixture
def client(site: Site) -> Iterator[TestClient]:
    with TestClient(create_app(site.settings, site.engine, clock=Clock())) as c:
        yield c


def _post(client: TestClient, form_page: str, url: str, **data: str) -> object:
    token = csrf_of(client.get(form_page).text)
    return client.post(url, data={**data, "csrf_token": token}, follow_redirects=False)


def _audit(site: Site, action: str) -> list[AuditEvent]:
    with Session(site.engine) as s:
        return list(s.exec(select(AuditEvent).where(AuditEvent.action == action)).all())


def _hrefs(html: str) -> list[str]:
    return re.findall(r'(?:href|action)="([^"]*)"', html)


# ---- dashboard ---------------------------------------------------------------------------


def test_dashboard_counts_todays_mail_open_work_and_the_last_poll(
    client: TestClient, site: Site
) -> None:
    site.seed_referral()
    site.seed_quarantined()
    sign_in(client, OFFICER)
    html = client.get("/").text
    assert "<title>Dashboard – CME referrals" in html
    row = re.search(r"Processed</th><td class=\"numeric\">(\d+)</td>", html)
    assert row and row[1] == "1"
    assert re.search(r"Open referrals</h2>\s*<p class=\"card__number\">1<", html)
    assert re.search(r"Quarantine</h2>\s*<p class=\"card__number\">1<", html)
    assert "maildir:" in html and "never" not in html.split("The mailbox poller")[1][:600]


# ---- approved contacts -------------------------------------------------------------------


def test_administrator_adds_changes_and_removes_a_contact_and_each_step_is_audited(
    client: TestClient, site: Site
) -> None:
    sign_in(client, ADMIN)
    added = _post(
        client,
        "/contacts/new",
        "/contacts/new",
        email="Head@Oak.sch.example.uk",
        school_urn="123456",
        school_name="Oak Academy",
    )
    assert added.status_code == 303  # type: ignore[attr-defined]
    listing = client.get("/contacts?q=oak").text
    assert "head@oak.sch.example.uk" in listing and "added for URN 123456" in listing
    with Session(site.engine) as s:
        view = {c.email: c for c in list_contacts(s)}["head@oak.sch.example.uk"]
    contact_id = re.search(r"/contacts/(\d+)/edit", listing)
    assert contact_id
    edit = f"/contacts/{contact_id[1]}/edit"
    # Add a second school and drop the first, in one go.
    changed = _post(client, edit, edit, school_urn="654321", school_name="Elm School")
    assert changed.status_code == 303  # type: ignore[attr-defined]
    with Session(site.engine) as s:
        view = {c.email: c for c in list_contacts(s)}["head@oak.sch.example.uk"]
    assert [x["urn"] for x in view.schools] == ["654321"]
    remove = f"/contacts/{contact_id[1]}/remove"
    assert _post(client, remove, remove).status_code == 303  # type: ignore[attr-defined]
    with Session(site.engine) as s:
        assert "head@oak.sch.example.uk" not in {c.email for c in list_contacts(s)}
    for action in ("contact.add", "contact.remove_school", "contact.remove"):
        events = [e for e in _audit(site, action) if e.target == "head@oak.sch.example.uk"]
        assert events and all(e.actor == ADMIN for e in events), action


def test_a_contact_keeps_at_least_one_school(client: TestClient, site: Site) -> None:
    sign_in(client, ADMIN)
    with Session(site.engine) as s:
        (view,) = list_contacts(s)
    listing = client.get("/contacts").text
    edit = re.search(r"(/contacts/\d+/edit)", listing)
    assert edit
    response = _post(client, edit[1], edit[1])  # every box unticked, nothing added
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert "needs at least one school" in response.text  # type: ignore[attr-defined]
    assert view.schools[0]["urn"] == SAMPLE_URN


def test_add_contact_form_shows_an_error_summary_linked_to_the_fields(client: TestClient) -> None:
    sign_in(client, ADMIN)
    response = _post(
        client, "/contacts/new", "/contacts/new", email="not an email", school_urn="12"
    )
    html = response.text  # type: ignore[attr-defined]
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert "<title>Error: Add an approved contact" in html
    assert 'href="#email"' in html and 'href="#school_urn"' in html
    assert 'aria-describedby="email-hint email-error"' in html


def test_import_csv_adds_every_row_or_none(client: TestClient, site: Site) -> None:
    sign_in(client, ADMIN)
    token = csrf_of(client.get("/contacts/import").text)
    good = (
        "email,school_urn,school_name\n"
        "a@one.sch.example.uk,111111,One\n"
        "b@two.sch.example.uk,222222,\n"
    )
    response = client.post(
        "/contacts/import",
        data={"csrf_token": token},
        files={"csv": ("contacts.csv", good.encode(), "text/csv")},
        follow_redirects=False,
    )
    assert response.status_code == 303
    bad = "c@three.sch.example.uk,333333\nnot-an-email,444444\n"
    response = client.post(
        "/contacts/import",
        data={"csrf_token": token},
        files={"csv": ("contacts.csv", bad.encode(), "text/csv")},
    )
    assert response.status_code == 400
    assert "Nothing was imported: row 2" in response.text
    with Session(site.engine) as s:
        emails = {c.email for c in list_contacts(s)}
    assert {"a@one.sch.example.uk", "b@two.sch.example.uk"} <= emails
    assert "c@three.sch.example.uk" not in emails
    assert {e.actor for e in _audit(site, "contact.add") if "sch.example.uk" in e.target} >= {ADMIN}


def test_long_lists_come_in_pages_of_fifty(client: TestClient, site: Site) -> None:
    from cme_mailbot.contacts import add_contact

    with session_scope(site.engine) as s:
        for n in range(119):
            add_contact(s, f"staff{n:03d}@big.sch.example.uk", "500000", actor="test")
    sign_in(client, ADMIN)
    first = client.get("/contacts").text
    assert first.count('<th scope="row">') == 50
    assert "Showing 1 to 50 of 120 contacts" in first
    assert 'href="/contacts?page=2"' in first
    last = client.get("/contacts?page=3").text
    assert last.count('<th scope="row">') == 20
    assert "Next page" not in last


def test_officers_read_the_approved_list_but_cannot_change_it(client: TestClient) -> None:
    sign_in(client, OFFICER)
    html = client.get("/contacts").text
    assert SAMPLE_SENDER in html
    assert "Add an approved contact" not in html and "/edit" not in html


# ---- referrals ---------------------------------------------------------------------------


def test_a_referral_that_arrived_by_email_is_shown_with_every_field_by_section(
    client: TestClient, site: Site
) -> None:
    site.seed_referral()
    sign_in(client, OFFICER)
    listing = client.get("/referrals").text
    assert "CME-" in listing and "Maya Okafor" in listing
    reference = re.search(r"(CME-\d{4}-\d{5})", listing)
    assert reference
    html = client.get(f"/referrals/{reference[1]}").text
    for text in (
        "A. The child",
        "E. Vulnerability and safeguarding",
        "Child&#39;s first name",
        "Maya",
        "No longer at address",  # a choice shown by its printed label, not its id
        "Subject",
        "Please find attached a CME referral form.",
        "cme-referral.pdf",
    ):
        assert text in html, text
    assert html.count('<dt class="summary-list__key">') > 40


def test_referrals_filter_by_status_urn_reason_and_date(client: TestClient, site: Site) -> None:
    site.seed_referral()
    site.seed_referral(
        child_first_name="Leo",
        child_last_name="Brennan",
        upn=make_upn(serial=42),
        reason="moved_abroad",
        destination_country="Spain",
    )
    sign_in(client, OFFICER)

    def refs(query: str) -> set[str]:
        return set(re.findall(r">(CME-\d{4}-\d{5})</a>", client.get(f"/referrals?{query}").text))

    assert len(refs("")) == 2
    assert len(refs("reason=moved_abroad")) == 1
    assert len(refs(f"urn={SAMPLE_URN}")) == 2
    assert refs("urn=999999") == set()
    assert refs("status=closed") == set()
    assert refs("from=2000-01-01&to=2000-01-02") == set()
    bad = client.get("/referrals?urn=12&from=yesterday")
    assert bad.status_code == 400 and 'href="#urn"' in bad.text and 'href="#from"' in bad.text


def test_closing_a_referral_needs_a_note_and_is_audited(client: TestClient, site: Site) -> None:
    site.seed_referral()
    sign_in(client, OFFICER)
    with Session(site.engine) as s:
        reference = s.exec(select(Referral.reference)).one()
    page = f"/referrals/{reference}"
    no_note = _post(client, page, f"{page}/status", status="closed", note=" ")
    assert no_note.status_code == 400  # type: ignore[attr-defined]
    assert "Enter a note" in no_note.text  # type: ignore[attr-defined]
    done = _post(client, page, f"{page}/status", status="closed", note="On roll at Elm School")
    assert done.status_code == 303  # type: ignore[attr-defined]
    with Session(site.engine) as s:
        referral = s.exec(select(Referral)).one()
    assert referral.status is ReferralStatus.CLOSED and referral.closed_at is not None
    (event,) = _audit(site, "referral.close")
    assert (event.actor, event.target, event.detail) == (
        OFFICER,
        reference,
        "On roll at Elm School",
    )
    assert "is now closed" in client.get(page).text


def test_no_child_data_ever_appears_in_a_link(client: TestClient, site: Site) -> None:
    site.seed_referral()
    site.seed_unauthenticated()
    sign_in(client, OFFICER)
    with Session(site.engine) as s:
        referral = s.exec(select(Referral)).one()
    secrets = [referral.child_first_name, referral.child_last_name, referral.upn, "Ruby"]
    secrets.append(referral.child_dob.isoformat() if referral.child_dob else "")
    pages = ["/", "/referrals", f"/referrals/{referral.reference}", "/quarantine", "/audit"]
    pages += re.findall(r'href="(/quarantine/\d+)"', client.get("/quarantine").text)
    for page in pages:
        for href in _hrefs(client.get(page).text):
            for secret in filter(None, secrets):
                assert str(secret).lower() not in href.lower(), (page, href)


# ---- quarantine --------------------------------------------------------------------------


def _quarantined_id(site: Site) -> int:
    with Session(site.engine) as s:
        row = s.exec(
            select(InboundMessage)
            .where(col(InboundMessage.review).is_(None))
            .order_by(col(InboundMessage.id).desc())
        ).first()
    assert row and row.id
    return row.id


def test_releasing_an_unauthenticated_message_with_the_sender_vouched_for_records_it(
    client: TestClient, site: Site
) -> None:
    site.seed_unauthenticated()
    message_id = _quarantined_id(site)
    sign_in(client, OFFICER)
    page = f"/quarantine/{message_id}"
    html = client.get(page).text
    assert "Sender vouched for" in html and "referral.pdf" in html
    no_reason = _post(client, page, f"{page}/release", reason="", trust_sender="yes")
    assert no_reason.status_code == 400  # type: ignore[attr-defined]
    done = _post(client, page, f"{page}/release", reason="Phoned the school", trust_sender="yes")
    assert done.status_code == 303  # type: ignore[attr-defined]
    assert "New outcome: processed" in client.get("/quarantine").text
    with Session(site.engine) as s:
        assert s.exec(select(Referral).where(Referral.child_first_name == "Ruby")).one()
    (event,) = _audit(site, "quarantine.release")
    assert event.actor == OFFICER and "sender vouched for" in event.detail


def test_rejecting_a_quarantined_message_needs_a_reason(client: TestClient, site: Site) -> None:
    site.seed_quarantined()
    message_id = _quarantined_id(site)
    sign_in(client, OFFICER)
    page = f"/quarantine/{message_id}"
    assert "could not be parsed" in client.get(page).text
    assert _post(client, page, f"{page}/reject", reason="").status_code == 400  # type: ignore[attr-defined]
    assert _post(client, page, f"{page}/reject", reason="Spam").status_code == 303  # type: ignore[attr-defined]
    assert "Nothing is waiting for review" in client.get("/quarantine").text
    assert f"Message {message_id}" in client.get("/quarantine?show=reviewed").text
    (event,) = _audit(site, "quarantine.reject")
    assert (event.actor, event.detail) == (OFFICER, "Spam")


# ---- users and the audit log -------------------------------------------------------------


def test_administrator_adds_a_user_who_can_then_sign_in(client: TestClient, site: Site) -> None:
    sign_in(client, ADMIN)
    response = _post(
        client,
        "/users/new",
        "/users/new",
        username="new.officer",
        role="officer",
        password="a long enough password",
        confirm="a long enough password",
    )
    assert response.status_code == 303  # type: ignore[attr-defined]
    short = _post(
        client,
        "/users/new",
        "/users/new",
        username="x.y",
        role="officer",
        password="short",
        confirm="short",
    )
    assert short.status_code == 400  # type: ignore[attr-defined]
    with TestClient(create_app(site.settings, site.engine)) as other:
        sign_in(other, "new.officer", "a long enough password")
        assert other.get("/referrals").status_code == 200
    assert _audit(site, "user.add")[-1].actor == ADMIN


def test_an_administrator_cannot_disable_themselves(client: TestClient, site: Site) -> None:
    sign_in(client, ADMIN)
    with Session(site.engine) as s:
        me = s.exec(select(User).where(User.username == ADMIN)).one()
    page = f"/users/{me.id}"
    assert "Disable user" not in client.get(page).text
    response = _post(client, page, f"{page}/active", active="no")
    assert response.status_code == 400  # type: ignore[attr-defined]


def test_audit_log_hides_casework_notes_from_administrators(client: TestClient, site: Site) -> None:
    site.seed_referral()
    sign_in(client, OFFICER)
    with Session(site.engine) as s:
        reference = s.exec(select(Referral.reference)).one()
    page = f"/referrals/{reference}"
    _post(client, page, f"{page}/status", status="closed", note="Maya is on roll elsewhere")
    assert "Maya is on roll elsewhere" in client.get("/audit").text
    with TestClient(create_app(site.settings, site.engine)) as admin:
        sign_in(admin, ADMIN)
        html = admin.get("/audit").text
        assert "referral.close" in html and "Maya" not in html


def test_a_user_changes_their_own_password(client: TestClient) -> None:
    sign_in(client, OFFICER)
    response = _post(
        client,
        "/account/password",
        "/account/password",
        current="correct horse battery staple",
        new="another long password",
        confirm="another long password",
    )
    assert response.status_code == 303  # type: ignore[attr-defined]
    assert client.get("/", follow_redirects=False).status_code == 200  # still signed in
