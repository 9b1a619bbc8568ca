"""Anchoring: an RFC 3161 trusted timestamp over the heads of every chain that moved.

The heads are the leaves of an RFC 6962 Merkle tree (leaf = canonical JSON of
``{"chain", "seq", "hash"}``, sorted by chain name); the TSA signs the 32-byte root, so it
never sees any merchant's data, and each case's bundle needs only its own leaf and an
O(log n) inclusion path. A token proves every event up to that head existed no later than the
TSA's time. An unreachable TSA never blocks sending: the failed anchor is stored (the gap is
reported by ``audit verify``) and the next anchor covers the heads again.
docs/proof-format.md §6 is the normative description.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from outreach import clock, merkle
from outreach.config import ProofConfig
from outreach.proof import canonical_json
from outreach.retry import parse_duration
from outreach.store import Anchor, Chain, Event
from outreach.tsa import TokenVerificationError, TsaError, request_token, verify_token


def leaf_bytes(chain: str, seq: int, digest: str) -> bytes:
    """The Merkle leaf of one chain head: ``{"chain":…,"hash":…,"seq":…}`` canonical JSON."""
    return canonical_json({"chain": chain, "seq": seq, "hash": digest})


def leaf_of(leaf: Mapping[str, Any]) -> bytes:
    """:func:`leaf_bytes` of a stored leaf record (an element of ``Anchor.leaves``)."""
    return leaf_bytes(str(leaf["chain"]), int(leaf["seq"]), str(leaf["hash"]))


def anchored_seqs(session: Session) -> dict[str, int]:
    """For every chain, the highest seq covered by a successful anchor."""
    anchored: dict[str, int] = {}
    for leaves in session.scalars(select(Anchor.leaves).where(Anchor.status == "ok")):
        for leaf in leaves:
            chain, seq = str(leaf["chain"]), int(leaf["seq"])
            if seq > anchored.get(chain, 0):
                anchored[chain] = seq
    return anchored


def pending_heads(session: Session) -> list[dict[str, Any]]:
    """Heads of chains that changed since the last successful anchor, sorted by chain."""
    anchored = anchored_seqs(session)
    return [
        {"chain": c.name, "seq": c.head_seq, "hash": c.head_hash}
        for c in session.scalars(select(Chain).order_by(Chain.name))
        if c.head_seq > anchored.get(c.name, 0)
    ]


@dataclass
class AnchorReport:
    anchored: int = 0
    root: str | None = None
    tsa_url: str | None = None
    gen_time: datetime | None = None
    error: str | None = None


async def anchor_now(
    sessions: sessionmaker[Session],
    urls: list[str],
    client: httpx.AsyncClient,
    *,
    now: datetime | None = None,
) -> AnchorReport:
    """Time-stamp the heads of every chain that changed since the last successful anchor.

    Writes one ``anchors`` row: ``ok`` with the token, or ``failed`` with the reason (which is
    how ``audit verify`` and :func:`anchor_due` know a gap exists). Writes nothing when no
    chain changed. ``now`` stamps the row (a scheduler on a simulated clock passes its own).
    """
    with sessions() as s:
        heads = pending_heads(s)
    if not heads:
        return AnchorReport()
    root = merkle.root([leaf_of(h) for h in heads])
    report = AnchorReport(anchored=len(heads), root=root.hex())
    try:
        result = await request_token(urls, root, client)
    except TsaError as exc:
        report.error = str(exc)
        with sessions.begin() as s:
            s.add(
                Anchor(
                    root=root.hex(),
                    leaves=heads,
                    status="failed",
                    error=str(exc),
                    created_at=now or clock.now(),
                )
            )
        return report
    report.tsa_url, report.gen_time = result.tsa_url, result.gen_time
    with sessions.begin() as s:
        s.add(
            Anchor(
                root=root.hex(),
                leaves=heads,
                tsa_url=result.tsa_url,
                token=result.response_der,
                gen_time=result.gen_time,
                status="ok",
                created_at=now or clock.now(),
            )
        )
    return report


async def anchor_due(
    sessions: sessionmaker[Session],
    proof: ProofConfig,
    client: httpx.AsyncClient,
    *,
    now: datetime,
) -> AnchorReport | None:
    """Anchor if ``[proof] anchor_every`` has passed since the last attempt; else ``None``.

    Called on every scheduler tick. The clock counts from the last *attempt*, failed or not,
    so a TSA that is down is asked again once per period rather than on every tick; the
    failed attempts stay in ``anchors`` and ``audit verify`` reports how long events have
    waited. ``None`` too when no TSA is configured. A due run in which no chain changed
    returns a report with ``anchored == 0`` and writes nothing.
    """
    if not proof.tsa_urls:
        return None
    with sessions() as s:
        last = s.scalar(select(func.max(Anchor.created_at)))
    if last is not None:
        if last.tzinfo is None:  # func.max bypasses UTCDateTime's result processing
            last = last.replace(tzinfo=UTC)
        if now - last < timedelta(seconds=parse_duration(proof.anchor_every)):
            return None
    return await anchor_now(sessions, list(proof.tsa_urls), client, now=now)


# --------------------------------------------------------------------------- verification


@dataclass
class AnchorCheck:
    anchors: int = 0
    failed_anchors: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unanchored_events: int = 0
    """Events recorded after the last successful anchor of their chain."""
    unanchored_since: datetime | None = None
    """When the oldest of those was recorded: how long the gap has been open."""


def verify_anchors(
    session: Session,
    trust_roots_pem: bytes | None,
    *,
    chains: Iterable[str] | None = None,
    now: datetime | None = None,
) -> AnchorCheck:
    """Every stored token covers its root, the root covers its leaves, and every leaf's event
    still exists with that hash (so a chain truncated behind an anchor is caught even if the
    head row was edited to match). Notes say which events no timestamp covers yet, and since
    when. ``chains`` limits the leaf and gap checks to those chains (tokens are all checked).
    """
    wanted = None if chains is None else set(chains)
    check = AnchorCheck()
    last_failure: Anchor | None = None
    for a in session.scalars(select(Anchor).order_by(Anchor.id)):
        if a.status != "ok" or a.token is None:
            check.failed_anchors += 1
            last_failure = a
            continue
        last_failure = None
        check.anchors += 1
        if merkle.root([leaf_of(x) for x in a.leaves]).hex() != a.root:
            check.problems.append(f"anchor {a.id}: its leaves do not hash to its root")
            continue
        try:
            info = verify_token(a.token, bytes.fromhex(a.root), trust_roots_pem)
        except TokenVerificationError as exc:
            check.problems.append(f"anchor {a.id}: timestamp token does not verify: {exc}")
            continue
        if not info.signature_checked:
            check.notes.append(
                f"anchor {a.id}: imprint matches; signature not checked ({info.note})"
            )
        for leaf in a.leaves:
            chain, seq, digest = str(leaf["chain"]), int(leaf["seq"]), str(leaf["hash"])
            if wanted is not None and chain not in wanted:
                continue
            stored = session.scalars(
                select(Event.hash).where(Event.chain == chain, Event.seq == seq)
            ).first()
            if stored is None:
                check.problems.append(
                    f"{chain} #{seq}: anchored by anchor {a.id} at {a.gen_time} but missing (chain truncated)"
                )
            elif stored != digest:
                check.problems.append(
                    f"{chain} #{seq}: hash differs from the one anchored by anchor {a.id} (rewritten)"
                )
    _note_gap(session, check, wanted, last_failure, now or clock.now())
    return check


def _note_gap(
    session: Session,
    check: AnchorCheck,
    wanted: set[str] | None,
    last_failure: Anchor | None,
    now: datetime,
) -> None:
    """Say how many events no timestamp covers yet and how long the oldest has waited."""
    anchored = anchored_seqs(session)
    pending: list[tuple[str, int]] = []  # (chain, first unanchored seq)
    for name, head_seq in session.execute(select(Chain.name, Chain.head_seq)):
        if wanted is not None and name not in wanted:
            continue
        done = anchored.get(name, 0)
        if head_seq > done:
            pending.append((name, done + 1))
            check.unanchored_events += head_seq - done
    oldest: datetime | None = None
    for name, seq in pending:
        at = session.scalar(select(Event.at).where(Event.chain == name, Event.seq == seq))
        try:
            when = parse_at(at) if at is not None else None
        except ValueError:  # a malformed column is the chain check's to report, not ours
            when = None
        if when is not None and (oldest is None or when < oldest):
            oldest = when
    check.unanchored_since = oldest
    if check.unanchored_events:
        since = (
            f", the oldest since {oldest:%Y-%m-%d %H:%M:%S} UTC ({age(now - oldest)} ago)"
            if oldest
            else ""
        )
        check.notes.append(
            f"{check.unanchored_events} event(s) in {len(pending)} chain(s) not yet covered by a "
            f"timestamp{since}; `outreach audit anchor` (or the worker) time-stamps them"
        )
    elif check.anchors:
        check.notes.append("every event is covered by a timestamp")
    if last_failure is not None:
        check.notes.append(
            f"the last anchoring attempt ({last_failure.created_at:%Y-%m-%d %H:%M:%S} UTC) failed: "
            f"{last_failure.error}"
        )


def parse_at(text: str) -> datetime:
    """An event's ``at`` (RFC 3339 UTC with microseconds and ``Z``) as an aware datetime."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def age(delta: timedelta) -> str:
    """A duration as a person reads it: ``3 d 4 h``, ``2 h 5 min``, ``40 s``."""
    seconds = max(0, int(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


# --------------------------------------------------------------------------- one case's proof


@dataclass(frozen=True)
class Inclusion:
    """One anchor's proof for one chain: its leaf, where it sits, and the path to the root."""

    anchor: Anchor
    leaf: dict[str, Any]
    index: int
    size: int
    path: list[bytes]


def inclusions(session: Session, chain: str) -> list[Inclusion]:
    """Every successful anchor whose leaves include ``chain``, oldest first, with its path.

    The path holds only sibling hashes: the other leaves (other cases' heads) stay out.
    """
    found: list[Inclusion] = []
    for a in session.scalars(select(Anchor).where(Anchor.status == "ok").order_by(Anchor.id)):
        leaves: Sequence[Mapping[str, Any]] = a.leaves
        for index, leaf in enumerate(leaves):
            if leaf["chain"] == chain:
                path = merkle.inclusion_proof([leaf_of(x) for x in leaves], index)
                found.append(Inclusion(a, dict(leaf), index, len(leaves), path))
                break
    return found
