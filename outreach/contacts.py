"""Contacts by hand and what changed: ``outreach contacts add|mark|diff|tasks``.

Discovery (:mod:`outreach.discovery`) records what sources found; this module records what a
person found or decided - a number called and confirmed, an address that bounced, the answer
to a lookup task - in the same provenance tables and on the same ``party:<key>`` chain, and
reads the chain back as a list of changes. A hand-added contact carries a ``manual: …``
source, which no run owns, so discovery never unlists it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from outreach import clock
from outreach.discovery import MANUAL_KINDS, MANUAL_PREFIX, close_lookup_task, upsert_contact
from outreach.models_contacts import LookupTask
from outreach.proof import format_at, record_event
from outreach.store import ContactPoint, Event, Party
from sources.normalize import InvalidContact, is_mobile, normalize

__all__ = [
    "MANUAL_KINDS",
    "ContactChange",
    "ContactError",
    "add_contact",
    "close_task",
    "contact_changes",
    "manual_source",
    "mark_contact",
    "open_tasks",
]


# --------------------------------------------------------------------------- by hand


class ContactError(ValueError):
    """A manual contact change that cannot be applied; the message is for the user."""


@dataclass
class ContactChange:
    """What one ``contacts add`` / ``contacts mark`` did."""

    party: str
    kind: str
    value: str
    change: str  # added | relisted | source added | source relisted | unchanged | status
    answered: list[str] = field(default_factory=list)  # "#3 企业电子邮箱"
    closed: list[str] = field(default_factory=list)  # "#3"
    warnings: list[str] = field(default_factory=list)


def _find_party(session: Session, key: str) -> Party:
    party = session.scalars(select(Party).where(Party.key == key)).one_or_none()
    if party is None:
        raise ContactError(f"no party {key!r} (see the [parties] of the config)")
    return party


def manual_source(text: str) -> str:
    """``"annual report 2025"`` -> ``"manual: annual report 2025"``: the adapter, then the note."""
    text = " ".join(text.split())
    if not text:
        raise ContactError(
            "--source must say where the value comes from, e.g. 'annual report 2025'"
        )
    head, sep, rest = text.partition(":")
    if sep and head.strip().lower() == MANUAL_PREFIX:
        text = rest.strip()
        if not text:
            raise ContactError("--source must say where the value comes from after 'manual:'")
    return f"{MANUAL_PREFIX}: {text}"


def add_contact(
    session: Session,
    party_key: str,
    kind: str,
    value: str,
    *,
    source: str,
    label: str = "",
    url: str | None = None,
    at: datetime | None = None,
) -> ContactChange:
    """Record a contact a human found (an annual report, a letterhead) with its provenance.

    Validates everything before writing anything; raises :class:`ContactError`. Answers the
    party's open lookup tasks that asked for this kind, and closes a task once every field it
    asked for is answered.
    """
    now = at or clock.now()
    party = _find_party(session, party_key)
    if kind not in MANUAL_KINDS:
        raise ContactError(f"--kind must be one of {', '.join(MANUAL_KINDS)}")
    try:
        normalised = normalize(kind, value)
    except InvalidContact as exc:
        raise ContactError(str(exc)) from None
    if kind == "sms" and not is_mobile(normalised):
        raise ContactError(f"{value!r} is not a mobile number, so it cannot take an SMS")
    page = ""
    if url:
        try:
            page = normalize("website", url)
        except InvalidContact:
            raise ContactError(f"--url {url!r} is not an http(s) URL") from None
    src = manual_source(source)
    label = " ".join(label.split())
    chain = f"party:{party.key}"
    existing = {
        (cp.kind, cp.value): cp
        for cp in session.scalars(select(ContactPoint).where(ContactPoint.party_id == party.id))
    }
    before = existing.get((kind, normalised))
    prov_before = (
        None
        if before is None
        else next((p for p in before.provenance if p.source == src and p.url == page), None)
    )
    was = (
        "added"
        if before is None
        else "relisted"
        if not before.listed
        else "source added"
        if prov_before is None
        else "source relisted"
        if not prov_before.listed
        else "unchanged"
    )
    if was == "unchanged":
        change = ContactChange(party.key, kind, normalised, "unchanged")
    else:
        cp, _prov = upsert_contact(
            session,
            party,
            chain,
            existing,
            kind=kind,
            value=normalised,
            label=label,
            source=src,
            url=page,
            confidence=1.0,
            evidence_sha256=None,
            as_of=None,
            report=None,
            now=now,
        )
        change = ContactChange(party.key, kind, normalised, was)
    cp = existing[(kind, normalised)]
    if cp.status == "bad":
        change.warnings.append(
            f"this contact is marked bad ({cp.status_reason or 'no reason given'}); "
            f"`outreach contacts mark {party.key} {normalised} --status good --reason …` "
            "if it works again"
        )
    _answer_tasks(session, party, chain, kind, normalised, src, change, now)
    session.flush()
    return change


def _answer_tasks(
    session: Session,
    party: Party,
    chain: str,
    kind: str,
    value: str,
    source: str,
    change: ContactChange,
    now: datetime,
) -> None:
    # A registry's 联系电话 may well be a mobile that the user records as sms.
    wanted_as = "phone" if kind == "sms" else kind
    for task in session.scalars(
        select(LookupTask)
        .where(LookupTask.party_id == party.id, LookupTask.state == "open")
        .order_by(LookupTask.id)
    ):
        wants = dict(task.wants or {})
        answered = list(task.answered or [])
        if wanted_as not in wants or wanted_as in answered:
            continue
        answered.append(wanted_as)
        task.answered = answered  # a new list: plain JSON columns do not track in-place edits
        record_event(
            session,
            chain,
            "task_answered",
            {
                "task": task.id,
                "key": task.key,
                "field": wants[wanted_as],
                "kind": kind,
                "value": value,
                "source": source,
            },
            at=now,
        )
        change.answered.append(f"#{task.id} {wants[wanted_as]}")
        if all(k in answered for k in wants):
            close_lookup_task(session, task, chain, "answered: " + ", ".join(wants.values()), now)
            change.closed.append(f"#{task.id}")


def _matching_contacts(
    session: Session, party: Party, value: str, kind: str | None
) -> list[ContactPoint]:
    """Contact points of ``party`` whose stored value is ``value`` as typed or normalised."""
    forms = {value.strip()}
    for k in MANUAL_KINDS:
        try:
            forms.add(normalize(k, value))
        except InvalidContact:
            continue
    stmt = select(ContactPoint).where(
        ContactPoint.party_id == party.id, ContactPoint.value.in_(sorted(forms))
    )
    if kind is not None:
        stmt = stmt.where(ContactPoint.kind == kind)
    return list(session.scalars(stmt.order_by(ContactPoint.id)))


def mark_contact(
    session: Session,
    party_key: str,
    value: str,
    status: str,
    reason: str,
    *,
    kind: str | None = None,
    at: datetime | None = None,
) -> ContactChange:
    """Set a contact's status (good | bad | unknown) by hand, with the reason, chained."""
    now = at or clock.now()
    if status not in ("good", "bad", "unknown"):
        raise ContactError("--status must be good, bad or unknown")
    reason = " ".join(reason.split())
    if not reason:
        raise ContactError("--reason must say why (it goes into the evidence)")
    party = _find_party(session, party_key)
    found = _matching_contacts(session, party, value, kind)
    if not found:
        raise ContactError(
            f"{party.key} has no contact {value!r}"
            + (f" of kind {kind}" if kind else "")
            + f" (see `outreach contacts {party.key}`)"
        )
    if len(found) > 1:
        kinds = ", ".join(sorted(cp.kind for cp in found))
        raise ContactError(f"{value!r} is recorded as {kinds} for {party.key}: add --kind")
    cp = found[0]
    change = ContactChange(party.key, cp.kind, cp.value, "unchanged")
    if cp.status == status:
        return change
    record_event(
        session,
        f"party:{party.key}",
        "contact_status",
        {"kind": cp.kind, "value": cp.value, "from": cp.status, "to": status, "reason": reason},
        at=now,
    )
    cp.status = status
    cp.status_reason = reason
    change.change = "status"
    session.flush()
    return change


