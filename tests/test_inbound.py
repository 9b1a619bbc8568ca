"""Answers over a real IMAP server (dovecot on 127.0.0.1): fixture mails are APPENDed, the
poll matches them to cases, and the ladder, the attempts and the contacts change as the
evidence says — all of it chained, nothing dropped, nothing recorded twice."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy import func, select

from outreach.app import App
from outreach.cli import main
from outreach.inbound import (
    InboundConfigError,
    InboundError,
    InboxError,
    PollReport,
    assign_message,
    imap_utf7,
    poll,
    record_message,
)
from outreach.models_inbound import InboundMessage
from outreach.proof import all_chains, verify_chain
from outreach.store import Attempt, Blob, Case, ContactPoint, Event, Notice
from tests.imap_server import PASSWORD, Dovecot, dovecot, free_port  # noqa: F401 (fixture)

MAIL = Path(__file__).parent / "fixtures" / "mail"
PW_ENV = "OUTREACH_TEST_IMAP_PASSWORD"
ENV = {PW_ENV: PASSWORD}
SENT_AT = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # 10:00 in Beijing, a Monday
STEP2_AT = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)  # 5 working days later
# The idempotency keys the fixture mails quote, per case reference: replaced by the real keys.
FIXTURE_KEYS = {
    "OUT-2026-000001": "3f2a9c1d7b5e8a60",
    "OUT-2026-000002": "9b1e0c4d2a7f6e35",
    "OUT-2026-000003": "c07d5e2b8a913f46",
    "OUT-2026-000004": "5d8e7f60a1b2c3d4",
}

CONFIG = """
[database]
url = "{db_url}"

[sender]
name = "张三"
email = "zhangsan@example.com"

[[merchants]]
key = "m1"
name = "深圳市福田区张三便利店"
merchant_no = "822584053990001"
  [[merchants.terminals]]
  terminal_no = "12345678"
  acquirer = "lakala"
  agent = "agent-a"

[[merchants]]
key = "m2"
name = "广州市天河区李四餐馆"
merchant_no = "822581053990002"
  [[merchants.terminals]]
  terminal_no = "23456789"
  acquirer = "lakala"
  agent = "agent-b"

[[merchants]]
key = "m3"
name = "杭州市西湖区王五面馆"
merchant_no = "822331053990003"
  [[merchants.terminals]]
  terminal_no = "34567890"
  acquirer = "lakala"
  agent = "agent-c"

[[merchants]]
key = "m4"
name = "杭州市西湖区丁六水果店"
merchant_no = "822331053990004"
  [[merchants.terminals]]
  terminal_no = "45678901"
  acquirer = "lakala"
  agent = "agent-d"

[parties.lakala]
role = "acquirer"
name = "拉卡拉"

[parties.agent-a]
role = "agent"
name = "深圳甲支付服务有限公司"
  [[parties.agent-a.contacts]]
  kind = "email"
  value = "service@agent-a.example.cn"

[parties.agent-b]
role = "agent"
name = "广州乙科技有限公司"
  [[parties.agent-b.contacts]]
  kind = "email"
  value = "service@agent-b.example.cn"

[parties.agent-c]
role = "agent"
name = "杭州丙信息技术有限公司"
  [[parties.agent-c.contacts]]
  kind = "email"
  value = "kefu@agent-c.example.cn"
  [[parties.agent-c.contacts]]
  kind = "email"
  value = "service@agent-c.example.cn"

[parties.agent-d]
role = "agent"
name = "杭州丁信息技术有限公司"
  [[parties.agent-d.contacts]]
  kind = "email"
  value = "kefu@agent-d.example.cn"

[channels.outbox]
adapter = "outbox"
dir = "var/outbox"
from_address = "zhangsan@example.com"

[plans.standard]
  [[plans.standard.steps]]
  after = 0
  to = "agent"
  via = ["email"]
  template = "cancellation_request"
  [[plans.standard.steps]]
  after = 5
  to = "agent"
  via = ["email"]
  template = "reminder"

[[cases]]
key = "c1"
merchant = "m1"
goal = "cancel_terminal"
plan = "standard"
opened = 2026-11-23

[[cases]]
key = "c2"
merchant = "m2"
goal = "cancel_terminal"
plan = "standard"
opened = 2026-11-23

[[cases]]
key = "c3"
merchant = "m3"
goal = "cancel_terminal"
plan = "standard"
opened = 2026-11-23

