"""Per-recipient send caps (SMS gateways cap per number: e.g. 1/min, 5/hour, 10/day).

Counted from the ``sends`` table rather than memory, so a restart or a second worker does not
reset the count; the answer is the moment the next send would be allowed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from channels.base import RateLimit
from outreach.store import Send

_LIMIT = re.compile(r"^(\d+)/(\d*)([smhd])$")


def parse_limit(text: str) -> RateLimit:
    """ "5/1h" or "10/d" -> RateLimit(5, 3600)."""
    m = _LIMIT.match(text.strip())
    if not m:
        raise ValueError(f'{text!r}: expected COUNT/PERIOD such as "1/1m", "5/1h", "10/1d"')
    count, n, unit = int(m.group(1)), int(m.group(2) or 1), m.group(3)
    return RateLimit(count, n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])


def next_allowed(
    session: Session, channel: str, recipient: str, limits: Sequence[RateLimit], now: datetime
) -> datetime | None:
    """None when a send is allowed now, else the earliest moment it will be."""
    wait_until: datetime | None = None
    for limit in limits:
        since = now - timedelta(seconds=limit.per_seconds)
        q = select(func.count(), func.min(Send.at)).where(
            Send.channel == channel, Send.recipient == recipient, Send.at > since
        )
        if limit.scope == "channel":
            q = select(func.count(), func.min(Send.at)).where(
                Send.channel == channel, Send.at > since
            )
        count, oldest = session.execute(q).one()
        if count >= limit.count and oldest is not None:
            # Conservative: wait until the oldest send in the window leaves it.
            candidate = oldest + timedelta(seconds=limit.per_seconds)
            wait_until = max(wait_until or candidate, candidate)
    return wait_until
