"""A real SMTP server on 127.0.0.1 for channel tests, with the faults real relays have.

Built on aiosmtpd, run on its own event loop in a thread, so a slow or dropping server behaves
like a remote one: the client's loop is never the one sleeping. Every server binds port 0 (no
port clashes between parallel runs) and the fixtures always stop it.

What it keeps is what a proof test needs to compare: every byte each connection sent (after TLS
decryption, so AUTH and the dot-stuffed DATA are visible as on the wire) and, per message, the
envelope and the content exactly as received (dot-unstuffed by aiosmtpd), whose sha256 must equal
the sha256 of the prepared payload.

Use it through the fixtures (``smtp_server``, ``smtp_server_factory``, ``tls_files``), which
``tests/conftest_smtp.py`` re-exports for ``pytest_plugins``, or directly::

    with LoopbackSmtpServer(faults=Faults(rcpt="451 4.7.1 Try again later")) as server:
        ...
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import ipaddress
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST = "127.0.0.1"


@dataclass
class Faults:
    """How the server misbehaves. Mutable: a test may change it between two sends (a fault
    that clears, to check the connection is still usable)."""

    greeting: str | None = None  # sent instead of "220 ...", then the server hangs up
    greeting_delay: float = 0.0  # seconds before the greeting (a server that never answers)
    mail: str | None = None  # reply to MAIL FROM instead of 250
    rcpt: str | None = None  # reply to RCPT TO instead of 250, e.g. "451 4.7.1 ..."
    rcpt_delay: float = 0.0  # seconds before replying to RCPT
    data_end: str | None = None  # reply after the final "." instead of 250, e.g. "554 ..."
    data_end_delay: float = 0.0  # seconds before replying after the final "."
    drop_after_data: bool = False  # take the whole message, then hang up without a reply
    hang_up_at: str | None = None  # "MAIL", "RCPT" or "DATA": hang up on that command, no reply
    dsn: bool = False  # advertise DSN and accept RET/ENVID/NOTIFY/ORCPT
    echo_credentials: bool = False  # a leaky relay: quote the AUTH blob in its 535 reply


@dataclass(frozen=True)
class Received:
    """One message as the server got it (even when it then refused it or hung up)."""

    connection: int
    mail_from: str
    mail_options: tuple[str, ...]  # upper-cased by aiosmtpd
    rcpt_tos: tuple[str, ...]
    rcpt_options: tuple[str, ...]  # upper-cased by aiosmtpd
    content: bytes  # exactly as received, dot-unstuffed, terminator removed
    queue_id: str
    answered: str | None  # the reply sent after the final ".", None if the server hung up

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass
class ConnectionLog:
    number: int
    received: bytearray = field(default_factory=bytearray)  # everything the client sent
    tls: bool = False  # implicit TLS, or STARTTLS completed
    authenticated_as: str | None = None


class _Handler:
    """aiosmtpd hooks that apply the :class:`Faults` and record what arrived."""

    def __init__(self, server: LoopbackSmtpServer) -> None:
        self.server = server

    async def handle_EHLO(
        self, smtp: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.server.faults.dsn:
            responses.insert(len(responses) - 1, "250-DSN")
        return responses

    async def handle_MAIL(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.server.faults.hang_up_at == "MAIL":
            await _hang_up(smtp)
        if self.server.faults.mail:
            return self.server.faults.mail
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        faults = self.server.faults
        if faults.hang_up_at == "RCPT":
            await _hang_up(smtp)
        if faults.rcpt_delay:
            await asyncio.sleep(faults.rcpt_delay)
        if faults.rcpt:
            return faults.rcpt
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        faults = self.server.faults
        assert isinstance(smtp, _FaultySMTP)
        queue_id = self.server.next_queue_id()
        answer = None
        if not faults.drop_after_data:
            answer = faults.data_end or f"250 2.0.0 Ok: queued as {queue_id}"
        self.server.record(
            Received(
                connection=smtp.log.number,
                mail_from=envelope.mail_from or "",
                mail_options=tuple(envelope.mail_options),
                rcpt_tos=tuple(envelope.rcpt_tos),
                rcpt_options=tuple(envelope.rcpt_options),
                content=bytes(envelope.original_content or b""),
                queue_id=queue_id,
                answered=answer,
            )
        )
        if faults.drop_after_data:
            await _hang_up(smtp)
        if faults.data_end_delay:
            await asyncio.sleep(faults.data_end_delay)  # cancelled when the client gives up
        assert answer is not None
        return answer

    def authenticate(
        self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword):
            login, password = data.login.decode(), data.password.decode()
            if self.server.users.get(login) == password:
                assert isinstance(smtp, _FaultySMTP)
                smtp.log.authenticated_as = login
                return AuthResult(success=True)
            if self.server.faults.echo_credentials:
                blob = base64.b64encode(b"\0" + data.login + b"\0" + data.password).decode()
                leak = f"535 5.7.8 Authentication failed for {blob} (password {password})"
                return AuthResult(success=False, handled=False, message=leak)
        return AuthResult(success=False, handled=False)


async def _hang_up(smtp: SMTP) -> None:
    """Close without a reply. connection_lost() cancels the task running this hook, so the
    sleep never ends and aiosmtpd never writes the reply it would have sent."""
    assert smtp.transport is not None
    smtp.transport.close()
    await asyncio.sleep(3600)


class _FaultySMTP(SMTP):
    """aiosmtpd's SMTP with a byte log, a replaceable greeting and DSN parameters."""

    def __init__(self, handler: _Handler, log: ConnectionLog, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.owner = handler.server
        self.log = log

    def data_received(self, data: bytes) -> None:
        self.log.received.extend(data)
        super().data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if transport.get_extra_info("sslcontext") is not None:
            self.log.tls = True  # implicit TLS, or the STARTTLS upgrade completing

    async def _handle_client(self) -> None:
        faults = self.owner.faults
        if faults.greeting_delay:
            await asyncio.sleep(faults.greeting_delay)
        if faults.greeting is not None:
            await self.push(faults.greeting)
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    async def smtp_DATA(self, arg: str) -> None:
        if self.owner.faults.hang_up_at == "DATA":  # before 354: not one byte of the message
            await _hang_up(self)
        await super().smtp_DATA(arg)

    def _getparams(self, params: Any) -> dict[str, str | bool] | None:
        result: dict[str, str | bool] | None = super()._getparams(params)
        if result is not None and self.owner.faults.dsn:
            for key in ("RET", "ENVID", "NOTIFY", "ORCPT"):
                result.pop(key, None)  # accepted, and kept in envelope.*_options
        return result


class LoopbackSmtpServer:
    """An aiosmtpd server on ``127.0.0.1:<free port>`` in its own thread.

    ``starttls`` offers STARTTLS with that server context; ``implicit_tls`` wraps the listening
    socket instead (port 465 style). ``users`` enables AUTH PLAIN/LOGIN with those passwords;
    ``auth_require_tls`` keeps aiosmtpd's default of offering AUTH only over TLS.
    """

    def __init__(
        self,
        *,
        faults: Faults | None = None,
        starttls: ssl.SSLContext | None = None,
        implicit_tls: ssl.SSLContext | None = None,
        users: dict[str, str] | None = None,
        auth_require_tls: bool = True,
    ) -> None:
        self.faults = faults or Faults()
        self.host = HOST
        self.port = 0
        self.users = dict(users or {})
        self._starttls = starttls
        self._implicit_tls = implicit_tls
        self._auth_require_tls = auth_require_tls
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._connections: list[ConnectionLog] = []
        self._protocols: list[_FaultySMTP] = []
        self._queue_ids = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None

    # -- what arrived ------------------------------------------------------------------------

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    @property
    def connections(self) -> list[ConnectionLog]:
        with self._lock:
            return list(self._connections)

    def record(self, message: Received) -> None:
        with self._lock:
            self._messages.append(message)

    def next_queue_id(self) -> str:
        with self._lock:
            self._queue_ids += 1
            return f"4ZQ{self._queue_ids:07X}"

    # -- life cycle --------------------------------------------------------------------------

    def _factory(self) -> _FaultySMTP:
        handler = _Handler(self)
        with self._lock:
            log = ConnectionLog(number=len(self._connections) + 1)
            self._connections.append(log)
        smtp = _FaultySMTP(
            handler,
            log,
            hostname="mx.test.invalid",  # no getfqdn() per connection
            ident="outreach-test-relay",
            tls_context=self._starttls,
            auth_require_tls=self._auth_require_tls,
            authenticator=handler.authenticate if self.users else None,
            loop=self._loop,
        )
        self._protocols.append(smtp)
        return smtp

    def start(self) -> LoopbackSmtpServer:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="smtp-server", daemon=True)
        self._thread.start()
        create = loop.create_server(self._factory, HOST, 0, ssl=self._implicit_tls)
        self._server = asyncio.run_coroutine_threadsafe(create, loop).result(timeout=5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def drop_connections(self) -> None:
        """Hang up every open session, as a relay does on its idle timeout or a restart."""
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._drop(), self._loop).result(timeout=5)

    async def _drop(self) -> None:
        for smtp in self._protocols:
            if smtp.transport is not None:
                smtp.transport.close()
        await asyncio.sleep(0.01)  # let connection_lost() run

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            loop.close()
            self._loop = self._thread = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._drop()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def __enter__(self) -> LoopbackSmtpServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class TlsFiles:
    """A throw-away self-signed certificate for 127.0.0.1 and localhost."""

    cert: Path
    key: Path

    @property
    def cert_sha256(self) -> str:
        der = x509.load_pem_x509_certificate(self.cert.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        return hashlib.sha256(der).hexdigest()

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def make_self_signed(directory: Path) -> TlsFiles:
    """EC P-256 (fast to generate), valid a day either side of now, SANs for loopback."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "outreach test relay")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "relay.crt", directory / "relay.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TlsFiles(cert_path, key_path)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def smtp_server_factory() -> Iterator[Callable[..., LoopbackSmtpServer]]:
    """Start servers with any options (``LoopbackSmtpServer`` keywords); all stopped after."""
    started: list[LoopbackSmtpServer] = []

    def start(**kwargs: Any) -> LoopbackSmtpServer:
        server = LoopbackSmtpServer(**kwargs)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def smtp_server(smtp_server_factory: Callable[..., LoopbackSmtpServer]) -> LoopbackSmtpServer:
    """A well-behaved plain-text server; change ``.faults`` to make it misbehave."""
    return smtp_server_factory()


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_self_signed(tmp_path)
