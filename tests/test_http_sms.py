"""Generic HTTP SMS gateway: templates, encodings, secrets out of the proof, every outcome."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, quote_plus

import httpx
import pytest
from pytest_httpx import HTTPXMock

from channels.base import Channel, Outgoing, Permanent, Transient, Unknown
from channels.http_sms import HttpSmsChannel, Template, _national, lookup

URL = "https://sms.example.cn/api/send"
API_KEY = "gw-apikey-7c1f0e9d/2b+a"  # '/' and '+' change under URL encoding
TOKEN = "gw-header-token-33aa51"
ENV = {"GW_APIKEY": API_KEY, "GW_TOKEN": TOKEN}
CST = timezone(timedelta(hours=8))


def outgoing(**changes: Any) -> Outgoing:
    fields: dict[str, Any] = {
        "channel": "gw",
        "kind": "sms",
        "recipient": "+8613800138000",
        "recipient_name": None,
        "subject": None,
        "body": "请注销终端 12345678，案号 OUT-2026-000123。",
        "reference": "OUT-2026-000123",
        "idempotency_key": "a7f3c2e1d9b04c55",
        "notice_kind": "cancellation_request",
        "language": "zh-CN",
        "created_at": datetime(2026, 3, 2, 9, 30, tzinfo=CST),
        "params": {"terminal": "12345678"},
    }
    fields.update(changes)
    return Outgoing(**fields)


def channel(**settings: Any) -> HttpSmsChannel:
    base: dict[str, Any] = {
        "url": URL,
        "request": {
            "mobile": "{recipient_national}",
            "content": "【商户】{text}",
            "ext": "{idempotency_key}",
            "type": 1,
        },
        "success_path": "code",
        "success_values": ["0"],
        "id_path": "data.sid",
        "message_path": "msg",
        "bad_recipient_codes": ["1004", 1005],
        "permanent_codes": ["1001"],
        "transient_codes": ["1008"],
    }
    base.update(settings)
    return HttpSmsChannel("gw", base, ENV)


def assert_no_secret(*things: Any) -> None:
    for thing in things:
        text = thing if isinstance(thing, str) else json.dumps(thing, default=repr)
        for secret in (API_KEY, TOKEN, quote_plus(API_KEY)):
            assert secret not in text


# -- templates --------------------------------------------------------------------------------


def test_template_substitution_is_literal() -> None:
    t = Template("【{param.shop}】{text} {{ref={reference}}}")
    out = t.render({"text": "{param.shop} {reference}", "reference": "OUT-1"}, {"shop": "{text}"})
    assert out == "【{text}】{param.shop} {reference} {ref=OUT-1}"
    assert t.params == {"shop"}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{recipent}", "unknown placeholder"),
        ("{msg.__class__}", "unknown placeholder"),
        ("{param.}", "unknown placeholder"),
        ("a { b", "stray"),
        ("a } b", "stray"),
    ],
)
def test_template_errors(source: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Template(source)


def test_lookup_follows_dicts_and_lists() -> None:
    doc = {"data": [{"sid": 42}], "code": 0}
    assert lookup(doc, "data.0.sid") == 42
    assert lookup(doc, "code") == 0
    assert repr(lookup(doc, "data.1.sid")) == "<missing>"
    assert repr(lookup(doc, "code.x")) == "<missing>"


# -- settings ---------------------------------------------------------------------------------


def test_is_a_channel() -> None:
    assert isinstance(channel(), Channel)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "GET"}, "needs encoding"),
        ({"success_values": []}, "success_values"),
        ({"request": {"content": "{txt}"}}, "request: unknown placeholder"),
        ({"fields_env": {"mobile": "GW_APIKEY"}}, "already in request"),
        ({"transient_codes": ["1001"]}, "only one of the code tables"),
        ({"fields_env": {"key": "NOPE"}}, "fields_env.key: environment variable NOPE is not set"),
        ({"verify": False}, "verify"),
        ({"headers": {"X-Api-Key": "abc"}}, "headers.X-Api-Key: credentials go in headers_env"),
        ({"headers": {"Authorization": "Bearer x"}}, "credentials go in headers_env"),
        ({"request": {"password": "hunter2", "m": "{text}"}}, "request.password: credentials"),
    ],
)
def test_bad_settings(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        channel(**settings)


# -- prepare and the bytes sent ---------------------------------------------------------------


async def test_json_payload_is_exactly_what_is_sent(httpx_mock: HTTPXMock) -> None:
    ch = channel(headers={"X-App": "outreach"}, headers_env={"X-Api-Token": "GW_TOKEN"})
    prepared = ch.prepare(outgoing())
    assert prepared == ch.prepare(outgoing())
    assert (
        prepared.payload
        == (
            '{"mobile":"13800138000","content":"【商户】请注销终端 12345678，案号 OUT-2026-000123。",'
            '"ext":"a7f3c2e1d9b04c55","type":1}'
        ).encode()
    )
    httpx_mock.add_response(
        url=URL,
        method="POST",
        match_content=prepared.payload,
        match_headers={
            "X-Api-Token": TOKEN,
            "X-App": "outreach",
            "Content-Type": "application/json; charset=utf-8",
        },
        json={"code": 0, "msg": "ok", "data": {"sid": 9006197}},
    )
    receipt = await ch.send(prepared)
    request = httpx_mock.get_request()
    assert request is not None and request.content == prepared.payload
    assert receipt.accepted and receipt.provider_id == "9006197"
    assert dict(receipt.transcript["request"]["headers"])["x-api-token"] == "***"
    assert_no_secret(receipt.transcript, prepared.payload.decode(), prepared.meta)


async def test_form_secret_field_is_masked_in_the_payload_only(httpx_mock: HTTPXMock) -> None:
    ch = channel(encoding="form", fields_env={"apikey": "GW_APIKEY"})
    prepared = ch.prepare(outgoing())
    fields = parse_qsl(prepared.payload.decode(), strict_parsing=True)
    assert fields[-1] == ("apikey", "***")  # encoded as apikey=%2A%2A%2A
    assert ("type", "1") in fields
    httpx_mock.add_response(url=URL, json={"code": "0", "data": {"sid": "abc"}})
    receipt = await ch.send(prepared)
    request = httpx_mock.get_request()
    assert request is not None
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded; charset=utf-8"
    sent = parse_qsl(request.content.decode(), strict_parsing=True)
    assert sent == [*fields[:-1], ("apikey", API_KEY)]  # only the secret differs
    assert request.content.replace(quote_plus(API_KEY).encode(), b"%2A%2A%2A") == prepared.payload
    assert_no_secret(receipt.transcript, prepared.payload.decode(), prepared.meta)


async def test_payload_that_does_not_match_its_fields_is_refused(httpx_mock: HTTPXMock) -> None:
    ch = channel(encoding="form", fields_env={"apikey": "GW_APIKEY"})
    prepared = ch.prepare(outgoing())
    forged = type(prepared)(
        prepared.outgoing, prepared.payload + b"&x=1", prepared.media_type, None, prepared.meta
    )
    with pytest.raises(Permanent, match="unrecorded"):
        await ch.send(forged)


async def test_query_get_keeps_the_secret_out_of_the_record(httpx_mock: HTTPXMock) -> None:
    ch = channel(method="GET", encoding="query", fields_env={"apikey": "GW_APIKEY"})
    prepared = ch.prepare(outgoing())
    httpx_mock.add_response(method="GET", json={"code": 0})
    receipt = await ch.send(prepared)
    request = httpx_mock.get_request()
    assert request is not None and request.content == b""
    assert request.url.query.replace(quote_plus(API_KEY).encode(), b"%2A%2A%2A") == prepared.payload
    assert dict(parse_qsl(request.url.query.decode()))["apikey"] == API_KEY
    assert receipt.transcript["request"]["url"] == f"{URL}?{prepared.payload.decode()}"
    assert_no_secret(receipt.transcript)


async def test_query_timeout_text_has_no_secret(httpx_mock: HTTPXMock) -> None:
    ch = channel(method="GET", encoding="query", fields_env={"apikey": "GW_APIKEY"})
    httpx_mock.add_exception(httpx.ReadTimeout("timed out"))
    with pytest.raises(Unknown) as info:
        await ch.send(ch.prepare(outgoing()))
    assert_no_secret(str(info.value), repr(info.value), info.value.transcript)


def test_gbk_gateway() -> None:
    ch = channel(encoding="form", charset="gbk")
    payload = ch.prepare(outgoing()).payload
    content = dict(parse_qsl(payload.decode(), encoding="gbk"))["content"]
    assert content.startswith("【商户】请注销终端")
    with pytest.raises(Permanent, match="gbk cannot encode"):
        ch.prepare(outgoing(body="emoji 🙂 OUT-2026-000123"))


def test_template_parameters_and_missing_ones() -> None:
    ch = channel(request={"content": "终端{param.terminal}：{text}", "to": "{recipient}"})
    payload = json.loads(ch.prepare(outgoing()).payload)
    assert payload["content"].startswith("终端12345678：")
    assert payload["to"] == "+8613800138000"
    with pytest.raises(Permanent, match="no parameter 'terminal'") as info:
        ch.prepare(outgoing(params={}))
    assert info.value.bad_recipient is False


def test_text_is_trimmed_with_the_reference_kept() -> None:
    payload = json.loads(channel(max_length=40).prepare(outgoing(body="长" * 300)).payload)
    assert payload["content"] == "【商户】" + "长" * 23 + "… OUT-2026-000123"


# -- outcomes ---------------------------------------------------------------------------------


async def outcome(httpx_mock: HTTPXMock, **response: Any) -> Exception:
    httpx_mock.add_response(url=URL, **response)
    ch = channel(headers_env={"X-Api-Token": "GW_TOKEN"}, fields_env={"apikey": "GW_APIKEY"})
    with pytest.raises((Transient, Permanent, Unknown)) as info:
        await ch.send(ch.prepare(outgoing()))
    assert_no_secret(str(info.value), repr(info.value), info.value.transcript)
    return info.value


@pytest.mark.parametrize("code", ["1004", 1005])
async def test_bad_recipient_code(httpx_mock: HTTPXMock, code: Any) -> None:
    exc = await outcome(httpx_mock, json={"code": code, "msg": "号码无效"})
    assert isinstance(exc, Permanent) and exc.bad_recipient is True and exc.code == str(code)
    assert "号码无效" in str(exc)


async def test_permanent_code(httpx_mock: HTTPXMock) -> None:
    exc = await outcome(httpx_mock, json={"code": 1001, "msg": "签名未报备"})
    assert isinstance(exc, Permanent) and exc.bad_recipient is False and exc.code == "1001"


async def test_transient_code_honours_retry_after(httpx_mock: HTTPXMock) -> None:
    exc = await outcome(httpx_mock, json={"code": 1008}, headers={"Retry-After": "30"})
    assert isinstance(exc, Transient) and exc.retry_after == 30.0 and exc.code == "1008"


async def test_unclassified_failure_code_is_permanent_config(httpx_mock: HTTPXMock) -> None:
    exc = await outcome(httpx_mock, json={"code": 9999, "msg": "?"})
    assert isinstance(exc, Permanent) and exc.bad_recipient is False
    assert "unclassified" in str(exc)


async def test_2xx_without_the_success_field_is_unknown(httpx_mock: HTTPXMock) -> None:
    exc = await outcome(httpx_mock, text="<html>维护中</html>")
    assert isinstance(exc, Unknown)


async def test_code_in_a_4xx_body_wins_over_the_status(httpx_mock: HTTPXMock) -> None:
    exc = await outcome(httpx_mock, status_code=400, json={"code": "1004"})
    assert isinstance(exc, Permanent) and exc.bad_recipient is True


@pytest.mark.parametrize("status", [429, 503])
async def test_429_and_503_are_transient(httpx_mock: HTTPXMock, status: int) -> None:
    exc = await outcome(httpx_mock, status_code=status, headers={"Retry-After": "12"})
    assert isinstance(exc, Transient) and exc.retry_after == 12.0


async def test_408_is_transient(httpx_mock: HTTPXMock) -> None:
    assert isinstance(await outcome(httpx_mock, status_code=408), Transient)


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_other_5xx_is_unknown(httpx_mock: HTTPXMock, status: int) -> None:
    assert isinstance(await outcome(httpx_mock, status_code=status, text="oops"), Unknown)


async def test_plain_4xx_is_permanent_config(httpx_mock: HTTPXMock) -> None:
    exc = await outcome(httpx_mock, status_code=401, text="unauthorised")
    assert isinstance(exc, Permanent) and exc.bad_recipient is False and exc.code == "401"


async def test_timeout_after_send_is_unknown(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_exception(httpx.ReadTimeout("timed out"), url=URL)
    ch = channel()
    with pytest.raises(Unknown):
        await ch.send(ch.prepare(outgoing()))


async def test_connect_error_is_transient(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_exception(httpx.ConnectError("refused"), url=URL)
    ch = channel()
    with pytest.raises(Transient):
        await ch.send(ch.prepare(outgoing()))


async def test_no_success_path_means_any_2xx_is_accepted(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=URL, text="OK:12345")
    ch = channel(success_path=None, success_values=[], id_path=None)
    receipt = await ch.send(ch.prepare(outgoing()))
    assert receipt.accepted and receipt.provider_id is None and receipt.response == b"OK:12345"


async def test_boolean_success_flag(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=URL, json={"success": True, "error": {"code": None}, "id": "x1"})
    ch = channel(
        success_path="success", success_values=["true"], code_path="error.code", id_path="id"
    )
    receipt = await ch.send(ch.prepare(outgoing()))
    assert receipt.accepted and receipt.provider_id == "x1"


@pytest.mark.parametrize(
    ("recipient", "national"),
    [
        ("+8613900000001", "13900000001"),
        ("+8675588888888", "75588888888"),  # Shenzhen landline: area code without the trunk 0
        ("+14155550100", "4155550100"),
        ("+447911123456", "7911123456"),
        ("+390612345678", "0612345678"),  # Italy keeps its significant leading zero
        ("+85291234567", "91234567"),
        ("13900000001", "13900000001"),  # not E.164: as given
        ("95516", "95516"),
    ],
)
def test_national_number(recipient: str, national: str) -> None:
    assert _national(recipient) == national


def test_national_number_agrees_with_phonenumbers() -> None:
    """The fast split gives what a full parse gives, for every region's example mobile."""
    import phonenumbers

    checked = 0
    for region in phonenumbers.SUPPORTED_REGIONS:
        example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        if example is None or example.italian_leading_zero:
            continue
        e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
        assert _national(e164) == str(example.national_number), region
        checked += 1
    assert checked > 200
