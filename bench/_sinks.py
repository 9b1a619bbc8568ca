"""Local peers for the dispatch benchmarks, and a queue of notices for them to receive.

- :class:`SmtpSink` runs Postfix's ``smtp-sink`` (C, ~15,000 msgs/s here) and reads its message
  counter, so a run can check the sink took exactly the messages the client reports sent.
  aiosmtpd would itself be the bottleneck (see ``shared/reference/performance.md``).
- :class:`HttpGateway` is an SMS gateway that answers every request after a fixed delay, in its
  own process so it never shares the client's core, and counts what it answered.
- :func:`seed_queue` fills a database with N cases, one rendered notice and one queued attempt
  each, straight into the tables: the ladder would take longer to plan 50,000 cases than the
  dispatcher takes to send them, and planning is not what these benchmarks measure. The text is
  the real ``cancellation_request`` template rendered once, with each case's reference swapped in.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from outreach.notices import NoticeContext, render
from outreach.store import Attempt, Case, ContactPoint, Merchant, Notice, Party

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
PLACEHOLDER_REF = "OUT-2026-000000"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{what} did not listen on 127.0.0.1:{port}")


class SmtpSink:
    """``smtp-sink -c 127.0.0.1:PORT 1000`` for the life of a ``with`` block (never the daemon).

    ``-c`` prints ``sess=N quit=N mesg=N`` counters as they change, the last ``mesg`` being the
    number of messages accepted after the final ".". They go to a file, not a pipe: a reader
    thread in the measuring process took ~11 % of its samples (py-spy) away from the code under
    test.
    """

    def __init__(self) -> None:
        if not os.path.exists(SMTP_SINK):
            raise SystemExit(
                "smtp-sink not found: apt-get install -y postfix (only the smtp-sink tool is run)"
            )
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._counters = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__

    def __enter__(self) -> SmtpSink:
        cmd = [SMTP_SINK, "-c"]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]  # required when started as root
        cmd += [f"127.0.0.1:{self.port}", "1000"]
        self.proc = subprocess.Popen(cmd, stdout=self._counters, stderr=subprocess.DEVNULL)
        _wait_listening(self.port, self.proc, "smtp-sink")
        return self

    def messages(self, settle: float = 0.3) -> int:
        """Messages the sink has accepted so far (after a moment for the counter to print)."""
        time.sleep(settle)
        size = os.fstat(self._counters.fileno()).st_size
        found = re.findall(
            rb"mesg=(\d+)", os.pread(self._counters.fileno(), 256, max(0, size - 256))
        )
        return int(found[-1]) if found else 0

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._counters.close()


# -- the HTTP gateway -----------------------------------------------------------------------------

GATEWAY_REPLY = b'{"code":"0","msg":"ok","sid":"%d"}'


class _GatewayProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive: one JSON reply per request, ``delay`` seconds after it arrived."""

    delay = 0.05
    served = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                length = int(head[at + 17 :].split(b"\r\n", 1)[0])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            _GatewayProtocol.served += 1
            self.loop.call_later(self.delay, self.reply, _GatewayProtocol.served)

    def reply(self, number: int) -> None:
        if self.transport.is_closing():
            return
        body = GATEWAY_REPLY % number
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json;charset=utf-8\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )


async def _serve_gateway(delay: float) -> None:
    _GatewayProtocol.delay = delay
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_GatewayProtocol, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"ready {port}", flush=True)
    async with server:
        await stop.wait()
    print(f"served {_GatewayProtocol.served}", flush=True)


class HttpGateway:
    """The gateway in a child process; ``served`` is known once the block exits."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.url = ""
        self.served = -1
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> HttpGateway:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--gateway", str(self.delay)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            self.proc.kill()
            raise SystemExit("the gateway did not start")
        self.url = f"http://127.0.0.1:{line[1]}/sms/send"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        m = re.search(r"served (\d+)", out or "")
        self.served = int(m.group(1)) if m else -1


# -- configuration and the queue ------------------------------------------------------------------


def write_config(
    folder: Path, db_url: str, channels: str, *, batch: int = 200, db_process: bool = False
) -> Path:
    """A minimal outreach.toml: database, sender, the given ``[channels.*]`` tables, dispatch."""
    path = folder / "outreach.toml"
    path.write_text(
        f"""
[database]
url = "{db_url}"

[sender]
name = "张三"
email = "zhangsan@example.com"
phone = "13800138000"
address = "广东省深圳市福田区福华路1号"

{channels}

