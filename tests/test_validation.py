"""The rule book: every rule hit and missed on a read form, and the loader's loud errors."""

from __future__ import annotations

import copy
import datetime as dt
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cme_mailbot.schema import RULES_DIR, default_schema
from cme_mailbot.validation import (
    RuleBook,
    RuleBookError,
    RuleFailure,
    ValidationContext,
    ValidationResult,
    default_rulebook,
)
from cme_mailbot.validation.rulebook import parse_rulebook, render_message

TODAY = dt.date(2025, 3, 14)
URN = "123456"
CONTACTS = {
    "ehe_contact": "ehe@council.gov.uk",
    "admissions_contact": "admissions@council.gov.uk",
    "mash_phone": "01582 000000",
    "mash_email": "mash@council.gov.uk",
}


def a_form(**overrides: str) -> dict[str, str]:
    """A form that passes every rule, as a form reader yields it; `field=""` blanks a field."""
    form = {
        "child_first_name": "Amelia",
        "child_last_name": "Quigley",
        "child_dob": "03/04/2015",
        "child_gender": "Female",
        "upn": "B801200005001",
        "year_group": "Year 4",
        "address_line1": "12 Example Road",
        "town": "Luton",
        "postcode": "lu1 2ab",
        "parent1_name": "Jane Quigley",
        "parent1_phone": "07911 123456",
        "parent1_email": "Jane@Example.COM",
        "school_name": "Example Primary School",
        "school_urn": URN,
        "referrer_name": "Sam Office",
        "referrer_role": "Attendance officer",
        "referrer_phone": "01582 123456",
        "referrer_email": "office@example-school.org.uk",
        "referral_date": "10/03/2025",
        "date_last_attended": "3 Feb 2025",
        "reason": "No longer at address",
        "enquiries_made": "Home visit with EWO; neighbours say the family moved out.",
        "enquiries_completed_date": "07/03/2025",
        "ewo_consulted": "Yes",
        "ewo_name": "Pat Welfare",
        "electively_home_educated": "No",
        "in_admissions_process": "☐",
        "child_protection_concern": "No",
    }
    form.update(overrides)
    return form


def a_context(**overrides: Any) -> ValidationContext:
    fields: dict[str, Any] = {
        "today": TODAY,
        "sender_urns": frozenset({URN}),
        "contacts": CONTACTS,
    }
    fields.update(overrides)
    return ValidationContext(**fields)


def validate(form: Mapping[str, str], ctx: ValidationContext | None = None) -> ValidationResult:
    return default_rulebook().validate(form, ctx or a_context())


def ids(failures: list[RuleFailure]) -> list[str]:
    return [f.rule_id for f in failures]


def failures_of(result: ValidationResult, rule_id: str) -> list[RuleFailure]:
    return [f for f in result.failures if f.rule_id == rule_id]


# ---- a good form -----------------------------------------------------------------------------


def test_a_good_form_passes_every_rule_with_normalised_values() -> None:
    result = validate(a_form())
    assert result.ok
    assert result.failures == [] and result.warnings == []
    assert result.duplicate_of is None and not result.safeguarding_alert
    v = result.values
    assert v["child_dob"] == dt.date(2015, 4, 3)
    assert v["date_last_attended"] == dt.date(2025, 2, 3)
    assert v["child_gender"] == "female" and v["year_group"] == "year_4"
    assert v["reason"] == "no_longer_at_address"
    assert v["ewo_consulted"] is True and v["in_admissions_process"] is False
    assert v["postcode"] == "LU1 2AB"
    assert v["parent1_phone"] == "+447911123456"
    assert v["parent1_email"] == "Jane@example.com"
    assert v["school_urn"] == URN and v["upn"] == "B801200005001"
    assert v["child_first_name"] == "Amelia"


def test_blank_and_unparseable_fields_are_not_in_values() -> None:
    result = validate(a_form(address_line2="   ", parent1_email="not an address"))
    assert "address_line2" not in result.values
    assert "parent1_email" not in result.values
    assert "destination_school" not in result.values


