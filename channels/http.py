"""The HTTP client every HTTP channel (SMS gateways, webhooks) sends through.

One place to tune connection pooling and timeouts for all gateways, and the pieces of HTTP
error handling every HTTP channel shares. Channels call :func:`make_client` once at
construction and close the client in ``aclose``.

Why a transport of our own
--------------------------
The project must speak httpx (channels and sources take an ``httpx.AsyncClient``, tests use
pytest-httpx), but httpx's default transport is slow under concurrency: measured on the
project's 2-core machines, one ``AsyncClient`` reaches 6-28 % of the ideal rate at
concurrency 100 against a gateway that answers in 50 ms, and sharding requests over many
small clients still stops near 50 %. Profiled, the time goes to httpcore's connection pool
(its bookkeeping walks every connection and every queued request on each event, so it grows
with the square of open connections, and it probes each idle socket with ``select`` before
reuse) and to anyio cancel scopes around every read and write.

:class:`H11Transport` keeps httpx's own transport class - only the connection pool behind it
changes - so everything above it (``AsyncClient``, ``httpx.Response``, the exception types,
and pytest-httpx, which patches ``httpx.AsyncHTTPTransport.handle_async_request``) works
unchanged. The pool (:class:`_Pool`) is O(1) per request: idle connections sit in per-origin
LIFO stacks, a freed slot wakes one waiter, and each connection is an
:class:`asyncio.Protocol` that learns about a peer close from the event loop instead of by
polling. Framing is :mod:`channels.http11`, a strict sans-IO HTTP/1.1 reader written for
this one case (one request at a time per kept-alive connection); it replaced h11, and the
client now runs 0.89 M instead of 1.23 M CPU instructions per request (-28 %, callgrind,
``bench/RESULTS.md``; the kernel's share of a request is not in that count, and timed runs on
this shared machine vary more than the difference). :class:`GatewayClient` also skips cookie
bookkeeping. ``bench/sms_http.py``
measures the result against the stock client side by side: on a quiet 2-core machine, about
89-91 % of the ideal rate against 29 % (N=5000, concurrency 100, 50 ms gateway).

What it does not do: HTTP/2 (the ``h2`` package is not a dependency; the Chinese SMS
gateways we target speak HTTP/1.1), proxies from the environment (a gateway reached through a
proxy is named in the config with ``proxy=``, so the route is part of the channel settings;
with a proxy the stock httpcore pool is used), Unix sockets and httpcore trace hooks.

The transport touches one private attribute of httpx (``AsyncHTTPTransport._pool``, as of
httpx 0.28); ``tests/test_http_client.py`` fails loudly if a new httpx moves it.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Final

import httpcore
import httpx

from channels.base import ChannelError, Permanent, Transient, Unknown
from channels.http11 import END, NEED_DATA, Head, ProtocolError, ResponseReader, encode_request

__all__ = [
    "GatewayClient",
    "H11Transport",
    "describe_exchange",
    "failure_from_transport_error",
    "fit_text",
    "make_client",
    "retry_after_seconds",
    "scrub",
]

#: Bytes of request body we buffer before handing them to the socket; SMS and webhook bodies
#: are far smaller, so a request normally leaves in one ``write`` (one TCP segment).
_WRITE_CHUNK: Final = 64 * 1024
#: Unread response bytes we accept before pausing the socket (back-pressure on big replies).
_READ_HIGH_WATER: Final = 256 * 1024
#: Longest status line + headers we accept from a server.
_MAX_HEAD: Final = 64 * 1024
#: How long :meth:`_Pool.aclose` waits for sockets to report closed before returning.
_CLOSE_GRACE: Final = 1.0

_Origin = tuple[bytes, bytes, int]  # scheme, host, port

_ssl_context: ssl.SSLContext | None = None


def _shared_ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for the whole process.

    Loading the CA bundle costs 10-25 ms; httpx does it for every transport it builds, which
    adds up when each channel instance has its own client. The context is never mutated after
    creation, so sharing it is safe.
    """
    global _ssl_context
    if _ssl_context is None:
        ctx = httpx.create_ssl_context()
        ctx.set_alpn_protocols(["http/1.1"])
        _ssl_context = ctx
    return _ssl_context


