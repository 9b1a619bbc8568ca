"""Webhooks: canonical body sent byte for byte, the signature scheme, every outcome class."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock

from channels.base import Channel, Outgoing, Permanent, Transient, Unknown
from channels.webhook import WebhookChannel, sign_webhook, verify_webhook_signature

HOOK = "https://hooks.acquirer.example.com/outreach/notices"
SECRET = "whsec-2f8d7c6b5a49"
CST = timezone(timedelta(hours=8))


def outgoing(**changes: Any) -> Outgoing:
    fields: dict[str, Any] = {
        "channel": "acquirer-hook",
        "kind": "webhook",
        "recipient": HOOK,
        "recipient_name": None,
        "subject": "终端注销申请 OUT-2026-000123",
        "body": "请注销商户 898310058120001 的终端 12345678。",
        "reference": "OUT-2026-000123",
        "idempotency_key": "a7f3c2e1d9b04c55",
        "notice_kind": "cancellation_request",
        "language": "zh-CN",
        "created_at": datetime(2026, 3, 2, 9, 30, tzinfo=CST),
        "params": {"terminal": "12345678"},
    }
    fields.update(changes)
    return Outgoing(**fields)


def channel(**settings: Any) -> WebhookChannel:
    return WebhookChannel(
        "hook", {"secret_env": "HOOK_SECRET", **settings}, {"HOOK_SECRET": SECRET}
    )


def test_is_a_channel() -> None:
    ch = channel()
    assert isinstance(ch, Channel) and ch.kinds == frozenset({"webhook"})


def test_missing_secret_names_the_variable() -> None:
    with pytest.raises(ValueError, match="HOOK_SECRET is not set"):
        WebhookChannel("hook", {"secret_env": "HOOK_SECRET"}, {})


@pytest.mark.parametrize("header", ["Authorization", "X-Api-Key", "X-Auth-Token"])
def test_static_headers_cannot_hold_credentials(header: str) -> None:
    with pytest.raises(ValueError, match="credentials"):
        channel(headers={header: "x"})


def test_payload_is_canonical_json() -> None:
    prepared = channel().prepare(outgoing())
    assert prepared == channel().prepare(outgoing())
    assert (
        prepared.payload
        == (
            '{"body":"请注销商户 898310058120001 的终端 12345678。",'
            '"created_at":"2026-03-02T09:30:00+08:00","idempotency_key":"a7f3c2e1d9b04c55",'
            '"notice_kind":"cancellation_request","params":{"terminal":"12345678"},'
            f'"recipient":"{HOOK}","reference":"OUT-2026-000123",'
            '"subject":"终端注销申请 OUT-2026-000123"}'
        ).encode()
    )
    assert prepared.media_type == "application/json"
    assert prepared.message_id == "a7f3c2e1d9b04c55"


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",
        "ftp://hooks.example.com/x",
        "https://user:pw@hooks.example.com/",
    ],
)
def test_unsafe_urls_are_bad_recipients(url: str) -> None:
    with pytest.raises(Permanent) as info:
        channel().prepare(outgoing(recipient=url))
    assert info.value.bad_recipient is True


def test_http_allowed_only_when_configured() -> None:
    channel(allow_http=True).prepare(outgoing(recipient="http://127.0.0.1:8080/hook"))


async def test_send_signs_and_posts_the_exact_payload(httpx_mock: HTTPXMock) -> None:
    ch = channel(headers={"X-Sender": "outreach"})
    prepared = ch.prepare(outgoing())
    httpx_mock.add_response(
        url=HOOK,
        method="POST",
        match_content=prepared.payload,
        match_headers={
            "Idempotency-Key": "a7f3c2e1d9b04c55",
            "Content-Type": "application/json; charset=utf-8",
            "X-Sender": "outreach",
        },
        status_code=202,
        headers={"X-Request-Id": "req-77"},
        json={"received": True},
    )
    before = int(time.time())
    receipt = await ch.send(prepared)
    await ch.aclose()
    request = httpx_mock.get_request()
    assert request is not None and request.content == prepared.payload
    timestamp = request.headers["X-Outreach-Timestamp"]
    assert before <= int(timestamp) <= int(time.time())
    assert verify_webhook_signature(
        SECRET, timestamp, request.content, request.headers["X-Outreach-Signature"]
    )
    assert receipt.accepted and receipt.provider_id == "req-77"
    recorded = dict(receipt.transcript["request"]["headers"])
    assert recorded["x-outreach-signature"] == request.headers["X-Outreach-Signature"]
    assert SECRET not in json.dumps(receipt.transcript)


# -- the signature scheme ---------------------------------------------------------------------


def test_signature_known_answer() -> None:
    # printf '%s' '1700000000.{"reference":"OUT-2026-000123"}' | openssl dgst -sha256 -hmac 'whsec_test_5d2c'
    body = b'{"reference":"OUT-2026-000123"}'
    expected = "sha256=0e49e326c84fc242c9f01eb68b3e52bb5d58929fd4018f40e176d4032a1471a9"
    assert sign_webhook("whsec_test_5d2c", "1700000000", body) == expected
    assert verify_webhook_signature("whsec_test_5d2c", "1700000000", body, expected, now=1700000100)


@pytest.mark.parametrize(
    ("secret", "timestamp", "body", "signature_of", "now"),
    [
        ("other", "1700000000", b"{}", b"{}", 1700000000),  # wrong secret
        (SECRET, "1700000000", b'{"x":1}', b"{}", 1700000000),  # body changed
        (SECRET, "1700000000", b"{}", b"{}", 1700000301),  # too old: replay
        (SECRET, "1700000000", b"{}", b"{}", 1699999699),  # from the future
        (SECRET, "17e8", b"{}", b"{}", 1700000000),  # not a plain number
    ],
)
def test_verification_rejects(
    secret: str, timestamp: str, body: bytes, signature_of: bytes, now: float
) -> None:
    signature = sign_webhook(SECRET, timestamp, signature_of)
    assert not verify_webhook_signature(secret, timestamp, body, signature, now=now)


def test_verification_needs_the_scheme_prefix() -> None:
    signature = sign_webhook(SECRET, "1700000000", b"{}")
    bare = signature.removeprefix("sha256=")
    assert not verify_webhook_signature(SECRET, "1700000000", b"{}", bare, now=1700000000)
    assert verify_webhook_signature(SECRET, "1700000000", b"{}", signature, tolerance=None)


# -- outcomes ---------------------------------------------------------------------------------


async def outcome(httpx_mock: HTTPXMock, **response: Any) -> Exception:
    httpx_mock.add_response(url=HOOK, **response)
    ch = channel()
    with pytest.raises((Transient, Permanent, Unknown)) as info:
        await ch.send(ch.prepare(outgoing()))
    assert SECRET not in str(info.value) and SECRET not in json.dumps(info.value.transcript)
    return info.value


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
async def test_retryable_statuses_are_transient(httpx_mock: HTTPXMock, status: int) -> None:
    exc = await outcome(httpx_mock, status_code=status, headers={"Retry-After": "3"})
    assert isinstance(exc, Transient) and exc.retry_after == 3.0 and exc.code == str(status)


@pytest.mark.parametrize("status", [404, 410])
async def test_gone_endpoint_is_a_bad_recipient(httpx_mock: HTTPXMock, status: int) -> None:
    exc = await outcome(httpx_mock, status_code=status)
    assert isinstance(exc, Permanent) and exc.bad_recipient is True


@pytest.mark.parametrize("status", [400, 401, 403, 413, 422])
async def test_refused_request_is_permanent_config(httpx_mock: HTTPXMock, status: int) -> None:
    exc = await outcome(httpx_mock, status_code=status, json={"error": "bad signature"})
    assert isinstance(exc, Permanent) and exc.bad_recipient is False
    assert exc.response == b'{"error":"bad signature"}'


async def test_redirect_is_not_followed(httpx_mock: HTTPXMock) -> None:
    exc = await outcome(
        httpx_mock, status_code=308, headers={"Location": "https://elsewhere.example.com/"}
    )
    assert isinstance(exc, Permanent) and exc.bad_recipient is True
    assert "elsewhere.example.com" in str(exc)
    assert len(httpx_mock.get_requests()) == 1


async def test_timeout_after_send_is_unknown(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_exception(httpx.ReadTimeout("timed out"), url=HOOK)
    ch = channel()
    with pytest.raises(Unknown) as info:
        await ch.send(ch.prepare(outgoing()))
    assert SECRET not in str(info.value) and SECRET not in json.dumps(info.value.transcript)


async def test_connect_error_is_transient(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_exception(httpx.ConnectError("refused"), url=HOOK)
    ch = channel()
    with pytest.raises(Transient):
        await ch.send(ch.prepare(outgoing()))
