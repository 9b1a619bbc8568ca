"""Contacts the user declared in the config: the most trusted source there is.

The user read them off a contract, a receipt or an annual report; they are never dropped by
discovery, only marked bad by a permanent failure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from sources.base import Fetcher, Finding, Lookup, PartyQuery


class ConfigSource:
    name: ClassVar[str] = "config"

    async def lookup(self, party: PartyQuery, fetch: Fetcher) -> Lookup:
        now = datetime.now(UTC)
        findings = tuple(
            Finding(
                party=party.key,
                kind=c.kind,
                value=c.value,
                label=c.label,
                # "config" or "config: annual report 2025": the adapter, then the user's note.
                source="config" if c.source in ("", "config") else f"config: {c.source}",
                url=None,
                seen_at=now,
                evidence_sha256=None,
                confidence=1.0,
            )
            for c in party.declared
        )
        return Lookup(findings=findings)
