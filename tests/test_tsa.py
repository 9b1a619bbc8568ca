"""RFC 3161 client and verifier against a real local TSA (``openssl ts -reply``).

What must hold for the evidence to stand: a token we accept covers our digest and answers our
request (nonce); it verifies with rfc3161-client *and* with stock ``openssl ts -verify`` run
exactly as the bundle prints it; a wrong digest, wrong trust root or edited token fails; and a
dead TSA costs a fallback, never the caller.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import shlex
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rfc3161_client import HashAlgorithm, TimestampRequestBuilder, decode_timestamp_response
from tsa_server import LocalTsa, local_tsa, make_pki, tsa_server_fixture  # noqa: F401

from outreach import tsa

DIGEST = hashlib.sha256(b"merkle root of the chain heads").digest()
OTHER_DIGEST = hashlib.sha256(b"something else").digest()


@pytest.fixture(scope="module")
def server(tsa_server: LocalTsa) -> LocalTsa:
    """The module's TSA (the fixture of ``tsa_server.py``) under a short name."""
    return tsa_server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # trust_env=False: a proxy from the environment must not intercept 127.0.0.1.
    async with httpx.AsyncClient(trust_env=False) as c:
        yield c


@pytest.fixture(scope="module")
def refused_url() -> str:
    """A 127.0.0.1 port with nothing listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/tsr"


def run_printed(check: tsa.OpensslCheck) -> subprocess.CompletedProcess[str]:
    """Run the exported command line as a reader would: from the bundle directory."""
    return subprocess.run(
        shlex.split(check.command),
        cwd=check.directory,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def get_token(server: LocalTsa, client: httpx.AsyncClient, path: str = "/tsr") -> bytes:
    result = await tsa.request_token([server.url_for(path)], DIGEST, client)
    return result.response_der


# --- the request ---------------------------------------------------------------------------


def test_request_encoding_is_byte_identical_to_rfc3161_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = b"the library hashes data itself; we time-stamp a digest"
    reference = TimestampRequestBuilder().data(data).hash_algorithm(HashAlgorithm.SHA256).build()
    assert reference.nonce is not None
    monkeypatch.setattr(tsa.secrets, "randbelow", lambda _n: reference.nonce - 1)
    ours = tsa.build_request(hashlib.sha256(data).digest())
    assert ours.nonce == reference.nonce
    assert ours.der == reference.as_bytes()


def test_request_has_fresh_nonce_and_rejects_non_sha256() -> None:
    assert tsa.build_request(DIGEST).nonce != tsa.build_request(DIGEST).nonce
    with pytest.raises(ValueError, match="32 bytes"):
        tsa.build_request(b"\x00" * 20)


# --- a good token, both verifiers ----------------------------------------------------------


async def test_token_verifies_with_library_and_with_printed_openssl_command(
    server: LocalTsa, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    result = await tsa.request_token([server.url], DIGEST, client)
    assert result.tsa_url == server.url
    assert result.decoded_by == "rfc3161-client"
    assert before - dt.timedelta(seconds=2) <= result.gen_time <= dt.datetime.now(dt.UTC)
    assert result.serial > 0
    assert len(result.certificates) == 1  # cert_req=True: the signer certificate is embedded
    path, content_type, body = server.requests[-1]
    assert (path, content_type) == ("/tsr", tsa.QUERY_CONTENT_TYPE)
    assert decode_timestamp_response(result.response_der).tst_info.nonce == result.nonce
    assert body  # the TSA got a real query

    info = tsa.verify_token(result.response_der, DIGEST, server.ca_pem)
    assert (info.signature_checked, info.verifier) == (True, "rfc3161-client")
    assert (info.gen_time, info.serial, info.imprint) == (result.gen_time, result.serial, DIGEST)
    assert info.hash_algorithm == "sha256"
    assert info.policy == "1.2.3.4.1"

    check = tsa.export_for_openssl(result.response_der, DIGEST, tmp_path / "b", server.ca_pem)
    assert check.command.startswith(f"openssl ts -verify -digest {DIGEST.hex()} -in token.tsr")
    assert check.tsa is not None and check.tsa.read_bytes() == server.tsa_pem
    done = run_printed(check)
    assert done.returncode == 0, done.stderr
    assert "Verification: OK" in done.stdout


async def test_without_roots_imprint_is_checked_but_signature_is_not(
    server: LocalTsa, client: httpx.AsyncClient
) -> None:
    token = await get_token(server, client)
    info = tsa.verify_token(token, DIGEST, None)
    assert (info.signature_checked, info.verifier) == (False, "none")
    assert info.note == "no trust roots given"
    assert info.imprint == DIGEST
    with pytest.raises(tsa.TokenVerificationError, match="imprint mismatch"):
        tsa.verify_token(token, OTHER_DIGEST, None)


async def test_wrong_digest_fails_both_verifiers(
    server: LocalTsa, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    token = await get_token(server, client)
    with pytest.raises(tsa.TokenVerificationError, match="imprint mismatch"):
        tsa.verify_token(token, OTHER_DIGEST, server.ca_pem)
    done = run_printed(tsa.export_for_openssl(token, OTHER_DIGEST, tmp_path, server.ca_pem))
    assert done.returncode != 0
    assert "Verification: FAILED" in done.stdout
    assert "message imprint mismatch" in done.stderr


async def test_foreign_root_fails_both_verifiers(
    server: LocalTsa, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    token = await get_token(server, client)
    (tmp_path / "other").mkdir()
    other_ca, _ = make_pki(tmp_path / "other")
    with pytest.raises(tsa.TokenVerificationError, match="rfc3161-client"):
        tsa.verify_token(token, DIGEST, other_ca)
    done = run_printed(tsa.export_for_openssl(token, DIGEST, tmp_path / "b", other_ca))
    assert done.returncode != 0
    assert "Verification: FAILED" in done.stdout


async def test_edited_token_fails(server: LocalTsa, client: httpx.AsyncClient) -> None:
    token = bytearray(await get_token(server, client))
    token[-1] ^= 0x01  # last byte of the RSA signature
    with pytest.raises(tsa.TokenVerificationError):
        tsa.verify_token(bytes(token), DIGEST, server.ca_pem)


def test_garbage_is_not_a_token(server: LocalTsa) -> None:
    with pytest.raises(tsa.TokenVerificationError, match="unusable token"):
        tsa.verify_token(b"\x30\x03abc", DIGEST, server.ca_pem)


# --- InvalidSetOrdering: rfc3161-client cannot parse, openssl verifies ---------------------


async def test_chain_token_falls_back_to_openssl(
    server: LocalTsa, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    result = await tsa.request_token([server.url_for("/chain")], DIGEST, client)
    with pytest.raises(ValueError, match="InvalidSetOrdering"):  # the precondition
        decode_timestamp_response(result.response_der)
    assert result.decoded_by == "tolerant-der"
    assert len(result.certificates) == 2  # TSA and CA certificate

    info = tsa.verify_token(result.response_der, DIGEST, server.ca_pem)
    assert (info.signature_checked, info.verifier) == (True, "openssl")
    assert "InvalidSetOrdering" in info.note
    assert (info.gen_time, info.serial) == (result.gen_time, result.serial)

    with pytest.raises(tsa.TokenVerificationError, match="imprint mismatch"):
        tsa.verify_token(result.response_der, OTHER_DIGEST, server.ca_pem)
    (tmp_path / "other").mkdir()
    other_ca, _ = make_pki(tmp_path / "other")
    with pytest.raises(tsa.TokenVerificationError, match="openssl ts -verify failed"):
        tsa.verify_token(result.response_der, DIGEST, other_ca)

    done = run_printed(
        tsa.export_for_openssl(result.response_der, DIGEST, tmp_path / "b", server.ca_pem)
    )
    assert done.returncode == 0, done.stderr
    assert "Verification: OK" in done.stdout


async def test_chain_token_without_openssl_says_signature_not_checked(
    server: LocalTsa, client: httpx.AsyncClient
) -> None:
    token = await get_token(server, client, "/chain")
    info = tsa.verify_token(token, DIGEST, server.ca_pem, openssl="/nonexistent/openssl")
    assert (info.signature_checked, info.verifier) == (False, "none")
    assert "not found" in info.note


async def test_token_without_embedded_certificate_needs_the_tsa_pem(
    server: LocalTsa, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    reply = await client.post(
        server.url,
        content=tsa.build_request(DIGEST, cert_req=False).der,
        headers={"Content-Type": tsa.QUERY_CONTENT_TYPE},
    )
    token = reply.content
    with pytest.raises(tsa.TokenVerificationError, match="openssl ts -verify failed"):
        tsa.verify_token(token, DIGEST, server.ca_pem)
    info = tsa.verify_token(token, DIGEST, server.ca_pem, untrusted_pem=server.tsa_pem)
    assert (info.verifier, info.certificates) == ("openssl", ())
    assert "embeds no certificate" in info.note
    check = tsa.export_for_openssl(token, DIGEST, tmp_path, server.ca_pem, tsa_pem=server.tsa_pem)
    done = run_printed(check)
    assert done.returncode == 0, done.stderr


async def test_tolerant_reader_agrees_with_rfc3161_client(
    server: LocalTsa, client: httpx.AsyncClient
) -> None:
    token = await get_token(server, client)
    strict = tsa._parse_reply(token)
    tolerant = tsa._parse_tolerant(token, "forced")
    assert strict.parsed is not None and tolerant.parsed is None
    assert tolerant.tst == strict.tst
    assert (tolerant.status, tolerant.certificates) == (strict.status, strict.certificates)


@pytest.fixture(scope="module")
def tokens(server: LocalTsa) -> dict[str, bytes]:
    """One token per embedding style, fetched once for the property tests."""
    out = {}
    for path in ("/tsr", "/chain"):
        reply = httpx.post(
            server.url_for(path),
            content=tsa.build_request(DIGEST).der,
            headers={"Content-Type": tsa.QUERY_CONTENT_TYPE},
            trust_env=False,
        )
        out[path] = reply.content
    return out


@settings(max_examples=150, deadline=None)
@given(path=st.sampled_from(["/tsr", "/chain"]), where=st.floats(0, 1), value=st.integers(0, 255))
def test_edited_byte_never_crashes_and_never_changes_what_a_checked_token_says(
    server: LocalTsa, tokens: dict[str, bytes], path: str, where: float, value: int
) -> None:
    original = tokens[path]
    edited = bytearray(original)
    edited[min(int(where * len(edited)), len(edited) - 1)] = value
    with contextlib.suppress(tsa.TokenVerificationError):  # nothing else may escape
        tsa.verify_token(bytes(edited), DIGEST, None)
    try:
        info = tsa.verify_token(bytes(edited), DIGEST, server.ca_pem)
    except tsa.TokenVerificationError:
        return
    # Accepted with a signature check: the edit was outside the signed TSTInfo.
    assert info.signature_checked
    good = tsa.verify_token(original, DIGEST, server.ca_pem)
    assert (info.gen_time, info.serial, info.nonce, info.policy) == (
        good.gen_time,
        good.serial,
        good.nonce,
        good.policy,
    )


# --- fallback and failure ------------------------------------------------------------------


async def test_falls_back_past_every_kind_of_broken_tsa(
    server: LocalTsa, client: httpx.AsyncClient, refused_url: str
) -> None:
    broken = [refused_url] + [
        server.url_for(p) for p in ("/http500", "/garbage", "/wrong-type", "/reject")
    ]
    result = await tsa.request_token([*broken, server.url], DIGEST, client)
    assert result.tsa_url == server.url
    assert tsa.verify_token(result.response_der, DIGEST, server.ca_pem).signature_checked


async def test_all_failing_raises_naming_each_url(
    server: LocalTsa, client: httpx.AsyncClient, refused_url: str
) -> None:
    urls = {
        refused_url: "ConnectError",
        server.url_for("/http500"): "HTTP 500",
        server.url_for("/garbage"): "undecodable reply",
        server.url_for("/wrong-type"): "Content-Type 'text/html'",
        server.url_for("/reject"): "not granted: status 2 (rejection)",
        "ftp://127.0.0.1/tsr": "UnsupportedProtocol",
    }
    with pytest.raises(tsa.TsaError) as caught:
        await tsa.request_token(list(urls), DIGEST, client)
    failures = caught.value.failures
    assert [url for url, _ in failures] == list(urls)
    for (url, reason), expected in zip(failures, urls.values(), strict=True):
        assert expected in reason, (url, reason)
        assert url in str(caught.value)
    assert "Message digest algorithm is not supported" in failures[4][1]


async def test_no_urls_is_a_tsa_error(client: httpx.AsyncClient) -> None:
    with pytest.raises(tsa.TsaError, match="no TSA URL configured"):
        await tsa.request_token([], DIGEST, client)


async def test_silent_tsa_times_out_and_falls_back(
    server: LocalTsa, client: httpx.AsyncClient
) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}/tsr"
        result = await tsa.request_token([silent_url, server.url], DIGEST, client, timeout=0.5)
        assert result.tsa_url == server.url
        with pytest.raises(tsa.TsaError, match=r"timed out after 0\.5 s"):
            await tsa.request_token([silent_url], DIGEST, client, timeout=0.5)


async def test_replayed_reply_is_rejected_for_nonce(
    server: LocalTsa, client: httpx.AsyncClient
) -> None:
    # A genuine, validly signed reply to an earlier request for the SAME digest...
    earlier = tsa.build_request(DIGEST)
    reply = await client.post(
        server.url, content=earlier.der, headers={"Content-Type": tsa.QUERY_CONTENT_TYPE}
    )
    server.replay_body = reply.content
    assert tsa.verify_token(reply.content, DIGEST, server.ca_pem).signature_checked
    # ...served again for a new request: only the nonce gives it away.
    with pytest.raises(tsa.TsaError, match="nonce mismatch") as caught:
        await tsa.request_token([server.url_for("/replay")], DIGEST, client)
    assert str(earlier.nonce) in caught.value.failures[0][1]


async def test_reply_for_another_digest_is_rejected(
    server: LocalTsa, client: httpx.AsyncClient
) -> None:
    server.replay_body = await get_token(server, client)  # covers DIGEST
    with pytest.raises(tsa.TsaError, match="imprint mismatch"):
        await tsa.request_token([server.url_for("/replay")], OTHER_DIGEST, client)


async def test_credentials_in_url_never_reach_the_result(
    server: LocalTsa, client: httpx.AsyncClient, refused_url: str
) -> None:
    secret_url = server.url.replace("http://", "http://user:s3cret@")
    result = await tsa.request_token([secret_url], DIGEST, client)
    assert result.tsa_url == server.url
    with pytest.raises(tsa.TsaError) as caught:
        await tsa.request_token(
            [refused_url.replace("http://", "http://u:s3cret@")], DIGEST, client
        )
    assert "s3cret" not in str(caught.value)


def test_fixture_function_runs_and_stops(tmp_path: Path) -> None:
    with local_tsa(tmp_path) as running:
        reply = httpx.post(
            running.url,
            content=tsa.build_request(DIGEST).der,
            headers={"Content-Type": tsa.QUERY_CONTENT_TYPE},
            trust_env=False,
        )
        assert reply.headers["content-type"] == tsa.REPLY_CONTENT_TYPE
    with pytest.raises(httpx.ConnectError):
        httpx.post(running.url, content=b"", trust_env=False)
