"""SMS delivery receipts: the parsers on the providers' documented bodies, the push endpoint on
127.0.0.1 driven over real HTTP, polling through the channels against pytest-httpx answers
shaped as documented, and what a receipt does to the attempt, the contact and the chain.

Each end-to-end test starts from real attempts: the example config with an SMS channel of the
provider under test first in line, planned and dispatched through the real channel adapter
(pytest-httpx answering its SendSms), so ``provider_id`` holds a BizId, SerialNo or Message
sid exactly as the dispatcher recorded it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from pytest_httpx import HTTPXMock

from channels import tencent_sms
from outreach import clock
from outreach.app import App
from outreach.cli import main
from outreach.models_receipts import DeliveryReceipt
from outreach.proof import all_chains, verify_chain
from outreach.receipt_formats import (
    DeliveryReport,
    ProviderAnswerError,
    ReceiptFormatError,
    dedupe_key,
    parse_aliyun_push,
    parse_aliyun_query,
    parse_tencent_pull,
    parse_tencent_push,
    parse_twilio_status,
)
from outreach.receipts import ADAPTERS, UNMATCHED_CHAIN, ingest_rematch
from outreach.receipts_poll import build_status_channels, poll_receipts
from outreach.receipts_server import ALIYUN_OK, TENCENT_OK, ReceiptServer
from outreach.store import Attempt, Blob, ContactPoint, Event

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.httpx_mock(
    should_mock=lambda request: request.url.host != "127.0.0.1",
    assert_all_responses_were_requested=False,
)

ACCOUNT_SID = "AC" + "1f" * 16
TWILIO_TOKEN = "tw-auth-token-for-tests-only"
PUBLIC_URL = "https://receipts.example.com/outreach"
ENV = {
    "T_ALI_ID": "LTAI5tTestKeyId",
    "T_ALI_SECRET": "ali-secret-for-tests-only",
    "T_TC_ID": "AKIDtestSecretId0000000000000000",
    "T_TC_KEY": "tc-secret-for-tests-only",
    "T_TW_TOKEN": TWILIO_TOKEN,
}
AGENT_PHONE = "+8613900139000"
OPENED = datetime(
    2026, 11, 2, 2, 0, tzinfo=UTC
)  # the example config's agent SMS contact, normalised

CHANNEL_TABLES = {
    "aliyun": """
[channels.ali]
adapter = "aliyun_sms"
access_key_id_env = "T_ALI_ID"
access_key_secret_env = "T_ALI_SECRET"
sign_name = "某某商户"
templates = { cancellation_request = "SMS_100000001", reminder = "SMS_100000002" }
limits = []
""",
    "tencent": """
[channels.tc]
adapter = "tencent_sms"
secret_id_env = "T_TC_ID"
secret_key_env = "T_TC_KEY"
sdk_app_id = "1400006666"
sign_name = "某某商户"
templates = { cancellation_request = "449739", reminder = "449740" }
limits = []
""",
    "twilio": f"""
[channels.tw]
adapter = "twilio_sms"
account_sid = "{ACCOUNT_SID}"
auth_token_env = "T_TW_TOKEN"
from_number = "+15005550006"
status_callback = "{PUBLIC_URL}/receipts/twilio"
limits = []
""",
}

SECOND_CASE = """
[[merchants]]
key = "li-store"
name = "深圳市南山区李四水果店"
merchant_no = "822584053990002"
  [[merchants.terminals]]
  terminal_no = "22345678"
  acquirer = "lakala"
  agent = "shenzhen-agent"

