"""Per-recipient send caps (SMS gateways cap per number: e.g. 1/min, 5/hour, 10/day).

Counted from the ``sends`` table rather than memory, so a restart or a second worker does not
reset the count; the answer is the moment the next send would be allowed.

Counting and then inserting is a race between two workers: both count four sends against a cap
of five, both send, and the number got six. So on PostgreSQL the dispatcher first takes a
transaction-scoped advisory lock per (channel, recipient) (:func:`lock_recipients`), in sorted
order so that two workers can never wait on each other in a cycle, and only then counts; the
lock is held until the claim that inserts the new ``sends`` rows commits, so the second worker's
count sees the first worker's sends. SQLite needs nothing: its single writer lock (taken at
``BEGIN IMMEDIATE``) already serialises whole claims.

:func:`earliest_allowed` is the pure part - a sliding window over the send times - and is what
the tests pin down. :class:`ClaimGate` is how one claim of the dispatcher applies all of this
to a batch.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from channels.base import RateLimit
from outreach.store import Send

_LIMIT = re.compile(r"^(\d+)/(\d*)([smhd])$")
_IN_CHUNK = 500  # recipients per IN (...) list


def parse_limit(text: str) -> RateLimit:
    """ "5/1h" or "10/d" -> RateLimit(5, 3600)."""
    m = _LIMIT.match(text.strip())
    if not m:
        raise ValueError(f'{text!r}: expected COUNT/PERIOD such as "1/1m", "5/1h", "10/1d"')
    count, n, unit = int(m.group(1)), int(m.group(2) or 1), m.group(3)
    return RateLimit(count, n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])


def earliest_allowed(
    history: Sequence[datetime], limits: Sequence[RateLimit], now: datetime
) -> datetime | None:
    """None when one more send is allowed at ``now``, else the first moment it will be.

    ``history`` holds the times of earlier sends *to this recipient* (any order); only limits
    of scope ``recipient`` are applied. A window of ``per_seconds`` ending at T may hold at most
    ``count`` sends, so with k sends in the window the next one waits until the
    (k - count + 1)-th most recent of them leaves it.
    """
    if not history:  # the usual case, checked for every claimed SMS
        return None
    wait_until: datetime | None = None
    for limit in limits:
        if limit.scope != "recipient":
            continue
        period = timedelta(seconds=limit.per_seconds)
        window = sorted(t for t in history if t > now - period)
        if len(window) >= limit.count:
            candidate = window[len(window) - limit.count] + period
            wait_until = candidate if wait_until is None else max(wait_until, candidate)
    return wait_until


def channel_wait(
    used: int, oldest: datetime | None, limits: Sequence[RateLimit], now: datetime
) -> datetime | None:
    """The same question for ``channel``-scope limits, from a count and the oldest send in
    the window (conservative: waits until that oldest send leaves the window)."""
    wait_until: datetime | None = None
    for limit in limits:
        if limit.scope != "channel" or used < limit.count or oldest is None:
            continue
        candidate = oldest + timedelta(seconds=limit.per_seconds)
        wait_until = candidate if wait_until is None else max(wait_until, candidate)
    return wait_until


def lock_key(channel: str, recipient: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock``. A collision only makes two
    recipients wait for each other, never lets a count through."""
    digest = hashlib.sha256(f"outreach-sends\0{channel}\0{recipient}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_recipients(session: Session, keys: Iterable[tuple[str, str]]) -> None:
    """Serialise counting for these (channel, recipient) pairs with other PostgreSQL workers
    until the caller's transaction ends. Sorted, so that lock waits can never form a cycle.
    Channel-scope caps lock the pair (channel, "*")."""
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        return
    ordered = sorted({lock_key(c, r) for c, r in keys})
    if ordered:
        session.execute(
            text(
                "SELECT pg_advisory_xact_lock(k) FROM "
                "(SELECT unnest(CAST(:keys AS bigint[])) AS k ORDER BY 1) AS ordered"
            ),
            {"keys": ordered},
        )


def recent_sends(
    session: Session, channel: str, recipients: Iterable[str], since: datetime
) -> dict[str, list[datetime]]:
    """Send times per recipient after ``since``: one indexed query per few hundred recipients."""
    found: dict[str, list[datetime]] = {}
    names = sorted(set(recipients))
    for start in range(0, len(names), _IN_CHUNK):
        chunk = names[start : start + _IN_CHUNK]
        rows = session.execute(
            select(Send.recipient, Send.at).where(
                Send.channel == channel, Send.recipient.in_(chunk), Send.at > since
            )
        )
        for recipient, at in rows:
            found.setdefault(recipient, []).append(at)
    return found


def channel_usage(session: Session, channel: str, since: datetime) -> tuple[int, datetime | None]:
    """(sends, oldest send) through ``channel`` after ``since``."""
    count, oldest = session.execute(
        select(func.count(), func.min(Send.at)).where(Send.channel == channel, Send.at > since)
    ).one()
    return int(count), oldest


def next_allowed(
    session: Session, channel: str, recipient: str, limits: Sequence[RateLimit], now: datetime
) -> datetime | None:
    """None when a send is allowed now, else the earliest moment it will be (one recipient;
    the dispatcher uses the batched pieces above)."""
    recipient_limits = [lim for lim in limits if lim.scope == "recipient"]
    wait: list[datetime] = []
    if recipient_limits:
        longest = max(lim.per_seconds for lim in recipient_limits)
        history = recent_sends(session, channel, [recipient], now - timedelta(seconds=longest))
        found = earliest_allowed(history.get(recipient, []), recipient_limits, now)
        if found is not None:
            wait.append(found)
    for lim in limits:
        if lim.scope == "channel":
            used, oldest = channel_usage(session, channel, now - timedelta(seconds=lim.per_seconds))
            found = channel_wait(used, oldest, [lim], now)
            if found is not None:
                wait.append(found)
    return max(wait) if wait else None


def longest_window(limits: Sequence[RateLimit], scope: str) -> float | None:
    periods = [lim.per_seconds for lim in limits if lim.scope == scope]
    return max(periods) if periods else None


def limited_channels(limits: Mapping[str, Sequence[RateLimit]]) -> frozenset[str]:
    """Channels that have any cap at all: the only ones whose claims pay for a check."""
    return frozenset(name for name, caps in limits.items() if caps)


class ClaimGate:
    """The caps of one claim: send history read once (under the advisory locks), then updated
    in memory as the claim admits sends, so two attempts to one number in the same batch are
    counted against each other."""

    def __init__(self, limits: Mapping[str, Sequence[RateLimit]], now: datetime) -> None:
        self.limits = limits
        self.now = now
        self.history: dict[tuple[str, str], list[datetime]] = {}
        self.channel_use: dict[str, list[tuple[RateLimit, int, datetime | None]]] = {}

    def load(self, session: Session, rows: Sequence[Any]) -> None:
        by_channel: dict[str, set[str]] = {}
        for r in rows:
            by_channel.setdefault(r.channel, set()).add(r.recipient)
        keys: set[tuple[str, str]] = set()
        for channel, recipients in by_channel.items():
            caps = self.limits[channel]
            if longest_window(caps, "recipient") is not None:
                keys.update((channel, r) for r in recipients)
            if longest_window(caps, "channel") is not None:
                keys.add((channel, "*"))
        lock_recipients(session, keys)
        for channel, recipients in by_channel.items():
            caps = self.limits[channel]
            longest = longest_window(caps, "recipient")
            if longest is not None:
                since = self.now - timedelta(seconds=longest)
                for recipient, times in recent_sends(session, channel, recipients, since).items():
                    self.history[(channel, recipient)] = times
            for cap in caps:
                if cap.scope == "channel":
                    since = self.now - timedelta(seconds=cap.per_seconds)
                    used, oldest = channel_usage(session, channel, since)
                    self.channel_use.setdefault(channel, []).append((cap, used, oldest))

    def wait_until(self, channel: str, recipient: str) -> datetime | None:
        caps = self.limits[channel]
        found = earliest_allowed(self.history.get((channel, recipient), []), caps, self.now)
        for cap, used, oldest in self.channel_use.get(channel, ()):
            later = channel_wait(used, oldest, [cap], self.now)
            if later is not None and (found is None or later > found):
                found = later
        return found

    def admit(self, channel: str, recipient: str) -> None:
        self.history.setdefault((channel, recipient), []).append(self.now)
        self.channel_use[channel] = [
            (cap, used + 1, oldest or self.now)
            for cap, used, oldest in self.channel_use.get(channel, ())
        ]
