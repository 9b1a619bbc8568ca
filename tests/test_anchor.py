"""Anchoring against a real local RFC 3161 TSA (openssl ts behind HTTP on loopback)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from tsa_server import local_tsa

from outreach.anchor import anchor_due, anchor_now, verify_anchors
from outreach.cli import main
from outreach.config import ProofConfig
from outreach.migrate import ensure_schema
from outreach.proof import all_chains, record_event, verify_chain, verify_chains
from outreach.store import Anchor, make_engine, session_factory


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def outreach(cfg: Path, *args: str) -> Ran:
    """The real command, in-process (a subprocess per call costs seconds of imports)."""
    result = CliRunner().invoke(main, ["-c", str(cfg), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def _with_tsa(cfg: Path, url: str, ca: Path) -> None:
    text = cfg.read_text("utf-8").replace(
        "tsa_urls = []", f'tsa_urls = ["{url}"]\ntsa_ca_file = "{ca}"'
    )
    cfg.write_text(text, "utf-8")


def test_anchor_then_verify_catches_truncation_hidden_by_head_edit(
    example_config: Path, tmp_path: Path
) -> None:
    with local_tsa(tmp_path) as tsa:
        ca = tmp_path / "ca.pem"
        ca.write_bytes(tsa.ca_pem)
        _with_tsa(example_config, tsa.url, ca)
        assert outreach(example_config, "run").returncode == 0
        anchored = outreach(example_config, "audit", "anchor")
        assert anchored.returncode == 0, anchored.stderr
        assert "anchored 5 chain heads" in anchored.stdout
        assert "nothing to anchor" in outreach(example_config, "audit", "anchor").stdout
    ok = outreach(example_config, "audit", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 timestamp anchors checked" in ok.stdout

    # An insider deletes the last event of a case and rewinds the head row to match:
    # the chain alone now looks intact, but the anchor remembers the real head.
    db = sqlite3.connect(example_config.parent / "var" / "outreach.db")
    chain, seq, prev = db.execute(
        "SELECT chain, seq, prev_hash FROM events WHERE chain LIKE 'case:%' ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    db.execute("DROP TRIGGER events_no_delete")
    db.execute("DELETE FROM events WHERE chain = ? AND seq = ?", (chain, seq))
    db.execute(
        "UPDATE chains SET head_seq = ?, head_hash = ? WHERE name = ?", (seq - 1, prev, chain)
    )
    db.commit()
    db.close()
    broken = outreach(example_config, "audit", "verify")
    assert broken.returncode == 1
    assert f"{chain} #{seq}: anchored by anchor 1" in broken.stdout and "truncated" in broken.stdout


def test_unreachable_tsa_is_recorded_not_fatal_to_sending(example_config: Path) -> None:
    text = example_config.read_text("utf-8").replace(
        "tsa_urls = []", 'tsa_urls = ["http://127.0.0.1:9/tsr"]'
    )
    example_config.write_text(text, "utf-8")
    assert outreach(example_config, "run").returncode == 0
    failed = outreach(example_config, "audit", "anchor")
    assert failed.returncode == 1 and "127.0.0.1:9" in failed.stderr
    verify = outreach(example_config, "audit", "verify")
    assert verify.returncode == 0 and "anchoring attempt(s) failed" in verify.stdout


def test_anchor_without_tsa_is_a_config_error(example_config: Path) -> None:
    proc = outreach(example_config, "audit", "anchor")
    assert proc.returncode == 2 and "proof.tsa_urls" in proc.stderr


# ------------------------------------------------------------------ library level


def _sessions(url: str) -> tuple[Engine, sessionmaker[Session]]:
    engine = make_engine(url)
    ensure_schema(engine)
    return engine, session_factory(engine)


def _fill(sessions: sessionmaker[Session], chains: list[str], n: int, t0: datetime) -> None:
    """``n`` events per chain, interleaved across chains as real traffic is."""
    with sessions.begin() as s:
        for i in range(n):
            for c in chains:
                record_event(
                    s, c, "note", {"i": i, "text": "商户 & <b>"}, at=t0 + timedelta(seconds=i)
                )


def _drop_guards(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        if s.bind is not None and s.bind.dialect.name == "sqlite":
            s.execute(sa.text("DROP TRIGGER IF EXISTS events_no_update"))
            s.execute(sa.text("DROP TRIGGER IF EXISTS events_no_delete"))
        else:
            s.execute(sa.text("DROP TRIGGER IF EXISTS events_no_change ON events"))


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE events SET seq = 100 + seq WHERE chain = 'case:B' AND seq IN (2, 3)",
        "UPDATE events SET kind = 'other' WHERE chain = 'case:B' AND seq = 4",
        "DELETE FROM events WHERE chain = 'case:B' AND seq = 5",
        "DELETE FROM events WHERE chain = 'case:B' AND seq = 8",
        "UPDATE events SET body = replace(body, '商户', '商店') WHERE chain = 'case:B' AND seq = 1",
    ],
    ids=["reordered", "column", "deleted", "truncated", "edited"],
)
def test_one_pass_verify_equals_chain_by_chain_on_both_engines(db_url: str, tamper: str) -> None:
    """verify_chains reads everything in storage order in one pass; whatever the damage, it
    must say exactly what verify_chain says chain by chain (PostgreSQL: server-side cursor)."""
    engine, sessions = _sessions(db_url)
    try:
        _fill(sessions, ["case:A", "case:B", "party:p"], 8, datetime(2026, 11, 23, tzinfo=UTC))
        with sessions() as s:
            clean = verify_chains(s)
        assert [(r.chain, r.events, r.problem) for r in clean] == [
            ("case:A", 8, None),
            ("case:B", 8, None),
            ("party:p", 8, None),
        ]
        _drop_guards(sessions)
        with sessions.begin() as s:
            s.execute(sa.text(tamper))
        with sessions() as s:
            one_pass = verify_chains(s)
            by_chain = [verify_chain(s, name) for name in all_chains(s)]
        assert [str(r.problem) for r in one_pass] == [str(r.problem) for r in by_chain]
        assert [r.chain for r in one_pass if r.problem] == ["case:B"]
    finally:
        engine.dispose()


async def test_anchor_due_follows_anchor_every_since_the_last_attempt(
    sqlite_url: str, tmp_path: Path
) -> None:
    engine, sessions = _sessions(sqlite_url)
    t0 = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
    _fill(sessions, ["case:A"], 2, t0)
    try:
        async with httpx.AsyncClient() as client:
            assert await anchor_due(sessions, ProofConfig(), client, now=t0) is None  # no TSA
            down = ProofConfig(tsa_urls=["http://127.0.0.1:9/tsr"], anchor_every="1h")
            failed = await anchor_due(sessions, down, client, now=t0)
            assert failed is not None and failed.error and failed.anchored == 1
            # The failed attempt counts: not retried before the hour is up, then retried.
            assert await anchor_due(sessions, down, client, now=t0 + timedelta(minutes=59)) is None
            with local_tsa(tmp_path) as tsa:
                up = ProofConfig(tsa_urls=[tsa.url], anchor_every="1h")
                ok = await anchor_due(sessions, up, client, now=t0 + timedelta(minutes=61))
                assert ok is not None and ok.error is None and ok.anchored == 1
                assert (
                    await anchor_due(sessions, up, client, now=t0 + timedelta(hours=1, minutes=30))
                    is None
                )
                nothing = await anchor_due(sessions, up, client, now=t0 + timedelta(hours=3))
                assert nothing is not None and nothing.anchored == 0  # due, but nothing moved
                ca = tsa.ca_pem
        with sessions() as s:
            statuses = [a.status for a in s.scalars(sa.select(Anchor).order_by(Anchor.id))]
            created = [a.created_at for a in s.scalars(sa.select(Anchor).order_by(Anchor.id))]
            check = verify_anchors(s, ca, now=t0 + timedelta(hours=3))
        assert statuses == ["failed", "ok"] and created == [t0, t0 + timedelta(minutes=61)]
        assert not check.problems and check.anchors == 1 and check.failed_anchors == 1
        assert "every event is covered by a timestamp" in check.notes
    finally:
        engine.dispose()


async def test_verify_says_how_long_the_newest_events_have_waited(
    sqlite_url: str, tmp_path: Path
) -> None:
    engine, sessions = _sessions(sqlite_url)
    t0 = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
    _fill(sessions, ["case:A", "case:B"], 3, t0)
    try:
        with local_tsa(tmp_path) as tsa:
            async with httpx.AsyncClient() as client:
                assert (await anchor_now(sessions, [tsa.url], client, now=t0)).anchored == 2
            ca = tsa.ca_pem
        with sessions.begin() as s:  # after the anchor: two events of A, one of B
            record_event(s, "case:A", "note", {"i": 10}, at=t0 + timedelta(hours=1))
            record_event(s, "case:B", "note", {"i": 11}, at=t0 + timedelta(hours=2))
            record_event(s, "case:A", "note", {"i": 12}, at=t0 + timedelta(hours=3))
        async with httpx.AsyncClient() as client:  # and the TSA is down since
            failed = await anchor_now(sessions, ["http://127.0.0.1:9/tsr"], client)
            assert failed.error
        with sessions() as s:
            check = verify_anchors(s, ca, now=t0 + timedelta(hours=5, minutes=30))
            only_b = verify_anchors(
                s, ca, chains=["case:B"], now=t0 + timedelta(hours=5, minutes=30)
            )
        assert not check.problems and check.unanchored_events == 3
        assert check.unanchored_since == t0 + timedelta(hours=1)
        assert any(
            "3 event(s) in 2 chain(s) not yet covered by a timestamp" in n
            and "the oldest since 2026-11-23 04:00:00 UTC (4 h 30 min ago)" in n
            for n in check.notes
        ), check.notes
        assert any(
            n.startswith("the last anchoring attempt") and "127.0.0.1:9" in n for n in check.notes
        )
        assert only_b.unanchored_events == 1 and only_b.unanchored_since == t0 + timedelta(hours=2)
    finally:
        engine.dispose()