def open_tasks(
    session: Session, *, party: str | None = None, include_closed: bool = False
) -> list[LookupTask]:
    stmt = select(LookupTask).join(Party).order_by(LookupTask.id)
    if not include_closed:
        stmt = stmt.where(LookupTask.state == "open")
    if party is not None:
        stmt = stmt.where(Party.key == party)
    return list(session.scalars(stmt))


def close_task(
    session: Session, task_id: int, reason: str, *, at: datetime | None = None
) -> tuple[LookupTask, bool]:
    """Close a task by hand (the report has no e-mail, the company is gone), chained.

    Returns the task and whether this call closed it (False: it was closed already).
    """
    reason = " ".join(reason.split())
    if not reason:
        raise ContactError("--reason must say why the task is closed")
    task = session.get(LookupTask, task_id)
    if task is None:
        raise ContactError(f"no task #{task_id} (see `outreach contacts tasks --all`)")
    if task.state != "open":
        return task, False
    chain = f"party:{task.party.key}"
    close_lookup_task(session, task, chain, f"by hand: {reason}", at or clock.now())
    session.flush()
    return task, True


# --------------------------------------------------------------------------- what changed

_CHANGE = {
    "contact_added": "added",
    "contact_relisted": "relisted",
    "contact_unlisted": "unlisted",
    "provenance_added": "source added",
    "provenance_relisted": "source relisted",
    "provenance_unlisted": "source unlisted",
    "contact_status": "status",
    "contact_bad": "status",  # written by the dispatcher on the case chain
}


