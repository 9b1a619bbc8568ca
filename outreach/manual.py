"""Letters posted and calls made by a person: recording them as proof on the case chain.

The ``letter`` and ``manual`` channels leave their attempts ``pending``: a printed letter is
not sent until someone hands it to a courier, and a call task is not done until someone has
called. These functions record what the person did, each as one event on the case's hash
chain in the caller's transaction, with every file they bring (a photo of the courier's
receipt, a call recording) stored as a blob whose SHA-256 the event carries:

- :func:`record_letter_posted` turns the case's pending letter into ``sent`` and chains
  ``letter_posted`` with the carrier, the tracking number and the hash of the exact letter
  that was printed, so the tracking number is tied to those bytes.
- :func:`record_manual_contact` chains ``manual_contact`` (a call or a visit) and completes the
  matching call task. Outcomes and what they do to the task:

  ============  ================================================================================
  reached       task ``sent``: the notice was conveyed by phone. Event: ``reached`` true.
  promised      task ``sent``; ``reached`` and ``promised`` true.
  refused       task ``sent`` (they heard it and said no); ``reached`` and ``refused`` true, a
                fact the ladder and a complaint handler both need.
  no-answer     task stays ``pending`` and is due again the next working day at 09:30 Beijing
                time (``call_again_from``); the third unanswered call of the same task makes it
                ``failed``. The number is *not* marked bad: silence is not a dead line.
  ============  ================================================================================

  A visit (``--via visit``) completes a call task only when named with ``--attempt``: the task
  is a script for one telephone number, and a visit is a different act.

Everything is validated before anything is written; a :class:`ManualError` means nothing was
written (the CLI exits 2).
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from outreach import clock
from outreach.proof import format_at, record_event, store_blob
from outreach.store import Attempt, Case, Event, Notice, Party, no_case
from outreach.store import find_case as store_find_case
from outreach.workdays import add_working_days
from sources.normalize import InvalidContact, normalize_phone

#: One evidence file at most this big: blobs live in the database, and a one-hour call
#: recording is about 6 MB as AMR and 30 MB as M4A.
MAX_EVIDENCE_BYTES = 50 * 1024 * 1024
#: Unanswered calls of one task before it is given up as ``failed``.
NO_ANSWER_LIMIT = 3
#: A no-answer task is due again on the next working day at this Beijing time.
CALL_AGAIN_AT = time(9, 30)
#: How far in the future a declared time may be (clock skew between phone and computer).
FUTURE_SLACK = timedelta(minutes=10)

OUTCOMES = ("no-answer", "refused", "promised", "reached")
VIAS = ("phone", "visit")

CARRIERS: dict[str, str] = {
    "EMS": "中国邮政速递物流 EMS",
    "CHINAPOST": "中国邮政 挂号信/包裹",
    "SF": "顺丰速运",
    "JD": "京东物流",
    "YTO": "圆通速递",
    "ZTO": "中通快递",
    "STO": "申通快递",
    "YUNDA": "韵达快递",
}

# UPU S10: 2-letter service indicator, 8-digit serial, check digit, ISO country code.
_S10 = re.compile(r"^([A-Z]{2})(\d{8})(\d)([A-Z]{2})$")
_S10_WEIGHTS = (8, 6, 4, 2, 3, 5, 9, 7)
_DIGITS_ONLY = ("ZTO", "STO", "YUNDA")
# Formats without a public check digit: only their shape can be checked.
_FORMATS: dict[str, tuple[tuple[re.Pattern[str], str], ...]] = {
    "EMS": ((re.compile(r"^[19]\d{12}$"), "13 digits starting with 1 or 9 (domestic)"),),
    "CHINAPOST": (
        (re.compile(r"^[19]\d{12}$"), "13 digits starting with 1 or 9"),
        (re.compile(r"^[A-Z]{2}\d{11}$"), "2 letters and 11 digits (domestic registered mail)"),
    ),
    "SF": (
        (re.compile(r"^SF\d{13}$"), "SF and 13 digits"),
        (re.compile(r"^\d{12}$"), "12 digits (older waybills)"),
    ),
    "JD": ((re.compile(r"^JD[0-9A-Z]{2}\d{11}$"), "JD, 2 letters or digits, 11 digits"),),
    "YTO": ((re.compile(r"^YT\d{13}$"), "YT and 13 digits"),),
    "ZTO": ((re.compile(r"^\d{12,15}$"), "12 to 15 digits"),),
    "STO": ((re.compile(r"^\d{12,15}$"), "12 to 15 digits"),),
    "YUNDA": ((re.compile(r"^\d{13,15}$"), "13 to 15 digits"),),
}

_MEDIA_BY_EXT = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".heic": "image/heic",
    ".webp": "image/webp",
    ".pdf": "application/pdf",
    ".amr": "audio/amr",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".mp4": "video/mp4",
    ".mov": "video/quicktime",
    ".txt": "text/plain; charset=utf-8",
}


class ManualError(Exception):
    """A request that cannot be carried out as given. Nothing was written."""


# ---------------------------------------------------------------------- tracking numbers


@dataclass(frozen=True, slots=True)
class Tracking:
    carrier: str  # a key of CARRIERS
    number: str  # normalised: upper case, no spaces or dashes
    check: str  # "s10" (check digit verified) | "format" (shape only: no public check digit)


def s10_check_digit(serial: str) -> int:
    """The UPU S10 check digit of an 8-digit serial (weights 8 6 4 2 3 5 9 7, mod 11)."""
    total = sum(int(d) * w for d, w in zip(serial, _S10_WEIGHTS, strict=True))
    check = 11 - total % 11
    return {10: 0, 11: 5}.get(check, check)


def detect_carrier(number: str) -> str | None:
    """The carrier a normalised number's shape names, or None when digits alone cannot tell."""
    s10 = _S10.match(number)
    if s10:
        return "EMS" if s10.group(1).startswith("E") else "CHINAPOST"
    for prefix, carrier in (("SF", "SF"), ("JD", "JD"), ("YT", "YTO")):
        if number.startswith(prefix):
            return carrier
    if re.fullmatch(r"[A-Z]{2}\d{11}", number):
        return "CHINAPOST"
    return None


