"""channels.http11: the framing rules of RFC 9112 the gateway client relies on, one by one."""

from __future__ import annotations

import pytest

from channels.http11 import END, NEED_DATA, Head, ProtocolError, ResponseReader, encode_request


def _read(
    chunks: list[bytes], *, method: bytes = b"POST", eof: bool = False
) -> tuple[Head, bytes, ResponseReader]:
    """Feed ``chunks`` one at a time (as the network would) and collect head and body."""
    reader = ResponseReader(max_head=64 * 1024)
    reader.start(method)
    head: Head | None = None
    body = b""
    pending = list(chunks)
    while True:
        event = reader.next_event()
        if event is NEED_DATA:
            if pending:
                reader.feed(pending.pop(0))
                continue
            assert eof, "the reader wants more data"
            reader.feed_eof()
            eof = False
            continue
        if event is END:
            break
        if isinstance(event, Head):
            assert head is None
            head = event
        else:
            assert isinstance(event, bytes) and head is not None
            body += event
    assert head is not None
    return head, body, reader


def _bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def test_content_length_body_fed_one_byte_at_a_time() -> None:
    raw = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"code":0}\n'
    head, body, reader = _read(_bytewise(raw))
    assert (head.status, head.reason, head.http_version) == (200, b"OK", b"1.1")
    assert head.headers == [(b"Content-Type", b"application/json"), (b"Content-Length", b"11")]
    assert body == b'{"code":0}\n'
    assert reader.keep_alive and not reader.trailing


def test_chunked_with_extensions_and_trailers() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nX-Checksum: abc\r\n\r\n"
    )
    for chunks in ([raw], _bytewise(raw)):
        _, body, reader = _read(chunks)
        assert body == b"hello, world"
        assert reader.keep_alive and not reader.trailing


def test_bare_lf_line_ends_and_obs_fold() -> None:
    raw = b"HTTP/1.1 200 OK\nX-Long: first\n  second\nContent-Length: 2\n\nok"
    head, body, _ = _read([raw])
    assert head.headers[0] == (b"X-Long", b"first second")
    assert body == b"ok"


def test_informational_responses_are_skipped() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    head, body, reader = _read([raw])
    assert head.status == 201 and body == b"" and reader.keep_alive


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    head, body, reader = _read([f"HTTP/1.1 {status} X\r\nContent-Length: 5\r\n\r\n".encode()])
    assert head.status == status and body == b"" and reader.keep_alive


def test_head_request_has_no_body_whatever_the_length_says() -> None:
    _, body, reader = _read([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"], method=b"HEAD")
    assert body == b"" and reader.keep_alive


def test_body_until_close_is_never_reused() -> None:
    _, body, reader = _read([b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"the end"], eof=True)
    assert body == b"until the end" and not reader.keep_alive


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_connection_close_and_http_1_0_are_not_reused(head: bytes) -> None:
    assert not _read([head])[2].keep_alive


def test_bytes_beyond_the_response_are_reported() -> None:
    _, body, reader = _read([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"])
    assert body == b"ok" and reader.trailing


def test_repeated_equal_content_lengths_are_accepted() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nok"
    assert _read([raw])[1] == b"ok"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
            "both Transfer-Encoding and Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "switched protocols"),
        (b"HTTP/2 200\r\n\r\n", "status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nNo-Colon\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\n continued\r\n\r\n", "continuation"),
        (b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n", "invalid value"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n", "longer than"),
    ],
)
def test_malformed_responses_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        _read([raw])


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ([], "without sending a response"),
        ([b"HTTP/1.1 200 OK\r\nContent-"], "mid-head"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], "mid-body"),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"], "mid-body"),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"], "mid-body"),
    ],
)
def test_early_close_is_an_error(chunks: list[bytes], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        _read(chunks, eof=True)


def test_head_size_is_bounded() -> None:
    reader = ResponseReader(max_head=100)
    reader.start(b"GET")
    reader.feed(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 200)
    with pytest.raises(ProtocolError, match="too long"):
        reader.next_event()


def test_reader_is_reused_for_the_next_response() -> None:
    reader = ResponseReader(max_head=1024)
    for n in range(3):
        reader.start(b"POST")
        reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + str(n).encode())
        assert isinstance(reader.next_event(), Head)
        assert reader.next_event() == str(n).encode()
        assert reader.next_event() is END
    with pytest.raises(ProtocolError, match="still being read"):
        reader.start(b"POST")
        reader.start(b"POST")


# -- requests ---------------------------------------------------------------------------------


def test_encode_request_with_content_length() -> None:
    head, framing = encode_request(
        b"POST",
        b"/sms/send?x=1",
        [(b"Host", b"gw.example.cn"), (b"Content-Length", b"4"), (b"X-Key", b"v")],
    )
    assert head == (
        b"POST /sms/send?x=1 HTTP/1.1\r\nHost: gw.example.cn\r\nContent-Length: 4\r\nX-Key: v\r\n\r\n"
    )
    assert framing.data(b"ab") + framing.data(b"cd") + framing.end() == b"abcd"
    assert not framing.close


def test_encode_request_chunked_and_close() -> None:
    _, framing = encode_request(
        b"POST",
        b"/",
        [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked"), (b"Connection", b"close")],
    )
    assert framing.data(b"hello") + framing.data(b"") + framing.end() == b"5\r\nhello\r\n0\r\n\r\n"
    assert framing.close


@pytest.mark.parametrize(
    ("method", "target", "headers", "message"),
    [
        (b"PO ST", b"/", [(b"Host", b"h")], "method"),
        (b"GET", b"/a b", [(b"Host", b"h")], "target"),
        (b"GET", b"/", [(b"Host", b"h"), (b"Bad Name", b"x")], "header name"),
        (b"GET", b"/", [(b"Host", b"h"), (b"X", b"a\r\nInjected: 1")], "invalid value"),
        (b"GET", b"/", [], "Host"),
        (b"GET", b"/", [(b"Host", b"h"), (b"Transfer-Encoding", b"gzip")], "Transfer-Encoding"),
        (
            b"GET",
            b"/",
            [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"1")],
            "both",
        ),
    ],
)
def test_bad_requests_are_refused_locally(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], message: str
) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        encode_request(method, target, headers)
    assert info.value.local


def test_body_must_match_its_content_length() -> None:
    _, framing = encode_request(b"POST", b"/", [(b"Host", b"h"), (b"Content-Length", b"2")])
    with pytest.raises(ProtocolError, match="longer"):
        framing.data(b"abc")
    _, framing = encode_request(b"POST", b"/", [(b"Host", b"h"), (b"Content-Length", b"2")])
    framing.data(b"a")
    with pytest.raises(ProtocolError, match="shorter"):
        framing.end()
    _, framing = encode_request(b"GET", b"/", [(b"Host", b"h")])
    with pytest.raises(ProtocolError, match="longer"):
        framing.data(b"x")
