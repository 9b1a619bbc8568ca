"""A bundled directory of acquirers and escalation bodies, every fact with its source and date.

Why bundle anything: the PBOC licence list gives identity but no contact, GSXT is behind
CAPTCHAs and real-name login, and acquirers' own sites may be unreachable (registries.md §0).
A merchant still needs 12363, the PCAC 举报 channels and whatever hotline public material
shows, offline and on day one. Why so strict about provenance: SEO pages give wrong numbers
(registries.md §0.5), so a row without ``source``, ``as_of`` and ``confidence`` is refused,
and :func:`check_staleness` names every row nobody has re-verified for a year.

The data lives in ``outreach/data/directory.toml`` (package data of the engine). This module
reads it as a file through :func:`importlib.resources.files` and imports no engine code, so it
stays an adapter like any other. Findings carry ``evidence_sha256`` = SHA-256 of the file's
bytes: the engine keeps those bytes as a blob, so the exact source text of every bundled fact
stays checkable later, even after the file changes.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from importlib.resources import files
from importlib.resources.abc import Traversable
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar

from sources.base import Fetcher, Finding, Lookup, Notice, PartyQuery
from sources.normalize import InvalidContact, normalize, normalize_licence

__all__ = [
    "CONFIDENCE",
    "Directory",
    "DirectoryContact",
    "DirectoryEntry",
    "DirectoryError",
    "DirectoryEvent",
    "DirectorySource",
    "Provenance",
    "StaleRow",
    "check_staleness",
    "default_path",
    "load_directory",
    "match_party",
    "parse_directory",
]

#: The words registries.md uses for confidence, as numbers on the Finding scale.
CONFIDENCE: dict[str, float] = {"high": 0.9, "medium-high": 0.75, "medium": 0.6, "low": 0.3}
ROLES = ("acquirer", "association", "regulator", "scheme")
CONTACT_KINDS = ("phone", "sms", "email", "postal", "web_form", "website")
EVENT_KINDS = ("licence_cancelled", "service_change", "announcement")
SCHEMA = 1

# Which directory roles a party of a given config role may be matched to by name / licence.
# Agents are never in the directory: only an explicit hints.directory.key reaches a row.
_COMPATIBLE: dict[str, frozenset[str]] = {
    "acquirer": frozenset({"acquirer"}),
    "association": frozenset({"association", "regulator", "scheme"}),
    "regulator": frozenset({"association", "regulator", "scheme"}),
    "agent": frozenset(),
}

_PROVENANCE_KEYS = frozenset({"source", "url", "as_of", "confidence", "note"})
_ORG_KEYS = _PROVENANCE_KEYS | {
    "key",
    "role",
    "short_name",
    "legal_name",
    "aliases",
    "licence_no",
    "licence_status",
    "contact",
    "event",
}
_CONTACT_KEYS = _PROVENANCE_KEYS | {"kind", "value", "label"}
_EVENT_KEYS = _PROVENANCE_KEYS | {"kind", "date", "summary", "successor"}
_KEY = re.compile(r"^[a-z][a-z0-9_]*$")


class DirectoryError(ValueError):
    """The directory file is unusable; ``problems`` names every bad row."""

    def __init__(self, origin: str, problems: list[str]) -> None:
        super().__init__(f"{origin}: " + "; ".join(problems))
        self.origin = origin
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where one row's fact comes from, when it was known to hold, and how sure we are."""

    source: str  # the exact source text (registries.md)
    url: str | None  # a full URL of the source, when one is known
    as_of: date
    confidence: float
    confidence_label: str  # high | medium-high | medium | low
    note: str = ""


@dataclass(frozen=True, slots=True)
class DirectoryContact:
    kind: str
    value: str  # normalised
    label: str
    provenance: Provenance


@dataclass(frozen=True, slots=True)
class DirectoryEvent:
    """News about an organisation, e.g. a cancelled licence (registries.md §1.5)."""

    kind: str  # one of EVENT_KINDS
    date: date
    summary: str
    successor: str | None
    provenance: Provenance


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    key: str
    role: str  # one of ROLES
    short_name: str
    legal_name: str | None
    aliases: tuple[str, ...]
    licence_no: str | None
    licence_status: str | None
    provenance: Provenance  # of the identity facts (names, licence)
    contacts: tuple[DirectoryContact, ...]
    events: tuple[DirectoryEvent, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.short_name, self.legal_name, *self.aliases) if n)


