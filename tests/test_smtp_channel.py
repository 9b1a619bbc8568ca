"""The smtp channel against a real SMTP server on 127.0.0.1, fault by fault.

Each fault a relay can throw at us must land on the right one of Transient / Permanent /
Unknown, because that choice decides whether a notice is retried, given up, or re-sent as an
attributable duplicate. And on success, what the server stored must hash to what the engine
hashed before sending: that is the proof.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from channels.base import Channel, Outgoing, Permanent, Prepared, Transient, Unknown
from channels.smtp import SmtpChannel, Stage, classify, enhanced_status, parse_queue_id, xtext
from tests.smtp_server import Faults, LoopbackSmtpServer, TlsFiles

pytest_plugins = ("tests.conftest_smtp",)

PASSWORD = "s3cr3t-Pa55+word"
ENV = {"RELAY_PASSWORD": PASSWORD}

Factory = Callable[..., SmtpChannel]


def outgoing(key: str = "a7f3c2e1d9b04c55", **changes: Any) -> Outgoing:
    base = Outgoing(
        channel="agent-mail",
        kind="email",
        recipient="agent@example.net",
        recipient_name="某某支付 客服",
        subject="关于注销POS终端的正式通知 OUT-2026-000123",
        body="尊敬的代理商：\n请注销终端 12345678。\n.\n.leading dot line\n",
        reference="OUT-2026-000123",
        idempotency_key=key,
        notice_kind="cancellation_request",
        language="zh-CN",
        created_at=datetime(2026, 3, 2, 1, 30, tzinfo=UTC),
    )
    return replace(base, **changes)


@pytest.fixture
async def channel_for() -> AsyncIterator[Factory]:
    """Channels pointed at a loopback server; every one is aclose()d after the test."""
    made: list[SmtpChannel] = []

    def make(
        server: LoopbackSmtpServer | None, env: dict[str, str] | None = None, **kw: Any
    ) -> SmtpChannel:
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": server.port if server else 1,
            "security": "none",
            "from_address": "notices@merchant.example",
            "timeout": 2.0,
        }
        settings.update(kw)
        channel = SmtpChannel("agent-mail", settings, ENV if env is None else env)
        made.append(channel)
        return channel

    yield make
    for channel in made:
        await channel.aclose()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_json_clean(transcript: Any, *secrets: str) -> str:
    text = json.dumps(transcript, ensure_ascii=False)
    for secret in secrets:
        assert secret not in text
    return text


# -- success -----------------------------------------------------------------------------------


async def test_success_stores_exact_bytes_and_reuses_one_connection(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    channel = channel_for(smtp_server)
    assert isinstance(channel, Channel)
    first = channel.prepare(outgoing("a7f3c2e1d9b04c55"))
    second = channel.prepare(outgoing("b8e4d3f2a0c15d66"))

    r1 = await channel.send(first)
    r2 = await channel.send(second)

    got = smtp_server.messages
    assert [m.sha256 for m in got] == [sha(first.payload), sha(second.payload)]
    assert got[0].content == first.payload  # byte for byte, dot-stuffing undone by the server
    parsed = email.message_from_bytes(got[0].content, policy=email.policy.default)
    assert parsed["Message-ID"] == first.message_id
    assert first.message_id == "<a7f3c2e1d9b04c55.OUT-2026-000123@merchant.example>"
    assert got[0].mail_from == "notices@merchant.example"
    assert got[0].rcpt_tos == ("agent@example.net",)

    assert r1.accepted and r2.accepted
    assert r1.provider_id == got[0].queue_id and r2.provider_id == got[1].queue_id
    assert r1.response == f"250 2.0.0 Ok: queued as {got[0].queue_id}".encode()

    assert len(smtp_server.connections) == 1  # the second message rode the same session
    raw = bytes(smtp_server.connections[0].received)
    assert raw.startswith(b"EHLO localhost\r\n")  # local_hostname, no DNS lookup
    assert raw.count(b"EHLO") == 1

    t1, t2 = r1.transcript, r2.transcript
    assert t1["connection"]["reused"] is False and t2["connection"]["reused"] is True
    assert t1["connection"]["number"] == t2["connection"]["number"] == 1
    assert t1["connection"]["greeting"]["code"] == 220
    assert "size" in t1["connection"]["extensions"]
    assert t1["mail_from"]["code"] == 250
    assert (
        t1["mail_from"]["command"]
        == f"MAIL FROM:<notices@merchant.example> SIZE={len(first.payload)}"
    )
    assert t1["rcpt_to"] == {**t1["rcpt_to"], "code": 250, "command": "RCPT TO:<agent@example.net>"}
    assert t1["data"]["code"] == 354
    assert t1["data_end"]["code"] == 250 and t1["queue_id"] == got[0].queue_id
    assert t1["payload_sha256"] == sha(first.payload)
    assert t1["dsn_requested"] is False and got[0].mail_options == (f"SIZE={len(first.payload)}",)
    assert t1["started_at"].endswith("Z") and t1["finished_at"] >= t1["started_at"]
    assert_json_clean(t1)


async def test_payload_with_dot_lines_survives_dot_stuffing(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    """A hand-made payload whose lines start with "." (mime.py base64s bodies, so this is the
    only way to reach the stuffing path): the server must still store the exact bytes."""
    channel = channel_for(smtp_server)
    made = channel.prepare(outgoing())
    payload = b"Subject: dots\r\nMessage-ID: <x@y>\r\n\r\n.\r\n..two\r\n.end\r\n"
    await channel.send(Prepared(made.outgoing, payload, "message/rfc822", "<x@y>"))
    assert smtp_server.messages[0].content == payload
    assert b"\r\n..\r\n...two\r\n..end\r\n.\r\n" in bytes(smtp_server.connections[0].received)


async def test_prepare_is_deterministic_and_adds_mdn_and_reply_to(channel_for: Factory) -> None:
    channel = channel_for(
        None, request_mdn=True, reply_to="replies@merchant.example", from_name="张三商户"
    )
    a, b = channel.prepare(outgoing()), channel.prepare(outgoing())
    assert a.payload == b.payload and a.message_id == b.message_id
    assert a.media_type == "message/rfc822"
    parsed = email.message_from_bytes(a.payload, policy=email.policy.default)
    assert parsed["Disposition-Notification-To"] == "replies@merchant.example"
    assert parsed["Reply-To"].addresses[0].addr_spec == "replies@merchant.example"
    assert parsed["From"].addresses[0].display_name == "张三商户"
    with pytest.raises(Permanent) as err:
        channel.prepare(outgoing(kind="sms", recipient="+8613800000000"))
    assert err.value.bad_recipient is False


# -- DSN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("advertised", "requested"), [(True, True), (True, False), (False, True)])
async def test_dsn_options_only_when_advertised_and_requested(
    smtp_server: LoopbackSmtpServer, channel_for: Factory, advertised: bool, requested: bool
) -> None:
    smtp_server.faults.dsn = advertised
    channel = channel_for(smtp_server, request_dsn=requested)
    prepared = channel.prepare(outgoing(recipient="agent+pos=1@example.net"))
    receipt = await channel.send(prepared)

    raw = bytes(smtp_server.connections[0].received)
    got = smtp_server.messages[0]
    assert got.sha256 == sha(prepared.payload)
    if advertised and requested:
        size = len(prepared.payload)
        assert (
            f"MAIL FROM:<notices@merchant.example> SIZE={size} RET=HDRS "
            "ENVID=a7f3c2e1d9b04c55\r\n".encode()
            in raw
        )
        # "+" and "=" are xtext-encoded in ORCPT so the DSN names the address exactly
        assert (
            b"RCPT TO:<agent+pos=1@example.net> NOTIFY=SUCCESS,FAILURE,DELAY "
            b"ORCPT=rfc822;agent+2Bpos+3D1@example.net\r\n" in raw
        )
        assert receipt.transcript["dsn_requested"] is True
    else:
        assert b"RET=" not in raw and b"ENVID=" not in raw
        assert b"NOTIFY=" not in raw and b"ORCPT=" not in raw
        assert got.rcpt_options == ()
        assert receipt.transcript["dsn_requested"] is False


# -- failures before the end of DATA: Transient or Permanent ------------------------------------


async def test_421_at_connect_is_transient(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    smtp_server.faults.greeting = "421 4.3.2 Service not available, closing channel"
    channel = channel_for(smtp_server)
    with pytest.raises(Transient) as err:
        await channel.send(channel.prepare(outgoing()))
    assert err.value.code == "421"
    assert err.value.response == b"421 4.3.2 Service not available, closing channel"
    assert err.value.transcript["connection"]["greeting"]["code"] == 421
    assert err.value.transcript["error"]["stage"] == "connect"
    assert smtp_server.messages == []


async def test_connection_refused_is_transient(channel_for: Factory) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    channel = channel_for(None, port=port)
    with pytest.raises(Transient) as err:
        await channel.send(channel.prepare(outgoing()))
    assert err.value.code is None
    assert err.value.transcript["error"] == {**err.value.transcript["error"], "stage": "connect"}


async def test_silent_server_times_out_as_transient(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    smtp_server.faults.greeting_delay = 5.0
    channel = channel_for(smtp_server, timeout=0.3)
    with pytest.raises(Transient) as err:
        await channel.send(channel.prepare(outgoing()))
    assert err.value.code is None and "connect" in str(err.value)
    assert smtp_server.messages == []


async def test_451_at_rcpt_is_transient_and_the_connection_stays_usable(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    smtp_server.faults.rcpt = "451 4.7.1 Greylisted, try again later"
    channel = channel_for(smtp_server)
    prepared = channel.prepare(outgoing())
    with pytest.raises(Transient) as err:
        await channel.send(prepared)
    assert err.value.code == "451"
    assert err.value.transcript["rcpt_to"]["code"] == 451
    assert smtp_server.messages == []

    smtp_server.faults.rcpt = None  # the greylisting window passed
    receipt = await channel.send(prepared)
    assert smtp_server.messages[0].sha256 == sha(prepared.payload)
    assert len(smtp_server.connections) == 1  # RSET, then reused
    assert b"RSET\r\n" in bytes(smtp_server.connections[0].received)
    assert receipt.transcript["connection"]["reused"] is True


async def test_550_at_rcpt_is_permanent_bad_recipient(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    smtp_server.faults.rcpt = "550 5.1.1 <agent@example.net>: Recipient address rejected"
    channel = channel_for(smtp_server)
    with pytest.raises(Permanent) as err:
        await channel.send(channel.prepare(outgoing()))
    assert err.value.bad_recipient is True
    assert err.value.code == "550"
    assert err.value.response == b"550 5.1.1 <agent@example.net>: Recipient address rejected"
    assert b"DATA" not in bytes(smtp_server.connections[0].received)


async def test_relay_denied_at_rcpt_is_permanent_but_recipient_innocent(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    smtp_server.faults.rcpt = "554 5.7.1 <agent@example.net>: Relay access denied"
    channel = channel_for(smtp_server)
    with pytest.raises(Permanent) as err:
        await channel.send(channel.prepare(outgoing()))
    assert err.value.bad_recipient is False and err.value.code == "554"


async def test_policy_refusal_at_mail_is_permanent_not_the_recipients_fault(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    smtp_server.faults.mail = "550 5.7.1 Sender address rejected: not owned by user"
    channel = channel_for(smtp_server)
    with pytest.raises(Permanent) as err:
        await channel.send(channel.prepare(outgoing()))
    assert err.value.bad_recipient is False
    assert err.value.transcript["error"]["stage"] == "mail"


async def test_554_at_end_of_data_is_permanent(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    smtp_server.faults.data_end = "554 Transaction failed: mailbox disabled"
    channel = channel_for(smtp_server)
    prepared = channel.prepare(outgoing())
    with pytest.raises(Permanent) as err:
        await channel.send(prepared)
    assert err.value.bad_recipient is True and err.value.code == "554"
    assert err.value.response == b"554 Transaction failed: mailbox disabled"
    assert err.value.transcript["data_end"]["code"] == 554
    assert smtp_server.messages[0].answered == "554 Transaction failed: mailbox disabled"


async def test_slow_rcpt_beyond_timeout_is_transient(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    smtp_server.faults.rcpt_delay = 2.0
    channel = channel_for(smtp_server, timeout=0.3)
    with pytest.raises(Transient) as err:
        await channel.send(channel.prepare(outgoing()))
    assert err.value.code is None
    assert err.value.transcript["error"]["stage"] == "rcpt"
    assert smtp_server.messages == []


@pytest.mark.parametrize("command", ["MAIL", "RCPT", "DATA"])
async def test_hang_up_before_the_message_is_transient(
    smtp_server: LoopbackSmtpServer, channel_for: Factory, command: str
) -> None:
    """The other side of the Unknown boundary: a drop before the final "." left nothing behind."""
    smtp_server.faults.hang_up_at = command
    channel = channel_for(smtp_server)
    with pytest.raises(Transient) as err:
        await channel.send(channel.prepare(outgoing()))
    assert err.value.code is None
    assert err.value.transcript["error"]["stage"] == command.lower()
    assert smtp_server.messages == []
    assert b"\r\n.\r\n" not in bytes(smtp_server.connections[0].received)


# -- after the end of DATA: Unknown -----------------------------------------------------------


async def test_disconnect_right_after_data_is_unknown(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    smtp_server.faults.drop_after_data = True
    channel = channel_for(smtp_server)
    prepared = channel.prepare(outgoing())
    with pytest.raises(Unknown) as err:
        await channel.send(prepared)
    # The server does hold the message: exactly why this must not be retried as "not sent".
    assert smtp_server.messages[0].sha256 == sha(prepared.payload)
    assert smtp_server.messages[0].answered is None
    assert err.value.transcript["error"]["stage"] == "data_end"
    assert "data_end_written_at" in err.value.transcript

    smtp_server.faults.drop_after_data = False  # the re-send: same bytes, same Message-ID
    receipt = await channel.send(prepared)
    assert receipt.accepted and len(smtp_server.connections) == 2
    assert smtp_server.messages[0].content == smtp_server.messages[1].content


async def test_slow_reply_after_data_beyond_timeout_is_unknown(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    smtp_server.faults.data_end_delay = 2.0
    channel = channel_for(smtp_server, data_end_timeout=0.3)
    prepared = channel.prepare(outgoing())
    with pytest.raises(Unknown) as err:
        await channel.send(prepared)
    assert err.value.code is None
    assert smtp_server.messages[0].sha256 == sha(prepared.payload)


# -- connection pool ---------------------------------------------------------------------------


async def test_connection_dropped_while_idle_is_replaced_transparently(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    channel = channel_for(smtp_server)
    await channel.send(channel.prepare(outgoing("k1")))
    smtp_server.drop_connections()  # the relay's idle timeout, unseen by the client so far
    receipt = await channel.send(channel.prepare(outgoing("k2")))
    assert receipt.accepted
    assert len(smtp_server.connections) == 2 and len(smtp_server.messages) == 2
    assert receipt.transcript["connection"]["reused"] is False
    # The client only learnt of the drop when MAIL got no reply; the transcript keeps that try.
    stale = receipt.transcript["stale_connection"]
    assert stale["error"]["stage"] == "mail" and stale["connection"]["number"] == 1
    assert receipt.transcript["connection"]["number"] == 2


async def test_idle_timeout_zero_opens_a_fresh_connection(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    channel = channel_for(smtp_server, idle_timeout=0)
    await channel.send(channel.prepare(outgoing("k1")))
    await channel.send(channel.prepare(outgoing("k2")))
    assert len(smtp_server.connections) == 2


async def test_pool_caps_concurrent_connections(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    smtp_server.faults.data_end_delay = 0.05
    channel = channel_for(smtp_server, max_connections=2)
    prepared = [channel.prepare(outgoing(f"key{i}")) for i in range(6)]
    receipts = await asyncio.gather(*(channel.send(p) for p in prepared))
    assert all(r.accepted for r in receipts)
    assert len(smtp_server.connections) == 2
    assert sorted(m.sha256 for m in smtp_server.messages) == sorted(
        sha(p.payload) for p in prepared
    )


async def test_aclose_quits_pooled_connections(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    channel = channel_for(smtp_server)
    await channel.send(channel.prepare(outgoing()))
    await channel.aclose()
    assert bytes(smtp_server.connections[0].received).endswith(b"QUIT\r\n")


# -- TLS ---------------------------------------------------------------------------------------


async def test_starttls_with_pinned_self_signed_certificate(
    smtp_server_factory: Callable[..., LoopbackSmtpServer],
    tls_files: TlsFiles,
    channel_for: Factory,
) -> None:
    server = smtp_server_factory(starttls=tls_files.server_context())
    channel = channel_for(server, security="starttls", ca_file=str(tls_files.cert))
    prepared = channel.prepare(outgoing())
    receipt = await channel.send(prepared)

    assert server.messages[0].sha256 == sha(prepared.payload)
    assert server.connections[0].tls is True
    tls = receipt.transcript["connection"]["tls"]
    assert tls["version"] in ("TLSv1.2", "TLSv1.3") and tls["cipher"]
    assert tls["peer_cert_sha256"] == tls_files.cert_sha256
    assert "starttls" not in receipt.transcript["connection"]["extensions"]  # the post-TLS EHLO
    assert receipt.transcript["connection"]["starttls"]["code"] == 220


async def test_implicit_tls(
    smtp_server_factory: Callable[..., LoopbackSmtpServer],
    tls_files: TlsFiles,
    channel_for: Factory,
) -> None:
    server = smtp_server_factory(implicit_tls=tls_files.server_context())
    channel = channel_for(server, security="tls", ca_file=str(tls_files.cert))
    prepared = channel.prepare(outgoing())
    receipt = await channel.send(prepared)
    assert server.messages[0].sha256 == sha(prepared.payload)
    assert receipt.transcript["connection"]["tls"]["peer_cert_sha256"] == tls_files.cert_sha256


async def test_untrusted_certificate_is_refused_before_any_mail(
    smtp_server_factory: Callable[..., LoopbackSmtpServer],
    tls_files: TlsFiles,
    channel_for: Factory,
) -> None:
    server = smtp_server_factory(starttls=tls_files.server_context())
    channel = channel_for(server, security="starttls")  # system CAs only: self-signed fails
    with pytest.raises(Permanent) as err:
        await channel.send(channel.prepare(outgoing()))
    assert err.value.bad_recipient is False
    assert "certificate" in str(err.value)
    assert b"MAIL FROM" not in bytes(server.connections[0].received)


async def test_missing_starttls_is_never_downgraded(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    channel = channel_for(smtp_server, security="starttls")
    with pytest.raises(Permanent) as err:
        await channel.send(channel.prepare(outgoing()))
    assert err.value.bad_recipient is False and "STARTTLS" in str(err.value)
    assert b"MAIL FROM" not in bytes(smtp_server.connections[0].received)


# -- AUTH and secrets --------------------------------------------------------------------------


async def test_auth_over_starttls_with_password_from_env(
    smtp_server_factory: Callable[..., LoopbackSmtpServer],
    tls_files: TlsFiles,
    channel_for: Factory,
) -> None:
    server = smtp_server_factory(starttls=tls_files.server_context(), users={"merchant": PASSWORD})
    channel = channel_for(
        server,
        security="starttls",
        ca_file=str(tls_files.cert),
        username="merchant",
        password_env="RELAY_PASSWORD",
    )
    receipt = await channel.send(channel.prepare(outgoing()))
    assert server.connections[0].authenticated_as == "merchant"
    assert receipt.transcript["connection"]["auth"]["code"] == 235
    assert receipt.transcript["connection"]["auth"]["command"] == "AUTH PLAIN"
    blob = base64.b64encode(b"\0merchant\0" + PASSWORD.encode()).decode()
    assert blob.encode() in bytes(server.connections[0].received)  # it did go to the server...
    assert_json_clean(receipt.transcript, PASSWORD, blob)  # ...and nowhere else
    assert PASSWORD not in repr(channel) and PASSWORD not in repr(vars(channel))


async def test_wrong_password_is_permanent_and_never_echoed(
    smtp_server_factory: Callable[..., LoopbackSmtpServer], channel_for: Factory
) -> None:
    server = smtp_server_factory(
        users={"merchant": "the-right-one"},
        auth_require_tls=False,
        faults=Faults(echo_credentials=True),  # a relay that quotes what it was given
    )
    channel = channel_for(server, username="merchant", password_env="RELAY_PASSWORD")
    with pytest.raises(Permanent) as err:
        await channel.send(channel.prepare(outgoing()))
    exc = err.value
    assert exc.code == "535" and exc.bad_recipient is False
    assert exc.transcript["error"]["stage"] == "auth"
    blob = base64.b64encode(b"\0merchant\0" + PASSWORD.encode()).decode()
    for text in (str(exc), repr(exc), exc.detail, (exc.response or b"").decode()):
        assert PASSWORD not in text and blob not in text
    assert "[redacted]" in str(exc)
    assert_json_clean(exc.transcript, PASSWORD, blob)
    assert server.messages == []


def test_settings_errors_name_the_setting_and_never_the_secret() -> None:
    base = {"host": "relay.example.org", "from_address": "notices@merchant.example"}
    with pytest.raises(ValueError, match="password_env"):
        SmtpChannel("m", {**base, "username": "u"}, {})
    with pytest.raises(ValueError, match="RELAY_PASSWORD is not set"):
        SmtpChannel("m", {**base, "username": "u", "password_env": "RELAY_PASSWORD"}, {})
    with pytest.raises(ValueError, match="security"):  # AUTH in clear over the network
        SmtpChannel(
            "m",
            {**base, "security": "none", "username": "u", "password_env": "RELAY_PASSWORD"},
            ENV,
        )
    with pytest.raises(ValueError, match="ca_file"):
        SmtpChannel("m", {**base, "ca_file": "/nonexistent/ca.pem"}, {})
    with pytest.raises(ValueError):
        SmtpChannel("m", {**base, "bogus": 1}, {})
    ok = SmtpChannel("m", {**base, "security": "starttls"}, {})
    assert ok.port == 587 and SmtpChannel("m", base, {}).port == 465


async def test_payload_that_is_not_crlf_is_refused_before_connecting(
    smtp_server: LoopbackSmtpServer, channel_for: Factory
) -> None:
    channel = channel_for(smtp_server)
    made = channel.prepare(outgoing())
    bad = Prepared(made.outgoing, made.payload.replace(b"\r\n", b"\n"), "message/rfc822")
    with pytest.raises(Permanent) as err:
        await channel.send(bad)
    assert err.value.bad_recipient is False
    assert smtp_server.connections == []


# -- the classifier, alone ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "code", "text", "outcome", "bad"),
    [
        (Stage.CONNECT, None, "Connection refused", "transient", False),
        (Stage.CONNECT, 421, "4.3.2 Service not available", "transient", False),
        (Stage.CONNECT, 554, "5.7.1 No SMTP service here", "permanent", False),
        (Stage.EHLO, 421, "4.7.0 too many connections", "transient", False),
        (Stage.EHLO, 550, "go away", "permanent", False),
        (Stage.STARTTLS, 454, "4.7.0 TLS not available", "transient", False),
        (Stage.AUTH, 454, "4.7.0 Temporary authentication failure", "transient", False),
        (Stage.AUTH, 535, "5.7.8 Authentication credentials invalid", "permanent", False),
        (Stage.AUTH, None, "timed out", "transient", False),
        (Stage.MAIL, 451, "4.3.0 local error", "transient", False),
        (Stage.MAIL, 550, "5.7.1 Sender rejected by policy", "permanent", False),
        (Stage.MAIL, 553, "5.1.8 Sender address rejected", "permanent", False),
        (Stage.MAIL, None, "Connection lost", "transient", False),
        (Stage.RCPT, 450, "4.2.0 Mailbox busy", "transient", False),
        (Stage.RCPT, 451, "4.7.1 Greylisted", "transient", False),
        (Stage.RCPT, 550, "5.1.1 <a@b>: User unknown", "permanent", True),
        (Stage.RCPT, 550, "User unknown", "permanent", True),
        (Stage.RCPT, 553, "5.1.3 Bad destination address syntax", "permanent", True),
        (Stage.RCPT, 552, "5.5.3 Too many recipients", "transient", False),
        (Stage.RCPT, 554, "5.7.1 Relay access denied", "permanent", False),
        (Stage.RCPT, None, "timed out", "transient", False),
        (Stage.DATA, 451, "4.3.0 try later", "transient", False),
        (Stage.DATA, 554, "5.5.1 No valid recipients", "permanent", False),
        (Stage.DATA, None, "Connection lost", "transient", False),
        (Stage.DATA_END, None, "Connection lost", "unknown", False),
        (Stage.DATA_END, -1, "Malformed SMTP response line", "unknown", False),
        (Stage.DATA_END, 354, "unexpected", "unknown", False),
        (Stage.DATA_END, 421, "4.4.2 timeout", "transient", False),
        (Stage.DATA_END, 451, "4.3.0 queue file write error", "transient", False),
        (Stage.DATA_END, 554, "Transaction failed", "permanent", True),
        (Stage.DATA_END, 550, "5.2.1 Mailbox disabled", "permanent", True),
        (Stage.DATA_END, 552, "5.3.4 Message too big", "permanent", False),
        (Stage.DATA_END, 554, "5.7.1 Rejected as spam", "permanent", False),
        (Stage.DATA_END, 554, "5.6.0 Content rejected", "permanent", False),
    ],
)
def test_classify(stage: Stage, code: int | None, text: str, outcome: str, bad: bool) -> None:
    verdict = classify(stage, code, text)
    assert (verdict.outcome, verdict.bad_recipient) == (outcome, bad)
    assert verdict.reason


def test_enhanced_status_and_queue_id_and_xtext() -> None:
    assert enhanced_status("5.1.1 <a@b>: unknown") == (5, 1, 1)
    assert enhanced_status("4.7.1 greylisted") == (4, 7, 1)
    assert enhanced_status("550 no enhanced code") is None
    assert enhanced_status("5.1.1.2 not one") is None
    assert parse_queue_id("2.0.0 Ok: queued as 4ZxY1b2c3d") == "4ZxY1b2c3d"
    assert parse_queue_id("OK id=1qABCD-000ABC-12") == "1qABCD-000ABC-12"
    assert parse_queue_id("2.0.0 Ok") is None
    assert xtext("a+b=c@example.net") == "a+2Bb+3Dc@example.net"
    assert xtext("a b") == "a+20b" and xtext("é") == "+C3+A9"
