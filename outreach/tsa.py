"""RFC 3161 time stamps: ask a TSA to sign a digest, and check such a token later, offline.

Why this exists: a hash chain proves that events were not edited *relative to each other*, not
*when* they existed. A token from a time-stamping authority over the Merkle root of the chain
heads (see :mod:`outreach.merkle`) proves that every event under that root existed no later
than the token's ``gen_time``; rewriting history after that needs SHA-256 or the TSA broken.

Design points, each from a way this goes wrong in practice:

* **The imprint is the digest itself.** The TSA only ever sees 32 bytes (the Merkle root), and
  ``openssl ts -verify -digest <hex>`` checks it by hand. rfc3161-client's request builder only
  hashes *data*, so the TimeStampReq is DER-encoded here (a fixed 5-field structure) with the
  same layout the library produces; a test checks byte equality with the library's output.
* **Verify on receipt.** A reply is only accepted when it is granted, covers our digest and
  echoes our nonce: a proxy replaying an old reply, or a TSA answering someone else's request,
  is caught before anything is stored.
* **Several TSAs, in order.** An unreachable TSA must never block the caller: every URL is
  tried, and :class:`TsaError` lists each failure; the caller catches it and retries later.
* **Two verifiers.** rfc3161-client is a strict DER parser and rejects tokens whose embedded
  ``SET OF`` certificates is not DER-sorted (``InvalidSetOrdering``, which OpenSSL-based TSAs
  produce when they embed a chain; providers.md §4.1). Such tokens are still valid CMS, so the
  raw bytes are kept, the token's fields are read with a small tolerant DER reader, and the
  signature is checked with ``openssl ts -verify``. A verifier that *ran and said no* is final:
  there is no falling back from a failed check to a more lenient one.
* **Evaluated at gen_time.** rfc3161-client checks the certificate chain at the token's
  ``gen_time``; the openssl command gets ``-attime <gen_time>`` so that both verifiers, and a
  reader running the exported command years later after the TSA certificate expired, agree.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
import secrets
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from rfc3161_client import (
    PKIStatus,
    TimeStampResponse,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)

__all__ = [
    "QUERY_CONTENT_TYPE",
    "REPLY_CONTENT_TYPE",
    "OpensslCheck",
    "TokenInfo",
    "TokenVerificationError",
    "TsaError",
    "TsaRequest",
    "TsaResult",
    "build_request",
    "export_for_openssl",
    "request_token",
    "verify_token",
]

logger = logging.getLogger(__name__)

QUERY_CONTENT_TYPE = "application/timestamp-query"
REPLY_CONTENT_TYPE = "application/timestamp-reply"
# RFC 3161 §3.4 names only ``timestamp-reply``; a few old servers still send the draft name.
_REPLY_CONTENT_TYPES = frozenset({REPLY_CONTENT_TYPE, "application/timestamp-response"})

MAX_REPLY_BYTES = 1 << 20
"""A token with a long chain is a few kB; anything near a megabyte is not a TSA talking."""

DEFAULT_TIMEOUT = 10.0

SHA256_OID = "2.16.840.1.101.3.4.2.1"
_HASHES = {  # OID -> (name as openssl spells it, digest size)
    "1.3.14.3.2.26": ("sha1", 20),
    SHA256_OID: ("sha256", 32),
    "2.16.840.1.101.3.4.2.2": ("sha384", 48),
    "2.16.840.1.101.3.4.2.3": ("sha512", 64),
}
_SHA256_ALGORITHM_DER = bytes.fromhex("300d06096086480165030402010500")  # with NULL params
_OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_OID_TST_INFO = "1.2.840.113549.1.9.16.1.4"

Verifier = Literal["rfc3161-client", "openssl", "none"]


class TsaError(Exception):
    """No TSA produced an acceptable token. ``failures`` holds (url, reason) per URL tried."""

    def __init__(self, failures: Sequence[tuple[str, str]]) -> None:
        self.failures = list(failures)
        if not self.failures:
            super().__init__("no TSA URL configured")
        else:
            detail = "; ".join(f"{url}: {reason}" for url, reason in self.failures)
            super().__init__(f"all {len(self.failures)} TSA(s) failed: {detail}")


class TokenVerificationError(Exception):
    """A token is unreadable, not granted, covers another digest, or its signature is bad."""


class _RejectedReply(Exception):
    """One TSA's answer was unusable; becomes one entry of :class:`TsaError`."""