[dispatch]
batch = {batch}
db_process = {str(db_process).lower()}
""",
        encoding="utf-8",
    )
    return path


def sample_notice() -> tuple[str, str, str, dict[str, str]]:
    """(subject, body, html, sms_params) of a real zh-CN cancellation request, with
    :data:`PLACEHOLDER_REF` where the case reference goes."""
    today = date(2026, 11, 23)
    rendered = render(
        "cancellation_request",
        NoticeContext(
            reference=PLACEHOLDER_REF,
            goal="cancel_terminal",
            language="zh-CN",
            today=today,
            deadline=date(2026, 12, 7),
            sender={
                "name": "张三",
                "organisation": None,
                "email": "zhangsan@example.com",
                "phone": "13800138000",
                "address": "广东省深圳市福田区福华路1号",
                "reference_prefix": "OUT",
            },
            merchant={
                "name": "深圳市福田区张三便利店",
                "merchant_no": "822584053990001",
                "contact_name": "张三",
            },
            party={
                "name": "深圳某某支付服务有限公司",
                "legal_name": None,
                "licence_no": None,
                "role": "agent",
            },
            terminals=[
                {
                    "terminal_no": "12345678",
                    "sn": "N86012345678",
                    "model": "N86",
                    "acquirer": "拉卡拉支付股份有限公司",
                    "agent": "深圳某某支付服务有限公司",
                }
            ],
            acquirers=[
                {"name": "拉卡拉", "legal_name": "拉卡拉支付股份有限公司", "licence_no": None}
            ],
            agents=["深圳某某支付服务有限公司"],
            statement="本店已停业，代理商电话长期无人接听，要求注销终端并停止扣费。",
        ),
    )
    return rendered.subject, rendered.body, rendered.html, dict(rendered.sms_params)


def seed_queue(
    sessions: sessionmaker[Session],
    n: int,
    *,
    channel: str,
    kind: str,
    recipient: str,
    chunk: int = 2000,
) -> None:
    """N cases with one notice and one queued attempt each; ``recipient`` is a format string
    with ``{i}`` (e.g. ``"agent{i}@agent.example.cn"`` or ``"+86139{i:08d}"``)."""
    subject, body, html, params = sample_notice()
    now = datetime.now(UTC)
    with sessions.begin() as s:
        merchant = Merchant(
            key="bench-merchant", name="深圳市福田区张三便利店", merchant_no="822584053990001"
        )
        party = Party(key="bench-agent", role="agent", name="深圳某某支付服务有限公司")
        s.add_all([merchant, party])
        s.flush()
        merchant_id, party_id = merchant.id, party.id
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        with sessions.begin() as s:
            refs = [f"OUT-2026-{i + 1:06d}" for i in range(start, stop)]
            s.execute(
                sa.insert(Case),
                [
                    {
                        "key": f"case-{i}",
                        "reference": ref,
                        "merchant_id": merchant_id,
                        "goal": "cancel_terminal",
                        "plan": "standard",
                        "opened_on": now.date(),
                        "next_step": 1,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i, ref in zip(range(start, stop), refs, strict=True)
                ],
            )
            s.execute(
                sa.insert(ContactPoint),
                [
                    {
                        "party_id": party_id,
                        "kind": kind,
                        "value": recipient.format(i=i),
                        "label": "bench",
                        "status": "unknown",
                        "first_seen": now,
                        "last_seen": now,
                    }
                    for i in range(start, stop)
                ],
            )
            case_ids = dict(
                s.execute(sa.select(Case.reference, Case.id).where(Case.reference.in_(refs))).all()
            )
            cp_ids = dict(
                s.execute(
                    sa.select(ContactPoint.value, ContactPoint.id).where(
                        ContactPoint.party_id == party_id,
                        ContactPoint.value.in_([recipient.format(i=i) for i in range(start, stop)]),
                    )
                ).all()
            )
            s.execute(
                sa.insert(Notice),
                [
                    {
                        "case_id": case_ids[ref],
                        "step": 0,
                        "party_id": party_id,
                        "template": "cancellation_request",
                        "language": "zh-CN",
                        "subject": subject.replace(PLACEHOLDER_REF, ref),
                        "body": body.replace(PLACEHOLDER_REF, ref),
                        "html": html.replace(PLACEHOLDER_REF, ref),
                        "sms_params": {**params, "reference": ref},
                        "sha256": "0" * 64,
                        "deadline": date(2026, 12, 7),
                        "created_at": now,
                    }
                    for ref in refs
                ],
            )
            notice_ids = dict(
                s.execute(
                    sa.select(Notice.case_id, Notice.id).where(
                        Notice.case_id.in_(list(case_ids.values()))
                    )
                ).all()
            )
            s.execute(
                sa.insert(Attempt),
                [
                    {
                        "notice_id": notice_ids[case_ids[ref]],
                        "contact_point_id": cp_ids[recipient.format(i=i)],
                        "channel": channel,
                        "kind": kind,
                        "recipient": recipient.format(i=i),
                        "state": "queued",
                        "tries": 0,
                        "claims": 0,
                        "next_try_at": now,
                        "idempotency_key": secrets.token_hex(8),
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i, ref in zip(range(start, stop), refs, strict=True)
                ],
            )


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--gateway":
        asyncio.run(_serve_gateway(float(sys.argv[2])))
    else:
        raise SystemExit("usage: _sinks.py --gateway DELAY_SECONDS")
