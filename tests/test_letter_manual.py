"""Letters and calls: the channels leave attempts pending through the real dispatcher, and the
person's act (posting, calling) becomes a chained event with every file hashed into blobs.

Promises checked here: letters are deterministic and cannot be injected with markup; a
tracking number with a wrong S10 check digit, an unknown case or a missing evidence file is a
usage error (exit 2) that writes nothing; ``letter sent`` and ``manual log`` chain their
events and the chain still verifies; evidence hashes in the event are the stored blobs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from channels.base import Outgoing, Permanent
from channels.letter import LetterChannel, find_cjk_font
from channels.manual import ManualChannel
from outreach.app import App
from outreach.cli import main
from outreach.manual import ManualError, parse_tracking, s10_check_digit
from outreach.notices import NoticeContext, render
from outreach.proof import verify_chain
from outreach.store import Attempt, Blob, Event

EVIDENCE = Path(__file__).parent / "fixtures" / "evidence"
HOSTILE = "<script>alert(1)</script>便利店"

CONFIG = """\
[database]
url = "{db_url}"

[sender]
name = "张三"
phone = "13800138000"
address = "广东省深圳市福田区福华路1号"

[[merchants]]
key = "shop"
name = "{merchant}"
merchant_no = "822584053990001"
  [[merchants.terminals]]
  terminal_no = "12345678"
  sn = "N86012345678"
  acquirer = "acq"
  agent = "agent"

[parties.agent]
role = "agent"
name = "深圳某某支付<b>服务</b>有限公司"
  [[parties.agent.contacts]]
  kind = "phone"
  value = "13900139000"
  [[parties.agent.contacts]]
  kind = "postal"
  value = "深圳市南山区科技园1号 <img src=x onerror=alert(1)>"

[parties.acq]
role = "acquirer"
name = "某某支付股份有限公司"
  [[parties.acq.contacts]]
  kind = "postal"
  value = "北京市海淀区中关村大街2号"

[channels.letters]
adapter = "letter"
dir = "var/letters"
sender_address = "广东省深圳市福田区福华路1号"
sender_phone = "13800138000"

[channels.calls]
adapter = "manual"
dir = "var/calls"

[plans.p]
  [[plans.p.steps]]
  after = 0
  to = "agent"
  via = ["postal", "phone"]
  template = "cancellation_request"
  [[plans.p.steps]]
  after = 0
  to = "acquirer"
  via = ["postal"]
  template = "complaint_acquirer"

