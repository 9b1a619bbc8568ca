"""Evidence bundles: one case's proof in a zip that checks itself, offline, without us.

Why a bundle at all: a complaint handler (12363), an arbitrator or an internet court must be
able to check the evidence without trusting this program or its operator. So the bundle
carries everything a check needs and nothing else: the case's hash chain exactly as stored,
the exact bytes that were sent and received, and for every RFC 3161 timestamp that covers
the case the token, the case's Merkle leaf and its inclusion path (sibling hashes only: no
other case's head, name or data). A printable bilingual report and a VERIFY.md with the
literal ``sha256sum`` and ``openssl ts -verify`` commands make it usable by a person.

docs/proof-format.md §7 is the normative layout; this module follows it. The check
(:func:`verify_members`) needs no database and no network, and stops at the first problem:
everything after a break is unverifiable by construction.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from sqlalchemy import select
from sqlalchemy.orm import Session

from outreach import __version__, clock, merkle
from outreach.anchor import Inclusion, age, inclusions, leaf_bytes, parse_at
from outreach.proof import canonical_json, format_at, verify_chain, verify_rows
from outreach.store import Blob, Case, Event, find_case, no_case
from outreach.tsa import TokenVerificationError, export_for_openssl, verify_token

__all__ = [
    "FORMAT",
    "VERSION",
    "BundleCheck",
    "ExportError",
    "ExportReport",
    "blob_refs",
    "build_members",
    "cited_blobs",
    "export_case",
    "read_bundle",
    "seal",
    "verify_bundle",
    "verify_members",
    "write_zip",
    "zip_bytes",
]

FORMAT = "outreach-evidence-bundle"
VERSION = 1

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
EVENTS = "events.jsonl"
REPORT = "report.html"
VERIFY = "VERIFY.md"
PROOF = "proof.json"
TSR = "token.tsr"
TSA_PEM = "tsa.pem"
CA_PEM = "ca.pem"
_ANCHOR_FILES = frozenset({PROOF, TSR, TSA_PEM, CA_PEM})
_TOP_FILES = frozenset({MANIFEST, SUMS, EVENTS, REPORT, VERIFY})

_HEX64 = re.compile(r"[0-9a-f]{64}")
_BLOB_NAME = re.compile(r"blobs/([0-9a-f]{64})\.[a-z0-9]+")

MAX_MEMBER_BYTES = 1 << 30
MAX_TOTAL_BYTES = 4 << 30
"""A bundle is a few MB; these caps only stop a zip bomb from eating the verifier's memory."""

# File name extension per media type, so a reader can open the exact bytes with a double click.
_EXTENSIONS = {
    "message/rfc822": "eml",
    "application/json": "json",
    "text/plain": "txt",
    "text/html": "html",
    "text/xml": "xml",
    "application/xml": "xml",
    "application/toml": "toml",
    "application/pdf": "pdf",
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/heic": "heic",
    "audio/mpeg": "mp3",
    "audio/mp4": "m4a",
    "audio/amr": "amr",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "video/mp4": "mp4",
    "application/x-www-form-urlencoded": "txt",
    "message/delivery-status": "txt",
}


def extension(media_type: str) -> str:
    return _EXTENSIONS.get(media_type.split(";")[0].strip().lower(), "bin")


def cited_blobs(data: Any) -> Iterator[tuple[str, str]]:
    """(member name, SHA-256) of every blob an event's data cites, in document order.

    The rule (proof-format §5): any object member named ``sha256`` or ending in ``_sha256``
    whose value is 64 lower-case hex digits names a blob, at any depth of ``data``.
    """
    if isinstance(data, Mapping):
        for key, value in data.items():
            if (
                isinstance(value, str)
                and (key == "sha256" or key.endswith("_sha256"))
                and _HEX64.fullmatch(value)
            ):
                yield key, value
            else:
                yield from cited_blobs(value)
    elif isinstance(data, list):
        for value in data:
            yield from cited_blobs(value)


def blob_refs(data: Any) -> Iterator[str]:
    """The SHA-256 values of :func:`cited_blobs`."""
    for _key, digest in cited_blobs(data):
        yield digest


def _pretty(obj: Any) -> bytes:
    """The pretty canonical form of manifest.json and proof.json (proof-format §7.1)."""
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sums_text(members: Mapping[str, bytes], digests: Mapping[str, str] | None = None) -> bytes:
    """SHA256SUMS in ``sha256sum`` format: every member but itself, sorted by path."""
    if digests is None:
        digests = {p: _sha(data) for p, data in members.items()}
    lines = [f"{digests[p]}  {p}\n" for p in sorted(members) if p != SUMS]
    return "".join(lines).encode("ascii")


def seal(members: dict[str, bytes]) -> dict[str, bytes]:
    """Fill manifest.json's ``files`` and write SHA256SUMS, in place; returns ``members``.

    Two layers: the manifest lists every other file's hash (what the bundle claims), and
    SHA256SUMS lists the manifest too (what ``sha256sum -c`` checks by hand).
    """
    manifest = json.loads(members[MANIFEST])
    manifest["files"] = {p: _sha(members[p]) for p in sorted(members) if p not in (MANIFEST, SUMS)}
    members[MANIFEST] = _pretty(manifest)
    members.pop(SUMS, None)
    members[SUMS] = sums_text(members)
    return members


