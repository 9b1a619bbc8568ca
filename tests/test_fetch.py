"""PoliteFetcher against pytest-httpx: decoding, errors, retries, redirects, caps, caching,
politeness and evidence. No network; time is virtual (injected clock and sleep)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock, IteratorStream

from outreach.fetch import (
    DEFAULT_USER_AGENT,
    MemoryValidatorCache,
    PoliteFetcher,
    RetryPolicy,
    decode_body,
    parse_retry_after,
)
from sources.base import Fetcher, FetchError

URL = "https://www.example.cn/about/contact.html"
NOW = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)


class VirtualTime:
    """A clock that only moves when someone sleeps; records every sleep.

    ``sleep`` yields to the loop before advancing, so tasks that are ready run at the old
    time - which is what real time would show (they would not wait for the sleeper).
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        target = self.now + seconds
        for _ in range(5):
            await asyncio.sleep(0)
        self.now = max(self.now, target)


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


@pytest.fixture
def make(client: httpx.AsyncClient, vt: VirtualTime) -> Callable[..., PoliteFetcher]:
    def _make(**kwargs: Any) -> PoliteFetcher:
        kwargs.setdefault("clock", vt.clock)
        kwargs.setdefault("sleep", vt.sleep)
        kwargs.setdefault("now", lambda: NOW)
        kwargs.setdefault("rand", lambda: 0.5)
        return PoliteFetcher(client, **kwargs)

    return _make


# -- decoding ---------------------------------------------------------------------------------


async def test_utf8_page_is_decoded_hashed_and_recorded(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    body = "<html><body>客服热线：95534</body></html>".encode()
    httpx_mock.add_response(
        url=URL, content=body, headers={"Content-Type": "text/html; charset=UTF-8"}
    )
    fetcher = make()

    page = await fetcher.get(URL)

    assert page.status == 200
    assert page.url == URL
    assert page.body == body
    assert page.text == body.decode("utf-8")
    assert page.encoding == "utf-8"
    assert page.sha256 == hashlib.sha256(body).hexdigest()
    assert page.fetched_at == NOW
    assert page.not_modified is False
    assert page.headers["content-type"] == "text/html; charset=UTF-8"
    assert fetcher.documents == [page]


@pytest.mark.parametrize("label", ["GBK", "gb2312", "GB_2312-80", "x-gbk"])
async def test_gbk_declared_in_header_decodes_as_gb18030(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher], label: str
) -> None:
    # 镕 and 喆 are GBK but not GB2312: a page labelled gb2312 must still decode.
    text = "<p>朱镕基 陶喆 拉卡拉支付股份有限公司 客服电话 95016</p>"
    httpx_mock.add_response(
        content=text.encode("gbk"), headers={"Content-Type": f"text/html;charset={label}"}
    )

    page = await make().get(URL)

    assert page.text == text
    assert page.encoding == "gb18030"
    assert page.body == text.encode("gbk")


@pytest.mark.parametrize(
    "meta",
    [
        '<meta http-equiv="Content-Type" content="text/html; charset=gbk" />',
        "<meta charset=gb2312>",
        "<META HTTP-EQUIV='content-type' CONTENT='text/html;charset=GB2312'>",
    ],
)
async def test_gbk_declared_only_in_meta(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher], meta: str
) -> None:
    html = f"<html><head>{meta}<title>联系我们</title></head><body>投诉邮箱 朱镕基</body></html>"
    httpx_mock.add_response(content=html.encode("gbk"), headers={"Content-Type": "text/html"})

    page = await make().get(URL)

    assert page.text == html
    assert page.encoding == "gb18030"