[[cases]]
key = "c1"
merchant = "shop"
goal = "cancel_terminal"
plan = "p"
opened = 2026-11-02
"""


# ---------------------------------------------------------------------- tracking numbers


def test_s10_check_digit_matches_the_upu_worked_example() -> None:
    # UPU S10: serial 47312482 -> S = 200, C = 11 - (200 mod 11) = 9.
    assert s10_check_digit("47312482") == 9
    assert s10_check_digit("00000000") == 5  # C = 11 -> 5
    assert s10_check_digit("00000001") == 4


@pytest.mark.parametrize(
    ("raw", "carrier", "expected"),
    [
        ("EA473124829CN", None, ("EMS", "EA473124829CN", "s10")),
        ("ea 4731 2482 9cn", None, ("EMS", "EA473124829CN", "s10")),
        ("RR473124829CN", None, ("CHINAPOST", "RR473124829CN", "s10")),
        ("NF23867465144", None, ("CHINAPOST", "NF23867465144", "format")),
        ("1180123456789", "EMS", ("EMS", "1180123456789", "format")),
        ("SF1234567890123", None, ("SF", "SF1234567890123", "format")),
        ("123456789012", "sf", ("SF", "123456789012", "format")),
        ("YT1234567890123", None, ("YTO", "YT1234567890123", "format")),
        ("773012345678901", "STO", ("STO", "773012345678901", "format")),
    ],
)
def test_valid_tracking_numbers(raw: str, carrier: str | None, expected: tuple[str, ...]) -> None:
    t = parse_tracking(raw, carrier)
    assert (t.carrier, t.number, t.check) == expected


@pytest.mark.parametrize(
    ("raw", "carrier", "message"),
    [
        ("EA473124828CN", None, "check digit is 8 but serial 47312482 gives 9"),
        ("EA473124829CN", "SF", "not a SF tracking number"),
        ("RR473124829CN", "EMS", "use --carrier CHINAPOST"),
        ("EMS1234567890CN", None, "cannot tell the carrier"),
        ("EMS1234567890CN", "EMS", "not a EMS tracking number"),
        ("SF12345", None, "not a SF tracking number"),
        ("773012345678", None, "name it with --carrier"),
        ("SF1234567890123", "DHL", "unknown carrier 'DHL'"),
        ("SF-1234/567", None, "characters no carrier uses"),
    ],
)
def test_bad_tracking_numbers_say_why(raw: str, carrier: str | None, message: str) -> None:
    with pytest.raises(ManualError, match=message):
        parse_tracking(raw, carrier)


# ---------------------------------------------------------------------- the channels alone


def _notice(language: str = "zh-CN") -> Any:
    return render(
        "cancellation_request",
        NoticeContext(
            reference="OUT-2026-000001",
            goal="cancel_terminal",
            language=language,
            today=date(2026, 11, 23),
            deadline=date(2026, 11, 30),
            sender={
                "name": "张三",
                "organisation": None,
                "email": None,
                "phone": "+8613800138000",
                "address": "深圳市福田区",
                "reference_prefix": "OUT",
            },
            merchant={"name": HOSTILE, "merchant_no": "822584053990001", "contact_name": None},
            party={
                "name": "代理商<b>",
                "legal_name": None,
                "licence_no": None,
                "role": "agent",
            },
            terminals=[
                {
                    "terminal_no": "12345678",
                    "sn": "N86",
                    "model": None,
                    "acquirer": "某某支付",
                    "agent": None,
                }
            ],
        ),
    )


def _outgoing(kind: str, recipient: str, language: str = "zh-CN") -> Outgoing:
    n = _notice(language)
    return Outgoing(
        channel="x",
        kind=kind,
        recipient=recipient,
        recipient_name="代理商<b>&co",
        subject=n.subject,
        body=n.body,
        reference="OUT-2026-000001",
        idempotency_key="a7f3c2e1d9b04c55",
        notice_kind="cancellation_request",
        language=language,
        # 17:00 UTC is already the next day in Beijing: the letter must say the 24th.
        created_at=datetime(2026, 11, 23, 17, 0, tzinfo=UTC),
        html=n.html,
        params=n.sms_params,
        sender_name="张三",
    )


def test_letterhead_comes_from_the_sender_unless_the_channel_overrides(tmp_path: Path) -> None:
    msg = replace(
        _outgoing("postal", "深圳市南山区科技园"),
        sender_organisation="某某商户服务中心",
        sender_address="广东省深圳市福田区福华路1号",
        sender_phone="13800138000",
    )
    html = LetterChannel("letters", {"dir": str(tmp_path)}, {}).prepare(msg).payload.decode()
    for text in ("张三（某某商户服务中心）", "广东省深圳市福田区福华路1号", "13800138000"):
        assert text in html
    settings = {"dir": str(tmp_path), "sender_address": "北京市西城区金融大街1号"}
    html = LetterChannel("letters", settings, {}).prepare(msg).payload.decode()
    assert "北京市西城区金融大街1号" in html and "福华路" not in html


def test_letter_is_deterministic_and_inert(tmp_path: Path) -> None:
    settings = {
        "dir": str(tmp_path),
        "sender_organisation": "某某<i>服务</i>中心",
        "sender_address": "深圳市<i>福田区</i>",
    }
    msg = _outgoing("postal", "深圳市南山区 <img src=x onerror=alert(1)>")
    first = LetterChannel("letters", settings, {}).prepare(msg)
    again = LetterChannel("letters", settings, {}).prepare(msg)
    assert first.payload == again.payload
    assert first.media_type == "text/html; charset=utf-8"
    html = first.payload.decode("utf-8")
    # Nothing a merchant, party or address said became markup.
    for tag in ("<script", "<img", "<b>", "<i>"):
        assert tag not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;便利店" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "代理商&lt;b&gt;&amp;co" in html
    assert "张三（某某&lt;i&gt;服务&lt;/i&gt;中心）" in html  # the letterhead's sender
    # One document: the notice's own page shell was unwrapped into the letter.
    assert html.count("<body>") == 1 and html.count("</html>") == 1
    assert "2026年11月24日" in html and "OUT-2026-000001" in html
    assert "@page { size: A4" in html and 'class="envelope"' in html
    assert hashlib.sha256(msg.body.encode()).hexdigest() in html  # the notice's own hash line
    english = LetterChannel("letters", settings, {}).prepare(_outgoing("postal", "1 Main St", "en"))
    assert "24 November 2026" in english.payload.decode()


async def test_letter_send_writes_the_file_and_waits(tmp_path: Path) -> None:
    channel = LetterChannel("letters", {"dir": str(tmp_path)}, {})
    prepared = channel.prepare(_outgoing("postal", "北京市"))
    receipt = await channel.send(prepared)
    again = await channel.send(prepared)
    assert receipt.pending and not receipt.accepted
    path = Path(receipt.transcript["path"])
    assert path == tmp_path / "OUT-2026-000001" / "letter-a7f3c2e1d9b04c55.html"
    assert path.read_bytes() == prepared.payload
    assert Path(again.transcript["path"]).name == "letter-a7f3c2e1d9b04c55.2.html"
    with pytest.raises(Permanent):
        channel.prepare(_outgoing("email", "a@b.cn"))


def test_pdf_letter_refuses_to_start_without_its_dependencies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import channels.letter as letter

    if letter._installed("fpdf"):
        with pytest.raises(ValueError, match=r"font_file: no CJK font found in /nonexistent\.ttf"):
            LetterChannel("letters", {"pdf": True, "font_file": "/nonexistent.ttf"}, {})
    monkeypatch.setattr(letter, "_installed", lambda module: False)
    with pytest.raises(ValueError, match=r"pip install 'outreach\[pdf\]'"):
        LetterChannel("letters", {"pdf": True}, {})


def test_pdf_letter_is_deterministic(tmp_path: Path) -> None:
    pytest.importorskip("fpdf", reason="PDF letters need fpdf2 (pip install 'outreach[pdf]')")
    if find_cjk_font(None) is None:
        pytest.skip("no CJK font installed (apt-get install fonts-noto-cjk)")
    msg = _outgoing("postal", "北京市海淀区中关村大街2号")
    one = LetterChannel("letters", {"dir": str(tmp_path), "pdf": True}, {}).prepare(msg)
    two = LetterChannel("letters", {"dir": str(tmp_path), "pdf": True}, {}).prepare(msg)
    assert one.media_type == "application/pdf" and one.meta["ext"] == "pdf"
    assert one.payload.startswith(b"%PDF-") and one.payload == two.payload
    # No clock and no version in the bytes: the attempt's own time, a fixed producer.
    assert b"/Producer (outreach letter)" in one.payload
    assert b"/CreationDate (D:20261123170000Z)" in one.payload
    assert len(re.findall(rb"/Type /Page[^s]", one.payload)) >= 2  # the letter, the envelope


def test_call_script_says_who_what_and_what_to_record(tmp_path: Path) -> None:
    channel = ManualChannel("calls", {"dir": str(tmp_path)}, {})
    msg = _outgoing("phone", "+8613900139000")
    prepared = channel.prepare(msg)
    assert prepared.payload == ManualChannel("calls", {}, {}).prepare(msg).payload
    text = prepared.payload.decode("utf-8")
    assert "139 0013 9000 (+8613900139000)" in text
    assert "案件编号 OUT-2026-000001" in text and "请记录" in text
    assert "来电人：张三" in text and "2026-11-30 前书面答复" in text
    assert "outreach manual log OUT-2026-000001" in text
    assert text.endswith(msg.body)  # the full notice, to read out
    english = ManualChannel("calls", {}, {}).prepare(_outgoing("phone", "+8613900139000", "en"))
    assert "Note down:" in english.payload.decode()
    with pytest.raises(Permanent):
        channel.prepare(_outgoing("postal", "北京市"))


# ---------------------------------------------------------------------- through the engine


@dataclass
class World:
    cfg: Path
    app: App
    runner: CliRunner

    def cli(self, *args: str) -> Result:
        return self.runner.invoke(main, ["-c", str(self.cfg), *args], catch_exceptions=False)

    def attempts(self) -> list[Attempt]:
        with self.app.sessions() as s:
            return list(s.scalars(sa.select(Attempt).order_by(Attempt.id)))

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self.app.sessions() as s:
            bodies = s.scalars(sa.select(Event.body).order_by(Event.id)).all()
        out = [json.loads(b) for b in bodies]
        return [e for e in out if kind is None or e["kind"] == kind]

    def counts(self) -> tuple[int, int, list[str]]:
        with self.app.sessions() as s:
            return (
                s.scalar(sa.select(sa.func.count()).select_from(Event)) or 0,
                s.scalar(sa.select(sa.func.count()).select_from(Blob)) or 0,
                [a.state for a in s.scalars(sa.select(Attempt).order_by(Attempt.id))],
            )

    def blob(self, sha: str) -> bytes | None:
        with self.app.sessions() as s:
            b = s.get(Blob, sha)
            return None if b is None else b.data

    def verify(self) -> None:
        with self.app.sessions() as s:
            report = verify_chain(s, "case:OUT-2026-000001")
        assert report.problem is None, report.problem


def _pass(app: App) -> Any:
    """Plan whatever is due and dispatch it through the real dispatcher and channels."""
    app.plan()
    channels = app.build_channels({})

    async def go() -> Any:
        d = app.dispatcher(channels)
        try:
            return await d.run_once()
        finally:
            await d.aclose()

    return asyncio.run(go())


@pytest.fixture
def world(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.delenv("OUTREACH_DATABASE_URL", raising=False)
    cfg = tmp_path / "outreach.toml"
    cfg.write_text(CONFIG.format(db_url=db_url, merchant=HOSTILE), encoding="utf-8")
    app = App.open(cfg)
    app.sync()
    app.discover()
    first = _pass(app)  # step 1: a letter and a call to the agent
    assert (first.pending, first.sent, first.failed) == (2, 0, 0)
    second = _pass(app)  # step 2: a letter to the acquirer
    assert (second.pending, second.sent, second.failed) == (1, 0, 0)
    try:
        yield World(cfg, app, CliRunner())
    finally:
        app.close()


def test_plan_dispatches_postal_and_phone_steps_to_pending(world: World) -> None:
    attempts = world.attempts()
    assert [(a.kind, a.channel, a.state) for a in attempts] == [
        ("postal", "letters", "pending"),
        ("phone", "calls", "pending"),
        ("postal", "letters", "pending"),
    ]
    pending = world.events("pending")
    assert len(pending) == 3
    for a, ev in zip(attempts, pending, strict=True):
        path = Path(ev["data"]["transcript"]["path"])
        assert path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == a.payload_sha256
        assert world.blob(a.payload_sha256 or "") == path.read_bytes()  # the bytes are kept
    letter = Path(pending[0]["data"]["transcript"]["path"]).read_text("utf-8")
    assert "<script" not in letter and "&lt;script&gt;" in letter
    assert "&lt;img src=x onerror=alert(1)&gt;" in letter

    listed = json.loads(world.cli("letter", "list", "--json").output)
    assert [(r["attempt"], r["party"]) for r in listed] == [(1, "agent"), (3, "acq")]
    assert all(Path(r["file"]).is_file() for r in listed)
    calls = json.loads(world.cli("manual", "list", "--json").output)
    assert [(r["attempt"], r["number"], r["no_answers"]) for r in calls] == [
        (2, "+8613900139000", 0)
    ]
    assert Path(calls[0]["script"]).read_text("utf-8").startswith("电话任务")
    table = world.cli("letter", "list")
    assert table.exit_code == 0 and "outreach letter sent CASE" in table.output


def test_letter_sent_records_tracking_and_the_chain_verifies(world: World) -> None:
    before = world.counts()
    ambiguous = world.cli("letter", "sent", "c1", "--tracking", "EA473124829CN")
    assert ambiguous.exit_code == 2
    assert "2 letters of case OUT-2026-000001 wait" in ambiguous.output
    assert world.counts() == before

    receipt = EVIDENCE / "courier-receipt.jpg"
    done = world.cli(
        "letter",
        "sent",
        "OUT-2026-000001",
        "--tracking",
        "ea 473124829 cn",
        "--attempt",
        "3",
        "--receipt",
        str(receipt),
        "--at",
        "2026-11-20T10:30",
    )
    assert done.exit_code == 0, done.output
    assert "recorded EMS EA473124829CN as case:OUT-2026-000001" in done.output
    assert "attempt 3 is now sent" in done.output
    a = world.attempts()[2]
    assert (a.state, a.provider_id) == ("sent", "EA473124829CN")
    [ev] = world.events("letter_posted")
    data = ev["data"]
    assert (data["carrier"], data["tracking"], data["tracking_check"]) == (
        "EMS",
        "EA473124829CN",
        "s10",
    )
    assert data["posted_at"] == "2026-11-20T02:30:00.000000Z"  # Beijing 10:30
    assert data["payload_sha256"] == a.payload_sha256  # the tracking number names these bytes
    assert data["receipt"]["media_type"] == "image/jpeg"
    assert data["receipt"]["sha256"] == hashlib.sha256(receipt.read_bytes()).hexdigest()
    assert world.blob(data["receipt"]["sha256"]) == receipt.read_bytes()
    world.verify()
    verify = world.cli("audit", "verify", "--case", "c1")
    assert verify.exit_code == 0 and verify.output.startswith("OK:")

    # The one left is now unambiguous; the posted one is no longer listed.
    assert [r["attempt"] for r in json.loads(world.cli("letter", "list", "--json").output)] == [1]
    again = world.cli("letter", "sent", "c1", "--tracking", "SF1234567890123", "--attempt", "3")
    assert again.exit_code == 2 and "recorded tracking EA473124829CN" in again.output
    last = world.cli("letter", "sent", "c1", "--tracking", "SF1234567890123")
    assert last.exit_code == 0 and "attempt 1 is now sent" in last.output


# Each of these is a usage error: exit 2, one line, and not one row written.
USAGE_ERRORS = {
    "bad-check-digit": ["letter", "sent", "c1", "--tracking", "EA473124828CN", "--attempt", "1"],
    "unknown-case": ["letter", "sent", "nope", "--tracking", "EA473124829CN"],
    "not-a-letter": ["letter", "sent", "c1", "--tracking", "EA473124829CN", "--attempt", "2"],
    "missing-receipt": ["letter", "sent", "c1", "--attempt", "1", "--tracking", "EA473124829CN", "--receipt", "missing.jpg"],
    "future": ["letter", "sent", "c1", "--attempt", "1", "--tracking", "EA473124829CN", "--at", "2099-01-01"],
    "log-unknown-case": ["manual", "log", "nope", "--party", "agent", "--via", "phone", "--outcome", "reached", "--note", "x"],
    "unknown-party": ["manual", "log", "c1", "--party", "ghost", "--via", "phone", "--outcome", "reached", "--note", "x"],
    "missing-evidence": ["manual", "log", "c1", "--party", "agent", "--via", "phone", "--outcome", "reached", "--note", "x", "--evidence", "missing.amr"],
    "empty-note": ["manual", "log", "c1", "--party", "agent", "--via", "phone", "--outcome", "reached", "--note", "  "],
    "bad-number": ["manual", "log", "c1", "--party", "agent", "--via", "phone", "--outcome", "reached", "--note", "x", "--number", "12"],
    "number-on-visit": ["manual", "log", "c1", "--party", "agent", "--via", "visit", "--outcome", "reached", "--note", "x", "--number", "13900139000"],
    "no-task-no-number": ["manual", "log", "c1", "--party", "acq", "--via", "phone", "--outcome", "reached", "--note", "x"],
}  # fmt: skip


def test_usage_errors_exit_2_and_write_nothing(world: World) -> None:
    before = world.counts()
    for name, args in USAGE_ERRORS.items():
        result = world.cli(*args)
        assert result.exit_code == 2, (name, result.output)
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, name
        assert "nothing was written" in result.output, name
        assert world.counts() == before, name


def test_oversized_evidence_is_refused(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import outreach.manual

    monkeypatch.setattr(outreach.manual, "MAX_EVIDENCE_BYTES", 1024)
    big = tmp_path / "long-call.m4a"
    big.write_bytes(b"\0" * 2048)
    before = world.counts()
    result = world.cli(
        "manual", "log", "c1", "--party", "agent", "--via", "phone", "--outcome", "reached",
        "--note", "x", "--evidence", str(EVIDENCE / "call-recording.amr"), "--evidence", str(big),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "long-call.m4a: 2.0 KB is over the 1.0 KB limit" in result.output
    assert world.counts() == before  # the first, valid file was not stored either


def test_manual_log_stores_every_evidence_file_and_completes_the_task(world: World) -> None:
    recording = EVIDENCE / "call-recording.amr"
    photo = EVIDENCE / "courier-receipt.jpg"
    result = world.cli(
        "manual", "log", "c1", "--party", "agent", "--via", "phone", "--outcome", "refused",
        "--note", "王经理（工号 1024）拒绝注销，称需先结清服务费",
        "--evidence", str(recording), "--evidence", str(photo), "--at", "2026-11-23 09:05",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "attempt 2 is now sent" in result.output
    [ev] = world.events("manual_contact")
    data = ev["data"]
    assert ev["chain"] == "case:OUT-2026-000001"
    assert (data["via"], data["outcome"], data["reached"], data["refused"]) == (
        "phone",
        "refused",
        True,
        True,
    )
    assert data["number"] == "+8613900139000" and data["attempt"] == 2
    assert data["contacted_at"] == "2026-11-23T01:05:00.000000Z"
    stored = {e["name"]: e for e in data["evidence"]}
    assert set(stored) == {"call-recording.amr", "courier-receipt.jpg"}
    for path in (recording, photo):
        entry = stored[path.name]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["size"] == path.stat().st_size
        assert world.blob(entry["sha256"]) == path.read_bytes()
    assert stored["call-recording.amr"]["media_type"] == "audio/amr"
    assert world.attempts()[1].state == "sent"
    assert json.loads(world.cli("manual", "list", "--json").output) == []
    world.verify()

    # A visit is a fact on the chain; with no call task left it completes nothing.
    visit = world.cli(
        "manual", "log", "c1", "--party", "acq", "--via", "visit", "--outcome", "promised",
        "--note", "柜台受理，承诺五个工作日内注销",
    )  # fmt: skip
    assert visit.exit_code == 0 and "attempt" not in visit.output
    last = world.events("manual_contact")[-1]["data"]
    assert (last["via"], last["promised"], last["attempt"], last["evidence"]) == (
        "visit",
        True,
        None,
        [],
    )
    world.verify()


def test_no_answer_keeps_the_call_pending_then_gives_up(world: World) -> None:
    args = ["manual", "log", "c1", "--party", "agent", "--via", "phone", "--outcome", "no-answer"]
    first = world.cli(*args, "--note", "无人接听", "--at", "2026-11-20T16:00")  # a Friday
    assert first.exit_code == 0 and "attempt 2 is now pending" in first.output
    data = world.events("manual_contact")[-1]["data"]
    assert data["reached"] is False and data["no_answers"] == 1
    assert data["call_again_from"] == "2026-11-23T01:30:00.000000Z"  # Monday 09:30 Beijing
    [task] = json.loads(world.cli("manual", "list", "--json").output)
    assert (task["no_answers"], task["call_from"]) == (1, "2026-11-23 09:30")
    assert world.cli(*args, "--note", "仍无人接听").exit_code == 0
    third = world.cli(*args, "--note", "第三次无人接听")
    assert third.exit_code == 0 and "attempt 2 is now failed" in third.output
    a = world.attempts()[1]
    assert (a.state, a.last_error) == ("failed", "no answer on 3 calls")
    assert world.events("manual_contact")[-1]["data"]["gave_up"] == "no answer on 3 calls"
    with world.app.sessions() as s:
        status = s.execute(sa.text("SELECT status FROM contact_points WHERE kind = 'phone'"))
        assert status.scalar_one() != "bad"  # silence is not a dead number
    world.verify()


@pytest.mark.parametrize(
    "args",
    [["letter", "--help"], ["letter", "sent", "--help"], ["manual", "log", "--help"]],
)
def test_help(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "Usage:" in result.output


def test_pending_letter_is_not_cited_as_sent(example_config: Path) -> None:
    """A letter still waiting for its tracking number must not appear as 'sent' in the next notice."""
    from datetime import UTC, datetime

    from outreach.app import App
    from outreach.ladder import _previous
    from outreach.store import Attempt, Case

    app = App.open(example_config)
    try:
        app.sync()
        app.discover()
        app.plan()
        with app.sessions.begin() as s:
            for a in s.query(Attempt):
                a.state = "pending"
                a.updated_at = datetime(2026, 11, 23, tzinfo=UTC)
        with app.sessions() as s:
            case = s.query(Case).one()
            assert _previous(s, case, "zh-CN") == []
        with app.sessions.begin() as s:
            s.query(Attempt).filter(Attempt.kind == "email").update({"state": "sent"})
        with app.sessions() as s:
            case = s.query(Case).one()
            cited = _previous(s, case, "zh-CN")
        assert [c["via"] for c in cited] == ["电子邮件"]
    finally:
        app.close()
