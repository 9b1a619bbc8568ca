"""SMTP: a notice handed to a mail relay, with the relay's own words kept as proof.

What a court can check later is (a) the exact RFC 5322 bytes, hashed before sending, and (b) what
the relay answered when it took them: the final reply to DATA and the queue id it carries
(``250 2.0.0 Ok: queued as 4ZxY1b2c3d``) name the message in that relay's logs. So the adapter
never lets a library re-flatten the message: :meth:`SmtpChannel.prepare` builds the bytes once
with :func:`channels.mime.build_email`, and :meth:`SmtpChannel.send` drives MAIL, RCPT and DATA
itself and writes those bytes (dot-stuffed, which the server undoes) so every reply code lands in
the transcript and the server stores exactly what was hashed.

Why DATA is driven by hand: ``aiosmtplib.SMTP.data()`` writes ``DATA``, waits for 354, writes
the message *and* reads the final reply inside one call, and turns a lost connection or a read
timeout into the same exception whether it happened before or after the final ``.``. That
boundary is the whole difference between "nothing was sent, retry" and "the relay may have the
notice, record unknown and re-send the same Message-ID" (RFC 1047). So ``DATA`` goes through
``execute_command`` and the message through ``protocol.write`` + ``protocol.read_response``: any
failure before the write is :class:`Transient`, any failure after it is :class:`Unknown`. The
write hands the bytes to the transport; a drop while they are still in the kernel's buffer is
counted as Unknown too, on purpose: Unknown costs a visible duplicate, Transient a lost notice.

How a failure is classified (:func:`classify` is the pure function behind it; "innocent" means
``Permanent(bad_recipient=False)``: our relay or our configuration is at fault and the contact
point must not be marked bad):

=========================  ==================================  ===========  =====================
stage                      no reply (refused, timeout, drop)   4xx          5xx
=========================  ==================================  ===========  =====================
connect (greeting)         Transient                           Transient    Permanent, innocent
EHLO                       Transient                           Transient    Permanent, innocent
STARTTLS                   Transient                           Transient    Permanent, innocent
AUTH                       Transient                           Transient    Permanent, innocent
                                                               (454)        (535, 534, 538)
MAIL FROM                  Transient                           Transient    Permanent, innocent
                                                                            (553, 5.7.x policy)
RCPT TO                    Transient                           Transient    Permanent, bad
                                                                            recipient (550 5.1.1);
                                                                            552 -> Transient
                                                                            (RFC 5321 4.5.3.1.10);
                                                                            5.7.x -> innocent
DATA (before 354)          Transient                           Transient    Permanent, innocent
end of DATA (after ".")    **Unknown**                         Transient    Permanent, bad
                                                                            recipient; 5.3.x /
                                                                            5.6.x / 5.7.x (size,
                                                                            content, policy) ->
                                                                            innocent
=========================  ==================================  ===========  =====================

A reply that is not 4xx/5xx where a failure was expected (malformed, 3xx out of place) counts
as "no reply". Outside the table, we refuse to go on and raise ``Permanent`` (innocent) when the
relay does not offer STARTTLS although ``security = "starttls"`` (never downgrade to
plain text), offers no AUTH mechanism we speak, rejects its own TLS certificate check, or cannot
take the payload (8-bit without 8BITMIME, a UTF-8 address without SMTPUTF8); and before
connecting when the payload is not CRLF text (sending it would alter the hashed bytes).

Connections are pooled per channel (one relay per channel, at most ``max_connections``): a TLS
handshake plus EHLO and AUTH cost several round trips, and a burst of notices to one relay is
the normal case. A connection that failed a transaction gets RSET before going back to the pool;
one that lost sync (timeout, drop, Unknown) is closed. No NOOP before each reuse: it costs a
round trip per send and still races with the server's idle close. Instead connections idle longer
than ``idle_timeout`` are dropped, and when MAIL on a *reused* connection gets no reply or 421,
the transaction is replayed once on a fresh connection: nothing had been sent, so that is safe.

The password is read from the environment at construction, kept in a ``SecretStr``, sent only
inside AUTH, and scrubbed (with its base64 forms) from every server text that reaches a
transcript or an exception, in case a relay echoes what it was given.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import ssl
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal

import aiosmtplib
from aiosmtplib import SMTPResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from channels.base import (
    ChannelError,
    Outgoing,
    Permanent,
    Prepared,
    Receipt,
    Transient,
    Unknown,
    is_loopback,
    resolve_secret,
)
from channels.mime import build_email

_DEFAULT_PORTS = {"tls": 465, "starttls": 587, "none": 25}


class Stage(StrEnum):
    """Where in the SMTP dialogue a failure happened; the classifier's first input."""

    CONNECT = "connect"
    EHLO = "ehlo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # the DATA command, before 354: no message byte has been sent
    DATA_END = "data_end"  # after the final "." was written: the relay may hold the message