def parse_tracking(raw: str, carrier: str | None = None) -> Tracking:
    """Validate a courier's tracking number; raise :class:`ManualError` saying what is wrong.

    S10 numbers (EMS and China Post, e.g. ``EA473124829CN``) have their check digit verified,
    which catches every single mistyped digit; the others are checked for shape only, because
    their carriers publish no check digit.
    """
    number = re.sub(r"[\s\-]", "", raw).upper()
    if not number:
        raise ManualError("--tracking is empty")
    if not re.fullmatch(r"[A-Z0-9]{6,32}", number):
        raise ManualError(f"tracking number {raw!r} has characters no carrier uses")
    if carrier is not None:
        name = carrier.strip().upper()
        if name not in CARRIERS:
            raise ManualError(
                f"unknown carrier {carrier!r} (expected one of: {', '.join(CARRIERS)})"
            )
    else:
        found = detect_carrier(number)
        if found is None:
            raise ManualError(
                f"cannot tell the carrier of {number} from the number alone; "
                f"name it with --carrier ({', '.join(CARRIERS)})"
            )
        name = found
    s10 = _S10.match(number)
    if s10 and name in ("EMS", "CHINAPOST"):
        service, serial, check, _country = s10.groups()
        if name == "EMS" and not service.startswith("E"):
            raise ManualError(
                f"{number}: EMS item numbers start with E (EA-EZ); {service} is another postal "
                "service, use --carrier CHINAPOST"
            )
        expected = s10_check_digit(serial)
        if int(check) != expected:
            raise ManualError(
                f"{number}: the check digit is {check} but serial {serial} gives {expected} "
                "(UPU S10); a digit was probably mistyped"
            )
        return Tracking(name, number, "s10")
    for pattern, _what in _FORMATS[name]:
        if pattern.match(number):
            return Tracking(name, number, "format")
    shapes = "; ".join(what for _p, what in _FORMATS[name])
    if name in ("EMS", "CHINAPOST"):
        shapes = f"2 letters, 9 digits, 2 letters with a valid check digit (e.g. EA473124829CN); {shapes}"
    raise ManualError(f"{number} is not a {name} tracking number (expected {shapes})")


# ---------------------------------------------------------------------- evidence files


@dataclass(frozen=True, slots=True)
class EvidenceFile:
    name: str  # the file's own name, without the folder it came from
    data: bytes
    media_type: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "size": len(self.data),
            "media_type": self.media_type,
        }


