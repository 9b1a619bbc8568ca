"""The pure mail parsers on realistic fixtures (tests/fixtures/mail/*.eml): what each message
is, which case it points at and how, and the RFC 3464 / RFC 8098 fields, with no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outreach.mailparse import (
    Clue,
    DsnRecipient,
    decode_bytes,
    find_references,
    message_ids,
    our_message_id,
    parse_mail,
    reference_pattern,
)

MAIL = Path(__file__).parent / "fixtures" / "mail"
K1 = "3f2a9c1d7b5e8a60"  # the keys of our notices the fixtures answer (see test_inbound)
K2 = "9b1e0c4d2a7f6e35"
K3 = "c07d5e2b8a913f46"


def test_reply_with_only_in_reply_to() -> None:
    m = parse_mail((MAIL / "reply_in_reply_to.eml").read_bytes(), reference_prefix="OUT")
    assert m.kind == "message"
    assert (m.from_name, m.from_address) == ("陈经理", "service@agent-a.example.cn")
    assert m.subject == "关于贵店终端的处理意见"  # no reference in subject or body
    assert m.in_reply_to == (f"<{K1}.OUT-2026-000001@example.com>",)
    assert m.clues == (Clue("OUT-2026-000001", "in_reply_to"),)
    assert [(o.key, o.reference, src) for o, src in m.our_message_ids()] == [
        (K1, "OUT-2026-000001", "in_reply_to")
    ]
    assert m.date == datetime(2026, 11, 24, 6, 2, 27, tzinfo=UTC)
    assert "预计三个工作日内完成撤机" in m.text


def test_reply_quoting_the_reference_in_its_body_only() -> None:
    m = parse_mail((MAIL / "reply_quoting_reference.eml").read_bytes(), reference_prefix="OUT")
    assert m.kind == "message" and m.in_reply_to == () and m.references == ()
    assert m.subject == "答复：关于终端注销事宜"
    assert m.clues == (Clue("OUT-2026-000004", "body"),)
    assert m.from_address == "kefu@agent-d.example.cn"


def test_gbk_reply_labelled_gb2312_from_foxmail() -> None:
    raw = (MAIL / "reply_gbk_foxmail.eml").read_bytes()
    # The name and text use 镕, which GBK has and GB 2312 lacks: a strict gb2312 decode fails,
    # so this fixture only passes if the label is read as the GB 18030 superset.
    with pytest.raises(UnicodeDecodeError):
        "镕".encode("gbk").decode("gb2312")
    m = parse_mail(raw, reference_prefix="OUT")
    assert m.kind == "message"
    assert m.from_name == "王镕" and m.from_address == "wangrong@agent-d.example.cn"
    assert m.subject.startswith("回复: 【终端注销申请】杭州市西湖区丁六水果店")
    assert m.clues == (Clue("OUT-2026-000004", "subject"),)
    assert "经办人：王镕（客服部）" in m.text and "\ufffd" not in m.text


def test_postfix_dsn_failed_5_1_1() -> None:
    m = parse_mail((MAIL / "dsn_failed_5.1.1.eml").read_bytes(), reference_prefix="OUT")
    assert m.kind == "dsn" and m.dsn is not None
    assert m.from_address == "mailer-daemon@mx.example.com"
    assert m.dsn.reporting_mta == "dns; mx.example.com"
    assert m.dsn.envelope_id == K3
    (rec,) = m.dsn.recipients
    assert rec.final_recipient == rec.original_recipient == "kefu@agent-c.example.cn"
    assert (rec.action, rec.status) == ("failed", "5.1.1")
    assert rec.diagnostic_code == (
        "smtp; 550 5.1.1 <kefu@agent-c.example.cn>: Recipient address rejected: "
        "User unknown in virtual mailbox table"
    )  # the folded field, unfolded
    assert rec.remote_mta == "dns; mx.agent-c.example.cn"
    assert rec.permanent and rec.blames_recipient
    assert m.dsn.original is not None
    assert m.dsn.original.message_id == f"<{K3}.OUT-2026-000003@example.com>"
    assert m.dsn.original.reference == "OUT-2026-000003"
    assert m.clues[0] == Clue("OUT-2026-000003", "original_message_id")
    # Postfix sets Auto-Submitted on its reports: still a DSN, not an auto-reply.
    assert m.auto_reply_reason is None


def test_postfix_dsn_delayed() -> None:
    m = parse_mail((MAIL / "dsn_delayed.eml").read_bytes(), reference_prefix="OUT")
    assert m.kind == "dsn" and m.dsn is not None
    (rec,) = m.dsn.recipients
    assert (rec.action, rec.status) == ("delayed", "4.4.1")
    assert rec.will_retry_until == "Sat, 28 Nov 2026 10:00:01 +0800 (CST)"
    assert not rec.permanent and not rec.blames_recipient
    assert m.dsn.envelope_id == K2


def test_mdn_displayed() -> None:
    m = parse_mail((MAIL / "mdn_displayed.eml").read_bytes(), reference_prefix="OUT")
    assert m.kind == "mdn" and m.mdn is not None
    assert m.mdn.disposition == "manual-action/MDN-sent-manually; displayed"
    assert m.mdn.disposition_type == "displayed"
    assert m.mdn.original_message_id == f"<{K1}.OUT-2026-000001@example.com>"
    assert m.mdn.final_recipient == "service@agent-a.example.cn"
    assert m.mdn.reporting_ua == "agent-a.example.cn; Mozilla Thunderbird"
    assert m.our_message_ids()[0][1] == "original_message_id"


def test_out_of_office_is_an_auto_reply() -> None:
    m = parse_mail((MAIL / "auto_reply_out_of_office.eml").read_bytes(), reference_prefix="OUT")
    assert m.kind == "auto_reply"
    assert m.auto_reply_reason == "Auto-Submitted: auto-replied"
    assert m.clues[0] == Clue("OUT-2026-000002", "in_reply_to")


def test_spam_has_no_clue() -> None:
    m = parse_mail((MAIL / "spam_no_reference.eml").read_bytes(), reference_prefix="OUT")
    assert m.kind == "message" and m.clues == () and m.our_message_ids() == []
    assert m.subject == "【优惠】代开各类发票 点数低 可验票"


def _mail(headers: str, body: str = "hello\r\n") -> bytes:
    return (headers.strip().replace("\n", "\r\n") + "\r\n\r\n" + body).encode("utf-8")


@pytest.mark.parametrize(
    "subject",
    [
        "Automatic reply: Cancellation request OUT-2026-000001",
        "自动回复：【终端注销申请】案件编号OUT-2026-000001",
        "【自动回复】您的邮件已收到",
        "Out of Office: back on Monday",
        "Auto: notice",
    ],
)
def test_auto_reply_recognised_by_subject_alone(subject: str) -> None:
    m = parse_mail(_mail(f"From: a@b.cn\nSubject: {subject}"))
    assert m.kind == "auto_reply" and m.auto_reply_reason is not None


@pytest.mark.parametrize(
    "header", ["Auto-Submitted: auto-generated", "X-Autoreply: yes", "Precedence: bulk"]
)
def test_auto_reply_recognised_by_header(header: str) -> None:
    assert parse_mail(_mail(f"From: a@b.cn\nSubject: Re: hi\n{header}")).kind == "auto_reply"


def test_auto_submitted_no_is_a_person() -> None:
    m = parse_mail(_mail("From: a@b.cn\nSubject: Re: 注销\nAuto-Submitted: no"))
    assert m.kind == "message" and m.auto_reply_reason is None


def test_prose_bounce_without_report() -> None:
    m = parse_mail(
        _mail(
            "From: MAILER-DAEMON@mx.qq.example\nSubject: 系统退信\nReturn-Path: <>",
            "您发送的邮件无法投递到 kefu@agent.example.cn，原因：用户不存在。OUT-2026-000001\r\n",
        ),
        reference_prefix="OUT",
    )
    assert m.kind == "bounce" and m.dsn is None
    assert Clue("OUT-2026-000001", "body") in m.clues


def test_raw_8bit_gbk_subject_is_decoded() -> None:
    raw = b"From: x@y.cn\r\nSubject: \xbb\xd8\xb8\xb4: OUT-2026-000009\r\n\r\nbody\r\n"
    m = parse_mail(raw, reference_prefix="OUT")
    assert m.subject == "回复: OUT-2026-000009"
    assert m.clues == (Clue("OUT-2026-000009", "subject"),)


def test_references_newest_first_and_bare_ids() -> None:
    m = parse_mail(
        _mail(
            f"From: a@b.cn\nSubject: Re\nReferences: <{K1}.OUT-2026-000001@example.com>\n"
            f" <{K2}.OUT-2026-000002@example.com>\nIn-Reply-To: x@y.example"
        )
    )
    assert m.in_reply_to == ("<x@y.example>",)
    assert [o.reference for o, _ in m.our_message_ids()] == ["OUT-2026-000002", "OUT-2026-000001"]


def test_reference_search_boundaries_and_full_width() -> None:
    pattern = reference_pattern("OUT")
    assert find_references("案件编号ＯＵＴ－２０２６－０００００７。", pattern) == (
        "OUT-2026-000007",
    )
    assert find_references("see out-2026-000008, thanks", pattern) == ("OUT-2026-000008",)
    assert find_references("XOUT-2026-000001 OUT-2026-0000011 OUT-26-000001", pattern) == ()
    assert find_references("ABC-2026-000001", pattern) == ()
    assert find_references("ABC-2026-000001", reference_pattern(None)) == ("ABC-2026-000001",)


def test_message_id_helpers() -> None:
    assert message_ids("<a@b> <c@d>\r\n <a@b>") == ("<a@b>", "<c@d>")
    ours = our_message_id(f"<{K1}.OUT-2026-000001@Example.COM>")
    assert ours is not None and (ours.key, ours.reference) == (K1, "OUT-2026-000001")
    assert our_message_id("<20261123.abc@mx.example.com>") is None


@pytest.mark.parametrize(
    ("status", "blamed"),
    [("5.1.1", True), ("5.2.2", True), ("5.4.4", True), ("5.7.1", False), ("5.6.0", False)],
)
def test_who_a_failure_blames(status: str, blamed: bool) -> None:
    rec = DsnRecipient("a@b.cn", None, "failed", status, None, None, None, None)
    assert rec.permanent and rec.blames_recipient is blamed
    expired = DsnRecipient("a@b.cn", None, "failed", "4.4.7", None, None, None, None)
    assert not expired.permanent and not expired.blames_recipient


def test_decode_bytes_falls_back_when_the_label_lies() -> None:
    gbk = "商户编号".encode("gbk")
    assert decode_bytes(gbk, "us-ascii") == "商户编号"
    assert decode_bytes(gbk, "no-such-charset") == "商户编号"
    assert decode_bytes("商户".encode(), "gb2312") == "商户"  # UTF-8 mislabelled as GB


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_parse_never_raises(raw: bytes) -> None:
    m = parse_mail(raw)
    assert m.kind in ("message", "auto_reply", "dsn", "mdn", "bounce")


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=400))
def test_parse_never_raises_on_header_like_text(text: str) -> None:
    raw = "Subject: " + text + "\r\nContent-Type: multipart/report; boundary=x\r\n\r\n--x\r\n"
    parse_mail(raw.encode("utf-8", "surrogatepass"))
