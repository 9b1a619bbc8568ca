"""Discovery: run each party's sources, merge what they found, record what changed.

Findings from several sources for the same (party, kind, value) become one contact point with
one provenance row per (source, url), so nothing said about where a number came from is lost.
A value a source stops listing is marked unlisted (never deleted) and chained as an event; a
source that fails becomes an event too, never a crashed run. The fetched pages themselves are
stored as blobs: the finding's ``evidence_sha256`` points at the exact bytes it was read from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from outreach import clock
from outreach.proof import record_event, store_blob
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


@dataclass
class PartyResult:
    party: str
    lookups: dict[str, Lookup] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # source -> error text


@dataclass
class DiscoveryReport:
    parties: int = 0
    added: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    relisted: list[str] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


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


class _OfflineFetcher:
    """Used when no network fetcher is configured: every fetch is a clear, recorded failure."""

    async def get(self, url: str, *, allowed_hosts: frozenset[str] | None = None) -> Fetched:
        raise FetchError("network", "network fetching is disabled for this run", url=url)


async def run_sources(
    queries: Sequence[tuple[PartyQuery, Sequence[str]]],
    adapters: Mapping[str, Any],
    fetcher: Fetcher | None = None,
    *,
    progress: Progress | None = None,
    source_timeout: float = 120.0,
) -> list[PartyResult]:
    """Run every (party, source) pair concurrently; the fetcher enforces per-host politeness."""
    fetch: Fetcher = fetcher or _OfflineFetcher()
    results = {q.key: PartyResult(q.key) for q, _ in queries}

    async def one(query: PartyQuery, source_name: str) -> None:
        cls = adapters.get(source_name)
        if cls is None:
            results[query.key].failed[source_name] = (
                f"no source adapter named {source_name!r} is installed"
            )
            return
        source: Source = cls()
        try:
            lookup = await asyncio.wait_for(source.lookup(query, fetch), source_timeout)
        except TimeoutError:
            results[query.key].failed[source_name] = f"gave no answer within {source_timeout:.0f}s"
        except Exception as exc:  # noqa: BLE001 - a broken adapter must not crash the run
            results[query.key].failed[source_name] = f"{type(exc).__name__}: {exc}"
        else:
            results[query.key].lookups[source_name] = lookup
        if progress:
            state = "failed" if source_name in results[query.key].failed else "ok"
            progress(f"{query.key}: {source_name} {state}")

    await asyncio.gather(*(one(q, s) for q, names in queries for s in names))
    return list(results.values())


def _combine(confidences: Iterable[float]) -> float:
    """Independent sources agreeing raise confidence: 1 - Π(1 - c)."""
    miss = 1.0
    for c in confidences:
        miss *= 1.0 - max(0.0, min(1.0, c))
    return round(1.0 - miss, 4)


def record_results(
    session: Session,
    results: Sequence[PartyResult],
    documents: Sequence[Fetched] = (),
    *,
    at: datetime | None = None,
) -> DiscoveryReport:
    """Persist findings, provenance, notices and evidence inside the caller's transaction."""
    now = at or clock.now()
    report = DiscoveryReport(parties=len(results))
    for doc in documents:
        ctype = doc.headers.get("content-type", "text/html").split(";")[0].strip() or "text/html"
        store_blob(session, doc.body, ctype)
    for result in results:
        party = session.scalars(select(Party).where(Party.key == result.party)).one()
        chain = f"party:{party.key}"
        existing = {
            (cp.kind, cp.value): cp
            for cp in session.scalars(select(ContactPoint).where(ContactPoint.party_id == party.id))
        }
        seen: set[tuple[int, str, str]] = set()
        for source_name, lookup in result.lookups.items():
            for finding in lookup.findings:
                _merge_finding(session, party, chain, finding, existing, seen, report, now)
            for notice in lookup.notices:
                report.notices.append(notice)
                record_event(
                    session,
                    chain,
                    f"source_{notice.kind}",
                    {
                        "source": notice.source,
                        "message": notice.message,
                        "url": notice.url,
                        "advice": notice.advice,
                        "fields": list(notice.fields),
                        "data": _jsonable(notice.data),
                    },
                    at=now,
                )
            _unlist_missing(session, party, chain, source_name, existing, seen, report, now)
        for source_name, error in result.failed.items():
            report.failures.append(f"{party.key}: {source_name}: {error}")
            record_event(
                session, chain, "source_failed", {"source": source_name, "error": error}, at=now
            )
    session.flush()
    return report


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
    cp = existing.get((f.kind, value))
    if cp is None:
        cp = ContactPoint(
            party_id=party.id,
            kind=f.kind,
            value=value,
            label=f.label,
            status="unknown",
            confidence=f.confidence,
            listed=True,
            first_seen=now,
            last_seen=now,
        )
        session.add(cp)
        session.flush()
        existing[(f.kind, value)] = cp
        report.added.append(f"{party.key}: {f.kind} {value} ({f.source})")
        record_event(
            session,
            chain,
            "contact_added",
            {
                "kind": f.kind,
                "value": value,
                "label": f.label,
                "source": f.source,
                "url": f.url,
                "evidence_sha256": f.evidence_sha256,
                "confidence": f"{f.confidence:.2f}",
                "as_of": f.as_of,
            },
            at=now,
        )
    elif not cp.listed:
        cp.listed = True
        report.relisted.append(f"{party.key}: {f.kind} {value} ({f.source})")
        record_event(
            session,
            chain,
            "contact_relisted",
            {"kind": f.kind, "value": value, "source": f.source, "url": f.url},
            at=now,
        )
    cp.last_seen = now
    if f.label and not cp.label:
        cp.label = f.label
    url = f.url or ""
    prov = session.scalars(
        select(Provenance).where(
            Provenance.contact_point_id == cp.id,
            Provenance.source == f.source,
            Provenance.url == url,
        )
    ).one_or_none()
    if prov is None:
        prov = Provenance(contact_point_id=cp.id, source=f.source, url=url, first_seen=now)
        session.add(prov)
    prov.label = f.label
    prov.confidence = f.confidence
    prov.evidence_sha256 = f.evidence_sha256
    prov.as_of = f.as_of
    prov.last_seen = now
    prov.listed = True
    seen.add((cp.id, f.source, url))
    session.flush()
    cp.confidence = _combine(p.confidence for p in cp.provenance if p.listed)


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
        record_event(
            session,
            chain,
            "provenance_unlisted",
            {"kind": cp.kind, "value": cp.value, "source": prov.source, "url": prov.url or None},
            at=now,
        )
        if not any(p.listed for p in cp.provenance if p.id != prov.id):
            cp.listed = False
            report.unlisted.append(f"{party.key}: {cp.kind} {cp.value}")
            record_event(
                session, chain, "contact_unlisted", {"kind": cp.kind, "value": cp.value}, at=now
            )
        cp.confidence = _combine(p.confidence for p in cp.provenance if p.listed)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return f"{value}"
    if isinstance(value, str | int | bool) or value is None:
        return value
    return str(value)