def guess_media_type(name: str, data: bytes) -> str:
    """What the bytes are: their signature first (a renamed file stays what it is), then the
    file name's extension, else ``application/octet-stream``."""
    head = data[:16]
    signatures = (
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"GIF8", "image/gif"),
        (b"%PDF-", "application/pdf"),
        (b"#!AMR-WB\n", "audio/amr-wb"),
        (b"#!AMR\n", "audio/amr"),
        (b"ID3", "audio/mpeg"),
        (b"OggS", "audio/ogg"),
        (b"fLaC", "audio/flac"),
    )
    for magic, media in signatures:
        if head.startswith(magic):
            return media
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1"):
            return "image/heic"
        if brand in (b"M4A ", b"M4B "):
            return "audio/mp4"
        if brand == b"qt  ":
            return "video/quicktime"
        return "video/mp4" if not name.lower().endswith(".m4a") else "audio/mp4"
    ext = Path(name).suffix.lower()
    if ext in _MEDIA_BY_EXT:
        return _MEDIA_BY_EXT[ext]
    guessed, _enc = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def _size(n: int) -> str:
    return f"{n / 1048576:.1f} MB" if n >= 1048576 else f"{n / 1024:.1f} KB"


def read_evidence(path: Path, *, limit: int | None = None) -> EvidenceFile:
    """Read one evidence file whole, refusing what is missing, empty or too big."""
    cap = MAX_EVIDENCE_BYTES if limit is None else limit
    if not path.exists():
        raise ManualError(f"evidence file not found: {path}")
    if not path.is_file():
        raise ManualError(f"evidence must be a file: {path}")
    size = path.stat().st_size
    if size > cap:
        raise ManualError(
            f"{path}: {_size(size)} is over the {_size(cap)} limit for one evidence file; "
            "trim or compress it (AMR or M4A keeps a call recording small)"
        )
    if size == 0:
        raise ManualError(f"{path}: the file is empty")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManualError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > cap:
        raise ManualError(f"{path}: grew over the {_size(cap)} limit while being read")
    return EvidenceFile(path.name, data, guess_media_type(path.name, data))


def _store_evidence(session: Session, files: Sequence[EvidenceFile]) -> list[dict[str, Any]]:
    out = []
    for f in files:
        store_blob(session, f.data, f.media_type)
        out.append(f.describe())
    return out


# ---------------------------------------------------------------------- lookups


def find_case(session: Session, ref: str) -> Case:
    case = store_find_case(session, ref)
    if case is None:
        raise ManualError(no_case(ref))
    return case


def find_party(session: Session, key: str) -> Party:
    party = session.scalars(select(Party).where(Party.key == key)).one_or_none()
    if party is None:
        known = ", ".join(session.scalars(select(Party.key).order_by(Party.key)))
        raise ManualError(f"no party {key!r} (known: {known or 'none'})")
    return party


def _attempt_events(session: Session, attempt_id: int, kind: str) -> list[dict[str, Any]]:
    bodies = session.scalars(
        select(Event.body)
        .where(Event.attempt_id == attempt_id, Event.kind == kind)
        .order_by(Event.id)
    ).all()
    return [json.loads(b)["data"] for b in bodies]


def _task_file(session: Session, attempt_id: int) -> str | None:
    """Where the channel wrote the printable letter or call script (its ``pending`` receipt)."""
    for data in reversed(_attempt_events(session, attempt_id, "pending")):
        path = (data.get("transcript") or {}).get("path")
        if path:
            return str(path)
    return None


def _no_answers(session: Session, attempt_id: int) -> int:
    return sum(
        1
        for d in _attempt_events(session, attempt_id, "manual_contact")
        if d.get("outcome") == "no-answer"
    )


@dataclass
class Task:
    """A pending letter or call task, for ``outreach letter list`` / ``outreach manual list``."""

    attempt: int
    case: str
    case_key: str
    party: str
    party_name: str
    kind: str
    channel: str
    recipient: str
    step: int  # 1-based ladder step
    template: str
    pending_since: datetime
    file: str | None
    no_answers: int = 0
    due: datetime | None = None  # a call task after an unanswered call: when to call again


def pending_tasks(session: Session, kind: str, case_ref: str | None = None) -> list[Task]:
    """Pending attempts of ``kind`` (``postal`` letters or ``phone`` calls), oldest first."""
    stmt = (
        select(Attempt, Notice, Case, Party)
        .join(Notice, Attempt.notice_id == Notice.id)
        .join(Case, Notice.case_id == Case.id)
        .join(Party, Notice.party_id == Party.id)
        .where(Attempt.kind == kind, Attempt.state == "pending")
        .order_by(Case.id, Attempt.id)
    )
    if case_ref is not None:
        stmt = stmt.where(Case.id == find_case(session, case_ref).id)
    tasks = []
    for a, n, c, p in session.execute(stmt).all():
        misses = _no_answers(session, a.id) if kind == "phone" else 0
        tasks.append(
            Task(
                attempt=a.id,
                case=c.reference,
                case_key=c.key,
                party=p.key,
                party_name=p.legal_name or p.name,
                kind=a.kind,
                channel=a.channel,
                recipient=a.recipient,
                step=n.step + 1,
                template=n.template,
                pending_since=a.updated_at,
                file=_task_file(session, a.id),
                no_answers=misses,
                due=a.next_try_at if misses else None,
            )
        )
    return tasks


