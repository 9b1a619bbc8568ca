"""The discovery engine through the REAL PoliteFetcher (pytest-httpx answers every URL): what
each kind of page or failure leaves behind on the party's hash chain and in ``discover``'s
output, evidence bytes stored under the hash the findings cite, merging, unlisting and
relisting, and conditional requests that survive between runs in the database.

Pages are the fixtures of tests/fixtures/sites and tests/fixtures/pboc (see their READMEs);
the parties are in tests/fixtures/discovery/config.toml.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from pytest_httpx import HTTPXMock

from outreach import cli, registry
from outreach.app import App
from outreach.contacts import contact_changes
from outreach.discovery import DiscoveryReport, RunFetcher, make_fetcher
from outreach.fetch import RetryPolicy
from outreach.ladder import usable_contacts
from outreach.models_contacts import HttpValidator, SourceStatus
from outreach.proof import verify_chain
from outreach.store import Blob, ContactPoint, Event, Party
from sources.base import Fetcher, Lookup, PartyQuery
from sources.company_registry import GSXT_URL, CompanyRegistrySource, report_year

FIXTURES = Path(__file__).parent / "fixtures"
SITES = FIXTURES / "sites"
PBOC = FIXTURES / "pboc"
HERE = FIXTURES / "discovery"

UTF8_URL = "https://www.pay.example.com/about/contact.html"
GBK_URL = "https://www.shoudan.example.com/lxwm.asp"
PBOC_SECTION = "https://www.pbc.gov.cn/zhengwugongkai/4081330/4081344/4081407/4081702/4081749/"
DIANYIN_URL = PBOC_SECTION + "4081783/4150166/index.html"
PBOC_LIST_URL = PBOC_SECTION + "4081783/index.html"
HTML = {"Content-Type": "text/html; charset=utf-8"}


def page(path: Path) -> bytes:
    return path.read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    dest = tmp_path / "outreach.toml"
    shutil.copy(HERE / "config.toml", dest)
    return dest


@pytest.fixture
def app(config: Path) -> Iterator[App]:
    a = App.open(config)
    a.sync()
    yield a
    a.close()


@pytest.fixture
def app_any_db(config: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """The same installation on SQLite and on PostgreSQL."""
    monkeypatch.setenv("OUTREACH_DATABASE_URL", db_url)
    a = App.open(config)
    a.sync()
    yield a
    a.close()


async def _no_sleep(_seconds: float) -> None:
    return None


def fetcher_options(**overrides: Any) -> dict[str, Any]:
    """The production fetcher, minus the waiting: politeness and back-off without real sleeps."""
    options: dict[str, Any] = {
        "min_interval": 0.0,
        "retry": RetryPolicy(tries=2, backoff_base=0.0, jitter=0.0),
        "sleep": _no_sleep,
    }
    options.update(overrides)
    return options


def discover(app: App, party: str, **overrides: Any) -> DiscoveryReport:
    """One run as the CLI does it: a fresh fetcher with the database-backed validator cache."""
    fetcher, documents = make_fetcher(app.sessions, **fetcher_options(**overrides))
    return app.discover(party=party, fetcher=fetcher, documents=documents)


def chain(app: App, party: str) -> list[tuple[str, dict[str, Any]]]:
    with app.sessions() as s:
        rows = s.scalars(
            sa.select(Event).where(Event.chain == f"party:{party}").order_by(Event.seq)
        ).all()
        assert verify_chain(s, f"party:{party}").problem is None
    return [(e.kind, json.loads(e.body)["data"]) for e in rows]


def kinds(app: App, party: str) -> list[str]:
    return [k for k, _ in chain(app, party)]


def contacts(app: App, party: str) -> dict[tuple[str, str], ContactPoint]:
    with app.sessions() as s:
        rows = s.scalars(
            sa.select(ContactPoint).join(Party).where(Party.key == party).order_by(ContactPoint.id)
        ).all()
        for cp in rows:
            cp.provenance  # noqa: B018 - load before the session closes
    return {(cp.kind, cp.value): cp for cp in rows}


# -- pages that work ----------------------------------------------------------------------------


def test_utf8_page_findings_cite_the_stored_evidence_and_merge_with_config(
    app: App, httpx_mock: HTTPXMock
) -> None:
    body = page(SITES / "contact_utf8.html")
    httpx_mock.add_response(url=UTF8_URL, content=body, headers=HTML)

    report = discover(app, "site-utf8")

    found = contacts(app, "site-utf8")
    assert ("email", "tousu@pay.example.com") in found
    assert ("postal", "上海市浦东新区示例路100号示例大厦8层（邮编 200120）") in found
    # Every finding from the page cites the page's exact bytes, and those bytes are stored.
    site_provs = [p for cp in found.values() for p in cp.provenance if p.source == "official_site"]
    assert site_provs and {p.evidence_sha256 for p in site_provs} == {sha(body)}
    assert {p.url for p in site_provs} == {UTF8_URL}
    with app.sessions() as s:
        blob = s.get(Blob, sha(body))
        assert blob is not None and bytes(blob.data) == body and blob.media_type == "text/html"
    added = [d for k, d in chain(app, "site-utf8") if k == "contact_added"]
    assert {d["evidence_sha256"] for d in added if d["source"] == "official_site"} == {sha(body)}

    # 95118 was declared by the user and printed on the page: one contact, two provenances.
    hotline = found[("phone", "+8695118")]
    assert sorted(p.source for p in hotline.provenance) == ["config: POS receipt", "official_site"]
    assert hotline.listed and hotline.confidence == pytest.approx(1.0)
    about_hotline = [
        (k, d["source"])
        for k, d in chain(app, "site-utf8")
        if d.get("value") == "+8695118" and k in ("contact_added", "provenance_added")
    ]
    assert sorted(k for k, _ in about_hotline) == ["contact_added", "provenance_added"]
    assert report.failures == [] and report.unlisted == []
    assert any("tousu@pay.example.com (official_site)" in a for a in report.added)


def test_gbk_page_is_decoded_and_its_gbk_bytes_are_the_evidence(
    app: App, httpx_mock: HTTPXMock
) -> None:
    body = page(SITES / "contact_gbk.html")
    httpx_mock.add_response(url=GBK_URL, content=body, headers={"Content-Type": "text/html"})

    discover(app, "site-gbk")

    found = contacts(app, "site-gbk")
    assert ("postal", "浙江省杭州市西湖区示例路88号示例大厦12楼（邮编 310012）") in found
    assert ("phone", "+864000005678") in found
    assert ("phone", "+8657188156689") not in found  # the fax line never becomes a phone
    assert {p.evidence_sha256 for cp in found.values() for p in cp.provenance} == {sha(body)}
    with app.sessions() as s:
        assert bytes(s.get(Blob, sha(body)).data) == body  # type: ignore[union-attr]


def test_pboc_gbk_detail_page_gives_address_licence_and_a_fact(
    app: App, httpx_mock: HTTPXMock
) -> None:
    body = page(PBOC / "licensed_4150166_dianyin_gbk.html")
    httpx_mock.add_response(url=DIANYIN_URL, content=body, headers={"Content-Type": "text/html"})

    discover(app, "dianyin")

    found = contacts(app, "dianyin")
    assert ("licence", "Z2006331000016") in found
    postal = [cp for (kind, _v), cp in found.items() if kind == "postal"]
    # Decoded from GBK bytes: a wrong codec would garble or drop these characters.
    assert [cp.value for cp in postal] == ["中国（上海）自由贸易试验区博霞路50号504室"]
    assert postal[0].provenance[0].evidence_sha256 == sha(body)
    facts = [d for k, d in chain(app, "dianyin") if k == "source_fact"]
    assert len(facts) == 1 and "Z2006331000016" in facts[0]["message"]


# -- pages that do not ----------------------------------------------------------------------------


def test_pboc_challenge_page_is_reported_blocked_once_with_advice(
    app: App, httpx_mock: HTTPXMock
) -> None:
    challenge = page(PBOC / "challenge.html")
    httpx_mock.add_response(url=PBOC_LIST_URL, content=challenge, headers=HTML, is_reusable=True)

    first = discover(app, "pboc-blocked")
    second = discover(app, "pboc-blocked")

    assert contacts(app, "pboc-blocked") == {}
    blocked = [d for k, d in chain(app, "pboc-blocked") if k == "source_blocked"]
    # Chained when it started; the second identical answer is shown, not chained again.
    assert len(blocked) == 1
    assert "请开启JavaScript并刷新该页" in blocked[0]["message"]
    assert "detail_url" in blocked[0]["advice"]
    assert blocked[0]["data"]["evidence_sha256"] == sha(challenge)
    for report in (first, second):
        assert [n.kind for n in report.notices] == ["blocked"]
    with app.sessions() as s:
        assert s.get(Blob, sha(challenge)) is not None  # the challenge itself is evidence
        status = s.scalars(
            sa.select(SourceStatus).where(SourceStatus.source == "pboc_licences")
        ).one()
        assert (status.source, status.outcome, status.last_ok) == ("pboc_licences", "blocked", None)


def _serve_failure(httpx_mock: HTTPXMock, party: str) -> str:
    """Make the party's page fail its way; return the FetchError kind the engine must record."""
    url = f"https://{party}.example.com/contact.html"
    if party == "gone":
        httpx_mock.add_response(url=url, status_code=404, content=b"<h1>404</h1>")
        return "http_status"
    if party == "slow":
        httpx_mock.add_exception(httpx.ReadTimeout("read timed out"), url=url, is_reusable=True)
        return "timeout"
    if party == "moved":
        httpx_mock.add_response(
            url=url, status_code=302, headers={"Location": "https://parked.example.net/lander"}
        )
        return "foreign_redirect"
    assert party == "huge"
    httpx_mock.add_response(url=url, content=b"<p>" + b"x" * 300_000 + b"</p>", headers=HTML)
    return "too_large"