def test_fields_not_in_the_schema_are_ignored() -> None:
    assert validate({**a_form(), "favourite_colour": "blue"}).ok


# ---- rule 1: required ------------------------------------------------------------------------

MANDATORY = [spec.id for spec in default_schema().fields if spec.need == "M"]


@pytest.mark.parametrize("field_id", MANDATORY)
def test_each_missing_mandatory_field_is_named_by_its_printed_label(field_id: str) -> None:
    result = validate(a_form(**{field_id: ""}))
    [failure] = failures_of(result, "required")
    label = default_schema()[field_id].label
    assert failure.fields == (field_id,)
    assert failure.message == f"'{label}' is missing. Please fill it in and send the form again."
    assert failure.source
    assert field_id not in result.values


def test_every_missing_field_is_reported_at_once() -> None:
    form = {k: v for k, v in a_form().items() if k not in ("town", "postcode", "upn")}
    result = validate(form)
    assert [f.fields for f in failures_of(result, "required")] == [
        ("upn",),
        ("town",),
        ("postcode",),
    ]


@pytest.mark.parametrize(
    ("overrides", "field_id", "because"),
    [
        (
            {"reason": "not_returned_from_leave"},
            "leave_agreed_return_date",
            "'Reason for referral' is 'Not returned from leave'",
        ),
        ({"reason": "moved abroad"}, "destination_country", "is 'Moved abroad'"),
        ({"ewo_name": ""}, "ewo_name", "'Enquiries completed with the Education Welfare Officer'"),
        ({"child_protection_concern": "yes"}, "safeguarding_details", "concerns?' is 'Yes'"),
    ],
)
def test_a_conditional_field_is_required_when_its_condition_holds(
    overrides: dict[str, str], field_id: str, because: str
) -> None:
    result = validate(a_form(**overrides))
    [failure] = failures_of(result, "required")
    assert failure.fields == (field_id,)
    assert failure.message.startswith(f"'{default_schema()[field_id].label}' is missing.")
    assert because in failure.message


def test_a_conditional_field_is_not_required_when_its_condition_does_not_hold() -> None:
    result = validate(a_form(reason="moved_abroad", destination_country="Spain"))
    assert not failures_of(result, "required")
    # ewo_consulted = no: no EWO name needed (though rule 6 may object for some reasons)
    result = validate(a_form(reason="moved_abroad", destination_country="Spain", ewo_consulted="n"))
    assert result.ok


def test_an_empty_mandatory_yes_no_is_missing() -> None:
    result = validate(a_form(electively_home_educated=""))
    assert [f.fields for f in failures_of(result, "required")] == [("electively_home_educated",)]


# ---- value formats ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field_id", "text", "message"),
    [
        (
            "child_dob",
            "31/02/2016",
            "'Date of birth' must be a date written day first, such as 03/04/2015 or 3 April 2015.",
        ),
        ("ewo_consulted", "maybe", "must be Yes or No."),
        ("upn", "B8012", "must be a 13-character Unique Pupil Number"),
        ("postcode", "QX", "'Postcode' must be a UK postcode, such as LU1 2AB."),
        ("parent1_phone", "999", "must be a telephone number, such as 01582 123456."),
        ("referrer_email", "office@", "must be an email address, such as name@school.org.uk."),
        ("school_urn", "98765", "'School URN' must be the school's 6-digit URN, such as 123456."),
        (
            "reason",
            "gone",
            "'Reason for referral' must be one of 'No longer at address', 'Moved abroad', "
            "'Not returned from leave'.",
        ),
    ],
)
def test_an_unreadable_value_is_one_value_format_failure_naming_the_expected_format(
    field_id: str, text: str, message: str
) -> None:
    result = validate(a_form(**{field_id: text}))
    [failure] = failures_of(result, "value_format")
    assert failure.fields == (field_id,)
    assert message in failure.message
    assert failure.message.endswith("Please correct it and send the form again.")
    assert field_id not in result.values
    assert text not in failure.message


