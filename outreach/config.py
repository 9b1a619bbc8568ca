"""The TOML config: what a user declares, validated strictly before anything is written.

Every error names the file, the dotted key path and what was expected, and the whole file is
checked before the first error is reported, so a user fixes everything in one go. Nothing in
the database changes until a config loads cleanly (exit code 2 otherwise).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sources.normalize import InvalidContact, normalize, normalize_licence, normalize_uscc

ROLES = ("agent", "acquirer", "association", "regulator")
GOALS = ("cancel_terminal", "refund_deposit", "reinstate_terminal")
TEMPLATES = ("cancellation_request", "reminder", "complaint_acquirer", "complaint_regulator")
LANGUAGES = ("zh-CN", "en")
CONTACT_KINDS = ("email", "phone", "sms", "postal", "web_form", "webhook", "website")
VIA_KINDS = ("email", "sms", "webhook", "postal", "phone")
DEFAULT_CONFIG = "outreach.toml"

_KEY = r"^[a-z0-9][a-z0-9_-]{0,62}$"
Key = Annotated[str, Field(pattern=_KEY)]


class ConfigError(Exception):
    """A config that cannot be used. ``problems`` are (dotted path, message) pairs."""

    def __init__(self, path: Path, problems: Sequence[tuple[str, str]]) -> None:
        self.path = path
        self.problems = list(problems)
        lines = [
            f"{path}: {where}: {what}" if where else f"{path}: {what}"
            for where, what in self.problems
        ]
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DatabaseConfig(_Strict):
    url: str = "sqlite:///var/outreach.db"
    echo: bool = False


class SenderConfig(_Strict):
    """Who the notices are from: the merchant, or a firm or association acting for them."""

    name: str = Field(min_length=1)
    organisation: str | None = None
    email: str | None = None
    phone: str | None = None
    address: str | None = None
    reference_prefix: Annotated[str, Field(pattern=r"^[A-Z]{2,8}$")] = "OUT"

    @field_validator("email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        return None if v is None else _norm("email", v)

    @field_validator("phone")
    @classmethod
    def _phone(cls, v: str | None) -> str | None:
        return None if v is None else _norm("phone", v)


class TerminalConfig(_Strict):
    terminal_no: Annotated[str, Field(min_length=1, max_length=32)]  # 终端号
    sn: str | None = None  # 机身序列号
    model: str | None = None
    acquirer: Key
    agent: Key | None = None


class MerchantConfig(_Strict):
    key: Key
    name: str = Field(min_length=1)  # 商户名称
    merchant_no: Annotated[str, Field(pattern=r"^[0-9A-Za-z]{6,32}$")]  # 商户编号
    contact_name: str | None = None
    phone: str | None = None
    email: str | None = None
    address: str | None = None
    terminals: list[TerminalConfig] = Field(min_length=1)

    @field_validator("email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        return None if v is None else _norm("email", v)

    @field_validator("phone")
    @classmethod
    def _phone(cls, v: str | None) -> str | None:
        return None if v is None else _norm("phone", v)


class ContactConfig(_Strict):
    kind: Literal["email", "phone", "sms", "postal", "web_form", "webhook", "website"]
    value: str = Field(min_length=1)
    label: str = ""
    source: str = "config"

    @model_validator(mode="after")
    def _normalise(self) -> ContactConfig:
        object.__setattr__(self, "value", _norm(self.kind, self.value))
        return self


class PartyConfig(_Strict):
    role: Literal["agent", "acquirer", "association", "regulator"]
    name: str = Field(min_length=1)
    legal_name: str | None = None
    uscc: str | None = None  # 统一社会信用代码
    licence_no: str | None = None  # 支付业务许可证编号
    website: str | None = None
    sources: list[str] = Field(default_factory=lambda: ["config"])
    contacts: list[ContactConfig] = Field(default_factory=list)
    hints: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("uscc")
    @classmethod
    def _uscc(cls, v: str | None) -> str | None:
        return None if v is None else _checked(normalize_uscc, v)

    @field_validator("licence_no")
    @classmethod
    def _licence(cls, v: str | None) -> str | None:
        return None if v is None else _checked(normalize_licence, v)

    @field_validator("website")
    @classmethod
    def _website(cls, v: str | None) -> str | None:
        return None if v is None else _norm("website", v)


class StepConfig(_Strict):
    after: int = Field(ge=0, le=365)  # working days
    since: Literal["previous", "opening"] = "previous"
    to: str = Field(min_length=1)  # a role or a party key
    via: list[Literal["email", "sms", "webhook", "postal", "phone"]] = Field(min_length=1)
    mode: Literal["all", "first"] = "all"
    template: Literal[
        "cancellation_request", "reminder", "complaint_acquirer", "complaint_regulator"
    ]
    channels: dict[str, str] = Field(default_factory=dict)  # kind -> channel name


class PlanConfig(_Strict):
    steps: list[StepConfig] = Field(min_length=1)
    reply_days: int = Field(default=10, ge=1, le=90)  # deadline of the last step


class StepOverrideConfig(_Strict):
    """One case's change to one step of its plan (``[[cases.steps_override]]``).

    ``step`` counts from 1 as users do; any other key replaces the plan's value for this
    case only, and ``skip = true`` passes the step over when it falls due.
    """

    step: int = Field(ge=1)
    skip: bool = False
    after: int | None = Field(default=None, ge=0, le=365)
    since: Literal["previous", "opening"] | None = None
    to: str | None = Field(default=None, min_length=1)
    via: list[Literal["email", "sms", "webhook", "postal", "phone"]] | None = Field(
        default=None, min_length=1
    )
    mode: Literal["all", "first"] | None = None
    template: (
        Literal["cancellation_request", "reminder", "complaint_acquirer", "complaint_regulator"]
        | None
    ) = None
    channels: dict[str, str] | None = None


class CaseConfig(_Strict):
    key: Key
    merchant: Key
    goal: Literal["cancel_terminal", "refund_deposit", "reinstate_terminal"]
    plan: Key
    terminals: list[str] = Field(default_factory=list)  # terminal_no; empty = all
    opened: date | None = None
    language: Literal["zh-CN", "en"] = "zh-CN"
    statement: str | None = None  # the request in the merchant's own words
    deposit: str | None = None  # for refund_deposit, e.g. "299.00"
    steps_override: list[StepOverrideConfig] = Field(default_factory=list)

    @field_validator("deposit")
    @classmethod
    def _deposit(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\d{1,9}(\.\d{1,2})?", v):
            raise ValueError('expected an amount in yuan such as "299.00"')
        return v


class ScheduleConfig(_Strict):
    interval: Annotated[str, Field(pattern=r"^\d+[smhd]$")] | None = "15m"
    cron: str | None = None  # wins over interval when set
    timezone: str = "Asia/Shanghai"  # the zone cron is read in
    discover_every: Annotated[str, Field(pattern=r"^\d+[smhd]$")] = "1d"

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        from croniter import croniter

        if v is not None and not croniter.is_valid(v):
            raise ValueError('expected a cron expression such as "*/15 8-20 * * 1-6"')
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError('expected an IANA time zone such as "Asia/Shanghai"') from None
        return v


class DispatchConfig(_Strict):
    max_tries: int = Field(default=4, ge=1, le=20)  # per claim, through tenacity
    reschedule_after: Annotated[str, Field(pattern=r"^\d+[smhd]$")] = "30m"
    max_claims: int = Field(default=12, ge=1, le=100)  # claims before an attempt gives up
    lease_seconds: int = Field(default=120, ge=5, le=3600)
    batch: int = Field(default=200, ge=1, le=10000)
    # database work (claims, proof, records) in a helper process: see outreach/db_helper.py
    db_process: bool = False


class ProofConfig(_Strict):
    tsa_urls: list[str] = Field(default_factory=list)
    tsa_ca_file: str | None = None
    anchor_every: Annotated[str, Field(pattern=r"^\d+[smhd]$")] = "1h"


class InboundConfig(_Strict):
    """The mailbox replies and bounces arrive in (IMAP). Absent: no inbound polling."""

    imap_host: str = Field(min_length=1)
    imap_port: int | None = Field(default=None, ge=1, le=65535)  # default 993 / 143
    security: Literal["tls", "starttls", "none"] = "tls"
    username: str = Field(min_length=1)
    password_env: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")]
    mailbox: str = "INBOX"
    processed_mailbox: str | None = None  # move handled mail here; None: only flag it \\Seen
    poll_every: Annotated[str, Field(pattern=r"^\d+[smhd]$")] = "5m"
    ca_file: str | None = None

    @model_validator(mode="after")
    def _plain_text_only_locally(self) -> InboundConfig:
        local = self.imap_host.lower() in ("localhost", "::1") or self.imap_host.startswith("127.")
        if self.security == "none" and not local:
            raise ValueError(
                'security: "none" sends the password in plain text; use "tls" or "starttls"'
            )
        return self


class ReceiptsConfig(_Strict):
    """Delivery receipts: a small HTTP endpoint and/or polling of the SMS providers."""

    listen: Annotated[str, Field(pattern=r"^[^:\s]+:\d{1,5}$")] = "127.0.0.1:8025"
    public_url: str | None = None  # the URL providers call, as they see it (Twilio signs it)
    poll_every: Annotated[str, Field(pattern=r"^\d+[smhd]$")] = "15m"
    # Aliyun and Tencent sign nothing they push: with a secret token in the path
    # (/receipts/<token>/aliyun) only someone who was told the URL can post a receipt.
    path_token_env: str | None = None


class Config(_Strict):
    database: DatabaseConfig = DatabaseConfig()
    sender: SenderConfig
    merchants: list[MerchantConfig] = Field(default_factory=list)
    parties: dict[Key, PartyConfig] = Field(default_factory=dict)
    channels: dict[Key, dict[str, Any]] = Field(default_factory=dict)
    plans: dict[Key, PlanConfig] = Field(default_factory=dict)
    cases: list[CaseConfig] = Field(default_factory=list)
    schedule: ScheduleConfig = ScheduleConfig()
    dispatch: DispatchConfig = DispatchConfig()
    proof: ProofConfig = ProofConfig()
    inbound: InboundConfig | None = None
    receipts: ReceiptsConfig = ReceiptsConfig()

    # Filled by load(): where relative paths are resolved from.
    base_dir: Path = Field(default=Path("."), exclude=True)
    source_path: Path = Field(default=Path(DEFAULT_CONFIG), exclude=True)

    def database_url(self) -> str:
        """The database URL with a relative SQLite path resolved against the config's folder."""
        url = os.environ.get("OUTREACH_DATABASE_URL") or self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str((self.base_dir / url[len(prefix) :]).resolve())
        return url

    def resolve_path(self, raw: str) -> Path:
        path = Path(raw)
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def merchant(self, key: str) -> MerchantConfig:
        return next(m for m in self.merchants if m.key == key)


