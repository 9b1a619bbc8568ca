"""sources/directory.py and outreach/data/directory.toml: every bundled fact loads, validates,
matches the research it was copied from, and goes stale on schedule."""

from __future__ import annotations

import hashlib
import tomllib
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from sources.base import Fetched, PartyQuery, Source
from sources.directory import (
    CONFIDENCE,
    Directory,
    DirectoryError,
    DirectorySource,
    check_staleness,
    default_path,
    load_directory,
    parse_directory,
)
from sources.normalize import normalize

DATA = Path(__file__).resolve().parent.parent / "outreach" / "data" / "directory.toml"
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

# registries.md §1.5, retyped by hand so a typo in the data file cannot hide.
LICENCES = {
    "Z2000231000010": ("银联商务", "银联商务股份有限公司"),
    "Z2000531000017": ("通联支付", "通联支付网络服务股份有限公司"),
    "Z2000831000014": ("快钱", "快钱支付清算信息有限公司"),
    "Z2000931000013": ("汇付", "上海汇付支付有限公司"),
    "Z2001031000010": ("盛付通", "上海盛付通电子支付服务有限公司"),
    "Z2001912000014": ("易生支付", "易生支付有限公司"),
    "Z2002511000017": ("拉卡拉", "拉卡拉支付股份有限公司"),
    "Z2003011000010": ("联动优势", "联动优势电子商务有限公司"),
    "Z2006244000012": ("钱宝", "重庆市钱宝科技服务有限公司"),
    "Z2006511000018": ("海科融通", "北京海科融通支付服务有限公司"),
    "Z2008031000015": ("付临门", "付临门支付有限公司"),
    "Z2010131000010": ("杉德", "杉德支付网络服务发展有限公司"),
    "Z2011711000016": ("随行付", "随行付支付有限公司"),
    "Z2015044000015": ("中付", "中付支付科技有限公司"),
    "Z2026044000012": ("合利宝", "广州合利宝支付科技有限公司"),
    "Z2026244000010": ("乐刷", "乐刷科技有限公司"),
}

# Every channel registries.md §4 / §2.3 gives a source for, and nothing else.
CONTACTS = {
    ("yinlianshangwu", "phone", "+8695534", "medium"),
    ("yinlianshangwu", "phone", "+8695193", "low"),
    ("tonglian", "phone", "+8695156", "medium"),
    ("kuaiqian", "phone", "+864006155799", "medium"),
    ("huifu", "phone", "+864008202819", "medium-high"),
    ("huifu", "email", "cs@huifu.com", "medium-high"),
    ("shengfutong", "phone", "+864007208888", "medium-high"),
    ("shengfutong", "phone", "+862138585566;ext=807755", "medium-high"),
    ("lakala", "phone", "+8695016", "low"),
    ("liandongyoushi", "phone", "+864006125880", "medium"),
    ("fulinmen", "phone", "+864001887889", "medium"),
    ("suixingfu", "phone", "+864000887626", "medium"),
    ("pboc", "phone", "+8612363", "high"),
    ("pcac", "web_form", "http://jubao.pcac.org.cn", "medium"),
    ("pcac", "email", "jubao@pcac.org.cn", "medium"),
    ("pcac", "phone", "+861066001918", "medium"),
    ("unionpay", "phone", "+8695516", "high"),
    ("hotline_12315", "phone", "+8612315", "high"),
    ("hotline_12378", "phone", "+8612378", "high"),
}


def party(**kw: object) -> PartyQuery:
    base: dict[str, object] = {"key": "p", "role": "acquirer", "name": "某收单机构"}
    base.update(kw)
    return PartyQuery(**base)  # type: ignore[arg-type]


class NoFetch:
    """The directory never fetches; this fetcher proves it by failing the test if it is used."""

    async def get(self, url: str, *, allowed_hosts: frozenset[str] | None = None) -> Fetched:
        raise AssertionError(f"directory source fetched {url}")


def source(path: Path | None = None) -> DirectorySource:
    return DirectorySource(path, clock=lambda: NOW)


@pytest.fixture(scope="module")
def bundled() -> Directory:
    return load_directory()