def _name_key(name: str) -> str:
    """Names compare after NFKC (full-width brackets), case folding and without spaces."""
    return "".join(unicodedata.normalize("NFKC", name).casefold().split())


@dataclass(frozen=True, slots=True)
class Directory:
    entries: tuple[DirectoryEntry, ...]
    sha256: str  # of the file's bytes: the evidence id of every finding from it
    origin: str
    data: bytes = field(default=b"", repr=False)  # the exact bytes, for the engine's blob store

    def get(self, key: str) -> DirectoryEntry | None:
        return next((e for e in self.entries if e.key == key), None)

    def by_licence(self, licence_no: str) -> DirectoryEntry | None:
        return next((e for e in self.entries if e.licence_no == licence_no), None)

    def by_name(self, name: str, roles: frozenset[str]) -> DirectoryEntry | None:
        wanted = _name_key(name)
        for entry in self.entries:
            if entry.role in roles and any(_name_key(n) == wanted for n in entry.names):
                return entry
        return None


@dataclass(frozen=True, slots=True)
class StaleRow:
    """A row whose ``as_of`` is older than the allowed age: re-verify it, then bump as_of."""

    key: str  # the org's key
    row: str  # "org", "contact phone +8695534", "event licence_cancelled 2024-11-11"
    as_of: date
    age_days: int
    confidence: str
    source: str
    url: str | None

    def describe(self) -> str:
        return f"{self.key}: {self.row}: as_of {self.as_of} ({self.age_days} days) - {self.source}"


# --------------------------------------------------------------------------- loading


def default_path() -> Traversable:
    """The bundled ``outreach/data/directory.toml``, found as package data, not imported."""
    return files("outreach") / "data" / "directory.toml"


def load_directory(path: str | PathLike[str] | Traversable | None = None) -> Directory:
    """Read and validate a directory file (default: the bundled one).

    Raises :class:`DirectoryError` naming every bad row.
    """
    target: Traversable = default_path() if path is None else _as_traversable(path)
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise DirectoryError(str(target), [f"cannot read: {exc}"]) from exc
    return parse_directory(data, origin=str(target))


def _as_traversable(path: str | PathLike[str] | Traversable) -> Traversable:
    if isinstance(path, str | PathLike):
        return Path(path)
    return path