# ---------------------------------------------------------------------- recording


@dataclass
class Recorded:
    """What was chained: the event's place and hash, and what happened to the task."""

    chain: str
    seq: int
    hash: str
    attempt: int | None
    attempt_state: str | None
    notes: list[str] = field(default_factory=list)


def _moment(declared: datetime | None, now: datetime, what: str) -> datetime:
    if declared is None:
        return now
    if declared.tzinfo is None:
        raise ManualError(f"{what}: a time without a time zone")
    if declared > now + FUTURE_SLACK:
        raise ManualError(f"{what} {declared.isoformat()} is in the future")
    return declared


def _describe_letters(rows: Sequence[tuple[Attempt, Party]]) -> str:
    return "; ".join(f"attempt {a.id} to {p.key} ({a.recipient})" for a, p in rows)


def record_letter_posted(
    session: Session,
    case_ref: str,
    tracking: Tracking,
    *,
    attempt_id: int | None = None,
    receipt: EvidenceFile | None = None,
    posted_at: datetime | None = None,
    now: datetime | None = None,
) -> Recorded:
    """The letter went to the courier: attempt ``sent``, ``letter_posted`` chained."""
    now = now or clock.now()
    posted = _moment(posted_at, now, "--at")
    case = find_case(session, case_ref)
    rows = [
        (a, p)
        for a, p in session.execute(
            select(Attempt, Party)
            .join(Notice, Attempt.notice_id == Notice.id)
            .join(Party, Notice.party_id == Party.id)
            .where(Notice.case_id == case.id, Attempt.kind == "postal")
            .order_by(Attempt.id)
        ).all()
    ]
    if attempt_id is not None:
        chosen = [(a, p) for a, p in rows if a.id == attempt_id]
        if not chosen:
            raise ManualError(f"attempt {attempt_id} is not a letter of case {case.reference}")
        a, party = chosen[0]
        if a.state != "pending":
            raise ManualError(
                f"attempt {a.id} is {a.state!r}, not waiting for a tracking number"
                + (f" (recorded tracking {a.provider_id})" if a.state == "sent" else "")
            )
    else:
        waiting = [(a, p) for a, p in rows if a.state == "pending"]
        if not waiting:
            raise ManualError(
                f"no letter of case {case.reference} is waiting for a tracking number "
                "(see outreach letter list)"
            )
        if len(waiting) > 1:
            raise ManualError(
                f"{len(waiting)} letters of case {case.reference} wait for a tracking number: "
                f"{_describe_letters(waiting)}; choose one with --attempt"
            )
        a, party = waiting[0]
    notes = [
        f"tracking {tracking.number} is also recorded for attempt {other} (several letters in one envelope?)"
        for other in session.scalars(
            select(Attempt.id).where(
                Attempt.kind == "postal",
                Attempt.provider_id == tracking.number,
                Attempt.id != a.id,
            )
        )
    ]
    data: dict[str, Any] = {
        "attempt": a.id,
        "party": party.key,
        "recipient": a.recipient,
        "carrier": tracking.carrier,
        "carrier_name": CARRIERS[tracking.carrier],
        "tracking": tracking.number,
        "tracking_check": tracking.check,
        "posted_at": format_at(posted),
        "payload_sha256": a.payload_sha256,
        "letter_file": _task_file(session, a.id),
        "receipt": _store_evidence(session, [receipt])[0] if receipt is not None else None,
    }
    a.state = "sent"
    a.provider_id = tracking.number
    a.last_error = None
    a.updated_at = now
    ev = record_event(
        session, case.chain, "letter_posted", data, case_id=case.id, attempt_id=a.id, at=now
    )
    session.flush()
    return Recorded(case.chain, ev.seq, ev.hash, a.id, a.state, notes)


