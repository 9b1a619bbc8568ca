"""``outreach contacts add | mark | diff | tasks`` through the real CLI (click's CliRunner, in
process, so the company_registry adapter can be registered for the run): values normalised
and validated, exit 2 writing nothing on bad input, every change chained on the party chain,
manual lookup tasks answered and closed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from outreach import cli, registry
from outreach.app import App
from outreach.ladder import usable_contacts
from outreach.models_contacts import LookupTask
from outreach.proof import verify_chain
from outreach.store import ContactPoint, Event, Party
from sources.company_registry import CompanyRegistrySource

HERE = Path(__file__).parent / "fixtures" / "discovery"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    dest = tmp_path / "outreach.toml"
    shutil.copy(HERE / "config.toml", dest)
    adapters = {**registry.source_adapters(), "company_registry": CompanyRegistrySource}
    monkeypatch.setattr(registry, "source_adapters", lambda: adapters)
    return dest


@pytest.fixture
def run(config: Path) -> Iterator[Any]:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli.main, ["-c", str(config), *args], catch_exceptions=False)

    yield invoke


def events(config: Path, party: str) -> list[tuple[str, dict[str, Any]]]:
    app = App.open(config)
    try:
        with app.sessions() as s:
            rows = s.scalars(
                sa.select(Event).where(Event.chain == f"party:{party}").order_by(Event.seq)
            ).all()
            assert verify_chain(s, f"party:{party}").problem is None
            return [(e.kind, json.loads(e.body)["data"]) for e in rows]
    finally:
        app.close()


def count_rows(config: Path) -> tuple[int, int]:
    app = App.open(config)
    try:
        with app.sessions() as s:
            return (
                s.scalar(sa.select(sa.func.count()).select_from(ContactPoint)) or 0,
                s.scalar(sa.select(sa.func.count()).select_from(Event)) or 0,
            )
    finally:
        app.close()


ADD = ["contacts", "add", "agent", "--source", "annual report 2025"]


# -- add ----------------------------------------------------------------------------------------


def test_add_records_normalised_value_with_manual_provenance(run: Any, config: Path) -> None:
    result = run(*ADD, "--kind", "phone", "--value", "0755-8601 3388", "--label", "企业联系电话")

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("added agent phone +8675586013388")
    listed = json.loads(run("contacts", "agent", "--json").stdout)
    row = next(r for r in listed if r["value"] == "+8675586013388")
    assert (row["kind"], row["source"], row["label"], row["status"]) == (
        "phone",
        "manual: annual report 2025",
        "企业联系电话",
        "unknown",
    )
    added = [d for k, d in events(config, "agent") if k == "contact_added"]
    assert added == [
        {
            "kind": "phone",
            "value": "+8675586013388",
            "label": "企业联系电话",
            "source": "manual: annual report 2025",
            "url": None,
            "evidence_sha256": None,
            "confidence": "1.00",
            "as_of": None,
        }
    ]


def test_add_twice_is_recorded_once_and_json_says_so(run: Any, config: Path) -> None:
    args = [
        *ADD,
        "--kind",
        "email",
        "--value",
        "IR@Agent.Example.CN",
        "--url",
        "https://a.example.cn/r",
    ]
    assert run(*args).exit_code == 0
    before = count_rows(config)

    again = run(*args, "--json")

    assert again.exit_code == 0
    assert json.loads(again.stdout)[0]["change"] == "unchanged"
    assert count_rows(config) == before


def test_add_of_a_discovered_value_adds_a_second_provenance(run: Any, config: Path) -> None:
    assert run("discover", "--party", "agent").exit_code == 0  # config: +8613900139000 as sms

    result = run(*ADD, "--kind", "sms", "--value", "139 0013 9000")

    assert result.exit_code == 0
    assert result.stdout.startswith("added a source to agent sms +8613900139000")
    listed = json.loads(run("contacts", "agent", "--json").stdout)
    sources = sorted(r["source"] for r in listed if r["value"] == "+8613900139000")
    assert sources == ["config: business card", "manual: annual report 2025"]
    kinds = [k for k, d in events(config, "agent") if d.get("value") == "+8613900139000"]
    # ...and, a mobile being a 联系电话 too, it answers the registry task's phone field.
    assert kinds == ["contact_added", "provenance_added", "task_answered"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "email", "--value", "not-an-address"], "is not an e-mail address"),
        (["--kind", "phone", "--value", "1234"], "is not a valid phone number"),
        (["--kind", "sms", "--value", "010-66001918"], "is not a mobile number"),
        (["--kind", "web_form", "--value", "ftp://x.example.cn"], "is not an http(s) URL"),
        (["--kind", "email", "--value", "a@b.example.cn", "--url", "javascript:x"], "--url"),
        (["--kind", "email", "--value", "a@b.example.cn", "--source", "manual:  "], "--source"),
    ],
)
def test_add_refuses_bad_input_with_exit_2_writing_nothing(
    run: Any, config: Path, args: list[str], message: str
) -> None:
    assert run("sync").exit_code == 0
    before = count_rows(config)

    result = run(*ADD, *args)

    assert result.exit_code == 2
    assert result.stderr.startswith("nothing recorded: ") and message in result.stderr
    assert result.stderr.count("\n") == 1  # one clear line
    assert count_rows(config) == before


def test_add_to_an_unknown_party_or_kind_is_exit_2(run: Any) -> None:
    nobody = run(
        "contacts", "add", "nobody", "--kind", "email", "--value", "a@b.cn", "--source", "x"
    )
    assert nobody.exit_code == 2 and "no party 'nobody' in the config" in nobody.stderr
    licence = run(*ADD, "--kind", "licence", "--value", "Z2006331000016")
    assert licence.exit_code == 2 and "Invalid value for '--kind'" in licence.stderr
    missing = run("contacts", "add", "agent", "--kind", "email", "--value", "a@b.example.cn")
    assert missing.exit_code == 2 and "--source" in missing.stderr


# -- mark ---------------------------------------------------------------------------------------


def test_mark_bad_is_chained_and_the_ladder_stops_using_it(run: Any, config: Path) -> None:
    assert run("discover", "--party", "agent").exit_code == 0

    result = run("contacts", "mark", "agent", "service@agent.example.cn", "--status", "bad",
                 "--reason", "mailbox full for 3 weeks")  # fmt: skip

    assert result.exit_code == 0
    assert "agent email service@agent.example.cn is now bad" in result.stdout
    status = [d for k, d in events(config, "agent") if k == "contact_status"]
    assert status == [
        {
            "kind": "email",
            "value": "service@agent.example.cn",
            "from": "unknown",
            "to": "bad",
            "reason": "mailbox full for 3 weeks",
        }
    ]
    app = App.open(config)
    try:
        with app.sessions() as s:
            party = s.scalars(sa.select(Party).where(Party.key == "agent")).one()
            assert usable_contacts(s, party, "email") == []
    finally:
        app.close()
    same = run("contacts", "mark", "agent", "service@agent.example.cn", "--status", "bad",
               "--reason", "still full")  # fmt: skip
    assert same.exit_code == 0 and "already bad" in same.stdout
    assert len([k for k, _ in events(config, "agent") if k == "contact_status"]) == 1


def test_mark_accepts_the_value_as_the_user_writes_it(run: Any, config: Path) -> None:
    assert run("discover", "--party", "agent").exit_code == 0
    result = run("contacts", "mark", "agent", "139-0013-9000", "--status", "good",
                 "--reason", "answered on 2026-11-20")  # fmt: skip
    assert result.exit_code == 0 and "sms +8613900139000 is now good" in result.stdout


def test_mark_errors_are_exit_2_and_change_nothing(run: Any, config: Path) -> None:
    assert run("discover", "--party", "agent").exit_code == 0
    assert run(*ADD, "--kind", "phone", "--value", "13900139000").exit_code == 0  # also as phone
    before = count_rows(config)

    unknown = run("contacts", "mark", "agent", "13700000000", "--status", "bad", "--reason", "x")
    ambiguous = run("contacts", "mark", "agent", "13900139000", "--status", "bad", "--reason", "x")
    no_reason = run("contacts", "mark", "agent", "13900139000", "--status", "bad")
    blank = run("contacts", "mark", "agent", "13900139000", "--kind", "sms", "--status", "bad",
                "--reason", "  ")  # fmt: skip
    wrong = run("contacts", "mark", "agent", "13900139000", "--status", "dead", "--reason", "x")

    assert unknown.exit_code == 2 and "agent has no contact '13700000000'" in unknown.stderr
    assert ambiguous.exit_code == 2 and "recorded as phone, sms" in ambiguous.stderr
    assert "add --kind" in ambiguous.stderr
    assert no_reason.exit_code == 2 and "--reason" in no_reason.stderr
    assert blank.exit_code == 2 and "--reason must say why" in blank.stderr
    assert wrong.exit_code == 2
    assert count_rows(config) == before
    chosen = run("contacts", "mark", "agent", "13900139000", "--kind", "sms", "--status", "bad",
                 "--reason", "number not in service")  # fmt: skip
    assert chosen.exit_code == 0 and "agent sms +8613900139000 is now bad" in chosen.stdout


# -- diff ---------------------------------------------------------------------------------------


def test_diff_shows_added_unlisted_relisted_and_status(run: Any, config: Path) -> None:
    assert run("discover", "--party", "agent").exit_code == 0
    text = config.read_text(encoding="utf-8")
    start = text.index('  [[parties.agent.contacts]]\n  kind = "email"')
    config.write_text(text[:start], encoding="utf-8")
    assert run("discover", "--party", "agent").exit_code == 0  # the e-mail left the config
    assert run(*ADD, "--kind", "email", "--value", "service@agent.example.cn").exit_code == 0
    assert run("contacts", "mark", "agent", "13900139000", "--status", "bad",
               "--reason", "number not in service").exit_code == 0  # fmt: skip

    rows = json.loads(run("contacts", "diff", "--json").stdout)

    seen = [(r["change"], r["value"], r["source"]) for r in rows]
    assert seen == [
        ("added", "+8613900139000", "config: business card"),
        ("added", "service@agent.example.cn", "config: merchant contract p.3"),
        ("unlisted", "service@agent.example.cn", ""),
        ("relisted", "service@agent.example.cn", "manual: annual report 2025"),
        ("status", "+8613900139000", ""),
    ]
    assert rows[2]["detail"].startswith("removed from the config")
    assert rows[4]["detail"] == "unknown → bad: number not in service"
    table = run("contacts", "diff", "--party", "agent").stdout
    assert "relisted" in table and "unknown → bad: number not in service" in table


def test_diff_since_filters_and_unknown_party_is_exit_2(run: Any) -> None:
    assert run("discover", "--party", "agent").exit_code == 0
    assert json.loads(run("contacts", "diff", "--since", "2000-01-01", "--json").stdout)
    assert json.loads(run("contacts", "diff", "--since", "2999-01-01", "--json").stdout) == []
    bad_date = run("contacts", "diff", "--since", "yesterday")
    assert bad_date.exit_code == 2
    nobody = run("contacts", "diff", "--party", "nobody")
    assert nobody.exit_code == 2 and "no party 'nobody'" in nobody.stderr


# -- tasks --------------------------------------------------------------------------------------


def test_registry_task_listed_answered_field_by_field_and_closed(run: Any, config: Path) -> None:
    first = run("discover", "--party", "agent")
    assert first.exit_code == 0
    assert "manual_task agent: copy the contacts of 深圳市某某支付服务有限公司's" in first.stdout

    listed = json.loads(run("contacts", "tasks", "--json").stdout)
    assert len(listed) == 1
    task = listed[0]
    assert (task["party"], task["source"], task["url"]) == (
        "agent",
        "company_registry",
        "https://www.gsxt.gov.cn/index.html",
    )
    assert task["fields"] == ["企业联系电话", "企业电子邮箱", "企业通信地址", "统一社会信用代码"]
    assert "outreach contacts add agent --kind email" in task["advice"]
    text = run("contacts", "tasks").stdout
    assert f"#{task['id']}  agent  (company_registry, open since " in text
    assert "open:  https://www.gsxt.gov.cn/index.html" in text

    again = run("discover", "--party", "agent")
    assert f"task #{task['id']} still open since" in again.stdout

    phone = run(*ADD, "--kind", "sms", "--value", "13800138000", "--label", "企业联系电话")
    assert f"answered task #{task['id']} 企业联系电话" in phone.stdout
    assert run(*ADD, "--kind", "email", "--value", "ar@agent.example.cn").exit_code == 0
    postal = run(*ADD, "--kind", "postal", "--value", "深圳市南山区示例路1号")
    assert f"closed task #{task['id']}" in postal.stdout

    assert run("contacts", "tasks").stdout.strip() == "no open lookup tasks"
    closed = json.loads(run("contacts", "tasks", "--all", "--json").stdout)[0]
    assert closed["state"] == "closed"
    assert closed["close_reason"] == "answered: 企业联系电话, 企业电子邮箱, 企业通信地址"
    task_events = [k for k, _ in events(config, "agent") if k.startswith("task_")]
    assert task_events == [
        "task_opened",
        "task_answered",
        "task_answered",
        "task_answered",
        "task_closed",
    ]
    third = run("discover", "--party", "agent")  # answered: not raised again this year
    assert "manual_task" not in third.stdout
    assert [k for k, _ in events(config, "agent")].count("task_opened") == 1


def test_task_closed_by_hand_and_errors_are_exit_2(run: Any, config: Path) -> None:
    assert run("discover", "--party", "agent").exit_code == 0
    task_id = json.loads(run("contacts", "tasks", "--json").stdout)[0]["id"]

    unknown = run("contacts", "tasks", "close", "999", "--reason", "x")
    no_reason = run("contacts", "tasks", "close", str(task_id))
    closed = run(
        "contacts", "tasks", "close", str(task_id), "--reason", "个体户 hides its contacts"
    )
    twice = run("contacts", "tasks", "close", str(task_id), "--reason", "again")

    assert unknown.exit_code == 2 and "no task #999" in unknown.stderr
    assert no_reason.exit_code == 2
    assert closed.exit_code == 0 and f"closed task #{task_id} (agent)" in closed.stdout
    assert twice.exit_code == 0 and "was already closed: by hand: 个体户" in twice.stdout
    closing = [d for k, d in events(config, "agent") if k == "task_closed"]
    assert [d["reason"] for d in closing] == ["by hand: 个体户 hides its contacts"]
    app = App.open(config)
    try:
        with app.sessions() as s:
            assert s.scalars(sa.select(LookupTask.state)).all() == ["closed"]
    finally:
        app.close()


def test_listing_a_party_still_works_beside_the_subcommands(run: Any) -> None:
    assert run("discover", "--party", "agent").exit_code == 0
    listed = run("contacts", "agent")
    assert listed.exit_code == 0 and "+8613900139000" in listed.stdout
    assert run("contacts", "--help").exit_code == 0
    for sub in ("add", "mark", "diff", "tasks"):
        helped = run("contacts", sub, "--help")
        assert helped.exit_code == 0 and "Usage:" in helped.stdout
