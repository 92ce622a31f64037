"""Compulsory school age in England, from a child's date of birth.

Education Act 1996 s.8 with the Education (Start of Compulsory School Age) Order 1998 and the
Education (School Leaving Date) Order 1997:

- A child begins to be of compulsory school age on the first prescribed day (31 December,
  31 March, 31 August) on or after their 5th birthday (on the birthday itself when it is a
  prescribed day).
- A child stops being of compulsory school age at the end of the school leaving date (the last
  Friday in June) of the school year in which they turn 16. A school year here runs from
  1 September to 31 August, so a 16th birthday on 31 August means leaving in the June before it,
  and one on 1 September means leaving in the June after it.

Both ends are inclusive days. A child born on 29 February attains an age on 1 March in a year
without one (the usual reading of the Family Law Reform Act 1969 s.9 in England).
"""

from __future__ import annotations

import datetime as dt

__all__ = ["compulsory_school_age_window", "is_compulsory_school_age", "school_leaving_date"]

_PRESCRIBED_DAYS = ((3, 31), (8, 31), (12, 31))
_FRIDAY = 4


def _birthday(dob: dt.date, age: int) -> dt.date:
    """The day on which a child born on `dob` attains `age` (29 Feb -> 1 Mar when needed)."""
    try:
        return dob.replace(year=dob.year + age)
    except ValueError:
        return dt.date(dob.year + age, 3, 1)


def school_leaving_date(year: int) -> dt.date:
    """The last Friday in June of `year`."""
    last = dt.date(year, 6, 30)
    return last - dt.timedelta(days=(last.weekday() - _FRIDAY) % 7)


def compulsory_school_age_window(dob: dt.date) -> tuple[dt.date, dt.date]:
    """The first and last days (both inclusive) on which the child is of compulsory school age."""
    fifth = _birthday(dob, 5)
    start = min(
        dt.date(fifth.year, month, day)
        for month, day in _PRESCRIBED_DAYS
        if dt.date(fifth.year, month, day) >= fifth
    )
    sixteenth = _birthday(dob, 16)
    # The school year 1 Sep (Y-1) to 31 Aug (Y) has its leaving date in June of Y.
    end = school_leaving_date(sixteenth.year + (1 if sixteenth.month >= 9 else 0))
    return start, end


def is_compulsory_school_age(dob: dt.date, on: dt.date) -> bool:
    """Whether a child born on `dob` is of compulsory school age on the day `on`."""
    start, end = compulsory_school_age_window(dob)
    return start <= on <= end
