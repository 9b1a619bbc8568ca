"""Working days in mainland China, including 调休 (make-up working days on weekends).

Deadlines in notices and the pace of the ladder count working days, as PBOC complaint rules
do (e.g. acceptance within 5 working days). The calendar comes from the ``chinesecalendar``
package, which follows the State Council's yearly holiday notice. A year the package does not
know yet (the notice is published each November or December) falls back to Monday-Friday, and
:func:`calendar_gaps` reports it so ``outreach status`` can warn instead of silently guessing.
"""

from __future__ import annotations

from datetime import date, timedelta
from functools import cache

import chinese_calendar


@cache
def _known(year: int) -> bool:
    try:
        chinese_calendar.is_workday(date(year, 6, 1))
    except NotImplementedError:
        return False
    return True


def is_working_day(day: date) -> bool:
    if _known(day.year):
        return bool(chinese_calendar.is_workday(day))
    return day.weekday() < 5


def add_working_days(start: date, n: int) -> date:
    """The date ``n`` working days after ``start`` (``start`` itself never counts).

    ``n == 0`` gives ``start`` when it is a working day, else the next working day: a step
    that is due "at once" on a holiday waits for the office to open.
    """
    day = start
    if n == 0:
        while not is_working_day(day):
            day += timedelta(days=1)
        return day
    left = n
    while left:
        day += timedelta(days=1)
        if is_working_day(day):
            left -= 1
    return day


def working_days_between(start: date, end: date) -> int:
    """Working days in (start, end]."""
    count = 0
    day = start
    while day < end:
        day += timedelta(days=1)
        if is_working_day(day):
            count += 1
    return count


def calendar_gaps(start: date, end: date) -> list[int]:
    """Years in [start, end] for which the official holiday calendar is not known."""
    return [y for y in range(start.year, end.year + 1) if not _known(y)]
