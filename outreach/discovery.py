"""Discovery: run each party's sources, merge what they found, record what changed.

Findings from several sources for the same (party, kind, value) become one contact point with
one provenance row per (source, url), so nothing said about where a number came from is lost.
The fetched pages themselves are stored as blobs: the finding's ``evidence_sha256`` points at
the exact bytes it was read from. Everything that changes is chained on ``party:<key>``.

Rules that keep the record honest:

- **Only a clean run can say "gone".** A value is unlisted only when the source that listed it
  ran without an error or a block this time; a 404, a timeout or a JavaScript challenge says
  nothing about the number, so it must not retire it.
- **Nothing the user supplied is silently dropped.** A contact removed from the config is
  unlisted with an event, never deleted, keeps its status and stays usable (ranked after
  listed ones) until someone marks it bad: the merchant may only have tidied the file, and the
  number may still be the one that answers. Contacts added by hand (``outreach contacts add``,
  source ``manual: …``) belong to no source that runs, so discovery never unlists them.
- **A failing source is an event, never a crashed run**, and a source that keeps failing the
  same way is chained once, when it starts failing, and once more when it recovers
  (``source_status``), so a scheduled worker does not bury the chain under identical errors.
- **A manual task is raised once** (``lookup_tasks``): shown by every run while open, answered
  by ``outreach contacts add``, closed when its source stops asking for it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outreach import clock
from outreach.fetch import PoliteFetcher
from outreach.models_contacts import LookupTask, SourceStatus
from outreach.proof import canonical_json, format_at, jsonable, record_event, store_blob
from outreach.store import ContactPoint, Party, Provenance
from sources.base import (
    DeclaredContact,
    Fetched,
    Fetcher,
    FetchError,
    Finding,
    Lookup,
    Notice,
    PartyQuery,
    Source,
)
from sources.normalize import InvalidContact, normalize

Progress = Callable[[str], None]

#: Kinds a human may add with ``outreach contacts add`` (``licence`` is an identity, not a
#: channel, and comes from the registries).
MANUAL_KINDS = ("email", "phone", "sms", "postal", "web_form", "webhook", "website")
MANUAL_PREFIX = "manual"


@dataclass
class PartyResult:
    party: str
    lookups: dict[str, Lookup] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # source -> error text
    skipped: dict[str, str] = field(default_factory=dict)  # source -> why it did not run


@dataclass
class DiscoveryReport:
    parties: int = 0
    added: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    relisted: list[str] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    tasks_opened: list[str] = field(default_factory=list)
    tasks_open: list[str] = field(default_factory=list)
    tasks_closed: list[str] = field(default_factory=list)


def party_query(party: Party, declared: Iterable[DeclaredContact]) -> PartyQuery:
    return PartyQuery(
        key=party.key,
        role=party.role,
        name=party.name,
        legal_name=party.legal_name,
        uscc=party.uscc,
        licence_no=party.licence_no,
        website=party.website,
        declared=tuple(declared),
        hints=dict(party.hints or {}),
    )


# --------------------------------------------------------------------------- fetching


class _OfflineFetcher:
    """Stands in when the run is offline; remembers that a source wanted the network, so the
    engine can skip that source instead of recording an "error" that is no error at all."""

    def __init__(self) -> None:
        self.tried = False

    async def get(self, url: str, *, allowed_hosts: frozenset[str] | None = None) -> Fetched:
        self.tried = True
        raise FetchError("network", "network fetching is disabled for this run", url=url)


class RunFetcher(PoliteFetcher):
    """A :class:`PoliteFetcher` that owns its HTTP client for one discovery run.

    :func:`run_sources` closes it when the run ends, inside the event loop that used it.
    """

    async def aclose(self) -> None:
        await self._client.aclose()


def make_fetcher(
    sessions: sessionmaker[Session] | None,
    *,
    offline: bool = False,
    progress: Progress | None = None,
    client: httpx.AsyncClient | None = None,
    **options: Any,
) -> tuple[Fetcher | None, Callable[[], list[Fetched]] | None]:
    """The fetcher the CLI hands to :meth:`outreach.app.App.discover`, and its documents.

    With ``sessions`` the ETag / Last-Modified validators live in the database
    (:class:`~outreach.validator_cache.DbValidatorCache`), so the next run's conditional
    requests get 304s. ``options`` go to :class:`PoliteFetcher` (``min_interval``,
    ``host_intervals``, ``max_bytes``, ``retry``...). The run closes the HTTP client at its
    end, ``client`` included, so make one fetcher per run. Offline: ``(None, None)``, and
    sources that need the network are skipped.
    """
    if offline:
        return None, None
    from outreach.validator_cache import DbValidatorCache

    if sessions is not None:
        options.setdefault("cache", DbValidatorCache(sessions))
    if progress is not None:
        say = progress

        def on_fetch(url: str, status: int | None) -> None:
            say(f"GET {url} → {status if status is not None else 'no answer'}")

        options.setdefault("progress", on_fetch)
    fetcher = RunFetcher(client or httpx.AsyncClient(follow_redirects=False), **options)
    return fetcher, (lambda: list(fetcher.documents))


async def run_sources(
    queries: Sequence[tuple[PartyQuery, Sequence[str]]],
    adapters: Mapping[str, Any],
    fetcher: Fetcher | None = None,
    *,
    progress: Progress | None = None,
    source_timeout: float = 120.0,
) -> list[PartyResult]:
    """Run every (party, source) pair concurrently; the fetcher enforces per-host politeness."""
    results = {q.key: PartyResult(q.key) for q, _ in queries}

    async def one(query: PartyQuery, source_name: str) -> None:
        result = results[query.key]
        cls = adapters.get(source_name)
        if cls is None:
            result.failed[source_name] = f"no source adapter named {source_name!r} is installed"
            if progress:
                progress(f"{query.key}: {source_name} failed")
            return
        offline: _OfflineFetcher | None = None
        fetch: Fetcher
        if fetcher is None:
            fetch = offline = _OfflineFetcher()
        else:
            fetch = fetcher
        try:
            source: Source = cls()
            lookup = await asyncio.wait_for(source.lookup(query, fetch), source_timeout)
        except TimeoutError:
            result.failed[source_name] = f"gave no answer within {source_timeout:.0f}s"
        except Exception as exc:  # noqa: BLE001 - a broken adapter must not crash the run
            result.failed[source_name] = f"{type(exc).__name__}: {exc}"
        else:
            if offline is not None and offline.tried:
                result.skipped[source_name] = "needs the network (offline run)"
            else:
                result.lookups[source_name] = lookup
        if progress:
            state = (
                "failed"
                if source_name in result.failed
                else "skipped (offline)"
                if source_name in result.skipped
                else "ok"
            )
            progress(f"{query.key}: {source_name} {state}")

    try:
        await asyncio.gather(*(one(q, s) for q, names in queries for s in names))
    finally:
        if isinstance(fetcher, RunFetcher):
            await fetcher.aclose()
    return list(results.values())


# --------------------------------------------------------------------------- recording


def _combine(confidences: Iterable[float]) -> float:
    """Independent sources agreeing raise confidence: 1 - Π(1 - c)."""
    miss = 1.0
    for c in confidences:
        miss *= 1.0 - max(0.0, min(1.0, c))
    return round(1.0 - miss, 4)


def _party(session: Session, key: str) -> Party:
    return session.scalars(select(Party).where(Party.key == key)).one()


def record_results(
    session: Session,
    results: Sequence[PartyResult],
    documents: Sequence[Fetched] = (),
    *,
    at: datetime | None = None,
) -> DiscoveryReport:
    """Persist findings, provenance, notices, tasks and evidence inside the caller's
    transaction."""
    now = at or clock.now()
    report = DiscoveryReport(parties=len(results))
    for doc in documents:
        ctype = doc.headers.get("content-type", "text/html").split(";")[0].strip() or "text/html"
        store_blob(session, doc.body, ctype)
    for result in results:
        party = _party(session, result.party)
        chain = f"party:{party.key}"
        existing = {
            (cp.kind, cp.value): cp
            for cp in session.scalars(select(ContactPoint).where(ContactPoint.party_id == party.id))
        }
        seen: set[tuple[int, str, str]] = set()
        for source_name, lookup in result.lookups.items():
            for finding in lookup.findings:
                _merge_finding(session, party, chain, finding, existing, seen, report, now)
            tasks = [n for n in lookup.notices if n.kind == "manual_task"]
            others = [n for n in lookup.notices if n.kind != "manual_task"]
            outcome = (
                "blocked"
                if any(n.kind == "blocked" for n in others)
                else "error"
                if any(n.kind == "error" for n in others)
                else "ok"
            )
            report.notices.extend(others)
            keys = _record_tasks(session, party, chain, source_name, tasks, report, now)
            _record_outcome(session, party, chain, source_name, outcome, others, None, now)
            if outcome == "ok":
                _unlist_missing(session, party, chain, source_name, existing, seen, report, now)
                _close_dropped_tasks(session, party, chain, source_name, keys, report, now)
        for source_name, error in result.failed.items():
            report.failures.append(f"{party.key}: {source_name}: {error}")
            _record_outcome(session, party, chain, source_name, "failed", (), error, now)
        for source_name, why in result.skipped.items():
            report.skipped.append(f"{party.key}: {source_name}: {why}")
    session.flush()
    return report


def _notice_data(notice: Notice) -> dict[str, Any]:
    return {
        "source": notice.source,
        "message": notice.message,
        "url": notice.url,
        "advice": notice.advice,
        "fields": list(notice.fields),
        "data": jsonable(notice.data),
    }


def _record_outcome(
    session: Session,
    party: Party,
    chain: str,
    source: str,
    outcome: str,
    notices: Sequence[Notice],
    error: str | None,
    now: datetime,
) -> None:
    """Chain what a source said only when it differs from what it said last time."""
    said = [(f"source_{n.kind}", _notice_data(n)) for n in notices]
    if error is not None:
        said.append(("source_failed", {"source": source, "error": error}))
    digest = hashlib.sha256(canonical_json([outcome, [[k, d] for k, d in said]])).hexdigest()
    status = session.scalars(
        select(SourceStatus).where(SourceStatus.party_id == party.id, SourceStatus.source == source)
    ).one_or_none()
    if status is None:
        status = SourceStatus(
            party_id=party.id,
            source=source,
            outcome=outcome,
            digest=digest,
            since=now,
            last_run=now,
            last_ok=now if outcome == "ok" else None,
        )
        session.add(status)
    elif status.digest == digest:
        status.last_run = now
        if outcome == "ok":
            status.last_ok = now
        return
    else:
        if status.outcome != "ok" and outcome == "ok":
            record_event(
                session,
                chain,
                "source_recovered",
                {"source": source, "was": status.outcome, "since": format_at(status.since)},
                at=now,
            )
        if status.outcome != outcome:
            status.since = now
    for kind, data in said:
        record_event(session, chain, kind, data, at=now)
    status.outcome = outcome
    status.digest = digest
    status.last_run = now
    if outcome == "ok":
        status.last_ok = now


def _merge_finding(
    session: Session,
    party: Party,
    chain: str,
    f: Finding,
    existing: dict[tuple[str, str], ContactPoint],
    seen: set[tuple[int, str, str]],
    report: DiscoveryReport,
    now: datetime,
) -> None:
    try:
        # A licence number is an identity a registry printed, kept as printed (upper-cased).
        value = normalize(f.kind, f.value) if f.kind != "licence" else f.value.strip().upper()
    except InvalidContact as exc:
        record_event(
            session,
            chain,
            "finding_rejected",
            {"source": f.source, "kind": f.kind, "value": f.value, "why": str(exc)},
            at=now,
        )
        return
    cp, prov = upsert_contact(
        session,
        party,
        chain,
        existing,
        kind=f.kind,
        value=value,
        label=f.label,
        source=f.source,
        url=f.url or "",
        confidence=f.confidence,
        evidence_sha256=f.evidence_sha256,
        as_of=f.as_of,
        report=report,
        now=now,
    )
    seen.add((cp.id, prov.source, prov.url))


def upsert_contact(
    session: Session,
    party: Party,
    chain: str,
    existing: dict[tuple[str, str], ContactPoint],
    *,
    kind: str,
    value: str,
    label: str,
    source: str,
    url: str,
    confidence: float,
    evidence_sha256: str | None,
    as_of: str | None,
    report: DiscoveryReport | None,
    now: datetime,
) -> tuple[ContactPoint, Provenance]:
    """One sighting of (kind, value) by one (source, url): one event for whatever it changed."""
    cp = existing.get((kind, value))
    new_cp = cp is None
    if cp is None:
        cp = ContactPoint(
            party_id=party.id,
            kind=kind,
            value=value,
            label=label,
            status="unknown",
            confidence=confidence,
            listed=True,
            first_seen=now,
            last_seen=now,
        )
        session.add(cp)
        session.flush()
        existing[(kind, value)] = cp
    prov = session.scalars(
        select(Provenance).where(
            Provenance.contact_point_id == cp.id,
            Provenance.source == source,
            Provenance.url == url,
        )
    ).one_or_none()
    sighting = {"kind": kind, "value": value, "source": source, "url": url or None}
    described = f"{party.key}: {kind} {value} ({source})"
    if new_cp:
        if report is not None:
            report.added.append(described)
        record_event(
            session,
            chain,
            "contact_added",
            {
                **sighting,
                "label": label,
                "evidence_sha256": evidence_sha256,
                "confidence": f"{confidence:.2f}",
                "as_of": as_of,
            },
            at=now,
        )
    elif not cp.listed:
        cp.listed = True
        if report is not None:
            report.relisted.append(described)
        record_event(session, chain, "contact_relisted", sighting, at=now)
    elif prov is None:
        record_event(
            session,
            chain,
            "provenance_added",
            {**sighting, "label": label, "evidence_sha256": evidence_sha256},
            at=now,
        )
    elif not prov.listed:
        record_event(session, chain, "provenance_relisted", sighting, at=now)
    cp.last_seen = now
    if label and not cp.label:
        cp.label = label
    if prov is None:
        prov = Provenance(source=source, url=url, first_seen=now)
        cp.provenance.append(prov)  # through the relationship, so the collection stays current
    prov.label = label
    prov.confidence = confidence
    prov.evidence_sha256 = evidence_sha256
    prov.as_of = as_of
    prov.last_seen = now
    prov.listed = True
    session.flush()
    cp.confidence = _combine(p.confidence for p in cp.provenance if p.listed)
    return cp, prov


def _unlist_missing(
    session: Session,
    party: Party,
    chain: str,
    source_name: str,
    existing: dict[tuple[str, str], ContactPoint],
    seen: set[tuple[int, str, str]],
    report: DiscoveryReport,
    now: datetime,
) -> None:
    """A source that ran cleanly and no longer lists a value it listed before: say so."""
    by_id = {cp.id: cp for cp in existing.values()}
    provs = session.scalars(
        select(Provenance).where(
            Provenance.contact_point_id.in_(list(by_id)), Provenance.listed.is_(True)
        )
    ).all()
    for prov in provs:
        if prov.source != source_name and not prov.source.startswith(source_name + ":"):
            continue
        if (prov.contact_point_id, prov.source, prov.url) in seen:
            continue
        prov.listed = False
        cp = by_id[prov.contact_point_id]
        why = (
            "removed from the config; kept, and still used unless marked bad"
            if source_name == "config"
            else f"no longer listed by {source_name}"
        )
        record_event(
            session,
            chain,
            "provenance_unlisted",
            {
                "kind": cp.kind,
                "value": cp.value,
                "source": prov.source,
                "url": prov.url or None,
                "why": why,
            },
            at=now,
        )
        if not any(p.listed for p in cp.provenance if p.id != prov.id):
            cp.listed = False
            report.unlisted.append(f"{party.key}: {cp.kind} {cp.value}")
            record_event(
                session,
                chain,
                "contact_unlisted",
                {"kind": cp.kind, "value": cp.value, "status": cp.status, "why": why},
                at=now,
            )
        cp.confidence = _combine(p.confidence for p in cp.provenance if p.listed)


# --------------------------------------------------------------------------- manual tasks


def _task_key(source: str, notice: Notice) -> str:
    """The source's own key when it gives one, else a digest of what it asked."""
    key = notice.data.get("task")
    if isinstance(key, str) and key:
        return key[:200]
    raw = canonical_json([source, notice.message, notice.url, list(notice.fields)])
    return "auto-" + hashlib.sha256(raw).hexdigest()[:24]