def make_client(
    *,
    timeout: float = 10.0,
    max_connections: int = 100,
    proxy: str | None = None,
) -> GatewayClient:
    """An AsyncClient for one channel instance.

    ``timeout`` bounds each read, write and pool wait; connecting gets at most 5 s so that a
    dead gateway fails fast as a (retryable) connect error rather than a (doubtful) read
    timeout. ``max_connections`` caps open sockets to the gateway, which is also the channel's
    concurrency. Keep-alive connections are kept up to the same number: with this pool an idle
    socket costs nothing per request, while closing warm sockets only to reopen them costs a
    TCP (and TLS) handshake per request.

    Redirects are not followed (httpx's default): a gateway that redirects a POST is
    misconfigured, and following it would send the notice somewhere the config does not name.
    Cookies are not kept (see :class:`GatewayClient`).
    """
    if max_connections < 1:
        raise ValueError("max_connections must be at least 1")
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=5.0,
    )
    transport: httpx.AsyncHTTPTransport
    if proxy is None:
        transport = H11Transport(limits=limits)
    else:
        transport = httpx.AsyncHTTPTransport(
            verify=_shared_ssl_context(), limits=limits, proxy=proxy, trust_env=False
        )
    return GatewayClient(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        transport=transport,
        trust_env=False,
    )


class _NoCookies(httpx.Cookies):
    """A jar that never takes a cookie from a response."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class GatewayClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that keeps no cookies between requests.

    Gateways are stateless, signed APIs; a cookie a load balancer sets on one reply would
    otherwise add a ``Cookie`` header to every later request, so the bytes sent for a notice
    would depend on unrelated earlier traffic - the opposite of what the proof needs. Not
    parsing ``Set-Cookie`` also saves about 10 % of the client's CPU per request. Cookies
    passed explicitly to one request still go out.
    """

    @property
    def cookies(self) -> httpx.Cookies:
        jar: httpx.Cookies | None = self.__dict__.get("_gateway_jar")
        if jar is None:
            jar = self.__dict__["_gateway_jar"] = _NoCookies()
        return jar

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        raise TypeError("a gateway client keeps no cookies; pass cookies= to a request instead")

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        """Send a built request and read its reply, without the layers a gateway call does not
        use: the auth flow, the redirect loop, event hooks and the async generators stacked
        over the body (together about a fifth of the client's CPU per request, py-spy).

        What it keeps: the request goes through ``self._transport.handle_async_request``, the
        method pytest-httpx replaces, so mocked tests take this same path; the reply is read
        whole, as ``send`` without ``stream`` does. Anything unusual - streaming, auth, redirects
        to follow, hooks, mounted transports, a compressed reply (decoded by httpx) - goes the
        standard way. Relies on two httpx internals (``_transport``, ``Response._content``);
        ``tests/test_http_client.py`` fails loudly if an httpx upgrade moves them.
        """
        plain = (
            not stream
            and auth is httpx.USE_CLIENT_DEFAULT
            and self.auth is None
            and not (
                follow_redirects is True
                or (follow_redirects is httpx.USE_CLIENT_DEFAULT and self.follow_redirects)
            )
            and not self.event_hooks["request"]
            and not self.event_hooks["response"]
            and not self._mounts
        )
        if not plain:
            return await super().send(
                request, stream=stream, auth=auth, follow_redirects=follow_redirects
            )
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        started = time.perf_counter()
        response = await self._transport.handle_async_request(request)
        response.request = request
        try:
            if "content-encoding" in response.headers or not isinstance(
                response.stream, httpx.AsyncByteStream
            ):
                await response.aread()
            elif not hasattr(response, "_content"):
                response._content = b"".join([part async for part in response.stream])
                response.is_stream_consumed = True
        finally:
            body = response.stream
            if not response.is_closed and isinstance(body, httpx.AsyncByteStream):
                response.is_closed = True  # (aread closes it itself)
                await body.aclose()
        response.elapsed = timedelta(seconds=time.perf_counter() - started)
        return response


