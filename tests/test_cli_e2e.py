"""The README's promises, through the real command in a subprocess: the example config runs
offline end to end, a second run sends nothing, and the audit verifies (and catches tampering)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


def outreach(cfg: Path, *args: str, at: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "outreach", "-c", str(cfg), *args]
    if at:
        cmd += ["--at", at]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cfg.parent, timeout=120)


def test_example_runs_offline_end_to_end(example_config: Path) -> None:
    first = outreach(example_config, "run", "--json")
    assert first.returncode == 0, first.stderr
    rows = {r["stage"]: r["result"] for r in json.loads(first.stdout)}
    assert rows["send"].startswith("2 sent")
    outbox = example_config.parent / "var" / "outbox"
    files = sorted(p.name for p in outbox.rglob("*") if p.is_file())
    assert any(f.endswith(".eml") for f in files) and any(f.endswith(".json") for f in files)
    eml = next(outbox.rglob("*.eml")).read_bytes()
    assert b"Message-ID: <" in eml and b"X-Outreach-Reference: OUT-" in eml

    second = outreach(example_config, "run", "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)[3]["result"].startswith("0 sent")
    assert sorted(p.name for p in outbox.rglob("*") if p.is_file()) == files

    verify = outreach(example_config, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("OK:")

    status = json.loads(outreach(example_config, "status", "--json").stdout)
    assert status[0]["steps_done"] == "1/5" and "reminder" in status[0]["next"]

    log = json.loads(
        outreach(example_config, "audit", "log", "--case", "zhang-cancel", "--json").stdout
    )
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
    assert log[0]["kind"] == "case_opened" and all(len(e["hash"]) == 64 for e in log)


def test_ladder_advances_on_working_days(example_config: Path) -> None:
    assert outreach(example_config, "run", at="2026-11-23").returncode == 0
    # Step 2 is due 5 working days later: 2026-11-30 (Mon). Not on the Friday before.
    plan = json.loads(outreach(example_config, "plan", "--json", at="2026-11-27").stdout)
    assert plan[0]["note"] == "waiting" and plan[0]["due"] == "2026-11-30"
    plan = json.loads(outreach(example_config, "plan", "--json", at="2026-11-30").stdout)
    assert plan[0]["template"] == "reminder" and plan[0]["attempts"] == 2
    # plan writes nothing: running it twice shows the same
    assert json.loads(outreach(example_config, "plan", "--json", at="2026-11-30").stdout) == plan
    run = outreach(example_config, "run", "--json", at="2026-11-30")
    assert json.loads(run.stdout)[3]["result"].startswith("2 sent")
    reminder = next(
        p
        for p in (example_config.parent / "var" / "outbox").rglob("*.eml")
        if b"In-Reply-To" in p.read_bytes()
    )
    assert b"References: <" in reminder.read_bytes()


def test_audit_verify_names_the_tampered_event(example_config: Path) -> None:
    assert outreach(example_config, "run").returncode == 0
    db = sqlite3.connect(example_config.parent / "var" / "outreach.db")
    db.execute("DROP TRIGGER events_no_update")
    db.execute(
        "UPDATE events SET body = replace(body, '张三', '李四') WHERE seq = 1 AND chain LIKE 'case:%'"
    )
    db.commit()
    db.close()
    verify = outreach(example_config, "audit", "verify")
    assert verify.returncode == 1
    assert "BROKEN case:OUT-2026-000001 #1" in verify.stdout and "edited" in verify.stdout


@pytest.mark.parametrize(
    "args", [["--help"], ["run", "--help"], ["audit", "verify", "--help"], ["status", "--help"]]
)
def test_help_everywhere(example_config: Path, args: list[str]) -> None:
    proc = outreach(example_config, *args)
    assert proc.returncode == 0 and "Usage:" in proc.stdout


def test_unknown_case_is_a_usage_error(example_config: Path) -> None:
    assert outreach(example_config, "sync").returncode == 0
    proc = outreach(example_config, "audit", "log", "--case", "nope")
    assert proc.returncode == 2 and "no case 'nope'" in proc.stderr
