"""Tencent Cloud SMS adapter: the official TC3 vector, the exact request, every outcome.

No network: pytest-httpx answers with bodies shaped like Tencent's documented ones. The clock
is fixed, so the signature on the wire can be recomputed from the captured request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock

from channels.base import ChannelError, Outgoing, Permanent, Transient, Unknown
from channels.tencent_sms import (
    TencentSmsChannel,
    authorization,
    canonical_request,
    classify,
    hashed_payload,
    seconds_until_next_0800,
    sign,
    string_to_sign,
    utc_date,
)

SECRET = "tcS3cr3tKey-must-never-be-recorded"
SECRET_ID = "AKIDtestSecretId0000000000000000"
ENV = {"TC_SECRET_ID": SECRET_ID, "TC_SECRET_KEY": SECRET}
NOW = datetime(2026, 3, 2, 2, 0, 0, tzinfo=UTC)  # 10:00 in Beijing
SETTINGS: dict[str, Any] = {
    "secret_id_env": "TC_SECRET_ID",
    "secret_key_env": "TC_SECRET_KEY",
    "sdk_app_id": "1400006666",
    "sign_name": "某某商户",
    "templates": {"cancellation_request": "449739", "reminder": "449740"},
    "template_params": {"cancellation_request": ["merchant_no", "terminal_no", "days"]},
}


def outgoing(**changes: Any) -> Outgoing:
    fields: dict[str, Any] = {
        "channel": "agent-sms-tc",
        "kind": "sms",
        "recipient": "+8613800138000",
        "recipient_name": "张三",
        "subject": None,
        "body": "尊敬的代理商：请于五个工作日内办理终端注销。这段正文不得外发。",
        "reference": "OUT-2026-000123",
        "idempotency_key": "a7f3c2e1d9b04c55",
        "notice_kind": "cancellation_request",
        "language": "zh-CN",
        "created_at": datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
        # insertion order deliberately differs from the template's positional order
        "params": {"days": "5", "terminal_no": "10012345", "merchant_no": "898310012340001"},
    }
    fields.update(changes)
    return Outgoing(**fields)


def make_channel(**settings: Any) -> TencentSmsChannel:
    return TencentSmsChannel("agent-sms-tc", {**SETTINGS, **settings}, ENV, clock=lambda: NOW)


@pytest.fixture
async def channel() -> AsyncIterator[TencentSmsChannel]:
    ch = make_channel()
    yield ch
    await ch.aclose()


def ok_body(code: str = "Ok", message: str = "send success", fee: int = 1) -> dict[str, Any]:
    """The documented SendSms 2021-01-11 answer for one number."""
    return {
        "Response": {
            "SendStatusSet": [
                {
                    "SerialNo": "5000:1045710669157053657849499619",
                    "PhoneNumber": "+8613800138000",
                    "Fee": fee,
                    "SessionContext": "a7f3c2e1d9b04c55",
                    "Code": code,
                    "Message": message,
                    "IsoCode": "CN",
                }
            ],
            "RequestId": "a0aabda6-cf91-4f3e-a81f-9198114a2279",
        }
    }


def error_body(code: str, message: str) -> dict[str, Any]:
    """The documented API 3.0 error envelope."""
    return {
        "Response": {
            "Error": {"Code": code, "Message": message},
            "RequestId": "ed93f3cb-f35e-473f-b9f3-0d451b8b79c6",
        }
    }


def assert_nothing_secret(*things: Any) -> None:
    """The SecretKey never appears in anything the engine will record or log."""
    for thing in things:
        if isinstance(thing, ChannelError):
            text = " ".join(
                [str(thing), thing.detail, json.dumps(thing.transcript, ensure_ascii=False)]
            )
            text += (thing.response or b"").decode("utf-8", "replace")
        elif isinstance(thing, bytes):
            text = thing.decode("utf-8", "replace")
        else:
            text = json.dumps(thing, ensure_ascii=False, default=str)
        assert SECRET not in text


# ---------------------------------------------------------------- official signature vector


def test_tc3_signature_matches_tencent_cvm_describeinstances_example() -> None:
    """providers.md §9.3: the "签名方法 v3" worked example with the unmasked example key."""
    payload = (
        b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
    )
    assert hashed_payload(payload) == (
        "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
    )
    headers = {
        "content-type": "application/json; charset=utf-8",
        "host": "cvm.tencentcloudapi.com",
    }
    canonical, signed_headers = canonical_request("POST", "/", "", headers, payload)
    assert canonical == (
        "POST\n/\n\ncontent-type:application/json; charset=utf-8\n"
        "host:cvm.tencentcloudapi.com\n\ncontent-type;host\n"
        "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
    )
    to_sign = string_to_sign(1551113065, "cvm", canonical)
    assert to_sign == (
        "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n"
        "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
    )
    signature = sign("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE", 1551113065, "cvm", to_sign)
    assert signature == "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
    secret_id = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE"
    assert authorization(secret_id, 1551113065, "cvm", signed_headers, signature) == (
        "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/"
        "tc3_request, SignedHeaders=content-type;host, "
        "Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
    )


def test_credential_date_is_the_utc_date_not_beijings() -> None:
    # 1551113065 is 2019-02-26 00:44:25 in Beijing but still 2019-02-25 in UTC.
    assert utc_date(1551113065) == "2019-02-25"


# ---------------------------------------------------------------- prepare


async def test_prepare_is_the_exact_body_with_positional_params(
    channel: TencentSmsChannel,
) -> None:
    msg = outgoing()
    prepared = channel.prepare(msg)
    assert prepared.payload == channel.prepare(msg).payload
    assert prepared.media_type == "application/json"
    assert prepared.message_id == "a7f3c2e1d9b04c55"
    body = json.loads(prepared.payload)
    assert body == {
        "PhoneNumberSet": ["+8613800138000"],
        "SmsSdkAppId": "1400006666",
        "SignName": "某某商户",
        "TemplateId": "449739",
        "TemplateParamSet": ["898310012340001", "10012345", "5"],  # template order, not dict order
        "SessionContext": "a7f3c2e1d9b04c55",
    }
    assert prepared.payload == json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert "不得外发".encode() not in prepared.payload


async def test_prepare_refuses_what_it_cannot_send(channel: TencentSmsChannel) -> None:
    with pytest.raises(Permanent) as missing_param:
        channel.prepare(outgoing(params={"merchant_no": "898310012340001"}))
    assert missing_param.value.bad_recipient is False
    assert "terminal_no, days" in missing_param.value.detail
    with pytest.raises(Permanent) as no_template:
        channel.prepare(outgoing(notice_kind="complaint_acquirer"))
    assert no_template.value.bad_recipient is False
    with pytest.raises(Permanent) as bad_number:
        channel.prepare(outgoing(recipient="13800138000"))  # not E.164
    assert bad_number.value.bad_recipient is True


async def test_kind_without_template_params_sends_no_variables() -> None:
    ch = make_channel()
    try:
        body = json.loads(ch.prepare(outgoing(notice_kind="reminder")).payload)
        assert body["TemplateId"] == "449740"
        assert body["TemplateParamSet"] == []
    finally:
        await ch.aclose()


async def test_numeric_ids_from_toml_are_kept_as_text() -> None:
    ch = make_channel(sdk_app_id=1400006666, templates={"cancellation_request": 449739})
    try:
        body = json.loads(ch.prepare(outgoing()).payload)
        assert body["SmsSdkAppId"] == "1400006666"
        assert body["TemplateId"] == "449739"
    finally:
        await ch.aclose()


@pytest.mark.parametrize(
    ("change", "env", "needle"),
    [
        ({"secret_key": "inline"}, ENV, "secret_key"),  # extra keys (inline secrets) refused
        ({"template_params": {"complaint_regulator": ["x"]}}, ENV, "complaint_regulator"),
        ({"templates": {"remind": "1"}}, ENV, "remind"),
        ({"endpoint": "https://sms.tencentcloudapi.com/v2"}, ENV, "scheme://host"),
        ({}, {"TC_SECRET_ID": SECRET_ID}, "TC_SECRET_KEY"),
    ],
)
def test_bad_settings_fail_at_load_time_naming_the_setting(
    change: dict[str, Any], env: dict[str, str], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        TencentSmsChannel("agent-sms-tc", {**SETTINGS, **change}, env)


# ---------------------------------------------------------------- send: success


async def test_success_sends_prepared_bytes_signed_and_records_without_secret(
    channel: TencentSmsChannel, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(method="POST", url="https://sms.tencentcloudapi.com/", json=ok_body())
    prepared = channel.prepare(outgoing())

    receipt = await channel.send(prepared)

    assert receipt.accepted is True
    assert receipt.provider_id == "5000:1045710669157053657849499619"
    request = httpx_mock.get_request()
    assert request is not None
    assert request.content == prepared.payload  # the hashed, chained bytes are what went out
    body = json.loads(request.content)
    assert body["TemplateParamSet"] == ["898310012340001", "10012345", "5"]
    assert body["SessionContext"] == "a7f3c2e1d9b04c55"
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert request.headers["x-tc-action"] == "SendSms"
    assert request.headers["x-tc-version"] == "2021-01-11"
    assert request.headers["x-tc-region"] == "ap-guangzhou"
    timestamp = int(request.headers["x-tc-timestamp"])
    assert timestamp == int(NOW.timestamp())

    # Recompute the signature from the captured request.
    canonical, signed_headers = canonical_request(
        "POST",
        "/",
        "",
        {name: request.headers[name] for name in ("content-type", "host", "x-tc-action")},
        request.content,
    )
    assert "x-tc-action:sendsms\n" in canonical  # header values are lower-cased when signed
    signature = sign(SECRET, timestamp, "sms", string_to_sign(timestamp, "sms", canonical))
    assert request.headers["authorization"] == authorization(
        SECRET_ID, timestamp, "sms", signed_headers, signature
    )
    assert signed_headers == "content-type;host;x-tc-action"

    t = receipt.transcript
    assert t["status"] == 200
    assert t["request_id"] == "a0aabda6-cf91-4f3e-a81f-9198114a2279"
    assert t["send_status"]["Code"] == "Ok"
    assert t["send_status"]["SessionContext"] == "a7f3c2e1d9b04c55"
    assert t["request_headers"]["authorization"].endswith("Signature=REDACTED")
    assert (
        f"Credential={SECRET_ID}/2026-03-02/sms/tc3_request"
        in t["request_headers"]["authorization"]
    )
    assert signature not in json.dumps(t)
    assert_nothing_secret(t, receipt.response)


# ---------------------------------------------------------------- send: failures


@pytest.mark.parametrize(
    ("code", "message", "retry_after"),
    [
        (
            "LimitExceeded.PhoneNumberDailyLimit",
            "单个手机号日下发短信条数超过设定的上限",
            14 * 3600.0,  # 10:00 Beijing -> next midnight
        ),
        (
            "LimitExceeded.PhoneNumberThirtySecondLimit",
            "单个手机号30秒内下发短信条数超过设定的上限",
            30.0,
        ),
        (
            "LimitExceeded.PhoneNumberOneHourLimit",
            "单个手机号1小时内下发短信条数超过设定的上限",
            3600.0,
        ),
    ],
)
async def test_per_number_limit_is_transient_with_the_window_as_retry_after(
    channel: TencentSmsChannel,
    httpx_mock: HTTPXMock,
    code: str,
    message: str,
    retry_after: float,
) -> None:
    httpx_mock.add_response(method="POST", json=ok_body(code, message, fee=0))
    with pytest.raises(Transient) as caught:
        await channel.send(channel.prepare(outgoing()))
    assert caught.value.retry_after == retry_after
    assert caught.value.code == code
    assert_nothing_secret(caught.value)


async def test_request_rate_limit_in_error_envelope_is_transient(
    channel: TencentSmsChannel, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        method="POST",
        json=error_body("RequestLimitExceeded", "Your current request times equals to `3001`"),
    )
    with pytest.raises(Transient) as caught:
        await channel.send(channel.prepare(outgoing()))
    assert caught.value.retry_after == 60.0


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("FailedOperation.PhoneNumberInBlacklist", "手机号在免打扰名单库中"),
        ("InvalidParameterValue.IncorrectPhoneNumber", "手机号格式错误"),
    ],
)
async def test_blacklisted_or_invalid_number_is_permanent_and_blames_the_recipient(
    channel: TencentSmsChannel, httpx_mock: HTTPXMock, code: str, message: str
) -> None:
    httpx_mock.add_response(method="POST", json=ok_body(code, message, fee=0))
    with pytest.raises(Permanent) as caught:
        await channel.send(channel.prepare(outgoing()))
    assert caught.value.bad_recipient is True
    assert caught.value.code == code
    assert caught.value.transcript["send_status"]["Code"] == code
    assert_nothing_secret(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        error_body(
            "AuthFailure.SignatureFailure",
            "The provided credentials could not be validated. "
            "Please check your signature is correct.",
        ),
        error_body("FailedOperation.TemplateIncorrectOrUnapproved", "模板未审批或内容不匹配"),
        ok_body("FailedOperation.SignatureIncorrectOrUnapproved", "签名未审批或格式错误", fee=0),
    ],
)
async def test_configuration_errors_are_permanent_and_spare_the_recipient(
    channel: TencentSmsChannel, httpx_mock: HTTPXMock, body: dict[str, Any]
) -> None:
    httpx_mock.add_response(method="POST", json=body)
    with pytest.raises(Permanent) as caught:
        await channel.send(channel.prepare(outgoing()))
    assert caught.value.bad_recipient is False
    assert_nothing_secret(caught.value)


async def test_read_timeout_after_sending_is_unknown(
    channel: TencentSmsChannel, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_exception(httpx.ReadTimeout("The read operation timed out"))
    with pytest.raises(Unknown) as caught:
        await channel.send(channel.prepare(outgoing()))
    assert len(httpx_mock.get_requests()) == 1
    assert caught.value.transcript["error"] == "ReadTimeout"
    assert caught.value.__cause__ is None
    assert_nothing_secret(caught.value)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (502, None),  # a gateway's HTML page
        (200, ok_body("InternalError.Timeout", "请求下发短信超时", fee=0)),
        (200, error_body("InternalError", "An internal error has occurred.")),
        (200, {"Response": {"SendStatusSet": [], "RequestId": "e1f2a3b4"}}),
    ],
)
async def test_server_side_failure_or_silence_is_unknown(
    channel: TencentSmsChannel,
    httpx_mock: HTTPXMock,
    status: int,
    body: dict[str, Any] | None,
) -> None:
    if body is None:
        httpx_mock.add_response(method="POST", status_code=status, html="<html>502</html>")
    else:
        httpx_mock.add_response(method="POST", status_code=status, json=body)
    with pytest.raises(Unknown) as caught:
        await channel.send(channel.prepare(outgoing()))
    assert_nothing_secret(caught.value)


async def test_connect_error_before_sending_is_transient(
    channel: TencentSmsChannel, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_exception(httpx.ConnectError("[Errno 111] Connection refused"))
    with pytest.raises(Transient) as caught:
        await channel.send(channel.prepare(outgoing()))
    assert caught.value.transcript["error"] == "ConnectError"
    assert_nothing_secret(caught.value)


# ---------------------------------------------------------------- classification, pure


@pytest.mark.parametrize(
    ("code", "outcome", "bad_recipient"),
    [
        ("Ok", "sent", False),
        ("RequestLimitExceeded.UinLimitExceeded", "transient", False),
        ("LimitExceeded.DeliveryFrequencyLimit", "transient", False),
        ("LimitExceeded.PhoneNumberCountLimit", "permanent", False),
        ("InternalError.SendAndRecvFail", "unknown", False),
        ("InternalError.RequestTimeException", "permanent", False),  # our clock is off
        ("AuthFailure.SecretIdNotFound", "permanent", False),
        ("UnauthorizedOperation.SerivceSuspendDueToArrears", "permanent", False),
        ("FailedOperation.PhoneNumberOnBlacklist", "permanent", True),
        ("FailedOperation.MarketingSendTimeConstraint", "transient", False),
        ("SomethingNew.NeverSeen", "permanent", False),
    ],
)
def test_classification_table(code: str, outcome: str, bad_recipient: bool) -> None:
    verdict = classify(code, status=200, now=NOW)
    assert verdict.outcome == outcome
    assert verdict.bad_recipient is bad_recipient


def test_marketing_window_reopens_at_eight_beijing() -> None:
    # 23:00 Beijing (15:00 UTC) -> 08:00 next day: 9 hours.
    assert seconds_until_next_0800(datetime(2026, 3, 2, 15, 0, tzinfo=UTC)) == 9 * 3600.0
    # 07:00 Beijing (23:00 UTC the day before) -> 08:00 the same Beijing day.
    assert seconds_until_next_0800(datetime(2026, 3, 1, 23, 0, tzinfo=UTC)) == 3600.0


def test_default_limits_stay_under_tencents_default_frequency_policy() -> None:
    limits = {(lim.count, lim.per_seconds, lim.scope) for lim in TencentSmsChannel.default_limits}
    assert limits == {(1, 30, "recipient"), (2, 86400, "recipient")}
