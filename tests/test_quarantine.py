"""The quarantine a person works: list, show, release, reject — each audited."""

from __future__ import annotations

import datetime as dt
import json

from cme_mailbot.forms.fill import fill_pdf
from cme_mailbot.samples import SAMPLE_SENDER, referral_email, referral_values

from .conftest import Deployment


def held(deployment: Deployment) -> list[dict[str, object]]:
    return list(json.loads(deployment.cli("quarantine", "list", "--json").stdout))


def test_list_show_and_reject_a_corrupt_attachment(deployment: Deployment) -> None:
    deployment.deliver(referral_email(attachments=[("form.pdf", b"%PDF-1.7 not really")]))
    deployment.poll()
    [item] = held(deployment)
    assert item["outcome"] == "quarantined"
    assert item["sender"] == SAMPLE_SENDER
    shown = json.loads(deployment.cli("quarantine", "show", str(item["id"]), "--json").stdout)
    assert [a["filename"] for a in shown["attachments"]] == ["form.pdf"]

    proc = deployment.cli("quarantine", "reject", str(item["id"]), check=False)
    assert proc.returncode == 2  # --reason is required
    deployment.cli("quarantine", "reject", str(item["id"]), "--reason", "junk, school phoned")
    assert held(deployment) == []
    [event] = json.loads(deployment.cli("audit", "--json").stdout)[:1]
    assert event["action"] == "quarantine.reject"
    assert event["detail"] == "junk, school phoned"
    again = deployment.cli("quarantine", "reject", str(item["id"]), "--reason", "x", check=False)
    assert again.returncode == 2


def test_release_with_sender_vouched_for_processes_the_stored_original(
    deployment: Deployment, today: dt.date
) -> None:
    # The school's mail failed DMARC (a misconfigured relay); an officer phoned them.
    deployment.deliver(
        referral_email(auth="dmarc=fail", attachments=[("f.pdf", fill_pdf(referral_values(today)))])
    )
    deployment.poll()
    [item] = held(deployment)
    assert item["outcome"] == "unauthenticated_sender"
    assert deployment.sent() == []

    # A plain release re-checks the sender: still held, still no reply.
    out = deployment.cli("quarantine", "release", str(item["id"]), "--reason", "retry").stdout
    assert "unauthenticated_sender" in out
    assert len(held(deployment)) == 1
    assert deployment.sent() == []

    out = deployment.cli(
        "quarantine", "release", str(item["id"]), "--reason", "phoned school", "--trust-sender"
    ).stdout
    assert "processed" in out
    assert held(deployment) == []
    [referral] = deployment.referrals()
    [reply] = deployment.sent()
    assert referral["reference"] in str(reply.get_body(preferencelist=("plain",)))
    [message] = deployment.messages()
    assert message["outcome"] == "processed"
    actions = [e["action"] for e in json.loads(deployment.cli("audit", "--json").stdout)]
    assert actions.count("quarantine.release") == 2


def test_release_of_something_not_held_is_refused(deployment: Deployment,
                                                  today: dt.date) -> None:  # fmt: skip
    deployment.deliver(referral_email(attachments=[("f.pdf", fill_pdf(referral_values(today)))]))
    deployment.poll()
    proc = deployment.cli("quarantine", "release", "1", "--reason", "x", check=False)
    assert proc.returncode == 2
    assert "no quarantined message #1" in proc.stderr
