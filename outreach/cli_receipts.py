"""CLI commands: receipts. Attached to the `outreach` group defined in :mod:`outreach.cli`.

``outreach receipts serve`` runs the push endpoint, ``poll`` asks the providers, ``list``
shows what arrived (``--unmatched``: what no attempt claimed yet). Each is a few lines over
:mod:`outreach.receipts` and :mod:`outreach.receipts_server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

import click
from sqlalchemy import select

from outreach.app import App
from outreach.cli import Ctx, json_option, main
from outreach.models_receipts import DeliveryReceipt
from outreach.output import emit
from outreach.receipts import channels_by_provider, describe_receipt, ingest_rematch
from outreach.receipts_poll import PollReport, build_status_channels, poll_receipts
from outreach.receipts_server import ReceiptServer, listen_address
from outreach.retry import parse_duration
from outreach.store import Attempt, Case, Notice

log = logging.getLogger("outreach.receipts")


@main.group("receipts")
def receipts_cmd() -> None:
    """SMS delivery receipts: the push endpoint, polling, and what arrived.

    \b
    A receipt says whether the phone got the message. It is chained on the case as
    `delivered` or `undelivered`; delivered marks the contact point good, a permanent
    failure (the number does not exist) marks it bad. Receipts that match no attempt
    are kept and listed by `outreach receipts list --unmatched`.
    """


def _status_channels(app: App) -> dict[str, Any]:
    try:
        return build_status_channels(app.config, os.environ)
    except ValueError as exc:
        click.echo(f"{app.config.source_path}: {exc}", err=True)
        sys.exit(2)


async def _close(channels: dict[str, Any]) -> None:
    for channel in channels.values():
        try:
            await channel.aclose()
        except Exception:
            log.exception("closing channel %s", channel.name)


def _poll_rows(report: PollReport) -> list[dict[str, Any]]:
    return [c.row() for c in report.channels]


@receipts_cmd.command("poll")
@json_option
@click.pass_obj
def poll_cmd(c: Ctx, as_json: bool) -> None:
    """Ask Aliyun (QuerySendDetails) and Tencent (PullSmsSendStatus) what became of our SMS.

    Aliyun: every attempt still `sent` or `unknown` from the last 29 days, by BizId, or by
    number and day when the send's answer was never seen (found again by its OutId).
    Tencent: the delivery reports not pulled before (Tencent support must enable the API).
    Exit 1 when a provider refused or could not be reached.
    """
    app = c.app()
    channels = _status_channels(app)
    if not channels:
        click.echo("no aliyun_sms or tencent_sms channel is configured: nothing to poll")
        return

    async def go() -> PollReport:
        try:
            return await poll_receipts(
                app.sessions,
                app.config,
                channels,
                progress=lambda msg: click.echo(f"  … {msg}", err=True),
            )
        finally:
            await _close(channels)

    report = asyncio.run(go())
    if as_json:
        emit(_poll_rows(report), as_json=True)
    else:
        emit(_poll_rows(report), as_json=False)
        click.echo(report.describe())
    for error in report.errors:
        click.echo(f"error: {error}", err=True)
    if report.errors:
        sys.exit(1)


@receipts_cmd.command("serve")
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default=None,
    help="Address to listen on (default: [receipts] listen, 127.0.0.1:8025).",
)
@click.option(
    "--poll/--no-poll",
    "also_poll",
    default=False,
    help="Also poll Aliyun and Tencent every [receipts] poll_every.",
)
@click.pass_obj
def serve_cmd(c: Ctx, listen: str | None, also_poll: bool) -> None:
    """Receive delivery reports pushed by the providers, until SIGINT or SIGTERM.

    \b
    POST /receipts/aliyun    Aliyun SmsReport (HTTP batch push)
    POST /receipts/tencent   Tencent status callback
    POST /receipts/twilio    Twilio StatusCallback, X-Twilio-Signature verified
    \b
    Point each provider's console (or Twilio's status_callback) at [receipts]
    public_url + the path; Twilio's signature is checked against that URL. A stop
    finishes the requests in flight and prints what was received.
    """
    app = c.app()
    try:
        host, port = listen_address(listen or app.config.receipts.listen)
    except ValueError as exc:
        click.echo(f"--listen: {exc}", err=True)
        sys.exit(2)
    try:
        server, warnings = ReceiptServer.from_config(app.sessions, app.config, os.environ)
    except ValueError as exc:
        click.echo(f"{app.config.source_path}: {exc}", err=True)
        sys.exit(2)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    channels = _status_channels(app) if also_poll else {}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            bound_host, bound_port = await server.start(host, port)
        except OSError as exc:
            click.echo(f"cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
            sys.exit(2)
        rematched = await asyncio.to_thread(
            ingest_rematch, app.sessions, channels_by_provider(app.config)
        )
        public = app.config.receipts.public_url or "(no public_url: Twilio URL taken from Host)"
        click.echo(
            f"listening on http://{bound_host}:{bound_port}/receipts/{{aliyun,tencent,twilio}}"
            f"; public URL {public}"
            + (f"; {rematched} earlier receipts matched now" if rematched else "")
        )
        poller = asyncio.create_task(_poll_forever(app, channels, stop)) if channels else None
        await stop.wait()
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        await server.stop()
        await _close(channels)

    asyncio.run(go())
    click.echo(f"stopped: {server.stats.describe()}")


async def _poll_forever(app: App, channels: dict[str, Any], stop: asyncio.Event) -> None:
    every = parse_duration(app.config.receipts.poll_every)
    while not stop.is_set():
        try:
            report = await poll_receipts(app.sessions, app.config, channels)
            log.info("poll: %s", report.describe())
            for error in report.errors:
                log.warning("poll: %s", error)
        except Exception:
            log.exception("polling receipts failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


@receipts_cmd.command("list")
@click.option("--unmatched", is_flag=True, help="Only receipts no attempt has claimed yet.")
@click.option("--provider", type=click.Choice(["aliyun", "tencent", "twilio"]), default=None)
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the last N receipts.")
@json_option
@click.pass_obj
def list_cmd(
    c: Ctx, unmatched: bool, provider: str | None, limit: int | None, as_json: bool
) -> None:
    """Every delivery report received: provider, outcome, code, and the attempt it matched."""
    app = c.app()
    stmt = (
        select(DeliveryReceipt, Case.reference)
        .outerjoin(Attempt, DeliveryReceipt.attempt_id == Attempt.id)
        .outerjoin(Notice, Attempt.notice_id == Notice.id)
        .outerjoin(Case, Notice.case_id == Case.id)
        .order_by(DeliveryReceipt.id.desc())
    )
    if unmatched:
        stmt = stmt.where(DeliveryReceipt.attempt_id.is_(None))
    if provider:
        stmt = stmt.where(DeliveryReceipt.provider == provider)
    if limit:
        stmt = stmt.limit(limit)
    with app.sessions() as s:
        rows = [describe_receipt(row, ref) for row, ref in s.execute(stmt)]
    rows.reverse()
    columns = None
    if not as_json:
        columns = [
            "id",
            "received",
            "provider",
            "via",
            "outcome",
            "stage",
            "code",
            "provider_id",
            "recipient",
            "case",
        ]
    emit(rows, as_json=as_json, columns=columns)


__all__ = ["list_cmd", "poll_cmd", "receipts_cmd", "serve_cmd"]
