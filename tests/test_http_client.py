"""channels.http: the fast client is still an httpx client, pytest-httpx still sees it, and its
connection pool behaves like an HTTP/1.1 client should against a real (loopback) server."""

from __future__ import annotations

import asyncio
import gc
import gzip
import ipaddress
import json
import ssl
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from pytest_httpx import HTTPXMock

from channels.base import Permanent, Transient, Unknown
from channels.http import (
    H11Transport,
    describe_exchange,
    failure_from_transport_error,
    fit_text,
    make_client,
    retry_after_seconds,
    scrub,
)

# -- through pytest-httpx ---------------------------------------------------------------------


def test_make_client_is_an_httpx_client_with_our_pool() -> None:
    client = make_client(timeout=3.0, max_connections=7)
    transport = client._transport
    assert isinstance(client, httpx.AsyncClient)
    assert isinstance(transport, H11Transport)
    assert isinstance(transport, httpx.AsyncHTTPTransport)
    # The one private attribute we rely on: if a new httpx renames it, this fails first.
    assert type(transport._pool).__name__ == "_Pool"
    assert client.timeout == httpx.Timeout(3.0, connect=3.0)


def test_make_client_with_proxy_uses_the_stock_pool() -> None:
    client = make_client(proxy="http://127.0.0.1:3128")
    assert isinstance(client._transport._pool, httpcore.AsyncHTTPProxy)  # type: ignore[attr-defined]


def test_make_client_rejects_zero_connections() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        make_client(max_connections=0)