# --- requests ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TsaRequest:
    """A TimeStampReq and what the reply must echo (the digest and the nonce)."""

    der: bytes
    digest: bytes
    nonce: int
    cert_req: bool = True


def _der(tag: int, body: bytes) -> bytes:
    """One DER TLV (single-byte tag, definite length)."""
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _der_uint(value: int) -> bytes:
    """A non-negative DER INTEGER: minimal length, a 0x00 pad when the high bit is set."""
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def build_request(digest: bytes, *, cert_req: bool = True) -> TsaRequest:
    """A TimeStampReq over ``digest`` (a SHA-256 value) with a fresh 64-bit random nonce.

    ``cert_req`` asks the TSA to embed its certificate, so the token can be checked later with
    nothing but a trust root. The nonce binds the reply to this request (replay detection).
    """
    if len(digest) != 32:
        raise ValueError(f"a SHA-256 digest has 32 bytes, got {len(digest)}")
    nonce = secrets.randbelow(2**64 - 1) + 1
    body = (
        _der_uint(1)  # version v1
        + _der(0x30, _SHA256_ALGORITHM_DER + _der(0x04, digest))  # messageImprint
        + _der_uint(nonce)
        + (_der(0x01, b"\xff") if cert_req else b"")  # certReq, DEFAULT FALSE so omit when off
    )
    return TsaRequest(der=_der(0x30, body), digest=digest, nonce=nonce, cert_req=cert_req)


# --- decoding replies ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TstInfo:
    policy: str
    hash_oid: str
    imprint: bytes
    serial: int
    gen_time: dt.datetime
    nonce: int | None


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    status_text: tuple[str, ...]
    tst: _TstInfo | None
    certificates: tuple[bytes, ...]  # DER, as embedded in SignedData
    parsed: TimeStampResponse | None  # None when rfc3161-client could not parse it
    parse_error: str | None


class _Node(NamedTuple):
    tag: int
    body: bytes


