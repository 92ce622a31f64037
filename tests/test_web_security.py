"""The console's locks: every route needs a session, roles limit pages, CSRF tokens are checked,
sign-in is throttled, sessions are revocable, and the security headers are on every page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from cme_mailbot.models import ApprovedContact, AuditEvent
from cme_mailbot.web import create_app
from cme_mailbot.web.models import Role, User, WebSession
from cme_mailbot.web.page import PERMISSIONS, SESSION_COOKIE
from tests.web_browser.support import (
    ADMIN,
    OFFICER,
    PASSWORD,
    Clock,
    Site,
    attempt_sign_in,
    csrf_of,
    make_site,
    sign_in,
)

PUBLIC = {("sign_in", "GET"), ("sign_in", "HEAD"), ("sign_in_post", "POST")}
# Operational endpoints, public on purpose and free of child data (cme_mailbot/web/ops.py).
OPS = {(n, m) for n in ("healthz", "metrics") for m in ("GET", "HEAD")}


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path / "site")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(site: Site, clock: Clock) -> Iterator[TestClient]:
    with TestClient(create_app(site.settings, site.engine, clock=clock)) as c:
        yield c


def _concrete(path: str) -> str:
    """A real URL for a route path: every parameter filled with a plausible value."""
    path = re.sub(r"\{[a-z_]+:int\}", "1", path)
    return re.sub(r"\{[a-z_]+\}", "CME-2026-00001", path)


def _routes(client: TestClient) -> list[Route]:
    routes = client.app.routes  # type: ignore[attr-defined]
    mounts = [r for r in routes if isinstance(r, Mount)]
    assert [m.path for m in mounts] == ["/static"], "only static files may be mounted"
    plain = [r for r in routes if isinstance(r, Route)]
    assert len(plain) + len(mounts) == len(routes), "an unknown kind of route"
    return plain


def test_every_route_refuses_a_visitor_who_has_not_signed_in(
    client: TestClient, site: Site
) -> None:
    site.seed_referral()
    site.seed_quarantined()
    checked = 0
    for route in _routes(client):
        assert hasattr(route.endpoint, "permission"), f"{route.path} bypasses page()"
        for method in sorted(route.methods or ()):
            url = _concrete(route.path)
            response = client.request(method, url, follow_redirects=False)
            if (route.name, method) in PUBLIC:
                assert response.status_code in (200, 400, 403), (method, url)
                continue
            if (route.name, method) in OPS:
                assert response.status_code in (200, 403, 503), (method, url)
                assert "Maya" not in response.text and "Okafor" not in response.text
                continue
            checked += 1
            if response.status_code == 303:
                assert response.headers["location"].startswith("/sign-in"), (method, url)
            else:
                assert response.status_code in (401, 403), (method, url, response.status_code)
            assert "Maya" not in response.text and "Okafor" not in response.text
    assert checked >= 25


def test_a_forged_or_stale_session_cookie_is_refused(client: TestClient) -> None:
    client.cookies.set(SESSION_COOKIE, "not-a-session")
    response = client.get("/referrals", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/sign-in")


def test_static_files_need_no_session(client: TestClient) -> None:
    response = client.get("/static/console.css")
    assert response.status_code == 200
    assert "text/css" in response.headers["content-type"]


@pytest.mark.parametrize("role", list(Role))
def test_each_role_reaches_exactly_the_pages_its_permissions_name(
    client: TestClient, site: Site, role: Role
) -> None:
    site.seed_referral()
    site.seed_quarantined()
    sign_in(client, ADMIN if role is Role.ADMINISTRATOR else OFFICER)
    for route in _routes(client):
        permission = route.endpoint.permission  # type: ignore[attr-defined]
        if permission is None:
            continue
        for method in ("GET", "POST") if route.methods and "POST" in route.methods else ("GET",):
            if method not in (route.methods or ()):
                continue
            response = client.request(method, _concrete(route.path), follow_redirects=False)
            if permission in PERMISSIONS[role]:
                assert response.status_code != 403 or "expired" in response.text, (
                    role,
                    method,
                    route.path,
                )
            else:
                assert response.status_code == 403, (role, method, route.path)
                assert "Your role does not include this page" in response.text


def test_administrators_see_no_child_data(client: TestClient, site: Site) -> None:
    site.seed_referral()
    sign_in(client, ADMIN)
    for url in ("/", "/contacts", "/audit"):
        assert "Okafor" not in client.get(url).text
    assert client.get("/referrals").status_code == 403
    assert client.get("/referrals/CME-2026-00001").status_code == 403


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    client: TestClient, site: Site
) -> None:
    sign_in(client, ADMIN)
    data = {"email": "head@oak.sch.example.uk", "school_urn": "123456"}
    missing = client.post("/contacts/new", data=data, follow_redirects=False)
    wrong = client.post(
        "/contacts/new", data={**data, "csrf_token": "x" * 43}, follow_redirects=False
    )
    assert missing.status_code == wrong.status_code == 403
    with Session(site.engine) as s:
        assert (
            s.exec(select(ApprovedContact).where(ApprovedContact.email == data["email"])).first()
            is None
        )
    token = csrf_of(client.get("/contacts/new").text)
    ok = client.post("/contacts/new", data={**data, "csrf_token": token}, follow_redirects=False)
    assert ok.status_code == 303


def test_a_post_from_another_site_is_refused_even_with_a_token(
    client: TestClient, site: Site
) -> None:
    sign_in(client, ADMIN)
    token = csrf_of(client.get("/contacts/new").text)
    response = client.post(
        "/contacts/new",
        data={"email": "x@oak.sch.example.uk", "school_urn": "123456", "csrf_token": token},
        headers={"Origin": "https://evil.example.com"},
        follow_redirects=False,
    )
    assert response.status_code == 403


def test_the_csrf_token_of_one_session_does_not_work_in_another(site: Site, clock: Clock) -> None:
    app = create_app(site.settings, site.engine, clock=clock)
    with TestClient(app) as a, TestClient(app) as b:
        sign_in(a, ADMIN)
        sign_in(b, ADMIN)
        token_a = csrf_of(a.get("/contacts/new").text)
        response = b.post(
            "/contacts/new",
            data={"email": "x@oak.sch.example.uk", "school_urn": "123456", "csrf_token": token_a},
            follow_redirects=False,
        )
        assert response.status_code == 403


def test_the_sign_in_form_needs_its_own_token(client: TestClient) -> None:
    response = client.post(
        "/sign-in", data={"username": OFFICER, "password": PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 403
    assert SESSION_COOKIE not in response.cookies


def test_five_wrong_passwords_lock_the_account_for_fifteen_minutes(
    client: TestClient, site: Site, clock: Clock
) -> None:
    for _ in range(5):
        assert attempt_sign_in(client, OFFICER, "wrong password!") == 400
    # Now even the right password is refused, with the lock-out message.
    page = client.get("/sign-in")
    assert attempt_sign_in(client, OFFICER, PASSWORD) == 400
    with Session(site.engine) as s:
        user = s.exec(select(User).where(User.username == OFFICER)).one()
        assert user.locked_until is not None
        assert s.exec(select(AuditEvent).where(AuditEvent.action == "user.locked")).first()
    assert page.status_code == 200
    clock.advance(minutes=16)
    assert attempt_sign_in(client, OFFICER, PASSWORD) == 303


def test_lock_out_message_is_the_same_for_unknown_usernames(client: TestClient) -> None:
    texts = []
    for name in ("nobody.here", OFFICER):
        for _ in range(6):
            page = client.get("/sign-in")
            token = re.search(r'name="sign_in_token" value="([^"]+)"', page.text)
            assert token
            response = client.post(
                "/sign-in",
                data={"username": name, "password": "wrong password!", "sign_in_token": token[1]},
            )
        texts.append(re.sub(r'value="[^"]*"', "", response.text))
    assert "Too many failed sign-ins" in texts[0]
    assert texts[0] == texts[1]


def test_many_failures_from_one_address_block_it_for_every_username(client: TestClient) -> None:
    for n in range(20):
        attempt_sign_in(client, f"guess{n}", "wrong password!")
    assert attempt_sign_in(client, OFFICER, PASSWORD) == 400


def test_signing_out_revokes_the_session_on_the_server(client: TestClient, site: Site) -> None:
    sign_in(client, OFFICER)
    cookie = client.cookies[SESSION_COOKIE]
    token = csrf_of(client.get("/").text)
    assert (
        client.post("/sign-out", data={"csrf_token": token}, follow_redirects=False).status_code
        == 303
    )
    client.cookies.set(SESSION_COOKIE, cookie)  # a stolen copy of the old cookie
    assert client.get("/", follow_redirects=False).status_code == 303
    with Session(site.engine) as s:
        assert s.exec(select(WebSession)).all() == []


def test_the_database_holds_only_a_hash_of_the_session_cookie(
    client: TestClient, site: Site
) -> None:
    sign_in(client, OFFICER)
    cookie = client.cookies[SESSION_COOKIE]
    with Session(site.engine) as s:
        (row,) = s.exec(select(WebSession)).all()
    assert row.id != cookie and len(row.id) == 64


def test_an_idle_session_expires(client: TestClient, clock: Clock) -> None:
    sign_in(client, OFFICER)
    assert client.get("/", follow_redirects=False).status_code == 200
    clock.advance(minutes=31)
    assert client.get("/", follow_redirects=False).status_code == 303


def test_session_cookie_is_httponly_strict_and_secure_over_https(site: Site, clock: Clock) -> None:
    app = create_app(site.settings, site.engine, clock=clock)
    with TestClient(app, base_url="https://console.example.gov.uk") as c:
        page = c.get("/sign-in")
        token = re.search(r'name="sign_in_token" value="([^"]+)"', page.text)
        assert token
        response = c.post(
            "/sign-in",
            data={"username": OFFICER, "password": PASSWORD, "sign_in_token": token[1]},
            follow_redirects=False,
        )
    header = next(
        v for v in response.headers.get_list("set-cookie") if v.startswith(SESSION_COOKIE)
    )
    assert "HttpOnly" in header and "SameSite=strict" in header and "Secure" in header
    assert "Strict-Transport-Security" in response.headers


def test_session_cookie_is_not_secure_over_plain_http_on_loopback(client: TestClient) -> None:
    page = client.get("/sign-in")
    token = re.search(r'name="sign_in_token" value="([^"]+)"', page.text)
    assert token
    response = client.post(
        "/sign-in",
        data={"username": OFFICER, "password": PASSWORD, "sign_in_token": token[1]},
        follow_redirects=False,
    )
    header = next(
        v for v in response.headers.get_list("set-cookie") if v.startswith(SESSION_COOKIE)
    )
    assert "HttpOnly" in header and "SameSite=strict" in header and "Secure" not in header


def test_pages_carry_the_security_headers_and_are_never_cached(
    client: TestClient, site: Site
) -> None:
    site.seed_referral()
    sign_in(client, OFFICER)
    for url in ("/sign-in", "/", "/referrals", "/referrals/CME-2026-00001", "/nowhere"):
        headers = client.get(url).headers
        assert headers["content-security-policy"].startswith("default-src 'self'")
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store"


def test_attachments_download_and_never_render(client: TestClient, site: Site) -> None:
    site.seed_referral()
    sign_in(client, OFFICER)
    response = client.get("/referrals/CME-2026-00001/attachments/0")
    assert response.status_code == 200
    assert response.content.startswith(b"%PDF")
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"].startswith("attachment;")
    assert "sandbox" in response.headers["content-security-policy"]


def test_sign_in_only_returns_to_a_path_on_this_site(client: TestClient) -> None:
    page = client.get("/sign-in?next=//evil.example.com/")
    token = re.search(r'name="sign_in_token" value="([^"]+)"', page.text)
    assert token
    response = client.post(
        "/sign-in",
        data={
            "username": OFFICER,
            "password": PASSWORD,
            "sign_in_token": token[1],
            "next": "//evil.example.com/",
        },
        follow_redirects=False,
    )
    assert response.headers["location"] == "/"


def test_a_disabled_user_is_signed_out_at_once(client: TestClient, site: Site) -> None:
    from cme_mailbot.db import session_scope
    from cme_mailbot.web import accounts

    sign_in(client, OFFICER)
    with session_scope(site.engine) as s:
        accounts.set_active(s, OFFICER, False, actor="test")
    assert client.get("/", follow_redirects=False).status_code == 303
    assert attempt_sign_in(client, OFFICER, PASSWORD) == 400
