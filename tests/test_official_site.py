"""sources/official_site.py: extraction on constructed fixture pages, and the lookup contract.

The fixture pages are hand-built (see tests/fixtures/sites/README.md); the fake fetcher below
implements ``sources.base.Fetcher`` the way the engine's does for what matters here: it hands
back exact bytes, their SHA-256, a fetch time and text decoded with the page's charset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sources.base import Fetched, FetchError, Finding, Lookup, PartyQuery, Source
from sources.official_site import Extracted, OfficialSiteSource, extract_contacts

SITES = Path(__file__).parent / "fixtures" / "sites"
AT = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def page(name: str, encoding: str = "utf-8") -> str:
    return (SITES / name).read_bytes().decode(encoding)


def rows(
    name: str, url: str = "https://pay.example.com/about/contact.html", **kw: object
) -> list[Extracted]:
    encoding = "gb18030" if "gbk" in name else "utf-8"
    return extract_contacts(page(name, encoding), url, **kw)  # type: ignore[arg-type]


def one(found: list[Extracted], kind: str, value: str) -> Extracted:
    matches = [r for r in found if r.kind == kind and r.value == value]
    assert len(matches) == 1, f"{kind} {value} not found once in {found}"
    return matches[0]


def values(found: list[Extracted], kind: str) -> set[str]:
    return {r.value for r in found if r.kind == kind}


@dataclass
class FakeFetcher:
    """Serves fixture bytes by URL; a ``FetchError`` value is raised instead of served."""

    pages: Mapping[str, tuple[bytes, str] | FetchError]
    final_url: Mapping[str, str] = field(default_factory=dict)  # simulated redirects
    status: int = 200
    calls: list[tuple[str, frozenset[str] | None]] = field(default_factory=list)

    async def get(self, url: str, *, allowed_hosts: frozenset[str] | None = None) -> Fetched:
        self.calls.append((url, allowed_hosts))
        item = self.pages.get(url)
        if item is None:
            raise FetchError("http_status", "404 Not Found", url=url, status=404)
        if isinstance(item, FetchError):
            raise item
        body, charset = item
        return Fetched(
            url=self.final_url.get(url, url),
            status=self.status,
            headers={"content-type": f"text/html; charset={charset}"},
            body=body,
            text=body.decode(charset, errors="replace"),
            encoding=charset,
            fetched_at=AT,
            sha256=hashlib.sha256(body).hexdigest(),
        )


def party(**kw: object) -> PartyQuery:
    base: dict[str, object] = {"key": "example_pay", "role": "acquirer", "name": "示例支付"}
    base.update(kw)
    return PartyQuery(**base)  # type: ignore[arg-type]


def fixture_bytes(name: str) -> tuple[bytes, str]:
    return (SITES / name).read_bytes(), "gb18030" if "gbk" in name else "utf-8"


# --------------------------------------------------------------------------- extraction


def test_contact_page_reads_every_channel_kind_normalised() -> None:
    found = rows("contact_utf8.html")
    assert one(found, "phone", "+8695118").label == "客户服务热线"
    assert one(found, "phone", "+864000001234").label == "服务热线"
    assert one(found, "phone", "+862138585566").label == "投诉电话"  # written (021)38585566
    assert one(found, "email", "tousu@pay.example.com").label == "投诉邮箱"
    postal = one(found, "postal", "上海市浦东新区示例路100号示例大厦8层（邮编 200120）")
    assert postal.label == "通信地址"  # 邮编 on the next <li> is attached to the address
    assert one(found, "licence", "Z2002211000010").confidence >= 0.9
    assert "https://pay.example.com/complaint/index.html" in values(found, "web_form")
    assert "https://pay.example.com/service/complaint.html" in values(found, "web_form")
    # script text is not page text; javascript: links are not forms
    assert "+8613900000000" not in values(found, "phone")
    assert not any(v.startswith("javascript") for v in values(found, "web_form"))


def test_footer_registration_numbers_are_not_phones() -> None:
    found = rows("news_with_footer.html", url="https://pay.example.com/news/2026/0315.html")
    phones = values(found, "phone")
    # 京公网安备 11010802020134号, ICP numbers, dates and times must not leak in as phones
    assert phones == {"+8695118", "+864000001234", "+8613912345678"}


def test_customer_channels_rank_above_hr_press_and_partner_channels() -> None:
    found = rows("contact_utf8.html")
    complaint = one(found, "email", "tousu@pay.example.com").confidence
    for other in ("hr@pay.example.com", "media@pay.example.com", "bd@pay.example.com"):
        assert one(found, "email", other).confidence < complaint - 0.3
    # the phone under the 媒体联系 heading is labelled just "电话", the heading lowers it
    assert one(found, "phone", "+861066001917").confidence < 0.5
    assert (
        one(found, "phone", "+8695118").confidence > one(found, "phone", "+861066001918").confidence
    )


def test_footer_hotline_outranks_numbers_in_article_text() -> None:
    found = rows("news_with_footer.html", url="https://pay.example.com/news/2026/0315.html")
    footer = one(found, "phone", "+8695118")
    assert footer.where == "footer" and footer.label == "客服热线"
    body_400 = one(found, "phone", "+864000001234")
    scammer = one(found, "phone", "+8613912345678")
    assert body_400.where == scammer.where == "body"
    assert footer.confidence > body_400.confidence > scammer.confidence
    assert one(found, "licence", "Z2002211000010").where == "footer"
    # "覆盖95566个行政村": a bare 5-digit number in prose is a count, not a hotline
    assert "+8695566" not in values(found, "phone")
    # best first
    assert found == sorted(found, key=lambda r: -r.confidence)


def test_section_heading_context_ends_at_the_footer() -> None:
    html = """<body>
      <h3>人才招聘</h3><p>招聘电话：010-66001917</p><p>电话：010-66001916</p>
      <div class="footer"><p>电话：010-66001918</p></div>
    </body>"""
    found = extract_contacts(html, "https://pay.example.com/")
    hr = one(found, "phone", "+861066001916").confidence  # under the 人才招聘 heading
    assert hr < 0.5
    assert one(found, "phone", "+861066001918").confidence > hr + 0.3


def test_one_long_line_with_many_values_is_read_in_full() -> None:
    # A minified page can put everything on one line; every value must still be found, with
    # its own label, without the scan growing quadratically.
    parts = [
        f"电话：010-6600{i:04d} 邮箱 u{i}@pay.example.com 地址：北京市示例路{i}号"
        for i in range(1500)
    ]
    found = extract_contacts("<p>" + " ".join(parts) + "</p>", "https://pay.example.com/")
    assert len(values(found, "phone")) == 1500
    assert len(values(found, "email")) == 1500
    assert len(values(found, "postal")) == 1500
    assert {r.label for r in found if r.kind == "phone"} == {"电话"}


def test_fax_is_labelled_and_never_a_phone() -> None:
    found = rows("fax_next_to_phone.html")
    assert values(found, "fax") == {
        "+862138585567",  # 传真 right after a 电话 on the same line
        "+862138585568",  # Fax:
        "+861066001919",  # 客服传真 is still a fax
        "+8675586013390",  # <dt>传真号码</dt><dd>…</dd>
    }
    assert values(found, "phone") == {
        "+862138585566;ext=807755",  # 021-38585566转807755
        "+862138585566",  # Tel: +86 21 3858 5566
        "+8675586013389",  # 电话/传真: answers calls, so kept, but lowered
    }
    both = one(found, "phone", "+8675586013389")
    assert both.label == "电话/传真"
    assert both.confidence < one(found, "phone", "+862138585566;ext=807755").confidence


def test_obfuscated_emails_are_recovered() -> None:
    found = rows("obfuscated_emails.html")
    assert values(found, "email") == {
        "kefu@pay.example.com",  # [at]
        "tousu@pay.example.com",  # (at) (dot)
        "compliance@pay.example.com",  # AT DOT
        "service@pay.example.com",  # '#' with "请将#换成@"
        "merchant@pay.example.com",  # full-width ＠ and ．
        "intl@pay.example.com",  # {at} {dot}
        "cf-kefu@pay.example.com",  # Cloudflare data-cfemail
        "lianxi@pay.example.com",  # percent-encoded mailto: with ?subject=
    }
    assert one(found, "email", "tousu@pay.example.com").label == "投诉邮箱"
    assert one(found, "email", "lianxi@pay.example.com").label == "点击发送邮件"


def test_hash_is_not_undone_without_the_pages_own_hint() -> None:
    html = "<p>业务咨询邮箱：service#pay.example.com</p>"
    assert values(extract_contacts(html, "https://pay.example.com/"), "email") == set()


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("400-820-2819", "+864008202819"),
        ("400 820 2819", "+864008202819"),
        ("4000887626", "+864000887626"),
        ("400-6155-799", "+864006155799"),
        ("95118", "+8695118"),
        ("96199", "+8696199"),
        ("12363", "+8612363"),
        ("010-66001918", "+861066001918"),
        ("(021)38585566", "+862138585566"),
        ("（021）38585566", "+862138585566"),
        ("021-38585566转807755", "+862138585566;ext=807755"),
        ("021-38585566-807755", "+862138585566;ext=807755"),
        ("0755-86013389", "+8675586013389"),
        ("13912345678", "+8613912345678"),
        ("139-1234-5678", "+8613912345678"),
        ("+86 21 3858 5566", "+862138585566"),
        ("４００－８２０－２８１９", "+864008202819"),  # full-width digits and hyphens
    ],
)
def test_phone_formats(written: str, expected: str) -> None:
    found = extract_contacts(f"<p>客服电话：{written}</p>", "https://pay.example.com/")
    assert values(found, "phone") == {expected}


@pytest.mark.parametrize(
    "html",
    [
        "<p>沪ICP备12345678号-1</p>",
        "<p>京公网安备 11010802020134号</p>",
        "<p>订单号 20261123000123456</p>",
        "<p>发布时间：2026-03-15 09:30</p>",
        "<p>支付业务许可证编号Z2002211000010</p>",
        "<p>成立于2011年，服务95566家商户</p>",
    ],
)
def test_numbers_that_are_not_phones(html: str) -> None:
    assert values(extract_contacts(html, "https://pay.example.com/"), "phone") == set()


def test_invalid_values_are_dropped() -> None:
    html = "<p>客服电话：010-1234</p><p>邮箱：a@b</p><p>地址：无</p><p>许可证 Z123</p>"
    assert extract_contacts(html, "https://pay.example.com/") == []


def test_gbk_page_decoded_by_the_fetcher() -> None:
    raw = (SITES / "contact_gbk.html").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # the fixture really is GBK, not UTF-8 in disguise
    found = rows("contact_gbk.html", url="http://shoudan.example.com/lxwm.asp")
    assert one(found, "phone", "+864000005678").label == "客服电话"
    assert one(found, "phone", "+8657188156688;ext=8001").label == "服务监督电话"
    assert one(found, "fax", "+8657188156689").label == "传真"  # "传　　真：" padded label
    assert one(found, "email", "service@shoudan.example.com").label == "电子邮箱"
    assert one(found, "postal", "浙江省杭州市西湖区示例路88号示例大厦12楼（邮编 310012）")
    assert one(found, "licence", "Z2006444000010")
    assert "http://shoudan.example.com/tousu.asp" in values(found, "web_form")


def test_selector_hints_raise_confidence_and_admit_unlabelled_numbers() -> None:
    html = """<html><body>
      <div class="hl-num">95118</div>
      <p>电话 010-66001918</p>
      <span class="mbox">kefu@pay.example.com</span>
    </body></html>"""
    url = "https://pay.example.com/"
    plain = extract_contacts(html, url)
    assert "+8695118" not in values(plain, "phone")  # bare short number, no label
    hinted = extract_contacts(html, url, {"phone": ".hl-num", "email": ["span.mbox"]})
    hotline = one(hinted, "phone", "+8695118")
    assert hotline.where == "hint" and hotline.confidence >= 0.9
    assert one(hinted, "email", "kefu@pay.example.com").confidence >= 0.9
    # a hint for one kind does not vouch for other values elsewhere on the page
    assert one(hinted, "phone", "+861066001918").confidence < 0.9
    as_list = extract_contacts(html, url, [".hl-num"])
    assert one(as_list, "phone", "+8695118").where == "hint"


def test_invalid_selector_hint_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid CSS selector"):
        extract_contacts("<p>x</p>", "https://pay.example.com/", ["div[[["])
    with pytest.raises(ValueError, match="unknown kind"):
        extract_contacts("<p>x</p>", "https://pay.example.com/", {"pager": "div"})


@pytest.mark.parametrize(
    "html",
    [
        "",
        "   ",
        "<",
        "</div></div></html>",
        "\x00\x01\x02\ufffd",
        "<a href='mailto:'>x</a><a href='tel:'>y</a><a>z</a><a href='http://[::1'>投诉</a>",
        "<div data-cfemail='zz'>x</div><div data-cfemail='41'>y</div>",
        "<div>" * 20000 + "客服热线：95118" + "</div>" * 3,
        "<table><tr><td>投诉电话<td>(021)38585566<tr><td>传真<td>",
    ],
)
def test_malformed_html_does_not_crash(html: str) -> None:
    extract_contacts(html, "https://pay.example.com/")


def test_malformed_fixture_still_yields_what_is_readable() -> None:
    text = (SITES / "malformed.html").read_bytes().decode("utf-8", errors="replace")
    found = extract_contacts(text, "https://pay.example.com/contact")
    assert "+864000001234" in values(found, "phone")
    assert "+862138585566" in values(found, "phone")
    assert "+8695999" not in values(found, "phone")  # inside an unterminated <script>


def test_deep_nesting_is_read_without_recursion() -> None:
    html = "<div>" * 20000 + "客服热线：95118" + "</div>" * 20000
    assert values(extract_contacts(html, "https://pay.example.com/"), "phone") == {"+8695118"}


# --------------------------------------------------------------------------- lookup


def test_is_a_source() -> None:
    assert isinstance(OfficialSiteSource(), Source)
    assert OfficialSiteSource.name == "official_site"


async def test_lookup_findings_carry_page_url_hash_and_fetch_time() -> None:
    body, charset = fixture_bytes("contact_utf8.html")
    url = "https://pay.example.com/about/contact.html"
    fetcher = FakeFetcher(
        {"http://pay.example.com/lxwm": (body, charset)},
        final_url={"http://pay.example.com/lxwm": url},  # the fetcher followed a redirect
    )
    lookup = await OfficialSiteSource().lookup(
        party(hints={"official_site": {"pages": ["http://pay.example.com/lxwm"]}}), fetcher
    )
    assert lookup.findings
    for f in lookup.findings:
        assert f.party == "example_pay" and f.source == "official_site"
        assert f.url == url  # the final URL, where the bytes came from
        assert f.evidence_sha256 == hashlib.sha256(body).hexdigest()
        assert f.seen_at == AT
    kinds = {f.kind for f in lookup.findings}
    assert kinds <= {"phone", "sms", "email", "postal", "web_form", "licence"}
    assert "fax" not in kinds


async def test_lookup_defaults_to_the_party_website_and_passes_allowed_hosts() -> None:
    body = fixture_bytes("news_with_footer.html")
    fetcher = FakeFetcher({"https://pay.example.com/": body})
    lookup = await OfficialSiteSource().lookup(party(website="https://pay.example.com/"), fetcher)
    assert fetcher.calls == [("https://pay.example.com/", None)]
    assert "+8695118" in {f.value for f in lookup.findings}

    fetcher = FakeFetcher({"https://pay.example.com/": body})
    hints = {"official_site": {"allowed_hosts": ["WWW.pay.example.com", "pay.example.com"]}}
    await OfficialSiteSource().lookup(
        party(website="https://pay.example.com/", hints=hints), fetcher
    )
    assert fetcher.calls == [
        ("https://pay.example.com/", frozenset({"www.pay.example.com", "pay.example.com"}))
    ]


async def test_lookup_reads_gbk_page_through_fetcher() -> None:
    url = "http://shoudan.example.com/lxwm.asp"
    raw = (SITES / "contact_gbk.html").read_bytes()
    fetcher = FakeFetcher({url: (raw, "gb18030")})
    lookup = await OfficialSiteSource().lookup(party(website=url), fetcher)
    by_value = {f.value: f for f in lookup.findings}
    assert by_value["+864000005678"].label == "客服电话"
    assert "浙江省杭州市西湖区示例路88号示例大厦12楼（邮编 310012）" in by_value
    assert "+8657188156689" not in by_value  # the fax
    fax_notes = [n for n in lookup.notices if n.kind == "fact" and "fax" in n.data]
    assert fax_notes and fax_notes[0].data["fax"][0]["value"] == "+8657188156689"


async def test_mobile_on_the_page_is_also_an_sms_contact() -> None:
    fetcher = FakeFetcher(
        {
            "https://pay.example.com/": (
                b"<p>\xe5\xae\xa2\xe6\x9c\x8d\xe6\x89\x8b\xe6\x9c\xba\xef\xbc\x9a13912345678</p>",
                "utf-8",
            )
        }
    )
    lookup = await OfficialSiteSource().lookup(party(website="https://pay.example.com/"), fetcher)
    assert {(f.kind, f.value) for f in lookup.findings} == {
        ("phone", "+8613912345678"),
        ("sms", "+8613912345678"),
    }


async def test_fetch_error_becomes_an_error_notice_and_other_pages_still_run() -> None:
    good = "https://pay.example.com/about/contact.html"
    bad = "https://pay.example.com/kefu/"
    fetcher = FakeFetcher(
        {
            bad: FetchError("timeout", "read timed out after 20s", url=bad),
            good: fixture_bytes("contact_utf8.html"),
        }
    )
    lookup = await OfficialSiteSource().lookup(
        party(hints={"official_site": {"pages": [bad, good]}}), fetcher
    )
    errors = [n for n in lookup.notices if n.kind == "error"]
    assert len(errors) == 1
    assert errors[0].url == bad and errors[0].data["kind"] == "timeout"
    assert errors[0].source == "official_site"
    assert "+8695118" in {f.value for f in lookup.findings}


async def test_http_error_status_is_a_notice() -> None:
    url = "https://pay.example.com/"
    fetcher = FakeFetcher({url: (b"<p>gone</p>", "utf-8")}, status=503)
    lookup = await OfficialSiteSource().lookup(party(website=url), fetcher)
    assert lookup.findings == ()
    assert [n.data["status"] for n in lookup.notices if n.kind == "error"] == [503]


async def test_missing_page_is_a_manual_task_not_an_exception() -> None:
    lookup = await OfficialSiteSource().lookup(party(), FakeFetcher({}))
    assert lookup == Lookup(notices=lookup.notices)
    assert [n.kind for n in lookup.notices] == ["manual_task"]
    assert lookup.notices[0].fields == ("website",)


@pytest.mark.parametrize(
    "hints",
    [
        {"official_site": "https://pay.example.com/"},
        {"official_site": {"pages": ["ftp://pay.example.com/"]}},
        {"official_site": {"pages": [1]}},
        {"official_site": {"page": ["https://pay.example.com/"]}},
        {"official_site": {"pages": ["https://pay.example.com/"], "selectors": ["div[[["]}},
        {"official_site": {"pages": ["https://pay.example.com/"], "allowed_hosts": "x.cn"}},
    ],
)
async def test_bad_hints_are_an_error_notice_before_any_fetch(hints: dict[str, object]) -> None:
    fetcher = FakeFetcher({})
    lookup = await OfficialSiteSource().lookup(party(hints=hints), fetcher)
    assert [n.kind for n in lookup.notices] == ["error"]
    assert fetcher.calls == []


async def test_selector_hints_flow_from_party_hints() -> None:
    url = "https://pay.example.com/"
    html = b'<div class="hl-num">95118</div>'
    hints = {"official_site": {"pages": [url], "selectors": {"phone": ".hl-num"}}}
    lookup = await OfficialSiteSource().lookup(
        party(hints=hints), FakeFetcher({url: (html, "utf-8")})
    )
    [hotline] = lookup.findings
    assert hotline.value == "+8695118" and hotline.confidence >= 0.9


async def test_licence_on_the_page_that_is_not_the_partys_asks_a_human() -> None:
    url = "https://pay.example.com/"
    fetcher = FakeFetcher({url: fixture_bytes("news_with_footer.html")})
    lookup = await OfficialSiteSource().lookup(
        party(website=url, licence_no="Z2002511000017"), fetcher
    )
    tasks = [n for n in lookup.notices if n.kind == "manual_task"]
    assert len(tasks) == 1 and "Z2002211000010" in tasks[0].message

    same = await OfficialSiteSource().lookup(
        party(website=url, licence_no="Z2002211000010"), fetcher
    )
    assert not [n for n in same.notices if n.kind == "manual_task"]


async def test_anti_bot_challenge_is_reported_as_blocked() -> None:
    url = "https://pay.example.com/"
    challenge = "<html><body><script>location='/WZWSREL2luZGV4Lmh0bWw=?wzwschallenge=V1p'</script>请开启JavaScript并刷新该页</body></html>"
    fetcher = FakeFetcher({url: (challenge.encode(), "utf-8")})
    lookup = await OfficialSiteSource().lookup(party(website=url), fetcher)
    assert lookup.findings == ()
    assert [n.kind for n in lookup.notices] == ["blocked"]


async def test_same_value_on_two_pages_is_one_finding_with_the_best_sighting() -> None:
    contact = "https://pay.example.com/about/contact.html"
    news = "https://pay.example.com/news/2026/0315.html"
    fetcher = FakeFetcher(
        {contact: fixture_bytes("contact_utf8.html"), news: fixture_bytes("news_with_footer.html")}
    )
    lookup = await OfficialSiteSource().lookup(
        party(hints={"official_site": {"pages": [news, contact]}}), fetcher
    )
    hotlines: list[Finding] = [f for f in lookup.findings if f.value == "+8695118"]
    assert len(hotlines) == 1
    assert hotlines[0].url == contact  # seen at 0.95 there, 0.9 in the news footer