def test_an_unreadable_value_is_not_also_reported_missing() -> None:
    result = validate(a_form(child_dob="sometime in 2015"))
    assert ids(result.failures) == ["value_format"]


# ---- rule 7: one child -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field_id", "text"),
    [
        ("child_first_name", "Amy and Ben"),
        ("child_first_name", "Amy AND Ben"),
        ("child_first_name", "Amy & Ben"),
        ("child_first_name", "Amy, Ben"),
        ("child_first_name", "Amy/Ben"),
        ("child_first_name", "Amy + Ben"),
        ("child_last_name", "Smith and Jones"),
    ],
)
def test_names_of_more_than_one_child_break_the_one_child_rule(field_id: str, text: str) -> None:
    result = validate(a_form(**{field_id: text}))
    assert ids(result.failures) == ["one_child"]
    assert result.failures[0].fields == (field_id,)
    assert text not in result.failures[0].message


@pytest.mark.parametrize("text", ["Mary-Ann", "Andrew", "Alexandra", "O'Brien", "Anne Marie"])
def test_one_childs_name_passes_the_one_child_rule(text: str) -> None:
    assert validate(a_form(child_first_name=text)).ok


@pytest.mark.parametrize("text", ["03/04/2015 and 05/06/2016", "03/04/2015, 5 June 2016"])
def test_two_dates_of_birth_break_the_one_child_rule_and_not_the_date_format(text: str) -> None:
    result = validate(a_form(child_dob=text))
    assert ids(result.failures) == ["one_child"]
    assert result.failures[0].fields == ("child_dob",)


def test_two_names_and_two_dates_are_one_failure_naming_all_three_fields() -> None:
    result = validate(a_form(child_first_name="Amy & Ben", child_dob="1/1/15 & 2/2/16"))
    assert [f.fields for f in result.failures] == [("child_first_name", "child_dob")]


# ---- rule 4: UPN -----------------------------------------------------------------------------


def test_a_wrong_upn_check_letter_fails() -> None:
    result = validate(a_form(upn="A801200005001"))
    assert ids(result.failures) == ["upn_check_letter"]
    assert "Unique Pupil Number (UPN)" in result.failures[0].message
    assert result.values["upn"] == "A801200005001"


def test_a_temporary_upn_is_accepted() -> None:
    assert validate(a_form(upn="M80120000500A")).ok


def test_an_unknown_la_code_is_a_warning_not_a_failure() -> None:
    result = validate(a_form(upn="E000200005001"))
    assert result.ok
    assert ids(result.warnings) == ["upn_la_code"]


def test_a_wrong_check_letter_on_an_unknown_la_code_is_only_the_check_letter_failure() -> None:
    result = validate(a_form(upn="A000200005001"))
    assert ids(result.failures) == ["upn_check_letter"] and result.warnings == []


# ---- rule 2: compulsory school age -----------------------------------------------------------


@pytest.mark.parametrize(
    ("dob", "ok"),
    [
        ("03/04/2015", True),
        ("31/08/2019", True),  # 5 on 31 Aug 2024, a prescribed day: started that day
        ("01/09/2019", True),  # started 31 Dec 2024
        ("01/01/2020", False),  # starts 31 Mar 2025, after the referral date
        ("01/09/2008", True),  # 16 on 1 Sep 2024: leaves June 2025
        ("31/08/2008", False),  # 16 on 31 Aug 2024: left on 28 June 2024
    ],
)
def test_the_child_must_be_of_compulsory_school_age_on_the_referral_date(
    dob: str, ok: bool
) -> None:
    result = validate(a_form(child_dob=dob))
    assert ids(result.failures) == ([] if ok else ["compulsory_school_age"])
    if not ok:
        message = result.failures[0].message
        assert "'Date of birth'" in message and "'Date of referral'" in message
        assert dob not in message


def test_school_age_is_not_judged_without_both_dates() -> None:
    result = validate(a_form(referral_date=""))
    assert ids(result.failures) == ["required"]


# ---- rule 3: dates ---------------------------------------------------------------------------

DATE_FIELDS = ["child_dob", "referral_date", "date_last_attended", "enquiries_completed_date"]