# ================================================================================== export


class ExportError(Exception):
    """The case cannot be exported as verifiable evidence (and why)."""


@dataclass
class ExportReport:
    path: Path | None
    reference: str
    chain: str
    events: int
    blobs: int
    anchors: int
    anchored_seq: int
    """The highest event number a timestamp covers (0: none)."""
    bytes: int = 0
    notes: list[str] = field(default_factory=list)


def _find_case(session: Session, ref: str) -> Case:
    case = find_case(session, ref)
    if case is None:
        raise LookupError(no_case(ref))
    return case


@dataclass
class _Anchored:
    """One anchor as it goes into the bundle."""

    directory: str
    inclusion: Inclusion
    gen_time: datetime
    files: dict[str, bytes]
    command: str
    signature: str
    """How far its signature can be checked from the bundle alone."""


def _anchor_files(inc: Inclusion, trust_roots_pem: bytes | None, directory: str) -> _Anchored:
    a = inc.anchor
    assert a.token is not None
    root = bytes.fromhex(a.root)
    try:
        info = verify_token(a.token, root, trust_roots_pem)
    except TokenVerificationError as exc:
        raise ExportError(
            f"anchor {a.id}: its timestamp token does not verify ({exc}); "
            "run `outreach audit verify` before exporting"
        ) from exc
    proof = {
        "version": VERSION,
        "root": a.root,
        "tree_size": inc.size,
        "leaf_index": inc.index,
        "leaf": {"chain": inc.leaf["chain"], "seq": inc.leaf["seq"], "hash": inc.leaf["hash"]},
        "path": [p.hex() for p in inc.path],
        "gen_time": format_at(info.gen_time),
    }
    with tempfile.TemporaryDirectory(prefix="outreach-export-") as tmp:
        ca_name = CA_PEM if trust_roots_pem else "TSA-ROOT.pem"
        check = export_for_openssl(
            a.token, root, Path(tmp), trust_roots_pem or b"", ca_name=ca_name
        )
        files = {PROOF: _pretty(proof), TSR: check.token.read_bytes()}
        if check.tsa is not None:
            files[TSA_PEM] = check.tsa.read_bytes()
        if trust_roots_pem:
            files[CA_PEM] = check.ca.read_bytes()
    if trust_roots_pem:
        signature = f"signature checked against ca.pem ({info.verifier})"
    else:
        signature = "no ca.pem: the signature needs the TSA's root certificate (TSA-ROOT.pem)"
    return _Anchored(directory, inc, info.gen_time, files, check.command, signature)


def build_members(
    session: Session,
    ref: str,
    *,
    trust_roots_pem: bytes | None = None,
    now: datetime | None = None,
) -> tuple[str, dict[str, bytes], ExportReport]:
    """Everything of one case that goes into its bundle: (top folder, path -> bytes, report).

    Refuses (:class:`ExportError`) a case whose chain does not verify, whose events cite a
    blob the database lacks, or whose timestamps do not verify: such a bundle would fail its
    own check, and the problem is better named now, with the database at hand.
    """
    case = _find_case(session, ref)
    chain = case.chain
    checked = verify_chain(session, chain)
    if checked.problem is not None:
        raise ExportError(f"the case's chain does not verify: {checked.problem}")
    events = list(session.scalars(select(Event).where(Event.chain == chain).order_by(Event.seq)))
    members: dict[str, bytes] = {}
    lines: list[bytes] = []
    parsed: list[dict[str, Any]] = []
    for e in events:
        lines.append(
            canonical_json({"seq": e.seq, "body": e.body, "prev_hash": e.prev_hash, "hash": e.hash})
            + b"\n"
        )
        parsed.append(json.loads(e.body))
    members[EVENTS] = b"".join(lines)

    blob_index: dict[str, dict[str, Any]] = {}
    for e, body in zip(events, parsed, strict=True):
        for digest in blob_refs(body["data"]):
            if digest in blob_index:
                continue
            blob = session.get(Blob, digest)
            if blob is None:
                raise ExportError(
                    f"{chain} #{e.seq} cites blob {digest} but the database does not hold it"
                )
            path = f"blobs/{digest}.{extension(blob.media_type)}"
            members[path] = blob.data
            blob_index[digest] = {"path": path, "media_type": blob.media_type, "size": blob.size}

    anchored: list[_Anchored] = []
    for inc in inclusions(session, chain):
        directory = f"anchors/{inc.anchor.id:06d}"
        item = _anchor_files(inc, trust_roots_pem, directory)
        for name, data in item.files.items():
            members[f"{directory}/{name}"] = data
        anchored.append(item)

    stamp = now or clock.now()
    head = {"seq": checked.events, "hash": checked.head_hash}
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "case": {"reference": case.reference, "chain": chain},
        "head": head,
        "exported_at": format_at(stamp),
        "generator": f"outreach {__version__}",
        "blobs": blob_index,
        "anchors": [
            {
                "dir": a.directory,
                "seq": a.inclusion.leaf["seq"],
                "gen_time": format_at(a.gen_time),
                "tsa_url": a.inclusion.anchor.tsa_url,
            }
            for a in anchored
        ],
        "files": {},
    }
    members[MANIFEST] = _pretty(manifest)
    anchored_seq = max((int(a.inclusion.leaf["seq"]) for a in anchored), default=0)
    timeline = _timeline(events, parsed, blob_index, members, anchored)
    members[REPORT] = _render_report(case, parsed, timeline, anchored, head, stamp)
    members[VERIFY] = _render_verify(case, head, anchored, stamp, len(blob_index))
    seal(members)
    report = ExportReport(
        path=None,
        reference=case.reference,
        chain=chain,
        events=len(events),
        blobs=len(blob_index),
        anchors=len(anchored),
        anchored_seq=anchored_seq,
    )
    if anchored_seq < len(events):
        oldest = parse_at(events[anchored_seq].at)
        report.notes.append(
            f"events #{anchored_seq + 1}-#{len(events)} are not covered by a timestamp yet "
            f"(the oldest for {age(stamp - oldest)}); run `outreach audit anchor` and export "
            "again to cover them"
        )
    if not trust_roots_pem and anchored:
        report.notes.append(
            "[proof] tsa_ca_file is not set: the bundle has no ca.pem, so its timestamps' "
            "signatures can only be checked with the TSA's root certificate obtained separately"
        )
    return case.reference, members, report


