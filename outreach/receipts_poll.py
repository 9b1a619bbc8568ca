"""Polling the SMS providers for delivery reports: ``outreach receipts poll`` and the worker.

Aliyun is asked, per number and day, what became of the sends still waiting for a receipt
(``QuerySendDetails``, the last 30 days only); Tencent hands out what it has not handed out
before (``PullSmsSendStatus``, a queue). Twilio only pushes. What comes back is parsed by
:mod:`outreach.receipt_formats` and recorded by :mod:`outreach.receipts`, exactly as a push
would be.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from channels.base import ChannelError
from outreach import clock, registry
from outreach.config import ENGINE_CHANNEL_KEYS, Config
from outreach.receipt_formats import (
    DeliveryReport,
    ProviderAnswerError,
    ReceiptFormatError,
    parse_aliyun_query,
    parse_tencent_pull,
)
from outreach.receipts import (
    ADAPTERS,
    ALIYUN_QUERY_DAYS,
    AWAITING_STATES,
    IngestReport,
    channels_by_provider,
    ingest,
    ingest_rematch,
    record_reports,
)
from outreach.store import Attempt, Send

log = logging.getLogger("outreach.receipts")


def build_status_channels(config: Config, env: Mapping[str, str]) -> dict[str, Any]:
    """Instantiate only the channels that can be asked for status (Aliyun, Tencent), so that
    polling needs only their credentials. ``ValueError`` names a missing setting."""
    adapters = registry.channel_adapters()
    built: dict[str, Any] = {}
    for name, settings in config.channels.items():
        adapter = str(settings.get("adapter"))
        if adapter not in (ADAPTERS["aliyun"], ADAPTERS["tencent"]):
            continue
        rest = {k: v for k, v in settings.items() if k not in ENGINE_CHANNEL_KEYS}
        try:
            built[name] = adapters[adapter](name, rest, env)
        except ValueError as exc:
            raise ValueError(f"channels.{name}.{exc}") from None
    return built


@dataclass
class ChannelPoll:
    channel: str
    adapter: str
    queries: int = 0
    ingest: IngestReport = field(default_factory=IngestReport)
    errors: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "adapter": self.adapter,
            "queries": self.queries,
            "reports": self.ingest.reports,
            "recorded": self.ingest.recorded,
            "duplicates": self.ingest.duplicates,
            "unmatched": self.ingest.unmatched,
            "errors": "; ".join(self.errors),
        }


@dataclass
class PollReport:
    channels: list[ChannelPoll] = field(default_factory=list)
    rematched: int = 0

    @property
    def errors(self) -> list[str]:
        return [f"{c.channel}: {e}" for c in self.channels for e in c.errors]

    def describe(self) -> str:
        total = IngestReport()
        for c in self.channels:
            total.add(c.ingest)
        return (
            f"polled {len(self.channels)} channels, {sum(c.queries for c in self.channels)} "
            f"queries: {total.describe()}; {self.rematched} earlier receipts matched now; "
            f"{len(self.errors)} errors"
        )


def _awaiting_aliyun(
    session: Session, channel: str, now: datetime
) -> list[tuple[int, str, str | None, datetime]]:
    """(attempt id, recipient, BizId, last send) for attempts still waiting for a receipt."""
    last_send = (
        select(Send.attempt_id, func.max(Send.at).label("at")).group_by(Send.attempt_id).subquery()
    )
    rows = session.execute(
        select(Attempt.id, Attempt.recipient, Attempt.provider_id, last_send.c.at)
        .join(last_send, last_send.c.attempt_id == Attempt.id)
        .where(
            Attempt.channel == channel,
            Attempt.kind == "sms",
            Attempt.state.in_(AWAITING_STATES),
            last_send.c.at >= now - timedelta(days=ALIYUN_QUERY_DAYS),
        )
        .order_by(Attempt.id)
    ).all()
    out = []
    for attempt_id, recipient, provider_id, at in rows:
        moment = at if at.tzinfo else at.replace(tzinfo=UTC)
        out.append((attempt_id, recipient, provider_id, moment))
    return out


def _poll_writer(
    reports: Sequence[DeliveryReport], body: bytes, channel: str
) -> Callable[[Session], IngestReport]:
    def write(session: Session) -> IngestReport:
        return record_reports(
            session, reports, body, "application/json", via="poll", channel=channel
        )

    return write


def _beijing_date(moment: datetime) -> date:
    return moment.astimezone(clock.CST).date()


async def _poll_aliyun(
    sessions: sessionmaker[Session],
    name: str,
    channel: Any,
    poll: ChannelPoll,
    now: datetime,
    *,
    concurrency: int,
    max_pages: int,
) -> None:
    with sessions() as s:
        todo = _awaiting_aliyun(s, name, now)
    gate = asyncio.Semaphore(concurrency)
    stop = asyncio.Event()

    async def one(recipient: str, biz_id: str | None, sent_at: datetime) -> None:
        page = 1
        while not stop.is_set():
            async with gate:
                try:
                    answer = await channel.query_send_details(
                        recipient,
                        _beijing_date(sent_at),
                        biz_id=biz_id,
                        page=page,
                        page_size=10 if biz_id else 50,
                    )
                except ChannelError as exc:  # Transient: this number fails, the rest go on
                    poll.errors.append(f"QuerySendDetails: {exc.detail}")
                    return
                poll.queries += 1
            try:
                parsed = parse_aliyun_query(answer.body, biz_id=biz_id)
            except ProviderAnswerError as exc:
                poll.errors.append(f"QuerySendDetails refused: {exc}")
                stop.set()  # throttled or misconfigured: asking again now only repeats it
                return
            except ReceiptFormatError as exc:
                poll.errors.append(f"QuerySendDetails HTTP {answer.status}: {exc}")
                return
            body = answer.body
            result = await asyncio.to_thread(
                ingest, sessions, _poll_writer(parsed.reports, body, name)
            )
            poll.ingest.add(result)
            if biz_id or page >= max_pages or page * 50 >= parsed.total:
                return
            page += 1

    await asyncio.gather(*(one(r, b, t) for _id, r, b, t in todo))


async def _poll_tencent(
    sessions: sessionmaker[Session], name: str, channel: Any, poll: ChannelPoll, *, max_rounds: int
) -> None:
    limit = 100
    for _ in range(max_rounds):
        try:
            answer = await channel.pull_send_status(limit)
        except ChannelError as exc:  # Transient, or Unknown: reports may be lost
            poll.errors.append(f"PullSmsSendStatus: {exc.detail}")
            return
        poll.queries += 1
        try:
            reports = parse_tencent_pull(answer.body)
        except ProviderAnswerError as exc:
            poll.errors.append(f"PullSmsSendStatus refused: {exc}")
            return
        except ReceiptFormatError as exc:
            poll.errors.append(f"PullSmsSendStatus HTTP {answer.status}: {exc}")
            return
        body = answer.body
        # Tencent hands each report out once: keep the bytes even if nothing in them matches.
        result = await asyncio.to_thread(ingest, sessions, _poll_writer(reports, body, name))
        poll.ingest.add(result)
        if len(reports) < limit:
            return


async def poll_receipts(
    sessions: sessionmaker[Session],
    config: Config,
    channels: Mapping[str, Any],
    *,
    now: Callable[[], datetime] = clock.now,
    progress: Callable[[str], None] | None = None,
    concurrency: int = 10,
    max_pages: int = 10,
    max_rounds: int = 50,
) -> PollReport:
    """Ask every Aliyun and Tencent channel what became of our sends, and record the answers.

    Aliyun: one ``QuerySendDetails`` per attempt still ``sent``/``unknown`` from the last 29
    days - by ``BizId`` when we have it, else every send to that number that Beijing day, found
    again by its ``OutId``. Tencent: ``PullSmsSendStatus`` until its queue is empty. Unmatched
    receipts from earlier are matched again first.
    """
    by_provider = channels_by_provider(config)
    report = PollReport()
    report.rematched = await asyncio.to_thread(ingest_rematch, sessions, by_provider, now())
    jobs: list[Awaitable[None]] = []
    for name, channel in channels.items():
        adapter = str(config.channels[name].get("adapter"))
        poll = ChannelPoll(name, adapter)
        report.channels.append(poll)
        if progress is not None:
            progress(f"polling {name} ({adapter})")
        if adapter == ADAPTERS["aliyun"]:
            jobs.append(
                _poll_aliyun(
                    sessions,
                    name,
                    channel,
                    poll,
                    now(),
                    concurrency=concurrency,
                    max_pages=max_pages,
                )
            )
        elif adapter == ADAPTERS["tencent"]:
            jobs.append(_poll_tencent(sessions, name, channel, poll, max_rounds=max_rounds))
    await asyncio.gather(*jobs)
    return report