[[cases]]
key = "c4"
merchant = "m4"
goal = "cancel_terminal"
plan = "standard"
opened = 2026-11-23

[inbound]
imap_host = "127.0.0.1"
imap_port = {port}
security = "{security}"
username = "{user}"
password_env = "{pw_env}"
{extra}
"""


@dataclass
class Setup:
    app: App
    user: str
    keys: dict[str, str]  # case reference -> idempotency key of its step-1 e-mail attempt
    path: Path

    def mail(self, name: str) -> bytes:
        """A fixture mail with the keys of the notices actually sent."""
        raw = (MAIL / name).read_bytes()
        for ref, key in FIXTURE_KEYS.items():
            raw = raw.replace(key.encode(), self.keys[ref].encode())
        return raw


def write_config(
    tmp_path: Path,
    db_url: str,
    port: int,
    user: str,
    *,
    security: str = "none",
    extra: str = "",
    host: str = "127.0.0.1",
) -> Path:
    path = tmp_path / "outreach.toml"
    text = CONFIG.format(
        db_url=db_url, port=port, security=security, user=user, pw_env=PW_ENV, extra=extra
    )
    path.write_text(text.replace('imap_host = "127.0.0.1"', f'imap_host = "{host}"'))
    return path


def sent_notices(path: Path) -> App:
    """Sync, discover (config only), plan and send step 1 of every case through the outbox."""
    app = App.open(path)
    app.sync(at=SENT_AT)
    app.discover(at=SENT_AT)
    app.plan(at=SENT_AT)
    dispatcher = app.dispatcher(app.build_channels({}), now=lambda: SENT_AT)

    async def send() -> Any:
        try:
            return await dispatcher.run_once()
        finally:
            await dispatcher.aclose()

    report = asyncio.run(send())
    assert report.sent == 4, report
    return app


def make_setup(
    tmp_path: Path,
    db_url: str,
    dovecot: Dovecot,  # noqa: F811
    *,
    extra: str = "",
) -> Setup:
    user = dovecot.new_user()
    path = write_config(tmp_path, db_url, dovecot.port, user, extra=extra)
    app = sent_notices(path)
    with app.sessions() as s:
        rows = s.execute(
            select(Case.reference, Attempt.idempotency_key, Attempt.message_id)
            .join(Notice, Notice.case_id == Case.id)
            .join(Attempt, Attempt.notice_id == Notice.id)
            .where(Attempt.kind == "email")
        ).all()
    keys = {ref: key for ref, key, _mid in rows}
    assert set(keys) == set(FIXTURE_KEYS)  # references OUT-2026-000001..4 as the fixtures say
    assert all(mid == f"<{keys[ref]}.{ref}@example.com>" for ref, _k, mid in rows)
    return Setup(app, user, keys, path)


@pytest.fixture
def setups() -> Iterator[list[Setup]]:
    made: list[Setup] = []
    yield made
    for s in made:
        s.app.close()


ALL = [
    "reply_in_reply_to.eml",
    "mdn_displayed.eml",
    "dsn_delayed.eml",
    "auto_reply_out_of_office.eml",
    "dsn_failed_5.1.1.eml",
    "reply_gbk_foxmail.eml",
    "reply_quoting_reference.eml",
    "spam_no_reference.eml",
    "reply_unknown_reference.eml",
]


def run_poll(*args: Any, **kwargs: Any) -> PollReport:
    return asyncio.run(poll(*args, **kwargs))


def events(app: App, ref: str) -> list[dict[str, Any]]:
    with app.sessions() as s:
        return [
            {**json.loads(e.body)["data"], "event": e.kind}
            for e in s.scalars(
                select(Event).where(Event.chain == f"case:{ref}").order_by(Event.seq)
            )
        ]


def dump_database(app: App) -> str:
    """Every row of every table as text (blobs included): where a leaked secret would show."""
    out: list[str] = []
    with app.engine.connect() as conn:
        for name in sa.inspect(conn).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{name}"')):  # noqa: S608
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        out.append(bytes(value).decode("utf-8", "replace"))
                    else:
                        out.append(str(value))
    return "\n".join(out)


def test_poll_matches_replies_bounces_receipts_and_holds_the_rest(
    tmp_path: Path,
    db_url: str,
    dovecot: Dovecot,  # noqa: F811
    setups: list[Setup],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    st = make_setup(tmp_path, db_url, dovecot)
    setups.append(st)
    app = st.app
    appended = {name: st.mail(name) for name in ALL}
    for raw in appended.values():
        dovecot.append(st.user, raw)

    report = run_poll(app.sessions, app.config, env=ENV, now=lambda: STEP2_AT)
    assert (report.fetched, report.recorded, report.already) == (9, 9, 0)
    assert (report.replies, report.auto_replies, report.bounces, report.delays) == (3, 1, 1, 1)
    assert (report.read_receipts, report.held, report.skipped) == (1, 2, 0)

    with app.sessions() as s:
        rows = {m.subject: m for m in s.scalars(select(InboundMessage))}
        # Nothing dropped: every message is a row whose blob holds exactly the bytes appended.
        assert len(rows) == 9
        for m in rows.values():
            blob = s.get(Blob, m.sha256)
            assert blob is not None and blob.data in appended.values()
            assert m.uid is not None and m.uidvalidity is not None and m.mailbox_date is not None
        by_file = {
            name: next(m for m in rows.values() if s.get(Blob, m.sha256).data == raw)
            for name, raw in appended.items()
        }
        states = dict(s.execute(select(Case.reference, Case.state)).all())
        contacts = dict(s.execute(select(ContactPoint.value, ContactPoint.status)).all())
        bounced = s.scalars(
            select(Attempt).where(Attempt.idempotency_key == st.keys["OUT-2026-000003"])
        ).one()
        assert bounced.state == "bounced" and "5.1.1" in (bounced.last_error or "")

    # How each one was matched, and what is held.
    matched = {n: (m.status, m.matched_by) for n, m in by_file.items()}
    assert matched == {
        "reply_in_reply_to.eml": ("matched", "in_reply_to"),
        "mdn_displayed.eml": ("matched", "original_message_id"),
        "dsn_delayed.eml": ("matched", "original_message_id"),
        "auto_reply_out_of_office.eml": ("matched", "in_reply_to"),
        "dsn_failed_5.1.1.eml": ("matched", "original_message_id"),
        "reply_gbk_foxmail.eml": ("matched", "subject"),
        "reply_quoting_reference.eml": ("matched", "body"),
        "spam_no_reference.eml": ("held", None),
        "reply_unknown_reference.eml": ("held", None),
    }
    assert "cites no case reference" in (by_file["spam_no_reference.eml"].note or "")
    assert "OUT-2026-000010, which matches no case" in (
        by_file["reply_unknown_reference.eml"].note or ""
    )

    # A reply stops its case; an auto-reply, a delay and a bounce do not.
    assert states == {
        "OUT-2026-000001": "replied",
        "OUT-2026-000002": "open",
        "OUT-2026-000003": "open",
        "OUT-2026-000004": "replied",
    }
    # The bounce blamed the address: bad. The answered addresses: good. Unknown sender: unchanged.
    assert contacts["kefu@agent-c.example.cn"] == "bad"
    assert contacts["service@agent-c.example.cn"] == "unknown"
    assert contacts["service@agent-a.example.cn"] == "good"
    assert contacts["kefu@agent-d.example.cn"] == "good"
    assert contacts["service@agent-b.example.cn"] == "unknown"  # only an out-of-office

    # The evidence on each chain, with the received bytes' hash.
    c1 = events(app, "OUT-2026-000001")
    replied = next(e for e in c1 if e["event"] == "replied")
    assert replied["sha256"] == by_file["reply_in_reply_to.eml"].sha256
    assert (replied["matched_by"], replied["from"], replied["state"]) == (
        "in_reply_to",
        "service@agent-a.example.cn",
        "replied",
    )
    assert replied["date"] == "2026-11-24T06:02:27+00:00" and replied["attempt"] is not None
    receipt = next(e for e in c1 if e["event"] == "read_receipt")
    assert receipt["disposition"].endswith("displayed") and receipt["attempt"] == replied["attempt"]
    good = [e for e in c1 if e["event"] == "contact_good"]
    assert [(e["value"], e["status_before"]) for e in good] == [
        ("service@agent-a.example.cn", "unknown")
    ]  # chained once: by the reply; the read receipt after it changes nothing
    c2 = [e["event"] for e in events(app, "OUT-2026-000002")]
    assert "delivery_delayed" in c2 and "auto_reply" in c2 and "replied" not in c2
    c3 = events(app, "OUT-2026-000003")
    bounce = next(e for e in c3 if e["event"] == "bounced")
    assert (bounce["status"], bounce["action"], bounce["contact_blamed"]) == (
        "5.1.1",
        "failed",
        True,
    )
    assert bounce["sha256"] == by_file["dsn_failed_5.1.1.eml"].sha256
    bad = next(e for e in c3 if e["event"] == "contact_bad")
    assert bad["value"] == "kefu@agent-c.example.cn" and bad["party"] == "agent-c"
    c4 = [e for e in events(app, "OUT-2026-000004") if e["event"] == "replied"]
    assert [(e["matched_by"], e["from_name"]) for e in c4] == [
        ("subject", "王镕"),
        ("body", "刘主管"),
    ]
    assert c4[0]["state_before"] == "open" and c4[1]["state_before"] == "replied"

    # The ladder: at step 2's due date only the unanswered cases go on, and the bounced
    # address is replaced by the next one of the same party.
    planned = app.plan(at=STEP2_AT)
    assert sorted(p.case for p in planned.planned) == ["OUT-2026-000002", "OUT-2026-000003"]
    with app.sessions() as s:
        step2 = s.execute(
            select(Case.reference, Attempt.recipient)
            .join(Notice, Notice.case_id == Case.id)
            .join(Attempt, Attempt.notice_id == Notice.id)
            .where(Notice.step == 1)
        ).all()
    assert sorted(step2) == [
        ("OUT-2026-000002", "service@agent-b.example.cn"),
        ("OUT-2026-000003", "service@agent-c.example.cn"),
    ]
    assert app.plan(at=datetime(2026, 12, 31, 2, tzinfo=UTC), dry_run=True).planned == []

    # Every chain still verifies, the inbox chain included.
    with app.sessions() as s:
        chains = all_chains(s)
        assert "inbox" in chains
        assert all(verify_chain(s, c).problem is None for c in chains)
        held_events = s.scalar(
            select(func.count()).select_from(Event).where(Event.kind == "mail_held")
        )
        assert held_events == 2

    # The server side: everything is flagged \Seen, so the next poll fetches nothing ...
    assert all("\\Seen" in flags for _uid, flags, _raw in dovecot.messages(st.user))
    again = run_poll(app.sessions, app.config, env=ENV)
    assert (again.fetched, again.recorded) == (0, 0)
    # ... and if the flags are lost (a crash before STORE, a person marking all unread), the
    # same bytes are fetched again and recorded nothing new.
    dovecot.clear_seen(st.user)
    with app.sessions() as s:
        before = s.scalar(select(func.count()).select_from(Event))
    third = run_poll(app.sessions, app.config, env=ENV)
    assert (third.fetched, third.recorded, third.already) == (9, 0, 9)
    with app.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == before
        assert s.scalar(select(func.count()).select_from(InboundMessage)) == 9

    # The password is nowhere: not in the logs, not in any table.
    assert PASSWORD not in caplog.text
    assert PASSWORD not in dump_database(app)


@pytest.mark.postgres
def test_two_workers_polling_at_once_record_each_message_once(
    tmp_path: Path,
    pg_url: str,
    dovecot: Dovecot,  # noqa: F811
    setups: list[Setup],
) -> None:
    """Two workers on PostgreSQL fetch the same unseen mail at the same moment: the unique
    hash makes one of them record each message and the other find it recorded."""
    st = make_setup(tmp_path, pg_url, dovecot)
    setups.append(st)
    for name in ALL:
        dovecot.append(st.user, st.mail(name))

    async def both() -> list[PollReport]:
        return list(
            await asyncio.gather(
                poll(st.app.sessions, st.app.config, env=ENV),
                poll(st.app.sessions, st.app.config, env=ENV),
            )
        )

    a, b = asyncio.run(both())
    assert a.recorded + b.recorded == 9
    assert a.fetched + b.fetched == 9 + a.already + b.already
    assert a.replies + b.replies == 3 and a.bounces + b.bounces == 1 and a.held + b.held == 2
    with st.app.sessions() as s:
        assert s.scalar(select(func.count()).select_from(InboundMessage)) == 9
        kinds = list(s.scalars(select(Event.kind).where(Event.chain.like("case:%"))))
        assert kinds.count("replied") == 3 and kinds.count("bounced") == 1
        assert all(verify_chain(s, c).problem is None for c in all_chains(s))


def test_second_copy_with_same_message_id_changes_nothing(
    tmp_path: Path,
    dovecot: Dovecot,  # noqa: F811
    setups: list[Setup],
) -> None:
    st = make_setup(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", dovecot)
    setups.append(st)
    raw = st.mail("reply_in_reply_to.eml")
    copy = b"Delivered-To: alias@example.com\r\n" + raw  # a second delivery via an alias
    dovecot.append(st.user, raw)
    dovecot.append(st.user, copy)
    report = run_poll(st.app.sessions, st.app.config, env=ENV)
    assert (report.recorded, report.replies, report.skipped) == (2, 1, 1)
    with st.app.sessions() as s:
        second = s.scalars(select(InboundMessage).where(InboundMessage.status == "skipped")).one()
        assert second.note is not None and "same Message-ID" in second.note
    assert [e["event"] for e in events(st.app, "OUT-2026-000001")].count("replied") == 1


def test_own_notice_copy_is_skipped(
    tmp_path: Path,
    dovecot: Dovecot,  # noqa: F811
    setups: list[Setup],
) -> None:
    """A copy of our own notice in the mailbox (Bcc to self) must not count as an answer."""
    st = make_setup(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", dovecot)
    setups.append(st)
    own = next((st.path.parent / "var" / "outbox").rglob("*.eml")).read_bytes()
    dovecot.append(st.user, own)
    report = run_poll(st.app.sessions, st.app.config, env=ENV)
    assert (report.skipped, report.replies) == (1, 0)
    with st.app.sessions() as s:
        assert set(s.scalars(select(Case.state))) == {"open"}


def test_processed_mailbox_takes_read_mail_and_moves_it(
    tmp_path: Path,
    dovecot: Dovecot,  # noqa: F811
    setups: list[Setup],
) -> None:
    st = make_setup(
        tmp_path,
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        dovecot,
        extra='processed_mailbox = "已处理"',
    )
    setups.append(st)
    # A person already opened the reply in their mail client: it is \Seen, yet must be taken.
    dovecot.append(st.user, st.mail("reply_in_reply_to.eml"), flags=r"(\Seen)")
    dovecot.append(st.user, st.mail("spam_no_reference.eml"))
    report = run_poll(st.app.sessions, st.app.config, env=ENV)
    assert (report.fetched, report.replies, report.held) == (2, 1, 1)
    assert dovecot.messages(st.user) == []
    moved = dovecot.messages(st.user, imap_utf7("已处理"))
    assert sorted(raw for _u, _f, raw in moved) == sorted(
        [st.mail("reply_in_reply_to.eml"), st.mail("spam_no_reference.eml")]
    )
    again = run_poll(st.app.sessions, st.app.config, env=ENV)
    assert again.fetched == 0


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_tls_and_starttls_with_a_private_ca(
    tmp_path: Path,
    dovecot: Dovecot,  # noqa: F811
    security: str,
) -> None:
    user = dovecot.new_user()
    port = dovecot.tls_port if security == "tls" else dovecot.port
    path = write_config(
        tmp_path,
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        port,
        user,
        security=security,
        extra=f'ca_file = "{dovecot.tls.cert}"',
    )
    dovecot.append(user, (MAIL / "spam_no_reference.eml").read_bytes())
    app = App.open(path)
    try:
        app.sync(at=SENT_AT)
        report = run_poll(app.sessions, app.config, env=ENV)
        assert (report.fetched, report.held) == (1, 1)
        # Without the private CA the certificate is refused, not silently accepted.
        bare = write_config(
            tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", port, user, security=security
        )
        other = App.open(bare)
        try:
            with pytest.raises(
                InboundError,
                match=r"cannot connect: .*(CERTIFICATE_VERIFY_FAILED|certificate verify failed)",
            ):
                run_poll(other.sessions, other.config, env=ENV)
        finally:
            other.close()
    finally:
        app.close()


def test_wrong_password_is_one_clear_error_without_the_password(
    tmp_path: Path,
    dovecot: Dovecot,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    path = write_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", dovecot.port, "u")
    app = App.open(path)
    wrong = "Wrong-pw-9d8c7b6a"
    try:
        with pytest.raises(InboundError) as info:
            run_poll(app.sessions, app.config, env={PW_ENV: wrong})
    finally:
        app.close()
    text = str(info.value)
    assert text.startswith(f"IMAP 127.0.0.1:{dovecot.port}: cannot log in")
    assert "AUTHENTICATIONFAILED" in text or "Authentication failed" in text
    assert wrong not in text and wrong not in caplog.text


def test_refuses_plain_text_to_a_remote_host_and_missing_password(tmp_path: Path) -> None:
    from outreach.config import ConfigError

    path = write_config(
        tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", 143, "u", host="imap.example.com"
    )
    # Plain text to a remote server is refused when the config loads, before any connection.
    with pytest.raises(ConfigError, match=r"inbound: .*sends the password in plain text"):
        App.open(path)
    path = write_config(
        tmp_path,
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        993,
        "u",
        host="imap.example.com",
        security="tls",
    )
    app = App.open(path)
    try:
        with pytest.raises(InboundConfigError, match=f"{PW_ENV} is not set"):
            run_poll(app.sessions, app.config, env={})
    finally:
        app.close()


def test_nothing_listening_is_one_clear_error(tmp_path: Path) -> None:
    port = free_port()
    app = App.open(write_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", port, "u"))
    try:
        with pytest.raises(
            InboundError, match=f"IMAP 127.0.0.1:{port}: cannot connect: Connection"
        ):
            run_poll(app.sessions, app.config, env=ENV)
    finally:
        app.close()


def test_unconfigured_inbound_polls_nothing(example_config: Path) -> None:
    app = App.open(example_config)
    try:
        report = run_poll(app.sessions, app.config, env={})
    finally:
        app.close()
    assert not report.configured and "no [inbound]" in report.summary()


def test_inbox_cli_poll_list_show_assign_dismiss(
    tmp_path: Path,
    dovecot: Dovecot,  # noqa: F811
    setups: list[Setup],
) -> None:
    st = make_setup(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", dovecot)
    setups.append(st)
    dovecot.append(st.user, st.mail("spam_no_reference.eml"))
    dovecot.append(st.user, st.mail("reply_unknown_reference.eml"))
    runner = CliRunner()
    cfg = ["-c", str(st.path)]

    polled = runner.invoke(main, [*cfg, "inbox", "poll"], env=ENV)
    assert polled.exit_code == 0, polled.output
    assert "fetched 2, recorded 2 (2 held for review)" in polled.stdout

    listed = runner.invoke(main, [*cfg, "inbox", "--json"])
    assert listed.exit_code == 0, listed.output
    held = {r["subject"]: r for r in json.loads(listed.stdout)}
    assert {r["status"] for r in held.values()} == {"held"}
    reply = held["关于注销申请 OUT-2026-000010"]
    spam = held["【优惠】代开各类发票 点数低 可验票"]

    shown = runner.invoke(main, [*cfg, "inbox", "show", str(reply["id"])])
    assert shown.exit_code == 0 and "我们已经收到" in shown.stdout
    raw = runner.invoke(main, [*cfg, "inbox", "show", reply["message_id"], "--raw"])
    assert raw.stdout_bytes == st.mail("reply_unknown_reference.eml")

    assigned = runner.invoke(
        main, [*cfg, "inbox", "assign", str(reply["id"]), "c1", "--note", "mistyped reference"]
    )
    assert assigned.exit_code == 0, assigned.output
    assert "assigned to OUT-2026-000001: replied" in assigned.stdout
    assert "case is replied" in assigned.stdout
    replied = [e for e in events(st.app, "OUT-2026-000001") if e["event"] == "replied"]
    assert len(replied) == 1 and replied[0]["matched_by"] == "assigned"
    assert replied[0]["sha256"] == reply["sha256"]

    dismissed = runner.invoke(main, [*cfg, "inbox", "dismiss", str(spam["id"]), "--note", "spam"])
    assert dismissed.exit_code == 0, dismissed.output

    # Nothing held any more; both are still there with their outcome.
    after = json.loads(runner.invoke(main, [*cfg, "inbox", "--json", "--all"]).stdout)
    assert sorted((r["status"], r["note"]) for r in after) == [
        ("assigned", "mistyped reference"),
        ("dismissed", "spam"),
    ]
    with st.app.sessions() as s:
        inbox_kinds = [
            e.kind
            for e in s.scalars(select(Event).where(Event.chain == "inbox").order_by(Event.seq))
        ]
    assert inbox_kinds == ["mail_held", "mail_held", "mail_assigned", "mail_dismissed"]

    # Usage errors: exit 2 with one line.
    again = runner.invoke(main, [*cfg, "inbox", "dismiss", str(spam["id"]), "--note", "x"])
    assert again.exit_code == 2 and "only held mail is dismissed" in again.output
    missing = runner.invoke(main, [*cfg, "inbox", "assign", "999", "c1"])
    assert missing.exit_code == 2 and "no message '999'" in missing.output
    no_case = runner.invoke(main, [*cfg, "inbox", "assign", str(spam["id"]), "nope"])
    assert no_case.exit_code == 2 and "no case 'nope'" in no_case.output
    no_pw = runner.invoke(main, [*cfg, "inbox", "poll"], env={PW_ENV: ""})
    assert no_pw.exit_code == 2 and f"{PW_ENV} is not set" in no_pw.output


def test_assign_refuses_matched_mail(sqlite_url: str, tmp_path: Path) -> None:
    """Assigning works on held mail only; a matched message names its case."""
    path = write_config(tmp_path, sqlite_url, 143, "u")
    app = App.open(path)
    try:
        app.sync(at=SENT_AT)
        with app.sessions.begin() as s:
            raw = (MAIL / "reply_gbk_foxmail.eml").read_bytes()
            first = record_message(s, raw, reference_prefix="OUT", at=SENT_AT)
            assert first.status == "matched" and first.case == "OUT-2026-000004"
            assert record_message(s, raw, reference_prefix="OUT").status == "already"
        with (
            app.sessions.begin() as s,
            pytest.raises(InboxError, match="matched to case OUT-2026-000004"),
        ):
            assign_message(s, str(first.message), "c1")
    finally:
        app.close()


def test_weaker_clues_policy_bounce_and_ambiguity(tmp_path: Path) -> None:
    """Without a Message-ID or ENVID, X-Outreach-Reference finds the case and the recipient
    finds the attempt; a 5.7.1 (policy) bounce does not blame the address; a subject citing
    two cases is held, not guessed."""
    app = sent_notices(write_config(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", 143, "u"))
    try:
        dsn = (MAIL / "dsn_failed_5.1.1.eml").read_bytes()
        dsn = dsn.replace(b"Original-Envelope-Id: c07d5e2b8a913f46\r\n", b"")
        dsn = dsn.replace(b"Message-ID: <c07d5e2b8a913f46.OUT-2026-000003@example.com>\r\n", b"")
        dsn = dsn.replace(b"Status: 5.1.1", b"Status: 5.7.1")
        assert b"c07d5e2b8a913f46" not in dsn
        two = (
            b"From: someone@agent-b.example.cn\r\nSubject: OUT-2026-000001 and OUT-2026-000002"
            b"\r\nMessage-ID: <two@agent-b.example.cn>\r\n\r\nhello\r\n"
        )
        with app.sessions.begin() as s:
            bounced = record_message(s, dsn, reference_prefix="OUT", at=STEP2_AT)
            held = record_message(s, two, reference_prefix="OUT", at=STEP2_AT)
        assert (bounced.status, bounced.case, bounced.effects) == (
            "matched",
            "OUT-2026-000003",
            ("bounced",),  # no contact_bad: a policy refusal is not the mailbox's fault
        )
        with app.sessions() as s:
            row = s.get(InboundMessage, bounced.message)
            assert row is not None and row.matched_by == "x_outreach_reference"
            attempt = s.get(Attempt, row.attempt_id)
            assert attempt is not None and attempt.state == "bounced"
            assert attempt.recipient == "kefu@agent-c.example.cn"
            assert s.get(ContactPoint, attempt.contact_point_id).status == "unknown"
            other = s.get(InboundMessage, held.message)
            assert other is not None and other.status == "held"
            assert other.note == (
                "the subject cites several cases (OUT-2026-000001, OUT-2026-000002): which one?"
            )
            assert set(s.scalars(select(Case.state))) == {"open"}
    finally:
        app.close()


def test_imap_utf7_mailbox_names() -> None:
    # RFC 3501 5.1.3's example, and the folder name used above.
    assert imap_utf7("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert imap_utf7("已处理") == "&XfJZBHQG-"
    assert imap_utf7("A&B") == "A&-B"