@pytest.mark.parametrize("party", ["gone", "slow", "moved", "huge"])
def test_each_fetch_failure_is_a_recorded_error_never_a_crash(
    app: App, httpx_mock: HTTPXMock, party: str
) -> None:
    expected = _serve_failure(httpx_mock, party)

    report = discover(app, party, max_bytes=100_000)

    errors = [d for k, d in chain(app, party) if k == "source_error"]
    assert len(errors) == 1
    assert errors[0]["source"] == "official_site" and errors[0]["data"]["kind"] == expected
    assert [n.kind for n in report.notices] == ["error"]
    assert report.failures == [] and contacts(app, party) == {}
    if party == "slow":
        assert len(httpx_mock.get_requests()) == 2  # retried once (tries=2), then recorded
    if party == "moved":
        assert [r.url.host for r in httpx_mock.get_requests()] == ["moved.example.com"]


def test_discover_prints_one_clear_line_per_failure(
    config: Path, httpx_mock: HTTPXMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    for party in ("gone", "slow", "moved", "huge"):
        _serve_failure(httpx_mock, party)
    httpx_mock.add_response(url=PBOC_LIST_URL, content=page(PBOC / "challenge.html"), headers=HTML)
    monkeypatch.setattr(
        cli,
        "_fetcher",
        lambda *a, **k: make_fetcher(None, **fetcher_options(max_bytes=100_000)),
    )
    runner = CliRunner()
    outputs = []
    for party in ("gone", "slow", "moved", "huge", "pboc-blocked"):
        result = runner.invoke(cli.main, ["-c", str(config), "discover", "--party", party])
        assert result.exit_code == 0, result.output
        outputs.append(result.stdout)
    out = "\n".join(outputs)
    assert (
        "error     gone: could not fetch https://gone.example.com/contact.html: http_status" in out
    )
    assert "error     slow: could not fetch https://slow.example.com/contact.html: timeout" in out
    assert (
        "error     moved: could not fetch https://parked.example.net/lander: foreign_redirect"
        in (out)
    )
    assert "error     huge: could not fetch https://huge.example.com/contact.html: too_large" in out
    assert "blocked   pboc-blocked: pbc.gov.cn answered with its JavaScript challenge" in out
    assert "Open https://www.pbc.gov.cn/" in out  # the advice is printed with it


class _Broken:
    """An adapter with a bug: raises instead of returning a notice."""

    name: ClassVar[str] = "broken"

    async def lookup(self, party: PartyQuery, fetch: Fetcher) -> Lookup:
        raise KeyError("selector")


def test_an_adapter_that_raises_is_a_recorded_failure(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapters = {
        **registry.source_adapters(),
        "company_registry": CompanyRegistrySource,
        "broken": _Broken,
    }
    monkeypatch.setattr(registry, "source_adapters", lambda: adapters)
    app.config.parties["agent"].sources.append("broken")

    report = app.discover(party="agent")  # offline: config still runs, the broken one fails

    assert report.failures == ["agent: broken: KeyError: 'selector'"]
    failed = [d for k, d in chain(app, "agent") if k == "source_failed"]
    assert failed == [{"source": "broken", "error": "KeyError: 'selector'"}]
    assert ("sms", "+8613900139000") in contacts(app, "agent")  # the other sources still count


# -- what changes between runs -------------------------------------------------------------------


def test_a_failing_run_never_unlists_and_recovery_is_chained(
    app: App, httpx_mock: HTTPXMock
) -> None:
    body = page(SITES / "contact_utf8.html")
    httpx_mock.add_response(url=UTF8_URL, content=body, headers=HTML)
    discover(app, "site-utf8")
    httpx_mock.add_response(url=UTF8_URL, status_code=404)
    during = discover(app, "site-utf8")
    httpx_mock.add_response(url=UTF8_URL, content=body, headers=HTML)
    after = discover(app, "site-utf8")

    assert during.unlisted == [] and after.unlisted == [] and after.added == []
    assert all(cp.listed for cp in contacts(app, "site-utf8").values())
    ks = kinds(app, "site-utf8")
    assert "provenance_unlisted" not in ks and "contact_unlisted" not in ks
    assert ks.count("source_error") == 1
    recovered = [d for k, d in chain(app, "site-utf8") if k == "source_recovered"]
    assert len(recovered) == 1 and recovered[0]["was"] == "error"


def test_a_value_that_disappears_is_unlisted_and_comes_back_relisted(
    app_any_db: App, httpx_mock: HTTPXMock
) -> None:
    app = app_any_db
    v1, v2 = page(SITES / "contact_utf8.html"), page(HERE / "contact_v2.html")
    for body in (v1, v2, v1):
        httpx_mock.add_response(url=UTF8_URL, content=body, headers=HTML)

    discover(app, "site-utf8")
    gone = discover(app, "site-utf8")
    back = discover(app, "site-utf8")

    assert gone.unlisted == ["site-utf8: phone +862138585566"]
    assert back.relisted == ["site-utf8: phone +862138585566 (official_site)"]
    about = [(k, d) for k, d in chain(app, "site-utf8") if d.get("value") == "+862138585566"]
    assert [k for k, _ in about] == [
        "contact_added",
        "provenance_unlisted",
        "contact_unlisted",
        "contact_relisted",
    ]
    assert about[2][1]["why"] == "no longer listed by official_site"
    cp = contacts(app, "site-utf8")[("phone", "+862138585566")]
    assert cp.listed and cp.status == "unknown" and cp.provenance[0].evidence_sha256 == sha(v1)
    with app.sessions() as s:
        changes = [
            (r["change"], r["value"])
            for r in contact_changes(s, party="site-utf8")
            if r["value"] == "+862138585566"
        ]
    assert changes == [
        ("added", "+862138585566"),
        ("unlisted", "+862138585566"),
        ("relisted", "+862138585566"),
    ]


def test_etag_gives_a_304_on_the_next_run_from_the_database_cache(
    app_any_db: App, httpx_mock: HTTPXMock
) -> None:
    app = app_any_db
    body = page(SITES / "contact_utf8.html")
    httpx_mock.add_response(
        url=UTF8_URL,
        content=body,
        headers={**HTML, "ETag": '"v1-abc"', "Last-Modified": "Mon, 02 Nov 2026 08:00:00 GMT"},
    )
    httpx_mock.add_response(
        url=UTF8_URL,
        status_code=304,
        match_headers={
            "If-None-Match": '"v1-abc"',
            "If-Modified-Since": "Mon, 02 Nov 2026 08:00:00 GMT",
        },
        headers={"ETag": '"v1-abc"'},
    )

    discover(app, "site-utf8")
    before = chain(app, "site-utf8")
    second = discover(app, "site-utf8")  # a new fetcher: only the database remembers the ETag

    requests = httpx_mock.get_requests()
    assert "If-None-Match" not in requests[0].headers
    assert requests[1].headers["If-None-Match"] == '"v1-abc"'
    assert second.added == [] and second.unlisted == []
    assert chain(app, "site-utf8") == before  # nothing changed, nothing chained
    with app.sessions() as s:
        row = s.scalars(sa.select(HttpValidator)).one()
        assert (row.url, row.etag, row.body_sha256) == (UTF8_URL, '"v1-abc"', sha(body))
    found = contacts(app, "site-utf8")
    assert all(
        p.evidence_sha256 == sha(body)
        for cp in found.values()
        for p in cp.provenance
        if p.source == "official_site"
    )


def test_a_contact_removed_from_the_config_is_unlisted_kept_and_still_usable(
    app: App, config: Path
) -> None:
    app.discover(party="agent")
    text = config.read_text(encoding="utf-8")
    start = text.index('  [[parties.agent.contacts]]\n  kind = "email"')
    config.write_text(text[:start], encoding="utf-8")
    edited = App.open(config)
    try:
        edited.sync()
        report = edited.discover(party="agent")
        assert report.unlisted == ["agent: email service@agent.example.cn"]
        unlisted = [d for k, d in chain(edited, "agent") if k == "contact_unlisted"]
        assert unlisted == [
            {
                "kind": "email",
                "value": "service@agent.example.cn",
                "status": "unknown",
                "why": "removed from the config; kept, and still used unless marked bad",
            }
        ]
        cp = contacts(edited, "agent")[("email", "service@agent.example.cn")]
        assert not cp.listed and cp.status == "unknown"
        with edited.sessions() as s:
            party = s.scalars(sa.select(Party).where(Party.key == "agent")).one()
            assert [c.value for c in usable_contacts(s, party, "email")] == [cp.value]
    finally:
        edited.close()


def test_offline_run_skips_network_sources_without_recording_errors(app: App) -> None:
    report = app.discover(party="site-utf8")  # no fetcher: offline

    assert report.skipped == ["site-utf8: official_site: needs the network (offline run)"]
    assert report.notices == [] and report.failures == []
    assert kinds(app, "site-utf8") == ["contact_added"]  # only the config's 95118
    with app.sessions() as s:
        assert [st.source for st in s.scalars(sa.select(SourceStatus))] == ["config"]


def test_the_run_closes_the_client_it_was_given(app: App, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=GBK_URL, content=page(SITES / "contact_gbk.html"))
    client = httpx.AsyncClient()
    fetcher, documents = make_fetcher(app.sessions, client=client, **fetcher_options())
    assert isinstance(fetcher, RunFetcher)

    app.discover(party="site-gbk", fetcher=fetcher, documents=documents)

    assert client.is_closed


# -- manual tasks -------------------------------------------------------------------------------


def test_company_registry_task_is_raised_once_and_shown_while_open(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapters = {**registry.source_adapters(), "company_registry": CompanyRegistrySource}
    monkeypatch.setattr(registry, "source_adapters", lambda: adapters)

    first = app.discover(party="agent")
    second = app.discover(party="agent")

    opened = [d for k, d in chain(app, "agent") if k == "task_opened"]
    assert len(opened) == 1
    assert opened[0]["url"] == "https://www.gsxt.gov.cn/index.html"
    assert opened[0]["wants"] == {
        "phone": "企业联系电话",
        "email": "企业电子邮箱",
        "postal": "企业通信地址",
    }
    assert "深圳市某某支付服务有限公司" in opened[0]["advice"]
    assert len(first.tasks_opened) == 1 and first.tasks_open == []
    assert second.tasks_opened == [] and len(second.tasks_open) == 1
    reminder = [n for n in second.notices if n.kind == "manual_task"]
    assert len(reminder) == 1 and reminder[0].message.startswith("task #1 still open since ")


class _NoNetwork:
    """A fetcher that fails the test if used: the company registry must never be fetched."""

    async def get(self, url: str, *, allowed_hosts: frozenset[str] | None = None) -> Any:
        raise AssertionError(f"company_registry fetched {url}")


def _registry_on(day: date) -> type[CompanyRegistrySource]:
    class _On(CompanyRegistrySource):
        def __init__(self) -> None:
            super().__init__(today=lambda: day)

    return _On


async def test_company_registry_never_fetches_and_names_page_search_and_fields() -> None:
    agent = PartyQuery(
        key="a",
        role="agent",
        name="某某",
        legal_name="深圳市某某有限公司",
        uscc="91440300MA5F000007",
    )
    lookup = await _registry_on(date(2026, 3, 1))().lookup(agent, _NoNetwork())

    assert lookup.findings == ()
    (task,) = lookup.notices
    assert (task.kind, task.source, task.url) == ("manual_task", "company_registry", GSXT_URL)
    assert task.fields == ("企业联系电话", "企业电子邮箱", "企业通信地址")  # USCC known: not asked
    assert (
        task.data["task"] == "gsxt-annual-report-2025"
        and task.data["search"] == "深圳市某某有限公司"
    )
    assert "Search for 91440300MA5F000007 (统一社会信用代码)" in (task.advice or "")
    assert "take 2024" in (task.advice or "")  # before 30 June the 2025 report may be missing
    assert report_year(date(2026, 12, 31)) == 2025 and report_year(date(2027, 1, 1)) == 2026


@pytest.mark.parametrize(
    ("role", "hints", "expected"),
    [
        ("regulator", {}, "files no enterprise annual report"),
        ("agent", {"company_registry": {"url": "x"}}, "unknown keys ['url']"),
        ("agent", {"company_registry": {"search_url": "gsxt"}}, "must be an http(s) URL"),
    ],
)
async def test_company_registry_mistakes_are_error_notices(
    role: str, hints: dict[str, Any], expected: str
) -> None:
    party = PartyQuery(key="p", role=role, name="中国人民银行", hints=hints)
    (notice,) = (await CompanyRegistrySource().lookup(party, _NoNetwork())).notices
    assert notice.kind == "error" and expected in notice.message


def test_next_years_registry_task_replaces_the_open_one(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapters = dict(registry.source_adapters())
    monkeypatch.setattr(registry, "source_adapters", lambda: adapters)
    adapters["company_registry"] = _registry_on(date(2026, 11, 23))
    app.discover(party="agent")
    adapters["company_registry"] = _registry_on(date(2027, 7, 1))
    report = app.discover(party="agent")

    tasks = [(k, d.get("key"), d.get("reason")) for k, d in chain(app, "agent") if "task" in k]
    assert tasks == [
        ("task_opened", "gsxt-annual-report-2025", None),
        ("task_opened", "gsxt-annual-report-2026", None),
        ("task_closed", "gsxt-annual-report-2025", "no longer asked for by company_registry"),
    ]
    assert report.tasks_closed == [
        "agent: #1 copy the contacts of 深圳市某某支付服务有限公司's 2025 annual report from the "
        "company registry (GSXT blocks automated lookups)"
    ]


def test_example_config_discover_shows_contacts_with_provenance(example_config: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "outreach", "-c", str(example_config), *args]
        return subprocess.run(
            cmd, capture_output=True, text=True, cwd=example_config.parent, timeout=120
        )

    found = run("discover")
    assert found.returncode == 0, found.stderr
    assert "new       lakala: phone +8695016 (directory)" in found.stdout
    assert (
        "new       shenzhen-agent: email service@agent.example.cn (config: merchant contract p.3)"
        in (found.stdout)
    )
    listed = json.loads(run("contacts", "--json").stdout)
    by_value = {(r["party"], r["value"]): r for r in listed}
    lakala_phone = by_value[("lakala", "+8695016")]
    assert lakala_phone["source"] == "directory" and lakala_phone["as_of"]
    assert by_value[("shenzhen-agent", "+8613900139000")]["source"] == "config: business card"
    again = CliRunner().invoke(cli.main, ["-c", str(example_config), "discover"])  # in process
    assert "0 new, 0 no longer listed, 0 source failures" in again.stdout