Outcome = Literal["transient", "permanent", "unknown"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a failed step means for the attempt: the dispatcher's three-way choice, plus whether
    the contact point itself is to blame."""

    outcome: Outcome
    bad_recipient: bool
    reason: str


_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")


def enhanced_status(text: str) -> tuple[int, int, int] | None:
    """The RFC 3463 ``class.subject.detail`` code a reply text starts with, if any."""
    m = _ENHANCED.match(text)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def classify(stage: Stage, code: int | None, text: str = "") -> Verdict:
    """Classify one failed step (the table in the module docstring). Pure, so it is tested alone.

    ``code`` is the reply code, or None when there was no usable reply (refused, timed out,
    dropped, malformed). ``text`` is the reply text after the code; only its enhanced status
    code is read.
    """
    if code is None or not 400 <= code < 600:
        if stage is Stage.DATA_END:
            return Verdict(
                "unknown", False, "no reply after the end of DATA: the relay may have the message"
            )
        return Verdict("transient", False, "no reply before the end of DATA: nothing was sent")
    if code < 500:
        return Verdict("transient", False, f"temporary refusal ({code})")
    if stage is Stage.RCPT and code == 552:
        # RFC 5321 4.5.3.1.10: 552 to RCPT ("too many recipients", full mailbox) is temporary.
        return Verdict("transient", False, "552 to RCPT is treated as 452")
    subject = (enhanced_status(text) or (5, 0, 0))[1]
    if stage is Stage.RCPT:
        if subject == 7:  # relay access denied, sender blocked: not the mailbox's fault
            return Verdict("permanent", False, f"recipient refused by policy ({code})")
        return Verdict("permanent", True, f"recipient refused ({code})")
    if stage is Stage.DATA_END:
        if subject in (3, 6, 7):  # message too big, content or policy: the mailbox is fine
            return Verdict("permanent", False, f"message refused ({code})")
        return Verdict("permanent", True, f"message refused for this recipient ({code})")
    return Verdict("permanent", False, f"refused at {stage.value} ({code})")


_QUEUE_ID = (
    re.compile(r"\bqueued as ([\w:/+=-]+)", re.IGNORECASE | re.ASCII),  # Postfix, aiosmtpd, ...
    re.compile(r"\bid=([\w-]+)", re.ASCII),  # Exim: "250 OK id=1qABCD-000ABC-12"
)


def parse_queue_id(text: str) -> str | None:
    """The relay's queue id from its final DATA reply, which names the message in its logs."""
    for pattern in _QUEUE_ID:
        m = pattern.search(text)
        if m:
            return m[1]
    return None


def xtext(value: str) -> str:
    """RFC 3461 xtext, for ENVID and ORCPT: ``+`` and ``=`` and anything outside ``!``..``~``
    become ``+XX``, so an address with a ``+`` tag survives the round trip into a DSN."""
    return "".join(
        c if "!" <= c <= "~" and c not in "+=" else "".join(f"+{b:02X}" for b in c.encode())
        for c in value
    )


def _ascii(options: list[str]) -> list[bytes]:
    return [o.encode("ascii") for o in options]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _reply_bytes(code: int, text: str) -> bytes:
    """Rebuild the reply as it came over the wire (multi-line replies as ``250-a``/``250 b``);
    aiosmtplib decoded it with surrogateescape, so this gives back the original bytes."""
    lines = text.split("\n")
    wire = "\r\n".join(
        f"{code}{'-' if i < len(lines) - 1 else ' '}{line}" for i, line in enumerate(lines)
    )
    return wire.encode("utf-8", "surrogateescape")


class SmtpSettings(BaseModel):
    """``[channels.<name>]`` for ``adapter = "smtp"``. Secrets only by env var name."""

    model_config = ConfigDict(extra="forbid", strict=True)

    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)  # default: 465 / 587 / 25
    security: Literal["tls", "starttls", "none"] = "tls"  # RFC 8314 prefers implicit TLS
    username: str | None = None
    password_env: str | None = None
    from_address: str
    from_name: str | None = None
    reply_to: str | None = None
    request_dsn: bool = True  # only sent when the relay advertises DSN
    request_mdn: bool = False  # Disposition-Notification-To: positive evidence when it comes
    timeout: float = Field(default=30.0, gt=0)  # connect and every command but the last
    # The reply after the final ".": RFC 5321 4.5.3.2.6 asks clients to wait 10 minutes, since
    # relays scan content before answering. Giving up earlier turns a slow success into Unknown,
    # i.e. a duplicate notice, so keep this long.
    data_end_timeout: float = Field(default=600.0, gt=0)
    local_hostname: str = "localhost"  # avoids a getfqdn() DNS lookup per connection
    max_connections: int = Field(default=4, ge=1, le=64)
    idle_timeout: float = Field(default=60.0, ge=0)  # older idle connections are not reused
    ca_file: str | None = None  # trust only this CA bundle (a private relay's CA)
    verify: bool = True

    @field_validator("from_address", "reply_to")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^\s<>@]+@[^\s<>@]+", value):
            raise ValueError("expected a bare address like notices@example.org")
        return value

    @field_validator("local_hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        if not value or any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("expected a host name without spaces or control characters")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> SmtpSettings:
        if self.username and not self.password_env:
            raise ValueError("password_env: name the environment variable that holds the password")
        if self.password_env and not self.username:
            raise ValueError("username: set it together with password_env")
        if self.username and self.security == "none" and not is_loopback(self.host):
            raise ValueError(
                'security: AUTH over plain text would expose the password; use "tls" or "starttls"'
            )
        return self


@dataclass(slots=True, eq=False)
class _Connection:
    """One SMTP session in the pool, with what was learnt when it opened (greeting, EHLO,
    TLS, AUTH): every transcript of a message sent over it repeats those facts."""

    smtp: aiosmtplib.SMTP
    number: int
    facts: dict[str, Any]
    uses: int = 0
    idle_since: float = field(default_factory=time.monotonic)


class _StaleConnection(Exception):
    """MAIL on a reused connection got no reply or 421: the relay had dropped it while idle."""


class SmtpChannel:
    adapter: ClassVar[str] = "smtp"
    kinds: ClassVar[frozenset[str]] = frozenset({"email"})
    Settings: ClassVar[type[BaseModel]] = SmtpSettings

    def __init__(self, name: str, settings: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.name = name
        self.settings = SmtpSettings.model_validate(dict(settings))
        s = self.settings
        self.port = s.port or _DEFAULT_PORTS[s.security]
        self._password: SecretStr | None = None
        self._secrets: tuple[SecretStr, ...] = ()  # SecretStr so no repr() shows them
        if s.username:
            password = resolve_secret(settings, "password", env)
            self._password = SecretStr(password)
            self._secrets = _secret_forms(s.username, password)
        self._tls = _tls_context(s) if s.security != "none" else None
        self._slots = asyncio.Semaphore(s.max_connections)
        self._idle: list[_Connection] = []
        self._opened = 0
        self._closed = False

    def __repr__(self) -> str:
        s = self.settings
        where = f"host={s.host!r}, port={self.port}, security={s.security!r}"
        return f"SmtpChannel(name={self.name!r}, {where})"

    def prepare(self, msg: Outgoing) -> Prepared:
        if msg.kind != "email":
            raise Permanent(f"smtp cannot send {msg.kind!r} messages", bad_recipient=False)
        s = self.settings
        payload, mid = build_email(
            msg,
            from_address=s.from_address,
            from_name=s.from_name,
            reply_to=s.reply_to,
            disposition_notification_to=(s.reply_to or s.from_address) if s.request_mdn else None,
        )
        return Prepared(
            msg, payload, "message/rfc822", mid, {"ext": "eml", "envelope_from": s.from_address}
        )

    async def send(self, prepared: Prepared) -> Receipt:
        s = self.settings
        payload = prepared.payload
        transcript: dict[str, Any] = {
            "host": s.host,
            "port": self.port,
            "security": s.security,
            "local_hostname": s.local_hostname,
            "started_at": _now(),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "payload_size": len(payload),
            "message_id": prepared.message_id,
        }
        self._check_sendable(prepared, transcript)
        async with self._slots:
            conn = await self._checkout(transcript)
            try:
                try:
                    receipt = await self._transact(conn, prepared, transcript)
                except _StaleConnection:
                    conn.smtp.close()
                    self._drop_idle()  # they are most likely as dead as this one
                    conn = await self._checkout(transcript)
                    receipt = await self._transact(conn, prepared, transcript)
            except Exception:
                await self._release(conn, clean=False)
                raise
            except BaseException:  # cancelled: no time for RSET, and the session may be mid-reply
                conn.smtp.close()
                raise
            await self._release(conn, clean=True)
            return receipt

    async def aclose(self) -> None:
        """QUIT every idle connection; connections still in use are closed when released."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(c) for c in idle))

    # -- one transaction -------------------------------------------------------------------

    async def _transact(
        self, conn: _Connection, prepared: Prepared, transcript: dict[str, Any]
    ) -> Receipt:
        s = self.settings
        smtp = conn.smtp
        msg = prepared.outgoing
        payload = prepared.payload
        reused = conn.uses > 0
        transcript["connection"] = {
            "number": conn.number,
            "reused": reused,
            "transactions_before": conn.uses,
            **conn.facts,
        }
        conn.uses += 1

        utf8 = not (s.from_address.isascii() and msg.recipient.isascii())
        if utf8 and not smtp.supports_extension("smtputf8"):
            raise self._refuse(
                Stage.MAIL, "a UTF-8 address needs SMTPUTF8, which the relay lacks", transcript
            )
        mail_options: list[str] = []
        if smtp.supports_extension("size"):
            mail_options.append(f"SIZE={len(payload)}")
        if not payload.isascii():
            if not smtp.supports_extension("8bitmime"):
                raise self._refuse(
                    Stage.MAIL, "the payload is 8-bit and the relay lacks 8BITMIME", transcript
                )
            mail_options.append("BODY=8BITMIME")
        if utf8:
            mail_options.append("SMTPUTF8")
        rcpt_options: list[str] = []
        dsn = s.request_dsn and smtp.supports_extension("dsn")
        if dsn:
            mail_options.append("RET=HDRS")
            envid = xtext(msg.idempotency_key)
            if len(envid) <= 100:  # RFC 3461 4.4
                mail_options.append(f"ENVID={envid}")
            rcpt_options.append("NOTIFY=SUCCESS,FAILURE,DELAY")
            if msg.recipient.isascii():
                rcpt_options.append(f"ORCPT=rfc822;{xtext(msg.recipient)}")
        transcript["dsn_requested"] = dsn
        transcript["envelope"] = {
            "mail_from": s.from_address,
            "rcpt_to": [msg.recipient],
            "mail_options": mail_options,
            "rcpt_options": rcpt_options,
        }
        encoding = "utf-8" if utf8 else "ascii"

        try:
            await self._step(
                Stage.MAIL,
                smtp.execute_command(
                    b"MAIL", f"FROM:<{s.from_address}>".encode(encoding), *_ascii(mail_options)
                ),
                transcript,
                transcript,
                "mail_from",
                " ".join([f"MAIL FROM:<{s.from_address}>", *mail_options]),
            )
        except Transient as exc:
            if reused and exc.code in (None, "421"):
                transcript["stale_connection"] = {
                    "connection": transcript.pop("connection"),
                    "mail_from": transcript.pop("mail_from"),
                    "error": transcript.pop("error"),
                }
                raise _StaleConnection from exc
            raise
        await self._step(
            Stage.RCPT,
            smtp.execute_command(
                b"RCPT", f"TO:<{msg.recipient}>".encode(encoding), *_ascii(rcpt_options)
            ),
            transcript,
            transcript,
            "rcpt_to",
            " ".join([f"RCPT TO:<{msg.recipient}>", *rcpt_options]),
        )
        reply = await self._data(smtp, payload, transcript)
        queue_id = parse_queue_id(reply.message)
        transcript["queue_id"] = queue_id
        transcript["finished_at"] = _now()
        return Receipt(
            accepted=True,
            provider_id=queue_id,
            response=_reply_bytes(reply.code, self._redact(reply.message)),
            transcript=transcript,
        )

    async def _data(
        self, smtp: aiosmtplib.SMTP, payload: bytes, transcript: dict[str, Any]
    ) -> SMTPResponse:
        """DATA, then the message, then the final reply; see the module docstring for why the
        message is written here rather than by ``SMTP.data()``."""
        start = await self._step(
            Stage.DATA, smtp.execute_command(b"DATA"), transcript, transcript, "data", "DATA"
        )
        if start.code != 354:
            raise self._fail(Stage.DATA, start.code, start.message, transcript)
        protocol = smtp.protocol
        if protocol is None:
            raise self._fail(Stage.DATA, None, "connection lost after 354", transcript)
        # Dot-stuffing (RFC 5321 §4.5.2); base64 bodies never start a line with ".".
        wire = payload
        if wire.startswith(b".") or b"\r\n." in wire:
            wire = (b"." if wire.startswith(b".") else b"") + wire.replace(b"\r\n.", b"\r\n..")
        wire += b".\r\n"
        try:
            protocol.write(wire)
        except aiosmtplib.SMTPServerDisconnected as exc:
            smtp.close()
            raise self._fail(Stage.DATA, None, str(exc), transcript) from exc
        # From here on the relay may hold the whole message: any failure is Unknown.
        transcript["data_end_written_at"] = _now()
        try:
            reply = await protocol.read_response(timeout=self.settings.data_end_timeout)
        except aiosmtplib.SMTPException as exc:
            smtp.close()
            transcript["data_end"] = {"code": None, "error": self._redact(str(exc)), "at": _now()}
            raise self._fail(Stage.DATA_END, None, str(exc), transcript) from exc
        except BaseException:
            smtp.close()
            raise
        transcript["data_end"] = self._record(None, reply.code, reply.message)
        if reply.code == 421:
            smtp.close()
        if not 200 <= reply.code < 300:
            raise self._fail(Stage.DATA_END, reply.code, reply.message, transcript)
        return reply

    # -- connections -------------------------------------------------------------------------

    async def _checkout(self, transcript: dict[str, Any]) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # most recently used first: the likeliest to be alive
            if conn.smtp.is_connected and now - conn.idle_since <= self.settings.idle_timeout:
                return conn
            conn.smtp.close()
        return await self._open(transcript)

    async def _release(self, conn: _Connection, *, clean: bool) -> None:
        smtp = conn.smtp
        if not clean and smtp.is_connected:
            try:
                reply = await smtp.execute_command(b"RSET")
            except aiosmtplib.SMTPException:
                smtp.close()
            else:
                if reply.code != 250:
                    smtp.close()
        if self._closed or not smtp.is_connected:
            await self._quit(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.smtp.close()

    async def _quit(self, conn: _Connection) -> None:
        try:
            if conn.smtp.is_connected:
                await conn.smtp.quit(timeout=min(self.settings.timeout, 5.0))
        except (aiosmtplib.SMTPException, OSError):
            pass
        finally:
            conn.smtp.close()

    async def _open(self, transcript: dict[str, Any]) -> _Connection:
        s = self.settings
        smtp = aiosmtplib.SMTP(
            hostname=s.host,
            port=self.port,
            local_hostname=s.local_hostname,
            timeout=s.timeout,
            use_tls=s.security == "tls",
            start_tls=False,  # done by hand below, so a missing STARTTLS is an error
            tls_context=self._tls,
        )
        self._opened += 1
        facts: dict[str, Any] = {"number": self._opened, "opened_at": _now()}
        transcript["connection"] = facts
        try:
            await self._step(Stage.CONNECT, smtp.connect(), transcript, facts, "greeting")
            if s.security == "tls":
                facts["tls"] = self._tls_facts(smtp)
            await self._step(Stage.EHLO, smtp.ehlo(), transcript, facts, "ehlo", "EHLO")
            if s.security == "starttls":
                if not smtp.supports_extension("starttls"):
                    raise self._refuse(
                        Stage.STARTTLS, "the relay does not offer STARTTLS", transcript
                    )
                await self._step(
                    Stage.STARTTLS, smtp.starttls(), transcript, facts, "starttls", "STARTTLS"
                )
                facts["tls"] = self._tls_facts(smtp)
                await self._step(Stage.EHLO, smtp.ehlo(), transcript, facts, "ehlo", "EHLO")
            facts["extensions"] = dict(smtp.esmtp_extensions)
            if s.username and self._password is not None:
                await self._login(smtp, s.username, self._password, transcript, facts)
        except BaseException:
            smtp.close()
            raise
        facts.pop("number")
        return _Connection(smtp, self._opened, facts)

    async def _login(
        self,
        smtp: aiosmtplib.SMTP,
        username: str,
        password: SecretStr,
        transcript: dict[str, Any],
        facts: dict[str, Any],
    ) -> None:
        """One mechanism, chosen here: ``SMTP.login()`` would try every one on 535, which burns
        failed attempts (and account lockouts) on a wrong password."""
        offered = smtp.server_auth_methods
        if "plain" in offered:
            mechanism, call = "PLAIN", smtp.auth_plain(username, password.get_secret_value())
        elif "login" in offered:
            mechanism, call = "LOGIN", smtp.auth_login(username, password.get_secret_value())
        else:
            offer = " ".join(offered) or "none"
            raise self._refuse(
                Stage.AUTH, f"no AUTH mechanism in common (relay: {offer})", transcript
            )
        facts["auth_username"] = username
        await self._step(Stage.AUTH, call, transcript, facts, "auth", f"AUTH {mechanism}")

    def _tls_facts(self, smtp: aiosmtplib.SMTP) -> dict[str, Any]:
        try:
            obj = smtp.get_transport_info("ssl_object")
        except aiosmtplib.SMTPServerDisconnected:
            return {}  # the next command will find out, and say so in the transcript
        if obj is None:
            return {}
        cipher = obj.cipher()
        der = obj.getpeercert(binary_form=True)
        return {
            "version": obj.version(),
            "cipher": cipher[0] if cipher else None,
            "bits": cipher[2] if cipher else None,
            "peer_cert_sha256": hashlib.sha256(der).hexdigest() if der else None,
            "verified": self.settings.verify,
        }

    # -- replies, failures, secrets ---------------------------------------------------------

    async def _step(
        self,
        stage: Stage,
        call: Awaitable[SMTPResponse],
        transcript: dict[str, Any],
        into: dict[str, Any],
        key: str,
        command: str | None = None,
    ) -> SMTPResponse:
        """Await one command, record its reply under ``into[key]``, turn failures into the
        contract's exceptions (with the transcript so far)."""
        try:
            reply = await call
        except aiosmtplib.SMTPResponseException as exc:
            code = exc.code if exc.code > 0 else None  # -1: malformed reply
            into[key] = self._record(command, exc.code, exc.message)
            raise self._fail(stage, code, exc.message, transcript) from exc
        except (aiosmtplib.SMTPConnectError, ssl.SSLCertVerificationError) as exc:
            cause = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
            into[key] = {"command": command, "code": None, "error": self._redact(str(exc))}
            if isinstance(cause, ssl.SSLCertVerificationError):
                why = f"the relay's TLS certificate was rejected: {cause.verify_message}"
                raise self._refuse(stage, why, transcript) from exc
            raise self._fail(stage, None, str(exc), transcript) from exc
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            into[key] = {"command": command, "code": None, "error": self._redact(str(exc))}
            raise self._fail(stage, None, str(exc) or type(exc).__name__, transcript) from exc
        except aiosmtplib.SMTPException as exc:  # "not supported" and other local refusals
            into[key] = {"command": command, "code": None, "error": self._redact(str(exc))}
            raise self._refuse(stage, str(exc), transcript) from exc
        into[key] = self._record(command, reply.code, reply.message)
        # MAIL and RCPT succeed with 2xx only (RFC 5321 4.3.2); DATA's 354 is checked by _data.
        top = 300 if stage in (Stage.MAIL, Stage.RCPT) else 400
        if stage is Stage.DATA or 200 <= reply.code < top:
            return reply
        raise self._fail(
            stage, reply.code, reply.message, transcript
        )  # e.g. 421 via execute_command

    def _record(self, command: str | None, code: int, text: str) -> dict[str, Any]:
        record: dict[str, Any] = {"code": code, "text": self._redact(text), "at": _now()}
        if command is not None:
            record = {"command": command, **record}
        return record

    def _fail(
        self, stage: Stage, code: int | None, text: str, transcript: dict[str, Any]
    ) -> ChannelError:
        verdict = classify(stage, code, text)
        text = self._redact(text)
        transcript["error"] = {
            "stage": stage.value,
            "code": code,
            "text": text,
            "outcome": verdict.outcome,
            "bad_recipient": verdict.bad_recipient,
        }
        transcript["finished_at"] = _now()
        said = f"{code} {text}" if code is not None else text
        detail = f"{self.name}: {stage.value} failed: {said} ({verdict.reason})"
        kw: dict[str, Any] = {
            "code": str(code) if code is not None else None,
            "response": _reply_bytes(code, text) if code is not None else None,
            "transcript": transcript,
        }
        if verdict.outcome == "unknown":
            return Unknown(detail, **kw)
        if verdict.outcome == "permanent":
            return Permanent(detail, bad_recipient=verdict.bad_recipient, **kw)
        return Transient(detail, **kw)

    def _refuse(self, stage: Stage, why: str, transcript: dict[str, Any]) -> Permanent:
        """We stop on our own: a configuration or capability problem that retrying won't fix
        and that says nothing about the recipient."""
        why = self._redact(why)
        transcript["error"] = {
            "stage": stage.value,
            "code": None,
            "text": why,
            "outcome": "permanent",
            "bad_recipient": False,
        }
        transcript["finished_at"] = _now()
        return Permanent(f"{self.name}: {why}", bad_recipient=False, transcript=transcript)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret.get_secret_value(), "[redacted]")
        return text

    def _check_sendable(self, prepared: Prepared, transcript: dict[str, Any]) -> None:
        """Refuse, before connecting, what could only be sent by altering it or the envelope."""
        payload = prepared.payload
        if prepared.media_type != "message/rfc822":
            raise self._refuse(Stage.DATA, f"cannot send {prepared.media_type}", transcript)
        # Every CR starts a CRLF and every LF ends one: three byte counts, no regex scan.
        crlf = payload.count(b"\r\n")
        if (
            not payload.endswith(b"\r\n")
            or payload.count(b"\r") != crlf
            or payload.count(b"\n") != crlf
        ):
            raise self._refuse(
                Stage.DATA,
                "the payload is not CRLF text; sending it would alter the hashed bytes",
                transcript,
            )
        recipient = prepared.outgoing.recipient
        if not re.fullmatch(r"[^\s<>@\x00-\x1f\x7f]+@[^\s<>@\x00-\x1f\x7f]+", recipient):
            transcript["error"] = {"stage": Stage.RCPT.value, "code": None, "outcome": "permanent"}
            raise Permanent(
                f"{self.name}: {recipient!r} is not an address an SMTP relay can take",
                bad_recipient=True,
                transcript=transcript,
            )


def _secret_forms(username: str, password: str) -> tuple[SecretStr, ...]:
    """The password as it could come back in a reply: plain, and as AUTH LOGIN / PLAIN sent it."""
    user, pw = username.encode(), password.encode()
    forms = {
        password,
        base64.b64encode(pw).decode(),
        base64.b64encode(b"\0" + user + b"\0" + pw).decode(),
    }
    longest_first = sorted(forms, key=len, reverse=True)  # no partial replacements
    return tuple(SecretStr(form) for form in longest_first)


def _tls_context(s: SmtpSettings) -> ssl.SSLContext:
    """Built once per channel: loading a CA bundle costs more than a handshake."""
    try:
        ctx = ssl.create_default_context(cafile=s.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"ca_file: cannot load {s.ca_file}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not s.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
