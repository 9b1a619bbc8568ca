"""The engine's polite HTTP fetcher: the only way sources reach the web.

Sources never open connections themselves (see :mod:`sources.base`); they call
:meth:`PoliteFetcher.get`, which is where every rule about *how* we read other people's
servers lives, once:

- **Politeness.** Government and company sites are small and some (pbc.gov.cn) challenge
  scripts that hammer them. Requests to one host are serialised and spaced by a minimum
  interval; different hosts proceed in parallel.
- **Bounded effort.** Connect/read timeouts, a whole-try deadline, a few retries with jittered
  exponential back-off on transient failures only (honouring ``Retry-After``), and a size cap
  on the (decompressed) body, so one bad server can neither hang a run nor fill the disk.
- **Evidence.** Every page a finding is read from must be reproducible byte for byte: each
  :class:`~sources.base.Fetched` carries the exact body and its SHA-256, and is appended to
  :attr:`PoliteFetcher.documents` for the engine to store as a blob. This module never touches
  the database.
- **Chinese pages decoded right.** Charset from the header, else ``<meta>``, else sniffed
  (UTF-8, then GB18030); GB2312/GBK declarations are decoded as GB18030, their superset,
  because real pages declared "gb2312" routinely contain GBK-only characters.
- **Redirects stay home.** Redirects are followed by hand and only to allowed hosts, so a
  compromised or parked domain cannot walk us (and our evidence) somewhere else.
- **Conditional requests.** ETag / Last-Modified are remembered per URL in a
  :class:`ValidatorCache`; a 304 returns the cached bytes, flagged ``not_modified``.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import math
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from outreach import __version__
from sources.base import Fetched, FetchError

__all__ = [
    "DEFAULT_USER_AGENT",
    "CachedPage",
    "MemoryValidatorCache",
    "PoliteFetcher",
    "RetryPolicy",
    "ValidatorCache",
    "decode_body",
    "parse_retry_after",
]

#: Says who we are and why we are reading. Deployments should append a contact URL or
#: address (``PoliteFetcher(user_agent=...)``) so a site operator can reach a human.
DEFAULT_USER_AGENT = f"outreach/{__version__} (contact discovery for merchants; polite, 1 req/s)"

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "content-encoding"})

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Progress = Callable[[str, int | None], None]


# --------------------------------------------------------------------------------------------
# Conditional-request cache


@dataclass(frozen=True, slots=True)
class CachedPage:
    """What we keep of a 200 response so a later 304 can stand in for it.

    Plain values only, so the engine can persist it (headers as JSON, body as a blob keyed
    by ``sha256``).
    """

    url: str
    etag: str | None
    last_modified: str | None
    headers: Mapping[str, str]
    body: bytes
    sha256: str


class ValidatorCache(Protocol):
    """Per-URL validators and body. In memory here; the engine may back it with the database."""

    def get(self, url: str) -> CachedPage | None: ...

    def put(self, page: CachedPage) -> None: ...


@dataclass
class MemoryValidatorCache:
    """A dict keyed by URL: enough for one run, and the default."""

    pages: dict[str, CachedPage] = field(default_factory=dict)

    def get(self, url: str) -> CachedPage | None:
        return self.pages.get(url)

    def put(self, page: CachedPage) -> None:
        self.pages[page.url] = page


# --------------------------------------------------------------------------------------------
# Retry policy (pure; tenacity consumes it)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which failures are worth another try, and how long to wait before it.

    Kept apart from the I/O so it can be read and tested on its own. Only transient failures
    are retried (a GET is idempotent, so re-sending is safe); a 404 or a foreign redirect will
    not change by asking again.
    """

    tries: int = 3
    backoff_base: float = 1.0  # first back-off, doubled each try
    backoff_max: float = 30.0
    jitter: float = 1.0  # uniform 0..jitter seconds added, so parallel runs do not align
    retry_after_max: float = 60.0  # a server asking for longer than this gets this
    retry_statuses: frozenset[int] = frozenset({429, 502, 503, 504})

    def is_retryable_status(self, status: int) -> bool:
        return status in self.retry_statuses

    def calculate_delay(
        self, attempt: int, retry_after: float | None, rand: Callable[[], float] = random.random
    ) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based).

        A server's ``Retry-After`` wins (capped) because it knows its own load better than our
        back-off does; otherwise ``base * 2**(attempt-1)`` capped, plus jitter.
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_max)
        backoff = min(self.backoff_base * 2.0 ** (attempt - 1), self.backoff_max)
        return backoff + self.jitter * rand()


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (RFC 9110 §10.2.3), or None if unusable.

    Accepts delta-seconds and HTTP-dates; a date in the past means "now" (0).
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