# --------------------------------------------------------------------------- bundled data


def test_bundled_file_is_package_data_and_loads(bundled: Directory) -> None:
    assert default_path().read_bytes() == DATA.read_bytes()  # found as package data
    assert bundled.sha256 == hashlib.sha256(DATA.read_bytes()).hexdigest()
    assert bundled.data == DATA.read_bytes()


def test_every_bundled_row_validates(bundled: Directory) -> None:
    raw_orgs = {org["key"]: org for org in tomllib.loads(DATA.read_text("utf-8"))["org"]}
    assert len(raw_orgs) == len(bundled.entries)
    for entry in bundled.entries:
        rows = [entry.provenance, *(c.provenance for c in entry.contacts)]
        rows += [e.provenance for e in entry.events]
        for p in rows:
            assert p.source.startswith("registries.md §"), entry.key
            assert p.confidence == CONFIDENCE[p.confidence_label]
            assert date(2016, 1, 1) <= p.as_of <= date(2026, 11, 23)
            assert p.url is None or p.url.startswith(("http://", "https://"))
        raw_contacts = raw_orgs[entry.key].get("contact", [])
        assert [normalize(r["kind"], r["value"]) for r in raw_contacts] == [
            c.value for c in entry.contacts
        ]
        if entry.role == "acquirer":
            assert entry.licence_no and entry.licence_status and entry.legal_name


def test_licence_numbers_are_the_ones_registries_md_lists(bundled: Directory) -> None:
    for licence_no, (short_name, legal_name) in LICENCES.items():
        entry = bundled.by_licence(licence_no)
        assert entry is not None, licence_no
        assert (entry.short_name, entry.legal_name) == (short_name, legal_name)
        assert entry.licence_status == "licensed as of 2022-11 scrape"
        assert entry.provenance.as_of == date(2022, 11, 29)
        assert entry.provenance.url is not None and entry.provenance.url.startswith(
            "http://www.pbc.gov.cn/zhengwugongkai/4081330/4081344/4081407/4081702/4081749/4081783/"
        )


def test_only_sourced_channels_are_bundled(bundled: Directory) -> None:
    found = {
        (e.key, c.kind, c.value, c.provenance.confidence_label)
        for e in bundled.entries
        for c in e.contacts
    }
    assert found == CONTACTS
    pcac = bundled.get("pcac")
    assert pcac is not None
    assert {c.provenance.as_of for c in pcac.contacts} == {date(2016, 9, 18)}


def test_cancellation_news_is_recorded(bundled: Directory) -> None:
    events = {
        (e.key, ev.kind, ev.date, ev.provenance.confidence_label)
        for e in bundled.entries
        for ev in e.events
    }
    assert events == {
        ("beijing_yinlianshangwu", "licence_cancelled", date(2024, 11, 11), "medium"),
        ("yinjietong", "licence_cancelled", date(2024, 12, 9), "medium"),
        ("shande", "service_change", date(2025, 9, 20), "low"),
    }


# --------------------------------------------------------------------------- lookups


def test_is_a_source() -> None:
    assert isinstance(DirectorySource(), Source)
    assert DirectorySource.name == "directory"


async def test_lookup_by_licence_number() -> None:
    lookup = await source().lookup(
        party(name="我的收单机构", licence_no="Z2000931000013"), NoFetch()
    )
    by_value = {(f.kind, f.value): f for f in lookup.findings}
    assert set(by_value) == {
        ("licence", "Z2000931000013"),
        ("phone", "+864008202819"),
        ("email", "cs@huifu.com"),
    }
    sha = hashlib.sha256(DATA.read_bytes()).hexdigest()
    for f in lookup.findings:
        assert f.party == "p" and f.source == "directory"
        assert f.evidence_sha256 == sha and f.seen_at == NOW
    licence = by_value[("licence", "Z2000931000013")]
    assert licence.as_of == "2022-11-29" and licence.confidence == 0.9
    assert licence.url and licence.url.endswith("/4150016/index.html")
    phone = by_value[("phone", "+864008202819")]
    assert phone.as_of == "2026-11-23" and phone.confidence == 0.75 and phone.url is None
    facts = [n for n in lookup.notices if n.kind == "fact"]
    assert facts[0].data["licence_status"] == "licensed as of 2022-11 scrape"