@pytest.mark.parametrize("field_id", DATE_FIELDS)
def test_a_date_in_the_future_fails(field_id: str) -> None:
    result = validate(a_form(**{field_id: "15/03/2025"}))
    failures = failures_of(result, "dates_not_future")
    assert [f.fields for f in failures] == [(field_id,)]
    assert failures[0].message.startswith(f"'{default_schema()[field_id].label}' is in the future")


def test_todays_date_is_not_in_the_future() -> None:
    assert validate(a_form(referral_date="14/03/2025", enquiries_completed_date="14/03/2025")).ok


def test_date_last_attended_after_the_referral_date_fails() -> None:
    result = validate(a_form(date_last_attended="11/03/2025"))
    assert ids(result.failures) == ["last_attended_before_referral"]
    assert result.failures[0].fields == ("date_last_attended", "referral_date")
    assert "'Date last attended' is after the 'Date of referral'" in result.failures[0].message


def test_date_last_attended_on_the_referral_date_passes() -> None:
    assert validate(a_form(date_last_attended="10/03/2025")).ok


def _leave(return_date: str) -> dict[str, str]:
    return a_form(reason="Not returned from leave", leave_agreed_return_date=return_date)


@pytest.mark.parametrize("return_date", ["10/03/2025", "12/03/2025"])
def test_leave_return_date_not_yet_passed_fails(return_date: str) -> None:
    result = validate(_leave(return_date))
    assert ids(result.failures) == ["leave_return_passed"]
    message = result.failures[0].message
    assert "'Agreed date of return from leave' is not before the 'Date of referral'" in message


def test_leave_return_date_passed_is_fine() -> None:
    assert validate(_leave("09/03/2025")).ok


def test_leave_return_date_is_only_checked_for_not_returned_from_leave() -> None:
    result = validate(a_form(leave_agreed_return_date="12/03/2025"))
    assert result.ok


# ---- rule 5: not CME -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field_id", "rule_id", "contact"),
    [
        ("electively_home_educated", "not_cme_home_educated", "ehe@council.gov.uk"),
        ("in_admissions_process", "not_cme_admissions", "admissions@council.gov.uk"),
    ],
)
def test_home_education_or_admissions_is_not_cme_and_says_whom_to_contact(
    field_id: str, rule_id: str, contact: str
) -> None:
    result = validate(a_form(**{field_id: "☒"}))
    assert ids(result.failures) == [rule_id]
    message = result.failures[0].message
    assert "not a CME referral" in message and contact in message
    assert default_schema()[field_id].label in message


def test_an_unconfigured_contact_stays_readable() -> None:
    result = validate(a_form(electively_home_educated="yes"), a_context(contacts={}))
    assert "{ehe_contact}" in result.failures[0].message


def test_render_message_leaves_unknown_placeholders() -> None:
    assert render_message("{a} and {b}", {"a": "1"}) == "1 and {b}"


# ---- rule 6: EWO -----------------------------------------------------------------------------


def test_no_longer_at_address_needs_enquiries_with_the_ewo() -> None:
    result = validate(a_form(ewo_consulted="No", ewo_name=""))
    assert ids(result.failures) == ["ewo_consulted"]
    failure = result.failures[0]
    assert failure.fields == ("ewo_consulted", "reason")
    assert "'No longer at address'" in failure.message and "must be 'Yes'" in failure.message


def test_other_reasons_do_not_need_the_ewo() -> None:
    form = a_form(reason="moved_abroad", destination_country="Spain", ewo_consulted="no")
    assert validate(form).ok


def test_a_missing_ewo_answer_is_only_reported_missing() -> None:
    assert ids(validate(a_form(ewo_consulted="", ewo_name="")).failures) == ["required"]


# ---- rule 8: school URN ----------------------------------------------------------------------


def test_a_school_urn_not_among_the_senders_schools_fails() -> None:
    result = validate(a_form(school_urn="654321"))
    assert ids(result.failures) == ["school_urn_approved"]
    assert "'School URN'" in result.failures[0].message