def _checked(fn: Any, v: str) -> str:
    try:
        return str(fn(v))
    except InvalidContact as exc:
        raise ValueError(str(exc)) from None


def _norm(kind: str, v: str) -> str:
    return _checked(lambda x: normalize(kind, x), v)


def _dotted(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _describe(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    msg = str(err.get("msg", ""))
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see config.example.toml)"
    if kind == "missing":
        return "required key is missing"
    if kind.endswith("_type"):
        got = type(err.get("input")).__name__
        return f"{msg} (got {got})"
    if kind == "literal_error":
        return msg.replace("Input should be", "expected")
    if kind == "string_pattern_mismatch":
        pattern = (err.get("ctx") or {}).get("pattern", "")
        if pattern == _KEY:
            return "expected a key of lower-case letters, digits, '-' or '_' (e.g. \"lakala\")"
        return f"does not match the expected format {pattern}"
    return msg.removeprefix("Value error, ")


def _cross_check(cfg: Config, channel_kinds: Mapping[str, frozenset[str]]) -> list[tuple[str, str]]:
    """Dangling references and combinations no single field can see."""
    problems: list[tuple[str, str]] = []
    parties = cfg.parties
    merchant_keys: dict[str, int] = {}
    for i, m in enumerate(cfg.merchants):
        if m.key in merchant_keys:
            problems.append((f"merchants[{i}].key", f"duplicate merchant key {m.key!r}"))
        merchant_keys[m.key] = i
        seen_terms: set[str] = set()
        for j, t in enumerate(m.terminals):
            where = f"merchants[{i}].terminals[{j}]"
            if t.terminal_no in seen_terms:
                problems.append((f"{where}.terminal_no", f"duplicate terminal {t.terminal_no!r}"))
            seen_terms.add(t.terminal_no)
            for field_name, role in (("acquirer", "acquirer"), ("agent", "agent")):
                ref = getattr(t, field_name)
                if ref is None:
                    continue
                if ref not in parties:
                    problems.append(
                        (
                            f"{where}.{field_name}",
                            f"no party {ref!r} in [parties] (expected one of: {', '.join(sorted(parties)) or 'none defined'})",
                        )
                    )
                elif parties[ref].role != role:
                    problems.append(
                        (
                            f"{where}.{field_name}",
                            f"party {ref!r} has role {parties[ref].role!r}, expected {role!r}",
                        )
                    )
    for name, settings in cfg.channels.items():
        if "adapter" not in settings:
            problems.append((f"channels.{name}.adapter", "required key is missing"))
        elif settings["adapter"] not in channel_kinds:
            problems.append(
                (
                    f"channels.{name}.adapter",
                    f"unknown adapter {settings['adapter']!r} (installed: {', '.join(sorted(channel_kinds))})",
                )
            )
    configured_kinds = {
        kind
        for settings in cfg.channels.values()
        for kind in channel_kinds.get(str(settings.get("adapter")), frozenset())
    }
    for pname, plan in cfg.plans.items():
        for k, step in enumerate(plan.steps):
            where = f"plans.{pname}.steps[{k}]"
            if step.to not in ROLES and step.to not in parties:
                problems.append(
                    (
                        f"{where}.to",
                        f"{step.to!r} is neither a role ({', '.join(ROLES)}) nor a party key",
                    )
                )
            for kind in step.via:
                if kind not in configured_kinds:
                    problems.append(
                        (
                            f"{where}.via",
                            f"no configured channel can send {kind!r}; add a [channels.<name>] whose adapter handles it",
                        )
                    )
            for via_kind, chan in step.channels.items():
                if chan not in cfg.channels:
                    problems.append(
                        (f"{where}.channels.{via_kind}", f"no channel {chan!r} in [channels]")
                    )
    case_keys: set[str] = set()
    for i, c in enumerate(cfg.cases):
        where = f"cases[{i}]"
        if c.key in case_keys:
            problems.append((f"{where}.key", f"duplicate case key {c.key!r}"))
        case_keys.add(c.key)
        if c.merchant not in merchant_keys:
            problems.append(
                (
                    f"{where}.merchant",
                    f"no merchant {c.merchant!r} in [[merchants]] (expected one of: {', '.join(sorted(merchant_keys)) or 'none defined'})",
                )
            )
        else:
            known = {t.terminal_no for t in cfg.merchant(c.merchant).terminals}
            for j, term in enumerate(c.terminals):
                if term not in known:
                    problems.append(
                        (
                            f"{where}.terminals[{j}]",
                            f"merchant {c.merchant!r} has no terminal {term!r}",
                        )
                    )
        if c.plan not in cfg.plans:
            problems.append(
                (
                    f"{where}.plan",
                    f"no plan {c.plan!r} in [plans] (expected one of: {', '.join(sorted(cfg.plans)) or 'none defined'})",
                )
            )
        if c.goal == "refund_deposit" and c.deposit is None:
            problems.append((f"{where}.deposit", "a refund_deposit case needs the deposit amount"))
        problems += _check_overrides(cfg, c, where, configured_kinds)
    return problems


def _check_overrides(
    cfg: Config, c: CaseConfig, where: str, configured_kinds: set[str]
) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    plan = cfg.plans.get(c.plan)
    seen: set[int] = set()
    for j, o in enumerate(c.steps_override):
        at = f"{where}.steps_override[{j}]"
        if plan is not None and o.step > len(plan.steps):
            problems.append(
                (f"{at}.step", f"plan {c.plan!r} has {len(plan.steps)} steps (counted from 1)")
            )
        if o.step in seen:
            problems.append((f"{at}.step", f"step {o.step} is overridden twice for this case"))
        seen.add(o.step)
        if o.to is not None and o.to not in ROLES and o.to not in cfg.parties:
            problems.append(
                (f"{at}.to", f"{o.to!r} is neither a role ({', '.join(ROLES)}) nor a party key")
            )
        for kind in o.via or ():
            if kind not in configured_kinds:
                problems.append((f"{at}.via", f"no configured channel can send {kind!r}"))
        for via_kind, chan in (o.channels or {}).items():
            if chan not in cfg.channels:
                problems.append((f"{at}.channels.{via_kind}", f"no channel {chan!r} in [channels]"))
    return problems


def parse(
    data: Mapping[str, Any],
    path: Path,
    channel_kinds: Mapping[str, frozenset[str]],
    channel_settings: Mapping[str, Any] | None = None,
) -> Config:
    """Validate a parsed TOML document. ``channel_kinds`` maps adapter names to the contact
    kinds they serve (from the channel registry); ``channel_settings`` maps adapter names to
    their pydantic ``Settings`` models when they declare one."""
    try:
        cfg = Config.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(path, [(_dotted(e["loc"]), _describe(e)) for e in exc.errors()]) from None
    problems = _cross_check(cfg, channel_kinds)
    for name, settings in cfg.channels.items():
        problems.extend(_engine_channel_keys(name, settings))
        model = (channel_settings or {}).get(str(settings.get("adapter")))
        if model is None:
            continue
        rest = {k: v for k, v in settings.items() if k not in ENGINE_CHANNEL_KEYS}
        try:
            model.model_validate(rest, strict=True)
        except ValidationError as exc:
            for e in exc.errors():
                problems.append((_dotted(("channels", name, *e["loc"])), _describe(e)))
        for key, value in rest.items():
            if _looks_secret(key) and not key.endswith(("_env", "_sid", "_id")):
                problems.append(
                    (
                        f"channels.{name}.{key}",
                        f'secrets never go in the file: use {key}_env = "ENV_VAR_NAME"',
                    )
                )
            elif key.endswith("_env") and not _env_names_ok(value):
                problems.append(
                    (
                        f"channels.{name}.{key}",
                        "expected the NAME of an environment variable (or a table of names)",
                    )
                )
    if problems:
        raise ConfigError(path, problems)
    return cfg.model_copy(update={"base_dir": path.parent.resolve(), "source_path": path})


ENGINE_CHANNEL_KEYS = frozenset({"adapter", "concurrency", "limits"})


def _engine_channel_keys(name: str, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Keys the engine reads itself from every [channels.<name>] table."""
    from outreach.ratelimit import parse_limit

    problems: list[tuple[str, str]] = []
    conc = settings.get("concurrency", 20)
    if not isinstance(conc, int) or isinstance(conc, bool) or not 1 <= conc <= 1000:
        problems.append((f"channels.{name}.concurrency", "expected an integer between 1 and 1000"))
    limits = settings.get("limits", [])
    if not isinstance(limits, list):
        problems.append(
            (f"channels.{name}.limits", 'expected a list such as ["1/1m", "5/1h", "10/1d"]')
        )
    else:
        for i, text in enumerate(limits):
            try:
                parse_limit(str(text))
            except ValueError as exc:
                problems.append((f"channels.{name}.limits[{i}]", str(exc)))
    return problems


def _env_names_ok(value: Any) -> bool:
    """``password_env = "NAME"`` or ``headers_env = {X-Api-Key = "NAME"}``."""
    names = value.values() if isinstance(value, dict) else [value]
    return all(isinstance(v, str) and re.fullmatch(r"[A-Z_][A-Z0-9_]*", v) for v in names)


def _looks_secret(key: str) -> bool:
    return bool(re.search(r"(password|secret|token|api_key|access_key)", key))


def config_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("OUTREACH_CONFIG") or DEFAULT_CONFIG)


def load(
    path: Path,
    channel_kinds: Mapping[str, frozenset[str]],
    channel_settings: Mapping[str, Any] | None = None,
) -> Config:
    """Read and validate ``path``. Raises :class:`ConfigError` with every problem found."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            path, [("", "file not found (use --config PATH or OUTREACH_CONFIG)")]
        ) from None
    except OSError as exc:
        raise ConfigError(path, [("", f"cannot read: {exc.strerror}")]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(path, [("", "not UTF-8 text")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [("", f"not valid TOML: {exc}")]) from None
    return parse(data, path, channel_kinds, channel_settings)
