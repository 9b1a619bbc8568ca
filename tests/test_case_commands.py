"""`outreach case resolve|pause|resume|stop` and a reply: each stops (or restarts) the ladder,
cancels what has not been sent, and is chained with its note — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner, Result

from outreach.app import App
from outreach.cli import main
from outreach.proof import all_chains, verify_chain
from outreach.store import Attempt, Case, Notice
from tests.test_ladder import (
    Scripted,
    attempts,
    beijing,
    dispatch,
    email_step,
    events,
    open_app,
    refs,
    write_config,
)

STEPS = [email_step(0, "cancellation_request"), email_step(2, "reminder")]
MONDAY = date(2026, 11, 2)


def cli(cfg: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["-c", str(cfg), *args], catch_exceptions=False)


def states(app: App, key: str) -> list[str]:
    with app.sessions() as s:
        return list(
            s.scalars(
                sa.select(Attempt.state)
                .join(Notice)
                .join(Case)
                .where(Case.key == key)
                .order_by(Attempt.id)
            )
        )


def case_state(app: App, key: str) -> str:
    with app.sessions() as s:
        return s.scalars(sa.select(Case.state).where(Case.key == key)).one()


def chain_ok(app: App) -> None:
    with app.sessions() as s:
        assert [verify_chain(s, c).problem for c in all_chains(s)] == [None] * len(all_chains(s))


def test_pause_resume_resolve(db_url: str, tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        STEPS,
        [("c", "solo", "2026-11-02"), ("d", "agent", "2026-11-02")],
        database=db_url,
    )
    app = open_app(cfg, beijing(MONDAY))
    try:
        app.plan(at=beijing(MONDAY))
        assert states(app, "c") == ["queued"]

        paused = cli(
            cfg, "case", "pause", "c", "--note", "代理商来电称正在处理", "--at", "2026-11-02"
        )
        assert paused.exit_code == 0, paused.output
        assert "open → paused; 1 unsent attempt(s) cancelled" in paused.output
        assert states(app, "c") == ["cancelled"]
        ref = refs(app)["c"]
        chained = [e for e in events(app) if e["chain"] == f"case:{ref}"]
        assert [e["kind"] for e in chained[-2:]] == ["case_paused", "attempt_cancelled"]
        assert chained[-2]["data"]["note"] == "代理商来电称正在处理"
        assert chained[-1]["data"]["reason"] == "case paused"

        # While paused nothing goes out and the ladder does not move; the other case does.
        channel = Scripted({})
        dispatch(app, channel, beijing(MONDAY))
        assert channel.sent == ["first@agent.example.cn"]
        report = app.plan(at=beijing(date(2026, 11, 4)))
        assert [p.case for p in report.planned] == [refs(app)["d"]]

        again = cli(cfg, "case", "pause", "c", "--note", "again")
        assert again.exit_code == 0 and "already paused; nothing changed" in again.output

        # Resumed before the notice's deadline (11-04): the cancelled notice goes out again.
        resumed = cli(cfg, "case", "resume", "OUT-2026-000001", "--at", "2026-11-03")
        assert resumed.exit_code == 0, resumed.output
        assert "paused → open; 1 cancelled attempt(s) queued again" in resumed.output
        dispatch(app, channel, beijing(date(2026, 11, 3)))
        assert channel.sent[-1] == "only@solo.example.cn"
        assert states(app, "c") == ["sent"]
        assert [e["kind"] for e in events(app, "attempt_requeued")] == ["attempt_requeued"]

        # The step that fell due while paused goes out at the next pass.
        step2 = app.plan(at=beijing(date(2026, 11, 4)))
        assert [(p.case, p.step) for p in step2.planned] == [(ref, 1)]

        resolved = cli(cfg, "case", "resolve", "c", "--note", "终端已注销（客服工单 12345）")
        assert resolved.exit_code == 0, resolved.output
        assert "open → resolved; 1 unsent attempt(s) cancelled" in resolved.output
        assert case_state(app, "c") == "resolved"
        late = cli(cfg, "case", "resume", "c")
        assert late.exit_code == 1
        assert "is resolved; resume applies to a case that is paused, replied" in late.output
        assert cli(cfg, "case", "resolve", "c", "--note", "x").exit_code == 0
        chain_ok(app)
    finally:
        app.close()


def test_resume_after_the_deadline_leaves_stale_notices_and_moves_on(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, STEPS, [("c", "solo", "2026-11-02")])
    app = open_app(cfg, beijing(MONDAY))
    try:
        app.plan(at=beijing(MONDAY))
        assert (
            cli(cfg, "case", "pause", "c", "--note", "holiday", "--at", "2026-11-02").exit_code == 0
        )
        resumed = cli(cfg, "case", "resume", "c", "--at", "2026-11-10")
        assert "1 left cancelled (their deadline has passed)" in resumed.output
        assert states(app, "c") == ["cancelled"]
        report = app.plan(at=beijing(date(2026, 11, 10)))
        assert [(p.step, p.template) for p in report.planned] == [(1, "reminder")]
    finally:
        app.close()


def test_stop_and_errors(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, STEPS, [("c", "solo", "2026-11-02")])
    app = open_app(cfg, beijing(MONDAY))
    try:
        app.plan(at=beijing(MONDAY))
        no_note = cli(cfg, "case", "stop", "c")
        assert no_note.exit_code == 2 and "--note" in no_note.output
        unknown = cli(cfg, "case", "stop", "nope", "--note", "x")
        assert unknown.exit_code == 2 and "no case 'nope'" in unknown.output
        stopped = cli(cfg, "case", "stop", "c", "--note", "商户撤回委托")
        assert stopped.exit_code == 0 and "open → stopped" in stopped.output
        assert cli(cfg, "case", "pause", "c", "--note", "x").exit_code == 1
        assert app.plan(at=beijing(date(2026, 12, 1))).planned == []
        # A stopped case can still be recorded as resolved.
        assert cli(cfg, "case", "resolve", "c", "--note", "已注销").exit_code == 0
        assert [e["data"]["from"] for e in events(app, "case_resolved")] == ["stopped"]
        for sub in ("resolve", "pause", "resume", "stop"):
            helped = cli(cfg, "case", sub, "--help")
            assert helped.exit_code == 0 and "Usage:" in helped.output
    finally:
        app.close()


def test_a_reply_stops_the_ladder_and_cancels_what_has_not_left(
    db_url: str, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, STEPS, [("c", "agent", "2026-11-02")], database=db_url)
    app = open_app(cfg, beijing(MONDAY))
    try:
        app.plan(at=beijing(MONDAY))
        # What inbound does on a matched reply: the case is replied (in its own transaction).
        with app.sessions.begin() as s:
            s.scalars(sa.select(Case)).one().state = "replied"
        report = app.plan(at=beijing(MONDAY) + timedelta(minutes=5))
        assert [(d.kind, d.note) for d in report.decisions] == [
            ("cancelled", "first@agent.example.cn: case replied")
        ]
        channel = Scripted({})
        dispatch(app, channel, beijing(MONDAY))
        assert channel.sent == [] and attempts(app)[0][2] == "cancelled"
        assert app.plan(at=beijing(date(2026, 11, 30))).planned == []
        assert app.plan(at=beijing(date(2026, 11, 30))).decisions == []
        # A reply that settles nothing: the user resumes the ladder.
        assert cli(cfg, "case", "resume", "c", "--at", "2026-11-03").exit_code == 0
        assert case_state(app, "c") == "open"
        chain_ok(app)
    finally:
        app.close()