def _wants(notice: Notice) -> dict[str, str]:
    raw = notice.data.get("wants")
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): str(v) for k, v in raw.items() if k in MANUAL_KINDS}


def _record_tasks(
    session: Session,
    party: Party,
    chain: str,
    source: str,
    notices: Sequence[Notice],
    report: DiscoveryReport,
    now: datetime,
) -> set[str]:
    """Open a task the first time it is asked for; afterwards only remind. Returns the keys."""
    keys: set[str] = set()
    for notice in notices:
        key = _task_key(source, notice)
        if key in keys:
            continue
        keys.add(key)
        task = session.scalars(
            select(LookupTask).where(
                LookupTask.party_id == party.id,
                LookupTask.source == source,
                LookupTask.key == key,
            )
        ).one_or_none()
        if task is None:
            task = LookupTask(
                party_id=party.id,
                source=source,
                key=key,
                title=notice.message,
                url=notice.url,
                advice=notice.advice,
                fields=list(notice.fields),
                wants=_wants(notice),
                answered=[],
                data=jsonable(notice.data),
                state="open",
                opened_at=now,
            )
            session.add(task)
            session.flush()
            record_event(
                session,
                chain,
                "task_opened",
                {"task": task.id, "key": key, **_notice_data(notice), "wants": task.wants},
                at=now,
            )
            report.tasks_opened.append(f"{party.key}: #{task.id} {notice.message}")
            report.notices.append(notice)
        elif task.state == "open":
            report.tasks_open.append(f"{party.key}: #{task.id} {task.title}")
            report.notices.append(
                Notice(
                    party=party.key,
                    kind="manual_task",
                    message=f"task #{task.id} still open since "
                    f"{clock.today(task.opened_at).isoformat()}: {task.title}",
                    source=source,
                    url=task.url,
                    advice="`outreach contacts tasks` shows what to do",
                )
            )
    return keys


def _close_dropped_tasks(
    session: Session,
    party: Party,
    chain: str,
    source: str,
    keys: set[str],
    report: DiscoveryReport,
    now: datetime,
) -> None:
    """A source that ran cleanly and no longer asks for a task: it was solved another way
    (the website was configured) or replaced (next year's annual report)."""
    for task in session.scalars(
        select(LookupTask).where(
            LookupTask.party_id == party.id,
            LookupTask.source == source,
            LookupTask.state == "open",
        )
    ):
        if task.key in keys:
            continue
        close_lookup_task(session, task, chain, f"no longer asked for by {source}", now)
        report.tasks_closed.append(f"{party.key}: #{task.id} {task.title}")


def close_lookup_task(
    session: Session, task: LookupTask, chain: str, reason: str, now: datetime
) -> None:
    task.state = "closed"
    task.closed_at = now
    task.close_reason = reason
    record_event(
        session,
        chain,
        "task_closed",
        {"task": task.id, "key": task.key, "source": task.source, "reason": reason},
        at=now,
    )