class H11Transport(httpx.AsyncHTTPTransport):
    """httpx's transport with a connection pool that stays fast at high concurrency.

    Subclassing (rather than writing a new ``AsyncBaseTransport``) is what keeps pytest-httpx
    working: it intercepts ``AsyncHTTPTransport.handle_async_request``, which this class
    inherits unchanged; only ``self._pool``, the httpcore-shaped object that method delegates
    to, is ours. The inherited method also maps the httpcore exceptions we raise to httpx's.
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits | None = None,
        verify: ssl.SSLContext | None = None,
        local_address: str | None = None,
    ) -> None:
        ctx = verify if verify is not None else _shared_ssl_context()
        if limits is None:
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        super().__init__(verify=ctx, limits=limits, trust_env=False)
        self._pool = _Pool(  # type: ignore[assignment]  # httpcore-shaped, see module docstring
            ssl_context=ctx,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            local_address=local_address,
        )


class _Pool:
    """Connections to any number of origins, at most ``max_connections`` open at once.

    Implements the part of httpcore's ``AsyncConnectionPool`` interface that httpx calls:
    ``handle_async_request``, ``aclose`` and the async context manager.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        max_connections: int | None,
        max_keepalive_connections: int | None,
        keepalive_expiry: float | None,
        local_address: str | None = None,
    ) -> None:
        self._ssl_context = ssl_context
        self._max = max_connections if max_connections is not None else 1 << 30
        self._max_idle = (
            max_keepalive_connections if max_keepalive_connections is not None else self._max
        )
        self._expiry = keepalive_expiry
        self._local_addr = (local_address, 0) if local_address else None
        self._idle: dict[_Origin, list[_Connection]] = {}  # oldest first, reuse from the end
        self._idle_count = 0
        self._open = 0  # connecting + busy + idle; what max_connections bounds
        self._all: set[_Connection] = set()
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._closed = False

    def is_closed(self) -> bool:
        # A method, not the attribute, where an await may have changed it under mypy's nose.
        return self._closed

    async def __aenter__(self) -> _Pool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        url = request.url
        if url.scheme not in (b"http", b"https"):
            raise httpcore.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}")
        port = url.port or (443 if url.scheme == b"https" else 80)
        origin: _Origin = (url.scheme, url.host, port)
        timeouts: Mapping[str, float | None] = request.extensions.get("timeout", {})
        sni = request.extensions.get("sni_hostname")
        conn = await self._acquire(origin, timeouts.get("pool"), timeouts.get("connect"), sni)
        try:
            head = await conn.send_request(request, timeouts.get("write"), timeouts.get("read"))
        except BaseException:
            self._release(conn, reusable=False, abort=True)
            raise
        return httpcore.Response(
            status=head.status,
            headers=head.headers,
            content=_ResponseBody(self, conn, timeouts.get("read")),
            extensions={"http_version": b"HTTP/" + head.http_version, "reason_phrase": head.reason},
        )

    async def _acquire(
        self,
        origin: _Origin,
        pool_timeout: float | None,
        connect_timeout: float | None,
        sni: str | None,
    ) -> _Connection:
        loop = asyncio.get_running_loop()
        deadline = None if pool_timeout is None else loop.time() + pool_timeout
        while True:
            if self._closed:
                raise httpcore.ConnectError("the connection pool is closed")
            stack = self._idle.get(origin)
            while stack:
                conn = stack.pop()
                self._idle_count -= 1
                # A socket belongs to the loop that opened it; a client reused under a new
                # asyncio.run() must not write through the old loop.
                if conn.loop is loop and conn.reusable(loop.time(), self._expiry):
                    conn.busy = True
                    return conn
                self._discard(conn, abort=False)
            if self._open < self._max:
                self._open += 1
                try:
                    conn = await self._connect(origin, connect_timeout, sni)
                except BaseException:
                    self._open -= 1
                    self._wake_one()
                    raise
                if self.is_closed():  # aclose() ran while we were connecting
                    conn.close(abort=True)
                    raise httpcore.ConnectError("the connection pool is closed")
                self._all.add(conn)
                conn.busy = True
                return conn
            if self._idle_count:
                self._discard(self._oldest_idle(), abort=False)
                continue
            await self._wait_for_slot(loop, deadline)

    async def _wait_for_slot(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(fut)
        timer = None
        if deadline is not None:
            timer = loop.call_at(deadline, _resolve, fut, False)
        try:
            woken = await fut
        except BaseException:
            # Cancelled after being woken: hand the wake-up on so no slot is lost.
            if fut.done() and not fut.cancelled() and fut.result():
                self._wake_one()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if not woken:
            raise httpcore.PoolTimeout("no connection became free within the pool timeout")

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(True)
                return

    def _oldest_idle(self) -> _Connection:
        for origin, stack in self._idle.items():
            if stack:
                self._idle_count -= 1
                conn = stack.pop(0)
                if not stack:
                    del self._idle[origin]
                return conn
        raise AssertionError("idle count out of step")  # pragma: no cover

    async def _connect(
        self, origin: _Origin, connect_timeout: float | None, sni: str | None
    ) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        conn = _Connection(self, origin, loop)
        tls = scheme == b"https"
        hostname = host.decode("ascii")
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    hostname,
                    port,
                    ssl=self._ssl_context if tls else None,
                    server_hostname=(sni or hostname) if tls else None,
                    local_addr=self._local_addr,
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"connecting to {hostname}:{port} timed out") from exc
        except OSError as exc:  # includes ssl.SSLError and DNS failures (socket.gaierror)
            raise httpcore.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        return conn

    def _release(self, conn: _Connection, *, reusable: bool, abort: bool = False) -> None:
        """Take back a connection after a response: keep it warm or close it.

        ``abort`` when the exchange broke off (an error, a body left unread): the socket is
        dropped at once instead of flushing buffered bytes to a server that may never read.
        """
        conn.busy = False
        if self._closed or not reusable or conn.lost:
            self._discard(conn, abort=abort)
            return
        loop_time = conn.loop.time()
        conn.idle_since = loop_time
        stack = self._idle.setdefault(conn.origin, [])
        stack.append(conn)
        self._idle_count += 1
        # Expired connections at the old end of this stack go now, not at the next checkout.
        while stack and not stack[0].reusable(loop_time, self._expiry):
            self._idle_count -= 1
            self._discard(stack.pop(0), abort=False)
        if self._idle_count > self._max_idle:
            self._discard(self._oldest_idle(), abort=False)
        self._wake_one()

    def _discard(self, conn: _Connection, *, abort: bool) -> None:
        """Close a connection that is not in an idle stack and give its slot back."""
        if conn in self._all:
            self._all.discard(conn)
            self._open -= 1
            conn.close(abort=abort)
            self._wake_one()

    def forget_idle(self, conn: _Connection) -> None:
        """The server closed a connection while it sat idle: drop it from its stack."""
        stack = self._idle.get(conn.origin)
        if stack and conn in stack:
            stack.remove(conn)
            self._idle_count -= 1
            if not stack:
                del self._idle[conn.origin]
        self._discard(conn, abort=True)

    async def aclose(self) -> None:
        self._closed = True
        loop = asyncio.get_running_loop()
        waiting = [c.closed for c in self._all if c.loop is loop]
        for conn in list(self._all):
            conn.close(abort=conn.busy)
        self._all.clear()
        self._idle.clear()
        self._idle_count = 0
        self._open = 0
        while self._waiters:
            _resolve(self._waiters.popleft(), True)  # they wake, see _closed and raise
        if waiting:
            await asyncio.wait(waiting, timeout=_CLOSE_GRACE)


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def _timer(
    loop: asyncio.AbstractEventLoop, seconds: float | None, fut: asyncio.Future[bool]
) -> asyncio.TimerHandle | None:
    """Resolve ``fut`` with False after ``seconds``: a timeout without a task or cancel scope."""
    return None if seconds is None else loop.call_later(seconds, _resolve, fut, False)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: :mod:`channels.http11` frames, the event loop does the I/O.

    Reads wait on a future that ``data_received`` resolves, with one ``call_later`` timer as
    the read timeout - no task, no cancel scope per read. A connection carries one request at
    a time; the pool never hands a busy connection out.
    """

    def __init__(self, pool: _Pool, origin: _Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = loop
        self.reader = ResponseReader(max_head=_MAX_HEAD)
        self.close_requested = False  # the current request carries "Connection: close"
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.lost = False
        self.idle_since = 0.0
        self.closed: asyncio.Future[None] = loop.create_future()
        self._reader: asyncio.Future[bool] | None = None
        self._drainer: asyncio.Future[bool] | None = None
        self._write_paused = False
        self._read_paused = False

    # -- asyncio.Protocol callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            # Bytes nobody asked for on an idle connection: the stream is out of step.
            self.lost = True
            self.pool.forget_idle(self)
            return
        self.reader.feed(data)
        if self._reader is not None:
            _resolve(self._reader, True)
        elif self.reader.buffered > _READ_HIGH_WATER:
            assert self.transport is not None
            self.transport.pause_reading()
            self._read_paused = True

    def eof_received(self) -> bool | None:
        self.lost = True  # half-closed by the server: never reuse
        self.reader.feed_eof()
        if self._reader is not None:
            _resolve(self._reader, True)
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reader.feed_eof()
        if self._reader is not None:
            _resolve(self._reader, True)
        if self._drainer is not None:
            _resolve(self._drainer, True)
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.busy:
            self.pool.forget_idle(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drainer is not None:
            _resolve(self._drainer, True)

    # -- used by the pool -----------------------------------------------------------------

    def reusable(self, now: float, expiry: float | None) -> bool:
        if self.lost or self.transport is None or self.transport.is_closing():
            return False
        return expiry is None or now - self.idle_since < expiry

    def close(self, *, abort: bool) -> None:
        self.lost = True
        if self.transport is None or self.loop.is_closed():
            # Never connected, or its loop is gone (the socket went with it).
            if not self.closed.done() and not self.loop.is_closed():
                self.closed.set_result(None)
            return
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    async def send_request(
        self, request: httpcore.Request, write_timeout: float | None, read_timeout: float | None
    ) -> Head:
        """Write the whole request, then read up to the end of the response head."""
        try:
            head, framing = encode_request(request.method, request.url.target, request.headers)
        except ProtocolError as exc:
            raise httpcore.LocalProtocolError(str(exc)) from exc
        self.close_requested = framing.close
        self.reader.start(request.method)
        parts = [head]
        size = len(head)
        stream = request.stream
        if not isinstance(stream, AsyncIterable):
            raise httpcore.LocalProtocolError("an async client needs an async request body")
        try:
            async for chunk in stream:
                data = framing.data(chunk)
                if data:
                    parts.append(data)
                    size += len(data)
                if size >= _WRITE_CHUNK:
                    await self._write(b"".join(parts), write_timeout)
                    parts, size = [], 0
            parts.append(framing.end())
        except ProtocolError as exc:
            raise httpcore.LocalProtocolError(str(exc)) from exc
        await self._write(b"".join(parts), write_timeout)
        event = await self.next_event(read_timeout)
        if not isinstance(event, Head):  # pragma: no cover - the reader yields a head first
            raise httpcore.RemoteProtocolError(f"unexpected {event!r} before the response")
        return event

    async def _write(self, data: bytes, write_timeout: float | None) -> None:
        if self.lost or self.transport is None or self.transport.is_closing():
            raise httpcore.WriteError("connection closed before the request was written")
        self.transport.write(data)
        if self._write_paused:
            fut: asyncio.Future[bool] = self.loop.create_future()
            self._drainer = fut
            timer = _timer(self.loop, write_timeout, fut)
            try:
                drained = await fut
            finally:
                self._drainer = None
                if timer is not None:
                    timer.cancel()
            if not drained:
                raise httpcore.WriteTimeout("timed out writing the request")
            if self.lost:
                raise httpcore.WriteError("connection lost while writing the request")

    async def next_event(self, read_timeout: float | None) -> Head | bytes | object:
        while True:
            try:
                event = self.reader.next_event()
            except ProtocolError as exc:
                raise httpcore.RemoteProtocolError(str(exc)) from exc
            if event is not NEED_DATA:
                return event
            fut: asyncio.Future[bool] = self.loop.create_future()
            self._reader = fut
            if self._read_paused and self.transport is not None:
                self._read_paused = False
                self.transport.resume_reading()
            timer = _timer(self.loop, read_timeout, fut)
            try:
                readable = await fut
            finally:
                self._reader = None
                if timer is not None:
                    timer.cancel()
            if not readable:
                raise httpcore.ReadTimeout("timed out waiting for the server")


class _ResponseBody:
    """The body of one response; gives the connection back to the pool once fully read."""

    def __init__(self, pool: _Pool, conn: _Connection, read_timeout: float | None) -> None:
        self._pool = pool
        self._conn = conn
        self._timeout = read_timeout
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        try:
            while True:
                event = await conn.next_event(self._timeout)
                if event is END:
                    break
                if not isinstance(event, bytes):  # pragma: no cover - one head per response
                    raise httpcore.RemoteProtocolError(f"unexpected {event!r} in response body")
                yield event
        except BaseException:
            self._finish(reusable=False, abort=True)
            raise
        # Bytes after the end of the response would be read as the reply to the next request.
        reader = conn.reader
        self._finish(
            reusable=reader.keep_alive and not conn.close_requested and not reader.trailing
        )

    def _finish(self, *, reusable: bool, abort: bool = False) -> None:
        if not self._done:
            self._done = True
            self._pool._release(self._conn, reusable=reusable, abort=abort)

    async def aclose(self) -> None:
        # Closed before the end: the rest of the body is still coming, drop the socket.
        self._finish(reusable=False, abort=True)


# -- shared by every HTTP channel -------------------------------------------------------------


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse a ``Retry-After`` header (RFC 9110 §10.2.3): delay-seconds or an HTTP-date.

    Returns ``None`` when absent or unreadable, so the caller falls back to its back-off;
    never negative.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value in ``text`` with ``***`` (for exception text and logs)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def failure_from_transport_error(
    exc: httpx.TransportError,
    *,
    what: str,
    transcript: Mapping[str, Any],
    secrets: Iterable[str] = (),
) -> ChannelError:
    """Classify an httpx transport error by whether the request can have reached the server.

    Nothing was sent when the connection was never made or no pooled connection became free
    (``ConnectError``, ``ConnectTimeout``, ``PoolTimeout``, ``ProxyError``): retrying is safe,
    :class:`Transient`. An invalid request (``LocalProtocolError``, ``UnsupportedProtocol``)
    fails the same way every time: :class:`Permanent`, our configuration's fault. Anything
    later - a write that failed half way, a read timeout, a dropped connection - means the
    gateway may have acted on the request: :class:`Unknown`, so the engine re-sends the same
    bytes and the duplicate is attributable.
    """
    name = type(exc).__name__
    detail = scrub(f"{what}: {name}: {exc}".rstrip(": "), secrets)
    record = {**transcript, "error": name}
    if isinstance(
        exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout | httpx.ProxyError
    ):
        return Transient(detail, code=name, transcript=record)
    if isinstance(exc, httpx.LocalProtocolError | httpx.UnsupportedProtocol):
        return Permanent(detail, code=name, transcript=record, bad_recipient=False)
    return Unknown(detail, code=name, transcript=record)


def fit_text(body: str, reference: str, max_length: int) -> str:
    """Fit free SMS text into ``max_length`` characters, never losing the case reference.

    The reference is what a recipient quotes back and what ties a reply to the case, so it
    survives any cut: a body that fits and contains it goes out unchanged; one that lacks it
    gets it appended; one that is too long is cut at the end, marked with ``…``, and the
    reference is appended. Deterministic, so ``prepare`` stays pure.
    """
    if max_length < len(reference) + 2:
        raise ValueError(f"max_length {max_length} cannot hold the reference {reference!r}")
    text = body.strip()
    if reference in text and len(text) <= max_length:
        return text
    tail = f" {reference}" if reference not in text else ""
    if len(text) + len(tail) <= max_length:
        return text + tail
    tail = f"… {reference}"
    return text[: max_length - len(tail)].rstrip() + tail


#: Request headers whose values never enter a transcript, whatever the channel.
_ALWAYS_SECRET: Final = frozenset({"authorization", "proxy-authorization", "cookie"})


def describe_exchange(
    request: httpx.Request,
    response: httpx.Response | None,
    *,
    started: float,
    url: str | None = None,
    secret_headers: Iterable[str] = (),
) -> dict[str, Any]:
    """A JSON-serialisable account of one HTTP exchange, for :attr:`Receipt.transcript`.

    It records what a third party would want to check - request line, headers, body size,
    status, the server's headers (its ``Date`` is the gateway's own clock) -
    and never a credential: ``Authorization``, ``Cookie`` and every header named in
    ``secret_headers`` appear with the value ``***``, so the record shows that a credential
    was sent without showing it. ``url`` overrides the request URL when the URL itself holds
    a secret (a query-string API key). ``started`` is a ``time.monotonic()`` reading.
    """
    hidden = _ALWAYS_SECRET | {h.lower() for h in secret_headers}
    record: dict[str, Any] = {
        "request": {
            "method": request.method,
            "url": url if url is not None else str(request.url),
            "headers": [
                [k, "***" if k.lower() in hidden else v] for k, v in request.headers.items()
            ],
            "body_bytes": len(request.content),
        },
        "elapsed_ms": round((time.monotonic() - started) * 1000),
    }
    if response is not None:
        record["response"] = {
            "status": response.status_code,
            "reason": response.reason_phrase,
            "http_version": response.http_version,
            "headers": [[k, v] for k, v in response.headers.multi_items()],
            "body_bytes": len(response.content),
        }
    return record
