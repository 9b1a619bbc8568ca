"""A real RFC 3161 time-stamping authority on 127.0.0.1, for tests.

Why real and not a canned response: the point of a token is that ``openssl ts -verify`` and
rfc3161-client both accept it, and that a nonce or imprint mix-up is caught. Only a TSA that
actually signs each request (``openssl ts -reply``, the configuration of providers.md §9.7)
exercises that path; a recorded reply would always carry the same nonce.

The server answers on several paths so that one instance can play a good TSA and broken ones
at the same time (the fallback tests need both):

=================  ====================================================================
``/tsr``           a granted token, signer certificate embedded (the §9.7 configuration)
``/chain``         granted, but CA certificate embedded too (``certs = ca.crt``): OpenSSL
                   writes the SET OF certificates out of DER order, which rfc3161-client
                   rejects with ``InvalidSetOrdering`` (providers.md §4.1)
``/reject``        a genuine OpenSSL rejection (status 2, badAlg: SHA-256 not offered)
``/http500``       HTTP 500
``/garbage``       HTTP 200, right content type, body is not DER
``/wrong-type``    a granted token served as ``text/html`` (a captive portal, a proxy page)
``/replay``        whatever bytes the test put in ``LocalTsa.replay_body`` (a replayed reply)
=================  ====================================================================

Use :func:`local_tsa` as a context manager, or the ``tsa_server`` fixture
(:func:`tsa_server_fixture`; import it into a test module). The server thread is always
stopped and joined on exit.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# providers.md §9.7, verbatim.
TSA_CONFIG = """\
oid_section = new_oids
[ new_oids ]
tsa_policy1 = 1.2.3.4.1

[ tsa ]
default_tsa = tsa_config1

[ tsa_config1 ]
dir             = .
serial          = $dir/tsaserial
crypto_device   = builtin
signer_cert     = $dir/tsa.crt
# certs = $dir/ca.crt   # leave out: rfc3161-client rejects a non-DER-ordered SET OF certificates
signer_key      = $dir/tsa.key
signer_digest   = sha256
default_policy  = tsa_policy1
digests         = sha256, sha384, sha512
accuracy        = secs:1
ordering        = yes
tsa_name        = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256

[ tsa_ext ]
basicConstraints       = critical,CA:FALSE
keyUsage               = critical,digitalSignature,nonRepudiation
extendedKeyUsage       = critical,timeStamping
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid,issuer

[ ca_ext ]
basicConstraints       = critical,CA:TRUE
keyUsage               = critical,keyCertSign,cRLSign
subjectKeyIdentifier   = hash
"""

# Test-only sections appended after the verbatim part, selected with ``-section``.
EXTRA_SECTIONS = """
[ tsa_chain ]
dir             = .
serial          = $dir/tsaserial
crypto_device   = builtin
signer_cert     = $dir/tsa.crt
certs           = $dir/ca.crt
signer_key      = $dir/tsa.key
signer_digest   = sha256
default_policy  = tsa_policy1
digests         = sha256, sha384, sha512
accuracy        = secs:1
ordering        = yes
tsa_name        = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256

