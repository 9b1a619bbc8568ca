"""Evidence bundles through the real command: exported after a real run and a real RFC 3161
anchor, checked offline by `outreach audit verify-bundle`, by `sha256sum -c`, by the exact
`openssl ts -verify` and `printf | sha256sum` lines VERIFY.md prints, and by the Python lines
it gives; holding one case only; and failing on every flipped byte of every member."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from tsa_server import local_tsa

from outreach import merkle
from outreach.anchor import leaf_bytes
from outreach.bundle import (
    blob_refs,
    export_case,
    read_bundle,
    seal,
    verify_bundle,
    verify_members,
)
from outreach.cli import main
from outreach.migrate import ensure_schema
from outreach.proof import GENESIS, event_body, event_hash, record_event, store_blob
from outreach.store import Case, Merchant, make_engine, session_factory

ROOT = Path(__file__).resolve().parent.parent

SECOND = """
[[merchants]]
key = "li-store"
name = "广州市天河区李四茶行"
merchant_no = "822581000777777"
contact_name = "李四"
phone = "13700137000"

  [[merchants.terminals]]
  terminal_no = "87654321"
  sn = "SN-LISI-0099"
  acquirer = "lakala"
  agent = "shenzhen-agent"

[[cases]]
key = "li-cancel"
merchant = "li-store"
goal = "cancel_terminal"
plan = "standard"
statement = "李四茶行的陈述：终端从未使用。"
"""


def outreach(cfg: Path | None, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "outreach", *(["-c", str(cfg)] if cfg else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)


@dataclass
class Exported:
    zip: Path
    unpacked: Path
    other_reference: str
    other_hashes: list[str]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    """The example config plus a second merchant and case; run, anchor, export case 1."""
    tmp = tmp_path_factory.mktemp("bundle")
    cfg = tmp / "outreach.toml"
    text = (ROOT / "config.example.toml").read_text("utf-8")
    text = text.replace(
        'statement = "本店已停业，',
        'statement = "<script>alert(1)</script> & 本店已停业，',
    )
    cases_at = text.index("[schedule]")
    text = text[:cases_at] + SECOND + "\n" + text[cases_at:]
    with local_tsa(tmp) as tsa:
        ca = tmp / "ca.pem"
        ca.write_bytes(tsa.ca_pem)
        text = text.replace("tsa_urls = []", f'tsa_urls = ["{tsa.url}"]\ntsa_ca_file = "{ca}"')
        cfg.write_text(text, "utf-8")
        # In-process for speed; export and verify-bundle, the commands under test, run as
        # real subprocesses below.
        run = CliRunner().invoke(main, ["-c", str(cfg), "run", "--offline"])
        assert run.exit_code == 0, run.output
        anchored = CliRunner().invoke(main, ["-c", str(cfg), "audit", "anchor"])
        assert anchored.exit_code == 0 and "anchored" in anchored.output, anchored.output
    # The TSA is gone from here on: nothing below may need the network.
    out = tmp / "case.zip"
    done = outreach(cfg, "audit", "export", "zhang-cancel", "-o", str(out), cwd=tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 timestamp(s)" in done.stdout
    db = sqlite3.connect(tmp / "var" / "outreach.db")
    others = db.execute(
        "SELECT chain, hash FROM events WHERE chain != 'case:OUT-2026-000001'"
    ).fetchall()
    db.close()
    other_ref = next(chain for chain, _ in others if chain.startswith("case:"))[5:]
    unpacked = tmp / "unpacked"
    with zipfile.ZipFile(out) as zf:
        zf.extractall(unpacked)
    yield Exported(out, unpacked / "OUT-2026-000001", other_ref, [h for _, h in others])


def test_verify_bundle_offline_without_config(exported: Exported, tmp_path: Path) -> None:
    proc = outreach(None, "audit", "verify-bundle", str(exported.zip), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK: OUT-2026-000001: ")
    assert "1 timestamp(s), 1 signature(s) checked" in proc.stdout
    data = verify_bundle(exported.zip).as_dict()
    assert data["ok"] and data["anchored_seq"] == data["events"] and data["blobs"] >= 5


def test_by_hand_checks_printed_in_verify_md(exported: Exported) -> None:
    folder = exported.unpacked
    sums = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True
    )
    assert sums.returncode == 0 and sums.stdout.count(": OK") == len(
        (folder / "SHA256SUMS").read_text().splitlines()
    )
    verify_md = (folder / "VERIFY.md").read_text("utf-8")
    blocks = re.findall(r"```(\w+)\n(.*?)```", verify_md, re.S)
    anchor_blocks = [b for lang, b in blocks if lang == "sh" and b.startswith("cd anchors/")]
    assert len(anchor_blocks) == 1
    cd, command = anchor_blocks[0].strip().splitlines()
    argv = shlex.split(command)
    assert argv[:3] == ["openssl", "ts", "-verify"] and "-CAfile" in argv and "-attime" in argv
    ran = subprocess.run(argv, cwd=folder / cd.split()[1], capture_output=True, text=True)
    assert "Verification: OK" in ran.stdout, ran.stdout + ran.stderr

    # The Merkle path by hand, with POSIX printf and sha256sum, in dash as well as bash.
    steps = next(b for lang, b in blocks if lang == "sh" and b.startswith("printf '\\000"))
    commands = [ln for ln in steps.splitlines() if ln.startswith("printf")]
    expected = [ln.split()[-1] for ln in steps.splitlines() if ln.startswith("# expect")]
    proof = json.loads((folder / cd.split()[1] / "proof.json").read_text())
    assert expected[-1] == proof["root"] and len(commands) == len(proof["path"]) + 1
    for shell in ("bash", "dash"):
        if shutil.which(shell) is None:
            continue
        out = subprocess.run(
            [shell, "-c", "\n".join(commands)], capture_output=True, text=True, check=True
        )
        assert [ln.split()[0] for ln in out.stdout.splitlines()] == expected, shell

    # The chain by hand, with the Python lines VERIFY.md gives.
    snippet = next(b for lang, b in blocks if lang == "python")
    chain = subprocess.run(
        [sys.executable, "-c", snippet], cwd=folder, capture_output=True, text=True
    )
    assert chain.returncode == 0, chain.stderr
    head = json.loads((folder / "manifest.json").read_text())["head"]["hash"]
    assert chain.stdout.strip() == f"chain OK; head {head}" and head == proof["leaf"]["hash"]


def test_bundle_holds_this_case_only(exported: Exported) -> None:
    raw = exported.zip.read_bytes()
    _top, members = read_bundle(exported.zip)
    everything = [raw, *members.values()]
    secrets_of_others = [
        exported.other_reference,
        "广州市天河区李四茶行",
        "822581000777777",
        "87654321",
        "SN-LISI-0099",
        "李四",
        *exported.other_hashes,  # every event hash (and so every head) of every other chain
    ]
    for needle in secrets_of_others:
        for blob in everything:
            assert needle.encode() not in blob, needle
    names = set(members)
    assert {"manifest.json", "SHA256SUMS", "events.jsonl", "report.html", "VERIFY.md"} <= names
    assert any(n.endswith(".eml") for n in names) and any(n.endswith("/token.tsr") for n in names)
    assert {n.split("/")[-1] for n in names if n.startswith("anchors/")} == {
        "token.tsr",
        "proof.json",
        "tsa.pem",
        "ca.pem",
    }
    # The other chains enter only as subtree hashes in the inclusion path.
    proof = json.loads(next(members[n] for n in names if n.endswith("proof.json")))
    assert proof["tree_size"] >= 5 and len(proof["path"]) >= 2


def test_report_is_bilingual_and_escaped(exported: Exported) -> None:
    html = (exported.unpacked / "report.html").read_text("utf-8")
    for words in ("证据报告", "Evidence report", "联系记录", "Who was contacted", "时间线"):
        assert words in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp;" in html
    assert "service@agent.example.cn" in html and "@media print" in html
    assert html.count("time-stamped no later than") == html.count('<tr class="event">')
    events = (exported.unpacked / "events.jsonl").read_text("utf-8").splitlines()
    assert all(json.loads(line)["hash"] in html for line in events)


def test_every_flipped_byte_of_every_member_is_detected(exported: Exported) -> None:
    _top, members = read_bundle(exported.zip)
    assert verify_members(members).ok
    checked = 0
    for name, data in members.items():
        for i in range(len(data)):
            changed = bytearray(data)
            changed[i] ^= 0x01
            check = verify_members({**members, name: bytes(changed)})
            assert check.problem is not None, f"{name} byte {i} flipped went unnoticed"
            checked += 1
    assert checked == sum(len(d) for d in members.values())


def test_resealed_edits_are_still_caught(exported: Exported) -> None:
    """Someone who rewrites the checksums too still meets the chain, the hashes and the TSA."""
    _top, members = read_bundle(exported.zip)
    lines = members["events.jsonl"].decode().splitlines(keepends=True)

    def resealed(**changes: bytes) -> str | None:
        changed = dict(members)
        changed.update({k.replace("__", "/"): v for k, v in changes.items()})
        return verify_members(seal(changed)).problem

    # Drop the last event, the files only it cited, and fix the manifest's head to match:
    # the chain is intact again, but the timestamp still names the event that was removed.
    manifest = json.loads(members["manifest.json"])
    last = json.loads(lines[-2])
    manifest["head"] = {"seq": last["seq"], "hash": last["hash"]}
    kept = {d for line in lines[:-1] for d in blob_refs(json.loads(json.loads(line)["body"]))}
    truncated = {n: v for n, v in members.items() if not n.startswith("blobs/") or n[6:70] in kept}
    manifest["blobs"] = {d: m for d, m in manifest["blobs"].items() if d in kept}
    truncated["events.jsonl"] = "".join(lines[:-1]).encode()
    truncated["manifest.json"] = json.dumps(manifest).encode()
    problem = verify_members(seal(truncated)).problem
    assert problem and "rewritten or truncated after the timestamp" in problem
    # Edit a word of an event: its hash no longer matches.
    edited = lines[0].replace("便利店", "百货店", 1)
    problem = resealed(**{"events.jsonl": ("".join([edited, *lines[1:]])).encode()})
    assert problem and "line 1, event #1: hash does not match" in problem
    # Replace the e-mail as sent: the cited SHA-256 no longer matches.
    eml = next(n for n in members if n.endswith(".eml"))
    problem = resealed(**{eml.replace("/", "__"): members[eml].replace(b"Subject", b"Subjekt", 1)})
    assert problem and "its SHA-256 is not" in problem
    # Another case's file slipped in: nothing cites it.
    stray = "blobs/" + "ab" * 32 + ".txt"
    problem = resealed(**{stray.replace("/", "__"): b"someone else's data"})
    assert problem and "no event cites this file" in problem


def test_export_refuses_an_unknown_case_and_verify_a_broken_zip(
    exported: Exported, tmp_path: Path
) -> None:
    cfg = exported.zip.parent / "outreach.toml"
    proc = outreach(cfg, "audit", "export", "nope", "-o", str(tmp_path / "x.zip"), cwd=tmp_path)
    assert proc.returncode == 2 and "no case 'nope'" in proc.stderr
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"PK\x03\x04 not really")
    proc = outreach(None, "audit", "verify-bundle", str(garbage), cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout.startswith("BROKEN")


# ------------------------------------------------------------------ the spec's worked example


def proof_format_example() -> str:
    """The values of docs/proof-format.md §10, computed by the code."""
    reply = b"250 2.0.0 Ok: queued as 4XyZ\r\n"
    chain = "case:OUT-2026-000001"
    body1 = event_body(
        chain,
        1,
        "2026-11-23T03:00:00.000000Z",
        "case_opened",
        {
            "reference": "OUT-2026-000001",
            "goal": "cancel_terminal",
            "merchant": {"name": "张三便利店", "merchant_no": "822584053990001"},
        },
    )
    hash1 = event_hash(GENESIS, body1)
    body2 = event_body(
        chain,
        2,
        "2026-11-23T03:00:01.500000Z",
        "sent",
        {
            "attempt": 1,
            "channel": "mail",
            "provider_id": "4XyZ",
            "response_sha256": hashlib.sha256(reply).hexdigest(),
        },
    )
    hash2 = event_hash(hash1, body2)
    leaves = [
        leaf_bytes(chain, 2, hash2),
        leaf_bytes("case:OUT-2026-000002", 1, "11" * 32),
        leaf_bytes("party:lakala", 3, "22" * 32),
    ]
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    path = merkle.inclusion_proof(leaves, 0)
    root = merkle.root(leaves)
    assert merkle.verify_inclusion(leaves[0], 0, 3, path, root)
    rows: list[tuple[str, str]] = [
        ("reply bytes (hex)", reply.hex()),
        ("reply SHA-256", hashlib.sha256(reply).hexdigest()),
        ("", ""),
        ("body 1", body1.decode()),
        ("body 1 (hex)", body1.hex()),
        ("prev_hash 1", GENESIS),
        ("hash 1", hash1),
        ("", ""),
        ("body 2", body2.decode()),
        ("prev_hash 2", hash1),
        ("hash 2", hash2),
        ("", ""),
    ]
    for i, leaf in enumerate(leaves):
        rows += [(f"leaf {i}", leaf.decode()), (f"leaf hash {i}", hashes[i].hex())]
    rows += [
        ("node(leaf 0, 1)", merkle.node_hash(hashes[0], hashes[1]).hex()),
        ("root", root.hex()),
        ("path of leaf 0", path[0].hex()),
        ("", path[1].hex()),
    ]
    return "\n".join(f"{label:<19}{value}".rstrip() for label, value in rows)


def test_proof_format_example_matches_the_code() -> None:
    doc = (ROOT / "docs" / "proof-format.md").read_text("utf-8")
    block = doc.split("<!-- example:start -->\n```text\n", 1)[1].split(
        "\n```\n<!-- example:end -->"
    )[0]
    assert block == proof_format_example(), "regenerate §10 from proof_format_example()"


def test_export_reads_the_same_on_both_engines(db_url: str, tmp_path: Path) -> None:
    """The bundle comes out of PostgreSQL exactly as out of SQLite, and checks itself."""
    engine = make_engine(db_url)
    ensure_schema(engine)
    sessions = session_factory(engine)
    try:
        with sessions.begin() as s:
            m = Merchant(key="m", name="张三便利店", merchant_no="822584053990001")
            s.add(m)
            s.flush()
            s.add(
                Case(
                    key="c",
                    reference="OUT-2026-000001",
                    merchant_id=m.id,
                    goal="cancel_terminal",
                    plan="standard",
                    opened_on=date(2026, 11, 23),
                )
            )
            when = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
            for i in range(3):
                sha = store_blob(s, f"250 queued as {i}\r\n".encode(), "text/plain")
                record_event(
                    s,
                    "case:OUT-2026-000001",
                    "sent",
                    {"attempt": i, "response_sha256": sha},
                    at=when,
                )
            record_event(s, "case:OUT-2026-000002", "sent", {"secret": "其他商户"}, at=when)
        with sessions() as s:
            report = export_case(s, "c", tmp_path / "c.zip", now=when)
        check = verify_bundle(tmp_path / "c.zip")
        assert check.ok, check.problem
        assert (report.events, report.blobs, report.anchors, check.events, check.blobs) == (
            3,
            3,
            0,
            3,
            3,
        )
        assert "not covered by a timestamp" in report.notes[0]
        assert "其他商户".encode() not in (tmp_path / "c.zip").read_bytes()
    finally:
        engine.dispose()
