"""The offline default: write each message exactly as it would be sent into a folder.

E-mail becomes an ``.eml`` (the RFC 5322 bytes an SMTP server would get), SMS and webhooks a
``.json`` request (letters go through the ``letter`` channel, which waits for a tracking number). Nothing leaves the machine, so a fresh
checkout runs end to end; a user can open the files, or hand the ``.eml`` to any mail client.
A re-send of the same attempt writes a second numbered file rather than overwriting, so a
duplicate is as visible here as it would be in a real inbox.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from channels.base import Outgoing, Permanent, Prepared, Receipt
from channels.mime import build_email


class OutboxSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    dir: str = "var/outbox"  # relative paths are resolved against the config file's folder
    from_address: str = "notices@outreach.invalid"
    from_name: str | None = None


class OutboxChannel:
    adapter: ClassVar[str] = "outbox"
    kinds: ClassVar[frozenset[str]] = frozenset({"email", "sms", "webhook"})
    Settings: ClassVar[type[BaseModel]] = OutboxSettings

    def __init__(self, name: str, settings: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.name = name
        self.settings = OutboxSettings.model_validate(dict(settings))
        self.dir = Path(self.settings.dir)

    def prepare(self, msg: Outgoing) -> Prepared:
        if msg.kind == "email":
            payload, mid = build_email(
                msg, from_address=self.settings.from_address, from_name=self.settings.from_name
            )
            return Prepared(msg, payload, "message/rfc822", mid, {"ext": "eml"})
        if msg.kind in ("sms", "webhook"):
            request = {
                "to": msg.recipient,
                "reference": msg.reference,
                "idempotency_key": msg.idempotency_key,
                "notice_kind": msg.notice_kind,
                "params": dict(msg.params),
                "text": msg.body,
            }
            payload = json.dumps(request, ensure_ascii=False, sort_keys=True, indent=2).encode()
            return Prepared(
                msg, payload + b"\n", "application/json", msg.idempotency_key, {"ext": "json"}
            )
        raise Permanent(f"outbox cannot hold {msg.kind!r} messages", bad_recipient=False)

    async def send(self, prepared: Prepared) -> Receipt:
        folder = self.dir / prepared.outgoing.reference
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{prepared.outgoing.kind}-{prepared.outgoing.idempotency_key}"
        ext = prepared.meta.get("ext", "bin")
        path = folder / f"{stem}.{ext}"
        n = 1
        while True:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                n += 1
                path = folder / f"{stem}.{n}.{ext}"
        with os.fdopen(fd, "wb") as fh:
            fh.write(prepared.payload)
            fh.flush()
            os.fsync(fh.fileno())
        reply = f"written {path.name} ({len(prepared.payload)} bytes)"
        return Receipt(
            accepted=True,
            provider_id=path.name,
            response=reply.encode(),
            transcript={"path": str(path), "copy": n},
        )

    async def aclose(self) -> None:
        return None