def write_zip(path: Path, top: str, members: Mapping[str, bytes], when: datetime) -> int:
    """Write the zip atomically (a temporary file renamed into place); returns its size."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(zip_bytes(top, members, when))
    tmp.replace(path)
    return path.stat().st_size


def export_case(
    session: Session,
    ref: str,
    out: Path,
    *,
    trust_roots_pem: bytes | None = None,
    now: datetime | None = None,
) -> ExportReport:
    """Write the evidence bundle of case ``ref`` (reference or config key) to ``out``."""
    stamp = now or clock.now()
    top, members, report = build_members(session, ref, trust_roots_pem=trust_roots_pem, now=stamp)
    report.bytes = write_zip(out, top, members, stamp)
    report.path = out
    return report


# ================================================================================== timeline

_LABELS: dict[str, tuple[str, str]] = {
    "case_opened": ("立案", "Case opened"),
    "case_updated": ("案件信息变更", "Case details changed"),
    "case_inactive": ("案件停用", "Case made inactive"),
    "step_due": ("步骤到期", "Ladder step due"),
    "step_planned": ("安排步骤", "Ladder step planned"),
    "step_skipped": ("跳过步骤", "Ladder step skipped"),
    "no_channel": ("无可用联系方式", "No usable contact channel"),
    "notice_rendered": ("生成通知", "Notice written"),
    "attempt_queued": ("排队发送", "Sending queued"),
    "attempt_cancelled": ("取消发送", "Sending cancelled"),
    "attempt_requeued": ("重新排队", "Sending re-queued"),
    "try_started": ("开始发送", "Sending started"),
    "try_failed": ("本次发送失败", "Try failed"),
    "sent": ("已发出", "Sent"),
    "pending": ("等待人工处理", "Waiting for you"),
    "failed": ("发送失败", "Sending failed"),
    "unknown": ("结果未知", "Outcome unknown"),
    "rescheduled": ("稍后重试", "Retry later"),
    "released": ("放回队列", "Released"),
    "contact_bad": ("联系方式无效", "Contact marked bad"),
    "contact_status": ("联系方式状态", "Contact status"),
    "delivered": ("已送达", "Delivered"),
    "delivery_delayed": ("投递延迟", "Delivery delayed"),
    "delivery_reported": ("投递报告", "Delivery report"),
    "bounced": ("退信", "Bounced"),
    "bounce_unparsed": ("无法解析的退信", "Unreadable bounce"),
    "auto_reply": ("自动回复", "Automatic reply"),
    "replied": ("收到答复", "Answer received"),
    "read_receipt": ("已读回执", "Read receipt"),
    "manual_contact": ("电话/上门记录", "Call or visit logged"),
    "letter_posted": ("信函已寄出", "Letter posted"),
    "receipt_unmatched": ("无法匹配的回执", "Unmatched receipt"),
    "receipt_unreadable": ("无法读取的回执", "Unreadable receipt"),
    "resolved": ("已解决", "Resolved"),
    "case_resolved": ("已解决", "Resolved"),
    "case_paused": ("暂停", "Paused"),
    "case_resumed": ("恢复", "Resumed"),
}
_ANSWER_KINDS = frozenset(
    {
        "replied",
        "auto_reply",
        "delivered",
        "bounced",
        "read_receipt",
        "delivery_reported",
        "manual_contact",
        "letter_posted",
        "resolved",
        "case_resolved",
    }
)
_OUTCOME_KINDS = frozenset(
    {"sent", "pending", "failed", "unknown", "rescheduled", "delivered", "bounced", "replied"}
)
_INLINE_TEXT = 2000  # server replies up to this size are quoted in the report
_REPLY_KEYS = frozenset({"response_sha256", "receipt_sha256"})  # what the far side sent back
_GOALS = {
    "cancel_terminal": "注销终端 / cancel the terminal",
    "refund_deposit": "退还押金 / refund the deposit",
    "reinstate_terminal": "恢复终端 / reinstate the terminal",
}


@dataclass
class _Row:
    seq: int
    at: str
    at_cst: str
    kind: str
    zh: str
    en: str
    details: list[tuple[str, str]]
    files: list[dict[str, Any]]
    quotes: list[tuple[str, str]]
    hash: str
    stamped: str
    """The time of the first timestamp covering this event (Beijing), or empty."""


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if value is None or value == "" or value == [] or value == {}:
            continue
        if isinstance(value, str) and (key == "sha256" or key.endswith("_sha256")):
            continue
        if isinstance(value, Mapping):
            yield from _flatten(value, name + ".")
        elif isinstance(value, list):
            if all(not isinstance(v, Mapping | list) for v in value):
                yield name, ", ".join(str(v) for v in value)
            else:
                for i, item in enumerate(value):
                    if isinstance(item, Mapping):
                        yield from _flatten(item, f"{name}[{i}].")
                    else:
                        yield f"{name}[{i}]", str(item)
        else:
            text = str(value)
            yield name, text if len(text) <= 400 else text[:399] + "…"


def _cst(at: str) -> str:
    return parse_at(at).astimezone(clock.CST).strftime("%Y-%m-%d %H:%M:%S")


def _timeline(
    events: list[Event],
    parsed: list[dict[str, Any]],
    blob_index: Mapping[str, Mapping[str, Any]],
    members: Mapping[str, bytes],
    anchored: list[_Anchored],
) -> list[_Row]:
    # The earliest timestamp covering each event is its tightest "existed no later than".
    covered = sorted((int(a.inclusion.leaf["seq"]), a.gen_time) for a in anchored)
    rows = []
    for e, body in zip(events, parsed, strict=True):
        data = body["data"]
        zh, en = _LABELS.get(e.kind, (e.kind, e.kind.replace("_", " ")))
        files, quotes = [], []
        for key, digest in dict.fromkeys(cited_blobs(data)):
            meta = blob_index[digest]
            files.append({"sha256": digest, "key": key, **meta})
            media = str(meta["media_type"]).split(";")[0]
            if (
                key in _REPLY_KEYS
                and int(meta["size"]) <= _INLINE_TEXT
                and (media.startswith("text/") or media == "application/json")
            ):
                text = members[str(meta["path"])].decode("utf-8", "replace")
                quotes.append((str(meta["path"]), text))
        rows.append(
            _Row(
                seq=e.seq,
                at=e.at,
                at_cst=_cst(e.at),
                kind=e.kind,
                zh=zh,
                en=en,
                details=list(_flatten(data)),
                files=files,
                quotes=quotes,
                hash=e.hash,
                stamped=next(
                    (
                        t.astimezone(clock.CST).strftime("%Y-%m-%d %H:%M:%S")
                        for seq, t in covered
                        if seq >= e.seq
                    ),
                    "",
                ),
            )
        )
    return rows


def _contacts(parsed: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per attempt: who, how, to which address, first sent, how it ended."""
    names: dict[str, str] = {}
    attempts: dict[Any, dict[str, str]] = {}
    for body in parsed:
        data, kind, at = body["data"], body["kind"], body["at"]
        if kind == "notice_rendered" and data.get("party"):
            names[str(data["party"])] = str(data.get("party_name") or data["party"])
        attempt = data.get("attempt")
        if attempt is None or isinstance(attempt, dict | list):
            continue
        row = attempts.setdefault(
            attempt,
            {
                "attempt": str(attempt),
                "step": "",
                "party": "",
                "via": "",
                "recipient": "",
                "first_try": "",
                "outcome": "",
                "outcome_at": "",
                "provider_id": "",
            },
        )
        if kind == "attempt_queued":
            row["step"] = (
                str(int(data.get("step", 0)) + 1) if isinstance(data.get("step"), int) else ""
            )
            party = str(data.get("party") or "")
            row["party"] = names.get(party, party)
            row["via"] = f"{data.get('via', '')} ({data.get('channel', '')})"
            row["recipient"] = str(data.get("recipient") or "")
        if kind == "try_started" and not row["first_try"]:
            row["first_try"] = _cst(at)
            row["recipient"] = row["recipient"] or str(data.get("recipient") or "")
        if kind in _OUTCOME_KINDS:
            zh, en = _LABELS.get(kind, (kind, kind))
            row["outcome"] = f"{zh} / {en}"
            row["outcome_at"] = _cst(at)
            if data.get("provider_id"):
                row["provider_id"] = str(data["provider_id"])
    return list(attempts.values())


