"""Chain verification: ``outreach.proof`` against merely streaming the same rows, same run.

Why: ``outreach audit verify`` recomputes every hash of every chain each time it runs, and a
firm helping many merchants accumulates millions of events. The floor is the time to stream
the rows out of the database at all (the same query, the same cursor, nothing done with the
rows); the target (issue 4) is verification at >= 0.5x that rate. Measured on this machine
beforehand: streaming ~300,000 rows/s, a straightforward verify (json.loads and re-serialise
every body, as the first version did) ~100,000 rows/s.

The database is SQLite, created by the project's migrations (so the real indexes and
triggers are there), filled with ``--n`` chained events spread over ``--chains`` case chains
and interleaved in time as a real installation's are. Bodies are shaped like the real events
(case_opened, notice_rendered, attempt_queued, try_started, sent), ~150-900 bytes. Insertion
is the fast path (executemany in one transaction); a sample of bodies is checked against
``outreach.proof.event_body`` so the fast generator cannot drift from the format.

Each round streams the rows, then verifies them with :func:`outreach.proof.verify_chains`
(hashes, prev links, sequence, indexed columns, recorded heads); rounds alternate so that
machine noise hits both; medians are reported. ``--baseline`` adds the straightforward
per-row json.loads verify for comparison (slow: ~10x the others).

    .venv/bin/python bench/verify_chain.py                # 1,000,000 events, ~2-3 min
    .venv/bin/python bench/verify_chain.py --smoke        # 20,000 events, a few s, for CI
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outreach.migrate import ensure_schema
from outreach.proof import (
    GENESIS,
    canonical_json,
    event_body,
    event_rows,
    verify_chain,
    verify_chains,
)
from outreach.store import Chain, make_engine, session_factory

_MARK = "\x00"


def _template(data: dict[str, object]) -> str:
    """Canonical JSON of ``data`` with string placeholders ``\\x00name`` left to fill in."""
    return canonical_json(data).decode("utf-8").replace('"' + _MARK, "").replace(_MARK + '"', "")


# Shaped like the real events of one case (see outreach/ladder.py and outreach/dispatch.py).
# Placeholders are filled with digits and hex only, which need no JSON escaping.
_KINDS: list[tuple[str, str]] = [
    (
        "case_opened",
        _template(
            {
                "deposit": None,
                "goal": "cancel_terminal",
                "language": "zh-CN",
                "merchant": {
                    "address": "广东省深圳市福田区福华路1号",
                    "contact_name": "张三",
                    "email": None,
                    "merchant_no": _MARK + "MERCHANT_NO" + _MARK,
                    "name": "深圳市福田区张三便利店",
                    "phone": "+8613800138000",
                },
                "opened_on": "2026-11-23",
                "plan": "standard",
                "reference": _MARK + "REF" + _MARK,
                "statement": "本店已停业，代理商电话长期无人接听，要求注销终端并停止扣费。",
                "terminals": [
                    {
                        "acquirer": "lakala",
                        "acquirer_licence": "Z2002511000017",
                        "acquirer_name": "拉卡拉支付股份有限公司",
                        "agent": "shenzhen-agent",
                        "agent_name": "深圳某某支付服务有限公司",
                        "model": "N86",
                        "sn": "N86012345678",
                        "terminal_no": "12345678",
                    }
                ],
            }
        ),
    ),
    (
        "notice_rendered",
        _template(
            {
                "body_sha256": _MARK + "SHA_A" + _MARK,
                "deadline": "2026-11-30",
                "html_sha256": _MARK + "SHA_B" + _MARK,
                "language": "zh-CN",
                "party": "shenzhen-agent",
                "party_name": "深圳某某支付服务有限公司",
                "sms_params": {"deadline": "2026-11-30", "reference": _MARK + "REF" + _MARK},
                "step": 0,
                "subject": "【终端注销申请】深圳市福田区张三便利店 案件编号"
                + _MARK
                + "REF"
                + _MARK,
                "template": "cancellation_request",
            }
        ),
    ),
    (
        "attempt_queued",
        _template(
            {
                "attempt": _MARK + "N" + _MARK,
                "channel": "mail",
                "idempotency_key": _MARK + "KEY" + _MARK,
                "party": "shenzhen-agent",
                "recipient": "service@agent.example.cn",
                "step": 0,
                "via": "email",
            }
        ),
    ),
    (
        "try_started",
        _template(
            {
                "attempt": _MARK + "N" + _MARK,
                "channel": "mail",
                "claim": 1,
                "idempotency_key": _MARK + "KEY" + _MARK,
                "kind": "email",
                "media_type": "message/rfc822",
                "message_id": "<" + _MARK + "KEY" + _MARK + ".OUT@example.com>",
                "payload_sha256": _MARK + "SHA_A" + _MARK,
                "recipient": "service@agent.example.cn",
                "try": 1,
                "worker": "vm:5149",
            }
        ),
    ),
    (
        "sent",
        _template(
            {
                "attempt": _MARK + "N" + _MARK,
                "channel": "mail",
                "provider_id": "250 2.0.0 Ok: queued as " + _MARK + "KEY" + _MARK,
                "recipient": "service@agent.example.cn",
                "response_sha256": _MARK + "SHA_B" + _MARK,
                "transcript": {"code": "250", "queue_id": _MARK + "KEY" + _MARK},
                "try": 1,
            }
        ),
    ),
]
# The values substituted for placeholders: (placeholder, value) per event number ``i``.
_FILL: list[tuple[str, Callable[[int], str]]] = [
    ('"' + "N" + '"', str),  # placeholders for integers lose their quotes
    ("MERCHANT_NO", lambda i: f"8225840{i:08d}"),
    ("REF", lambda i: f"OUT-2026-{i:06d}"),
    ("SHA_A", lambda i: hashlib.sha256(b"a%d" % i).hexdigest()),
    ("SHA_B", lambda i: hashlib.sha256(b"b%d" % i).hexdigest()),
    ("KEY", lambda i: f"{i:016x}"),
]


def _data(kind_index: int, i: int) -> str:
    text = _KINDS[kind_index][1]
    for mark, fill in _FILL:
        if mark in text:
            text = text.replace(mark, fill(i))
    return text


def _kind_index(seq: int) -> int:
    """case_opened, then notice/queued/try/sent in the proportions a case produces them."""
    if seq == 1:
        return 0
    return (1, 2, 2, 3, 3, 4, 4)[(seq - 2) % 7]


def _at(i: int) -> str:
    minute, second = divmod(i, 60)
    hour, minute = divmod(minute, 60)
    day, hour = divmod(hour, 24)
    return f"2026-{1 + day // 28:02d}-{1 + day % 28:02d}T{hour:02d}:{minute:02d}:{second:02d}.{i % 1000000:06d}Z"


def generate(
    n: int, chains: int, seed: int = 1
) -> Iterator[tuple[str, int, str, str, str, str, str]]:
    """(chain, seq, at, kind, body, prev_hash, hash) for ``n`` events, chains interleaved."""
    rng = random.Random(seed)
    order = [i % chains for i in range(n)]
    rng.shuffle(order)
    heads: dict[int, tuple[int, bytes]] = {}
    for i, c in enumerate(order):
        chain = f"case:OUT-2026-{c + 1:06d}"
        seq, prev = heads.get(c, (0, bytes(32)))
        seq += 1
        k = _kind_index(seq)
        kind = _KINDS[k][0]
        at = _at(i)
        body = f'{{"at":"{at}","chain":"{chain}","data":{_data(k, i)},"kind":"{kind}","seq":{seq},"v":1}}'
        digest = hashlib.sha256(prev + body.encode("utf-8")).digest()
        heads[c] = (seq, digest)
        yield chain, seq, at, kind, body, prev.hex(), digest.hex()


def build(path: Path, n: int, chains: int) -> float:
    """Create the schema with the migrations and insert ``n`` events; returns seconds taken."""
    engine = make_engine(f"sqlite:///{path}")
    ensure_schema(engine)
    engine.dispose()
    started = time.perf_counter()
    db = sqlite3.connect(path)
    db.execute("PRAGMA synchronous=OFF")
    heads: dict[str, tuple[int, str]] = {}

    def rows() -> Iterator[tuple[str, int, str, str, str, str, str]]:
        for row in generate(n, chains):
            heads[row[0]] = (row[1], row[6])
            yield row

    with db:
        db.executemany(
            "INSERT INTO events (chain, seq, at, kind, body, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows(),
        )
        db.executemany(
            "INSERT INTO chains (name, head_seq, head_hash, updated_at) VALUES (?, ?, ?, ?)",
            [(name, seq, h, "2026-11-23 00:00:00") for name, (seq, h) in heads.items()],
        )
    # The fast generator must write exactly what record_event would: check a sample.
    sample = db.execute(
        "SELECT chain, seq, at, kind, body FROM events ORDER BY random() LIMIT 200"
    ).fetchall()
    for chain, seq, at, kind, body in sample:
        data = json.loads(body)["data"]
        assert event_body(chain, seq, at, kind, data).decode() == body, (chain, seq)
    db.execute("ANALYZE")
    db.close()
    return time.perf_counter() - started


def stream(sessions: sessionmaker[Session]) -> int:
    """The floor: the very query and cursor ``verify_chains`` reads, rows touched and dropped."""
    count = 0
    with sessions() as s, event_rows(s) as rows:
        for _row in rows:
            count += 1
    return count


def stream_chain_order(sessions: sessionmaker[Session]) -> int:
    """The rows in (chain, seq) order: what a chain-by-chain verifier has to read."""
    count = 0
    with sessions() as s:
        raw = s.connection().connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        cursor.execute(
            "SELECT chain, id, seq, at, kind, body, prev_hash, hash FROM events "
            "ORDER BY chain, seq, id"
        )
        for _row in cursor:
            count += 1
        cursor.close()
    return count


def verify(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        reports = verify_chains(s)
    broken = [r.problem for r in reports if r.problem is not None]
    if broken:
        raise SystemExit(f"verification found problems in a clean database: {broken[:3]}")
    return sum(r.events for r in reports)


def verify_per_chain(sessions: sessionmaker[Session]) -> int:
    """One query per chain, as ``verify_chain`` does (``audit verify`` before verify_chains)."""
    total = 0
    with sessions() as s:
        for name in s.scalars(select(Chain.name).order_by(Chain.name)).all():
            report = verify_chain(s, name)
            if report.problem is not None:
                raise SystemExit(f"verification found a problem: {report.problem}")
            total += report.events
    return total


def verify_straightforward(sessions: sessionmaker[Session]) -> int:
    """The first version's per-row work: json.loads, re-serialise, compare, then hash."""
    total = 0
    prev: dict[str, str] = {}
    with sessions() as s, event_rows(s) as rows:
        for chain, _id, seq, at, kind, body, prev_hash, digest in rows:
            raw = body.encode("utf-8")
            parsed = json.loads(raw)
            ok = (
                prev_hash == prev.get(chain, GENESIS)
                and hashlib.sha256(bytes.fromhex(prev_hash) + raw).hexdigest() == digest
                and canonical_json(parsed) == raw
                and (parsed["chain"], parsed["seq"], parsed["at"], parsed["kind"])
                == (chain, seq, at, kind)
            )
            if not ok:
                raise SystemExit(f"straightforward verify failed at {chain} #{seq}")
            prev[chain] = digest
            total += 1
    return total


