"""The ladder on a fake clock: exact due dates through Spring Festival and National Day 2026
(调休 Saturdays and Sundays count, holidays never do), per-case overrides, fallback to the
next contact or kind after a permanent failure or a bounce, dead ends reported once while the
ladder moves on, and a dry run that writes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

from channels.base import Outgoing, Permanent, Prepared, Receipt
from outreach import clock, registry
from outreach.app import App
from outreach.case_warnings import case_warnings
from outreach.dispatch import Dispatcher, DispatchPolicy
from outreach.ladder import apply_overrides, config_overrides, describe, plan_due
from outreach.models_schedule import ExhaustedRoute
from outreach.proof import all_chains, verify_chain
from outreach.retry import Backoff
from outreach.store import Attempt, Base, Case, Event, Notice
from outreach.workdays import is_working_day

# ---------------------------------------------------------------------------- a small world

PARTIES = """
[parties.agent]
role = "agent"
name = "某某支付服务有限公司"
  [[parties.agent.contacts]]
  kind = "email"
  value = "first@agent.example.cn"
  [[parties.agent.contacts]]
  kind = "email"
  value = "second@agent.example.cn"
  [[parties.agent.contacts]]
  kind = "sms"
  value = "13900139000"

[parties.solo]
role = "agent"
name = "只有一个邮箱的代理商"
  [[parties.solo.contacts]]
  kind = "email"
  value = "only@solo.example.cn"
  [[parties.solo.contacts]]
  kind = "sms"
  value = "13700137000"

[parties.acq]
role = "acquirer"
name = "某收单机构"
  [[parties.acq.contacts]]
  kind = "email"
  value = "complaints@acq.example.cn"

[parties.pcac]
role = "association"
name = "中国支付清算协会"
  [[parties.pcac.contacts]]
  kind = "email"
  value = "jubao@pcac.example.cn"