def contact_changes(
    session: Session, *, since: datetime | None = None, party: str | None = None
) -> list[dict[str, Any]]:
    """Every change to contact points, oldest first, read back from the hash chains.

    The chains are the record: this is the same history ``audit verify`` vouches for, not a
    second bookkeeping that could disagree with it.
    """
    stmt = (
        select(Event)
        .where(
            Event.kind.in_(sorted(_CHANGE)),
            or_(Event.chain.like("party:%"), Event.kind == "contact_bad"),
        )
        .order_by(Event.id)
    )
    if since is not None:
        stmt = stmt.where(Event.at >= format_at(since))
    rows: list[dict[str, Any]] = []
    for ev in session.scalars(stmt):
        data = json.loads(ev.body)["data"]
        owner = ev.chain.removeprefix("party:") if ev.kind != "contact_bad" else data.get("party")
        if party is not None and owner != party:
            continue
        rows.append(
            {
                "at": ev.at,
                "party": owner,
                "change": _CHANGE[ev.kind],
                "kind": data.get("kind"),
                "value": data.get("value"),
                "source": data.get("source") or "",
                "detail": _detail(ev, data),
                "chain": ev.chain,
                "seq": ev.seq,
            }
        )
    # A source that stops listing a value's last sighting says so twice (source unlisted,
    # unlisted): keep the contact-level line.
    whole = {
        (r["at"], r["party"], r["kind"], r["value"]) for r in rows if r["change"] == "unlisted"
    }
    return [
        r
        for r in rows
        if not (
            r["change"] == "source unlisted"
            and (r["at"], r["party"], r["kind"], r["value"]) in whole
        )
    ]


def _detail(ev: Event, data: Mapping[str, Any]) -> str:
    if ev.kind == "contact_status":
        return f"{data.get('from')} → {data.get('to')}: {data.get('reason')}"
    if ev.kind == "contact_bad":
        return f"→ bad: {data.get('reason')} ({ev.chain})"
    if ev.kind.endswith("_unlisted"):
        return str(data.get("why") or "")
    parts = [str(data[k]) for k in ("label", "url") if data.get(k)]
    return " ".join(parts)
