"""Anchoring against a real local RFC 3161 TSA (openssl ts behind HTTP on loopback)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from tsa_server import local_tsa


def outreach(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outreach", "-c", str(cfg), *args],
        capture_output=True,
        text=True,
        cwd=cfg.parent,
        timeout=120,
    )


def _with_tsa(cfg: Path, url: str, ca: Path) -> None:
    text = cfg.read_text("utf-8").replace(
        "tsa_urls = []", f'tsa_urls = ["{url}"]\ntsa_ca_file = "{ca}"'
    )
    cfg.write_text(text, "utf-8")


def test_anchor_then_verify_catches_truncation_hidden_by_head_edit(
    example_config: Path, tmp_path: Path
) -> None:
    with local_tsa(tmp_path) as tsa:
        ca = tmp_path / "ca.pem"
        ca.write_bytes(tsa.ca_pem)
        _with_tsa(example_config, tsa.url, ca)
        assert outreach(example_config, "run").returncode == 0
        anchored = outreach(example_config, "audit", "anchor")
        assert anchored.returncode == 0, anchored.stderr
        assert "anchored 5 chain heads" in anchored.stdout
        assert "nothing to anchor" in outreach(example_config, "audit", "anchor").stdout
    ok = outreach(example_config, "audit", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 timestamp anchors checked" in ok.stdout

    # An insider deletes the last event of a case and rewinds the head row to match:
    # the chain alone now looks intact, but the anchor remembers the real head.
    db = sqlite3.connect(example_config.parent / "var" / "outreach.db")
    chain, seq, prev = db.execute(
        "SELECT chain, seq, prev_hash FROM events WHERE chain LIKE 'case:%' ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    db.execute("DROP TRIGGER events_no_delete")
    db.execute("DELETE FROM events WHERE chain = ? AND seq = ?", (chain, seq))
    db.execute(
        "UPDATE chains SET head_seq = ?, head_hash = ? WHERE name = ?", (seq - 1, prev, chain)
    )
    db.commit()
    db.close()
    broken = outreach(example_config, "audit", "verify")
    assert broken.returncode == 1
    assert f"{chain} #{seq}: anchored by anchor 1" in broken.stdout and "truncated" in broken.stdout


def test_unreachable_tsa_is_recorded_not_fatal_to_sending(example_config: Path) -> None:
    text = example_config.read_text("utf-8").replace(
        "tsa_urls = []", 'tsa_urls = ["http://127.0.0.1:9/tsr"]'
    )
    example_config.write_text(text, "utf-8")
    assert outreach(example_config, "run").returncode == 0
    failed = outreach(example_config, "audit", "anchor")
    assert failed.returncode == 1 and "127.0.0.1:9" in failed.stderr
    verify = outreach(example_config, "audit", "verify")
    assert verify.returncode == 0 and "anchoring attempt(s) failed" in verify.stdout


def test_anchor_without_tsa_is_a_config_error(example_config: Path) -> None:
    proc = outreach(example_config, "audit", "anchor")
    assert proc.returncode == 2 and "proof.tsa_urls" in proc.stderr