class Rates:
    """Rows per second of one measurement, by wall clock and by this process's CPU time.

    Both, because the machine is shared: CPU time hides other people's load, wall time is
    what a user waits.
    """

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def measure(
        self, fn: Callable[[sessionmaker[Session]], int], sessions: sessionmaker[Session]
    ) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        count = fn(sessions)
        self.wall.append(count / (time.perf_counter() - wall))
        self.cpu.append(count / (time.process_time() - cpu))

    def median(self, kind: str = "cpu") -> float:
        return statistics.median(self.cpu if kind == "cpu" else self.wall)

    def __str__(self) -> str:
        return f"{self.median('cpu'):>9,.0f} /s cpu  {self.median('wall'):>9,.0f} /s wall"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="events (default 1,000,000)")
    parser.add_argument("--chains", type=int, default=None, help="case chains (default n/100)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--smoke", action="store_true", help="20,000 events, 1 round, for CI")
    parser.add_argument("--baseline", action="store_true", help="also the straightforward verify")
    parser.add_argument("--per-chain", action="store_true", help="also one query per chain")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.rounds = 20_000, 1
    chains = args.chains or max(1, args.n // 100)

    with tempfile.TemporaryDirectory(prefix="outreach-bench-") as tmp:
        path = Path(tmp) / "bench.db"
        took = build(path, args.n, chains)
        size = path.stat().st_size / 1e6
        print(
            f"{args.n:,} events in {chains:,} chains inserted in {took:.1f} s "
            f"({args.n / took:,.0f}/s, executemany); database {size:.0f} MB"
        )
        engine = make_engine(f"sqlite:///{path}")
        sessions = session_factory(engine)
        stream(sessions)  # warm the page cache for everyone
        runs: dict[str, tuple[str, Callable[[sessionmaker[Session]], int], Rates]] = {
            "floor": ("(a) stream the rows, storage order (floor)", stream, Rates()),
            "verify": ("(b) verify_chains: full verify", verify, Rates()),
            "ordered": ("(c) stream the rows in (chain, seq) order", stream_chain_order, Rates()),
        }
        if args.per_chain:
            runs["per_chain"] = ("    verify_chain, one query per chain", verify_per_chain, Rates())
        if args.baseline:
            runs["straight"] = (
                "    straightforward: json.loads per row",
                verify_straightforward,
                Rates(),
            )
        for r in range(args.rounds):
            for _label, fn, rates in runs.values():
                rates.measure(fn, sessions)
            floor, verified = runs["floor"][2], runs["verify"][2]
            print(
                f"round {r + 1}: floor {floor.cpu[-1]:,.0f}/s, verify {verified.cpu[-1]:,.0f}/s "
                f"({verified.cpu[-1] / floor.cpu[-1]:.2f}x, cpu)"
            )
        engine.dispose()
    print(f"medians of {args.rounds} round(s):")
    for label, _fn, rates in runs.values():
        print(f"  {label:<44} {rates}")
    floor, verified, ordered = (runs[k][2] for k in ("floor", "verify", "ordered"))
    for kind in ("cpu", "wall"):
        print(
            f"ratio ({kind}): verify / storage-order stream {verified.median(kind) / floor.median(kind):.2f}x, "
            f"verify / chain-order stream {verified.median(kind) / ordered.median(kind):.2f}x "
            "(target >= 0.5x)"
        )


if __name__ == "__main__":
    main()