def _read(buf: bytes, pos: int) -> tuple[_Node, int]:
    """The TLV at ``pos`` and the position after it. Definite lengths only (DER, not BER)."""
    if pos + 2 > len(buf):
        raise ValueError("DER: truncated")
    tag, length = buf[pos], buf[pos + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError("DER: multi-byte tag")
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4:
            raise ValueError("DER: indefinite or oversized length")
        length = int.from_bytes(buf[pos : pos + count], "big")
        pos += count
    if pos + length > len(buf):
        raise ValueError("DER: truncated")
    return _Node(tag, buf[pos : pos + length]), pos + length


def _items(body: bytes) -> list[_Node]:
    """The children of a constructed value."""
    out, pos = [], 0
    while pos < len(body):
        node, pos = _read(body, pos)
        out.append(node)
    return out


def _encode(node: _Node) -> bytes:
    return _der(node.tag, node.body)


def _expect(nodes: Sequence[_Node], index: int, tag: int, what: str) -> _Node:
    if index >= len(nodes) or nodes[index].tag != tag:
        raise ValueError(f"DER: expected {what}")
    return nodes[index]


def _single(buf: bytes, tag: int, what: str) -> _Node:
    node, end = _read(buf, 0)
    if node.tag != tag or end != len(buf):
        raise ValueError(f"DER: expected one {what}")
    return node


def _oid(body: bytes) -> str:
    arcs, value = [], 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        raise ValueError("DER: empty OID")
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def _generalized_time(body: bytes) -> dt.datetime:
    text = body.decode("ascii")
    if not text.endswith("Z") or len(text) < 15:
        raise ValueError(f"DER: GeneralizedTime {text!r} is not UTC")
    when = dt.datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
    if text[14] == ".":
        when = when.replace(microsecond=int(text[15:-1][:6].ljust(6, "0")))
    return when


def _parse_tst_info(der: bytes) -> _TstInfo:
    fields = _items(_single(der, 0x30, "TSTInfo").body)
    policy = _expect(fields, 1, 0x06, "TSTInfo.policy")
    imprint = _items(_expect(fields, 2, 0x30, "TSTInfo.messageImprint").body)
    algorithm = _items(_expect(imprint, 0, 0x30, "hashAlgorithm").body)
    nonce = next((f for f in fields[5:] if f.tag == 0x02), None)  # after genTime, only INTEGER
    return _TstInfo(
        policy=_oid(policy.body),
        hash_oid=_oid(_expect(algorithm, 0, 0x06, "hash OID").body),
        imprint=_expect(imprint, 1, 0x04, "hashedMessage").body,
        serial=int.from_bytes(_expect(fields, 3, 0x02, "serialNumber").body, "big", signed=True),
        gen_time=_generalized_time(_expect(fields, 4, 0x18, "genTime").body),
        nonce=None if nonce is None else int.from_bytes(nonce.body, "big", signed=True),
    )


def _parse_tolerant(der: bytes, parse_error: str) -> _Reply:
    """Read a TimeStampResp without insisting on DER ordering of SETs.

    Only reads fields; it proves nothing. Trust comes from ``openssl ts -verify`` afterwards.
    """
    parts = _items(_single(der, 0x30, "TimeStampResp").body)
    status_info = _items(_expect(parts, 0, 0x30, "PKIStatusInfo").body)
    status = int.from_bytes(_expect(status_info, 0, 0x02, "PKIStatus").body, "big")
    texts: tuple[str, ...] = ()
    if len(status_info) > 1 and status_info[1].tag == 0x30:
        texts = tuple(t.body.decode("utf-8", "replace") for t in _items(status_info[1].body))
    if len(parts) < 2:
        return _Reply(status, texts, None, (), None, parse_error)
    content_info = _items(_expect(parts, 1, 0x30, "TimeStampToken").body)
    if _oid(_expect(content_info, 0, 0x06, "contentType").body) != _OID_SIGNED_DATA:
        raise ValueError("DER: token is not CMS SignedData")
    explicit = _expect(content_info, 1, 0xA0, "[0] content")
    signed_data = _items(_single(explicit.body, 0x30, "SignedData").body)
    encap = _items(_expect(signed_data, 2, 0x30, "encapContentInfo").body)
    if _oid(_expect(encap, 0, 0x06, "eContentType").body) != _OID_TST_INFO:
        raise ValueError("DER: content is not TSTInfo")
    e_content = _single(_expect(encap, 1, 0xA0, "[0] eContent").body, 0x04, "eContent")
    certs_node = next((n for n in signed_data[3:] if n.tag == 0xA0), None)
    certs = () if certs_node is None else tuple(_encode(c) for c in _items(certs_node.body))
    return _Reply(status, texts, _parse_tst_info(e_content.body), certs, None, parse_error)


def _parse_reply(der: bytes) -> _Reply:
    """Decode with rfc3161-client; when its strict DER parser refuses, read tolerantly."""
    try:
        resp = decode_timestamp_response(der)
    except ValueError as exc:
        return _parse_tolerant(der, f"rfc3161-client: {exc}")
    tst: _TstInfo | None = None
    certs: tuple[bytes, ...] = ()
    if resp.status in (PKIStatus.GRANTED, PKIStatus.GRANTED_WITH_MODS):
        info = resp.tst_info
        tst = _TstInfo(
            policy=info.policy.dotted_string,
            hash_oid=info.message_imprint.hash_algorithm.dotted_string,
            imprint=info.message_imprint.message,
            serial=info.serial_number,
            gen_time=info.gen_time,
            nonce=info.nonce,
        )
        certs = tuple(sorted(resp.signed_data.certificates))
    return _Reply(resp.status, tuple(resp.status_string), tst, certs, resp, None)


def _granted_tst(reply: _Reply) -> _TstInfo:
    if reply.status != PKIStatus.GRANTED or reply.tst is None:
        try:
            name = PKIStatus(reply.status).name.lower()
        except ValueError:
            name = "unknown"
        text = f": {'; '.join(reply.status_text)}" if reply.status_text else ""
        raise _RejectedReply(f"not granted: status {reply.status} ({name}){text}")
    return reply.tst


def _imprint_problem(tst: _TstInfo, digest: bytes) -> str | None:
    name, size = _HASHES.get(tst.hash_oid, (tst.hash_oid, -1))
    if size != len(digest):
        return f"imprint is {name}, expected a {len(digest)}-byte digest"
    if not hmac.compare_digest(tst.imprint, digest):
        return f"imprint mismatch: token covers {tst.imprint.hex()}, expected {digest.hex()}"
    return None


# --- asking a TSA --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TsaResult:
    """A token accepted on receipt: store ``response_der`` byte for byte."""

    response_der: bytes
    """The whole DER TimeStampResp (what ``openssl ts -verify -in`` reads)."""
    tsa_url: str
    """The URL that answered (credentials, if any, removed)."""
    gen_time: dt.datetime
    serial: int
    nonce: int
    digest: bytes
    certificates: tuple[bytes, ...]
    """DER certificates embedded in the token (the TSA's, maybe its chain)."""
    decoded_by: Literal["rfc3161-client", "tolerant-der"]


def _public_url(url: str) -> str:
    """The URL without user:password, so that it can go into logs, the database and bundles."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


async def _read_capped(response: httpx.Response) -> bytes:
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise _RejectedReply(f"reply larger than {MAX_REPLY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _ask(url: str, request: TsaRequest, client: httpx.AsyncClient, budget: float) -> bytes:
    headers = {"Content-Type": QUERY_CONTENT_TYPE, "Accept": REPLY_CONTENT_TYPE}
    async with (
        asyncio.timeout(budget),  # httpx's timeout is per phase; a slow drip could outlast it
        client.stream("POST", url, content=request.der, headers=headers, timeout=budget) as resp,
    ):
        if resp.status_code != 200:
            raise _RejectedReply(f"HTTP {resp.status_code}")
        content_type = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in _REPLY_CONTENT_TYPES:
            raise _RejectedReply(f"Content-Type {content_type or 'missing'!r}, not a TSA reply")
        return await _read_capped(resp)


def _accept(body: bytes, request: TsaRequest, url: str) -> TsaResult:
    """Check a reply on receipt: granted, our digest, our nonce."""
    try:
        reply = _parse_reply(body)
    except ValueError as exc:
        raise _RejectedReply(f"undecodable reply: {exc}") from exc
    tst = _granted_tst(reply)
    problem = _imprint_problem(tst, request.digest)
    if problem:
        raise _RejectedReply(problem)
    if tst.nonce != request.nonce:
        raise _RejectedReply(f"nonce mismatch: sent {request.nonce}, reply has {tst.nonce}")
    if reply.parse_error:
        logger.info("TSA %s reply decoded tolerantly (%s)", url, reply.parse_error)
    return TsaResult(
        response_der=body,
        tsa_url=url,
        gen_time=tst.gen_time,
        serial=tst.serial,
        nonce=request.nonce,
        digest=request.digest,
        certificates=reply.certificates,
        decoded_by="rfc3161-client" if reply.parsed is not None else "tolerant-der",
    )


async def request_token(
    urls: Sequence[str],
    digest: bytes,
    client: httpx.AsyncClient,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - a per-URL budget, not a deadline
) -> TsaResult:
    """Get a token over ``digest`` from the first TSA in ``urls`` that gives a valid one.

    Each URL gets its own request (own nonce) and at most ``timeout`` seconds in total. A reply
    is accepted only if it verifies on receipt (see :func:`_accept`); the signature is *not*
    checked here, since trust roots are a verification-time decision (:func:`verify_token`).
    Raises :class:`TsaError` naming every URL and why it failed; callers catch it and retry
    later, so that a TSA outage never blocks sending notices.
    """
    failures: list[tuple[str, str]] = []
    for url in urls:
        public = _public_url(url)
        request = build_request(digest)
        try:
            body = await _ask(url, request, client, timeout)
            return _accept(body, request, public)
        except _RejectedReply as exc:
            reason = str(exc)
        except TimeoutError:
            reason = f"timed out after {timeout:g} s"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
        logger.warning("TSA %s failed: %s", public, reason)
        failures.append((public, reason))
    raise TsaError(failures)


# --- verifying a token ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a token says, and how far it was checked.

    Returned only when the token is granted and covers the digest. ``signature_checked`` is
    ``False`` when no trust roots were given or no verifier could run; ``note`` says why, so a
    bundle can print "imprint matches; signature not checked: ..." instead of guessing.
    """

    gen_time: dt.datetime
    serial: int
    hash_algorithm: str
    imprint: bytes
    policy: str
    nonce: int | None
    certificates: tuple[bytes, ...]
    signature_checked: bool
    verifier: Verifier
    decoded_by: Literal["rfc3161-client", "tolerant-der"]
    note: str = ""


def _load_certs(pem: bytes | None) -> list[x509.Certificate] | None:
    """PEM certificates, de-duplicated; ``None`` when cryptography cannot read them."""
    if not pem or not pem.strip():
        return []
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        return None
    unique: dict[bytes, x509.Certificate] = {}
    for cert in certs:
        unique.setdefault(cert.public_bytes(Encoding.DER), cert)
    return list(unique.values())


def _pem(der_certs: Sequence[bytes]) -> bytes:
    return b"".join(
        x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM) for der in der_certs
    )