class _Transient(Exception):
    """A failed try worth retrying; carries the error to raise if the tries run out."""

    def __init__(self, error: FetchError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


# --------------------------------------------------------------------------------------------
# Decoding (pure)

# WHATWG "gbk" labels, all decoded as GB18030 (a superset: a page declared gb2312 often
# carries GBK-only characters such as 镕 or 喆, which a strict gb2312 decoder rejects).
_GB_LABELS = frozenset(
    {
        "chinese",
        "csgb2312",
        "csiso58gb231280",
        "gb2312",
        "gb_2312",
        "gb_2312-80",
        "gbk",
        "iso-ir-58",
        "x-gbk",
        "cp936",
        "ms936",
        "windows-936",
        "euc-cn",
        "x-euc-cn",
        "gb18030",
    }
)
_CT_CHARSET = re.compile(r"""charset\s*=\s*["']?\s*([^\s"';,]+)""", re.IGNORECASE)
_META_CHARSET = re.compile(
    rb"""<meta\b[^>]*?\bcharset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.IGNORECASE
)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml\b[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9_.:\-]+)""")
_PRESCAN_BYTES = 4096  # HTML says 1024; some Chinese CMS pages put a long comment first
_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def _codec(label: str | None, *, from_markup: bool = False) -> str | None:
    """Python codec name for a declared charset label, or None if we do not know it."""
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    if label in _GB_LABELS:
        return "gb18030"
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    # A UTF-16 declaration inside ASCII-readable markup is a lie (HTML §13.2.3.2): it is UTF-8.
    if from_markup and name.startswith("utf-16"):
        return "utf-8"
    return name


def _header_charset(content_type: str | None) -> str | None:
    if not content_type:
        return None
    match = _CT_CHARSET.search(content_type)
    return _codec(match.group(1)) if match else None


def _markup_charset(body: bytes) -> str | None:
    head = body[:_PRESCAN_BYTES]
    match = _XML_ENCODING.match(head) or _META_CHARSET.search(head)
    return _codec(match.group(1).decode("ascii"), from_markup=True) if match else None


def decode_body(body: bytes, content_type: str | None) -> tuple[str, str]:
    """Decode a page; return ``(text, codec_name)``.

    Order: a byte-order mark (it cannot be there by accident, and browsers let it override
    everything), the Content-Type charset, ``<meta>`` / XML declaration, then sniffing:
    strict UTF-8, then strict GB18030. A declaration that does not decode strictly is treated
    as wrong and the next candidate is tried: Chinese sites do mislabel pages. If nothing
    decodes cleanly, the best guess is used with replacement characters.
    """
    for bom, name in _BOMS:
        if body.startswith(bom):
            return body[len(bom) :].decode(name, errors="replace"), name
    declared = [c for c in (_header_charset(content_type), _markup_charset(body)) if c]
    candidates = [*dict.fromkeys([*declared, "utf-8", "gb18030"])]
    for name in candidates:
        try:
            return body.decode(name), name
        except UnicodeDecodeError:
            continue
    fallback = declared[0] if declared else "gb18030"
    return body.decode(fallback, errors="replace"), fallback


# --------------------------------------------------------------------------------------------
# Per-host politeness


@dataclass(slots=True)
class _HostGate:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    next_at: float = -math.inf


@dataclass(frozen=True, slots=True)
class _Reply:
    """One HTTP exchange, body read (or not, for redirects)."""

    url: httpx.URL
    status: int
    headers: dict[str, str]
    body: bytes


def _host(url: httpx.URL) -> str:
    return url.host.lower().rstrip(".")


# --------------------------------------------------------------------------------------------
# The fetcher


class PoliteFetcher:
    """Implements :class:`sources.base.Fetcher` over an injected :class:`httpx.AsyncClient`.

    The client is injected (not created here) so the engine controls pooling, proxies and
    lifetime, and so tests intercept it with pytest-httpx. ``clock``/``sleep``/``now`` are
    injectable so politeness and back-off can be tested without waiting.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        user_agent: str = DEFAULT_USER_AGENT,
        min_interval: float = 1.0,
        host_intervals: Mapping[str, float] | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 20.0,
        try_deadline: float = 60.0,
        max_bytes: int = 5 * 1024 * 1024,
        max_redirects: int = 5,
        retry: RetryPolicy | None = None,
        cache: ValidatorCache | None = None,
        progress: Progress | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        now: Callable[[], datetime] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._client = client
        self.user_agent = user_agent
        self._min_interval = min_interval
        self._host_intervals = {h.lower(): s for h, s in (host_intervals or {}).items()}
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._try_deadline = try_deadline
        self._max_bytes = max_bytes
        self._max_redirects = max_redirects
        self._retry = retry or RetryPolicy()
        self.cache: ValidatorCache = cache if cache is not None else MemoryValidatorCache()
        self._progress = progress
        self._clock = clock
        self._sleep = sleep
        self._now = now or (lambda: datetime.now(UTC))
        self._rand = rand
        self._gates: dict[str, _HostGate] = {}
        #: Every page returned, in order, for the engine to store as evidence blobs.
        self.documents: list[Fetched] = []

    # -- public ---------------------------------------------------------------------------

    async def get(self, url: str, *, allowed_hosts: frozenset[str] | None = None) -> Fetched:
        """GET ``url``; follow redirects only within ``allowed_hosts`` (default: its host).

        Raises :class:`~sources.base.FetchError` with kind ``timeout``, ``http_status``,
        ``too_large``, ``foreign_redirect`` or ``network``.
        """
        current = self._parse_url(url)
        allowed = (
            frozenset(h.lower().rstrip(".") for h in allowed_hosts)
            if allowed_hosts is not None
            else frozenset({_host(current)})
        )
        last_status: int | None = None
        for _hop in range(self._max_redirects + 1):
            cached = self.cache.get(str(current))
            reply = await self._get_with_retries(current, cached)
            last_status = reply.status
            if reply.status in _REDIRECT_STATUSES:
                current = self._redirect_target(url, reply, allowed)
                continue
            if reply.status == 304 and cached is not None:
                return self._record(self._from_cache(reply, cached))
            if not 200 <= reply.status < 300:
                raise FetchError(
                    "http_status",
                    f"HTTP {reply.status} for {reply.url}",
                    url=str(reply.url),
                    status=reply.status,
                )
            fetched = self._to_fetched(reply)
            self._remember(fetched)
            return self._record(fetched)
        raise FetchError(
            "http_status",
            f"more than {self._max_redirects} redirects from {url}",
            url=str(current),
            status=last_status,
        )

    # -- one page -------------------------------------------------------------------------

    @staticmethod
    def _parse_url(url: str) -> httpx.URL:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise FetchError("network", f"invalid URL: {exc}", url=url) from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise FetchError("network", f"not an http(s) URL: {url}", url=url)
        return parsed

    def _redirect_target(self, origin: str, reply: _Reply, allowed: frozenset[str]) -> httpx.URL:
        location = reply.headers.get("location")
        if not location:
            raise FetchError(
                "http_status",
                f"HTTP {reply.status} without Location at {reply.url}",
                url=str(reply.url),
                status=reply.status,
            )
        try:
            target = reply.url.join(location)
        except httpx.InvalidURL as exc:
            raise FetchError(
                "http_status",
                f"bad Location {location!r} at {reply.url}",
                url=str(reply.url),
                status=reply.status,
            ) from exc
        if target.scheme not in ("http", "https") or _host(target) not in allowed:
            raise FetchError(
                "foreign_redirect",
                f"{reply.url} redirects to {target}, outside {sorted(allowed)} (from {origin})",
                url=str(target),
                status=reply.status,
            )
        return target

    def _to_fetched(self, reply: _Reply) -> Fetched:
        text, encoding = decode_body(reply.body, reply.headers.get("content-type"))
        return Fetched(
            url=str(reply.url),
            status=reply.status,
            headers=reply.headers,
            body=reply.body,
            text=text,
            encoding=encoding,
            fetched_at=self._now(),
            sha256=hashlib.sha256(reply.body).hexdigest(),
        )

    def _from_cache(self, reply: _Reply, cached: CachedPage) -> Fetched:
        """A 304 stands for the cached 200: its headers update the stored ones (RFC 9111 §4.3.4)."""
        # The 304's framing headers describe its own empty body, not the one we return.
        fresh = {k: v for k, v in reply.headers.items() if k not in _FRAMING_HEADERS}
        headers = {**cached.headers, **fresh}
        text, encoding = decode_body(cached.body, headers.get("content-type"))
        refreshed = CachedPage(
            url=cached.url,
            etag=reply.headers.get("etag", cached.etag),
            last_modified=reply.headers.get("last-modified", cached.last_modified),
            headers=headers,
            body=cached.body,
            sha256=cached.sha256,
        )
        self.cache.put(refreshed)
        return Fetched(
            url=str(reply.url),
            status=304,
            headers=headers,
            body=cached.body,
            text=text,
            encoding=encoding,
            fetched_at=self._now(),
            sha256=cached.sha256,
            not_modified=True,
        )

    def _remember(self, fetched: Fetched) -> None:
        etag = fetched.headers.get("etag")
        last_modified = fetched.headers.get("last-modified")
        if fetched.status == 200 and (etag or last_modified):
            self.cache.put(
                CachedPage(
                    url=fetched.url,
                    etag=etag,
                    last_modified=last_modified,
                    headers=dict(fetched.headers),
                    body=fetched.body,
                    sha256=fetched.sha256,
                )
            )

    def _record(self, fetched: Fetched) -> Fetched:
        self.documents.append(fetched)
        return fetched

    # -- retries --------------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = exc.retry_after if isinstance(exc, _Transient) else None
        return self._retry.calculate_delay(state.attempt_number, retry_after, self._rand)

    async def _get_with_retries(self, url: httpx.URL, cached: CachedPage | None) -> _Reply:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            wait=self._wait,
            stop=stop_after_attempt(max(self._retry.tries, 1)),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._exchange(url, cached)
        except _Transient as exc:
            raise exc.error from exc.__cause__
        raise AssertionError("tenacity stopped without an outcome")  # pragma: no cover

    # -- one try --------------------------------------------------------------------------

    def _interval(self, host: str) -> float:
        return self._host_intervals.get(host, self._min_interval)

    @asynccontextmanager
    async def _turn(self, host: str) -> AsyncIterator[_HostGate]:
        """Wait for this host's turn: one request at a time, ``interval`` after the last ended.

        The lock is FIFO, so concurrent callers queue in arrival order; other hosts have
        their own gate and are not held up. Measured end-to-start so a slow server also gets
        its breathing space.
        """
        gate = self._gates.setdefault(host, _HostGate())
        async with gate.lock:
            wait = gate.next_at - self._clock()
            if wait > 0:
                await self._sleep(wait)
            try:
                yield gate
            finally:
                gate.next_at = max(gate.next_at, self._clock() + self._interval(host))

    def _headers(self, cached: CachedPage | None) -> dict[str, str]:
        # Canonical capitalisation: HTTP says names are case-insensitive, but old servers and
        # WAFs in front of government sites do not always agree.
        headers = {
            "User-Agent": self.user_agent,
            "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5",
        }
        if cached is not None:
            if cached.etag:
                headers["If-None-Match"] = cached.etag
            if cached.last_modified:
                headers["If-Modified-Since"] = cached.last_modified
        return headers

    async def _exchange(self, url: httpx.URL, cached: CachedPage | None) -> _Reply:
        """One request to one URL, inside the host's turn. Raises _Transient or FetchError."""
        host = _host(url)
        request = self._client.build_request(
            "GET", url, headers=self._headers(cached), timeout=self._timeout
        )
        seen: int | None = None  # for the progress callback: None means no response at all
        try:
            async with self._turn(host) as gate, asyncio.timeout(self._try_deadline):
                response = await self._client.send(request, stream=True, follow_redirects=False)
                try:
                    seen = status = response.status_code
                    headers = dict(response.headers.items())
                    if self._retry.is_retryable_status(status):
                        raise self._transient_status(url, status, headers, gate)
                    reads_body = 200 <= status < 300
                    body = await self._read_capped(response, url) if reads_body else b""
                finally:
                    await response.aclose()
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise _Transient(
                FetchError("timeout", f"timed out fetching {url}: {exc!r}", url=str(url))
            ) from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _Transient(
                FetchError("network", f"network error fetching {url}: {exc!r}", url=str(url))
            ) from exc
        except httpx.HTTPError as exc:  # protocol, decoding, proxy errors: not transient
            raise FetchError(
                "network", f"HTTP error fetching {url}: {exc!r}", url=str(url)
            ) from exc
        finally:
            if self._progress is not None:
                self._progress(str(url), seen)
        return _Reply(url=url, status=status, headers=headers, body=body)

    def _transient_status(
        self, url: httpx.URL, status: int, headers: Mapping[str, str], gate: _HostGate
    ) -> _Transient:
        """A 429/5xx worth retrying; a Retry-After also holds back every caller of the host."""
        retry_after = parse_retry_after(headers.get("retry-after"), self._now())
        if retry_after is not None:
            hold = min(retry_after, self._retry.retry_after_max)
            gate.next_at = max(gate.next_at, self._clock() + hold)
        error = FetchError("http_status", f"HTTP {status} for {url}", url=str(url), status=status)
        return _Transient(error, retry_after)

    async def _read_capped(self, response: httpx.Response, url: httpx.URL) -> bytes:
        """Stream the (decompressed) body, giving up as soon as it passes the cap."""
        limit = self._max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise FetchError(
                "too_large",
                f"{url} announces {declared} bytes, cap is {limit}",
                url=str(url),
                status=response.status_code,
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise FetchError(
                    "too_large",
                    f"{url} sent more than {limit} bytes",
                    url=str(url),
                    status=response.status_code,
                )
            chunks.append(chunk)
        return b"".join(chunks)