def test_the_urn_is_compared_after_normalising() -> None:
    assert validate(a_form(school_urn=" 123 456 ")).ok


# ---- rule 9: duplicates ----------------------------------------------------------------------


class OpenReferrals:
    """A stand-in for the pipeline's lookup: records what it was asked."""

    def __init__(self, reference: str | None = "CME-2025-0042") -> None:
        self.reference = reference
        self.asked: list[dict[str, object]] = []

    def __call__(self, values: Mapping[str, object]) -> str | None:
        self.asked.append(dict(values))
        return self.reference


def test_a_child_with_an_open_referral_is_a_duplicate_quoting_the_reference() -> None:
    lookup = OpenReferrals()
    result = validate(a_form(), a_context(find_open_referral=lookup))
    assert result.duplicate_of == "CME-2025-0042"
    assert result.ok  # nothing to fix: the pipeline records nothing new and quotes the reference
    assert ids(result.warnings) == ["duplicate"]
    assert "CME-2025-0042" in result.warnings[0].message
    [asked] = lookup.asked
    assert asked["upn"] == "B801200005001"
    assert asked["child_dob"] == dt.date(2015, 4, 3)


def test_no_open_referral_is_no_duplicate() -> None:
    lookup = OpenReferrals(reference=None)
    result = validate(a_form(), a_context(find_open_referral=lookup))
    assert result.ok and result.duplicate_of is None and len(lookup.asked) == 1


def test_a_bad_upn_is_not_used_to_find_the_child_but_the_name_and_dob_are() -> None:
    lookup = OpenReferrals()
    result = validate(a_form(upn="A801200005001"), a_context(find_open_referral=lookup))
    [asked] = lookup.asked
    assert "upn" not in asked and asked["child_last_name"] == "Quigley"
    assert ids(result.failures) == ["upn_check_letter"]
    assert ids(result.warnings) == ["duplicate"]


def test_two_children_on_a_form_are_looked_up_by_upn_only() -> None:
    lookup = OpenReferrals()
    validate(a_form(child_first_name="Amy and Ben"), a_context(find_open_referral=lookup))
    [asked] = lookup.asked
    assert "child_first_name" not in asked and asked["upn"] == "B801200005001"


def test_a_child_who_cannot_be_identified_is_not_looked_up() -> None:
    lookup = OpenReferrals()
    form = a_form(upn="A801200005001", child_dob="")
    result = validate(form, a_context(find_open_referral=lookup))
    assert lookup.asked == [] and result.duplicate_of is None


def test_other_failures_do_not_stop_the_duplicate_check() -> None:
    lookup = OpenReferrals()
    result = validate(
        a_form(postcode="", school_urn="999999"), a_context(find_open_referral=lookup)
    )
    assert result.duplicate_of == "CME-2025-0042"
    assert ids(result.failures) == ["required", "school_urn_approved"]
    assert ids(result.warnings) == ["duplicate"]


# ---- rule 10: safeguarding -------------------------------------------------------------------


def test_a_child_protection_concern_raises_the_alert_and_tells_the_school_about_the_mash() -> None:
    result = validate(a_form(child_protection_concern="Yes", safeguarding_details="Details."))
    assert result.ok and result.safeguarding_alert
    [warning] = result.warnings
    assert warning.rule_id == "safeguarding_alert"
    assert "MUST also report" in warning.message
    assert "01582 000000" in warning.message and "mash@council.gov.uk" in warning.message


def test_a_child_protection_concern_is_never_dropped_when_the_form_fails() -> None:
    form = a_form(child_protection_concern="x", electively_home_educated="yes", town="")
    result = validate(form)
    assert result.safeguarding_alert
    assert ids(result.failures) == ["not_cme_home_educated", "required", "required"]
    assert ids(result.warnings) == ["safeguarding_alert"]


def test_an_unclear_child_protection_answer_raises_the_alert_too() -> None:
    result = validate(a_form(child_protection_concern="possibly - see notes"))
    assert result.safeguarding_alert
    assert ids(result.failures) == ["value_format"]
    assert "treated it as Yes" in result.warnings[0].message


