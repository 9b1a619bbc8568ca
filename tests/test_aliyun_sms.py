"""Alibaba Cloud SMS adapter: official signature vectors, the exact request, every outcome.

No network: pytest-httpx answers with bodies shaped like Alibaba's documented ones. Time and
nonce are fixed, so every signature on the wire can be recomputed from the captured request.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from pytest_httpx import HTTPXMock

from channels.aliyun_sms import (
    EMPTY_SHA256,
    AliyunSmsChannel,
    authorization_v3,
    canonical_query,
    canonical_request_v3,
    classify,
    hmac_sha1_base64,
    percent_encode,
    seconds_until_next_day,
    seconds_until_next_month,
    sign_v2,
    sign_v3,
    string_to_sign_v2,
    string_to_sign_v3,
)
from channels.base import ChannelError, Outgoing, Permanent, Transient, Unknown

SECRET = "aK3yS3cr3t-must-never-be-recorded"
KEY_ID = "LTAI5tTestKeyId"
ENV = {"ALI_KEY_ID": KEY_ID, "ALI_KEY_SECRET": SECRET}
NOW = datetime(2026, 3, 2, 2, 0, 0, tzinfo=UTC)  # 10:00 in Beijing
NONCE = "9f2c1e7d3b5a40c8a1e2f3d4c5b6a798"
SETTINGS: dict[str, Any] = {
    "access_key_id_env": "ALI_KEY_ID",
    "access_key_secret_env": "ALI_KEY_SECRET",
    "sign_name": "某某商户",
    "templates": {"cancellation_request": "SMS_460725001", "reminder": "SMS_460725002"},
}
OK_BODY = {
    "Code": "OK",
    "Message": "OK",
    "BizId": "900619746936498440^0",
    "RequestId": "F655A8D5-B967-440B-8683-DAD6FF8DE990",
}


def outgoing(**changes: Any) -> Outgoing:
    fields: dict[str, Any] = {
        "channel": "agent-sms",
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
        "params": {"merchant_no": "898310012340001", "terminal_no": "10012345", "days": "5"},
    }
    fields.update(changes)
    return Outgoing(**fields)


def make_channel(**settings: Any) -> AliyunSmsChannel:
    return AliyunSmsChannel(
        "agent-sms", {**SETTINGS, **settings}, ENV, clock=lambda: NOW, nonce=lambda: NONCE
    )


@pytest.fixture
async def channel() -> AsyncIterator[AliyunSmsChannel]:
    ch = make_channel()
    yield ch
    await ch.aclose()


@pytest.fixture
async def channel_v2() -> AsyncIterator[AliyunSmsChannel]:
    ch = make_channel(signature="v2")
    yield ch
    await ch.aclose()


def query_params(request: httpx.Request) -> dict[str, str]:
    """Decode the query exactly as it went on the wire (``%20`` and ``+`` kept distinct)."""
    pairs = [p.split("=", 1) for p in request.url.query.decode("ascii").split("&") if p]
    return {unquote(k): unquote(v) for k, v in pairs}


def assert_nothing_secret(*things: Any) -> None:
    """The AccessKey secret never appears in anything the engine will record or log."""
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
        assert percent_encode(SECRET) not in text


# ---------------------------------------------------------------- official signature vectors


def test_v3_signature_matches_alibaba_runinstances_example() -> None:
    """providers.md §9.2: the fixed-value RunInstances example of the V3 signature doc."""
    headers = {
        "host": "ecs.cn-shanghai.aliyuncs.com",
        "x-acs-action": "RunInstances",
        "x-acs-version": "2014-05-26",
        "x-acs-date": "2023-10-26T10:22:32Z",
        "x-acs-signature-nonce": "3156853299f313e23d1673dc12e1703d",
        "x-acs-content-sha256": EMPTY_SHA256,
    }
    query = {
        "ImageId": "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
        "RegionId": "cn-shanghai",
    }
    canonical, signed_headers = canonical_request_v3("POST", "/", query, headers, EMPTY_SHA256)
    assert canonical == (
        "POST\n"
        "/\n"
        "ImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai\n"
        "host:ecs.cn-shanghai.aliyuncs.com\n"
        "x-acs-action:RunInstances\n"
        "x-acs-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
        "x-acs-date:2023-10-26T10:22:32Z\n"
        "x-acs-signature-nonce:3156853299f313e23d1673dc12e1703d\n"
        "x-acs-version:2014-05-26\n"
        "\n"
        "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    to_sign = string_to_sign_v3(canonical)
    assert to_sign == (
        "ACS3-HMAC-SHA256\n7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
    )
    signature = sign_v3("YourAccessKeySecret", to_sign)
    assert signature == "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
    assert authorization_v3("YourAccessKeyId", signed_headers, signature) == (
        "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,"
        "SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;"
        "x-acs-signature-nonce;x-acs-version,"
        "Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
    )


def test_v2_signature_matches_alibaba_rpc_mechanism_example() -> None:
    """The "Signature examples / Fixed parameter values" section of the official page
    alibabacloud.com/help/en/sdk/product-overview/rpc-mechanism (DescribeDedicatedHosts,
    AccessKeySecret ``testsecret``), canonical query, string-to-sign and signature."""
    params = {
        "AccessKeyId": "testid",
        "Action": "DescribeDedicatedHosts",
        "Format": "JSON",
        "RegionId": "cn-beijing",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "edb2b34af0af9a6d14deaf7c1a5315eb",
        "SignatureVersion": "1.0",
        "Timestamp": "2023-03-13T08:34:30Z",
        "Version": "2014-05-26",
    }
    assert canonical_query(params) == (
        "AccessKeyId=testid&Action=DescribeDedicatedHosts&Format=JSON&RegionId=cn-beijing"
        "&SignatureMethod=HMAC-SHA1&SignatureNonce=edb2b34af0af9a6d14deaf7c1a5315eb"
        "&SignatureVersion=1.0&Timestamp=2023-03-13T08%3A34%3A30Z&Version=2014-05-26"
    )
    assert string_to_sign_v2("GET", params) == (
        "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeDedicatedHosts%26Format%3DJSON"
        "%26RegionId%3Dcn-beijing%26SignatureMethod%3DHMAC-SHA1"
        "%26SignatureNonce%3Dedb2b34af0af9a6d14deaf7c1a5315eb%26SignatureVersion%3D1.0"
        "%26Timestamp%3D2023-03-13T08%253A34%253A30Z%26Version%3D2014-05-26"
    )
    assert sign_v2("GET", params, "testsecret") == "9NaGiOspFP5UPcwX8Iwt2YJXXuk="


def test_hmac_sha1_primitive_matches_official_sdk_vectors() -> None:
    """aliyun-openapi-python-sdk, aliyun-python-sdk-core/tests/auth/algorithm/test_sha_hmac1.py."""
    assert hmac_sha1_base64("secret", "source") == "Jv4yi8SobFhg5t1C7nWLbhBSFZQ="
    assert hmac_sha1_base64("secret", "中文unicode") == "szlfHs3WVaO/HgY3Cg7/uyXDaRw="


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ("AZaz09-_.~", "AZaz09-_.~"),  # unreserved: untouched, ~ included
        ("a b", "a%20b"),  # space is %20, never +
        ("a+b", "a%2Bb"),
        ("*", "%2A"),
        ("/", "%2F"),
        (":", "%3A"),
        ('{"k":"v"}', "%7B%22k%22%3A%22v%22%7D"),
        ("中文", "%E4%B8%AD%E6%96%87"),  # UTF-8 bytes, upper-case hex
        ("!'()", "%21%27%28%29"),
    ],
)
def test_percent_encoding_follows_alibaba_rules(raw: str, encoded: str) -> None:
    assert percent_encode(raw) == encoded


# ---------------------------------------------------------------- prepare


async def test_prepare_is_canonical_template_only_and_deterministic(
    channel: AliyunSmsChannel,
) -> None:
    msg = outgoing()
    first = channel.prepare(msg)
    assert first.payload == channel.prepare(msg).payload
    assert first.media_type == "application/json"
    assert first.message_id == msg.idempotency_key
    params = json.loads(first.payload)
    assert params == {
        "Action": "SendSms",
        "Version": "2017-05-25",
        "PhoneNumbers": "13800138000",
        "SignName": "某某商户",
        "TemplateCode": "SMS_460725001",
        "OutId": "a7f3c2e1d9b04c55",
        "TemplateParam": '{"days":"5","merchant_no":"898310012340001","terminal_no":"10012345"}',
    }
    assert json.loads(params["TemplateParam"]) == dict(msg.params)
    assert first.payload == json.dumps(
        params, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert "不得外发".encode() not in first.payload  # the notice text never leaves


async def test_prepare_refuses_what_it_cannot_send(channel: AliyunSmsChannel) -> None:
    with pytest.raises(Permanent) as no_template:
        channel.prepare(outgoing(notice_kind="complaint_regulator"))
    assert no_template.value.bad_recipient is False
    assert "templates.complaint_regulator" in no_template.value.detail
    with pytest.raises(Permanent) as bad_number:
        channel.prepare(outgoing(recipient="138-0013-8000"))
    assert bad_number.value.bad_recipient is True
    with pytest.raises(Permanent) as wrong_kind:
        channel.prepare(outgoing(kind="email", recipient="a@example.com"))
    assert wrong_kind.value.bad_recipient is False


async def test_international_number_keeps_country_code() -> None:
    ch = make_channel()
    try:
        params = json.loads(ch.prepare(outgoing(recipient="+85261234567")).payload)
        assert params["PhoneNumbers"] == "85261234567"
    finally:
        await ch.aclose()


async def test_endpoint_defaults_to_central_or_follows_the_region(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(
        url=re.compile(r"https://dysmsapi\.ap-southeast-1\.aliyuncs\.com/\?.*"), json=OK_BODY
    )
    central = make_channel()
    regional = make_channel(region="ap-southeast-1")
    try:
        assert central.settings.url() == "https://dysmsapi.aliyuncs.com/"
        await regional.send(regional.prepare(outgoing()))
    finally:
        await central.aclose()
        await regional.aclose()


@pytest.mark.parametrize(
    ("change", "env", "needle"),
    [
        ({"api_key": "x"}, ENV, "api_key"),  # extra keys are refused
        ({"templates": {"cancelation_request": "SMS_1"}}, ENV, "cancelation_request"),
        ({"signature": "v4"}, ENV, "signature"),
        ({"endpoint": "http://dysmsapi.aliyuncs.com/"}, ENV, "https"),
        ({"endpoint": "https://dysmsapi.aliyuncs.com/sms"}, ENV, "scheme://host/"),
        ({}, {"ALI_KEY_ID": KEY_ID}, "ALI_KEY_SECRET"),  # names the variable, not a value
    ],
)
def test_bad_settings_fail_at_load_time_naming_the_setting(
    change: dict[str, Any], env: dict[str, str], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        AliyunSmsChannel("agent-sms", {**SETTINGS, **change}, env)


# ---------------------------------------------------------------- send: success


async def test_v3_success_request_signs_and_records_without_secret(
    channel: AliyunSmsChannel, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(method="POST", json=OK_BODY, headers={"date": "Mon, 02 Mar 2026"})
    prepared = channel.prepare(outgoing())

    receipt = await channel.send(prepared)

    assert receipt.accepted is True
    assert receipt.provider_id == "900619746936498440^0"
    assert json.loads(receipt.response) == OK_BODY

    request = httpx_mock.get_request()
    assert request is not None
    assert request.method == "POST"
    assert request.url.host == "dysmsapi.aliyuncs.com"
    assert request.url.path == "/"
    assert request.content == b""
    sent = query_params(request)
    prepared_params = json.loads(prepared.payload)
    # The query is the prepared parameters minus Action/Version, which V3 moves to headers.
    assert sent == {k: v for k, v in prepared_params.items() if k not in ("Action", "Version")}
    assert json.loads(sent["TemplateParam"]) == dict(outgoing().params)
    assert sent["OutId"] == "a7f3c2e1d9b04c55"
    assert request.headers["x-acs-action"] == "SendSms"
    assert request.headers["x-acs-version"] == "2017-05-25"
    assert request.headers["x-acs-date"] == "2026-03-02T02:00:00Z"
    assert request.headers["x-acs-signature-nonce"] == NONCE
    assert request.headers["x-acs-content-sha256"] == hashlib.sha256(request.content).hexdigest()

    # Recompute the signature from what actually went on the wire.
    canonical, signed_headers = canonical_request_v3(
        "POST",
        request.url.path,
        sent,
        dict(request.headers),
        hashlib.sha256(request.content).hexdigest(),
    )
    expected = authorization_v3(
        KEY_ID, signed_headers, sign_v3(SECRET, string_to_sign_v3(canonical))
    )
    assert request.headers["authorization"] == expected
    assert signed_headers == (
        "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
    )

    t = receipt.transcript
    assert t["method"] == "POST"
    assert t["status"] == 200
    assert t["request_id"] == OK_BODY["RequestId"]
    assert t["code"] == "OK"
    assert t["message"] == "OK"
    assert t["biz_id"] == OK_BODY["BizId"]
    assert t["url"] == str(request.url)
    assert t["request_headers"]["authorization"].endswith("Signature=REDACTED")
    assert f"Credential={KEY_ID}," in t["request_headers"]["authorization"]
    signature = expected.rsplit("Signature=", 1)[1]
    assert signature not in json.dumps(t)
    assert_nothing_secret(t, receipt.response)


async def test_v2_success_signature_recomputes_from_the_query(
    channel_v2: AliyunSmsChannel, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(method="POST", json=OK_BODY)
    prepared = channel_v2.prepare(outgoing())

    receipt = await channel_v2.send(prepared)

    assert receipt.provider_id == OK_BODY["BizId"]
    request = httpx_mock.get_request()
    assert request is not None
    sent = query_params(request)
    signature = sent.pop("Signature")
    assert sign_v2("POST", sent, SECRET) == signature
    assert sent["Timestamp"] == "2026-03-02T02:00:00Z"
    assert sent["SignatureNonce"] == NONCE
    assert sent["AccessKeyId"] == KEY_ID
    assert sent["SignatureMethod"] == "HMAC-SHA1"
    assert sent["SignatureVersion"] == "1.0"
    assert sent["Format"] == "JSON"
    for key, value in json.loads(prepared.payload).items():
        assert sent[key] == value
    assert "authorization" not in request.headers
    url = receipt.transcript["url"]
    assert url.endswith("&Signature=REDACTED")
    assert percent_encode(signature) not in url
    assert_nothing_secret(receipt.transcript)


async def test_resend_after_unknown_carries_the_same_outid_and_parameters(
    channel: AliyunSmsChannel, httpx_mock: HTTPXMock
) -> None:
    """SendSms is not idempotent: the engine re-sends the same bytes so a duplicate is
    attributable by OutId; only time, nonce and signature differ between the two tries."""
    httpx_mock.add_exception(httpx.ReadTimeout("The read operation timed out"))
    httpx_mock.add_response(method="POST", json=OK_BODY)
    prepared = channel.prepare(outgoing())
    with pytest.raises(Unknown):
        await channel.send(prepared)
    await channel.send(prepared)
    first, second = httpx_mock.get_requests()
    assert query_params(first) == query_params(second)
    assert query_params(first)["OutId"] == "a7f3c2e1d9b04c55"


# ---------------------------------------------------------------- send: failures


@pytest.mark.parametrize(
    ("message", "retry_after"),
    [
        ("触发分钟级流控Permits:1", 60.0),
        ("触发小时级流控Permits:5", 3600.0),
        ("触发天级流控Permits:10", 14 * 3600.0),  # 10:00 Beijing -> next midnight
    ],
)
async def test_flow_control_is_transient_with_the_window_as_retry_after(
    channel: AliyunSmsChannel, httpx_mock: HTTPXMock, message: str, retry_after: float
) -> None:
    httpx_mock.add_response(
        method="POST",
        json={
            "Code": "isv.BUSINESS_LIMIT_CONTROL",
            "Message": message,
            "RequestId": "2184201F-BFB3-446B-B1F2-C746B7BF0657",
        },
    )
    with pytest.raises(Transient) as caught:
        await channel.send(channel.prepare(outgoing()))
    assert caught.value.retry_after == retry_after
    assert caught.value.code == "isv.BUSINESS_LIMIT_CONTROL"
    assert caught.value.transcript["request_id"] == "2184201F-BFB3-446B-B1F2-C746B7BF0657"
    assert_nothing_secret(caught.value)


async def test_illegal_number_is_permanent_and_blames_the_recipient(
    channel: AliyunSmsChannel, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        method="POST",
        json={
            "Code": "isv.MOBILE_NUMBER_ILLEGAL",
            "Message": "非法手机号",
            "RequestId": "A3E1C9B2-0F4D-4E5A-9C8B-7D6E5F4A3B2C",
        },
    )
    with pytest.raises(Permanent) as caught:
        await channel.send(channel.prepare(outgoing()))
    assert caught.value.bad_recipient is True
    assert caught.value.code == "isv.MOBILE_NUMBER_ILLEGAL"
    assert caught.value.transcript["message"] == "非法手机号"
    assert_nothing_secret(caught.value)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (
            200,
            {
                "Code": "isv.SMS_TEMPLATE_ILLEGAL",
                "Message": "模板不合法(不存在或被拉黑)",
                "RequestId": "8A5D2B1C-3E4F-4A5B-8C9D-0E1F2A3B4C5D",
            },
        ),
        (  # gateway-level authentication failure, the documented error shape
            400,
            {
                "RequestId": "5C9D0E1F-2A3B-4C5D-8E9F-0A1B2C3D4E5F",
                "HostId": "dysmsapi.aliyuncs.com",
                "Code": "SignatureDoesNotMatch",
                "Message": "Specified signature is not matched with our calculation.",
                "Recommend": "https://api.aliyun.com/troubleshoot?q=SignatureDoesNotMatch",
            },
        ),
        (
            200,
            {
                "Code": "isv.BLACK_KEY_CONTROL_LIMIT",
                "Message": "黑名单管控",
                "RequestId": "6D0E1F2A-3B4C-4D5E-9F0A-1B2C3D4E5F6A",
            },
        ),
    ],
)
async def test_configuration_errors_are_permanent_and_spare_the_recipient(
    channel: AliyunSmsChannel, httpx_mock: HTTPXMock, status: int, body: dict[str, str]
) -> None:
    httpx_mock.add_response(method="POST", status_code=status, json=body)
    with pytest.raises(Permanent) as caught:
        await channel.send(channel.prepare(outgoing()))
    assert caught.value.bad_recipient is False
    assert caught.value.code == body["Code"]
    assert caught.value.transcript["status"] == status
    assert_nothing_secret(caught.value)


async def test_read_timeout_after_sending_is_unknown(
    channel: AliyunSmsChannel, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_exception(httpx.ReadTimeout("The read operation timed out"))
    with pytest.raises(Unknown) as caught:
        await channel.send(channel.prepare(outgoing()))
    assert len(httpx_mock.get_requests()) == 1  # it did go out
    assert caught.value.transcript["error"] == "ReadTimeout"
    assert caught.value.transcript["request_headers"]["authorization"].endswith("REDACTED")
    assert caught.value.__cause__ is None  # the httpx request (with its signature) is not chained
    assert_nothing_secret(caught.value)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (
            500,
            {
                "RequestId": "7E1F2A3B-4C5D-4E6F-8A0B-1C2D3E4F5A6B",
                "Code": "InternalError",
                "Message": "The request processing has failed due to some unknown error.",
            },
        ),
        (
            200,
            {
                "Code": "isp.SYSTEM_ERROR",
                "Message": "系统错误",
                "RequestId": "8F2A3B4C-5D6E-4F7A-9B1C-2D3E4F5A6B7C",
            },
        ),
    ],
)
async def test_server_side_failure_is_unknown(
    channel: AliyunSmsChannel, httpx_mock: HTTPXMock, status: int, body: dict[str, str]
) -> None:
    httpx_mock.add_response(method="POST", status_code=status, json=body)
    with pytest.raises(Unknown) as caught:
        await channel.send(channel.prepare(outgoing()))
    assert caught.value.code == body["Code"]
    assert_nothing_secret(caught.value)


async def test_html_from_a_broken_gateway_5xx_is_unknown(
    channel: AliyunSmsChannel, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(method="POST", status_code=502, html="<html>Bad Gateway</html>")
    with pytest.raises(Unknown):
        await channel.send(channel.prepare(outgoing()))


async def test_connect_error_before_sending_is_transient(
    channel: AliyunSmsChannel, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_exception(httpx.ConnectError("[Errno -3] Temporary failure in name resolution"))
    with pytest.raises(Transient) as caught:
        await channel.send(channel.prepare(outgoing()))
    assert caught.value.transcript["error"] == "ConnectError"
    assert_nothing_secret(caught.value)


# ---------------------------------------------------------------- classification, pure


def test_quota_windows_follow_beijing_midnight() -> None:
    # 23:59:30 Beijing is 15:59:30 UTC: 30 s to the daily reset.
    assert seconds_until_next_day(datetime(2026, 3, 2, 15, 59, 30, tzinfo=UTC)) == 30.0
    # 00:00:00 Beijing exactly: a full day, never zero.
    assert seconds_until_next_day(datetime(2026, 3, 1, 16, 0, 0, tzinfo=UTC)) == 86400.0
    # Monthly reset: 2026-12-31 12:00 Beijing -> 2027-01-01 00:00 Beijing.
    assert seconds_until_next_month(datetime(2026, 12, 31, 4, 0, tzinfo=UTC)) == 12 * 3600.0


@pytest.mark.parametrize(
    ("code", "status", "outcome", "retry_after"),
    [
        ("OK", 200, "sent", None),
        ("Throttling.User", 400, "transient", 60.0),
        ("Throttling", 503, "transient", 60.0),  # a throttle is a refusal even as 503
        ("ServiceUnavailable", 503, "unknown", None),
        ("isv.DAY_LIMIT_CONTROL", 200, "transient", 14 * 3600.0),
        ("isv.MONTH_LIMIT_CONTROL", 200, "transient", None),
        ("SignatureNonceUsed", 400, "transient", None),
        ("InvalidAccessKeyId.NotFound", 404, "permanent", None),
        ("isv.AMOUNT_NOT_ENOUGH", 200, "permanent", None),
        ("isv.SOMETHING_NEW", 200, "permanent", None),
    ],
)
def test_classification_table(
    code: str, status: int, outcome: str, retry_after: float | None
) -> None:
    verdict = classify(code, "", status=status, now=NOW)
    assert verdict.outcome == outcome
    if retry_after is not None:
        assert verdict.retry_after == retry_after
    if code == "isv.MONTH_LIMIT_CONTROL":
        assert verdict.retry_after == seconds_until_next_month(NOW)
    assert verdict.bad_recipient is False


def test_default_limits_stay_under_alibabas_per_number_flow_control() -> None:
    limits = {(lim.count, lim.per_seconds, lim.scope) for lim in AliyunSmsChannel.default_limits}
    assert limits == {(1, 60, "recipient"), (5, 3600, "recipient"), (10, 86400, "recipient")}
