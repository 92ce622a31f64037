"""Officers and administrators using the console in Chromium, without JavaScript (the console has
none): sign in, add an approved contact, read a referral that came by email, release a message
from the quarantine. Screenshots go to test-artifacts/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from sqlmodel import Session, select

from cme_mailbot.contacts import list_contacts
from cme_mailbot.models import AuditEvent, Referral
from tests.web_browser.support import ADMIN, OFFICER, PASSWORD, Site


def wait(driver: Any) -> WebDriverWait[Any]:
    return WebDriverWait(driver, 20)


def sign_in(driver: Any, base: str, username: str) -> None:
    driver.get(f"{base}/")
    wait(driver).until(ec.title_contains("Sign in"))
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "main button[type=submit]").click()
    wait(driver).until(ec.title_contains("Dashboard"))


def click_link(driver: Any, text: str) -> None:
    wait(driver).until(ec.element_to_be_clickable((By.PARTIAL_LINK_TEXT, text))).click()


def test_an_officer_signs_in_and_sees_the_dashboard(browser: Any, server: str, shots: Path) -> None:
    sign_in(browser, server, OFFICER)
    heading = browser.find_element(By.TAG_NAME, "h1").text
    assert heading == "Dashboard"
    assert "Signed in as oscar.officer" in browser.find_element(By.CLASS_NAME, "header").text
    browser.save_screenshot(str(shots / "01-dashboard.png"))


def test_the_skip_link_is_the_first_thing_the_keyboard_reaches(browser: Any, server: str) -> None:
    sign_in(browser, server, OFFICER)
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    active = browser.switch_to.active_element
    assert active.text == "Skip to main content"
    active.send_keys(Keys.ENTER)
    wait(browser).until(lambda d: d.switch_to.active_element.get_attribute("id") == "main-content")


def test_an_administrator_adds_an_approved_contact(
    browser: Any, server: str, site: Site, shots: Path
) -> None:
    sign_in(browser, server, ADMIN)
    click_link(browser, "Approved contacts")
    click_link(browser, "Add an approved contact")
    wait(browser).until(ec.title_contains("Add an approved contact"))
    # Submitting empty shows the error summary, focused links to each field.
    browser.find_element(By.CSS_SELECTOR, "main button[type=submit]").click()
    summary = wait(browser).until(
        ec.visibility_of_element_located((By.CLASS_NAME, "error-summary"))
    )
    assert "Enter an email address" in summary.text
    assert browser.title.startswith("Error:")
    browser.save_screenshot(str(shots / "02-contact-errors.png"))
    browser.find_element(By.ID, "email").send_keys("head@oak.sch.example.uk")
    urn = browser.find_element(By.ID, "school_urn")
    urn.clear()
    urn.send_keys("123456")
    browser.find_element(By.ID, "school_name").send_keys("Oak Academy")
    browser.find_element(By.CSS_SELECTOR, "main button[type=submit]").click()
    notice = wait(browser).until(ec.visibility_of_element_located((By.CLASS_NAME, "notification")))
    assert "head@oak.sch.example.uk added for URN 123456" in notice.text
    assert "Oak Academy" in browser.find_element(By.TAG_NAME, "table").text
    browser.save_screenshot(str(shots / "03-contact-added.png"))
    with Session(site.engine) as s:
        assert "head@oak.sch.example.uk" in {c.email for c in list_contacts(s)}
        event = s.exec(
            select(AuditEvent).where(AuditEvent.target == "head@oak.sch.example.uk")
        ).one()
    assert event.actor == ADMIN


def test_an_officer_reads_a_referral_that_arrived_by_email(
    browser: Any, server: str, site: Site, shots: Path
) -> None:
    with Session(site.engine) as s:
        reference = s.exec(select(Referral.reference)).one()
    sign_in(browser, server, OFFICER)
    click_link(browser, "Referrals")
    wait(browser).until(ec.title_contains("Referrals"))
    browser.save_screenshot(str(shots / "04-referrals.png"))
    click_link(browser, reference)
    wait(browser).until(ec.title_contains(f"Referral {reference}"))
    main = browser.find_element(By.TAG_NAME, "main").text
    for text in ("A. The child", "Child's first name", "Maya", "Okafor", "No longer at address",
                 "The email it came in", "cme-referral.pdf"):  # fmt: skip
        assert text in main, text
    assert "Maya" not in browser.current_url and "Okafor" not in browser.current_url
    browser.save_screenshot(str(shots / "05-referral.png"))


def test_an_officer_releases_a_quarantined_message_vouching_for_the_sender(
    browser: Any, server: str, site: Site, shots: Path
) -> None:
    sign_in(browser, server, OFFICER)
    click_link(browser, "Quarantine")
    wait(browser).until(ec.title_contains("Quarantine"))
    click_link(browser, "Message ")
    wait(browser).until(ec.title_contains("Quarantined message"))
    browser.save_screenshot(str(shots / "06-quarantined.png"))
    browser.find_element(By.ID, "release-reason").send_keys(
        "Phoned the school office: they sent it."
    )
    browser.find_element(By.CSS_SELECTOR, "label[for=trust_sender]").click()
    assert browser.find_element(By.ID, "trust_sender").is_selected()
    browser.find_element(By.XPATH, "//button[normalize-space()='Release message']").click()
    notice = wait(browser).until(ec.visibility_of_element_located((By.CLASS_NAME, "notification")))
    assert "New outcome: processed" in notice.text
    assert "Nothing is waiting for review" in browser.find_element(By.TAG_NAME, "main").text
    browser.save_screenshot(str(shots / "07-released.png"))
    with Session(site.engine) as s:
        assert s.exec(select(Referral).where(Referral.child_first_name == "Ruby")).one()
        event = s.exec(select(AuditEvent).where(AuditEvent.action == "quarantine.release")).one()
    assert event.actor == OFFICER and "sender vouched for" in event.detail