def _pick_call(
    session: Session,
    case: Case,
    party: Party,
    via: str,
    number: str | None,
    attempt_id: int | None,
    notes: list[str],
) -> Attempt | None:
    rows = session.scalars(
        select(Attempt)
        .join(Notice, Attempt.notice_id == Notice.id)
        .where(
            Notice.case_id == case.id,
            Notice.party_id == party.id,
            Attempt.kind == "phone",
        )
        .order_by(Attempt.id)
    ).all()
    if attempt_id is not None:
        chosen = [a for a in rows if a.id == attempt_id]
        if not chosen:
            raise ManualError(
                f"attempt {attempt_id} is not a call task of case {case.reference} "
                f"for party {party.key!r}"
            )
        if chosen[0].state != "pending":
            raise ManualError(f"attempt {attempt_id} is {chosen[0].state!r}, not a pending task")
        if number is not None and chosen[0].recipient != number:
            raise ManualError(
                f"attempt {attempt_id} is the call to {chosen[0].recipient}, not {number}"
            )
        return chosen[0]
    if via != "phone":
        return None
    waiting = [a for a in rows if a.state == "pending"]
    matching = [a for a in waiting if number is None or a.recipient == number]
    if len(matching) > 1:
        listed = "; ".join(f"attempt {a.id} ({a.recipient})" for a in matching)
        raise ManualError(
            f"{len(matching)} call tasks of case {case.reference} for {party.key!r} are pending: "
            f"{listed}; choose one with --attempt or --number"
        )
    if not matching and waiting:
        notes.append(
            "call tasks for other numbers stay pending: "
            + "; ".join(f"attempt {a.id} ({a.recipient})" for a in waiting)
        )
    return matching[0] if matching else None


def record_manual_contact(
    session: Session,
    case_ref: str,
    *,
    party: str,
    via: str,
    outcome: str,
    note: str,
    number: str | None = None,
    evidence: Sequence[EvidenceFile] = (),
    attempt_id: int | None = None,
    contacted_at: datetime | None = None,
    now: datetime | None = None,
) -> Recorded:
    """A call or visit happened: ``manual_contact`` chained, the matching call task updated."""
    now = now or clock.now()
    if via not in VIAS:
        raise ManualError(f"--via must be one of {', '.join(VIAS)}")
    if outcome not in OUTCOMES:
        raise ManualError(f"--outcome must be one of {', '.join(OUTCOMES)}")
    text = note.strip()
    if not text:
        raise ManualError("--note is empty: say who you spoke to and what they said")
    when = _moment(contacted_at, now, "--at")
    if number is not None:
        if via != "phone":
            raise ManualError("--number applies to --via phone only")
        try:
            number = normalize_phone(number)
        except InvalidContact as exc:
            raise ManualError(f"--number: {exc}") from None
    case = find_case(session, case_ref)
    p = find_party(session, party)
    notes: list[str] = []
    task = _pick_call(session, case, p, via, number, attempt_id, notes)
    if via == "phone" and number is None:
        if task is None:
            raise ManualError(
                f"no pending call task of case {case.reference} for {p.key!r}: "
                "give --number (which number did you call?)"
            )
        number = task.recipient
    data: dict[str, Any] = {
        "party": p.key,
        "party_name": p.legal_name or p.name,
        "via": via,
        "outcome": outcome,
        "reached": outcome != "no-answer",
        "promised": outcome == "promised",
        "refused": outcome == "refused",
        "note": text,
        "number": number,
        "contacted_at": format_at(when),
        "evidence": _store_evidence(session, evidence),
        "attempt": task.id if task is not None else None,
        "attempt_state": None,
    }
    if task is not None:
        if outcome == "no-answer":
            misses = _no_answers(session, task.id) + 1
            data["no_answers"] = misses
            if misses >= NO_ANSWER_LIMIT:
                task.state = "failed"
                task.last_error = f"no answer on {misses} calls"
                data["gave_up"] = task.last_error
            else:
                day = add_working_days(clock.today(when), 1)
                again = datetime.combine(day, CALL_AGAIN_AT, clock.CST)
                task.next_try_at = again
                data["call_again_from"] = format_at(again)
        else:
            task.state = "sent"
            task.last_error = None
        task.updated_at = now
        data["attempt_state"] = task.state
    ev = record_event(
        session,
        case.chain,
        "manual_contact",
        data,
        case_id=case.id,
        attempt_id=task.id if task is not None else None,
        at=now,
    )
    session.flush()
    return Recorded(case.chain, ev.seq, ev.hash, data["attempt"], data["attempt_state"], notes)