async def test_undeclared_gb18030_bytes_are_sniffed(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    # 𠮷 is a four-byte GB18030 sequence: neither UTF-8 nor GBK would decode this body.
    html = "<html><body>住所（营业场所） 北京市 𠮷 €</body></html>"
    httpx_mock.add_response(content=html.encode("gb18030"), headers={"Content-Type": "text/html"})

    page = await make().get(URL)

    assert page.text == html
    assert page.encoding == "gb18030"


def test_decode_body_precedence_and_mislabels() -> None:
    gbk = "客服".encode("gbk")
    # A header charset that does not decode is a mislabel: fall through to sniffing.
    assert decode_body(gbk, "text/html; charset=utf-8") == ("客服", "gb18030")
    # Header beats meta.
    body = '<meta charset="gbk">客服'.encode()
    assert decode_body(body, "text/html; charset=utf-8") == ('<meta charset="gbk">客服', "utf-8")
    # A BOM beats everything, and is not part of the text.
    assert decode_body(b"\xef\xbb\xbf" + "客服".encode(), "text/html; charset=gbk") == (
        "客服",
        "utf-8",
    )
    # A meta UTF-16 label on ASCII-compatible bytes means UTF-8.
    assert decode_body('<meta charset="utf-16">客服'.encode(), None)[1] == "utf-8"
    # XML declaration.
    xml = '<?xml version="1.0" encoding="GBK"?><a>客服</a>'
    assert decode_body(xml.encode("gbk"), None) == (xml, "gb18030")
    # Unknown label: ignored. Undecodable everywhere: best guess with replacement characters.
    assert decode_body(b"abc", "text/html; charset=nonsense") == ("abc", "utf-8")
    text, name = decode_body(b"\xff\xff\x80", None)
    assert name == "gb18030"
    assert "\ufffd" in text


# -- errors and retries -------------------------------------------------------------------------


async def test_404_raises_http_status_without_retry(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher], vt: VirtualTime
) -> None:
    httpx_mock.add_response(url=URL, status_code=404, text="not here")
    fetcher = make()

    with pytest.raises(FetchError) as info:
        await fetcher.get(URL)

    assert info.value.kind == "http_status"
    assert info.value.status == 404
    assert info.value.url == URL
    assert len(httpx_mock.get_requests()) == 1
    assert vt.sleeps == []
    assert fetcher.documents == []


async def test_timeout_is_retried_with_backoff_then_raised(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher], vt: VirtualTime
) -> None:
    for _ in range(3):
        httpx_mock.add_exception(httpx.ReadTimeout("Unable to read within timeout"))

    with pytest.raises(FetchError) as info:
        await make(retry=RetryPolicy(tries=3)).get(URL)

    assert info.value.kind == "timeout"
    assert info.value.status is None
    assert len(httpx_mock.get_requests()) == 3
    # base * 2**(n-1) + jitter * rand, rand fixed at 0.5; the politeness gap (1 s) is
    # already covered by the back-off, so no extra sleeps.
    assert vt.sleeps == [1.5, 2.5]


async def test_connect_error_is_retried_then_network(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    httpx_mock.add_exception(httpx.ConnectError("refused"))
    httpx_mock.add_exception(httpx.ConnectError("refused"))

    with pytest.raises(FetchError) as info:
        await make(retry=RetryPolicy(tries=2)).get(URL)

    assert info.value.kind == "network"
    assert len(httpx_mock.get_requests()) == 2


async def test_timeout_then_success(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    httpx_mock.add_exception(httpx.ConnectTimeout("slow"))
    httpx_mock.add_response(text="ok")

    page = await make().get(URL)

    assert page.text == "ok"


async def test_503_then_200_honours_retry_after(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher], vt: VirtualTime
) -> None:
    httpx_mock.add_response(url=URL, status_code=503, headers={"Retry-After": "7"})
    httpx_mock.add_response(url=URL, text="back")
    fetcher = make()

    page = await fetcher.get(URL)

    assert page.status == 200
    assert page.text == "back"
    assert vt.sleeps == [7.0]
    assert [d.status for d in fetcher.documents] == [200]


async def test_retry_after_is_capped(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher], vt: VirtualTime
) -> None:
    httpx_mock.add_response(url=URL, status_code=429, headers={"Retry-After": "86400"})
    httpx_mock.add_response(url=URL, text="ok")

    await make(retry=RetryPolicy(retry_after_max=30.0)).get(URL)

    assert vt.sleeps == [30.0]


async def test_retry_after_holds_every_caller_of_that_host(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher], vt: VirtualTime
) -> None:
    other = "https://www.example.cn/other.html"
    starts: list[tuple[str, float]] = []
    replies = [httpx.Response(503, headers={"Retry-After": "10"}), httpx.Response(200)]

    def respond(request: httpx.Request) -> httpx.Response:
        starts.append((str(request.url), vt.now))
        return replies.pop(0) if str(request.url) == URL else httpx.Response(200)

    httpx_mock.add_callback(respond, is_reusable=True)
    fetcher = make(min_interval=1.0)

    await asyncio.gather(fetcher.get(URL), fetcher.get(other))

    # /other queued behind the 503 and waited out its Retry-After, not just the 1 s interval;
    # the retry of the first page then came one interval after it.
    assert starts == [(URL, 0.0), (other, 10.0), (URL, 11.0)]