[ tsa_reject ]
dir             = .
serial          = $dir/tsaserial
crypto_device   = builtin
signer_cert     = $dir/tsa.crt
signer_key      = $dir/tsa.key
signer_digest   = sha256
default_policy  = tsa_policy1
digests         = sha512
"""

REPLY_TYPE = "application/timestamp-reply"

_SECTIONS = {"/tsr": "tsa_config1", "/chain": "tsa_chain", "/reject": "tsa_reject"}


@dataclass
class LocalTsa:
    """A running local TSA: where to reach it and what to trust."""

    url: str
    """The good endpoint (``/tsr``)."""
    base_url: str
    ca_pem: bytes
    """The test root: the trust anchor a verifier is given."""
    tsa_pem: bytes
    """The TSA signer certificate (for ``-untrusted``)."""
    workdir: Path
    replay_body: bytes = b""
    """Served verbatim on ``/replay``."""
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)
    """Every request received: (path, Content-Type, body)."""
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def url_for(self, path: str) -> str:
        """The URL of one of the behaviours listed in the module docstring."""
        return self.base_url + path

    def stop(self) -> None:
        """Stop the server and join its thread; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "outreach tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_pki(directory: Path) -> tuple[bytes, bytes]:
    """Write ca.crt, tsa.crt, tsa.key, tsaserial; return (ca_pem, tsa_pem).

    RSA-2048, and the TSA certificate carries ``extendedKeyUsage = critical,timeStamping``
    exactly as the ``tsa_ext`` section of §9.7 asks (RFC 3161 §2.3; both verifiers enforce it).
    Validity starts an hour back so that a slightly skewed clock cannot fail a test.
    """
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("outreach test root CA"))
        .issuer_name(_name("outreach test root CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    tsa_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("outreach test TSA"))
        .issuer_name(ca_cert.subject)
        .public_key(tsa_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(tsa_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    tsa_pem = tsa_cert.public_bytes(serialization.Encoding.PEM)
    (directory / "ca.crt").write_bytes(ca_pem)
    (directory / "tsa.crt").write_bytes(tsa_pem)
    (directory / "tsa.key").write_bytes(
        tsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "tsaserial").write_text("01\n")
    (directory / "tsa.cnf").write_text(TSA_CONFIG + EXTRA_SECTIONS)
    return ca_pem, tsa_pem


def _make_handler(tsa: LocalTsa, lock: threading.Lock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            """Keep pytest output clean."""

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            path = self.path
            tsa.requests.append((path, self.headers.get("Content-Type", ""), body))
            if path == "/http500":
                self._send(500, "text/plain", b"internal error")
            elif path == "/garbage":
                self._send(200, REPLY_TYPE, b"\x30\x03not DER at all")
            elif path == "/replay":
                self._send(200, REPLY_TYPE, tsa.replay_body)
            elif path == "/wrong-type":
                self._send(200, "text/html", self._reply("tsa_config1", body))
            elif path in _SECTIONS:
                self._send(200, REPLY_TYPE, self._reply(_SECTIONS[path], body))
            else:
                self._send(404, "text/plain", b"no such endpoint")

        def _reply(self, section: str, query: bytes) -> bytes:
            # One openssl at a time: they share the serial-number file.
            with lock, tempfile.TemporaryDirectory(dir=tsa.workdir) as tmp:
                query_file = Path(tmp) / "req.tsq"
                reply_file = Path(tmp) / "resp.tsr"
                query_file.write_bytes(query)
                subprocess.run(
                    [
                        "openssl",
                        "ts",
                        "-reply",
                        "-config",
                        "tsa.cnf",
                        "-section",
                        section,
                        "-queryfile",
                        str(query_file),
                        "-out",
                        str(reply_file),
                    ],
                    cwd=tsa.workdir,
                    check=True,
                    capture_output=True,
                    timeout=30,
                )
                return reply_file.read_bytes()

    return Handler


@contextmanager
def local_tsa(tmp_path: Path) -> Iterator[LocalTsa]:
    """Run a TSA on an ephemeral 127.0.0.1 port with a fresh test PKI under ``tmp_path``."""
    workdir = tmp_path / "tsa"
    workdir.mkdir()
    ca_pem, tsa_pem = make_pki(workdir)
    tsa = LocalTsa(url="", base_url="", ca_pem=ca_pem, tsa_pem=tsa_pem, workdir=workdir)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(tsa, threading.Lock()))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    tsa.base_url = f"http://{host!s}:{port}"
    tsa.url = tsa.url_for("/tsr")
    tsa._server = server
    tsa._thread = threading.Thread(target=server.serve_forever, name="local-tsa", daemon=True)
    tsa._thread.start()
    try:
        yield tsa
    finally:
        tsa.stop()


@pytest.fixture(scope="module", name="tsa_server")
def tsa_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTsa]:
    """The ``tsa_server`` fixture: a running :class:`LocalTsa`, stopped at teardown.

    Module-scoped because generating the two RSA keys is the slow part; tests that set
    ``replay_body`` set it right before use. To use it, import the function into a test module
    (``from tsa_server import tsa_server_fixture  # noqa: F401``) and ask for ``tsa_server``;
    the explicit fixture name keeps the import from shadowing the test argument.
    """
    with local_tsa(tmp_path_factory.mktemp("tsa")) as tsa:
        yield tsa