@pytest.mark.parametrize(
    ("name", "legal_name", "expected"),
    [
        ("拉卡拉", None, "Z2002511000017"),
        ("随便写的名字", "拉卡拉支付股份有限公司", "Z2002511000017"),
        ("Shengpay", None, "Z2001031000010"),
        ("上海汇付支付", None, "Z2000931000013"),
        ("通联", None, "Z2000531000017"),
        (" 快钱 ", None, "Z2000831000014"),
        ("北京银联商务", None, "Z2001611000018"),
    ],
)
async def test_lookup_by_name_or_alias(name: str, legal_name: str | None, expected: str) -> None:
    lookup = await source().lookup(party(name=name, legal_name=legal_name), NoFetch())
    assert [f.value for f in lookup.findings if f.kind == "licence"] == [expected]


async def test_escalation_bodies_by_hint_key_and_by_name() -> None:
    pcac = await source().lookup(
        party(role="association", name="协会", hints={"directory": {"key": "pcac"}}),
        NoFetch(),
    )
    assert {(f.kind, f.value) for f in pcac.findings} == {
        ("web_form", "http://jubao.pcac.org.cn"),
        ("email", "jubao@pcac.org.cn"),
        ("phone", "+861066001918"),
    }
    assert {f.as_of for f in pcac.findings} == {"2016-09-18"}
    assert {f.confidence for f in pcac.findings} == {0.6}
    assert {f.url for f in pcac.findings} == {
        "https://freewechat.com/a/MjM5ODMxNzY0MA==/2650919569/5"
    }

    pboc = await source().lookup(party(role="regulator", name="中国人民银行"), NoFetch())
    [hotline] = pboc.findings
    assert (hotline.value, hotline.label, hotline.confidence) == (
        "+8612363",
        "金融消费权益保护咨询投诉电话",
        0.9,
    )
    unionpay = await source().lookup(party(role="association", name="UnionPay"), NoFetch())
    assert [f.value for f in unionpay.findings] == ["+8695516"]


async def test_unknown_hint_key_is_an_error_notice() -> None:
    lookup = await source().lookup(party(hints={"directory": {"key": "pbc"}}), NoFetch())
    assert lookup.findings == ()
    [notice] = lookup.notices
    assert notice.kind == "error" and "'pbc'" in notice.message and "pboc" in notice.message


async def test_agents_and_wrong_roles_never_inherit_an_acquirers_channels() -> None:
    agent = await source().lookup(party(role="agent", name="拉卡拉"), NoFetch())
    assert agent.findings == () and agent.notices == ()
    regulator = await source().lookup(party(role="regulator", name="拉卡拉"), NoFetch())
    assert regulator.findings == ()
    misrole = await source().lookup(
        party(role="regulator", name="x", licence_no="Z2002511000017"),
        NoFetch(),
    )
    assert misrole.findings == ()
    assert [n.kind for n in misrole.notices] == ["manual_task"]


async def test_licence_and_name_pointing_at_different_rows_asks_a_human() -> None:
    lookup = await source().lookup(party(name="银联商务", licence_no="Z2001611000018"), NoFetch())
    tasks = [n for n in lookup.notices if n.kind == "manual_task"]
    assert tasks and "Z2001611000018" in tasks[0].message
    # the licence number is the stronger identity: 北京银联商务, with its cancellation news
    assert [f.value for f in lookup.findings if f.kind == "licence"] == ["Z2001611000018"]
    events = [n for n in lookup.notices if n.data.get("event") == "licence_cancelled"]
    assert events and events[0].data["date"] == "2024-11-11"


async def test_unmatched_party_gets_nothing() -> None:
    lookup = await source().lookup(party(name="不存在的支付公司"), NoFetch())
    assert lookup.findings == () and lookup.notices == ()