def _case_facts(parsed: list[dict[str, Any]]) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for body in parsed:
        if body["kind"] == "case_opened":
            facts = dict(body["data"])
        elif body["kind"] == "case_updated" and isinstance(body["data"].get("now"), dict):
            facts = dict(body["data"]["now"])
    return facts


_ENV = Environment(
    loader=PackageLoader("outreach", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)

# The report's HTML lives beside the notice templates; it is read once, on first export.
_REPORT_TEMPLATE = "bundle_report.html.j2"


def _render_report(
    case: Case,
    parsed: list[dict[str, Any]],
    rows: list[_Row],
    anchored: list[_Anchored],
    head: Mapping[str, Any],
    stamp: datetime,
) -> bytes:
    anchors = [
        {
            "inclusion": a.inclusion,
            "gen_cst": a.gen_time.astimezone(clock.CST).strftime("%Y-%m-%d %H:%M:%S"),
            "gen_utc": a.gen_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "signature": a.signature,
        }
        for a in anchored
    ]
    html = _ENV.get_template(_REPORT_TEMPLATE).render(
        reference=case.reference,
        exported_cst=stamp.astimezone(clock.CST).strftime("%Y-%m-%d %H:%M:%S"),
        exported_utc=stamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        head=head,
        facts=_case_facts(parsed),
        contacts=_contacts(parsed),
        answers=[r for r in rows if r.kind in _ANSWER_KINDS],
        rows=rows,
        anchors=anchors,
        anchored_seq=max((int(a.inclusion.leaf["seq"]) for a in anchored), default=0),
        generator=f"outreach {__version__} · {FORMAT} v{VERSION}",
        goals=_GOALS,
    )
    return html.encode("utf-8")


# ================================================================================== VERIFY.md


def _octal(data: bytes) -> str:
    """Bytes as POSIX ``printf`` octal escapes (\\001\\253…): dash and bash both read these."""
    return "".join(f"\\{b:03o}" for b in data)


def _merkle_steps(leaf: bytes, index: int, size: int, path: list[bytes]) -> list[tuple[str, str]]:
    """The by-hand recomputation of an inclusion proof: (shell command, expected output).

    The same walk as :func:`outreach.merkle.verify_inclusion` (RFC 9162 §2.1.3.2), each node
    written out so that ``printf … | sha256sum`` can check it without any program of ours.
    """
    steps = [
        (f"printf '\\000%s' '{leaf.decode('ascii')}' | sha256sum", merkle.leaf_hash(leaf).hex())
    ]
    fn, sn = index, size - 1
    r = merkle.leaf_hash(leaf)
    for p in path:
        if fn & 1 or fn == sn:
            left, right = p, r
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            left, right = r, p
        r = merkle.node_hash(left, right)
        steps.append((f"printf '\\001{_octal(left + right)}' | sha256sum", r.hex()))
        fn >>= 1
        sn >>= 1
    return steps


def _render_verify(
    case: Case,
    head: Mapping[str, Any],
    anchored: list[_Anchored],
    stamp: datetime,
    blobs: int,
) -> bytes:
    ref = case.reference
    out = [
        f"# 核验说明 / How to verify this evidence bundle — {ref}",
        "",
        f"This bundle holds the complete hash-chained event log of case {ref} (events #1–#{head['seq']}),",
        f"the exact bytes of {blobs} file(s) those events cite (messages as sent, server replies,",
        f"rendered notices, evidence files), and {len(anchored)} RFC 3161 trusted timestamp(s) covering the case.",
        f"It was exported on {format_at(stamp)} and holds no other case's data.",
        "",
        "本证据包包含本案完整的哈希链事件记录、事件所引用文件的原始字节，以及覆盖本案的 RFC 3161 可信时间戳。",
        "",
        "## 1. 用 outreach 核验 / Check with outreach (no database, no network)",
        "",
        "```sh",
        f"outreach audit verify-bundle {ref}.zip",
        "```",
        "",
        "It prints `OK: …` and exits 0, or names the first problem and exits 1.",
        "",
        "## 2. 手工核验 / Check by hand",
        "",
        "### 2.1 文件完整性 / Every file is intact (sha256sum)",
        "",
        "```sh",
        f"unzip {ref}.zip && cd {ref}",
        "sha256sum -c SHA256SUMS",
        "```",
        "",
        "Every line must end in `OK`. SHA256SUMS lists every file of the bundle, manifest.json included.",
        "Each file in `blobs/` is named by its own SHA-256, the value the events cite: `sha256sum blobs/*`",
        "prints each name's hash next to it.",
        "",
        "### 2.2 哈希链 / The hash chain",
        "",
        "Each line of `events.jsonl` is one event: `body` (the exact text that was hashed), `prev_hash`",
        "and `hash`, with hash = SHA-256(the 32 bytes of prev_hash ‖ the UTF-8 bytes of body). The first",
        "prev_hash is 64 zeros; every other prev_hash is the hash of the line before. With Python's",
        "standard library only:",
        "",
        "```python",
        "import hashlib, json",
        'prev = "0" * 64',
        'for n, line in enumerate(open("events.jsonl", encoding="utf-8"), 1):',
        "    e = json.loads(line)",
        '    assert e["seq"] == n and e["prev_hash"] == prev, f"event {n}: chain broken"',
        '    body = e["body"].encode("utf-8")',
        '    assert hashlib.sha256(bytes.fromhex(prev) + body).hexdigest() == e["hash"], f"event {n}: edited"',
        '    prev = e["hash"]',
        'print("chain OK; head", prev)',
        "```",
        "",
        f"The head must be `{head['hash']}` (event #{head['seq']}).",
        "",
        "### 2.3 可信时间戳 / The trusted timestamps (openssl ts -verify)",
        "",
    ]
    if not anchored:
        out += [
            "No timestamp covers this case yet: the events are protected by the hash chain only,",
            "which shows they were not changed relative to each other, not when they existed.",
            "",
        ]
    for a in anchored:
        inc = a.inclusion
        seq = inc.leaf["seq"]
        gen = a.gen_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        leaf = leaf_bytes(str(inc.leaf["chain"]), int(seq), str(inc.leaf["hash"]))
        out += [
            f"#### {a.directory}: events #1–#{seq}, time-stamped {gen} UTC",
            "",
            f"TSA: {inc.anchor.tsa_url or 'unknown'}. The token signs the Merkle root `{inc.anchor.root}`.",
            "",
            "```sh",
            f"cd {a.directory}",
            a.command,
            "```",
            "",
            "Expected output: `Verification: OK`. "
            + (
                "`ca.pem` is the TSA root the sender configured; compare it with the root the TSA publishes."
                if CA_PEM in a.files
                else "Save the TSA's published root certificate as `TSA-ROOT.pem` first (the sender configured none)."
            ),
            "",
            f"The root covers this case's event #{seq} through the inclusion path in `proof.json`",
            f"(RFC 6962; leaf {inc.index} of {inc.size}; the other leaves are other chains and are not in this bundle).",
            "Each command prints the hash on the next line; the last one is the root:",
            "",
            "```sh",
        ]
        for command, expected in _merkle_steps(leaf, inc.index, inc.size, inc.path):
            out += [command, f"# expect {expected}"]
        out += [
            "```",
            "",
            f"Event #{seq}'s `hash` in events.jsonl must be `{inc.leaf['hash']}`: the leaf above.",
            "",
        ]
    out += [
        "## 3. 证明了什么 / What this proves",
        "",
        "- The chain shows that no event was edited, inserted, removed or reordered after the next one was written.",
    ]
    if anchored:
        last = anchored[-1]
        out.append(
            f"- Events #1–#{last.inclusion.leaf['seq']} existed no later than "
            f"{last.gen_time.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, the time the TSA signed."
        )
        if int(last.inclusion.leaf["seq"]) < int(head["seq"]):
            out.append(
                f"- Events #{int(last.inclusion.leaf['seq']) + 1}–#{head['seq']} came later and are not time-stamped yet."
            )
    out += [
        "- The files in `blobs/` are exactly the bytes the events cite (a changed byte changes the SHA-256).",
        "- The format is specified in docs/proof-format.md of the outreach project.",
        "",
    ]
    return "\n".join(out).encode("utf-8")


# ================================================================================== verify


@dataclass
class BundleCheck:
    reference: str | None = None
    chain: str | None = None
    events: int = 0
    blobs: int = 0
    anchors: int = 0
    signatures_checked: int = 0
    anchored_seq: int = 0
    anchored_at: datetime | None = None
    problem: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problem": self.problem,
            "reference": self.reference,
            "chain": self.chain,
            "events": self.events,
            "blobs": self.blobs,
            "anchors": self.anchors,
            "signatures_checked": self.signatures_checked,
            "anchored_seq": self.anchored_seq,
            "anchored_at": format_at(self.anchored_at) if self.anchored_at else None,
            "notes": self.notes,
        }