[[cases]]
key = "li-cancel"
merchant = "li-store"
goal = "cancel_terminal"
plan = "standard"
opened = 2026-11-02
"""


# ------------------------------------------------------------------------------ documented bodies

# Aliyun SmsReport HTTP push, the documented example (help.aliyun.com/document_detail/101867).
ALIYUN_PUSH_EXAMPLE = [
    {
        "phone_number": "1381111****",
        "send_time": "2017-01-01 00:00:00",
        "report_time": "2017-01-01 00:00:00",
        "success": True,
        "err_code": "DELIVERED",
        "err_msg": "用户接收成功",
        "sms_size": "1",
        "biz_id": "12345********",
        "out_id": "67890**",
    }
]


def aliyun_report(
    biz_id: str, out_id: str, *, success: bool = True, code: str = "DELIVERED"
) -> dict[str, Any]:
    item = dict(ALIYUN_PUSH_EXAMPLE[0])
    item.update(
        phone_number="13900139000",
        biz_id=biz_id,
        out_id=out_id,
        success=success,
        err_code=code,
        err_msg="用户接收成功" if success else "空号",
    )
    return item


# Aliyun QuerySendDetails, shaped as the documented answer (help.aliyun.com/document_detail/419277).
def aliyun_query_answer(dtos: list[dict[str, Any]], code: str = "OK") -> dict[str, Any]:
    return {
        "Code": code,
        "Message": "OK" if code == "OK" else "触发分钟级流控Permits:1",
        "RequestId": "819BE656-D2E0-4858-8B21-B2E477085AAF",
        "TotalCount": len(dtos),
        "SmsSendDetailDTOs": {"SmsSendDetailDTO": dtos},
    }


def aliyun_dto(out_id: str, status: int = 3, err: str = "DELIVERED") -> dict[str, Any]:
    return {
        "ErrCode": err,
        "TemplateCode": "SMS_100000001",
        "OutId": out_id,
        "ReceiveDate": "2026-11-02 16:44:13",
        "SendDate": "2026-11-02 16:44:10",
        "PhoneNum": "13900139000",
        "Content": "【某某商户】……",
        "SendStatus": status,
    }


# Tencent status callback, the documented example (cloud.tencent.com/document/product/382/5807).
TENCENT_PUSH_EXAMPLE = [
    {
        "user_receive_time": "2015-10-17 08:03:04",
        "nationcode": "86",
        "mobile": "13xxxxxxxxx",
        "report_status": "SUCCESS",
        "errmsg": "DELIVRD",
        "description": "用户短信送达成功",
        "sid": "xxxxxxx",
    }
]

# Tencent PullSmsSendStatus 2021-01-11, the documented output (cloud.tencent.com/document/product/382/55977).
TENCENT_PULL_EXAMPLE = {
    "Response": {
        "PullSmsSendStatusSet": [
            {
                "Description": "DELIVRD",
                "CountryCode": "86",
                "SubscriberNumber": "18501234444",
                "ReportStatus": "SUCCESS",
                "PhoneNumber": "+8618501234444",
                "SerialNo": "5000:1045710669157053657849499619",
                "UserReceiveTime": 1620734188,
                "SessionContext": "",
            }
        ],
        "RequestId": "b5c3a5a4-5e1c-4f7b-8a0e-3b8a9d6f1c2e",
    }
}


def twilio_form(sid: str, status: str, error: str | None = None) -> list[tuple[str, str]]:
    """A status callback with the fields Twilio documents (providers.md §3.1)."""
    form = [
        ("SmsSid", sid),
        ("SmsStatus", status),
        ("MessageStatus", status),
        ("To", AGENT_PHONE),
        ("MessageSid", sid),
        ("AccountSid", ACCOUNT_SID),
        ("From", "+15005550006"),
        ("ApiVersion", "2010-04-01"),
    ]
    if error:
        form.append(("ErrorCode", error))
    return form


def twilio_signature(url: str, form: list[tuple[str, str]], token: str = TWILIO_TOKEN) -> str:
    """Twilio's algorithm written out independently of channels.twilio_sms: HMAC-SHA1 over the
    URL followed by every name+value, sorted by name, base64."""
    signed = url + "".join(k + v for k, v in sorted(form))
    return base64.b64encode(
        hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()
    ).decode()


# ------------------------------------------------------------------------------ pure parsers


def test_aliyun_push_parses_the_documented_example() -> None:
    [report] = parse_aliyun_push(json.dumps(ALIYUN_PUSH_EXAMPLE, ensure_ascii=False).encode())
    assert report == DeliveryReport(
        provider="aliyun",
        outcome="delivered",
        provider_id="12345********",
        out_id="67890**",
        recipient="1381111****",
        code="DELIVERED",
        message="用户接收成功",
        reported_at="2017-01-01 00:00:00",
        permanent=False,
        item=0,
    )


def test_aliyun_push_failure_is_permanent_only_for_a_dead_number() -> None:
    body = json.dumps(
        [
            aliyun_report("1^0", "a", success=False, code="MK:0001"),  # not found by the HLR
            aliyun_report("2^0", "b", success=False, code="MN:0001"),  # may be switched off
        ]
    ).encode()
    dead, maybe_off = parse_aliyun_push(body)
    assert (dead.outcome, dead.permanent, dead.item) == ("undelivered", True, 0)
    assert (maybe_off.outcome, maybe_off.permanent, maybe_off.item) == ("undelivered", False, 1)


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"phone_number": "1"}', b"[1, 2]", b'[{"biz_id": "1", "success": "yes"}]'],
)
def test_aliyun_push_refuses_what_is_not_a_report_array(body: bytes) -> None:
    with pytest.raises(ReceiptFormatError):
        parse_aliyun_push(body)


def test_aliyun_query_parses_the_documented_answer_and_names_the_biz_id() -> None:
    body = json.dumps(
        aliyun_query_answer(
            [aliyun_dto("k1"), aliyun_dto("k2", 1, ""), aliyun_dto("k3", 2, "MK:0012")]
        ),
        ensure_ascii=False,
    ).encode()
    page = parse_aliyun_query(body, biz_id="134523^4351232")
    delivered, waiting, failed = page.reports
    assert page.total == 3
    assert (delivered.outcome, delivered.provider_id, delivered.out_id) == (
        "delivered",
        "134523^4351232",
        "k1",
    )
    assert (delivered.code, delivered.reported_at) == ("DELIVERED", "2026-11-02 16:44:13")
    assert (waiting.outcome, waiting.code) == ("progress", None)
    assert (failed.outcome, failed.permanent) == ("undelivered", True)
    with pytest.raises(ProviderAnswerError, match=r"isv\.BUSINESS_LIMIT_CONTROL"):
        parse_aliyun_query(
            json.dumps(aliyun_query_answer([], "isv.BUSINESS_LIMIT_CONTROL")).encode()
        )


def test_push_and_poll_of_one_aliyun_report_are_one_report() -> None:
    push = parse_aliyun_push(json.dumps([aliyun_report("77^0", "key-1")]).encode())[0]
    poll = parse_aliyun_query(
        json.dumps(aliyun_query_answer([aliyun_dto("key-1")])).encode(), biz_id="77^0"
    ).reports[0]
    assert push.reported_at != poll.reported_at  # the times are spelled differently...
    assert dedupe_key(push) == dedupe_key(poll)


def test_tencent_push_parses_the_documented_example() -> None:
    [report] = parse_tencent_push(json.dumps(TENCENT_PUSH_EXAMPLE, ensure_ascii=False).encode())
    assert (report.provider, report.outcome, report.provider_id) == (
        "tencent",
        "delivered",
        "xxxxxxx",
    )
    assert (report.recipient, report.code, report.message) == (
        "+8613xxxxxxxxx",
        "DELIVRD",
        "用户短信送达成功",
    )
    assert report.reported_at == "2015-10-17 08:03:04"
    fail = [{**TENCENT_PUSH_EXAMPLE[0], "report_status": "FAIL", "errmsg": "MX:0012"}]
    [failed] = parse_tencent_push(json.dumps(fail).encode())
    assert (failed.outcome, failed.permanent) == ("undelivered", True)
    with pytest.raises(ReceiptFormatError, match="SUCCESS or FAIL"):
        parse_tencent_push(
            json.dumps([{**TENCENT_PUSH_EXAMPLE[0], "report_status": "OK"}]).encode()
        )


def test_tencent_pull_parses_the_documented_answer() -> None:
    [report] = parse_tencent_pull(json.dumps(TENCENT_PULL_EXAMPLE).encode())
    assert (report.outcome, report.provider_id, report.code) == (
        "delivered",
        "5000:1045710669157053657849499619",
        "DELIVRD",
    )
    assert report.recipient == "+8618501234444"
    assert report.out_id is None  # "" means no SessionContext
    assert report.reported_at == "2021-05-11T11:56:28Z"
    error = {
        "Response": {
            "Error": {"Code": "UnauthorizedOperation.SmsSdkAppIdVerifyFail", "Message": "x"}
        }
    }
    with pytest.raises(ProviderAnswerError, match="SmsSdkAppIdVerifyFail"):
        parse_tencent_pull(json.dumps(error).encode())


@pytest.mark.parametrize(
    ("status", "error", "outcome", "permanent"),
    [
        ("delivered", None, "delivered", False),
        ("read", None, "delivered", False),
        ("sent", None, "progress", False),
        ("queued", None, "progress", False),
        ("undelivered", "30003", "undelivered", False),  # unreachable: switched off
        ("undelivered", "30005", "undelivered", True),  # unknown handset
        ("failed", "21610", "undelivered", True),  # STOP
        ("failed", "30007", "undelivered", False),  # carrier filtering: our content
    ],
)
def test_twilio_status_outcomes(
    status: str, error: str | None, outcome: str, permanent: bool
) -> None:
    sid = "SM" + "a" * 32
    report = parse_twilio_status(twilio_form(sid, status, error))
    assert (report.outcome, report.permanent, report.stage) == (outcome, permanent, status)
    assert (report.provider_id, report.account, report.code) == (sid, ACCOUNT_SID, error)


# ------------------------------------------------------------------------------ a world with attempts


@dataclass
class World:
    app: App
    provider: str
    attempts: list[Attempt]  # the SMS attempts, by id
    config: Path


def _config(tmp_path: Path, provider: str) -> Path:
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    first = CHANNEL_TABLES[provider]
    rest = "".join(t for p, t in CHANNEL_TABLES.items() if p != provider)
    text = text.replace("[channels.outbox]", first + "\n[channels.outbox]", 1)
    text = text.replace("[plans.standard]", rest + "\n[plans.standard]", 1)
    text = text.replace(
        'listen = "127.0.0.1:8025"', f'listen = "127.0.0.1:0"\npublic_url = "{PUBLIC_URL}"', 1
    )
    text += SECOND_CASE
    path = tmp_path / "outreach.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _answer_sends(httpx_mock: HTTPXMock, provider: str) -> None:
    """pytest-httpx plays the provider's SendSms, numbering the ids it hands out."""
    count = {"n": 0}

    def aliyun(request: httpx.Request) -> httpx.Response:
        count["n"] += 1
        return httpx.Response(
            200,
            json={
                "Code": "OK",
                "Message": "OK",
                "BizId": f"90061974693649844{count['n']}^0",
                "RequestId": "F655A8D5-B967-440B-8683-DAD6FF8DE990",
            },
        )

    def tencent(request: httpx.Request) -> httpx.Response:
        count["n"] += 1
        sent = json.loads(request.content)
        return httpx.Response(
            200,
            json={
                "Response": {
                    "SendStatusSet": [
                        {
                            "SerialNo": f"5000:10457106691570536578494996{count['n']:02d}",
                            "PhoneNumber": sent["PhoneNumberSet"][0],
                            "Fee": 1,
                            "SessionContext": sent["SessionContext"],
                            "Code": "Ok",
                            "Message": "send success",
                            "IsoCode": "CN",
                        }
                    ],
                    "RequestId": "a0aabda6-cf91-4f3e-a81f-9198114a2279",
                }
            },
        )

    def twilio(request: httpx.Request) -> httpx.Response:
        count["n"] += 1
        return httpx.Response(
            201, json={"sid": f"SM{count['n']:032x}", "status": "queued", "error_code": None}
        )

    answer = {"aliyun": aliyun, "tencent": tencent, "twilio": twilio}[provider]
    url = {
        "aliyun": re.compile(r"https://dysmsapi\.aliyuncs\.com/\?.*"),
        "tencent": "https://sms.tencentcloudapi.com/",
        "twilio": f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
    }[provider]
    headers = {
        "aliyun": {"x-acs-action": "SendSms"},
        "tencent": {"x-tc-action": "SendSms"},
        "twilio": None,
    }[provider]
    httpx_mock.add_callback(answer, url=url, match_headers=headers, is_reusable=True)