async def test_acquirer_without_sourced_channels_gets_a_manual_task() -> None:
    lookup = await source().lookup(party(name="乐刷"), NoFetch())
    assert [f.kind for f in lookup.findings] == ["licence"]
    assert "manual_task" in {n.kind for n in lookup.notices}


# --------------------------------------------------------------------------- staleness


def test_staleness_with_injected_today(bundled: Directory) -> None:
    stale = check_staleness(date(2026, 11, 24))
    keys_rows = {(s.key, s.row) for s in stale}
    assert ("pcac", "contact phone +861066001918") in keys_rows  # 2016 data
    assert ("lakala", "org") in keys_rows  # licence list scraped 2022-11
    assert ("beijing_yinlianshangwu", "event licence_cancelled 2024-11-11") in keys_rows
    assert ("huifu", "contact phone +864008202819") not in keys_rows  # checked 2026-11-23
    assert ("pboc", "contact phone +8612363") not in keys_rows
    assert stale == sorted(stale, key=lambda s: (s.as_of, s.key, s.row))
    pcac = next(s for s in stale if s.key == "pcac")
    assert pcac.age_days == (date(2026, 11, 24) - date(2016, 9, 18)).days
    assert pcac.confidence == "medium" and pcac.url and "freewechat" in pcac.url
    assert "pcac" in pcac.describe() and "2016-09-18" in pcac.describe()

    assert check_staleness(date(2026, 11, 24), max_age_days=4000, directory=bundled) == []
    everything = check_staleness(date(2028, 1, 1), directory=bundled)
    rows = sum(1 + len(e.contacts) + len(e.events) for e in bundled.entries)
    assert len(everything) == rows
    assert check_staleness(date(2027, 11, 23), directory=bundled) == check_staleness(
        date(2027, 11, 23)
    )


def test_staleness_boundary_is_inclusive_of_max_age() -> None:
    directory = parse_directory(MINIMAL.encode())
    as_of = date(2026, 1, 1)
    assert check_staleness(date(2027, 1, 1), 365, directory=directory) == []  # exactly 365
    [row] = check_staleness(date(2027, 1, 2), 365, directory=directory)
    assert row.as_of == as_of and row.age_days == 366


# --------------------------------------------------------------------------- malformed files

MINIMAL = """
schema = 1

[[org]]
key = "demo"
role = "acquirer"
short_name = "示例"
legal_name = "示例支付有限公司"
licence_no = "Z2000231000010"
licence_status = "licensed as of 2022-11 scrape"
source = "registries.md §1.5: test"
as_of = 2026-01-01
confidence = "high"
"""

CONTACT = """
[[org.contact]]
kind = "phone"
value = "95534"
label = "客服热线"
source = "registries.md §4: test"
as_of = 2026-01-01
confidence = "medium"
"""


