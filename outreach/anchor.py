"""Anchoring: an RFC 3161 trusted timestamp over the heads of every chain that moved.

The heads are the leaves of an RFC 6962 Merkle tree (leaf = canonical JSON of
``{"chain", "seq", "hash"}``, sorted by chain name); the TSA signs the 32-byte root, so it
never sees any merchant's data, and each case's bundle needs only its own leaf and an
O(log n) inclusion path. A token proves every event up to that head existed no later than the
TSA's time. An unreachable TSA never blocks sending: the failed anchor is stored (the gap is
reported by ``audit verify``) and the next anchor covers the heads again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outreach import clock, merkle
from outreach.proof import canonical_json
from outreach.store import Anchor, Chain, Event
from outreach.tsa import TokenVerificationError, TsaError, request_token, verify_token


def leaf_bytes(chain: str, seq: int, digest: str) -> bytes:
    return canonical_json({"chain": chain, "seq": seq, "hash": digest})


def pending_heads(session: Session) -> list[dict[str, object]]:
    """Heads of chains that changed since the last successful anchor, sorted by chain."""
    anchored: dict[str, int] = {}
    for anchor in session.scalars(select(Anchor).where(Anchor.status == "ok").order_by(Anchor.id)):
        for leaf in anchor.leaves:
            anchored[str(leaf["chain"])] = int(leaf["seq"])
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
    sessions: sessionmaker[Session], urls: list[str], client: httpx.AsyncClient
) -> AnchorReport:
    with sessions() as s:
        heads = pending_heads(s)
    if not heads:
        return AnchorReport()
    leaves = [leaf_bytes(str(h["chain"]), int(h["seq"]), str(h["hash"])) for h in heads]  # type: ignore[call-overload]
    root = merkle.root(leaves)
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
                    created_at=clock.now(),
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
                created_at=clock.now(),
            )
        )
    return report


@dataclass
class AnchorCheck:
    anchors: int = 0
    failed_anchors: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def verify_anchors(session: Session, trust_roots_pem: bytes | None) -> AnchorCheck:
    """Every stored token covers its root, the root covers its leaves, and every leaf's event
    still exists with that hash (so a chain truncated behind an anchor is caught even if the
    head row was edited to match)."""
    check = AnchorCheck()
    for a in session.scalars(select(Anchor).order_by(Anchor.id)):
        if a.status != "ok" or a.token is None:
            check.failed_anchors += 1
            continue
        check.anchors += 1
        leaves = [leaf_bytes(str(x["chain"]), int(x["seq"]), str(x["hash"])) for x in a.leaves]
        if merkle.root(leaves).hex() != a.root:
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
    return check
