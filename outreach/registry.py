"""Adapters are found through entry points, so a third party adds one without a fork.

The groups are ``outreach.channels`` and ``outreach.sources``; the entry point's name is the
adapter name used in the config. Built-in adapters are registered the same way (see
``pyproject.toml``), plus a fallback table for running from a source tree that was never
installed.
"""

from __future__ import annotations

import importlib
import logging
from functools import cache
from importlib.metadata import entry_points
from typing import Any

log = logging.getLogger("outreach.registry")

# Fallback for an uninstalled checkout; keep in step with pyproject.toml.
_BUILTIN_CHANNELS = {
    "outbox": "channels.outbox:OutboxChannel",
    "smtp": "channels.smtp:SmtpChannel",
    "aliyun_sms": "channels.aliyun_sms:AliyunSmsChannel",
    "tencent_sms": "channels.tencent_sms:TencentSmsChannel",
    "twilio_sms": "channels.twilio_sms:TwilioSmsChannel",
    "http_sms": "channels.http_sms:HttpSmsChannel",
    "webhook": "channels.webhook:WebhookChannel",
    "letter": "channels.letter:LetterChannel",
    "manual": "channels.manual:ManualChannel",
}
_BUILTIN_SOURCES = {
    "config": "sources.config:ConfigSource",
    "directory": "sources.directory:DirectorySource",
    "pboc_licences": "sources.pboc_licences:PbocLicencesSource",
    "official_site": "sources.official_site:OfficialSiteSource",
    "company_registry": "sources.company_registry:CompanyRegistrySource",
}


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _group(group: str, builtin: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, target in builtin.items():
        try:
            found[name] = _load(target)
        except (ImportError, AttributeError):
            continue
    for ep in entry_points(group=group):
        if ep.name not in found:
            try:
                found[ep.name] = ep.load()
            except (ImportError, AttributeError) as exc:
                # A broken third-party adapter must not take the whole tool down.
                log.warning("cannot load %s adapter %r: %s", group, ep.name, exc)
    return found


@cache
def channel_adapters() -> dict[str, Any]:
    """Adapter name -> channel class (a :class:`channels.base.ChannelFactory`)."""
    return _group("outreach.channels", _BUILTIN_CHANNELS)


@cache
def source_adapters() -> dict[str, Any]:
    """Adapter name -> source class."""
    return _group("outreach.sources", _BUILTIN_SOURCES)


def channel_kinds() -> dict[str, frozenset[str]]:
    return {name: frozenset(cls.kinds) for name, cls in channel_adapters().items()}


def channel_settings_models() -> dict[str, Any]:
    return {
        name: cls.Settings for name, cls in channel_adapters().items() if hasattr(cls, "Settings")
    }
