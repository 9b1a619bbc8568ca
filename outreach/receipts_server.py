"""The receipt endpoint: a small HTTP/1.1 server the SMS providers push delivery reports to.

``POST /receipts/aliyun``   Aliyun ``SmsReport`` batch push; reply ``{"code":0,"msg":"接收成功"}``
``POST /receipts/tencent``  Tencent status callback; reply ``{"result":0,"errmsg":"OK"}``
``POST /receipts/twilio``   Twilio status callback; ``X-Twilio-Signature`` checked first

Built on asyncio streams with h11 (httpx's own HTTP/1.1 state machine, so already installed)
doing the HTTP/1.1 framing, rather than on a web framework: three routes do not need one,
and h11 gets keep-alive, chunked bodies and malformed requests right. Database work runs in a
thread (SQLAlchemy sessions are synchronous), one transaction per request, and the provider's
success reply is sent only after that transaction committed: a crash before the commit costs
a re-push, never a lost receipt. Failures answer 5xx so the provider pushes again (Aliyun asks
for exactly that), and re-pushes are deduplicated (:mod:`outreach.receipts`).

Twilio is the only provider here that signs its callbacks. The signature covers the URL
Twilio called, so it is checked against ``[receipts].public_url`` + the request path (and the
channel's own ``status_callback`` URL, if set); a request that fails the check gets 403 and
leaves no trace in the database. Aliyun and Tencent pushes carry no signature: with
``[receipts] path_token_env`` their routes move to ``/receipts/<token>/aliyun`` and
``/receipts/<token>/tencent`` (the bare paths answer 404), so only whoever was given the URL
can post; the token is compared in constant time and never logged or stored. Without it, keep
the endpoint on a network only they reach. A forged report can at worst claim a delivery, and
every report keeps its exact bytes.

Stopping (:meth:`ReceiptServer.stop`) closes the listening socket, lets requests in flight
finish and answer, and closes idle keep-alive connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

import h11
from sqlalchemy.orm import Session, sessionmaker

from channels.twilio_sms import validate_twilio_signature
from outreach import clock
from outreach.config import Config
from outreach.receipt_formats import (
    ReceiptFormatError,
    parse_aliyun_push,
    parse_tencent_push,
    parse_twilio_status,
)
from outreach.receipts import (
    ADAPTERS,
    IngestReport,
    channels_by_provider,
    ingest,
    record_reports,
    record_unreadable,
)

log = logging.getLogger("outreach.receipts")

ALIYUN_OK = json.dumps({"code": 0, "msg": "接收成功"}, ensure_ascii=False, separators=(",", ":"))
TENCENT_OK = json.dumps({"result": 0, "errmsg": "OK"}, separators=(",", ":"))
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,}")

ROUTES = {
    "/receipts/aliyun": "aliyun",
    "/receipts/tencent": "tencent",
    "/receipts/twilio": "twilio",
}
#: A push carries a few hundred reports at most; anything far larger is not a receipt.
MAX_BODY = 1 << 20
#: How long a connection may sit idle (or dribble a request) before it is closed.
IDLE_TIMEOUT = 30.0


@dataclass(frozen=True)
class TwilioAccount:
    """What verifies one Twilio account's callbacks. ``repr`` leaves the token out."""

    channel: str
    account_sid: str
    auth_token: str = field(repr=False)
    status_callback: str | None = None


def twilio_accounts(
    config: Config, env: Mapping[str, str]
) -> tuple[list[TwilioAccount], list[str]]:
    """Twilio accounts whose callbacks can be verified, and warnings for those that cannot.

    Twilio signs callbacks with the account's Auth Token; a channel that sends with an API key
    names it in ``callback_auth_token_env`` or its callbacks cannot be checked (and are
    refused). ``ValueError`` when a named variable is unset.
    """
    accounts: list[TwilioAccount] = []
    warnings: list[str] = []
    for name, settings in config.channels.items():
        if settings.get("adapter") != ADAPTERS["twilio"]:
            continue
        key = "auth_token_env" if settings.get("auth_token_env") else "callback_auth_token_env"
        var = settings.get(key)
        if not var:
            warnings.append(
                f"channels.{name}: sends with an API key and has no callback_auth_token_env, so "
                "its status callbacks cannot be verified and will be refused (Twilio signs "
                "them with the account's Auth Token)"
            )
            continue
        token = env.get(str(var))
        if not token:
            raise ValueError(f"channels.{name}.{key}: environment variable {var} is not set")
        callback = settings.get("status_callback")
        accounts.append(
            TwilioAccount(
                name, str(settings["account_sid"]), token, str(callback) if callback else None
            )
        )
    return accounts, warnings


@dataclass
class ServerStats:
    requests: int = 0
    refused: int = 0  # forged signatures, unknown accounts
    unreadable: int = 0
    failed: int = 0  # answered 5xx
    receipts: IngestReport = field(default_factory=IngestReport)

    def describe(self) -> str:
        return (
            f"{self.requests} requests, {self.receipts.describe()}, {self.unreadable} "
            f"unreadable, {self.refused} refused, {self.failed} failed"
        )


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def _json_reply(status: int, text: str) -> _Reply:
    return _Reply(status, text.encode("utf-8"), "application/json; charset=utf-8")


