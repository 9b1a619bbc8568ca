"""One loaded installation: config, database and adapters, and the passes the CLI runs.

Every CLI command is a few lines over these functions, so a Python user (or a test) can do
exactly what the command does without a shell.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from channels.base import Channel, RateLimit
from outreach import clock, registry
from outreach.config import ENGINE_CHANNEL_KEYS, Config, load
from outreach.db_helper import DbHelper
from outreach.discovery import DiscoveryReport, party_query, record_results, run_sources
from outreach.dispatch import Dispatcher, DispatchPolicy, DispatchReport, worker_id
from outreach.ladder import PlanReport, plan_due
from outreach.migrate import ensure_schema
from outreach.proof import store_blob
from outreach.ratelimit import parse_limit
from outreach.retry import in_transaction, parse_duration
from outreach.store import ContactPoint, Party, make_engine, session_factory
from outreach.sync import SyncReport, sync
from sources.base import DeclaredContact, Fetcher

_PATH_KEYS = ("dir",)


@dataclass
class App:
    config: Config
    engine: Engine
    sessions: sessionmaker[Session]
    # [dispatch] db_process: started on first use, kept for the App's life (every tick of a
    # worker), stopped by close()
    _helper: DbHelper | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: Path, *, migrate: bool = True) -> App:
        cfg = load(path, registry.channel_kinds(), registry.channel_settings_models())
        engine = make_engine(cfg.database_url(), echo=cfg.database.echo)
        if migrate:
            ensure_schema(engine)
        return cls(cfg, engine, session_factory(engine))

    def close(self) -> None:
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.close()
        self.engine.dispose()

    # ------------------------------------------------------------------ passes

    def sync(self, *, at: datetime | None = None) -> SyncReport:
        with self.sessions.begin() as s:
            return sync(s, self.config, at=at)

    def discover(
        self,
        *,
        party: str | None = None,
        fetcher: Fetcher | None = None,
        progress: Callable[[str], None] | None = None,
        at: datetime | None = None,
        documents: Callable[[], list[Any]] | None = None,
    ) -> DiscoveryReport:
        queries = []
        with self.sessions() as s:
            for key, pc in self.config.parties.items():
                if party is not None and key != party:
                    continue
                row = s.query(Party).filter(Party.key == key).one()
                declared = [
                    DeclaredContact(c.kind, c.value, c.label, c.source) for c in pc.contacts
                ]
                names = list(dict.fromkeys(["config", *pc.sources]))
                queries.append((party_query(row, declared), names))
        results = asyncio.run(
            run_sources(queries, registry.source_adapters(), fetcher, progress=progress)
        )
        with self.sessions.begin() as s:
            if any("directory" in names for _q, names in queries):
                # Directory findings cite the SHA-256 of the bundled file: keep those exact bytes.
                from sources.directory import load_directory

                store_blob(s, load_directory().data, "application/toml")
            report = record_results(s, results, documents() if documents else (), at=at)
            # A run or discover counts as fresh for the worker's discover_every.
            from outreach.scheduler import mark_discovered

            mark_discovered(s, [q.key for q, _names in queries], at or clock.now())
            return report

    def plan(self, *, at: datetime | None = None, dry_run: bool = False) -> PlanReport:
        if dry_run:
            with self.sessions() as s:
                report = plan_due(s, self.config, registry.channel_kinds(), at=at, dry_run=True)
                s.rollback()
                return report
        # A ladder pass is one transaction with nothing outside it: after a deadlock with
        # another worker (PostgreSQL) it is simply run again.
        kinds = registry.channel_kinds()
        return in_transaction(self.sessions, lambda s: plan_due(s, self.config, kinds, at=at))

    def build_channels(self, env: Mapping[str, str]) -> dict[str, Channel]:
        adapters = registry.channel_adapters()
        built: dict[str, Channel] = {}
        for name, settings in self.config.channels.items():
            rest = {k: v for k, v in settings.items() if k not in ENGINE_CHANNEL_KEYS}
            for key in list(rest):
                if key in _PATH_KEYS or key.endswith(("_dir", "_file")):
                    rest[key] = str(self.config.resolve_path(str(rest[key])))
            built[name] = adapters[str(settings["adapter"])](name, rest, env)
        return built

    def dispatcher(
        self,
        channels: Mapping[str, Channel],
        *,
        now: Callable[[], datetime] = clock.now,
        env: Mapping[str, str] | None = None,
        helper: bool | None = None,
    ) -> Dispatcher:
        """A dispatcher for these channels. With ``[dispatch] db_process`` (or ``helper=True``)
        its database work runs in the App's helper process, which builds its own channels from
        the config and ``env`` (default: this process's environment) - pass the same ``env``
        the channels were built with."""
        d = self.config.dispatch
        limits: dict[str, list[RateLimit]] = {}
        concurrency: dict[str, int] = {}
        adapters = registry.channel_adapters()
        for name, settings in self.config.channels.items():
            declared = settings.get("limits")
            if declared is not None:
                limits[name] = [parse_limit(str(t)) for t in declared]
            else:
                limits[name] = list(
                    getattr(adapters[str(settings["adapter"])], "default_limits", ())
                )
            concurrency[name] = int(settings.get("concurrency", 20))
        policy = DispatchPolicy(
            max_tries=d.max_tries,
            reschedule_after=parse_duration(d.reschedule_after),
            max_claims=d.max_claims,
            lease_seconds=d.lease_seconds,
            batch=d.batch,
        )
        db_helper: DbHelper | None = None
        if d.db_process if helper is None else helper:
            if self._helper is None:
                self._helper = DbHelper(
                    self.config.source_path.resolve(),
                    os.environ if env is None else env,
                    owner=worker_id(),
                )
            db_helper = self._helper
            db_helper.start()
        return Dispatcher(
            self.sessions,
            channels,
            policy,
            owner=db_helper.owner if db_helper is not None else None,
            limits=limits,
            concurrency=concurrency,
            sender=self.config.sender.model_dump(exclude={"reference_prefix"}),
            now=now,
            helper=db_helper,
        )


@dataclass
class PassReport:
    sync: SyncReport
    discovery: DiscoveryReport
    plan: PlanReport
    dispatch: DispatchReport
    notes: list[str] = field(default_factory=list)


def contact_summary(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as s:
        return {
            "good": s.query(ContactPoint).filter(ContactPoint.status == "good").count(),
            "bad": s.query(ContactPoint).filter(ContactPoint.status == "bad").count(),
            "unknown": s.query(ContactPoint).filter(ContactPoint.status == "unknown").count(),
        }