async def test_persistent_503_becomes_http_status(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    httpx_mock.add_response(status_code=503, is_reusable=True)

    with pytest.raises(FetchError) as info:
        await make(retry=RetryPolicy(tries=3)).get(URL)

    assert (info.value.kind, info.value.status) == ("http_status", 503)
    assert len(httpx_mock.get_requests()) == 3


def test_parse_retry_after() -> None:
    assert parse_retry_after("120", NOW) == 120.0
    assert parse_retry_after("Mon, 05 Jan 2026 09:31:00 GMT", NOW) == 60.0
    assert parse_retry_after("Mon, 05 Jan 2026 09:00:00 GMT", NOW) == 0.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


def test_retry_policy_delays() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=5.0, jitter=1.0, retry_after_max=10.0)
    assert [policy.calculate_delay(n, None, lambda: 0.0) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]
    assert policy.calculate_delay(1, None, lambda: 1.0) == 2.0
    assert policy.calculate_delay(1, 3.0) == 3.0
    assert policy.calculate_delay(1, 99.0) == 10.0
    assert policy.is_retryable_status(504) and not policy.is_retryable_status(500)


# -- redirects --------------------------------------------------------------------------------


async def test_redirect_within_host_is_followed(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    final = "https://www.example.cn/contact/index.html"
    httpx_mock.add_response(url=URL, status_code=301, headers={"Location": "/contact/index.html"})
    httpx_mock.add_response(url=final, text="联系我们")
    fetcher = make()

    page = await fetcher.get(URL)

    assert page.url == final
    assert page.text == "联系我们"
    assert len(fetcher.documents) == 1


async def test_redirect_to_an_allowed_second_host_is_followed(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    httpx_mock.add_response(
        url="http://example.cn/", status_code=302, headers={"Location": "https://www.example.cn/"}
    )
    httpx_mock.add_response(url="https://www.example.cn/", text="home")

    page = await make().get(
        "http://example.cn/", allowed_hosts=frozenset({"example.cn", "WWW.example.cn"})
    )

    assert page.url == "https://www.example.cn/"


async def test_redirect_to_foreign_host_is_refused(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    httpx_mock.add_response(
        url=URL, status_code=302, headers={"Location": "https://parked-domains.example/x"}
    )
    fetcher = make()

    with pytest.raises(FetchError) as info:
        await fetcher.get(URL)

    assert info.value.kind == "foreign_redirect"
    assert info.value.url == "https://parked-domains.example/x"
    # Only the first request went out (pytest-httpx would flag an unexpected second one).
    assert len(httpx_mock.get_requests()) == 1
    assert fetcher.documents == []


async def test_redirect_loop_is_bounded(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    httpx_mock.add_response(status_code=302, headers={"Location": URL}, is_reusable=True)

    with pytest.raises(FetchError) as info:
        await make(max_redirects=3, min_interval=0.0).get(URL)

    assert (info.value.kind, info.value.status) == ("http_status", 302)
    assert len(httpx_mock.get_requests()) == 4


# -- size cap ---------------------------------------------------------------------------------


async def test_oversized_page_with_content_length_is_refused(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    httpx_mock.add_response(content=b"x" * 10_000)
    fetcher = make(max_bytes=1_000)

    with pytest.raises(FetchError) as info:
        await fetcher.get(URL)

    assert info.value.kind == "too_large"
    assert fetcher.documents == []


async def test_oversized_streamed_page_stops_reading_at_the_cap(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i in range(1_000):
            sent.append(i)
            yield b"x" * 1_000

    httpx_mock.add_response(stream=IteratorStream(chunks()))

    with pytest.raises(FetchError) as info:
        await make(max_bytes=5_000).get(URL)

    assert info.value.kind == "too_large"
    assert len(sent) == 6  # the sixth chunk crossed the cap; nothing after it was read


async def test_page_exactly_at_the_cap_is_accepted(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    httpx_mock.add_response(stream=IteratorStream([b"a" * 500, b"b" * 500]))

    page = await make(max_bytes=1_000).get(URL)

    assert len(page.body) == 1_000


# -- conditional requests -----------------------------------------------------------------------


async def test_etag_then_304_returns_the_cached_body(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    body = "<meta charset=gbk>客服热线".encode("gbk")
    lm = "Mon, 05 Jan 2026 08:00:00 GMT"
    httpx_mock.add_response(
        url=URL,
        content=body,
        headers={"Content-Type": "text/html", "ETag": '"v1"', "Last-Modified": lm},
    )
    httpx_mock.add_response(
        url=URL,
        status_code=304,
        headers={"ETag": '"v1"'},
        match_headers={"If-None-Match": '"v1"', "If-Modified-Since": lm},
    )
    cache = MemoryValidatorCache()
    fetcher = make(cache=cache)

    first = await fetcher.get(URL)
    second = await fetcher.get(URL)

    assert first.not_modified is False
    assert "if-none-match" not in httpx_mock.get_requests()[0].headers
    assert second.not_modified is True
    assert second.status == 304
    assert second.body == body
    assert second.text == "<meta charset=gbk>客服热线"
    assert second.encoding == "gb18030"
    assert second.sha256 == first.sha256 == hashlib.sha256(body).hexdigest()
    assert second.headers["content-type"] == "text/html"
    assert fetcher.documents == [first, second]
    cached = cache.get(URL)
    assert cached is not None and cached.etag == '"v1"'


async def test_304_without_a_cached_copy_is_an_error(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    httpx_mock.add_response(status_code=304)

    with pytest.raises(FetchError) as info:
        await make().get(URL)

    assert (info.value.kind, info.value.status) == ("http_status", 304)


# -- politeness -------------------------------------------------------------------------------


async def test_one_host_is_spaced_other_hosts_run_in_parallel(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher], vt: VirtualTime
) -> None:
    starts: list[tuple[str, float]] = []

    def respond(request: httpx.Request) -> httpx.Response:
        starts.append((str(request.url), vt.now))
        return httpx.Response(200, text="ok")

    httpx_mock.add_callback(respond, is_reusable=True)
    fetcher = make(min_interval=1.0)

    await asyncio.gather(
        fetcher.get("https://a.example/1"),
        fetcher.get("https://a.example/2"),
        fetcher.get("https://b.example/1"),
        fetcher.get("https://a.example/3"),
    )

    at = dict(starts)
    assert at["https://a.example/1"] == 0.0
    assert at["https://b.example/1"] == 0.0  # another host does not wait for a.example
    assert at["https://a.example/2"] == 1.0  # queued behind /1, one interval later
    assert at["https://a.example/3"] == 2.0
    # Callers queue in arrival order.
    assert [u for u, _ in starts if "a.example" in u] == [
        "https://a.example/1",
        "https://a.example/2",
        "https://a.example/3",
    ]


async def test_per_host_interval_override(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher], vt: VirtualTime
) -> None:
    httpx_mock.add_response(text="ok", is_reusable=True)
    fetcher = make(min_interval=1.0, host_intervals={"www.example.cn": 5.0})

    await fetcher.get(URL)
    await fetcher.get(URL + "?p=2")

    assert vt.sleeps == [5.0]


# -- identity, evidence, progress ---------------------------------------------------------------


async def test_user_agent_identifies_the_project_and_is_configurable(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    httpx_mock.add_response(text="ok", is_reusable=True)

    await make().get(URL)
    await make(user_agent="outreach/0.1 (+mailto:ops@example.org)").get(URL)

    first, second = httpx_mock.get_requests()
    assert first.headers["user-agent"] == DEFAULT_USER_AGENT
    assert DEFAULT_USER_AGENT.startswith("outreach/")
    assert second.headers["user-agent"] == "outreach/0.1 (+mailto:ops@example.org)"


async def test_documents_keep_every_page_with_its_hash(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    bodies = {f"https://www.example.cn/{i}": f"page {i} 客服".encode() for i in range(3)}
    for url, body in bodies.items():
        httpx_mock.add_response(url=url, content=body)
    fetcher = make(min_interval=0.0)

    for url in bodies:
        await fetcher.get(url)

    assert [d.url for d in fetcher.documents] == list(bodies)
    for doc in fetcher.documents:
        assert doc.body == bodies[doc.url]
        assert doc.sha256 == hashlib.sha256(bodies[doc.url]).hexdigest()


async def test_progress_reports_every_exchange(
    httpx_mock: HTTPXMock, make: Callable[..., PoliteFetcher]
) -> None:
    httpx_mock.add_exception(httpx.ReadTimeout("slow"))
    httpx_mock.add_response(url=URL, status_code=302, headers={"Location": "/b"})
    httpx_mock.add_response(url="https://www.example.cn/b", text="ok")
    seen: list[tuple[str, int | None]] = []

    await make(progress=lambda url, status: seen.append((url, status))).get(URL)

    assert seen == [(URL, None), (URL, 302), ("https://www.example.cn/b", 200)]


async def test_not_an_http_url_is_refused(make: Callable[..., PoliteFetcher]) -> None:
    with pytest.raises(FetchError) as info:
        await make().get("ftp://example.cn/file")
    assert info.value.kind == "network"


async def test_satisfies_the_fetcher_contract(client: httpx.AsyncClient) -> None:
    fetcher: Fetcher = PoliteFetcher(client)  # mypy checks the structural match
    assert isinstance(fetcher, PoliteFetcher)


async def test_a_server_that_drips_is_cut_off_by_the_try_deadline(
    httpx_mock: HTTPXMock, client: httpx.AsyncClient
) -> None:
    async def stall(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, text="too late")

    httpx_mock.add_callback(stall)
    fetcher = PoliteFetcher(client, try_deadline=0.05, retry=RetryPolicy(tries=1))

    with pytest.raises(FetchError) as info:
        await fetcher.get(URL)

    assert info.value.kind == "timeout"