class ReceiptServer:
    """Serve the three receipt routes over ``sessions`` until :meth:`stop`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        channels: Mapping[str, Collection[str]] | None = None,
        twilio: Sequence[TwilioAccount] = (),
        public_url: str | None = None,
        path_token: str | None = None,
        now: Callable[[], datetime] = clock.now,
        max_body: int = MAX_BODY,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.sessions = sessions
        self.channels = dict(channels or {})
        self.twilio = {a.account_sid: a for a in twilio}
        self.public_url = public_url.rstrip("/") if public_url else None
        if path_token is not None and not _TOKEN.fullmatch(path_token):
            raise ValueError(
                "receipts.path_token_env: the token must be 16 or more letters, digits, - or _"
            )
        self._path_token = path_token
        self.now = now
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.stats = ServerStats()
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._idle: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(
        cls, sessions: sessionmaker[Session], config: Config, env: Mapping[str, str]
    ) -> tuple[ReceiptServer, list[str]]:
        accounts, warnings = twilio_accounts(config, env)
        token = None
        var = config.receipts.path_token_env
        if var:
            token = env.get(var)
            if not token:
                raise ValueError(f"receipts.path_token_env: environment variable {var} is not set")
        elif channels_by_provider(config).keys() & {"aliyun", "tencent"}:
            warnings.append(
                "receipts: Aliyun and Tencent sign nothing they push; without "
                "receipts.path_token_env anyone who can reach the endpoint can post a receipt"
            )
        server = cls(
            sessions,
            channels=channels_by_provider(config),
            twilio=accounts,
            public_url=config.receipts.public_url,
            path_token=token,
        )
        return server, warnings

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and start accepting; returns the bound address (``port=0`` picks a free one)."""
        self._server = await asyncio.start_server(self._connection, host, port)
        sock = self._server.sockets[0].getsockname()
        return str(sock[0]), int(sock[1])

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, finish what is in flight (up to ``grace`` seconds), close the rest."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._idle):
            writer.close()
        if self._handlers:
            _done, pending = await asyncio.wait(list(self._handlers), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------------ HTTP/1.1

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            log.exception("receipt connection failed")
        finally:
            self._handlers.discard(task)
            self._idle.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        while not self._stopping:
            self._idle.add(writer)
            try:
                request, body = await self._read_request(conn, reader, writer)
            except _Reject as reject:
                await self._send(conn, writer, reject.reply, close=True)
                return
            finally:
                self._idle.discard(writer)
            if request is None:
                return
            reply = await self._handle(request, body)
            close = self._stopping or conn.our_state is h11.MUST_CLOSE
            await self._send(conn, writer, reply, close=close)
            if close or conn.our_state is not h11.DONE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _Reject(_Reply(exc.error_status_hint, b"bad request\n")) from None
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    writer.write(
                        conn.send(
                            h11.InformationalResponse(
                                status_code=100, headers=[], reason=b"Continue"
                            )
                        )
                    )
                data = await asyncio.wait_for(reader.read(65536), self.idle_timeout)
                if data:  # a request has begun: a stop now lets it finish
                    self._idle.discard(writer)
                conn.receive_data(data)
                if not data and request is None:
                    return None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
                length = _header(event, b"content-length")
                if length is not None and length.isdigit() and int(length) > self.max_body:
                    raise _Reject(_Reply(413, b"too large\n"))
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body:
                    raise _Reject(_Reply(413, b"too large\n"))
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return request, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _send(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, reply: _Reply, *, close: bool
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        headers = [
            ("content-type", reply.content_type),
            ("content-length", str(len(reply.body))),
            *reply.headers,
        ]
        if close:
            headers.append(("connection", "close"))
        try:
            data = conn.send(
                h11.Response(
                    status_code=reply.status,
                    headers=headers,
                    reason=HTTPStatus(reply.status).phrase.encode("ascii"),
                )
            )
            data += conn.send(h11.Data(data=reply.body)) if reply.body else b""
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return
        writer.write(data)
        await writer.drain()

    # ------------------------------------------------------------------ routes

    async def _handle(self, request: h11.Request, body: bytes) -> _Reply:
        self.stats.requests += 1
        target = request.target.decode("latin-1")
        provider = self._route(urlsplit(target).path)
        if provider is None:
            return _Reply(404, b"not found\n")
        if request.method != b"POST":
            return _Reply(405, b"POST only\n", headers=(("allow", "POST"),))
        try:
            if provider == "twilio":
                reply = await self._twilio(request, target, body)
            else:
                reply, result = await asyncio.to_thread(self._json_push, provider, body)
                if result is None:
                    self.stats.unreadable += 1
                else:
                    self.stats.receipts.add(result)
                    log.info("%s push: %s", provider, result.describe())
        except Exception:
            log.exception("%s receipt could not be recorded", provider)
            self.stats.failed += 1
            if provider == "aliyun":
                return _json_reply(500, '{"code":1,"msg":"暂时无法接收，请重推"}')
            if provider == "tencent":
                return _json_reply(500, '{"result":1,"errmsg":"temporarily unavailable"}')
            return _Reply(500, b"temporarily unavailable\n")
        return reply

    def _json_push(self, provider: str, body: bytes) -> tuple[_Reply, IngestReport | None]:
        """Parse and record one Aliyun or Tencent push (in a worker thread)."""
        parse = parse_aliyun_push if provider == "aliyun" else parse_tencent_push
        try:
            reports = parse(body)
        except ReceiptFormatError as exc:
            problem = str(exc)
            ingest(
                self.sessions,
                lambda s: _unreadable(s, provider, body, "application/json", problem, self.now()),
            )
            log.warning("%s push unreadable (kept): %s", provider, problem)
            if provider == "aliyun":
                text = json.dumps({"code": 1, "msg": problem}, ensure_ascii=False)
            else:
                text = json.dumps({"result": 1, "errmsg": problem}, ensure_ascii=False)
            return _json_reply(400, text), None
        result = ingest(
            self.sessions,
            lambda s: record_reports(
                s,
                reports,
                body,
                "application/json",
                via="push",
                channels=self.channels.get(provider, ()),
                at=self.now(),
            ),
        )
        return _json_reply(200, ALIYUN_OK if provider == "aliyun" else TENCENT_OK), result

    def _route(self, path: str) -> str | None:
        """The provider a path is for. With a path token, Aliyun and Tencent are served only
        under ``/receipts/<token>/``; Twilio (whose callbacks are signed) under both."""
        if self._path_token is None:
            return ROUTES.get(path)
        prefix, _, rest = path.partition("/receipts/")
        token, _, name = rest.partition("/")
        if prefix == "" and name and hmac.compare_digest(token, self._path_token):
            return ROUTES.get(f"/receipts/{name}")
        provider = ROUTES.get(path)
        return provider if provider == "twilio" else None

    async def _twilio(self, request: h11.Request, target: str, body: bytes) -> _Reply:
        form = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        signature = (_header(request, b"x-twilio-signature") or b"").decode("latin-1")
        account = self.twilio.get(dict(form).get("AccountSid", ""))
        if (
            not signature
            or account is None
            or not self._twilio_verified(account, request, target, form, signature)
        ):
            self.stats.refused += 1
            log.warning("twilio callback refused: signature missing, forged or account unknown")
            return _Reply(403, b"forbidden\n")
        try:
            report = parse_twilio_status(form)
        except ReceiptFormatError as exc:
            problem = str(exc)
            await asyncio.to_thread(
                ingest,
                self.sessions,
                lambda s: _unreadable(
                    s, "twilio", body, "application/x-www-form-urlencoded", problem, self.now()
                ),
            )
            self.stats.unreadable += 1
            return _Reply(400, f"{problem}\n".encode())
        channels = [account.channel]
        result = await asyncio.to_thread(
            ingest,
            self.sessions,
            lambda s: record_reports(
                s,
                [report],
                body,
                "application/x-www-form-urlencoded",
                via="push",
                channels=channels,
                verified="X-Twilio-Signature",
                at=self.now(),
            ),
        )
        self.stats.receipts.add(result)
        log.info("twilio callback %s %s: %s", report.provider_id, report.stage, result.describe())
        return _Reply(200)

    def _twilio_verified(
        self,
        account: TwilioAccount,
        request: h11.Request,
        target: str,
        form: list[tuple[str, str]],
        signature: str,
    ) -> bool:
        """Check the signature against each URL Twilio may have called. Any candidate is safe
        to try: without the Auth Token no URL makes a forged signature match."""
        candidates: list[str] = []
        if self.public_url:
            candidates.append(self.public_url + target)
        else:
            host = (_header(request, b"host") or b"").decode("latin-1")
            if host:
                candidates += [f"https://{host}{target}", f"http://{host}{target}"]
        if account.status_callback:
            candidates.append(account.status_callback)
        return any(
            validate_twilio_signature(url, form, signature, account.auth_token)
            for url in candidates
        )


def _unreadable(
    s: Session, provider: str, body: bytes, media_type: str, problem: str, at: datetime
) -> IngestReport:
    record_unreadable(s, provider, body, media_type, problem, at=at)
    return IngestReport()


def _header(request: h11.Request, name: bytes) -> bytes | None:
    for key, value in request.headers:
        if key == name:
            return bytes(value)
    return None


class _Reject(Exception):
    def __init__(self, reply: _Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (the ``[receipts].listen`` form) as a pair."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


__all__: list[str] = [
    "ALIYUN_OK",
    "TENCENT_OK",
    "ReceiptServer",
    "ServerStats",
    "TwilioAccount",
    "listen_address",
    "twilio_accounts",
]
