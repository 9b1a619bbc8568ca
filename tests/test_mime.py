"""channels.mime: the bytes say exactly what the proof records, as read by a real parser.

The standard library's *parser* stands in for the recipient's mail program: whatever the
writer produces must decode to the very subject, names and body that were rendered.
"""

from __future__ import annotations

import base64
import email
import email.policy
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.base import Outgoing
from channels.mime import build_email

_CREATED = datetime(2026, 3, 2, 1, 30, tzinfo=UTC)


def _msg(**kw: object) -> Outgoing:
    base: dict[str, object] = {
        "channel": "mail",
        "kind": "email",
        "recipient": "kefu@agent-a.example.cn",
        "recipient_name": "深圳甲支付服务有限公司",
        "subject": "【终端注销申请】深圳市福田区张三便利店 商户编号822584053990001 案件编号OUT-2026-000001",
        "body": "您好：\n\n本人申请注销终端。\n",
        "reference": "OUT-2026-000001",
        "idempotency_key": "a7f3c2e1d9b04c55",
        "notice_kind": "cancellation_request",
        "language": "zh-CN",
        "created_at": _CREATED,
    }
    base.update(kw)
    return Outgoing(**base)  # type: ignore[arg-type]


def _parse(payload: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(payload, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _raw_header(payload: bytes, name: str) -> str:
    value = email.message_from_bytes(payload, policy=email.policy.compat32)[name]
    assert isinstance(value, str)
    return value


# Text a notice can carry: CJK, full-width punctuation, ASCII, runs of spaces, tabs, things
# that look like encoded-words, and non-BMP characters.
_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(list('终端注销申请商户编号押金【】（），。 \t=?_"\\<>@:;')),
        st.characters(min_codepoint=0x20, max_codepoint=0x7E),
        st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
        st.characters(min_codepoint=0x1F600, max_codepoint=0x1F64F),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=400, deadline=None)
@given(subject=_TEXT, name=_TEXT, body=st.text(max_size=400))
def test_subject_names_and_body_decode_to_exactly_what_was_rendered(
    subject: str, name: str, body: str
) -> None:
    body = body.replace("\r", "")  # notices are rendered with \n; the parser normalises CR
    payload, mid = build_email(
        _msg(subject=subject, recipient_name=name, body=body),
        from_address="zhangsan@example.com",
        from_name=name,
    )
    parsed = _parse(payload)
    assert parsed["Subject"] == subject
    shown = " ".join(name.split())  # display names: whitespace runs read as one space
    assert parsed["To"].addresses[0].addr_spec == "kefu@agent-a.example.cn"
    if b"To: =?" not in payload:
        assert parsed["To"].addresses[0].display_name == shown
        assert parsed["From"].addresses[0].display_name == shown
    else:
        # Encoded names are checked with RFC 2047's own rule (white space between adjacent
        # encoded-words is not text, §6.2): the stdlib's address parser keeps that space as
        # text, so it would show a long Chinese name with a space in the middle.
        raw = _raw_header(payload, "To")
        assert str(make_header(decode_header(raw))) == f"{shown} <kefu@agent-a.example.cn>"
    assert parsed["Message-ID"] == mid
    content = parsed.get_body(("plain",))
    assert content is not None
    assert content.get_content() == body
    assert b"\n" not in payload.replace(b"\r\n", b"")
    assert b"\r" not in payload.replace(b"\r\n", b"")
    assert payload.isascii()


def test_stdlib_writer_alters_subjects_this_writer_keeps() -> None:
    """Why the hand-written writer exists: the stdlib drops a leading space and decodes text
    that merely looks like an encoded-word; the recorded subject would differ from the sent."""
    for subject in (" 终端注销", "=?utf-8?q?x?=", "注销 =?utf-8?b?5byg?= 申请"):
        em = EmailMessage(policy=email.policy.SMTP)
        em["Subject"] = subject
        em.set_content("x")
        assert _parse(em.as_bytes())["Subject"] != subject
        payload, _ = build_email(_msg(subject=subject), from_address="a@example.com")
        assert _parse(payload)["Subject"] == subject


def test_exact_bytes_of_a_follow_up_with_html() -> None:
    payload, mid = build_email(
        _msg(
            subject="Terminal cancellation OUT-2026-000001",
            recipient_name="Agent A",
            html="<p>hi</p>",
            body="hi\n",
            in_reply_to=("<k1.OUT-2026-000001@example.com>", "<k2.OUT-2026-000001@example.com>"),
        ),
        from_address="zhangsan@example.com",
        from_name="张三",
        reply_to="reply@example.com",
        disposition_notification_to="reply@example.com",
        extra_headers={"X-Case": "OUT-2026-000001"},
    )
    boundary = "=_outreach_6d2683377180e7826cdd4dc8"
    assert mid == "<a7f3c2e1d9b04c55.OUT-2026-000001@example.com>"
    expected = (
        "From: =?utf-8?b?5byg5LiJ?= <zhangsan@example.com>\r\n"
        "To: Agent A <kefu@agent-a.example.cn>\r\n"
        "Reply-To: =?utf-8?b?5byg5LiJ?= <reply@example.com>\r\n"
        "Subject: Terminal cancellation OUT-2026-000001\r\n"
        "Date: Mon, 02 Mar 2026 09:30:00 +0800\r\n"
        "Message-ID: <a7f3c2e1d9b04c55.OUT-2026-000001@example.com>\r\n"
        "In-Reply-To: <k2.OUT-2026-000001@example.com>\r\n"
        "References: <k1.OUT-2026-000001@example.com> <k2.OUT-2026-000001@example.com>\r\n"
        "Disposition-Notification-To: reply@example.com\r\n"
        "X-Outreach-Reference: OUT-2026-000001\r\n"
        "Auto-Submitted: no\r\n"
        "X-Case: OUT-2026-000001\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        "aGkK\r\n"
        f"--{boundary}\r\n"
        'Content-Type: text/html; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        "PHA+aGk8L3A+\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    assert payload == expected
    parsed = _parse(payload)
    html = parsed.get_body(("html",))
    assert html is not None and html.get_content() == "<p>hi</p>"


def test_lines_stay_within_78_and_encoded_words_split_between_characters() -> None:
    subject = "终端注销" * 40
    payload, _ = build_email(_msg(subject=subject), from_address="a@example.com")
    head = payload.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")
    assert max(len(line) for line in lines) <= 78
    words = [w for line in lines for w in line.split() if w.startswith("=?utf-8?b?")]
    for word in words:
        raw = base64.b64decode(word[len("=?utf-8?b?") : -2])
        raw.decode("utf-8")  # each word is whole characters on its own
        assert len(word) <= 75
    assert _parse(payload)["Subject"] == subject


def test_long_plain_subject_is_folded_at_its_spaces() -> None:
    subject = " ".join(["cancellation"] * 20)
    payload, _ = build_email(_msg(subject=subject), from_address="a@example.com")
    assert b"=?utf-8" not in payload.split(b"\r\n\r\n", 1)[0].split(b"Subject:")[1][:20]
    assert b"\r\n cancellation" in payload
    assert _parse(payload)["Subject"] == subject


def test_quoted_and_utf8_addresses() -> None:
    payload, _ = build_email(
        _msg(recipient_name='Agent "A", Ltd.', recipient="客服@例子.中国"),
        from_address="a@example.com",
    )
    assert b'To: "Agent \\"A\\", Ltd." <' + "客服@例子.中国".encode() + b">\r\n" in payload
    to = _parse(payload)["To"].addresses[0]
    assert to.display_name == 'Agent "A", Ltd.'


def test_deterministic_and_same_key_same_message_id() -> None:
    a = build_email(_msg(), from_address="a@example.com")
    b = build_email(_msg(), from_address="a@example.com")
    assert a == b
    c, _ = build_email(_msg(idempotency_key="other"), from_address="a@example.com")
    assert c != a[0]


@pytest.mark.parametrize(
    "field",
    [
        {"subject": "a\r\nBcc: x@example.com"},
        {"recipient_name": "A\nB"},
        {"recipient": "a@example.com\r\nBcc: x@example.com"},
        {"in_reply_to": ("<a@b>\r\nX: y",)},
    ],
)
def test_line_breaks_in_header_values_are_refused(field: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="line break"):
        build_email(_msg(**field), from_address="a@example.com")


def test_bad_extra_header_name_is_refused() -> None:
    with pytest.raises(ValueError, match="not a header field name"):
        build_email(_msg(), from_address="a@example.com", extra_headers={"Bad Name": "x"})