class _Broken(Exception):
    """The first problem found; becomes ``BundleCheck.problem``."""


def read_bundle(path: Path) -> tuple[str, dict[str, bytes]]:
    """(top folder, relative path -> bytes) of a bundle zip; :class:`_Broken` if unusable."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.filename.endswith("/")]
            tops = {i.filename.split("/", 1)[0] for i in infos}
            if len(tops) != 1:
                raise _Broken("the zip must hold exactly one top-level folder")
            top = tops.pop()
            total = 0
            members: dict[str, bytes] = {}
            for info in infos:
                name = info.filename
                rel = name[len(top) + 1 :]
                pure = PurePosixPath(rel)
                if (
                    "/" not in name
                    or "\\" in name
                    or pure.is_absolute()
                    or any(part in ("", ".", "..") for part in rel.split("/"))
                ):
                    raise _Broken(f"unsafe or misplaced member name {name!r}")
                if rel in members:
                    raise _Broken(f"{rel}: appears twice in the zip")
                total += info.file_size
                if info.file_size > MAX_MEMBER_BYTES or total > MAX_TOTAL_BYTES:
                    raise _Broken(f"{rel}: larger than any evidence bundle should be")
                try:
                    members[rel] = zf.read(info)
                except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
                    raise _Broken(f"{rel}: cannot be read from the zip ({exc})") from exc
    except zipfile.BadZipFile as exc:
        raise _Broken(f"not a readable zip file ({exc})") from exc
    return top, members


def verify_bundle(path: Path) -> BundleCheck:
    """Check a bundle zip completely, offline; ``problem`` names the first failure."""
    try:
        top, members = read_bundle(path)
    except _Broken as exc:
        return BundleCheck(problem=str(exc))
    return verify_members(members, top=top)


def verify_members(members: Mapping[str, bytes], *, top: str | None = None) -> BundleCheck:
    """Check a bundle's files (relative path -> bytes): the whole of proof-format §7.6."""
    check = BundleCheck()
    try:
        _verify(members, top, check)
    except _Broken as exc:
        check.problem = str(exc)
    return check


