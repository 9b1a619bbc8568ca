"""Twilio SMS: exact request bytes, auth, every outcome class, secrets kept out, signatures."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from pytest_httpx import HTTPXMock

from channels.base import Channel, Outgoing, Permanent, Transient, Unknown
from channels.twilio_sms import TwilioSmsChannel, validate_twilio_signature

SID = "AC" + "0123456789abcdef" * 2
KEY_SID = "SK" + "fedcba9876543210" * 2
TOKEN = "tw-auth-token-5f3a9c1e7b2d4086"
KEY_SECRET = "tw-api-key-secret-0d9e8f7a6b5c"
MSG_URL = f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"
ENV = {"TWILIO_TOKEN": TOKEN, "TWILIO_KEY_SECRET": KEY_SECRET}
CST = timezone(timedelta(hours=8))


def outgoing(**changes: Any) -> Outgoing:
    fields: dict[str, Any] = {
        "channel": "agent-sms",
        "kind": "sms",
        "recipient": "+8613800138000",
        "recipient_name": "张三",
        "subject": None,
        "body": "您好，请注销商户 898310058120001 的终端 12345678。案号 OUT-2026-000123。",
        "reference": "OUT-2026-000123",
        "idempotency_key": "a7f3c2e1d9b04c55",
        "notice_kind": "cancellation_request",
        "language": "zh-CN",
        "created_at": datetime(2026, 3, 2, 9, 30, tzinfo=CST),
    }
    fields.update(changes)
    return Outgoing(**fields)


def channel(**settings: Any) -> TwilioSmsChannel:
    base: dict[str, Any] = {
        "account_sid": SID,
        "auth_token_env": "TWILIO_TOKEN",
        "from_number": "+14155550100",
    }
    base.update(settings)
    return TwilioSmsChannel("twilio", base, ENV)


def message_resource(**changes: Any) -> dict[str, Any]:
    """A 201 Message resource as Twilio documents it."""
    resource: dict[str, Any] = {
        "account_sid": SID,
        "api_version": "2010-04-01",
        "body": "…",
        "date_created": "Mon, 02 Mar 2026 01:30:00 +0000",
        "date_sent": None,
        "date_updated": "Mon, 02 Mar 2026 01:30:00 +0000",
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": "+14155550100",
        "messaging_service_sid": None,
        "num_media": "0",
        "num_segments": "1",
        "price": None,
        "price_unit": "USD",
        "sid": "SM" + "1" * 32,
        "status": "queued",
        "subresource_uris": {
            "media": f"/2010-04-01/Accounts/{SID}/Messages/SM{'1' * 32}/Media.json"
        },
        "to": "+8613800138000",
        "uri": f"/2010-04-01/Accounts/{SID}/Messages/SM{'1' * 32}.json",
    }
    resource.update(changes)
    return resource


def twilio_error(code: int, status: int, message: str = "error") -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def assert_no_secret(*things: Any) -> None:
    basic = base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    for thing in things:
        text = thing if isinstance(thing, str) else json.dumps(thing, default=repr)
        for secret in (TOKEN, KEY_SECRET, basic):
            assert secret not in text


# -- settings ---------------------------------------------------------------------------------


def test_is_a_channel() -> None:
    ch = channel()
    assert isinstance(ch, Channel)
    assert ch.adapter == "twilio_sms" and ch.kinds == frozenset({"sms"})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"colour": "red"}, "colour"),
        ({"messaging_service_sid": "MG" + "0" * 32}, "exactly one of from_number"),
        ({"from_number": None}, "exactly one of from_number"),
        ({"auth_token_env": None}, "auth_token_env"),
        ({"api_key_sid": KEY_SID}, "api_key_sid and api_key_secret_env go together"),
        ({"api_key_sid": KEY_SID, "api_key_secret_env": "X"}, "not both"),
        ({"callback_auth_token_env": "X"}, "callback_auth_token_env is for API-key channels"),
        ({"account_sid": "AC123"}, "account_sid"),
        ({"base_url": "ftp://x"}, "base_url"),
    ],
)
def test_bad_settings_name_the_setting(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        channel(**settings)


def test_missing_secret_names_the_variable_not_a_value() -> None:
    with pytest.raises(ValueError, match="TWILIO_TOKEN is not set"):
        TwilioSmsChannel(
            "t",
            {"account_sid": SID, "auth_token_env": "TWILIO_TOKEN", "from_number": "+14155550100"},
            {},
        )


# -- prepare ----------------------------------------------------------------------------------


def test_prepare_is_the_exact_deterministic_form_body() -> None:
    ch = channel(status_callback="https://receipts.example.org/twilio")
    prepared = ch.prepare(outgoing())
    assert prepared == ch.prepare(outgoing())
    assert prepared.media_type == "application/x-www-form-urlencoded"
    assert parse_qsl(prepared.payload.decode(), strict_parsing=True) == [
        ("To", "+8613800138000"),
        ("From", "+14155550100"),
        ("Body", outgoing().body),
        ("StatusCallback", "https://receipts.example.org/twilio"),
    ]
    assert prepared.payload.startswith(b"To=%2B8613800138000&From=%2B14155550100&Body=%E6%82%A8")


def test_prepare_with_messaging_service() -> None:
    msid = "MG" + "a" * 32
    prepared = channel(from_number=None, messaging_service_sid=msid).prepare(outgoing())
    assert ("MessagingServiceSid", msid) in parse_qsl(prepared.payload.decode())
    assert "From" not in dict(parse_qsl(prepared.payload.decode()))


def test_long_body_is_trimmed_and_keeps_the_reference() -> None:
    prepared = channel(max_length=70).prepare(outgoing(body="通知正文" * 100))
    body = dict(parse_qsl(prepared.payload.decode()))["Body"]
    assert len(body) == 70 and body.endswith("… OUT-2026-000123")


def test_non_e164_recipient_is_a_bad_recipient() -> None:
    with pytest.raises(Permanent) as info:
        channel().prepare(outgoing(recipient="13800138000"))
    assert info.value.bad_recipient is True


# -- send: accepted ---------------------------------------------------------------------------


async def test_send_posts_the_payload_with_basic_auth(httpx_mock: HTTPXMock) -> None:
    ch = channel()
    prepared = ch.prepare(outgoing())
    basic = "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    httpx_mock.add_response(
        url=MSG_URL,
        method="POST",
        status_code=201,
        json=message_resource(),
        match_content=prepared.payload,
        match_headers={"Authorization": basic, "Content-Type": "application/x-www-form-urlencoded"},
        headers={"Twilio-Request-Id": "RQ123"},
    )
    receipt = await ch.send(prepared)
    await ch.aclose()
    request = httpx_mock.get_request()
    assert request is not None and request.content == prepared.payload
    assert receipt.accepted and receipt.provider_id == "SM" + "1" * 32
    assert receipt.response_type == "application/json"
    assert json.loads(receipt.response)["status"] == "queued"
    assert receipt.transcript["message_status"] == "queued"
    assert receipt.transcript["response"]["status"] == 201
    assert ["twilio-request-id", "RQ123"] in receipt.transcript["response"]["headers"]
    assert dict(receipt.transcript["request"]["headers"])["authorization"] == "***"
    json.dumps(receipt.transcript)  # serialisable as is
    assert_no_secret(receipt.transcript)


async def test_api_key_authenticates_with_key_sid(httpx_mock: HTTPXMock) -> None:
    ch = channel(auth_token_env=None, api_key_sid=KEY_SID, api_key_secret_env="TWILIO_KEY_SECRET")
    basic = "Basic " + base64.b64encode(f"{KEY_SID}:{KEY_SECRET}".encode()).decode()
    httpx_mock.add_response(
        url=MSG_URL,
        status_code=201,
        json=message_resource(),
        match_headers={"Authorization": basic},
    )
    receipt = await ch.send(ch.prepare(outgoing()))
    assert receipt.accepted


async def test_201_without_a_sid_is_unknown(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=MSG_URL, status_code=201, text="<html>proxy</html>")
    ch = channel()
    with pytest.raises(Unknown):
        await ch.send(ch.prepare(outgoing()))


# -- send: one test per outcome class ---------------------------------------------------------


async def send_and_catch(httpx_mock: HTTPXMock, **response: Any) -> Exception:
    httpx_mock.add_response(url=MSG_URL, method="POST", **response)
    ch = channel()
    with pytest.raises((Transient, Permanent, Unknown)) as info:
        await ch.send(ch.prepare(outgoing()))
    assert_no_secret(str(info.value), repr(info.value), info.value.transcript)
    return info.value


async def test_429_is_transient_and_honours_retry_after(httpx_mock: HTTPXMock) -> None:
    exc = await send_and_catch(
        httpx_mock,
        status_code=429,
        json=twilio_error(20429, 429, "Too Many Requests"),
        headers={"Retry-After": "7"},
    )
    assert isinstance(exc, Transient) and exc.retry_after == 7.0 and exc.code == "20429"


@pytest.mark.parametrize("code", [63038, 60728])
async def test_account_limits_are_transient(httpx_mock: HTTPXMock, code: int) -> None:
    exc = await send_and_catch(httpx_mock, status_code=400, json=twilio_error(code, 400))
    assert isinstance(exc, Transient) and exc.retry_after is None


@pytest.mark.parametrize("code", [21211, 21610, 21614, 21612, 21635])
async def test_dead_numbers_are_permanent_bad_recipient(httpx_mock: HTTPXMock, code: int) -> None:
    message = "The 'To' number 5551234567 is not a valid phone number."
    exc = await send_and_catch(httpx_mock, status_code=400, json=twilio_error(code, 400, message))
    assert isinstance(exc, Permanent) and exc.bad_recipient is True
    assert exc.code == str(code)
    assert message in str(exc)
    assert exc.response is not None and json.loads(exc.response)["code"] == code


@pytest.mark.parametrize(
    ("code", "status"), [(20003, 401), (21408, 400), (21608, 400), (21606, 400)]
)
async def test_our_misconfiguration_is_permanent_not_bad_recipient(
    httpx_mock: HTTPXMock, code: int, status: int
) -> None:
    exc = await send_and_catch(httpx_mock, status_code=status, json=twilio_error(code, status))
    assert isinstance(exc, Permanent) and exc.bad_recipient is False and exc.code == str(code)


async def test_unlisted_4xx_is_permanent_config(httpx_mock: HTTPXMock) -> None:
    exc = await send_and_catch(httpx_mock, status_code=400, json=twilio_error(21602, 400))
    assert isinstance(exc, Permanent) and exc.bad_recipient is False


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_unknown(httpx_mock: HTTPXMock, status: int) -> None:
    exc = await send_and_catch(httpx_mock, status_code=status, text="upstream error")
    assert isinstance(exc, Unknown) and exc.code == str(status)


async def test_timeout_after_sending_is_unknown(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_exception(httpx.ReadTimeout("timed out waiting for the server"), url=MSG_URL)
    ch = channel()
    with pytest.raises(Unknown) as info:
        await ch.send(ch.prepare(outgoing()))
    assert info.value.code == "ReadTimeout"
    assert info.value.transcript["error"] == "ReadTimeout"
    assert_no_secret(str(info.value), info.value.transcript, str(info.value.__cause__))


async def test_connect_error_is_transient(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_exception(httpx.ConnectError("connection refused"), url=MSG_URL)
    ch = channel()
    with pytest.raises(Transient) as info:
        await ch.send(ch.prepare(outgoing()))
    assert_no_secret(str(info.value), info.value.transcript)


async def test_created_but_already_failed_is_classified(httpx_mock: HTTPXMock) -> None:
    exc = await send_and_catch(
        httpx_mock,
        status_code=201,
        json=message_resource(status="failed", error_code=21610, error_message="unsubscribed"),
    )
    assert isinstance(exc, Permanent) and exc.bad_recipient is True and exc.code == "21610"


# -- X-Twilio-Signature: official vectors (twilio/twilio-python tests/unit/test_request_validator.py)

VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}
VECTOR_TOKEN = "12345"


def test_signature_official_vector() -> None:
    assert validate_twilio_signature(
        VECTOR_URL, VECTOR_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", VECTOR_TOKEN
    )


def test_signature_repeated_parameters() -> None:
    pairs = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    assert validate_twilio_signature(
        VECTOR_URL, pairs, "IK+Dwps556ElfBT0I3Rgjkr1wJU=", VECTOR_TOKEN
    )
    as_mapping = {"Sid": "CA123", "SidAccount": "AC123", "Digits": ["5678", "1234"]}
    assert validate_twilio_signature(
        VECTOR_URL, as_mapping, "IK+Dwps556ElfBT0I3Rgjkr1wJU=", VECTOR_TOKEN
    )


@pytest.mark.parametrize(
    ("url", "signature"),
    [
        ("https://mycompany.com:1234/myapp.php?foo=1&bar=2", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        ("http://mycompany.com:1234/myapp.php?foo=1&bar=2", "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
        ("https://mycompany.com/myapp.php?foo=1&bar=2", "kvajT1Ptam85bY51eRf/AJRuM3w="),
        ("http://mycompany.com/myapp.php?foo=1&bar=2", "0ZXoZLH/DfblKGATFgpif+LLRf4="),
    ],
)
def test_signature_with_and_without_port(url: str, signature: str) -> None:
    assert validate_twilio_signature(url, VECTOR_PARAMS, signature, VECTOR_TOKEN)


def test_signature_json_body() -> None:
    body = '{"property": "value", "boolean": true}'
    url = (
        VECTOR_URL + "&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
    )
    assert validate_twilio_signature(url, body, "a9nBmqA0ju/hNViExpshrM61xv4=", VECTOR_TOKEN)
    assert validate_twilio_signature(
        url, body.encode(), "a9nBmqA0ju/hNViExpshrM61xv4=", VECTOR_TOKEN
    )
    assert not validate_twilio_signature(
        url, body + " ", "a9nBmqA0ju/hNViExpshrM61xv4=", VECTOR_TOKEN
    )


@pytest.mark.parametrize(
    ("url", "params", "signature", "token"),
    [
        (VECTOR_URL, {**VECTOR_PARAMS, "Digits": "9999"}, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "12345"),
        (VECTOR_URL, VECTOR_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "54321"),
        (VECTOR_URL + "&x=1", VECTOR_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "12345"),
        (VECTOR_URL, VECTOR_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8", "12345"),
        (VECTOR_URL, VECTOR_PARAMS, "", "12345"),
    ],
)
def test_signature_rejects_tampering(
    url: str, params: dict[str, str], signature: str, token: str
) -> None:
    assert not validate_twilio_signature(url, params, signature, token)