def test_minimal_file_parses() -> None:
    directory = parse_directory((MINIMAL + CONTACT).encode())
    [entry] = directory.entries
    assert entry.contacts[0].value == "+8695534"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            MINIMAL + CONTACT.replace('label = "客服热线"', 'lable = "x"'),
            "org 'demo' contact #1 (phone '95534'): unknown keys ['lable']",
        ),
        (
            MINIMAL + CONTACT.replace('source = "registries.md §4: test"\n', ""),
            "org 'demo' contact #1 (phone '95534'): source is missing",
        ),
        (
            MINIMAL + CONTACT.replace("as_of = 2026-01-01\n", ""),
            "org 'demo' contact #1 (phone '95534'): as_of is missing",
        ),
        (
            MINIMAL + CONTACT.replace("as_of = 2026-01-01", 'as_of = "2026-01-01"'),
            "org 'demo' contact #1 (phone '95534'): as_of must be a TOML date",
        ),
        (
            MINIMAL + CONTACT.replace("as_of = 2026-01-01", "as_of = 2026-01-01T10:00:00"),
            "as_of must be a TOML date",
        ),
        (
            MINIMAL + CONTACT.replace('value = "95534"', 'value = "9553"'),
            "org 'demo' contact #1 (phone '9553'): '9553' is not a valid phone number",
        ),
        (
            MINIMAL
            + CONTACT.replace('kind = "phone"', 'kind = "email"').replace('"95534"', '"kefu@"'),
            "org 'demo' contact #1 (email 'kefu@'): 'kefu@' is not an e-mail address",
        ),
        (
            MINIMAL + CONTACT.replace('kind = "phone"', 'kind = "fax"'),
            "org 'demo' contact #1 (fax '95534'): kind must be one of",
        ),
        (
            MINIMAL + CONTACT.replace('confidence = "medium"', "confidence = 0.6"),
            "org 'demo' contact #1 (phone '95534'): confidence must be one of high",
        ),
        (
            MINIMAL.replace('licence_no = "Z2000231000010"', 'licence_no = "Z200023100001"'),
            "org 'demo': 'Z200023100001' is not a PBOC licence number",
        ),
        (MINIMAL.replace('role = "acquirer"', 'role = "agent"'), "org 'demo': role must be one of"),
        (MINIMAL.replace('key = "demo"', 'key = "Demo Pay"'), "org 'Demo Pay': key must match"),
        (
            MINIMAL.replace('confidence = "high"', 'confidence = "certain"'),
            "org 'demo': confidence must be one of",
        ),
        (MINIMAL + "website = 'https://x.example.com'\n", "org 'demo': unknown keys ['website']"),
        (MINIMAL + MINIMAL.replace("schema = 1", ""), "org 'demo': duplicate key demo"),
        (
            MINIMAL + MINIMAL.replace("schema = 1", "").replace('"demo"', '"other"'),
            "org 'other': duplicate name 示例",
        ),
        (MINIMAL.replace("schema = 1", "schema = 2"), "schema must be 1"),
        ("schema = 1\n", "no [[org]] rows"),
        (MINIMAL + "[[org.event]]\nkind = 'rumour'\n", "org 'demo' event #1: kind must be one of"),
        (
            MINIMAL + 'url = "jubao.pcac.org.cn"\n',
            "org 'demo': url: 'jubao.pcac.org.cn' is not an http(s) URL",
        ),
        ("schema = 1\n[[org]\n", "not valid UTF-8 TOML"),
    ],
)
def test_malformed_directory_is_rejected_naming_the_row(text: str, expected: str) -> None:
    with pytest.raises(DirectoryError) as info:
        parse_directory(text.encode())
    assert any(expected in problem for problem in info.value.problems), info.value.problems


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    broken = MINIMAL.replace('confidence = "high"', "") + CONTACT.replace('"95534"', '"1"')
    path = tmp_path / "directory.toml"
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(DirectoryError) as info:
        load_directory(path)
    assert len(info.value.problems) == 2
    assert str(path) in str(info.value)


def test_unreadable_file_is_a_directory_error(tmp_path: Path) -> None:
    with pytest.raises(DirectoryError, match="cannot read"):
        load_directory(tmp_path / "missing.toml")


async def test_broken_file_becomes_an_error_notice_not_an_exception(tmp_path: Path) -> None:
    path = tmp_path / "directory.toml"
    path.write_text(MINIMAL.replace("as_of = 2026-01-01\n", ""), encoding="utf-8")
    lookup = await source(path).lookup(party(name="示例"), NoFetch())
    assert lookup.findings == ()
    [notice] = lookup.notices
    assert notice.kind == "error" and "org 'demo': as_of is missing" in notice.message


async def test_successor_named_by_an_event_becomes_a_successor_notice(tmp_path: Path) -> None:
    path = tmp_path / "directory.toml"
    path.write_text(
        MINIMAL
        + """
[[org.event]]
kind = "licence_cancelled"
date = 2015-08-24
summary = "被易生支付有限公司合并"
successor = "易生支付有限公司"
source = "registries.md §1.3: test"
as_of = 2022-11-29
confidence = "high"
""",
        encoding="utf-8",
    )
    lookup = await source(path).lookup(party(name="示例"), NoFetch())
    [successor] = [n for n in lookup.notices if n.kind == "successor"]
    assert successor.data["name"] == "易生支付有限公司"
    assert successor.data["source"] == "registries.md §1.3: test"