def test_no_child_protection_concern_raises_no_alert() -> None:
    result = validate(a_form(child_protection_concern="☐"))
    assert not result.safeguarding_alert and result.warnings == []


# ---- messages carry no child data and come in file order -------------------------------------


def test_messages_never_carry_the_childs_details() -> None:
    form = a_form(
        child_first_name="Zebedee and Xanthe",
        child_dob="01/01/2001",
        upn="A801200005001",
        postcode="QQ",
        parent1_phone="999",
        electively_home_educated="yes",
        child_protection_concern="yes",
        address_line1="",
    )
    result = validate(form, a_context(find_open_referral=OpenReferrals()))
    assert len(result.failures) >= 5
    personal = default_schema().personal_ids
    for failure in result.failures + result.warnings:
        for field_id, text in form.items():
            if field_id in personal and len(text) > 2:
                assert text not in failure.message
        assert "Zebedee" not in failure.message and "2001" not in failure.message


def test_failures_are_reported_in_the_order_of_the_rule_book() -> None:
    form = a_form(
        child_first_name="Amy & Ben",
        in_admissions_process="yes",
        town="",
        postcode="nope",
        upn="A801200005001",
        referral_date="12/03/2025",
        date_last_attended="13/03/2025",
        school_urn="999999",
    )
    result = validate(form)
    order = default_rulebook().ids
    assert ids(result.failures) == sorted(ids(result.failures), key=order.index)
    assert ids(result.failures) == [
        "one_child",
        "not_cme_admissions",
        "required",
        "value_format",
        "upn_check_letter",
        "last_attended_before_referral",
        "school_urn_approved",
    ]


def test_every_failure_has_a_source_and_the_fields_involved() -> None:
    result = validate(a_form(town="", school_urn="999999", ewo_consulted="no", ewo_name=""))
    assert result.failures
    for failure in result.failures:
        assert failure.source and failure.fields


# ---- the rule book file ----------------------------------------------------------------------


def test_the_shipped_rule_book_covers_all_ten_rules() -> None:
    book = default_rulebook()
    assert default_rulebook() is book
    kinds = {rule.kind for rule in book.rules}
    assert kinds >= {
        "required",
        "compulsory_school_age",
        "dates_not_future",
        "date_order",
        "leave_return_passed",
        "upn_check_letter",
        "reject_when_yes",
        "requires_value",
        "one_child",
        "school_urn_approved",
        "duplicate",
        "safeguarding_alert",
        "value_format",
    }
    assert all(rule.enabled for rule in book.rules)


def shipped() -> dict[str, Any]:
    with (RULES_DIR / "rules.toml").open("rb") as fh:
        return tomllib.load(fh)


def rule_table(data: dict[str, Any], rule_id: str) -> dict[str, Any]:
    return next(r for r in data["rules"] if r["id"] == rule_id)


def test_a_disabled_rule_is_skipped() -> None:
    data = shipped()
    rule_table(data, "required")["enabled"] = False
    book = parse_rulebook(data, default_schema())
    result = book.validate(a_form(town=""), a_context())
    assert result.ok
    assert not default_rulebook().validate(a_form(town=""), a_context()).ok


def test_a_warning_severity_moves_a_rule_to_the_warnings() -> None:
    data = shipped()
    rule_table(data, "school_urn_approved")["severity"] = "warning"
    result = parse_rulebook(data, default_schema()).validate(
        a_form(school_urn="999999"), a_context()
    )
    assert result.ok and ids(result.warnings) == ["school_urn_approved"]


def test_the_order_of_the_file_is_the_order_of_the_failures() -> None:
    data = shipped()
    data["rules"].reverse()
    book = parse_rulebook(data, default_schema())
    result = book.validate(a_form(town="", school_urn="999999"), a_context())
    assert ids(result.failures) == ["school_urn_approved", "required"]


def _mutate(rule_id: str | None, change: Any) -> dict[str, Any]:
    data = copy.deepcopy(shipped())
    change(rule_table(data, rule_id) if rule_id else data)
    return data


