"""Time in one place, so tests can move it and the ladder counts days in China's time zone."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

CST = ZoneInfo("Asia/Shanghai")


def now() -> datetime:
    return datetime.now(UTC)


def today(at: datetime | None = None) -> date:
    """The calendar day in China at ``at`` (default now): deadlines are Beijing dates."""
    return (at or now()).astimezone(CST).date()