def parse_directory(data: bytes, *, origin: str = "directory.toml") -> Directory:
    """Validate directory TOML bytes; pure, so tests and ``directory check`` share it."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DirectoryError(origin, [f"not valid UTF-8 TOML: {exc}"]) from exc
    problems: list[str] = []
    unknown = set(doc) - {"schema", "org"}
    if unknown:
        problems.append(f"unknown top-level keys {sorted(unknown)}")
    if doc.get("schema") != SCHEMA:
        problems.append(f"schema must be {SCHEMA}, got {doc.get('schema')!r}")
    orgs = doc.get("org")
    if not isinstance(orgs, list) or not orgs:
        problems.append("no [[org]] rows")
        orgs = []
    entries: list[DirectoryEntry] = []
    for index, raw in enumerate(orgs, 1):
        entry = _entry(raw, index, problems)
        if entry is not None:
            entries.append(entry)
    _check_unique(entries, problems)
    if problems:
        raise DirectoryError(origin, problems)
    return Directory(tuple(entries), hashlib.sha256(data).hexdigest(), origin, data)


def _entry(raw: Any, index: int, problems: list[str]) -> DirectoryEntry | None:
    if not isinstance(raw, Mapping):
        problems.append(f"org #{index}: not a table")
        return None
    key = raw.get("key")
    row = f"org {key!r}" if isinstance(key, str) else f"org #{index}"
    before = len(problems)
    _unknown(raw, _ORG_KEYS, row, problems)
    if not isinstance(key, str) or not _KEY.match(key):
        problems.append(f"{row}: key must match {_KEY.pattern}")
    role = raw.get("role")
    if role not in ROLES:
        problems.append(f"{row}: role must be one of {', '.join(ROLES)}, got {role!r}")
    short_name = _text(raw, "short_name", row, problems, required=True)
    legal_name = _text(raw, "legal_name", row, problems)
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        problems.append(f"{row}: aliases must be a list of names")
        aliases = []
    licence_no: str | None = None
    if "licence_no" in raw:
        try:
            licence_no = normalize_licence(str(raw["licence_no"]))
        except InvalidContact as exc:
            problems.append(f"{row}: {exc}")
    licence_status = _text(raw, "licence_status", row, problems)
    if licence_no and not licence_status:
        problems.append(f"{row}: licence_no needs a licence_status")
    provenance = _provenance(raw, row, problems)
    contacts = [
        _contact(item, f"{row} contact #{i}", problems)
        for i, item in enumerate(_rows(raw, "contact", row, problems), 1)
    ]
    events = [
        _event(item, f"{row} event #{i}", problems)
        for i, item in enumerate(_rows(raw, "event", row, problems), 1)
    ]
    if len(problems) > before or provenance is None:
        return None
    return DirectoryEntry(
        key=str(key),
        role=str(role),
        short_name=short_name or "",
        legal_name=legal_name,
        aliases=tuple(aliases),
        licence_no=licence_no,
        licence_status=licence_status,
        provenance=provenance,
        contacts=tuple(c for c in contacts if c is not None),
        events=tuple(e for e in events if e is not None),
    )


def _rows(raw: Mapping[str, Any], name: str, row: str, problems: list[str]) -> list[Any]:
    value = raw.get(name, [])
    if not isinstance(value, list):
        problems.append(f"{row}: {name} must be an array of tables ([[org.{name}]])")
        return []
    return value


def _contact(raw: Any, row: str, problems: list[str]) -> DirectoryContact | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{row}: not a table")
        return None
    kind, value = raw.get("kind"), raw.get("value")
    if isinstance(kind, str) and isinstance(value, str):
        row = f"{row} ({kind} {value!r})"
    before = len(problems)
    _unknown(raw, _CONTACT_KEYS, row, problems)
    normalised = ""
    if kind not in CONTACT_KINDS:
        problems.append(f"{row}: kind must be one of {', '.join(CONTACT_KINDS)}")
    elif not isinstance(value, str):
        problems.append(f"{row}: value is missing")
    else:
        try:
            normalised = normalize(kind, value)
        except InvalidContact as exc:
            problems.append(f"{row}: {exc}")
    label = _text(raw, "label", row, problems) or ""
    provenance = _provenance(raw, row, problems)
    if len(problems) > before or provenance is None:
        return None
    return DirectoryContact(str(kind), normalised, label, provenance)


def _event(raw: Any, row: str, problems: list[str]) -> DirectoryEvent | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{row}: not a table")
        return None
    before = len(problems)
    _unknown(raw, _EVENT_KEYS, row, problems)
    kind = raw.get("kind")
    if kind not in EVENT_KINDS:
        problems.append(f"{row}: kind must be one of {', '.join(EVENT_KINDS)}")
    when = _date(raw, "date", row, problems)
    summary = _text(raw, "summary", row, problems, required=True)
    successor = _text(raw, "successor", row, problems)
    provenance = _provenance(raw, row, problems)
    if len(problems) > before or provenance is None or when is None:
        return None
    return DirectoryEvent(str(kind), when, summary or "", successor, provenance)


def _provenance(raw: Mapping[str, Any], row: str, problems: list[str]) -> Provenance | None:
    source = _text(raw, "source", row, problems, required=True)
    as_of = _date(raw, "as_of", row, problems)
    label = raw.get("confidence")
    if label not in CONFIDENCE:
        problems.append(f"{row}: confidence must be one of {', '.join(CONFIDENCE)}, got {label!r}")
    url = _text(raw, "url", row, problems)
    if url is not None:
        try:
            url = normalize("website", url)
        except InvalidContact as exc:
            problems.append(f"{row}: url: {exc}")
    note = _text(raw, "note", row, problems) or ""
    if source is None or as_of is None or label not in CONFIDENCE:
        return None
    return Provenance(source, url, as_of, CONFIDENCE[label], str(label), note)


def _text(
    raw: Mapping[str, Any], name: str, row: str, problems: list[str], *, required: bool = False
) -> str | None:
    value = raw.get(name)
    if value is None:
        if required:
            problems.append(f"{row}: {name} is missing")
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{row}: {name} must be a non-empty string")
        return None
    return value.strip()


def _date(raw: Mapping[str, Any], name: str, row: str, problems: list[str]) -> date | None:
    value = raw.get(name)
    if value is None:
        problems.append(f"{row}: {name} is missing")
        return None
    # A TOML local date (2024-11-11), not a string and not a date-time: staleness is in days.
    if not isinstance(value, date) or isinstance(value, datetime):
        problems.append(f"{row}: {name} must be a TOML date like 2024-11-11, got {value!r}")
        return None
    return value


def _unknown(
    raw: Mapping[str, Any], allowed: frozenset[str], row: str, problems: list[str]
) -> None:
    extra = set(raw) - allowed
    if extra:
        problems.append(f"{row}: unknown keys {sorted(extra)}")


def _check_unique(entries: list[DirectoryEntry], problems: list[str]) -> None:
    """Two rows with one key, licence or name would make matching a coin toss."""
    seen: dict[str, tuple[int, str]] = {}
    for index, entry in enumerate(entries):
        ids = [f"key {entry.key}"] + [f"name {_name_key(n)}" for n in entry.names]
        if entry.licence_no:
            ids.append(f"licence {entry.licence_no}")
        for ident in dict.fromkeys(ids):
            first, other = seen.setdefault(ident, (index, entry.key))
            if first != index:
                problems.append(f"org {entry.key!r}: duplicate {ident} (also org {other!r})")


# --------------------------------------------------------------------------- staleness


def check_staleness(
    today: date, max_age_days: int = 365, *, directory: Directory | None = None
) -> list[StaleRow]:
    """Every row (identity, contact, event) whose ``as_of`` is more than ``max_age_days`` old.

    ``today`` is passed in so the check is pure and testable; ``directory`` defaults to the
    bundled file (loading it raises :class:`DirectoryError` if it is broken).
    """
    d = load_directory() if directory is None else directory
    stale: list[StaleRow] = []

    def check(key: str, row: str, p: Provenance) -> None:
        age = (today - p.as_of).days
        if age > max_age_days:
            stale.append(StaleRow(key, row, p.as_of, age, p.confidence_label, p.source, p.url))

    for entry in d.entries:
        check(entry.key, "org", entry.provenance)
        for contact in entry.contacts:
            check(entry.key, f"contact {contact.kind} {contact.value}", contact.provenance)
        for event in entry.events:
            check(entry.key, f"event {event.kind} {event.date}", event.provenance)
    return sorted(stale, key=lambda s: (s.as_of, s.key, s.row))


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True, slots=True)
class _Match:
    entry: DirectoryEntry | None
    notices: tuple[Notice, ...] = ()


def match_party(directory: Directory, party: PartyQuery, source: str = "directory") -> _Match:
    """Find the row for ``party``: explicit key, then licence number, then names.

    An explicit ``hints.directory.key`` wins and may name any row (that is how a party points
    at ``pboc`` or ``pcac``). Otherwise only rows of a compatible role are considered, so an
    agent called "拉卡拉服务中心" never inherits the acquirer's hotline.
    """

    def notice(kind: str, message: str, **extra: Any) -> Notice:
        return Notice(party=party.key, kind=kind, message=message, source=source, **extra)

    hint: Any = party.hints.get("directory")
    if hint is not None:
        key = hint.get("key") if isinstance(hint, Mapping) else None
        if not isinstance(key, str):
            return _Match(None, (notice("error", "hints.directory.key must be a string"),))
        entry = directory.get(key)
        if entry is None:
            known = ", ".join(e.key for e in directory.entries)
            msg = f"hints.directory.key {key!r} is not in the directory (known: {known})"
            return _Match(None, (notice("error", msg),))
        return _Match(entry)

    roles = _COMPATIBLE.get(party.role, frozenset())
    by_licence: DirectoryEntry | None = None
    if party.licence_no:
        try:
            by_licence = directory.by_licence(normalize_licence(party.licence_no))
        except InvalidContact:
            by_licence = None
    by_name = next(
        (
            e
            for n in (party.legal_name, party.name)
            if n and (e := directory.by_name(n, roles)) is not None
        ),
        None,
    )
    if by_licence is not None and by_licence.role not in roles:
        msg = (
            f"licence {by_licence.licence_no} belongs to {by_licence.short_name} "
            f"({by_licence.role}), but {party.name} is configured as {party.role}"
        )
        return _Match(None, (notice("manual_task", msg, fields=("role", "licence_no")),))
    if by_licence is not None and by_name is not None and by_licence is not by_name:
        msg = (
            f"licence {by_licence.licence_no} belongs to {by_licence.legal_name} in the "
            f"directory, but the name {party.name!r} matches {by_name.legal_name or by_name.key}; "
            "using the licence"
        )
        return _Match(by_licence, (notice("manual_task", msg, fields=("licence_no", "name")),))
    return _Match(by_licence or by_name)


class DirectorySource:
    """Bundled, sourced facts about acquirers and escalation bodies (no network).

    ``path`` overrides the bundled file (tests, a locally curated copy); ``clock`` gives
    ``seen_at``. The file is read on first use, so a broken file becomes an error notice
    during discovery instead of a crash when adapters are registered.
    """

    name: ClassVar[str] = "directory"

    def __init__(
        self,
        path: str | PathLike[str] | Traversable | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._path = path
        self._clock = clock or (lambda: datetime.now(UTC))
        self._directory: Directory | None = None

    def directory(self) -> Directory:
        if self._directory is None:
            self._directory = load_directory(self._path)
        return self._directory

    async def lookup(self, party: PartyQuery, fetch: Fetcher) -> Lookup:
        try:
            directory = self.directory()
        except DirectoryError as exc:
            return Lookup(notices=(Notice(party.key, "error", str(exc), self.name),))
        match = match_party(directory, party, self.name)
        if match.entry is None:
            return Lookup(notices=match.notices)
        findings, notices = self._facts(party, match.entry, directory.sha256)
        return Lookup(findings=findings, notices=match.notices + notices)

    def _facts(
        self, party: PartyQuery, entry: DirectoryEntry, sha256: str
    ) -> tuple[tuple[Finding, ...], tuple[Notice, ...]]:
        now = self._clock()

        def finding(kind: str, value: str, label: str, p: Provenance) -> Finding:
            return Finding(
                party=party.key,
                kind=kind,
                value=value,
                label=label,
                source=self.name,
                url=p.url,
                seen_at=now,
                evidence_sha256=sha256,
                confidence=p.confidence,
                as_of=p.as_of.isoformat(),
            )

        def notice(kind: str, message: str, p: Provenance, **data: Any) -> Notice:
            return Notice(
                party=party.key,
                kind=kind,
                message=message,
                source=self.name,
                url=p.url,
                data={
                    "directory_key": entry.key,
                    "source": p.source,
                    "as_of": p.as_of.isoformat(),
                    "confidence": p.confidence,
                    **data,
                },
            )

        findings: list[Finding] = []
        notices: list[Notice] = []
        p = entry.provenance
        if entry.licence_no:
            findings.append(finding("licence", entry.licence_no, "支付业务许可证编号", p))
            status = entry.licence_status or ""
            notices.append(
                notice(
                    "fact",
                    f"{entry.legal_name or entry.short_name} {entry.licence_no}: {status}",
                    p,
                    licence_no=entry.licence_no,
                    licence_status=status,
                    legal_name=entry.legal_name,
                )
            )
        findings.extend(finding(c.kind, c.value, c.label, c.provenance) for c in entry.contacts)
        for event in entry.events:
            notices.append(
                notice(
                    "fact",
                    f"{event.date}: {event.summary}",
                    event.provenance,
                    event=event.kind,
                    date=event.date.isoformat(),
                )
            )
            if event.successor:
                notices.append(
                    notice(
                        "successor",
                        f"{entry.short_name}: successor {event.successor}",
                        event.provenance,
                        name=event.successor,
                    )
                )
        if not entry.contacts:
            notices.append(
                Notice(
                    party=party.key,
                    kind="manual_task",
                    message=f"the directory has no sourced contact for {entry.short_name}",
                    source=self.name,
                    advice="find the 联系我们 / 投诉 page of its official site or app and add it "
                    "as hints.official_site.pages or a declared contact",
                    fields=("website", "contacts"),
                )
            )
        return tuple(findings), tuple(notices)