@pytest.mark.parametrize(
    ("rule_id", "change", "error"),
    [
        ("required", lambda r: r.pop("kind"), "rule required: key 'kind'"),
        ("required", lambda r: r.update(kind="nonsense"), "'nonsense' is not one of"),
        ("required", lambda r: r.update(enabled="yes"), "rule required: key 'enabled'"),
        ("required", lambda r: r.pop("message"), "rule required: key 'message'"),
        ("required", lambda r: r.update(source=""), "rule required: key 'source'"),
        ("required", lambda r: r.update(severity="fatal"), "rule required: key 'severity'"),
        ("required", lambda r: r.update(id="Required!"), "key 'id'"),
        ("required", lambda r: r.update(message="{label"), "rule required: key 'message'"),
        ("required", lambda r: r.update(message="{label.upper}"), "placeholder"),
        ("required", lambda r: r.update(message="{label!r}"), "placeholder"),
        ("required", lambda r: r.update(extra=1), "rule required: key 'extra' is not a parameter"),
        ("required", lambda r: r.update(conditional_message="{x"), "'conditional_message'"),
        ("upn_check_letter", lambda r: r.update(field="upm"), "names unknown field 'upm'"),
        ("upn_check_letter", lambda r: r.update(field="postcode"), "must be of type upn"),
        ("upn_check_letter", lambda r: r.pop("field"), "key 'field' is missing"),
        ("dates_not_future", lambda r: r.update(fields=[]), "key 'fields'"),
        ("dates_not_future", lambda r: r.update(fields=["town"]), "must be of type date"),
        ("ewo_consulted", lambda r: r.update(when="reason"), 'must read "field = value"'),
        ("ewo_consulted", lambda r: r.update(when="reason = gone"), "is not a value of reason"),
        ("ewo_consulted", lambda r: r.update(require="nope = yes"), "unknown field 'nope'"),
        ("duplicate", lambda r: r.update(blocked_by=["no_such_rule"]), "unknown rule"),
        ("duplicate", lambda r: r.update(match_on=["upn"]), "key 'match_on'"),
        ("value_format", lambda r: r["expected"].pop("urn"), "no entry for urn"),
        ("value_format", lambda r: r.update(expected="dates"), "key 'expected'"),
        ("one_child", lambda r: r.update(name_fields="child_first_name"), "'name_fields'"),
        ("safeguarding_alert", lambda r: r.update(enabled=False), "cannot be disabled"),
        ("safeguarding_alert", lambda r: r.pop("severity"), "must be 'warning'"),
        (None, lambda d: d["rules"].pop(), "needs a safeguarding_alert rule"),
        (None, lambda d: d["rules"].append(dict(d["rules"][0])), "one_child is defined twice"),
        (None, lambda d: d.update(rules=[]), "[[rules]]"),
        (None, lambda d: d.update(rule=[]), "unknown top-level key 'rule'"),
        (None, lambda d: d["rules"].append("oops"), "must be a table"),
    ],
)
def test_a_malformed_rule_book_is_a_loud_error_naming_the_rule_and_key(
    rule_id: str | None, change: Any, error: str
) -> None:
    with pytest.raises(RuleBookError) as raised:
        parse_rulebook(_mutate(rule_id, change), default_schema())
    assert error in str(raised.value)


def test_an_unreadable_rule_book_file_is_a_loud_error(tmp_path: Path) -> None:
    with pytest.raises(RuleBookError, match="cannot read rule book"):
        RuleBook.load(tmp_path / "missing.toml", default_schema())
    bad = tmp_path / "rules.toml"
    bad.write_text("[[rules]\nid = ", encoding="utf-8")
    with pytest.raises(RuleBookError, match="cannot read rule book"):
        RuleBook.load(bad, default_schema())


def test_a_rule_book_loads_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text((RULES_DIR / "rules.toml").read_text(encoding="utf-8"), encoding="utf-8")
    assert RuleBook.load(path, default_schema()).ids == default_rulebook().ids