def _sms_attempts(app: App) -> list[Attempt]:
    with app.sessions() as s:
        return list(s.scalars(sa.select(Attempt).where(Attempt.kind == "sms").order_by(Attempt.id)))


def _planned(path: Path) -> App:
    app = App.open(path)
    app.sync(at=OPENED)
    app.discover()
    app.plan(at=OPENED)
    return app


async def make_world(
    tmp_path: Path, httpx_mock: HTTPXMock, provider: str, *, dispatch: bool = True
) -> World:
    path = _config(tmp_path, provider)
    app = await asyncio.to_thread(_planned, path)  # discover() runs its own event loop
    if dispatch:
        await dispatch_all(app, httpx_mock, provider)
    attempts = _sms_attempts(app)
    assert len(attempts) == 2 and {a.recipient for a in attempts} == {AGENT_PHONE}
    return World(app, provider, attempts, path)


async def dispatch_all(app: App, httpx_mock: HTTPXMock, provider: str) -> None:
    _answer_sends(httpx_mock, provider)
    dispatcher = app.dispatcher(app.build_channels(ENV))
    try:
        report = await dispatcher.run_once()
    finally:
        await dispatcher.aclose()
    assert report.sent == 4 and not report.failed  # e-mail (outbox) and SMS for two cases


@pytest.fixture
async def world(
    request: pytest.FixtureRequest, tmp_path: Path, httpx_mock: HTTPXMock
) -> AsyncIterator[World]:
    provider = getattr(request, "param", "aliyun")
    w = await make_world(tmp_path, httpx_mock, provider)
    yield w
    w.app.close()