async def test_pytest_httpx_intercepts_make_client(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(
        url="https://gw.example.cn/send", method="POST", match_content=b"x=1", json={"code": "OK"}
    )
    async with make_client(timeout=2.0, max_connections=4) as client:
        response = await client.post("https://gw.example.cn/send", content=b"x=1")
    assert response.json() == {"code": "OK"}
    assert httpx_mock.get_request() is not None


async def test_client_keeps_no_cookies(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(
        url="https://gw.example.cn/a", headers={"Set-Cookie": "lb=node7; Path=/"}
    )
    httpx_mock.add_response(url="https://gw.example.cn/b")
    async with make_client() as client:
        await client.get("https://gw.example.cn/a")
        await client.get("https://gw.example.cn/b")
        assert len(client.cookies) == 0
        with pytest.raises(TypeError, match="no cookies"):
            client.cookies = {"a": "b"}
    second = httpx_mock.get_request(url="https://gw.example.cn/b")
    assert second is not None and "cookie" not in second.headers


async def test_pytest_httpx_under_concurrency(httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_callback(
        lambda request: httpx.Response(200, json={"echo": request.content.decode()}),
        url="https://gw.example.cn/send",
        is_reusable=True,
    )
    async with make_client(max_connections=10) as client:

        async def one(i: int) -> str:
            r = await client.post("https://gw.example.cn/send", content=str(i).encode())
            return str(r.json()["echo"])

        echoes = await asyncio.gather(*(one(i) for i in range(300)))
    assert echoes == [str(i) for i in range(300)]
    assert len(httpx_mock.get_requests()) == 300


# -- against a real server on 127.0.0.1 -------------------------------------------------------

Handler = Callable[[str, bytes, asyncio.StreamWriter], Awaitable[bool]]


class LoopbackServer:
    """A scripted HTTP/1.1 server: ``routes[path]`` writes the reply; returns keep-alive."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[str, bytes]] = []
        self.routes: dict[str, Handler] = {}
        self.writers: list[asyncio.StreamWriter] = []
        self.stall: dict[str, float] = {}  # path -> seconds before the body is read
        self.hang_up: set[str] = set()  # paths whose connection is closed after the head
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # torn down with the test; Python 3.11's start_server logs cancelled handlers
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            if path in self.hang_up:
                return
            if path in self.stall:
                await asyncio.sleep(self.stall[path])
            body = await reader.readexactly(length) if length else b""
            self.requests.append((path, body))
            route = self.routes.get(path.split("?")[0], reply_json)
            if not await route(path, body, writer):
                return

    def close_all(self) -> None:
        for writer in self.writers:
            writer.close()


async def reply_json(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
    data = json.dumps({"path": path, "len": len(body)}).encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    await writer.drain()
    return True


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    srv = LoopbackServer()
    tcp = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.url = f"http://127.0.0.1:{tcp.sockets[0].getsockname()[1]}"
    try:
        yield srv
    finally:
        srv.close_all()
        tcp.close()
        await tcp.wait_closed()


async def test_keep_alive_reuses_one_connection(server: LoopbackServer) -> None:
    async with make_client(max_connections=5) as client:
        for i in range(20):
            r = await client.post(f"{server.url}/send", content=b"a" * i)
            assert r.json() == {"path": "/send", "len": i}
            assert r.http_version == "HTTP/1.1"
    assert server.connections == 1


async def test_concurrency_is_bounded_by_max_connections(server: LoopbackServer) -> None:
    async def slow(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.01)
        return await reply_json(path, body, writer)

    server.routes["/slow"] = slow
    async with make_client(max_connections=8) as client:

        async def one(i: int) -> int:
            r = await client.post(f"{server.url}/slow?i={i}", content=b"x" * i)
            return int(r.json()["len"])

        lengths = await asyncio.gather(*(one(i) for i in range(200)))
    assert lengths == list(range(200))
    assert server.connections == 8


async def test_chunked_and_read_until_close_bodies(server: LoopbackServer) -> None:
    async def chunked(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n")
        return True

    async def until_close(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
        await writer.drain()
        return False

    async def no_content(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        return True

    server.routes |= {"/chunked": chunked, "/close": until_close, "/204": no_content}
    async with make_client() as client:
        assert (await client.get(f"{server.url}/chunked")).text == "hello, world"
        assert (await client.get(f"{server.url}/close")).text == "until the end"
        r = await client.get(f"{server.url}/204")
        assert r.status_code == 204 and r.content == b""
        assert (await client.get(f"{server.url}/chunked")).text == "hello, world"
    # chunked keeps the first connection; the close forces a second one for /204 onwards
    assert server.connections == 2


async def test_connection_close_header_is_honoured(server: LoopbackServer) -> None:
    async def closing(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return False

    server.routes["/c"] = closing
    async with make_client() as client:
        for _ in range(3):
            assert (await client.get(f"{server.url}/c")).text == "ok"
    assert server.connections == 3


async def test_idle_connection_closed_by_server_is_replaced(server: LoopbackServer) -> None:
    async with make_client() as client:
        assert (await client.get(f"{server.url}/a")).status_code == 200
        server.close_all()  # the server drops its kept-alive socket
        await asyncio.sleep(0.05)
        assert (await client.get(f"{server.url}/b")).status_code == 200
    assert server.connections == 2
    assert [p for p, _ in server.requests] == ["/a", "/b"]


async def test_read_timeout_then_client_still_usable(server: LoopbackServer) -> None:
    async def hang(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(1.0)
        return False

    server.routes["/hang"] = hang
    async with make_client(timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout) as info:
            await client.post(f"{server.url}/hang", content=b"notice")
        failure = failure_from_transport_error(info.value, what="gw", transcript={})
        assert isinstance(failure, Unknown)  # the request was written: it may have been acted on
        assert (await client.get(f"{server.url}/ok")).status_code == 200


async def test_disconnect_without_response_is_unknown(server: LoopbackServer) -> None:
    async def drop(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        return False  # read the request, answer nothing, close

    server.routes["/drop"] = drop
    async with make_client() as client:
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await client.post(f"{server.url}/drop", content=b"notice")
    assert isinstance(failure_from_transport_error(info.value, what="gw", transcript={}), Unknown)


async def test_connection_refused_is_transient() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with make_client(timeout=2.0) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(f"http://127.0.0.1:{port}/")
    assert isinstance(failure_from_transport_error(info.value, what="gw", transcript={}), Transient)


async def test_pool_timeout_when_every_connection_is_busy(server: LoopbackServer) -> None:
    release = asyncio.Event()

    async def held(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        return await reply_json(path, body, writer)

    server.routes["/held"] = held
    async with make_client(max_connections=1) as client:
        first = asyncio.create_task(client.get(f"{server.url}/held"))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout) as info:
            await client.get(f"{server.url}/ok", timeout=httpx.Timeout(5.0, pool=0.1))
        assert isinstance(
            failure_from_transport_error(info.value, what="gw", transcript={}), Transient
        )
        # a waiter without a timeout gets the connection as soon as it is free
        second = asyncio.create_task(client.get(f"{server.url}/ok"))
        await asyncio.sleep(0.05)
        release.set()
        assert (await first).status_code == 200
        assert (await second).status_code == 200
    assert server.connections == 1


async def test_large_bodies_both_ways(server: LoopbackServer) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB: exercises write buffering and read back-pressure

    async def echo(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()
        return True

    server.routes["/echo"] = echo
    async with make_client() as client:
        r = await client.post(f"{server.url}/echo", content=big)
        assert r.content == big
        assert (await client.get(f"{server.url}/ok")).status_code == 200
    assert server.requests[0] == ("/echo", big)
    assert server.connections == 1


async def test_stream_closed_early_discards_the_connection(server: LoopbackServer) -> None:
    async def long(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        await asyncio.sleep(0.2)
        return False

    server.routes["/long"] = long
    async with make_client() as client:
        async with client.stream("GET", f"{server.url}/long") as r:
            async for _ in r.aiter_raw():
                break
        assert (await client.get(f"{server.url}/ok")).status_code == 200
    assert server.connections == 2


async def test_aclose_closes_server_side_connections(server: LoopbackServer) -> None:
    client = make_client()
    await client.get(f"{server.url}/ok")
    await client.aclose()
    await asyncio.sleep(0.05)
    assert server.writers[0].is_closing() or server.writers[0].transport.is_closing()


async def test_write_back_pressure_and_write_timeout(server: LoopbackServer) -> None:
    server.stall["/stall"] = 2.0  # the server reads the head, then nothing: buffers fill up
    server.stall["/pause"] = 0.3
    server.hang_up.add("/hang-up")
    huge = b"x" * (64 * 1024 * 1024)
    async with make_client(timeout=0.3) as client:
        with pytest.raises(httpx.WriteTimeout) as info:
            await client.post(f"{server.url}/stall", content=huge)
        assert isinstance(
            failure_from_transport_error(info.value, what="gw", transcript={}), Unknown
        )
        with pytest.raises(httpx.WriteError) as lost:
            await client.post(f"{server.url}/hang-up", content=huge)
        assert isinstance(
            failure_from_transport_error(lost.value, what="gw", transcript={}), Unknown
        )
    async with make_client(timeout=5.0) as client:  # paused, then drained: the upload completes
        r = await client.post(f"{server.url}/pause", content=huge)
        assert r.json() == {"path": "/pause", "len": len(huge)}


async def test_read_back_pressure_with_a_slow_consumer(server: LoopbackServer) -> None:
    size = 8 * 1024 * 1024

    async def flood(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"y" * 65536)
        await writer.drain()
        return True

    server.routes["/flood"] = flood
    received = 0
    async with make_client() as client:
        async with client.stream("GET", f"{server.url}/flood") as r:
            async for chunk in r.aiter_raw():
                received += len(chunk)
                await asyncio.sleep(0.01)  # slower than loopback: the socket must be paused
        assert (await client.get(f"{server.url}/ok")).status_code == 200
    assert received == size
    assert server.connections == 1


async def test_informational_response_is_skipped(server: LoopbackServer) -> None:
    async def with_continue(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return await reply_json(path, body, writer)

    server.routes["/continue"] = with_continue
    async with make_client() as client:
        r = await client.post(f"{server.url}/continue", content=b"abc")
    assert r.status_code == 200 and r.json()["len"] == 3


async def test_stray_bytes_after_a_response_retire_the_connection(server: LoopbackServer) -> None:
    async def double(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        await reply_json(path, body, writer)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
        await writer.drain()
        return True

    async def late(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        await reply_json(path, body, writer)
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
        await writer.drain()
        return True

    server.routes |= {"/double": double, "/late": late}
    async with make_client() as client:
        assert (await client.get(f"{server.url}/double")).json()["path"] == "/double"
        await asyncio.sleep(0.02)
        assert (await client.get(f"{server.url}/one")).json()["path"] == "/one"
        assert (await client.get(f"{server.url}/late")).json()["path"] == "/late"
        await asyncio.sleep(0.1)  # the stray reply arrives while the connection is idle
        assert (await client.get(f"{server.url}/two")).json()["path"] == "/two"
    assert server.connections == 3  # /double alone; /one + /late; /two after the stray bytes


async def test_idle_connection_to_another_origin_is_evicted_at_the_cap(
    server: LoopbackServer,
) -> None:
    other = LoopbackServer()
    tcp = await asyncio.start_server(other.handle, "127.0.0.1", 0)
    other.url = f"http://127.0.0.1:{tcp.sockets[0].getsockname()[1]}"
    try:
        async with make_client(max_connections=1) as client:
            assert (await client.get(f"{server.url}/a")).status_code == 200
            assert (await client.get(f"{other.url}/b")).status_code == 200
            assert (await client.get(f"{server.url}/c")).status_code == 200
        assert (server.connections, other.connections) == (2, 1)
    finally:
        other.close_all()
        tcp.close()
        await tcp.wait_closed()


async def test_keepalive_cap_and_expiry(server: LoopbackServer) -> None:
    async def slow(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        return await reply_json(path, body, writer)

    server.routes["/slow"] = slow
    limits = httpx.Limits(max_connections=10, max_keepalive_connections=2, keepalive_expiry=0.2)
    async with httpx.AsyncClient(transport=H11Transport(limits=limits)) as client:
        await asyncio.gather(*(client.get(f"{server.url}/slow") for _ in range(5)))
        assert server.connections == 5
        await asyncio.gather(*(client.get(f"{server.url}/slow") for _ in range(2)))
        assert server.connections == 5  # two were kept warm
        await asyncio.sleep(0.3)
        await client.get(f"{server.url}/ok")
        assert server.connections == 6  # the warm ones expired


async def test_connect_timeout_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def never_connects(*args: object, **kwargs: object) -> None:
        await asyncio.sleep(10)

    monkeypatch.setattr(loop, "create_connection", never_connects)
    async with make_client(timeout=0.1) as client:
        with pytest.raises(httpx.ConnectTimeout) as info:
            await client.get("http://127.0.0.1:9/")
    assert isinstance(failure_from_transport_error(info.value, what="gw", transcript={}), Transient)


async def test_aclose_during_connect_does_not_adopt_the_socket(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    real = loop.create_connection

    async def slow_connect(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.1)
        return await real(*args, **kwargs)

    monkeypatch.setattr(loop, "create_connection", slow_connect)
    client = make_client()
    pending = asyncio.create_task(client.get(f"{server.url}/ok"))
    await asyncio.sleep(0.02)
    await client._transport.aclose()
    with pytest.raises(httpx.ConnectError, match="closed"):
        await pending
    await asyncio.sleep(0.05)
    assert server.requests == []  # the late socket was dropped, nothing was sent on it


async def test_aclose_wakes_requests_waiting_for_a_slot(server: LoopbackServer) -> None:
    async def hang(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(1.0)
        return False

    server.routes["/hang"] = hang
    client = make_client(max_connections=1)
    busy = asyncio.create_task(client.get(f"{server.url}/hang"))
    waiting = asyncio.create_task(client.get(f"{server.url}/ok"))
    await asyncio.sleep(0.05)
    await client._transport.aclose()
    for task in (busy, waiting):
        with pytest.raises(httpx.TransportError):
            await task
    await client.aclose()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 / localhost, written as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_https_with_verification_and_keep_alive(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    srv = LoopbackServer()
    tcp = await asyncio.start_server(srv.handle, "127.0.0.1", 0, ssl=server_ctx)
    port = tcp.sockets[0].getsockname()[1]
    trusting = ssl.create_default_context(cafile=str(cert_file))
    try:
        async with httpx.AsyncClient(transport=H11Transport(verify=trusting)) as client:
            for host in ("localhost", "127.0.0.1"):
                r = await client.post(f"https://{host}:{port}/tls", content=b"secret notice")
                assert r.json() == {"path": "/tls", "len": 13}
                r = await client.post(f"https://{host}:{port}/tls", content=b"again")
                assert r.json()["len"] == 5
        assert srv.connections == 2  # one TLS session per origin, reused
        async with make_client() as client:  # the default trust store rejects the stranger
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED") as info:
                await client.get(f"https://localhost:{port}/tls")
        failure = failure_from_transport_error(info.value, what="gw", transcript={})
        assert isinstance(failure, Transient)
    finally:
        srv.close_all()
        tcp.close()
        await tcp.wait_closed()


class _KeepAliveHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_client_survives_a_new_event_loop() -> None:
    """A channel built once and used under two asyncio.run() calls must not write through the
    first, closed loop: the kept-alive socket from loop 1 is dropped, a new one is opened."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    client = make_client(timeout=5.0)
    try:
        assert asyncio.run(client.get(url)).text == "ok"
        assert asyncio.run(client.get(url)).text == "ok"
        asyncio.run(client.aclose())
        # Loop 1 closed under a kept-alive socket, as it does for any client not closed
        # first; collect it here, where its ResourceWarning is expected.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- pure helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (httpx.ConnectError("refused"), Transient),
        (httpx.ConnectTimeout("slow"), Transient),
        (httpx.PoolTimeout("busy"), Transient),
        (httpx.ProxyError("proxy"), Transient),
        (httpx.LocalProtocolError("bad header"), Permanent),
        (httpx.UnsupportedProtocol("ftp"), Permanent),
        (httpx.WriteError("half"), Unknown),
        (httpx.WriteTimeout("half"), Unknown),
        (httpx.ReadTimeout("late"), Unknown),
        (httpx.ReadError("reset"), Unknown),
        (httpx.RemoteProtocolError("gone"), Unknown),
    ],
)
def test_transport_errors_are_classified_by_whether_bytes_left(
    exc: httpx.TransportError, outcome: type[Exception]
) -> None:
    failure = failure_from_transport_error(exc, what="gw", transcript={"request": {}})
    assert type(failure) is outcome
    assert failure.transcript == {"request": {}, "error": type(exc).__name__}
    if isinstance(failure, Permanent):
        assert failure.bad_recipient is False


def test_transport_error_text_is_scrubbed() -> None:
    failure = failure_from_transport_error(
        httpx.ReadError("reset on /send?key=s3cr3t"), what="gw", transcript={}, secrets=["s3cr3t"]
    )
    assert "s3cr3t" not in str(failure) and "***" in str(failure)
    assert scrub("a s3cr3t b", ["s3cr3t", ""]) == "a *** b"


def test_retry_after_forms() -> None:
    now = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(" 120 ") == 120.0
    assert retry_after_seconds("Mon, 02 Mar 2026 09:00:30 GMT", now=now) == 30.0
    assert retry_after_seconds("Mon, 02 Mar 2026 08:00:00 GMT", now=now) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("-5") is None
    assert retry_after_seconds(None) is None


def test_fit_text_keeps_the_reference() -> None:
    ref = "OUT-2026-000123"
    assert fit_text(f"请注销终端。案号 {ref}", ref, 70) == f"请注销终端。案号 {ref}"
    assert fit_text("请注销终端。", ref, 70) == f"请注销终端。 {ref}"
    long = "很长的通知" * 100
    cut = fit_text(long, ref, 70)
    assert len(cut) == 70 and cut.endswith(f"… {ref}") and cut.startswith("很长的通知")
    cut = fit_text(f"{ref} " + long, ref, 70)  # the reference near the start is cut off: re-added
    assert len(cut) <= 70 and cut.endswith(ref)
    with pytest.raises(ValueError, match="cannot hold"):
        fit_text("x", ref, 10)


def test_describe_exchange_hides_credentials() -> None:
    request = httpx.Request(
        "POST",
        "https://gw.example.cn/send",
        content=b"body",
        headers={"Authorization": "Basic c2VjcmV0", "X-Api-Key": "k-123", "X-Ref": "OUT-1"},
    )
    response = httpx.Response(201, headers={"Date": "Mon, 02 Mar 2026 09:00:00 GMT"}, content=b"{}")
    record = describe_exchange(request, response, started=0.0, secret_headers=["x-api-key"])
    text = json.dumps(record)
    assert "c2VjcmV0" not in text and "k-123" not in text
    headers = dict(record["request"]["headers"])
    assert headers["authorization"] == "***" and headers["x-api-key"] == "***"
    assert headers["x-ref"] == "OUT-1"
    assert record["request"]["body_bytes"] == 4
    assert record["response"]["status"] == 201
    assert ["date", "Mon, 02 Mar 2026 09:00:00 GMT"] in record["response"]["headers"]


# -- GatewayClient.send: the plain path and when it steps aside ---------------------------------


async def test_plain_send_reads_the_reply_like_httpx(server: LoopbackServer) -> None:
    async with make_client() as client:
        request = client.build_request("POST", f"{server.url}/send", content=b"abc")
        r = await client.send(request)
        assert r.is_closed and r.is_stream_consumed and r.request is request
        assert r.json() == {"path": "/send", "len": 3}
        assert r.elapsed.total_seconds() >= 0
        # the same exchange through httpx's own layers gives the same response
        standard = await httpx.AsyncClient.send(
            client, client.build_request("POST", f"{server.url}/send", content=b"abc")
        )
        assert (standard.status_code, standard.headers.raw, standard.content) == (
            r.status_code,
            r.headers.raw,
            r.content,
        )


async def test_compressed_replies_hooks_and_streams_take_the_standard_path(
    server: LoopbackServer,
) -> None:
    raw = json.dumps({"ok": True}).encode() * 50

    async def gzipped(path: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        data = gzip.compress(raw)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n")
        writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
        await writer.drain()
        return True

    server.routes["/gz"] = gzipped
    seen: list[int] = []

    async def hook(response: httpx.Response) -> None:
        seen.append(response.status_code)

    async with make_client() as client:
        assert (await client.post(f"{server.url}/gz")).content == raw  # decoded by httpx
        client.event_hooks["response"] = [hook]
        await client.post(f"{server.url}/send")
        assert seen == [200]
        client.event_hooks["response"] = []
        request = client.build_request("POST", f"{server.url}/send", content=b"xy")
        streamed = await client.send(request, stream=True)
        assert not streamed.is_closed  # the caller reads it
        assert json.loads(await streamed.aread()) == {"path": "/send", "len": 2}


async def test_a_closed_client_refuses_to_send(server: LoopbackServer) -> None:
    client = make_client()
    request = client.build_request("POST", f"{server.url}/send")
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.send(request)
