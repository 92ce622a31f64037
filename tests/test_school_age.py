"""Compulsory school age: the statutory edges, and a property test against a brute-force oracle."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cme_mailbot.validation import compulsory_school_age_window, is_compulsory_school_age
from cme_mailbot.validation.school_age import school_leaving_date

D = dt.date


@pytest.mark.parametrize(
    ("year", "expected"),
    [
        (2024, D(2024, 6, 28)),  # 30 June is a Sunday
        (2025, D(2025, 6, 27)),  # 30 June is a Monday
        (2023, D(2023, 6, 30)),  # 30 June is itself a Friday
        (2028, D(2028, 6, 30)),
    ],
)
def test_school_leaving_date_is_the_last_friday_in_june(year: int, expected: dt.date) -> None:
    assert school_leaving_date(year) == expected


@pytest.mark.parametrize(
    ("dob", "first_day"),
    [
        (D(2015, 3, 31), D(2020, 3, 31)),  # 5th birthday on a prescribed day: starts that day
        (D(2015, 4, 1), D(2020, 8, 31)),  # the day after: the next prescribed day
        (D(2015, 8, 31), D(2020, 8, 31)),
        (D(2015, 9, 1), D(2020, 12, 31)),
        (D(2015, 12, 31), D(2020, 12, 31)),
        (D(2016, 1, 1), D(2021, 3, 31)),  # crosses the year
        (D(2016, 2, 29), D(2021, 3, 31)),  # 29 Feb: 5 on 1 Mar 2021
        (D(2015, 3, 30), D(2020, 3, 31)),
    ],
)
def test_compulsory_school_age_starts_on_the_prescribed_day_on_or_after_the_5th_birthday(
    dob: dt.date, first_day: dt.date
) -> None:
    assert compulsory_school_age_window(dob)[0] == first_day
    assert is_compulsory_school_age(dob, first_day)
    assert not is_compulsory_school_age(dob, first_day - dt.timedelta(days=1))


@pytest.mark.parametrize(
    ("dob", "last_day"),
    [
        (D(2008, 8, 31), D(2024, 6, 28)),  # 16 on 31 Aug 2024: leaves June 2024, aged 15
        (D(2008, 9, 1), D(2025, 6, 27)),  # 16 on 1 Sep 2024: next school year, leaves June 2025
        (D(2008, 6, 28), D(2024, 6, 28)),  # 16 on the leaving date itself
        (D(2008, 6, 29), D(2024, 6, 28)),  # 16 the day after the leaving date
        (D(2008, 7, 15), D(2024, 6, 28)),  # 16 in the summer holidays
        (D(2008, 1, 10), D(2024, 6, 28)),
        (D(2008, 2, 29), D(2024, 6, 28)),
    ],
)
def test_compulsory_school_age_ends_on_the_leaving_date_of_the_school_year_they_turn_16(
    dob: dt.date, last_day: dt.date
) -> None:
    assert compulsory_school_age_window(dob)[1] == last_day
    assert is_compulsory_school_age(dob, last_day)
    assert not is_compulsory_school_age(dob, last_day + dt.timedelta(days=1))


def test_a_child_is_of_compulsory_school_age_between_the_ends() -> None:
    dob = D(2015, 4, 3)
    assert is_compulsory_school_age(dob, D(2025, 3, 10))
    assert not is_compulsory_school_age(dob, D(2019, 1, 1))
    assert not is_compulsory_school_age(dob, D(2034, 1, 1))


# ---- an independent oracle: walk the calendar rather than compute the ends --------------------


def _age_on(dob: dt.date, day: dt.date) -> int:
    """Whole years; a 29 Feb child is a year older on 1 Mar when there is no 29 Feb."""
    return day.year - dob.year - ((day.month, day.day) < (dob.month, dob.day))


def _is_prescribed(day: dt.date) -> bool:
    return (day.month, day.day) in {(3, 31), (8, 31), (12, 31)}


def _last_friday_in_june(year: int) -> dt.date:
    fridays = [D(year, 6, d) for d in range(1, 31) if D(year, 6, d).weekday() == 4]
    return fridays[-1]


def _oracle(dob: dt.date, on: dt.date) -> bool:
    # Started: some prescribed day on or before `on` when the child was already 5.
    started = any(
        _is_prescribed(day) and _age_on(dob, day) >= 5
        for day in (on - dt.timedelta(days=n) for n in range(400))
    )
    # Ended: some leaving date before `on` fell in a school year by whose end (31 Aug) the child
    # was 16.
    ended = any(
        _last_friday_in_june(year) < on and _age_on(dob, D(year, 8, 31)) >= 16
        for year in range(dob.year, on.year + 1)
    )
    return started and not ended


@settings(max_examples=400, deadline=None)
@given(
    dob=st.dates(min_value=D(1990, 1, 1), max_value=D(2030, 12, 31)),
    days_later=st.integers(min_value=0, max_value=18 * 366),
)
def test_compulsory_school_age_agrees_with_a_brute_force_oracle(
    dob: dt.date, days_later: int
) -> None:
    on = dob + dt.timedelta(days=days_later)
    assert is_compulsory_school_age(dob, on) == _oracle(dob, on)


@given(dob=st.dates(min_value=D(1990, 1, 1), max_value=D(2030, 12, 31)))
def test_the_window_starts_on_a_prescribed_day_and_ends_on_a_friday_in_june(dob: dt.date) -> None:
    start, end = compulsory_school_age_window(dob)
    assert _is_prescribed(start)
    assert end.month == 6 and end.weekday() == 4
    assert _age_on(dob, start) == 5
    assert 15 <= _age_on(dob, end) <= 16


@settings(max_examples=300, deadline=None)
@given(dob=st.dates(min_value=D(1990, 1, 1), max_value=D(2030, 12, 31)))
def test_the_window_ends_agree_with_the_oracle_to_the_day(dob: dt.date) -> None:
    start, end = compulsory_school_age_window(dob)
    one = dt.timedelta(days=1)
    assert (_oracle(dob, start - one), _oracle(dob, start)) == (False, True)
    assert (_oracle(dob, end), _oracle(dob, end + one)) == (True, False)
