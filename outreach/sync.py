"""Config -> database. Idempotent; never deletes: what left the config becomes inactive.

Each case chain opens with a ``case_opened`` event that snapshots who, what and which
terminals, so an evidence bundle is self-contained; later edits to the same facts in the
config are chained as ``case_updated`` so the history of what was claimed when is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from outreach import clock
from outreach.config import Config, MerchantConfig, PartyConfig
from outreach.proof import record_event
from outreach.store import Case, CaseTerminal, Merchant, Party, Terminal


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.deactivated)


def _apply(obj: Any, values: dict[str, Any]) -> list[str]:
    changed = [k for k, v in values.items() if getattr(obj, k) != v]
    for k in changed:
        setattr(obj, k, values[k])
    return changed


def _party_values(p: PartyConfig) -> dict[str, Any]:
    return {
        "role": p.role,
        "name": p.name,
        "legal_name": p.legal_name,
        "uscc": p.uscc,
        "licence_no": p.licence_no,
        "website": p.website,
        "sources": list(p.sources),
        "hints": {k: dict(v) for k, v in p.hints.items()},
        "active": True,
    }


def _merchant_values(m: MerchantConfig) -> dict[str, Any]:
    return {
        "name": m.name,
        "merchant_no": m.merchant_no,
        "contact_name": m.contact_name,
        "phone": m.phone,
        "email": m.email,
        "address": m.address,
        "active": True,
    }


def case_snapshot(session: Session, case: Case) -> dict[str, Any]:
    """The facts of a case as they stand, for chaining (no floats, no ids that could leak)."""
    m = case.merchant
    return {
        "reference": case.reference,
        "goal": case.goal,
        "plan": case.plan,
        "language": case.language,
        "opened_on": case.opened_on.isoformat(),
        "statement": case.statement,
        "deposit": case.deposit,
        "merchant": {
            "name": m.name,
            "merchant_no": m.merchant_no,
            "contact_name": m.contact_name,
            "phone": m.phone,
            "email": m.email,
            "address": m.address,
        },
        "terminals": [
            {
                "terminal_no": t.terminal_no,
                "sn": t.sn,
                "model": t.model,
                "acquirer": t.acquirer.key,
                "acquirer_name": t.acquirer.legal_name or t.acquirer.name,
                "acquirer_licence": t.acquirer.licence_no,
                "agent": t.agent.key if t.agent else None,
                "agent_name": (t.agent.legal_name or t.agent.name) if t.agent else None,
            }
            for t in sorted(case.terminals, key=lambda t: t.terminal_no)
        ],
    }


def sync(session: Session, cfg: Config, *, at: datetime | None = None) -> SyncReport:
    """Bring the database in line with ``cfg`` inside the caller's transaction."""
    now = at or clock.now()
    report = SyncReport()

    parties = {p.key: p for p in session.scalars(select(Party))}
    for key, pc in cfg.parties.items():
        party = parties.get(key)
        values = _party_values(pc)
        if party is None:
            party = Party(key=key, **values, created_at=now, updated_at=now)
            session.add(party)
            parties[key] = party
            report.added.append(f"party {key}")
        elif changed := _apply(party, values):
            party.updated_at = now
            report.changed.append(f"party {key} ({', '.join(changed)})")
    for key, party in parties.items():
        if key not in cfg.parties and party.active:
            party.active = False
            report.deactivated.append(f"party {key}")
    session.flush()

    merchants = {m.key: m for m in session.scalars(select(Merchant))}
    for mc in cfg.merchants:
        merchant = merchants.get(mc.key)
        values = _merchant_values(mc)
        if merchant is None:
            merchant = Merchant(key=mc.key, **values, created_at=now, updated_at=now)
            session.add(merchant)
            session.flush()
            merchants[mc.key] = merchant
            report.added.append(f"merchant {mc.key}")
        elif changed := _apply(merchant, values):
            merchant.updated_at = now
            report.changed.append(f"merchant {mc.key} ({', '.join(changed)})")
        terminals = {
            t.terminal_no: t
            for t in session.scalars(select(Terminal).where(Terminal.merchant_id == merchant.id))
        }
        for tc in mc.terminals:
            tvalues = {
                "sn": tc.sn,
                "model": tc.model,
                "acquirer_id": parties[tc.acquirer].id,
                "agent_id": parties[tc.agent].id if tc.agent else None,
                "active": True,
            }
            term = terminals.get(tc.terminal_no)
            if term is None:
                session.add(
                    Terminal(merchant_id=merchant.id, terminal_no=tc.terminal_no, **tvalues)
                )
                report.added.append(f"terminal {mc.key}/{tc.terminal_no}")
            elif changed := _apply(term, tvalues):
                report.changed.append(f"terminal {mc.key}/{tc.terminal_no} ({', '.join(changed)})")
        wanted = {t.terminal_no for t in mc.terminals}
        for no, term in terminals.items():
            if no not in wanted and term.active:
                term.active = False
                report.deactivated.append(f"terminal {mc.key}/{no}")
    for key, merchant in merchants.items():
        if key not in {m.key for m in cfg.merchants} and merchant.active:
            merchant.active = False
            report.deactivated.append(f"merchant {key}")
    session.flush()

    cases = {c.key: c for c in session.scalars(select(Case))}
    for cc in cfg.cases:
        merchant = merchants[cc.merchant]
        all_terms = {
            t.terminal_no: t
            for t in session.scalars(select(Terminal).where(Terminal.merchant_id == merchant.id))
        }
        chosen = [
            all_terms[n]
            for n in (cc.terminals or [t.terminal_no for t in cfg.merchant(cc.merchant).terminals])
        ]
        values = {
            "merchant_id": merchant.id,
            "goal": cc.goal,
            "plan": cc.plan,
            "language": cc.language,
            "statement": cc.statement,
            "deposit": cc.deposit,
            "active": True,
        }
        case = cases.get(cc.key)
        if case is None:
            opened = cc.opened or clock.today(now)
            case = Case(
                key=cc.key,
                reference=f"pending-{cc.key}",
                opened_on=opened,
                state="open",
                next_step=0,
                **values,
                created_at=now,
                updated_at=now,
            )
            session.add(case)
            session.flush()
            case.reference = f"{cfg.sender.reference_prefix}-{opened.year}-{case.id:06d}"
            for t in chosen:
                session.add(CaseTerminal(case_id=case.id, terminal_id=t.id))
            session.flush()
            session.refresh(case)
            record_event(
                session,
                case.chain,
                "case_opened",
                case_snapshot(session, case),
                case_id=case.id,
                at=now,
            )
            report.added.append(f"case {cc.key} ({case.reference})")
            continue
        before = case_snapshot(session, case)
        changed = _apply(case, values)
        current = {
            ct.terminal_id
            for ct in session.scalars(select(CaseTerminal).where(CaseTerminal.case_id == case.id))
        }
        wanted_ids = {t.id for t in chosen}
        for tid in wanted_ids - current:
            session.add(CaseTerminal(case_id=case.id, terminal_id=tid))
        for tid in current - wanted_ids:
            session.delete(session.get(CaseTerminal, (case.id, tid)))
        session.flush()
        session.refresh(case)
        after = case_snapshot(session, case)
        if after != before:
            case.updated_at = now
            diff = sorted(k for k in after if after[k] != before.get(k))
            record_event(
                session,
                case.chain,
                "case_updated",
                {"changed": diff, "now": after},
                case_id=case.id,
                at=now,
            )
            report.changed.append(f"case {cc.key} ({', '.join(diff or changed)})")
    for key, case in cases.items():
        if key not in {c.key for c in cfg.cases} and case.active:
            case.active = False
            record_event(
                session,
                case.chain,
                "case_inactive",
                {"reason": "removed from config"},
                case_id=case.id,
                at=now,
            )
            report.deactivated.append(f"case {key}")
    session.flush()
    return report