def _verify(members: Mapping[str, bytes], top: str | None, check: BundleCheck) -> None:
    # 1. Which files, and SHA256SUMS over all of them.
    if SUMS not in members:
        raise _Broken("SHA256SUMS is missing")
    for name in members:
        if not (
            name in _TOP_FILES
            or _BLOB_NAME.fullmatch(name)
            or (
                (m := re.fullmatch(r"(anchors/[0-9]{6})/([a-z.]+)", name))
                and m.group(2) in _ANCHOR_FILES
            )
        ):
            raise _Broken(f"{name}: not a file an evidence bundle contains")
    for name in (MANIFEST, EVENTS):
        if name not in members:
            raise _Broken(f"{name} is missing")
    digests = {p: _sha(data) for p, data in members.items()}
    if members[SUMS] != sums_text(members, digests):
        _explain_sums(members, digests)
        raise _Broken(
            "SHA256SUMS is not in the exact form `sha256sum` writes (sorted, one line per file)"
        )

    # 2. The manifest's claims.
    manifest = _load_json(members[MANIFEST], MANIFEST)
    if members[MANIFEST] != _pretty(manifest):
        raise _Broken("manifest.json is not in its canonical form (sorted keys, 2-space indent)")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise _Broken(
            f"manifest.json: format {manifest.get('format')!r} version {manifest.get('version')!r}"
            f" is not {FORMAT!r} version {VERSION}"
        )
    files = manifest.get("files")
    listed = {p: d for p, d in digests.items() if p not in (MANIFEST, SUMS)}
    if files != listed:
        missing = sorted(set(listed) - set(files or {})) + sorted(set(files or {}) - set(listed))
        wrong = [
            p
            for p in sorted(listed)
            if isinstance(files, dict) and p in files and files[p] != listed[p]
        ]
        what = wrong[0] if wrong else (missing[0] if missing else "files")
        raise _Broken(f"manifest.json: its file list does not match the bundle ({what})")
    case = manifest.get("case") or {}
    reference, chain = case.get("reference"), case.get("chain")
    if not isinstance(reference, str) or chain != f"case:{reference}":
        raise _Broken("manifest.json: case reference and chain do not match")
    if top is not None and top != reference:
        raise _Broken(f"the zip's folder {top!r} is not the case reference {reference!r}")
    check.reference, check.chain = reference, chain

    # 3. The chain, event by event.
    events = _read_events(members[EVENTS], chain)
    report = verify_rows(chain, (e[:7] for e in events), strict=True)
    if report.problem is not None:
        p = report.problem
        raise _Broken(f"events.jsonl line {p.event_id}, event #{p.seq}: {p.message}")
    head = manifest.get("head") or {}
    if head.get("seq") != report.events or head.get("hash") != report.head_hash:
        raise _Broken(
            f"the chain ends at #{report.events} {report.head_hash[:12]}… but manifest.json says "
            f"#{head.get('seq')} {str(head.get('hash'))[:12]}…: events missing from the end, or added"
        )
    check.events = report.events

    # 4. Every cited blob is here and is exactly what was cited; nothing else is.
    blob_index = manifest.get("blobs")
    if not isinstance(blob_index, dict):
        raise _Broken("manifest.json: no blob index")
    cited: set[str] = set()
    for event in events:
        seq, data = event[1], event[7]
        for digest in blob_refs(data):
            cited.add(digest)
            meta = blob_index.get(digest)
            path = meta.get("path") if isinstance(meta, dict) else None
            if not isinstance(meta, dict) or not isinstance(path, str) or path not in members:
                raise _Broken(f"event #{seq} cites file {digest} but the bundle does not hold it")
            if _BLOB_NAME.fullmatch(path) is None or not path.startswith(f"blobs/{digest}."):
                raise _Broken(f"manifest.json: blob {digest} is filed under {path!r}")
            if digests[path] != digest:
                raise _Broken(f"{path}: its SHA-256 is not {digest}, the value event #{seq} cites")
            if meta.get("size") != len(members[path]):
                raise _Broken(f"manifest.json: wrong size for {path}")
    for name in members:
        m = _BLOB_NAME.fullmatch(name)
        if m and m.group(1) not in cited:
            raise _Broken(f"{name}: no event cites this file")
    if set(blob_index) != cited:
        raise _Broken("manifest.json: the blob index lists files no event cites")
    check.blobs = len(cited)

    # 5. Every timestamp: leaf = our event, path leads to the root, token signs the root.
    dirs = sorted({name.rsplit("/", 1)[0] for name in members if name.startswith("anchors/")})
    listed_dirs = [a.get("dir") for a in manifest.get("anchors") or [] if isinstance(a, dict)]
    if dirs != sorted(str(d) for d in listed_dirs):
        raise _Broken("manifest.json: its anchor list does not match the anchors/ folders")
    hashes = {e[1]: e[6] for e in events}
    for directory in dirs:
        _verify_anchor(members, directory, chain, hashes, check)
    if check.anchors and check.anchored_seq < check.events:
        check.notes.append(
            f"events #{check.anchored_seq + 1}-#{check.events} came after the last timestamp: "
            "only the hash chain protects them"
        )
    if not check.anchors:
        check.notes.append("no timestamp covers this case: only the hash chain protects it")