def _openssl_argv(
    openssl: str,
    digest: bytes,
    gen_time: dt.datetime,
    token: str,
    ca: str,
    untrusted: str | None,
) -> list[str]:
    """The one ``openssl ts -verify`` command line, shared by the fallback and the export."""
    argv = [openssl, "ts", "-verify", "-digest", digest.hex(), "-in", token, "-CAfile", ca]
    if untrusted is not None:
        argv += ["-untrusted", untrusted]
    return [*argv, "-attime", str(int(gen_time.timestamp()))]


def _verify_with_openssl(
    openssl: str,
    token_der: bytes,
    digest: bytes,
    gen_time: dt.datetime,
    roots_pem: bytes,
    untrusted_pem: bytes | None,
) -> None:
    """Run ``openssl ts -verify``; raise :class:`TokenVerificationError` unless it says OK."""
    with tempfile.TemporaryDirectory(prefix="outreach-tsa-") as tmp:
        workdir = Path(tmp)
        (workdir / "token.tsr").write_bytes(token_der)
        (workdir / "ca.pem").write_bytes(roots_pem)
        untrusted = None
        if untrusted_pem:
            (workdir / "tsa.pem").write_bytes(untrusted_pem)
            untrusted = "tsa.pem"
        argv = _openssl_argv(openssl, digest, gen_time, "token.tsr", "ca.pem", untrusted)
        done = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=60)
    if done.returncode != 0 or "Verification: OK" not in done.stdout:
        lines = [ln.strip() for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
        detail = " | ".join(ln for ln in lines if not ln.startswith("Using configuration"))
        raise TokenVerificationError(f"openssl ts -verify failed: {detail}")


def verify_token(
    token_der: bytes,
    digest: bytes,
    trust_roots_pem: bytes | None,
    *,
    untrusted_pem: bytes | None = None,
    openssl: str = "openssl",
) -> TokenInfo:
    """Check a stored TimeStampResp against ``digest``, offline.

    Always: decoded, status granted, imprint equals ``digest`` (else
    :class:`TokenVerificationError`). Then, when ``trust_roots_pem`` is given, the signature
    and chain up to those roots: with rfc3161-client when it can parse both token and roots and
    the token embeds its certificate; otherwise with ``openssl ts -verify`` (``untrusted_pem``
    supplies a TSA certificate or intermediates the token does not embed). A failed check
    raises; it never falls through to the other verifier. Without roots, or without any usable
    verifier, the result says ``signature_checked=False`` and why.
    """
    try:
        reply = _parse_reply(token_der)
        tst = _granted_tst(reply)
    except (ValueError, _RejectedReply) as exc:
        raise TokenVerificationError(f"unusable token: {exc}") from exc
    problem = _imprint_problem(tst, digest)
    if problem:
        raise TokenVerificationError(problem)

    def result(verifier: Verifier, note: str = "") -> TokenInfo:
        return TokenInfo(
            gen_time=tst.gen_time,
            serial=tst.serial,
            hash_algorithm=_HASHES.get(tst.hash_oid, (tst.hash_oid, 0))[0],
            imprint=tst.imprint,
            policy=tst.policy,
            nonce=tst.nonce,
            certificates=reply.certificates,
            signature_checked=verifier != "none",
            verifier=verifier,
            decoded_by="rfc3161-client" if reply.parsed is not None else "tolerant-der",
            note=note,
        )

    if not trust_roots_pem or not trust_roots_pem.strip():
        return result("none", "no trust roots given")
    roots = _load_certs(trust_roots_pem)
    untrusted = _load_certs(untrusted_pem)

    if reply.parsed is None:
        why = reply.parse_error or "token not parsed"
    elif roots is None or untrusted is None:
        why = "cryptography could not read the PEM certificates"
    elif not reply.certificates:
        why = "token embeds no certificate"
    else:
        builder = VerifierBuilder()
        for cert in roots:
            builder = builder.add_root_certificate(cert)
        for cert in untrusted:
            builder = builder.add_intermediate_certificate(cert)
        try:
            builder.build().verify(reply.parsed, digest)
        except (VerificationError, ValueError) as exc:
            raise TokenVerificationError(f"signature check failed (rfc3161-client): {exc}") from exc
        return result("rfc3161-client")

    if shutil.which(openssl) is None:
        return result("none", f"rfc3161-client unusable ({why}) and {openssl!r} not found")
    _verify_with_openssl(openssl, token_der, digest, tst.gen_time, trust_roots_pem, untrusted_pem)
    return result("openssl", f"rfc3161-client unusable: {why}")


# --- the manual check ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpensslCheck:
    """Files written for a by-hand check, and the command to run in ``directory``."""

    directory: Path
    token: Path
    ca: Path
    tsa: Path | None
    argv: tuple[str, ...]
    command: str
    """Shell-quoted; run it from ``directory``; prints ``Verification: OK``."""


def export_for_openssl(
    token_der: bytes,
    digest: bytes,
    directory: Path,
    trust_roots_pem: bytes,
    *,
    tsa_pem: bytes | None = None,
    tsr_name: str = "token.tsr",
    ca_name: str = "ca.pem",
    tsa_name: str = "tsa.pem",
) -> OpensslCheck:
    """Write ``token.tsr``, ``ca.pem`` and ``tsa.pem`` into ``directory``; return the command.

    Why: an evidence bundle must be checkable by someone who trusts neither this program nor
    Python, with stock ``openssl`` only. ``tsa.pem`` is ``tsa_pem`` if given, else the
    certificates embedded in the token (OpenSSL would find those anyway; writing them out lets
    the reader inspect who signed). Paths in the command are relative, so the bundle can move.
    """
    try:
        reply = _parse_reply(token_der)
        tst = _granted_tst(reply)
    except (ValueError, _RejectedReply) as exc:
        raise TokenVerificationError(f"unusable token: {exc}") from exc
    directory.mkdir(parents=True, exist_ok=True)
    token_path = directory / tsr_name
    ca_path = directory / ca_name
    token_path.write_bytes(token_der)
    ca_path.write_bytes(trust_roots_pem)
    untrusted = tsa_pem if tsa_pem is not None else _pem(reply.certificates)
    tsa_path: Path | None = None
    if untrusted:
        tsa_path = directory / tsa_name
        tsa_path.write_bytes(untrusted)
    argv = _openssl_argv(
        "openssl", digest, tst.gen_time, tsr_name, ca_name, tsa_name if tsa_path else None
    )
    return OpensslCheck(
        directory=directory,
        token=token_path,
        ca=ca_path,
        tsa=tsa_path,
        argv=tuple(argv),
        command=shlex.join(argv),
    )
