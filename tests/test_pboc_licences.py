"""pboc_licences: the PBOC licence registry adapter, on fixtures (tests/fixtures/pboc/README.md).

The detail-page parser is driven by the REAL registry text (two excerpt files of Selenium dumps):
every record in them, parsed back out of the fixture HTML, must give its labels and values.
Lookups run through a tiny in-test Fetcher that serves fixture files by URL, the way the
engine's fetcher hands pages to a source (decoded text, exact bytes, SHA-256), and raises
FetchError for anything it does not know.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from sources.base import Fetched, FetchError, Lookup, Notice, PartyQuery, Source
from sources.pboc_licences import (
    CANCELLED_LIST_URL,
    LICENSED_LIST_PAGE_URL,
    LICENSED_LIST_URL,
    PBOC_HOSTS,
    Cancellation,
    PageLayoutError,
    PbocLicencesSource,
    is_challenge_page,
    normalize_name,
    parse_cancellation,
    parse_date,
    parse_detail_blocks,
    parse_detail_page,
    parse_list_page,
    split_business_types,
)

FIXTURES = Path(__file__).parent / "fixtures" / "pboc"
LICENSED_EXCERPT = FIXTURES / "pbc_license_detail_text__github_862546630_xiancundata_EXCERPT.txt"
CANCELLED_EXCERPT = FIXTURES / "pbc_cancelled_detail_text__github_862546630_zhuxiaodata_EXCERPT.txt"
LICENSED_CSV = FIXTURES / "pbc_licensed_list__github_862546630_现存公司列表_ACQUIRERS_EXCERPT.csv"
CANCELLED_CSV = FIXTURES / "pbc_cancelled_list__github_862546630_注销公司列表_EXCERPT.csv"

SECTION = "https://www.pbc.gov.cn/zhengwugongkai/4081330/4081344/4081407/4081702/4081749/"
P2_URL = LICENSED_LIST_PAGE_URL.format(n=2)


def licensed(detail_id: str) -> str:
    return f"{SECTION}4081783/{detail_id}/index.html"


def cancelled(detail_id: str) -> str:
    return f"{SECTION}4081786/{detail_id}/index.html"


#: URL -> fixture file: the site as the fixtures reconstruct it.
SITE: dict[str, str] = {
    LICENSED_LIST_URL: "licensed_list_p1.html",
    P2_URL: "licensed_list_p2.html",
    CANCELLED_LIST_URL: "cancelled_list.html",
    licensed("4149992"): "licensed_4149992_alipay.html",
    licensed("4149995"): "licensed_4149995_chinaums.html",
    licensed("4150007"): "licensed_4150007_kailiantong.html",
    licensed("4150166"): "licensed_4150166_dianyin.html",
    cancelled("4149878"): "cancelled_4149878_zhejiang_yishi.html",
    cancelled("4149893"): "cancelled_4149893_huashi.html",
    cancelled("4149950"): "cancelled_4149950_jiaoguang.html",
    cancelled("2024121009300112"): "cancelled_2024121009300112_qianyue.html",
    cancelled("4150085"): "cancelled_4150085_changrun.html",
}
FETCHED_AT = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)


class FixtureFetcher:
    """A :class:`sources.base.Fetcher` over fixture files, with a log of what was asked."""

    def __init__(self, routes: Mapping[str, str] | None = None) -> None:
        self.routes = dict(SITE if routes is None else routes)
        self.calls: list[tuple[str, frozenset[str] | None]] = []

    async def get(self, url: str, *, allowed_hosts: frozenset[str] | None = None) -> Fetched:
        self.calls.append((url, allowed_hosts))
        name = self.routes.get(url)
        if name is None:
            raise FetchError("http_status", f"HTTP 404 for {url}", url=url, status=404)
        body = (FIXTURES / name).read_bytes()
        m = re.search(rb"charset=[\"']?([A-Za-z0-9_-]+)", body[:1024])
        declared = m.group(1).decode().lower() if m else "utf-8"
        encoding = "gb18030" if declared in ("gbk", "gb2312", "gb18030") else declared
        return Fetched(
            url=url,
            status=200,
            headers={"content-type": f"text/html; charset={declared}"},
            body=body,
            text=body.decode(encoding, errors="replace"),
            encoding=encoding,
            fetched_at=FETCHED_AT,
            sha256=hashlib.sha256(body).hexdigest(),
        )

    @property
    def urls(self) -> list[str]:
        return [url for url, _ in self.calls]


def html(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def sha(name: str) -> str:
    return hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest()


def party(**kw: Any) -> PartyQuery:
    base: dict[str, Any] = {"key": "acq", "role": "acquirer", "name": ""}
    base.update(kw)
    return PartyQuery(**base)


async def run(
    p: PartyQuery, fetcher: FixtureFetcher | None = None
) -> tuple[Lookup, FixtureFetcher]:
    fetcher = fetcher or FixtureFetcher()
    return await PbocLicencesSource().lookup(p, fetcher), fetcher


def only(notices: tuple[Notice, ...], kind: str) -> Notice:
    found = [n for n in notices if n.kind == kind]
    assert len(found) == 1, notices
    return found[0]


# ---------------------------------------------------------------------------------------------
# The oracle: the real excerpt text, split the naive way a human reads it
# ---------------------------------------------------------------------------------------------
PRINTED_LABELS = (
    "许可证编号",
    "公司名称",
    "法定代表人（负责人）",
    "住所（营业场所）",
    "业务类型",
    "业务覆盖范围",
    "换证日期",
    "发证日期",
    "首次许可日期",
    "有效期至",
    "备注",
)


def excerpt_records(path: Path) -> list[tuple[str, dict[str, str]]]:
    """(heading, {label: value}) for each blank-line separated record of an excerpt file."""
    body = "\n".join(
        line for line in path.read_text("utf-8").splitlines() if not line.startswith("#")
    )
    records = []
    for chunk in re.split(r"\n\s*\n", body.strip("\n")):
        heading, *lines = chunk.split("\n")
        fields: dict[str, str] = {}
        for line in lines:
            text = line.strip()
            label = next(lb for lb in PRINTED_LABELS if text.startswith(lb))
            fields[label] = " ".join(text[len(label) :].split())
        records.append((" ".join(heading.split()), fields))
    return records


#: licence no. -> (fixture, index of the block on the page) for every excerpt record.
EXCERPT_PAGES = {
    "Z2000133000019": ("licensed_4149992_alipay.html", 1),
    "Z2000231000010": ("licensed_4149995_chinaums.html", 1),
    "Z2000611000010": ("licensed_4150007_kailiantong.html", 0),
    "Z2006331000016": ("licensed_4150166_dianyin.html", 0),
    "Z2006633000011": ("cancelled_4149878_zhejiang_yishi.html", 0),
    "Z2007331000014": ("cancelled_4149893_huashi.html", 0),
    "Z2016011000012": ("cancelled_4149950_jiaoguang.html", 0),
    "Z2020031000010": ("cancelled_2024121009300112_qianyue.html", 0),
    "Z2023734000014": ("cancelled_4150085_changrun.html", 0),
}
ALL_RECORDS = excerpt_records(LICENSED_EXCERPT) + excerpt_records(CANCELLED_EXCERPT)


def test_the_oracle_covers_every_excerpt_record() -> None:
    assert len(ALL_RECORDS) == 9
    assert {fields["许可证编号"] for _, fields in ALL_RECORDS} == set(EXCERPT_PAGES)


@pytest.mark.parametrize(
    ("heading", "fields"), ALL_RECORDS, ids=[f["许可证编号"] for _, f in ALL_RECORDS]
)
def test_every_real_record_parses_back_out_of_its_page(
    heading: str, fields: dict[str, str]
) -> None:
    page, index = EXCERPT_PAGES[fields["许可证编号"]]
    block = parse_detail_blocks(html(page))[index]
    assert block.heading == heading
    assert dict(block.printed) == fields
    assert block.is_history == heading.startswith("变更前")
    assert block.licence_no == fields["许可证编号"]
    assert block.name == fields["公司名称"]
    assert block.address == fields["住所（营业场所）"]


# ---------------------------------------------------------------------------------------------
# Typed fields of the real records
# ---------------------------------------------------------------------------------------------
def test_current_record_typed_fields_dianyin() -> None:
    r = parse_detail_page(html("licensed_4150166_dianyin.html"))
    assert r.heading == "机构详细信息" and not r.is_history
    assert r.licence_no == "Z2006331000016"
    assert r.name == "上海电银信息技术有限公司"
    assert r.legal_representative == "万国锋"
    assert r.address == "中国（上海）自由贸易试验区博霞路50号504室"
    assert r.business_types == ("互联网支付", "移动电话支付", "银行卡收单")
    assert r.coverage == "全国"
    assert r.reissued_on == date(2018, 6, 26)
    assert r.first_licensed_on == date(2011, 12, 22)
    assert r.valid_until == date(2021, 12, 21)
    assert r.issued_on is None
    assert r.remarks is None  # "——"
    assert r.cancellation is None


def test_current_block_wins_over_the_history_block_after_it() -> None:
    # 银联商务: current name 股份有限公司 (list CSV), history block 有限公司 (real text).
    page = html("licensed_4149995_chinaums.html")
    current = parse_detail_page(page)
    assert current.name == "银联商务股份有限公司"
    assert current.legal_representative is None  # unknown in the reconstruction: "——"
    assert current.address is None
    history = parse_detail_blocks(page)[1]
    assert history.is_history
    assert history.name == "银联商务有限公司"
    assert history.legal_representative == "蔡剑波"
    assert history.issued_on == date(2011, 5, 3)  # 发证日期 "2011年5月3日"
    assert history.valid_until == date(2016, 5, 2)
    assert history.cancellation is None  # a 变更前 period is not a cancellation


def test_business_types_split_outside_brackets_only() -> None:
    history = parse_detail_blocks(html("licensed_4149992_alipay.html"))[1]
    assert history.heading == "变更前机构详细信息(2011年5月3日至2011年9月19日)"
    assert history.legal_representative == "马 云"
    assert history.business_types == (
        "货币汇兑",
        "互联网支付",
        "移动电话支付",
        "预付卡发行与受理（仅限于线上实名支付账户充值）",
        "银行卡收单",
    )


def test_cancelled_with_date_in_valid_until_and_heading() -> None:
    r = parse_detail_page(html("cancelled_4149878_zhejiang_yishi.html"))
    assert r.issued_on == date(2011, 12, 22)
    assert r.valid_until == date(2016, 12, 21)  # the date before "(于…注销)"
    assert r.remarks is None  # no 备注 row at all on this page
    assert r.cancellation == Cancellation(
        reasons=("cancelled",),
        dated=date(2015, 8, 24),
        successor=None,
        annotations=(
            "2016-12-21(于2015年8月24日注销)",
            "机构详细信息（有效期2011年12月22日至2015年8月24日）",
        ),
    )


def test_merged_licence_names_its_successor() -> None:
    r = parse_detail_page(html("cancelled_4149893_huashi.html"))
    assert r.cancellation is not None
    assert r.cancellation.reasons == ("merged",)
    assert r.cancellation.successor == "易生支付有限公司"
    assert r.reissued_on is None  # "——"


@pytest.mark.parametrize(
    ("page", "reasons", "dated", "first", "valid"),
    [
        (
            "cancelled_4149950_jiaoguang.html",
            ("not_renewed",),
            date(2017, 6, 26),
            date(2012, 6, 27),
            date(2017, 6, 26),
        ),
        (
            "cancelled_2024121009300112_qianyue.html",
            ("voluntary",),
            None,
            date(2013, 1, 6),  # "2013年1月6日"
            date(2018, 1, 5),
        ),
        (
            "cancelled_4150085_changrun.html",
            ("no_renewal_application",),
            None,
            date(2013, 7, 6),
            date(2018, 7, 5),
        ),
    ],
)
def test_cancellation_remarks(
    page: str, reasons: tuple[str, ...], dated: date | None, first: date, valid: date
) -> None:
    r = parse_detail_page(html(page))
    assert r.cancellation is not None
    assert r.cancellation.reasons == reasons
    assert r.cancellation.dated == dated
    assert r.cancellation.successor is None
    assert r.first_licensed_on == first
    assert r.valid_until == valid


def test_heading_annotation_void_licence() -> None:
    # Verbatim heading quoted in registries.md §1.3 (广东益民, cancelled 2015年10月8日).
    heading = (
        "机构详细信息（有效期2011年12月22日至2015年10月8日。《支付业务许可证》正本未收回，作废。）"
    )
    c = parse_cancellation("2016-12-21", None, heading)
    assert c is not None
    assert c.reasons == ("cancelled", "void")
    assert c.dated == date(2015, 10, 8)


@pytest.mark.parametrize(
    ("valid_until", "remarks", "heading", "expected"),
    [
        ("2021-12-21", "——", "机构详细信息", None),
        ("2016年5月2日", None, "变更前机构详细信息（2011年5月3日至2013年5月20日）", None),
        (
            "2026-12-08",
            "于2024年12月9日注销",  # the form a 2024 news reprint quotes from 备注
            "机构详细信息",
            Cancellation(("cancelled",), date(2024, 12, 9), None, ("于2024年12月9日注销",)),
        ),
        (
            "2016-12-21",
            "被易生支付有限公司吸收合并。",
            None,
            Cancellation(("merged",), None, "易生支付有限公司", ("被易生支付有限公司吸收合并。",)),
        ),
        (
            "2017-6-26",
            "不予续展",
            "",
            Cancellation(("not_renewed",), None, None, ("不予续展",)),
        ),
    ],
)
def test_parse_cancellation(
    valid_until: str, remarks: str | None, heading: str | None, expected: Cancellation | None
) -> None:
    assert parse_cancellation(valid_until, remarks, heading) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2018-6-26", date(2018, 6, 26)),
        ("2013年1月6日", date(2013, 1, 6)),
        ("2016-12-21(于2015年8月24日注销)", date(2016, 12, 21)),
        ("２０１８－６－２６", date(2018, 6, 26)),  # full-width digits fold under NFKC
        ("——", None),
        ("", None),
        (None, None),
        ("2018-2-30", None),
    ],
)
def test_parse_date(text: str | None, expected: date | None) -> None:
    assert parse_date(text) == expected


def test_split_business_types_edge_cases() -> None:
    assert split_business_types("银行卡收单（仅限于广东省内）") == ("银行卡收单（仅限于广东省内）",)
    assert split_business_types("——") == ()
    assert split_business_types("支付交易处理Ⅰ类，储值账户运营Ⅱ类") == (
        "支付交易处理Ⅰ类",
        "储值账户运营Ⅱ类",
    )


def test_normalize_name_folds_brackets_spaces_and_width() -> None:
    assert normalize_name("支付宝（中国）网络技术有限公司") == normalize_name(
        " 支付宝 (中国)　网络技术有限公司 "
    )
    assert normalize_name("ＡＢＣ支付") == normalize_name("abc支付")
    assert normalize_name("银联商务有限公司") != normalize_name("银联商务股份有限公司")


# ---------------------------------------------------------------------------------------------
# Encodings, broken markup, wrong pages
# ---------------------------------------------------------------------------------------------
def test_gbk_page_parses_like_the_utf8_one() -> None:
    utf8 = parse_detail_page(html("licensed_4150166_dianyin.html"))
    gbk_bytes = (FIXTURES / "licensed_4150166_dianyin_gbk.html").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        gbk_bytes.decode("utf-8")  # it really is GBK
    assert parse_detail_page(gbk_bytes) == utf8  # bytes: charset taken from the <meta>
    assert parse_detail_page(gbk_bytes.decode("gbk")) == utf8  # text decoded by a fetcher


def test_malformed_markup_still_gives_the_record() -> None:
    clean = parse_detail_page(html("licensed_4150007_kailiantong.html"))
    broken = parse_detail_page(html("malformed_detail_4150007.html"))
    for attr in (
        "licence_no",
        "name",
        "legal_representative",
        "address",
        "business_types",
        "coverage",
        "reissued_on",
        "first_licensed_on",
        "valid_until",
        "remarks",
        "cancellation",
    ):
        assert getattr(broken, attr) == getattr(clean, attr), attr
    assert broken.printed["法定代表人(负责人)"] == "宋茜"  # printed label kept as printed


def test_page_without_table_markup_falls_back_to_text_lines() -> None:
    table = parse_detail_page(html("licensed_4150166_dianyin.html"))
    lines = parse_detail_page(html("textonly_detail_4150166.html"))
    assert lines.address == "中国（上海）自由贸易试验区博霞路50号504室"  # value on the next line
    assert dict(lines.printed) == dict(table.printed)
    assert lines.valid_until == table.valid_until


def test_error_page_is_a_layout_error() -> None:
    with pytest.raises(PageLayoutError):
        parse_detail_page(html("not_a_registry.html"))
    with pytest.raises(PageLayoutError):
        parse_list_page(html("not_a_registry.html"))
    with pytest.raises(PageLayoutError):
        parse_list_page(html("licensed_4150166_dianyin.html"))


def test_challenge_page_is_recognised_and_nothing_else_is() -> None:
    assert is_challenge_page(html("challenge.html"))
    assert is_challenge_page((FIXTURES / "challenge.html").read_bytes())
    for path in FIXTURES.glob("*.html"):
        if path.name != "challenge.html":
            assert not is_challenge_page(path.read_bytes()), path.name


# ---------------------------------------------------------------------------------------------
# List pages
# ---------------------------------------------------------------------------------------------
def test_list_page_one_rows_and_paging() -> None:
    page = parse_list_page(html("licensed_list_p1.html"), base_url=LICENSED_LIST_URL)
    assert (page.total_rows, page.page, page.total_pages) == (22, 1, 2)
    assert page.next_url == P2_URL
    assert len(page.rows) == 12  # the header <li> is not a row
    first = page.rows[0]
    assert first.licence_no == "Z2000133000019"
    assert first.name == "支付宝（中国）网络技术有限公司"
    assert first.detail_url == licensed("4149992")
    assert first.date == "2022年11月29日"
    assert first.detail_id == "4149992"


def test_list_page_two_is_the_last() -> None:
    page = parse_list_page(html("licensed_list_p2.html"), base_url=P2_URL)
    assert (page.total_rows, page.page, page.total_pages) == (22, 2, 2)
    assert page.next_url is None  # 下一页 without href
    assert len(page.rows) == 10


def test_every_real_csv_row_is_on_the_list_pages() -> None:
    rows = {
        r.licence_no: r
        for name, url in (
            ("licensed_list_p1.html", LICENSED_LIST_URL),
            ("licensed_list_p2.html", P2_URL),
        )
        for r in parse_list_page(html(name), base_url=url).rows
    }
    with LICENSED_CSV.open(encoding="utf-8") as f:
        real = list(csv.DictReader(f))
    assert len(real) == 19
    for row in real:
        got = rows[row["许可证编号"]]
        assert got.name == row["公司名称"]
        # the scrape stored http://; the page links are root-relative and resolve against https
        assert got.detail_url == row["更改日期"].replace("http://", "https://")


def test_cancelled_list_dates_and_long_ids() -> None:
    page = parse_list_page(html("cancelled_list.html"), base_url=CANCELLED_LIST_URL)
    assert (page.total_rows, page.page, page.total_pages, page.next_url) == (11, 1, 1, None)
    by_no = {r.licence_no: r for r in page.rows}
    with CANCELLED_CSV.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            assert by_no[row["许可证编号"]].date == row["注销日期"]
            assert by_no[row["许可证编号"]].detail_id == row["url"].split("/")[-2]
    assert by_no["Z2020031000010"].detail_id == "2024121009300112"


def test_truncated_list_keeps_the_complete_rows() -> None:
    page = parse_list_page((FIXTURES / "malformed_list_truncated.html").read_bytes())
    assert [r.licence_no for r in page.rows][-1] == "Z2001031000010"
    assert len(page.rows) == 7
    assert page.rows[-1].name == "上海盛付通电子支付服务有限公司"  # from a[title], before the cut
    assert page.rows[-1].date == ""  # cut off
    assert (page.total_rows, page.total_pages, page.next_url) == (None, None, None)


# ---------------------------------------------------------------------------------------------
# Lookups through a Fetcher
# ---------------------------------------------------------------------------------------------
def test_is_a_source() -> None:
    assert isinstance(PbocLicencesSource(), Source)
    assert PbocLicencesSource.name == "pboc_licences"


async def test_lookup_by_licence_walks_to_page_two() -> None:
    result, fetcher = await run(party(name="电银", licence_no="z2006331000016"))
    assert fetcher.urls == [LICENSED_LIST_URL, P2_URL, licensed("4150166")]
    assert all(hosts == PBOC_HOSTS for _, hosts in fetcher.calls)
    by_kind = {f.kind: f for f in result.findings}
    assert set(by_kind) == {"licence", "postal"}
    lic, post = by_kind["licence"], by_kind["postal"]
    assert lic.value == "Z2006331000016" and lic.confidence == 0.95
    assert post.value == "中国（上海）自由贸易试验区博霞路50号504室"
    assert post.label == "住所（营业场所）" and post.confidence == 0.6
    for f in result.findings:
        assert f.party == "acq" and f.source == "pboc_licences"
        assert f.url == licensed("4150166")
        assert f.evidence_sha256 == sha("licensed_4150166_dianyin.html")
        assert f.seen_at == FETCHED_AT
    fact = only(result.notices, "fact")
    assert len(result.notices) == 1
    assert fact.data["status"] == "licensed" and fact.data["listed_in"] == "licensed"
    assert fact.data["business_types"] == ["互联网支付", "移动电话支付", "银行卡收单"]
    assert fact.data["coverage"] == "全国"
    assert fact.data["valid_until"] == "2021-12-21"
    assert fact.data["list_url"] == P2_URL
    assert fact.data["list_evidence_sha256"] == sha("licensed_list_p2.html")
    assert "Z2006331000016" in fact.message and "licensed" in fact.message


async def test_page_template_is_used_when_the_page_has_no_next_link(tmp_path: Path) -> None:
    # Same page one, but its 下一页 has lost its href: "当前页:1/2" plus the recorded
    # 9398ddc0-{n}.html pattern still lead to page two.
    p1 = html("licensed_list_p1.html")
    no_next = re.sub(r'<a href="[^"]*">下一页</a>', "<a>下一页</a>", p1)
    assert no_next != p1
    (tmp_path / "p1.html").write_text(no_next, encoding="utf-8")
    routes = dict(SITE, **{LICENSED_LIST_URL: str(tmp_path / "p1.html")})
    result, fetcher = await run(
        party(name="电银", licence_no="Z2006331000016"), FixtureFetcher(routes)
    )
    assert fetcher.urls == [LICENSED_LIST_URL, P2_URL, licensed("4150166")]
    assert {f.kind for f in result.findings} == {"licence", "postal"}


async def test_lookup_by_name_folds_brackets_and_stops_at_the_match() -> None:
    result, fetcher = await run(party(name="支付宝", legal_name="支付宝 (中国) 网络技术有限公司"))
    assert fetcher.urls == [LICENSED_LIST_URL, licensed("4149992")]
    assert [(f.kind, f.value) for f in result.findings] == [("licence", "Z2000133000019")]
    # no postal finding: the current address is "——" on this (reconstructed) page
    assert only(result.notices, "fact").data["name"] == "支付宝（中国）网络技术有限公司"


async def test_licence_number_is_authoritative_over_a_stale_name() -> None:
    result, _ = await run(
        party(name="银联商务", legal_name="银联商务有限公司", licence_no="Z2000231000010")
    )
    assert [f.value for f in result.findings if f.kind == "licence"] == ["Z2000231000010"]
    facts = [n for n in result.notices if n.kind == "fact"]
    mismatch = [n for n in facts if n.data.get("name_mismatch")]
    assert len(mismatch) == 1
    assert mismatch[0].data["registered_name"] == "银联商务股份有限公司"
    assert mismatch[0].data["configured_name"] == "银联商务有限公司"


async def test_merged_licence_gives_a_successor_notice() -> None:
    result, fetcher = await run(party(name="华势", licence_no="Z2007331000014"))
    assert fetcher.urls == [LICENSED_LIST_URL, P2_URL, CANCELLED_LIST_URL, cancelled("4149893")]
    successor = only(result.notices, "successor")
    assert successor.data["name"] == "易生支付有限公司"
    assert successor.data["from_licence_no"] == "Z2007331000014"
    fact = only(result.notices, "fact")
    assert fact.data["status"] == "cancelled" and fact.data["listed_in"] == "cancelled"
    assert fact.data["list_date"] == "2017年5月15日"  # 注销日期 from the (real) list row
    assert fact.data["cancellation"]["reasons"] == ["merged"]
    postal = [f for f in result.findings if f.kind == "postal"]
    assert [(p.value, p.confidence) for p in postal] == [("上海市长宁区天山路8号1002室", 0.3)]


async def test_cancelled_licence_with_a_long_detail_id_found_by_name() -> None:
    result, fetcher = await run(party(name="上海千悦企业管理有限公司"))
    assert fetcher.urls[-1] == cancelled("2024121009300112")
    fact = only(result.notices, "fact")
    assert fact.data["status"] == "cancelled"
    assert fact.data["cancellation"]["reasons"] == ["voluntary"]
    assert fact.data["first_licensed_on"] == "2013-01-06"
    assert not [n for n in result.notices if n.kind == "successor"]


async def test_challenge_on_the_list_blocks_and_stops() -> None:
    routes = dict(SITE, **{LICENSED_LIST_URL: "challenge.html"})
    result, fetcher = await run(
        party(name="电银", licence_no="Z2006331000016"), FixtureFetcher(routes)
    )
    assert fetcher.urls == [LICENSED_LIST_URL]  # nothing parsed, nothing else fetched
    assert result.findings == ()
    blocked = only(result.notices, "blocked")
    assert len(result.notices) == 1
    assert blocked.url == LICENSED_LIST_URL
    assert blocked.advice is not None
    assert LICENSED_LIST_URL in blocked.advice and "detail_url" in blocked.advice
    assert "住所（营业场所）" in blocked.fields
    assert blocked.data["evidence_sha256"] == sha("challenge.html")


async def test_challenge_on_the_detail_page_blocks() -> None:
    routes = dict(SITE, **{licensed("4150166"): "challenge.html"})
    result, _ = await run(party(name="电银", licence_no="Z2006331000016"), FixtureFetcher(routes))
    assert result.findings == ()
    assert [n.kind for n in result.notices] == ["blocked"]


async def test_missing_detail_page_is_an_error_notice() -> None:
    # 拉卡拉 is on list page 1 (real row); its detail page is not served: 404.
    result, fetcher = await run(party(name="拉卡拉", licence_no="Z2002511000017"))
    assert fetcher.urls == [LICENSED_LIST_URL, licensed("4150061")]
    assert result.findings == ()
    error = only(result.notices, "error")
    assert error.url == licensed("4150061")
    assert error.data == {"kind": "http_status", "status": 404}
    assert "404" in error.message


async def test_unknown_licence_is_reported_as_not_listed() -> None:
    result, fetcher = await run(party(name="某银行", licence_no="Z2099999000010"))
    assert fetcher.urls == [LICENSED_LIST_URL, P2_URL, CANCELLED_LIST_URL]
    assert result.findings == ()
    fact = only(result.notices, "fact")
    assert fact.data["status"] == "not_listed" and fact.data["truncated"] is False
    assert "Banks" in fact.message


async def test_brand_name_matching_two_companies_goes_to_a_human() -> None:
    result, _ = await run(party(name="银联商务"))
    assert result.findings == ()
    task = only(result.notices, "manual_task")
    names = {c["name"] for c in task.data["candidates"]}
    assert names == {"银联商务股份有限公司", "北京银联商务有限公司"}


async def test_hints_override_the_list_url_and_page_budget() -> None:
    mirror = "https://mirror.example.test/pboc/list.html"
    mirror_p2 = "https://mirror.example.test" + P2_URL.removeprefix("https://www.pbc.gov.cn")
    routes = {
        mirror: "licensed_list_p1.html",
        mirror_p2: "licensed_list_p2.html",
        "https://mirror.example.test/pboc/cancelled.html": "cancelled_list.html",
        "https://mirror.example.test"
        + licensed("4150166").removeprefix(
            "https://www.pbc.gov.cn"
        ): "licensed_4150166_dianyin.html",
    }
    hints = {
        "list_url": mirror,
        "cancelled_list_url": "https://mirror.example.test/pboc/cancelled.html",
    }
    p = party(name="电银", licence_no="Z2006331000016", hints={"pboc_licences": hints})
    result, fetcher = await run(p, FixtureFetcher(routes))
    assert fetcher.urls[:2] == [mirror, mirror_p2]
    assert all(hosts is None for _, hosts in fetcher.calls)  # not pbc.gov.cn: the fetcher's default
    assert {f.kind for f in result.findings} == {"licence", "postal"}

    capped = party(
        name="电银", licence_no="Z2006331000016", hints={"pboc_licences": dict(hints, max_pages=1)}
    )
    result, fetcher = await run(capped, FixtureFetcher(routes))
    assert fetcher.urls == [mirror, "https://mirror.example.test/pboc/cancelled.html"]
    task = only(result.notices, "manual_task")
    assert task.data["truncated"] is True
    assert result.findings == ()


async def test_detail_url_hint_skips_the_lists() -> None:
    p = party(name="华势", hints={"pboc_licences": {"detail_url": cancelled("4149893")}})
    result, fetcher = await run(p)
    assert fetcher.urls == [cancelled("4149893")]
    assert only(result.notices, "fact").data["listed_in"] == "cancelled"
    assert only(result.notices, "successor").data["name"] == "易生支付有限公司"


@pytest.mark.parametrize(
    "hints",
    [{"max_pages": "many"}, {"max_pages": 0}, {"list_url": "ftp://x"}, {"colour": "blue"}, "x"],
)
async def test_bad_hints_are_one_error_notice_and_no_fetch(hints: object) -> None:
    result, fetcher = await run(party(name="电银", hints={"pboc_licences": hints}))
    assert fetcher.calls == []
    assert [n.kind for n in result.notices] == ["error"]


async def test_malformed_licence_number_is_an_error_notice() -> None:
    result, fetcher = await run(party(name="电银", licence_no="Z20063310"))
    assert fetcher.calls == []
    assert "Z + 13 digits" in only(result.notices, "error").message


async def test_unrecognised_detail_page_is_a_layout_error() -> None:
    routes = dict(SITE, **{licensed("4150166"): "not_a_registry.html"})
    result, _ = await run(party(name="电银", licence_no="Z2006331000016"), FixtureFetcher(routes))
    assert result.findings == ()
    assert only(result.notices, "error").data == {"kind": "layout"}


async def test_list_whose_rows_cannot_be_read_is_a_layout_error_not_a_miss() -> None:
    page = parse_list_page(html("list_rows_changed.html"))
    assert page.rows == () and page.total_rows == 22
    routes = dict(SITE, **{LICENSED_LIST_URL: "list_rows_changed.html"})
    result, fetcher = await run(
        party(name="电银", licence_no="Z2006331000016"), FixtureFetcher(routes)
    )
    assert fetcher.urls == [LICENSED_LIST_URL]
    assert [n.kind for n in result.notices] == ["error"]
    assert result.notices[0].data == {"kind": "layout"}


async def test_detail_page_showing_another_licence_is_not_used() -> None:
    routes = dict(SITE, **{licensed("4150166"): "licensed_4150007_kailiantong.html"})
    result, _ = await run(party(name="电银", licence_no="Z2006331000016"), FixtureFetcher(routes))
    assert result.findings == ()
    assert only(result.notices, "error").data == {
        "expected": "Z2006331000016",
        "found": "Z2000611000010",
    }


async def test_gbk_detail_page_through_the_fetcher() -> None:
    utf8, _ = await run(party(name="电银", licence_no="Z2006331000016"))
    routes = dict(SITE, **{licensed("4150166"): "licensed_4150166_dianyin_gbk.html"})
    gbk, _ = await run(party(name="电银", licence_no="Z2006331000016"), FixtureFetcher(routes))
    assert [(f.kind, f.value) for f in gbk.findings] == [(f.kind, f.value) for f in utf8.findings]
    assert gbk.findings[0].evidence_sha256 == sha("licensed_4150166_dianyin_gbk.html")