def _explain_sums(members: Mapping[str, bytes], digests: Mapping[str, str]) -> None:
    """Name the first file SHA256SUMS disagrees with, if there is one."""
    try:
        text = members[SUMS].decode("ascii")
    except UnicodeDecodeError:
        raise _Broken("SHA256SUMS is not plain text") from None
    claimed: dict[str, str] = {}
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if not sep:
            raise _Broken(f"SHA256SUMS: unreadable line {line[:80]!r}")
        claimed[name] = digest
    for name in sorted(members):
        if name == SUMS:
            continue
        if name not in claimed:
            raise _Broken(f"{name}: not listed in SHA256SUMS")
        if claimed[name] != digests[name]:
            raise _Broken(f"{name}: its SHA-256 differs from SHA256SUMS (the file was changed)")
    for name in claimed:
        if name not in members:
            raise _Broken(f"{name}: listed in SHA256SUMS but missing")


def _load_json(data: bytes, name: str) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Broken(f"{name}: not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise _Broken(f"{name}: not a JSON object")
    return obj


def _read_events(data: bytes, chain: str) -> list[tuple[int, int, str, str, str, str, str, Any]]:
    """(line, seq, at, kind, body, prev_hash, hash, data) per line of events.jsonl."""
    if data and not data.endswith(b"\n"):
        raise _Broken("events.jsonl: the last line is not terminated (truncated file)")
    rows = []
    for n, line in enumerate(data.split(b"\n")[:-1], 1):
        obj = _load_json(line, f"events.jsonl line {n}")
        if obj.keys() != {"seq", "body", "prev_hash", "hash"} or canonical_json(obj) != line:
            raise _Broken(
                f"events.jsonl line {n}: not a canonical {{seq, body, prev_hash, hash}} record"
            )
        seq, body, prev, digest = obj["seq"], obj["body"], obj["prev_hash"], obj["hash"]
        if not (
            isinstance(seq, int)
            and isinstance(body, str)
            and isinstance(prev, str)
            and isinstance(digest, str)
        ):
            raise _Broken(f"events.jsonl line {n}: wrong field types")
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        at = kind = ""
        payload: Any = None
        if isinstance(parsed, dict):
            at, kind = str(parsed.get("at", "")), str(parsed.get("kind", ""))
            payload = parsed.get("data")
        rows.append((n, seq, at, kind, body, prev, digest, payload))
    if not rows:
        raise _Broken("events.jsonl is empty")
    return rows


def _verify_anchor(
    members: Mapping[str, bytes],
    directory: str,
    chain: str,
    hashes: Mapping[int, str],
    check: BundleCheck,
) -> None:
    for name in (PROOF, TSR):
        if f"{directory}/{name}" not in members:
            raise _Broken(f"{directory}/{name} is missing")
    raw = members[f"{directory}/{PROOF}"]
    proof = _load_json(raw, f"{directory}/{PROOF}")
    if raw != _pretty(proof):
        raise _Broken(f"{directory}/{PROOF}: not in its canonical form")
    if proof.keys() != {"version", "root", "tree_size", "leaf_index", "leaf", "path", "gen_time"}:
        raise _Broken(f"{directory}/{PROOF}: unexpected or missing fields")
    leaf = proof["leaf"]
    try:
        l_chain, l_seq, l_hash = str(leaf["chain"]), leaf["seq"], str(leaf["hash"])
        root = bytes.fromhex(proof["root"])
        path = [bytes.fromhex(p) for p in proof["path"]]
        index, size = proof["leaf_index"], proof["tree_size"]
    except (KeyError, TypeError, ValueError) as exc:
        raise _Broken(f"{directory}/{PROOF}: unreadable ({exc})") from exc
    if proof["version"] != VERSION or not isinstance(index, int) or not isinstance(size, int):
        raise _Broken(f"{directory}/{PROOF}: unreadable")
    if l_chain != chain or not isinstance(l_seq, int) or leaf.keys() != {"chain", "seq", "hash"}:
        raise _Broken(f"{directory}: its leaf is not a head of this case's chain")
    if hashes.get(l_seq) != l_hash:
        raise _Broken(
            f"{directory}: the timestamped head #{l_seq} {l_hash[:12]}… is not event #{l_seq} of "
            "events.jsonl (rewritten or truncated after the timestamp)"
        )
    if not merkle.verify_inclusion(leaf_bytes(l_chain, l_seq, l_hash), index, size, path, root):
        raise _Broken(f"{directory}: the inclusion path does not lead from the leaf to the root")
    ca = members.get(f"{directory}/{CA_PEM}")
    try:
        info = verify_token(
            members[f"{directory}/{TSR}"],
            root,
            ca,
            untrusted_pem=members.get(f"{directory}/{TSA_PEM}"),
        )
    except TokenVerificationError as exc:
        raise _Broken(f"{directory}/{TSR}: {exc}") from exc
    if format_at(info.gen_time) != proof["gen_time"]:
        raise _Broken(f"{directory}/{PROOF}: gen_time differs from the token's")
    check.anchors += 1
    if info.signature_checked:
        check.signatures_checked += 1
    else:
        check.notes.append(
            f"{directory}: token covers the root; signature not checked ({info.note})"
        )
    if l_seq >= check.anchored_seq:
        check.anchored_seq = l_seq
        check.anchored_at = info.gen_time


def zip_bytes(top: str, members: Mapping[str, bytes], when: datetime) -> bytes:
    """The bundle zip in memory (tests and callers that do not want a file)."""
    buf = io.BytesIO()
    stamp = when.astimezone(UTC).timetuple()[:6]
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(f"{top}/{name}", date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, members[name])
    return buf.getvalue()