@pytest.fixture
async def world_any_db(
    db_url: str, tmp_path: Path, httpx_mock: HTTPXMock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[World]:
    """The Aliyun world on SQLite and on PostgreSQL."""
    monkeypatch.setenv("OUTREACH_DATABASE_URL", db_url)
    w = await make_world(tmp_path, httpx_mock, "aliyun")
    yield w
    w.app.close()


@dataclass
class Endpoint:
    server: ReceiptServer
    client: httpx.AsyncClient


@contextlib.asynccontextmanager
async def endpoint(w: World) -> AsyncIterator[Endpoint]:
    """The receipt server on a free port of 127.0.0.1, and a client for it; always stopped."""
    server, warnings = ReceiptServer.from_config(w.app.sessions, w.app.config, ENV)
    assert [x for x in warnings if "path_token_env" not in x] == []
    host, port = await server.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
            yield Endpoint(server, client)
    finally:
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 2.0  # idle keep-alive connections do not hold it


def events(app: App, kind: str | None = None) -> list[dict[str, Any]]:
    with app.sessions() as s:
        rows = s.scalars(sa.select(Event).order_by(Event.id)).all()
    out = [json.loads(e.body) for e in rows]
    return [e for e in out if kind is None or e["kind"] == kind]


def counts(app: App) -> tuple[int, int, int]:
    """(events, receipts, blobs): what a refused request must leave untouched."""
    with app.sessions() as s:
        return (
            s.scalar(sa.select(sa.func.count()).select_from(Event)) or 0,
            s.scalar(sa.select(sa.func.count()).select_from(DeliveryReceipt)) or 0,
            s.scalar(sa.select(sa.func.count()).select_from(Blob)) or 0,
        )


def attempt(app: App, attempt_id: int) -> Attempt:
    with app.sessions() as s:
        found = s.get(Attempt, attempt_id)
        assert found is not None
        return found


def contact_status(app: App) -> str:
    with app.sessions() as s:
        return s.scalars(
            sa.select(ContactPoint.status).where(ContactPoint.value == AGENT_PHONE)
        ).one()


def assert_chains_verify(app: App) -> None:
    with app.sessions() as s:
        reports = [verify_chain(s, name) for name in all_chains(s)]
    assert reports and all(r.problem is None for r in reports), [str(r.problem) for r in reports]


def aliyun_body(*items: dict[str, Any]) -> bytes:
    return json.dumps(list(items), ensure_ascii=False).encode("utf-8")


JSON = {"content-type": "application/json"}


# ------------------------------------------------------------------------------ the push endpoint


async def test_aliyun_push_of_two_reports_chains_two_events_and_a_repeat_adds_nothing(
    world_any_db: World,
) -> None:
    w = world_any_db
    a1, a2 = w.attempts
    assert a1.state == a2.state == "sent" and a1.provider_id and a2.provider_id
    body = aliyun_body(
        aliyun_report(a1.provider_id, a1.idempotency_key),
        aliyun_report(a2.provider_id, a2.idempotency_key),
    )
    async with endpoint(w) as ep:
        reply = await ep.client.post("/receipts/aliyun", content=body, headers=JSON)
        assert reply.status_code == 200
        assert reply.content == '{"code":0,"msg":"接收成功"}'.encode() == ALIYUN_OK.encode()
        delivered = events(w.app, "delivered")
        assert sorted(e["data"]["attempt"] for e in delivered) == [a1.id, a2.id]
        assert len({e["chain"] for e in delivered}) == 2  # each on its own case's chain
        sha = hashlib.sha256(body).hexdigest()
        for e in delivered:
            data = e["data"]
            assert (data["via"], data["matched_by"], data["code"]) == (
                "push",
                "provider_id",
                "DELIVERED",
            )
            assert data["receipt_sha256"] == sha and data["recipient"] == AGENT_PHONE
        with w.app.sessions() as s:
            blob = s.get(Blob, sha)
            assert blob is not None and blob.data == body
        before = counts(w.app)
        again = await ep.client.post("/receipts/aliyun", content=body, headers=JSON)
        assert (again.status_code, again.content) == (200, reply.content)
        assert counts(w.app) == before
        assert ep.server.stats.receipts.duplicates == 2
    assert {attempt(w.app, a.id).state for a in w.attempts} == {"delivered"}
    assert contact_status(w.app) == "good"
    assert len(events(w.app, "contact_good")) == 1
    assert_chains_verify(w.app)


async def test_concurrent_identical_pushes_are_recorded_once(world_any_db: World) -> None:
    w = world_any_db
    body = aliyun_body(*(aliyun_report(a.provider_id or "", a.idempotency_key) for a in w.attempts))
    async with endpoint(w) as ep:
        replies = await asyncio.gather(
            *(ep.client.post("/receipts/aliyun", content=body, headers=JSON) for _ in range(6))
        )
    assert {(r.status_code, r.content) for r in replies} == {(200, ALIYUN_OK.encode())}
    assert len(events(w.app, "delivered")) == 2
    assert counts(w.app)[1] == 2
    assert_chains_verify(w.app)


async def test_failures_blame_the_number_only_when_it_is_dead_and_delivered_wins(
    world: World,
) -> None:
    w = world
    a1, a2 = w.attempts
    async with endpoint(w) as ep:
        # switched off, maybe: undelivered, the contact keeps its standing
        await ep.client.post(
            "/receipts/aliyun",
            content=aliyun_body(
                aliyun_report(
                    a1.provider_id or "", a1.idempotency_key, success=False, code="MN:0001"
                )
            ),
        )
        assert attempt(w.app, a1.id).state == "undelivered"
        assert contact_status(w.app) == "unknown"
        # the HLR does not know the number: the contact point is bad
        await ep.client.post(
            "/receipts/aliyun",
            content=aliyun_body(
                aliyun_report(
                    a2.provider_id or "", a2.idempotency_key, success=False, code="MK:0001"
                )
            ),
        )
        assert attempt(w.app, a2.id).state == "undelivered"
        assert contact_status(w.app) == "bad"
        [bad] = events(w.app, "contact_bad")
        assert bad["data"]["value"] == AGENT_PHONE and "MK:0001" in bad["data"]["reason"]
        # a later delivery proves the number works after all
        await ep.client.post(
            "/receipts/aliyun",
            content=aliyun_body(aliyun_report(a1.provider_id or "", a1.idempotency_key)),
        )
        assert attempt(w.app, a1.id).state == "delivered"
        assert contact_status(w.app) == "good"
        # and a failure reported after the delivery is kept but changes nothing
        await ep.client.post(
            "/receipts/aliyun",
            content=aliyun_body(
                aliyun_report(
                    a1.provider_id or "", a1.idempotency_key, success=False, code="MK:0012"
                )
            ),
        )
    late = events(w.app, "undelivered")[-1]
    assert late["data"]["attempt"] == a1.id and "already reported delivered" in late["data"]["note"]
    assert attempt(w.app, a1.id).state == "delivered"
    assert contact_status(w.app) == "good"
    assert_chains_verify(w.app)


@pytest.mark.parametrize("world", ["tencent"], indirect=True)
async def test_tencent_callback_is_matched_by_serial_no(world: World) -> None:
    w = world
    a1, _a2 = w.attempts
    assert a1.provider_id and a1.provider_id.startswith("5000:")
    body = json.dumps(
        [{**TENCENT_PUSH_EXAMPLE[0], "mobile": "13900139000", "sid": a1.provider_id}],
        ensure_ascii=False,
    ).encode()
    async with endpoint(w) as ep:
        reply = await ep.client.post("/receipts/tencent", content=body, headers=JSON)
    assert (reply.status_code, reply.content) == (200, b'{"result":0,"errmsg":"OK"}')
    assert reply.content == TENCENT_OK.encode()
    [delivered] = events(w.app, "delivered")
    assert delivered["data"]["attempt"] == a1.id
    assert (delivered["data"]["provider"], delivered["data"]["code"]) == ("tencent", "DELIVRD")
    assert attempt(w.app, a1.id).state == "delivered"
    assert contact_status(w.app) == "good"
    assert_chains_verify(w.app)


@pytest.mark.parametrize("world", ["twilio"], indirect=True)
async def test_twilio_callback_with_a_valid_signature_is_recorded(world: World) -> None:
    w = world
    a1, _a2 = w.attempts
    sid = a1.provider_id or ""
    assert sid.startswith("SM")
    url = PUBLIC_URL + "/receipts/twilio"
    async with endpoint(w) as ep:
        for status in ("sent", "delivered"):
            form = twilio_form(sid, status)
            reply = await ep.client.post(
                "/receipts/twilio",
                content=urlencode(form),
                headers={
                    "content-type": "application/x-www-form-urlencoded",
                    "x-twilio-signature": twilio_signature(url, form),
                },
            )
            assert reply.status_code == 200
    progress = events(w.app, "delivery_progress")
    delivered = events(w.app, "delivered")
    assert [e["data"]["stage"] for e in progress + delivered] == ["sent", "delivered"]
    assert all(e["data"]["verified"] == "X-Twilio-Signature" for e in progress + delivered)
    assert attempt(w.app, a1.id).state == "delivered"
    assert_chains_verify(w.app)


@pytest.mark.parametrize("world", ["twilio"], indirect=True)
async def test_twilio_callback_that_fails_the_signature_is_refused_and_leaves_no_trace(
    world: World,
) -> None:
    w = world
    sid = w.attempts[0].provider_id or ""
    url = PUBLIC_URL + "/receipts/twilio"
    signed = twilio_form(sid, "undelivered", "30005")
    tampered = twilio_form(sid, "delivered")  # body changed after signing
    stranger = [(k, "AC" + "0" * 32 if k == "AccountSid" else v) for k, v in signed]
    attempts = [
        (signed, twilio_signature(url, signed, token="not-the-token")),  # forged
        (tampered, twilio_signature(url, signed)),
        (signed, twilio_signature("https://elsewhere.example.com/receipts/twilio", signed)),
        (stranger, twilio_signature(url, stranger)),  # an account we do not have
        (signed, None),  # no signature at all
    ]
    before = counts(w.app)
    async with endpoint(w) as ep:
        for form, signature in attempts:
            headers = {"content-type": "application/x-www-form-urlencoded"}
            if signature:
                headers["x-twilio-signature"] = signature
            reply = await ep.client.post(
                "/receipts/twilio", content=urlencode(form), headers=headers
            )
            assert reply.status_code == 403
        assert ep.server.stats.refused == len(attempts)
    assert counts(w.app) == before
    assert {attempt(w.app, a.id).state for a in w.attempts} == {"sent"}
    assert contact_status(w.app) == "unknown"


async def test_a_receipt_for_no_known_send_is_kept_unmatched_and_listed(world: World) -> None:
    w = world
    body = aliyun_body(aliyun_report("999999999999^0", "not-one-of-ours"))
    async with endpoint(w) as ep:
        reply = await ep.client.post("/receipts/aliyun", content=body, headers=JSON)
    assert (reply.status_code, reply.content) == (200, ALIYUN_OK.encode())
    [kept] = events(w.app, "receipt_unmatched")
    assert kept["chain"] == UNMATCHED_CHAIN
    assert kept["data"]["provider_id"] == "999999999999^0"
    assert kept["data"]["receipt_sha256"] == hashlib.sha256(body).hexdigest()
    assert events(w.app, "delivered") == []
    result = CliRunner().invoke(
        main, ["-c", str(w.config), "receipts", "list", "--unmatched", "--json"]
    )
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert (row["provider_id"], row["out_id"], row["attempt"]) == (
        "999999999999^0",
        "not-one-of-ours",
        None,
    )
    assert_chains_verify(w.app)


async def test_a_receipt_that_overtakes_the_send_record_is_matched_later(
    tmp_path: Path, httpx_mock: HTTPXMock
) -> None:
    w = await make_world(tmp_path, httpx_mock, "tencent", dispatch=False)
    try:
        first_serial = "5000:1045710669157053657849499601"  # what SendSms will answer first
        body = json.dumps(
            [{**TENCENT_PUSH_EXAMPLE[0], "mobile": "13900139000", "sid": first_serial}]
        ).encode()
        async with endpoint(w) as ep:
            reply = await ep.client.post("/receipts/tencent", content=body, headers=JSON)
            assert reply.status_code == 200
        assert len(events(w.app, "receipt_unmatched")) == 1
        await dispatch_all(w.app, httpx_mock, "tencent")
        [sent] = [a for a in _sms_attempts(w.app) if a.provider_id == first_serial]
        channels = {"tencent": ["tc"]}
        assert await asyncio.to_thread(ingest_rematch, w.app.sessions, channels) == 1
        [delivered] = events(w.app, "delivered")
        assert delivered["data"]["attempt"] == sent.id
        assert attempt(w.app, sent.id).state == "delivered"
        assert await asyncio.to_thread(ingest_rematch, w.app.sessions, channels) == 0
        assert_chains_verify(w.app)
    finally:
        w.app.close()


async def test_an_unreadable_push_is_kept_once_and_answered_400(world: World) -> None:
    w = world
    body = b"<xml>not what Aliyun documents</xml>"
    async with endpoint(w) as ep:
        for _ in range(2):
            reply = await ep.client.post("/receipts/aliyun", content=body, headers=JSON)
            assert reply.status_code == 400 and reply.json()["code"] == 1
    [kept] = events(w.app, "receipt_unreadable")
    assert kept["data"]["receipt_sha256"] == hashlib.sha256(body).hexdigest()
    with w.app.sessions() as s:
        assert s.get(Blob, kept["data"]["receipt_sha256"]) is not None


async def test_routes_methods_and_body_size(world: World) -> None:
    async with endpoint(world) as ep:
        assert (await ep.client.get("/receipts/aliyun")).status_code == 405
        assert (await ep.client.post("/receipts/nowhere", content=b"[]")).status_code == 404
        huge = b"[" + b" " * (2 << 20) + b"]"
        assert (await ep.client.post("/receipts/aliyun", content=huge)).status_code == 413
        empty = await ep.client.post("/receipts/aliyun", content=b"[]", headers=JSON)
        assert (empty.status_code, empty.content) == (200, ALIYUN_OK.encode())


async def test_stop_lets_a_request_in_flight_finish_and_refuses_new_ones(world: World) -> None:
    w = world
    a1 = w.attempts[0]
    server, _ = ReceiptServer.from_config(w.app.sessions, w.app.config, ENV)
    host, port = await server.start("127.0.0.1", 0)
    body = aliyun_body(aliyun_report(a1.provider_id or "", a1.idempotency_key))
    head = (
        "POST /receipts/aliyun HTTP/1.1\r\nHost: provider\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head + body[:10])  # the provider is half-way through its push
    await writer.drain()
    await asyncio.sleep(0.1)
    stopping = asyncio.create_task(server.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()
    with pytest.raises(OSError):
        await asyncio.open_connection(host, port)
    writer.write(body[10:])
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    await asyncio.wait_for(stopping, 5)
    writer.close()
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close" in response.lower()
    assert response.endswith(ALIYUN_OK.encode())
    assert len(events(w.app, "delivered")) == 1


# ------------------------------------------------------------------------------ polling


def _query_params(request: httpx.Request) -> dict[str, str]:
    pairs = [p.split("=", 1) for p in request.url.query.decode("ascii").split("&") if p]
    return {unquote(k): unquote(v) for k, v in pairs}


ALIYUN_URL = re.compile(r"https://dysmsapi\.aliyuncs\.com/\?.*")


async def _poll(w: World) -> Any:
    """Poll the channel of the provider under test only."""
    built = build_status_channels(w.app.config, ENV)
    mine = {n: c for n, c in built.items() if c.adapter == ADAPTERS[w.provider]}
    try:
        return await poll_receipts(w.app.sessions, w.app.config, mine)
    finally:
        for channel in built.values():
            await channel.aclose()


async def test_poll_aliyun_asks_for_each_waiting_attempt_by_biz_id(
    world_any_db: World, httpx_mock: HTTPXMock
) -> None:
    w = world_any_db
    keys = {a.provider_id: a.idempotency_key for a in w.attempts}
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        biz_id = _query_params(request)["BizId"]
        return httpx.Response(200, json=aliyun_query_answer([aliyun_dto(keys[biz_id])]))

    httpx_mock.add_callback(
        answer, url=ALIYUN_URL, match_headers={"x-acs-action": "QuerySendDetails"}, is_reusable=True
    )
    report = await _poll(w)
    assert report.errors == []
    assert [c.ingest.recorded for c in report.channels] == [2]
    assert len(seen) == 2
    for request in seen:
        params = _query_params(request)
        assert params["PhoneNumber"] == "13900139000"
        assert params["SendDate"] == clock.today().strftime("%Y%m%d")
        assert params["BizId"] in keys and params["PageSize"] == "10"
        assert request.headers["authorization"].startswith(
            "ACS3-HMAC-SHA256 Credential=LTAI5tTestKeyId,"
        )
        assert ENV["T_ALI_SECRET"] not in str(request.url) + str(request.headers)
    delivered = events(w.app, "delivered")
    assert {e["data"]["via"] for e in delivered} == {"poll"}
    assert {e["data"]["matched_by"] for e in delivered} == {"provider_id"}
    assert contact_status(w.app) == "good"
    again = await _poll(w)  # nothing waits any more
    assert sum(c.queries for c in again.channels) == 0
    assert_chains_verify(w.app)


async def test_poll_aliyun_finds_a_send_whose_answer_was_lost_by_its_out_id(
    world: World, httpx_mock: HTTPXMock
) -> None:
    w = world
    lost, known = w.attempts
    with w.app.sessions.begin() as s:  # the dispatcher never saw SendSms answer for this one
        row = s.get(Attempt, lost.id)
        assert row is not None
        row.state, row.provider_id = "unknown", None

    def answer(request: httpx.Request) -> httpx.Response:
        params = _query_params(request)
        if "BizId" in params:
            return httpx.Response(
                200, json=aliyun_query_answer([aliyun_dto(known.idempotency_key)])
            )
        assert params["PageSize"] == "50"  # every send to the number that day
        return httpx.Response(
            200,
            json=aliyun_query_answer(
                [aliyun_dto(lost.idempotency_key), aliyun_dto("sent-by-someone-else", 2, "MK:0005")]
            ),
        )

    httpx_mock.add_callback(
        answer, url=ALIYUN_URL, match_headers={"x-acs-action": "QuerySendDetails"}, is_reusable=True
    )
    report = await _poll(w)
    assert report.errors == []
    [channel] = report.channels
    assert (channel.queries, channel.ingest.recorded, channel.ingest.unmatched) == (2, 2, 1)
    by_attempt = {e["data"]["attempt"]: e["data"] for e in events(w.app, "delivered")}
    assert by_attempt[lost.id]["matched_by"] == "out_id"
    assert by_attempt[known.id]["matched_by"] == "provider_id"
    assert attempt(w.app, lost.id).state == "delivered"  # the unknown is resolved: no re-send
    assert_chains_verify(w.app)


@pytest.mark.parametrize("world", ["tencent"], indirect=True)
async def test_poll_tencent_pulls_reports_and_keeps_what_it_cannot_match(
    world: World, httpx_mock: HTTPXMock
) -> None:
    w = world
    a1, _a2 = w.attempts
    pulled = json.loads(json.dumps(TENCENT_PULL_EXAMPLE))
    mine = pulled["Response"]["PullSmsSendStatusSet"][0]
    mine.update(
        SerialNo=a1.provider_id,
        PhoneNumber=AGENT_PHONE,
        SubscriberNumber="13900139000",
        SessionContext=a1.idempotency_key,
    )
    stranger = {
        **mine,
        "SerialNo": "5000:9999",
        "SessionContext": "",
        "ReportStatus": "FAIL",
        "Description": "UNDELIV",
    }
    pulled["Response"]["PullSmsSendStatusSet"].append(stranger)
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=pulled)

    httpx_mock.add_callback(
        answer,
        url="https://sms.tencentcloudapi.com/",
        match_headers={"x-tc-action": "PullSmsSendStatus"},
    )
    report = await _poll(w)
    assert report.errors == []
    [channel] = report.channels
    assert (channel.queries, channel.ingest.recorded, channel.ingest.unmatched) == (1, 1, 1)
    [request] = seen
    assert json.loads(request.content) == {"Limit": 100, "SmsSdkAppId": "1400006666"}
    # the signature on the wire recomputes from the request with the documented TC3 steps
    stamp = int(request.headers["x-tc-timestamp"])
    signed = {k: request.headers[k] for k in ("content-type", "host", "x-tc-action")}
    canonical, names = tencent_sms.canonical_request("POST", "/", "", signed, request.content)
    expected = tencent_sms.sign(
        ENV["T_TC_KEY"], stamp, "sms", tencent_sms.string_to_sign(stamp, "sms", canonical)
    )
    assert request.headers["authorization"] == tencent_sms.authorization(
        ENV["T_TC_ID"], stamp, "sms", names, expected
    )
    [delivered] = events(w.app, "delivered")
    assert (delivered["data"]["attempt"], delivered["data"]["via"]) == (a1.id, "poll")
    assert len(events(w.app, "receipt_unmatched")) == 1
    assert_chains_verify(w.app)


def test_cli_poll_reports_a_refusal_and_exits_1(
    tmp_path: Path, httpx_mock: HTTPXMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = asyncio.run(make_world(tmp_path, httpx_mock, "aliyun"))
    w.app.close()
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    httpx_mock.add_response(
        url=ALIYUN_URL,
        match_headers={"x-acs-action": "QuerySendDetails"},
        json=aliyun_query_answer([], "isv.BUSINESS_LIMIT_CONTROL"),
        is_reusable=True,
    )
    httpx_mock.add_response(  # Tencent has nothing queued
        url="https://sms.tencentcloudapi.com/",
        match_headers={"x-tc-action": "PullSmsSendStatus"},
        json={"Response": {"PullSmsSendStatusSet": [], "RequestId": "r-1"}},
    )
    result = CliRunner().invoke(main, ["-c", str(w.config), "receipts", "poll", "--json"])
    assert result.exit_code == 1, result.output
    rows = {r["channel"]: r for r in json.loads(result.stdout)}
    assert rows["tc"]["errors"] == "" and rows["tc"]["queries"] == 1
    assert "isv.BUSINESS_LIMIT_CONTROL" in result.output


def test_cli_poll_names_a_missing_secret_and_exits_2(tmp_path: Path) -> None:
    path = _config(tmp_path, "aliyun")
    env = {k: v for k, v in os.environ.items() if not k.startswith("T_")}
    result = CliRunner(env={**env, "T_ALI_ID": ""}).invoke(
        main, ["-c", str(path), "receipts", "poll"]
    )
    assert result.exit_code == 2
    assert "T_ALI_ID" in result.output and ENV["T_ALI_SECRET"] not in result.output


# ------------------------------------------------------------------------------ the command


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_runs_until_a_signal_and_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    path = _config(tmp_path, "aliyun")
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}
    env.pop("OUTREACH_DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "outreach", "-c", str(path), "receipts", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
        assert found, line + (proc.stderr.read() if proc.stderr else "")
        base = f"http://127.0.0.1:{found.group(1)}"
        body = aliyun_body(aliyun_report("123^0", "nobody"))
        with httpx.Client(base_url=base, timeout=10) as client:
            reply = client.post("/receipts/aliyun", content=body, headers=JSON)
        assert (reply.status_code, reply.content) == (200, ALIYUN_OK.encode())
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "stopped: 1 requests, 1 reports: 0 recorded, 0 duplicates, 1 unmatched" in out


def test_api_key_twilio_channels_verify_callbacks_with_callback_auth_token_env(
    tmp_path: Path,
) -> None:
    """Twilio signs callbacks with the Auth Token even when an API key sent the message: an
    API-key channel names the token in callback_auth_token_env, or its callbacks are refused
    (and the operator is told why)."""
    from outreach.receipts_server import twilio_accounts

    def load(path: Path) -> Any:
        app = App.open(path)
        app.close()
        return app.config

    api_key = (
        CHANNEL_TABLES["twilio"]
        .replace('auth_token_env = "T_TW_TOKEN"', 'api_key_sid = "SK' + "2e" * 16 + '"')
        .replace("limits = []", 'api_key_secret_env = "T_TW_KEY"\nlimits = []')
    )
    env = {**ENV, "T_TW_KEY": "tw-key-secret-for-tests-only"}
    path = _config(tmp_path, "aliyun")
    text = path.read_text(encoding="utf-8").replace(CHANNEL_TABLES["twilio"], api_key)
    path.write_text(text, encoding="utf-8")
    accounts, warnings = twilio_accounts(load(path), env)
    assert accounts == [] and "callback_auth_token_env" in warnings[0]

    path.write_text(
        text.replace(api_key, api_key + 'callback_auth_token_env = "T_TW_TOKEN"\n'),
        encoding="utf-8",
    )
    accounts, warnings = twilio_accounts(load(path), env)
    assert warnings == [] and [a.auth_token for a in accounts] == [TWILIO_TOKEN]
    assert TWILIO_TOKEN not in repr(accounts)


async def test_a_path_token_hides_the_unsigned_routes(world: World) -> None:
    """With [receipts] path_token_env, Aliyun/Tencent pushes are taken only under the secret
    path; the bare and wrong-token paths answer 404 and leave nothing behind."""
    from outreach.receipts_server import channels_by_provider

    token = "k3Fq9-secret_path_token"
    w = world
    a1 = w.attempts[0]
    assert a1.provider_id
    body = aliyun_body(aliyun_report(a1.provider_id, a1.idempotency_key))
    server = ReceiptServer(
        w.app.sessions,
        channels=channels_by_provider(w.app.config),
        public_url=PUBLIC_URL,
        path_token=token,
    )
    host, port = await server.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
            before = counts(w.app)
            for path in ("/receipts/aliyun", "/receipts/wrong-token-0000000/aliyun"):
                refused = await client.post(path, content=body, headers=JSON)
                assert refused.status_code == 404
            assert counts(w.app) == before
            taken = await client.post(f"/receipts/{token}/aliyun", content=body, headers=JSON)
            assert taken.status_code == 200 and taken.content == ALIYUN_OK.encode()
    finally:
        await server.stop()
    assert attempt(w.app, a1.id).state == "delivered"
    assert token not in json.dumps(events(w.app), ensure_ascii=False)


def test_path_token_settings_are_checked(world: World) -> None:
    base = world.app.config
    receipts = base.receipts.model_copy(update={"path_token_env": "T_RECEIPTS_TOKEN"})
    cfg = base.model_copy(update={"receipts": receipts})
    with pytest.raises(ValueError, match="T_RECEIPTS_TOKEN is not set"):
        ReceiptServer.from_config(world.app.sessions, cfg, ENV)
    with pytest.raises(ValueError, match="16 or more"):
        ReceiptServer.from_config(world.app.sessions, cfg, {**ENV, "T_RECEIPTS_TOKEN": "short"})
    _, warnings = ReceiptServer.from_config(
        world.app.sessions, world.app.config, ENV
    )  # no token, Aliyun/Tencent channels configured: the operator is told
    assert any("path_token_env" in x for x in warnings)