"""


def write_config(
    folder: Path,
    steps: Sequence[Mapping[str, Any]],
    cases: Sequence[tuple[str, str, str]],
    *,
    database: str | None = None,
    schedule: str = 'interval = "15m"',
    reply_days: int = 10,
    channels: str | None = None,
    extra: str = "",
) -> Path:
    """A config with one plan of ``steps`` and ``cases`` of (key, agent party, opened)."""
    lines = [
        "[database]",
        f'url = "{database or "sqlite:///var/outreach.db"}"',
        "[sender]",
        'name = "张三"',
        'email = "zhangsan@example.com"',
        PARTIES,
        extra,
        channels
        or '[channels.outbox]\nadapter = "outbox"\ndir = "var/outbox"\nfrom_address = "zhangsan@example.com"',
        "[plans.ladder]",
        f"reply_days = {reply_days}",
    ]
    for step in steps:
        lines.append("[[plans.ladder.steps]]")
        for k, v in step.items():
            lines.append(f"{k} = {json.dumps(v, ensure_ascii=False)}")
    for n, (key, agent, opened) in enumerate(cases):
        lines += [
            "[[merchants]]",
            f'key = "m{n}"',
            f'name = "商户{n}"',
            f'merchant_no = "82258405399{n:04d}"',
            "  [[merchants.terminals]]",
            f'  terminal_no = "T{n:07d}"',
            '  acquirer = "acq"',
            f'  agent = "{agent}"',
            "[[cases]]",
            f'key = "{key}"',
            f'merchant = "m{n}"',
            'goal = "cancel_terminal"',
            'plan = "ladder"',
            f"opened = {opened}",
        ]
    lines += ["[schedule]", schedule]
    path = folder / "outreach.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def beijing(day: date, hour: int = 10) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=clock.CST).astimezone(UTC)


def days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def open_app(cfg: Path, at: datetime) -> App:
    app = App.open(cfg)
    app.sync(at=at)
    app.discover(at=at)
    return app


def events(app: App, kind: str | None = None) -> list[dict[str, Any]]:
    with app.sessions() as s:
        rows = s.scalars(sa.select(Event).order_by(Event.id)).all()
    out = [{**json.loads(e.body), "case_id": e.case_id} for e in rows]
    return [e for e in out if kind is None or e["kind"] == kind]


def planned_days(app: App) -> dict[str, dict[int, date]]:
    """case reference -> step -> the Beijing day its step was planned."""
    out: dict[str, dict[int, date]] = {}
    for e in events(app, "step_planned"):
        at = datetime.fromisoformat(e["at"].replace("Z", "+00:00"))
        out.setdefault(e["chain"].removeprefix("case:"), {})[e["data"]["step"]] = clock.today(at)
    return out


def refs(app: App) -> dict[str, str]:
    with app.sessions() as s:
        return {c.key: c.reference for c in s.scalars(sa.select(Case))}


def email_step(after: int, template: str, to: str = "agent", **kw: Any) -> dict[str, Any]:
    return {"after": after, "to": to, "via": ["email"], "template": template, **kw}


# ---------------------------------------------------------------------------- calendar


def test_spring_festival_2026_exact_due_dates(tmp_path: Path) -> None:
    """Holidays 2026-02-15..23 never count; Saturdays 02-14 and 02-28 (调休) do."""
    steps = [
        email_step(0, "cancellation_request", since="opening"),
        email_step(1, "reminder"),
        email_step(5, "complaint_acquirer", to="acquirer"),
        email_step(1, "complaint_regulator", to="association"),
    ]
    cfg = write_config(
        tmp_path, steps, [("before", "agent", "2026-02-13"), ("during", "solo", "2026-02-16")]
    )
    app = open_app(cfg, beijing(date(2026, 2, 10)))
    try:
        r = refs(app)
        for day in days(date(2026, 2, 10), date(2026, 3, 6)):
            if day == date(2026, 2, 20):
                # Nothing is due in the middle of the holiday; the plan says when it will be.
                quiet = app.plan(at=beijing(day), dry_run=True)
                assert quiet.planned == []
                assert sorted(quiet.waiting) == [
                    (r["before"], 2, date(2026, 2, 28)),
                    (r["during"], 0, date(2026, 2, 24)),
                ]
            app.plan(at=beijing(day))
        got = planned_days(app)
        assert got[r["before"]] == {
            0: date(2026, 2, 13),  # Fri
            1: date(2026, 2, 14),  # Sat, 调休 working day: 1 working day after Friday
            2: date(2026, 2, 28),  # Sat, 调休: 02-24..27 are 4, the make-up Saturday the 5th
            3: date(2026, 3, 2),  # Mon: Sunday 03-01 is not a working day
        }
        # Opened on a holiday: "at once" waits for the office to open on 02-24.
        assert got[r["during"]] == {
            0: date(2026, 2, 24),
            1: date(2026, 2, 25),
            2: date(2026, 3, 3),  # 26, 27, 28 (Sat 调休), Mon 2, Tue 3
            3: date(2026, 3, 4),
        }
        for per_case in got.values():
            assert all(is_working_day(d) for d in per_case.values())
            assert not any(date(2026, 2, 15) <= d <= date(2026, 2, 23) for d in per_case.values())
        with app.sessions() as s:
            deadlines = dict(
                s.execute(
                    sa.select(Notice.step, Notice.deadline)
                    .join(Case)
                    .where(Case.key == "before")
                    .order_by(Notice.step)
                ).all()
            )
        # The reply deadline printed in each notice is the day the next step goes out;
        # the last one's is reply_days (10) working days later.
        assert deadlines == {
            0: date(2026, 2, 14),
            1: date(2026, 2, 28),
            2: date(2026, 3, 2),
            3: date(2026, 3, 16),
        }
        due = [e for e in events(app, "step_due") if e["chain"] == f"case:{r['before']}"]
        assert [e["data"]["due"] for e in due] == [
            "2026-02-13",
            "2026-02-14",
            "2026-02-28",
            "2026-03-02",
        ]
    finally:
        app.close()


def test_national_day_2026_exact_due_dates(tmp_path: Path) -> None:
    """Mid-autumn 09-25..27 and National Day 10-01..07 never count; Sunday 09-20 and
    Saturday 10-10 (调休) do."""
    afters = [0, 1, 4, 2, 3, 1, 1]
    templates = ["cancellation_request", "reminder", "reminder", "reminder"] * 2
    steps = [email_step(a, t) for a, t in zip(afters, templates, strict=False)]
    cfg = write_config(tmp_path, steps, [("nd", "agent", "2026-09-18")])
    app = open_app(cfg, beijing(date(2026, 9, 15)))
    try:
        waiting = app.plan(at=beijing(date(2026, 9, 15)), dry_run=True).waiting
        assert [(s, d) for _c, s, d in waiting] == [(0, date(2026, 9, 18))]
        for day in days(date(2026, 9, 15), date(2026, 10, 14)):
            app.plan(at=beijing(day))
        (got,) = planned_days(app).values()
        assert got == {
            0: date(2026, 9, 18),  # Fri
            1: date(2026, 9, 20),  # Sun, 调休 (Saturday 09-19 is a rest day)
            2: date(2026, 9, 24),  # Mon 21 .. Thu 24
            3: date(2026, 9, 29),  # Fri 25 .. Sun 27 are Mid-autumn; Mon 28, Tue 29
            4: date(2026, 10, 9),  # Wed 30; 10-01..07 holiday; Thu 8, Fri 9
            5: date(2026, 10, 10),  # Sat, 调休
            6: date(2026, 10, 12),  # Sunday 10-11 is a rest day
        }
    finally:
        app.close()


def test_calendar_gap_is_a_warning(tmp_path: Path) -> None:
    steps = [email_step(0, "cancellation_request"), email_step(15, "reminder")]
    cfg = write_config(tmp_path, steps, [("late", "agent", "2026-12-21")])
    app = open_app(cfg, beijing(date(2026, 12, 21)))
    try:
        with app.sessions() as s:
            case = s.scalars(sa.select(Case)).one()
            warnings = case_warnings(s, app.config, case, at=beijing(date(2026, 12, 21)))
        assert any("2027" in w and "Monday–Friday" in w for w in warnings), warnings
    finally:
        app.close()


# ---------------------------------------------------------------------------- overrides


def test_overrides_change_one_case_and_skip_a_step(tmp_path: Path) -> None:
    steps = [
        email_step(0, "cancellation_request"),
        email_step(5, "reminder"),
        email_step(5, "complaint_acquirer", to="acquirer"),
        email_step(1, "complaint_regulator", to="association"),
    ]
    cfg = write_config(
        tmp_path, steps, [("custom", "agent", "2026-11-02"), ("plain", "solo", "2026-11-02")]
    )
    overrides = {"custom": [{"step": 2, "after": 2, "via": ["sms"]}, {"step": 3, "skip": True}]}
    app = open_app(cfg, beijing(date(2026, 11, 2)))
    try:
        for day in days(date(2026, 11, 2), date(2026, 11, 20)):
            with app.sessions.begin() as s:
                plan_due(
                    s, app.config, registry.channel_kinds(), at=beijing(day), overrides=overrides
                )
        r = refs(app)
        got = planned_days(app)
        # custom: reminder after 2 working days (Wed 11-04) by SMS; step 3 passed over when
        # due (11-11); step 4 one working day after that.
        assert got[r["custom"]] == {
            0: date(2026, 11, 2),
            1: date(2026, 11, 4),
            3: date(2026, 11, 12),
        }
        assert got[r["plain"]] == {
            0: date(2026, 11, 2),
            1: date(2026, 11, 9),
            2: date(2026, 11, 16),
            3: date(2026, 11, 17),
        }
        skipped = [e for e in events(app, "step_skipped") if e["chain"] == f"case:{r['custom']}"]
        assert [e["data"]["step"] for e in skipped] == [2]
        assert "override" in skipped[0]["data"]["reason"]
        planned = {
            e["data"]["step"]: e["data"]
            for e in events(app, "step_planned")
            if e["chain"] == f"case:{r['custom']}"
        }
        assert planned[1]["overridden"] == ["after", "via"]
        with app.sessions() as s:
            kinds = s.scalars(
                sa.select(Attempt.kind)
                .join(Notice)
                .join(Case)
                .where(Case.key == "custom", Notice.step == 1)
            ).all()
            reminder = s.scalars(
                sa.select(Notice).join(Case).where(Case.key == "custom", Notice.step == 1)
            ).one()
        assert kinds == ["sms"]
        # The reminder's deadline counts through the skipped step: 11-11 + 1 working day.
        assert reminder.deadline == date(2026, 11, 12)
    finally:
        app.close()


def test_override_errors_name_the_override(tmp_path: Path) -> None:
    steps = [email_step(0, "cancellation_request"), email_step(5, "reminder")]
    cfg = write_config(tmp_path, steps, [("c", "agent", "2026-11-02")])
    app = App.open(cfg)
    try:
        plan = app.config.plans["ladder"]
        with pytest.raises(ValueError, match="step 3 is not in the plan"):
            apply_overrides(plan, [{"step": 3, "after": 1}])
        with pytest.raises(ValueError, match="cannot override colour"):
            apply_overrides(plan, [{"step": 1, "colour": "red"}])
        with pytest.raises(ValueError, match="override of step 2: after"):
            apply_overrides(plan, [{"step": 2, "after": -1}])
        with pytest.raises(ValueError, match="override 1: 'step'"):
            apply_overrides(plan, [{"after": 1}])
        # Config entries are read as plain data, whether models or mappings.
        fake = SimpleNamespace(
            key="c",
            steps_override=[SimpleNamespace(model_dump=lambda **_: {"step": 2, "after": 1})],
        )
        cfg2 = app.config.model_copy(update={"cases": [fake]})
        assert config_overrides(cfg2, "c") == [{"step": 2, "after": 1}]
        assert config_overrides(app.config, "c") == []
    finally:
        app.close()


# ---------------------------------------------------------------------------- fallback


class Scripted:
    """A channel that fails permanently for some recipients and accepts the rest."""

    adapter: ClassVar[str] = "scripted"
    kinds: ClassVar[frozenset[str]] = frozenset({"email", "sms"})

    def __init__(self, failures: Mapping[str, Exception]) -> None:
        self.name = "outbox"
        self.failures = dict(failures)
        self.sent: list[str] = []

    def prepare(self, msg: Outgoing) -> Prepared:
        return Prepared(msg, msg.body.encode(), "text/plain", f"<{msg.idempotency_key}@test>")

    async def send(self, prepared: Prepared) -> Receipt:
        to = prepared.outgoing.recipient
        self.sent.append(to)
        if to in self.failures:
            raise self.failures[to]
        return Receipt(accepted=True, provider_id="ok", response=b"250 ok")

    async def aclose(self) -> None:
        return None


def dispatch(app: App, channel: Scripted, at: datetime) -> None:
    d = Dispatcher(
        app.sessions,
        {"outbox": channel},
        DispatchPolicy(backoff=Backoff(base=0.0, jitter=0.0)),
        now=lambda: at,
    )
    asyncio.run(d.run_once())


def attempts(app: App) -> list[tuple[str, str, str]]:
    with app.sessions() as s:
        return [
            (a.kind, a.recipient, a.state)
            for a in s.scalars(sa.select(Attempt).order_by(Attempt.id))
        ]


GONE = Permanent("550 5.1.1 no such user", bad_recipient=True, code="550")


def test_permanent_failure_falls_back_to_next_contact_of_that_kind(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path, [email_step(0, "cancellation_request")], [("c", "agent", "2026-11-02")]
    )
    at = beijing(date(2026, 11, 2))
    app = open_app(cfg, at)
    try:
        app.plan(at=at)
        channel = Scripted({"first@agent.example.cn": GONE})
        dispatch(app, channel, at)
        assert attempts(app) == [("email", "first@agent.example.cn", "failed")]
        later = at + timedelta(hours=1)
        report = app.plan(at=later)
        assert [(d.kind, d.party) for d in report.decisions] == [("fallback", "agent")]
        (fb,) = events(app, "fallback")
        assert fb["data"]["from_recipient"] == "first@agent.example.cn"
        assert fb["data"]["recipient"] == "second@agent.example.cn"
        assert "550" in fb["data"]["reason"]
        dispatch(app, channel, later)
        assert attempts(app)[-1] == ("email", "second@agent.example.cn", "sent")
        # Settled: further passes change nothing.
        assert app.plan(at=later + timedelta(hours=1)).decisions == []
        assert len(events(app, "fallback")) == 1
        with app.sessions() as s:
            assert all(verify_chain(s, c).problem is None for c in all_chains(s))
            case = s.scalars(sa.select(Case)).one()
            assert case_warnings(s, app.config, case, at=later) == []
    finally:
        app.close()


def test_mode_first_falls_back_to_the_next_kind(tmp_path: Path) -> None:
    step = {
        "after": 0,
        "to": "agent",
        "via": ["email", "sms"],
        "mode": "first",
        "template": "cancellation_request",
    }
    cfg = write_config(tmp_path, [step], [("c", "solo", "2026-11-02")])
    at = beijing(date(2026, 11, 2))
    app = open_app(cfg, at)
    try:
        app.plan(at=at)
        assert attempts(app) == [("email", "only@solo.example.cn", "queued")]
        channel = Scripted({"only@solo.example.cn": GONE})
        dispatch(app, channel, at)
        app.plan(at=at)
        (fb,) = events(app, "fallback")
        assert (fb["data"]["from_via"], fb["data"]["via"]) == ("email", "sms")
        dispatch(app, channel, at)
        assert attempts(app) == [
            ("email", "only@solo.example.cn", "failed"),
            ("sms", "+8613700137000", "sent"),
        ]
    finally:
        app.close()


def test_bounce_falls_back_like_a_permanent_failure(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path, [email_step(0, "cancellation_request")], [("c", "agent", "2026-11-02")]
    )
    at = beijing(date(2026, 11, 2))
    app = open_app(cfg, at)
    try:
        app.plan(at=at)
        dispatch(app, Scripted({}), at)
        # What inbound does with a DSN: the attempt bounced, the contact point is bad.
        with app.sessions.begin() as s:
            a = s.scalars(sa.select(Attempt)).one()
            a.state = "bounced"
            a.contact.status = "bad"
            a.contact.status_reason = "DSN 5.1.1"
        app.plan(at=at + timedelta(days=1))
        assert attempts(app)[-1] == ("email", "second@agent.example.cn", "queued")
        assert events(app, "fallback")[0]["data"]["from_state"] == "bounced"
    finally:
        app.close()


def test_no_channel_left_is_reported_once_and_the_ladder_moves_on(tmp_path: Path) -> None:
    steps = [
        {"after": 0, "to": "agent", "via": ["email"], "template": "cancellation_request"},
        email_step(1, "complaint_acquirer", to="acquirer"),
    ]
    cfg = write_config(tmp_path, steps, [("c", "solo", "2026-11-02")])
    at = beijing(date(2026, 11, 2))
    app = open_app(cfg, at)
    try:
        app.plan(at=at)
        channel = Scripted({"only@solo.example.cn": GONE})
        dispatch(app, channel, at)
        first = app.plan(at=at + timedelta(hours=1))
        assert [(d.kind, d.party) for d in first.decisions] == [("no_channel", "solo")]
        assert app.plan(at=at + timedelta(hours=2)).decisions == []
        (nc,) = events(app, "no_channel")
        assert nc["data"]["tried"] == ["only@solo.example.cn"] and nc["data"]["route"] == "email"
        with app.sessions() as s:
            assert s.scalars(sa.select(ExhaustedRoute.route)).all() == ["email"]
            case = s.scalars(sa.select(Case)).one()
            warnings = case_warnings(s, app.config, case, at=at)
        assert any("no good channel left" in w and "solo" in w for w in warnings), warnings
        # The ladder moves on: the acquirer's step goes out on its day.
        next_day = beijing(date(2026, 11, 3))
        report = app.plan(at=next_day)
        assert [(p.step, p.parties) for p in report.planned] == [(1, ["acq"])]
        dispatch(app, channel, next_day)
        assert attempts(app)[-1] == ("email", "complaints@acq.example.cn", "sent")
    finally:
        app.close()


def test_failure_that_is_not_the_contacts_fault_does_not_fall_back(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path, [email_step(0, "cancellation_request")], [("c", "agent", "2026-11-02")]
    )
    at = beijing(date(2026, 11, 2))
    app = open_app(cfg, at)
    try:
        app.plan(at=at)
        refused = Permanent("template not approved", bad_recipient=False)
        dispatch(app, Scripted({"first@agent.example.cn": refused}), at)
        assert app.plan(at=at + timedelta(hours=1)).decisions == []
        with app.sessions() as s:
            case = s.scalars(sa.select(Case)).one()
            warnings = case_warnings(s, app.config, case, at=at)
        assert any(
            "template not approved" in w and "not the contact's fault" in w for w in warnings
        )
    finally:
        app.close()


def test_missing_contact_at_planning_is_a_dead_end_and_a_warning(tmp_path: Path) -> None:
    step = {"after": 0, "to": "acquirer", "via": ["email", "sms"], "template": "complaint_acquirer"}
    cfg = write_config(tmp_path, [step], [("c", "agent", "2026-11-02")])
    at = beijing(date(2026, 11, 2))
    app = open_app(cfg, at)
    try:
        with app.sessions() as s:
            case = s.scalars(sa.select(Case)).one()
            ahead = case_warnings(s, app.config, case, at=at)
        assert ahead == []  # the acquirer has an e-mail address: the step can go out
        report = app.plan(at=at)
        assert report.planned[0].missing == ["acq: no usable contact for sms"]
        (nc,) = events(app, "no_channel")
        assert nc["data"]["route"] == "sms" and nc["data"]["tried"] == []
        dispatch(app, Scripted({}), at)
        with app.sessions() as s:
            case = s.scalars(sa.select(Case)).one()
            warnings = case_warnings(s, app.config, case, at=at)
        assert warnings == [
            "step 1 (complaint_acquirer) to acq: no usable contact for sms; reached by email only"
        ]
    finally:
        app.close()


# ---------------------------------------------------------------------------- dry run


def _snapshot(app: App) -> dict[str, list[Any]]:
    with app.sessions() as s:
        return {
            name: [tuple(r) for r in s.execute(sa.select(table)).all()]
            for name, table in Base.metadata.tables.items()
        }


def test_dry_run_writes_nothing_yet_shows_every_decision(tmp_path: Path) -> None:
    steps = [email_step(0, "cancellation_request"), email_step(1, "reminder")]
    cfg = write_config(
        tmp_path,
        steps,
        [
            ("falls", "agent", "2026-11-02"),
            ("paused", "solo", "2026-11-02"),
            ("due", "solo", "2026-11-03"),
        ],
    )
    at = beijing(date(2026, 11, 2))
    app = open_app(cfg, at)
    try:
        app.plan(at=at)
        dispatch(app, Scripted({"first@agent.example.cn": GONE}), at)
        with app.sessions.begin() as s:
            paused = s.scalars(sa.select(Case).where(Case.key == "paused")).one()
            paused.state = "paused"  # as if set elsewhere, its queued attempt not yet cancelled
            a = s.scalars(sa.select(Attempt).join(Notice).where(Notice.case_id == paused.id)).one()
            a.state = "queued"
        before = _snapshot(app)
        later = beijing(date(2026, 11, 3))
        report = app.plan(at=later, dry_run=True)
        with app.sessions() as s:
            direct = plan_due(s, app.config, registry.channel_kinds(), at=later, dry_run=True)
            assert not s.new and not s.dirty and not s.deleted
        assert _snapshot(app) == before
        for r in (report, direct):
            kinds = sorted((d.kind, d.party) for d in r.decisions)
            assert kinds == [("cancelled", "solo"), ("fallback", "agent")]
            assert sorted(p.case for p in r.planned) == sorted(
                refs(app)[k] for k in ("falls", "due")
            )
        notes = [row["note"] for row in describe(report)]
        assert any(
            n.startswith("fallback: email first@agent.example.cn → email second@") for n in notes
        )
        assert any(n.startswith("cancelled: ") and "case paused" in n for n in notes)
        # The real pass then does what the dry run said.
        real = app.plan(at=later)
        assert sorted((d.kind, d.party) for d in real.decisions) == kinds
        assert _snapshot(app) != before
    finally:
        app.close()
