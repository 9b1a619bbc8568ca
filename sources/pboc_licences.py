"""PBOC payment-licence registry (支付业务许可信息公示): is the acquirer licensed, and where is it?

The People's Bank of China publishes every non-bank payment licence as HTML: a paged list of
licensed institutions (已获许可机构), a paged list of cancelled ones (已注销许可机构), and one
detail page per institution. A detail page carries identity, not contacts (许可证编号,
公司名称, 法定代表人（负责人）, 住所（营业场所）, 业务类型, 业务覆盖范围, dates, 备注): no
phone, no e-mail. It is still worth a lookup, because it

- confirms the acquirer is licensed and gives its exact legal name and licence number, which a
  formal notice must quote;
- gives the registered address (住所), a legal postal channel for a written request;
- tells us when a licence was cancelled, and into whom it was merged (被X合并), so the ladder
  writes to the successor instead of a company that no longer exists.

Parsing is pure (functions from HTML to typed records, tested on fixtures);
:class:`PbocLicencesSource` does the fetching through the engine's
:class:`~sources.base.Fetcher` and turns records into findings and notices. A detail page
lists the current record first and older records after it (变更前机构详细信息…); only the
first, current block is used.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, ClassVar
from urllib.parse import urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode

from sources.base import (
    Fetched,
    Fetcher,
    FetchError,
    Finding,
    Lookup,
    Notice,
    NoticeMaker,
    PartyQuery,
)
from sources.normalize import InvalidContact, normalize_address, normalize_licence

# --------------------------------------------------------------------------------------------
# Where the registry lives. Recorded 2026-11-23 from the project's research notes
# (registries.md §1.1), which read them from public scrapers: list page 1 and detail ids from
# 862546630/-Data-mining-of-third-party-payment-licenses-… (Selenium scrape of 2022-11-29),
# the "-{n}.html" paging from civl/gitvenv pboc_approval_excel.py. Not checked live: when the
# site moves, override them per party with [parties.<key>.hints.pboc_licences].
# --------------------------------------------------------------------------------------------
URLS_RECORDED_ON = "2026-11-23"
_SECTION = "https://www.pbc.gov.cn/zhengwugongkai/4081330/4081344/4081407/4081702/4081749/"
LICENSED_LIST_URL = _SECTION + "4081783/index.html"
LICENSED_LIST_PAGE_URL = _SECTION + "4081783/9398ddc0-{n}.html"
CANCELLED_LIST_URL = _SECTION + "4081786/63ead9a6-1.html"
CANCELLED_LIST_PAGE_URL = _SECTION + "4081786/63ead9a6-{n}.html"
#: The site answers on both names; redirects between them are fine, anywhere else is not.
PBOC_HOSTS = frozenset({"www.pbc.gov.cn", "pbc.gov.cn"})
#: The licensed list held ~200 rows (2022); 20 pages is generous without hammering the site.
DEFAULT_MAX_PAGES = 20

#: Text and URL markers of the WZWS anti-automation JavaScript challenge (registries.md §0.2).
_CHALLENGE_MARKERS = ("请开启JavaScript并刷新该页", "wzwschallenge", "/WZWSRE")
_CHALLENGE_MARKERS_BYTES = tuple(
    m.encode(enc) for m in _CHALLENGE_MARKERS for enc in ("utf-8", "gb18030")
)

_FIELDS_FOR_HUMANS = ("许可证编号", "公司名称", "住所（营业场所）", "业务类型", "有效期至", "备注")


class PageLayoutError(ValueError):
    """The page is not a registry page we recognise: the site changed, or served something else."""


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ListRow:
    """One ``<li>`` of a registry list (``ul.txtlist``)."""

    licence_no: str  # span.xkzh, spaces removed, upper-cased
    name: str  # span.jgmc a[title] (the link text when the title is missing)
    detail_url: str  # span.jgmc a[href], absolute when the page URL was given
    date: str  # span.date as printed: publication date, or 注销日期 in the cancelled list
    detail_id: str | None  # the numeric folder of the detail page: 7 digits (2022) or 10+


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a registry list, with what is needed to walk to the next one."""

    rows: tuple[ListRow, ...]
    total_rows: int | None  # "共:N条"
    total_pages: int | None  # "当前页:p/P"
    next_url: str | None  # the "下一页" link, absolute when the page URL was given
    page: int | None = None  # p of "当前页:p/P"


@dataclass(frozen=True, slots=True)
class Cancellation:
    """Why and when a licence ended, as far as the page says.

    ``reasons`` uses a small vocabulary so that the ladder can act on it: ``cancelled``
    (注销, or a validity cut short in the heading), ``merged`` (被X合并; ``successor`` = X),
    ``not_renewed`` (不予续展), ``voluntary`` (主动申请注销), ``no_renewal_application``
    (未提交续展申请), ``revoked`` (撤销/吊销), ``void`` (作废). ``dated`` is the date the
    annotation gives: the cancellation date where printed, else the decision date in 备注.
    """

    reasons: tuple[str, ...]
    dated: date | None
    successor: str | None
    annotations: tuple[str, ...]  # the texts it was read from, verbatim


@dataclass(frozen=True, slots=True)
class LicenceRecord:
    """One block of a detail page: the current record or a 变更前 (before-change) one."""

    heading: str  # "机构详细信息", "变更前机构详细信息(2011年5月3日至…)", "" when missing
    is_history: bool  # a 变更前 block
    licence_no: str | None  # 许可证编号
    name: str | None  # 公司名称
    legal_representative: str | None  # 法定代表人（负责人）
    address: str | None  # 住所（营业场所）
    business_types: tuple[str, ...]  # 业务类型, split on 、 outside brackets
    coverage: str | None  # 业务覆盖范围
    reissued_on: date | None  # 换证日期
    issued_on: date | None  # 发证日期 (history blocks and older cancelled pages)
    first_licensed_on: date | None  # 首次许可日期
    valid_until: date | None  # 有效期至 (the date before any "(于…注销)")
    remarks: str | None  # 备注, None for "——"
    cancellation: Cancellation | None
    printed: Mapping[str, str]  # every label as printed (no spaces) -> value as printed


# --------------------------------------------------------------------------------------------
# Small text helpers
# --------------------------------------------------------------------------------------------
_DASHES = frozenset({"", "——", "—", "-", "--", "－", "－－", "―", "/", "无", "暂无"})
_DATE = re.compile(r"(\d{4})\s*[-年./]\s*(\d{1,2})\s*[-月./]\s*(\d{1,2})")


def _clean(text: str) -> str:
    """Collapse every run of whitespace (incl. NBSP and the ideographic space) to one space."""
    return " ".join(text.split())


def _value(text: str) -> str | None:
    """A printed value, or None for the registry's "nothing here" dashes."""
    text = _clean(text)
    return None if text in _DASHES else text


def normalize_name(text: str) -> str:
    """Fold a company name for comparison: full-width -> half-width (NFKC), no spaces, casefold.

    The registry prints "支付宝（中国）网络技术有限公司"; a config or a contract may say
    "支付宝(中国)网络技术有限公司" or put spaces in. Those are the same company.
    """
    return "".join(unicodedata.normalize("NFKC", text).split()).casefold()


def parse_date(text: str | None) -> date | None:
    """The first date in ``text``: 2018-6-26, 2013年1月6日, "2016-12-21(于2015年8月24日注销)".

    Returns None for dashes, empty text or an impossible date (the registry has no 2月30日,
    but a typo must not crash a lookup).
    """
    if not text:
        return None
    m = _DATE.search(unicodedata.normalize("NFKC", text))
    if not m:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


_TYPE_SEPARATORS = frozenset("、,，;；")
_OPEN = frozenset("(（")
_CLOSE = frozenset(")）")


def split_business_types(text: str | None) -> tuple[str, ...]:
    """Split 业务类型 on 、 (and commas/semicolons) but never inside brackets.

    "预付卡发行与受理（仅限于线上实名支付账户充值）、银行卡收单" is two types; a comma inside
    a bracketed restriction must not make it three.
    """
    value = _value(text or "")
    if value is None:
        return ()
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in value:
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(depth - 1, 0)
        elif ch in _TYPE_SEPARATORS and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return tuple(p for p in (_clean(p) for p in parts) if p)


# --------------------------------------------------------------------------------------------
# Challenge page
# --------------------------------------------------------------------------------------------
def is_challenge_page(html: str | bytes) -> bool:
    """True when the site served its WZWS JavaScript challenge instead of content.

    The challenge says "请开启JavaScript并刷新该页" and sends the browser to
    ``/WZWSRE…?wzwschallenge=…``. Solving it means running the site's obfuscated script, which
    we deliberately do not do: the lookup reports ``blocked`` and tells a human what to copy.
    """
    if isinstance(html, bytes):
        return any(m in html for m in _CHALLENGE_MARKERS_BYTES)
    return any(m in html for m in _CHALLENGE_MARKERS)


def _tree(html: str | bytes) -> LexborHTMLParser:
    """Parse text, or bytes with the charset of their ``<meta>`` (a stored evidence blob)."""
    if isinstance(html, bytes):
        return LexborHTMLParser(html, encoding=True)
    return LexborHTMLParser(html)


# --------------------------------------------------------------------------------------------
# List pages
# --------------------------------------------------------------------------------------------
_PAGING = re.compile(r"共[:：](\d+)条当前页[:：](\d+)/(\d+)")
_TAG = re.compile(r"<[^>]*>")
_NEXT = "下一页"


def _paging(html: str) -> tuple[int | None, int | None, int | None]:
    """(total rows, current page, total pages) from "共:N条 当前页:p/P".

    Read from a window of the raw markup around "当前页" rather than from the tree: the numbers
    sit in ``<b>`` tags inside a styled ``<span>`` whose exact nesting we never saw, and a text
    search does not care.
    """
    at = html.find("当前页")
    if at < 0:
        return None, None, None
    window = _TAG.sub("", html[max(at - 400, 0) : at + 400])
    m = _PAGING.search("".join(unicodedata.normalize("NFKC", window).split()))
    if not m:
        return None, None, None
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def _next_url(tree: LexborHTMLParser, base_url: str | None) -> str | None:
    for a in tree.css(f'a:lexbor-contains("{_NEXT}")'):
        href = (a.attributes.get("href") or "").strip()
        if _clean(a.text()) != _NEXT or not href or href.startswith(("#", "javascript:")):
            continue
        return _absolute(href, base_url, _origin(base_url))
    return None


def _origin(base_url: str | None) -> str | None:
    """``scheme://host`` of the page, to resolve root-relative links without urljoin."""
    if not base_url:
        return None
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def _absolute(href: str, base_url: str | None, origin: str | None) -> str:
    """Resolve a link; the list's links are root-relative, and urljoin on each of 300 rows
    costs more than parsing the row."""
    if origin and href.startswith("/") and not href.startswith("//"):
        return origin + href
    if href.startswith(("http://", "https://")) or not base_url:
        return href
    return urljoin(base_url, href)


def _detail_id(url: str) -> str | None:
    """The numeric folder of ``…/{id}/index.html``: 7 digits in 2022, 10+ in newer links."""
    head, _, tail = url.rpartition("/")
    if tail not in ("index.html", "index.htm"):
        return None
    folder = head.rpartition("/")[2]
    return folder if len(folder) >= 7 and folder.isascii() and folder.isdigit() else None


def _row_key(node: LexborNode) -> int | None:
    """Identity of the ``<li>`` a node sits in (spans may be wrapped, so walk up)."""
    parent = node.parent
    while parent is not None and parent.tag != "li":
        parent = parent.parent
    return parent.mem_id if parent is not None else None


def _list_rows(ul: LexborNode, base_url: str | None) -> list[ListRow]:
    """The rows of ``ul.txtlist``, in page order; the header row (no link) drops out.

    Three CSS queries over the whole list, joined on the enclosing ``<li>``, instead of
    walking each row in Python: the queries run in C, and the per-row Python work is what
    decides whether a 300-row page costs 3 ms or 10.
    """
    licences: dict[int, LexborNode] = {}
    for span in ul.css("span.xkzh"):
        key = _row_key(span)
        if key is not None:
            licences.setdefault(key, span)
    dates: dict[int, LexborNode] = {}
    for span in ul.css("span.date"):
        key = _row_key(span)
        if key is not None:
            dates.setdefault(key, span)
    origin = _origin(base_url)
    rows: list[ListRow] = []
    seen: set[int] = set()
    for a in ul.css("span.jgmc a"):
        key = _row_key(a)
        if key is None or key in seen:
            continue
        attrs = a.attributes
        href = (attrs.get("href") or "").strip()
        name = _clean(attrs.get("title") or "") or _clean(a.text())
        if not href or not name:
            continue
        seen.add(key)
        url = _absolute(href, base_url, origin)
        xkzh, when = licences.get(key), dates.get(key)
        rows.append(
            ListRow(
                licence_no="".join(xkzh.text().split()).upper() if xkzh is not None else "",
                name=name,
                detail_url=url,
                date=_clean(when.text()) if when is not None else "",
                detail_id=_detail_id(url),
            )
        )
    return rows


def parse_list_page(html: str | bytes, base_url: str | None = None) -> ListPage:
    """Rows and paging of one 已获许可机构 / 已注销许可机构 list page.

    Layout (registries.md §1.2, from public scrapers' selectors): ``ul.txtlist`` whose first
    ``<li>`` is a header; each row has ``span.xkzh`` (licence no.), ``span.jgmc a`` (name in
    ``title``, detail page in ``href``) and ``span.date``. ``base_url`` (the page's own URL)
    makes the detail and next-page links absolute. Raises :class:`PageLayoutError` when there
    is no ``ul.txtlist``: a list that is really empty still has one.
    """
    tree = _tree(html)
    ul = tree.css_first("ul.txtlist")
    if ul is None:
        raise PageLayoutError("no ul.txtlist on the page: not a PBOC licence list")
    rows = _list_rows(ul, base_url)
    text = html if isinstance(html, str) else (tree.html or "")
    total_rows, page, total_pages = _paging(text)
    return ListPage(
        rows=tuple(rows),
        total_rows=total_rows,
        total_pages=total_pages,
        next_url=_next_url(tree, base_url),
        page=page,
    )


# --------------------------------------------------------------------------------------------
# Detail pages
# --------------------------------------------------------------------------------------------
#: Known labels, in NFKC form (half-width brackets), to the record attribute they fill.
#: 许可证号 / 有效期截止 are spellings civl/gitvenv guards against; 发证日期 is the history
#: blocks' (and older cancelled pages') name for the issue date.
_LABELS: dict[str, str] = {
    "许可证编号": "licence_no",
    "许可证号": "licence_no",
    "公司名称": "name",
    "机构名称": "name",
    "法定代表人(负责人)": "legal_representative",
    "法定代表人": "legal_representative",
    "住所(营业场所)": "address",
    "住所": "address",
    "业务类型": "business_types",
    "业务覆盖范围": "coverage",
    "换证日期": "reissued_on",
    "发证日期": "issued_on",
    "首次许可日期": "first_licensed_on",
    "有效期至": "valid_until",
    "有效期截止": "valid_until",
    "备注": "remarks",
}
_BLOCK_MARK = "机构详细信息"


def _label_pattern(label: str) -> str:
    return re.escape(label).replace(r"\(", "[(（]").replace(r"\)", "[)）]")


#: A label at the start of a one-cell row ("许可证编号  Z2006331000016"), longest first so that
#: 法定代表人（负责人） wins over 法定代表人.
_LABEL_PREFIX = re.compile(
    r"^\s*("
    + "|".join(_label_pattern(k) for k in sorted(_LABELS, key=len, reverse=True))
    + r")\s*[:：]?\s*(.*)$",
    re.DOTALL,
)


def _label_key(text: str) -> str:
    """A label as printed, without spaces or a trailing colon: "法定代表人（负责人）"."""
    return "".join(text.split()).rstrip(":：")


def _known(label: str) -> str | None:
    return _LABELS.get(unicodedata.normalize("NFKC", label))


def _cells(tr: LexborNode) -> list[str]:
    return [_clean(c.text(separator=" ")) for c in tr.iter() if c.tag in ("td", "th")]


def _detail_rows(tree: LexborHTMLParser) -> Iterator[list[str]]:
    """The page as rows of cell texts.

    Leaf table rows only: an old CMS may wrap the content table in layout tables, whose rows
    would otherwise repeat the whole content as one cell. A page that lost its table markup
    falls back to one row per text line.
    """
    rows = [tr for tr in tree.css("tr") if tr.css_first("table") is None]
    if rows:
        for tr in rows:
            yield _cells(tr)
        return
    root = tree.body or tree.root
    if root is None:
        return
    for line in root.text(separator="\n").splitlines():
        if line.strip():
            yield [_clean(line)]


def _split_row(cells: Sequence[str]) -> tuple[str, str, bool] | None:
    """(label as printed, value, value-may-follow) of one row, or None for a non-field row.

    The flag is set only for a label alone in a one-cell row (text fallback, or a label and
    its value split over two rows); an empty value cell in a two-cell row means "empty".
    """
    filled = [c for c in cells if c]
    if not filled:
        return None
    if len(filled) >= 2:
        return _label_key(filled[0]), " ".join(filled[1:]), False
    m = _LABEL_PREFIX.match(filled[0])
    if m:
        value = _clean(m.group(2))
        return _label_key(m.group(1)), value, len(cells) == 1 and not value
    return None


def _blocks(tree: LexborHTMLParser) -> list[tuple[str, list[tuple[str, str]]]]:
    """Group rows into (heading, [(label, value)…]) blocks.

    A block starts at a heading containing 机构详细信息, or at a second 许可证编号 within one
    block (a history block that lost its heading). A label whose value cell is empty takes the
    next non-field row as its value (label and value split over two lines).
    """
    blocks: list[tuple[str, list[tuple[str, str]]]] = []
    heading = ""
    pairs: list[tuple[str, str]] = []
    pending: str | None = None

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            pairs.append((pending, ""))
            pending = None
        if any(_known(label) for label, _ in pairs):
            blocks.append((heading, list(pairs)))
        pairs.clear()

    for cells in _detail_rows(tree):
        joined = " ".join(c for c in cells if c)
        if not joined:
            continue
        field = _split_row(cells)
        known = _known(field[0]) if field else None
        if known is None and _BLOCK_MARK in "".join(joined.split()):
            flush()
            heading = joined
            continue
        if field is None or known is None:
            if pending is not None:
                pairs.append((pending, joined))
                pending = None
            elif field is not None:
                pairs.append((field[0], field[1]))
            continue
        label, value, value_follows = field
        if known == "licence_no" and any(_known(lb) == "licence_no" for lb, _ in pairs):
            flush()
            heading = ""
        if pending is not None:
            pairs.append((pending, ""))
            pending = None
        if value_follows:
            pending = label
        else:
            pairs.append((label, value))
    flush()
    return blocks


def _record(heading: str, pairs: Sequence[tuple[str, str]]) -> LicenceRecord:
    printed: dict[str, str] = {}
    typed: dict[str, str] = {}
    for label, value in pairs:
        printed.setdefault(label, value)
        attr = _known(label)
        if attr is not None:
            typed.setdefault(attr, value)

    def text(attr: str) -> str | None:
        return _value(typed.get(attr, ""))

    licence = text("licence_no")
    return LicenceRecord(
        heading=heading,
        is_history="".join(heading.split()).startswith("变更前"),
        licence_no="".join(licence.split()).upper() if licence else None,
        name=text("name"),
        legal_representative=text("legal_representative"),
        address=text("address"),
        business_types=split_business_types(typed.get("business_types")),
        coverage=text("coverage"),
        reissued_on=parse_date(text("reissued_on")),
        issued_on=parse_date(text("issued_on")),
        first_licensed_on=parse_date(text("first_licensed_on")),
        valid_until=parse_date(text("valid_until")),
        remarks=text("remarks"),
        cancellation=parse_cancellation(text("valid_until"), text("remarks"), heading),
        printed=printed,
    )


def parse_detail_blocks(html: str | bytes) -> tuple[LicenceRecord, ...]:
    """Every block of a detail page in page order: the current record, then 变更前 ones."""
    return tuple(_record(h, p) for h, p in _blocks(_tree(html)))


def parse_detail_page(html: str | bytes) -> LicenceRecord:
    """The current record of a detail page (the first block not headed 变更前…).

    Raises :class:`PageLayoutError` when the page holds no licence fields at all.
    """
    blocks = parse_detail_blocks(html)
    for block in blocks:
        if not block.is_history:
            return block
    if blocks:
        raise PageLayoutError("the page only holds 变更前 (history) blocks, no current record")
    raise PageLayoutError("no licence fields on the page: not a PBOC licence detail page")


# --------------------------------------------------------------------------------------------
# Cancellation annotations
# --------------------------------------------------------------------------------------------
_D = r"\d{4}\s*[-年./]\s*\d{1,2}\s*[-月./]\s*\d{1,2}\s*日?"
_CANCELLED_ON = re.compile(rf"[(（]\s*于?\s*({_D})\s*注销\s*[)）]")
_HEADING_TERM = re.compile(
    rf"[(（]\s*有效期\s*({_D})\s*至\s*({_D})\s*[。，,;；]?\s*(.*?)\s*[)）]\s*$"
)
_MERGED = re.compile(r"被(.+?)(?:吸收)?合并")
_DATED_CANCEL = re.compile(rf"于?\s*({_D})\s*注销")
_REMARK_REASONS = (
    ("不予续展", "not_renewed"),
    ("主动申请注销", "voluntary"),
    ("未提交续展申请", "no_renewal_application"),
    ("撤销", "revoked"),
    ("吊销", "revoked"),
    ("作废", "void"),
)


def parse_cancellation(
    valid_until: str | None, remarks: str | None, heading: str | None = None
) -> Cancellation | None:
    """Read a cancellation from the three places the registry records one, or None.

    - 有效期至 "2016-12-21(于2015年8月24日注销)": cancelled on the bracketed date;
    - 备注: "被易生支付有限公司合并" (merged, successor named), "不予续展" /
      "2017年6月26日公告决定不予续展", "主动申请注销", "未提交续展申请", "于2024年12月9日注销";
    - the block heading: "机构详细信息（有效期2011年12月22日至2015年10月8日。《支付业务许可证》
      正本未收回，作废。）" - a validity cut short, here also void.

    History (变更前) headings carry a period too; that is not a cancellation and is ignored.
    """
    reasons: list[str] = []
    annotations: list[str] = []
    dated: date | None = None
    successor: str | None = None

    if valid_until and (m := _CANCELLED_ON.search(valid_until)):
        reasons.append("cancelled")
        annotations.append(_clean(valid_until))
        dated = parse_date(m.group(1))

    if heading and not "".join(heading.split()).startswith("变更前"):
        m = _HEADING_TERM.search(_clean(heading))
        if m:
            reasons.append("cancelled")
            annotations.append(_clean(heading))
            dated = dated or parse_date(m.group(2))
            if "作废" in m.group(3):
                reasons.append("void")

    remark = _value(remarks or "")
    if remark:
        hit = False
        if m := _MERGED.search(remark):
            reasons.append("merged")
            successor = m.group(1).strip(" ，,。")
            hit = True
        for needle, reason in _REMARK_REASONS:
            if needle in remark:
                reasons.append(reason)
                hit = True
        if m := _DATED_CANCEL.search(remark):
            reasons.append("cancelled")
            dated = dated or parse_date(m.group(1))
            hit = True
        elif "注销" in remark and not hit:  # 注销 alone; 主动申请注销 already said more
            reasons.append("cancelled")
            hit = True
        if hit:
            annotations.append(remark)
            dated = dated or parse_date(remark)

    if not reasons:
        return None
    return Cancellation(
        reasons=tuple(dict.fromkeys(reasons)),
        dated=dated,
        successor=successor or None,
        annotations=tuple(annotations),
    )


# --------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Settings:
    """Per-party overrides from ``[parties.<key>.hints.pboc_licences]``."""

    list_url: str = LICENSED_LIST_URL
    list_page_url: str | None = LICENSED_LIST_PAGE_URL
    cancelled_list_url: str = CANCELLED_LIST_URL
    cancelled_list_page_url: str | None = CANCELLED_LIST_PAGE_URL
    max_pages: int = DEFAULT_MAX_PAGES
    detail_url: str | None = None  # skip the lists: a human already found the page

    @classmethod
    def from_hints(cls, raw: object) -> _Settings:
        """Validate the hints; a wrong type is a config mistake worth one clear line."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ValueError("hints.pboc_licences must be a table")
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown hints.pboc_licences keys: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "max_pages":
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError("hints.pboc_licences.max_pages must be a positive integer")
            elif not isinstance(value, str) or not re.match(r"^https?://", value):
                raise ValueError(f"hints.pboc_licences.{key} must be an http(s) URL")
            values[key] = value
        # A replaced first page makes the default page template meaningless for it.
        if "list_url" in values and "list_page_url" not in values:
            values["list_page_url"] = None
        if "cancelled_list_url" in values and "cancelled_list_page_url" not in values:
            values["cancelled_list_page_url"] = None
        return cls(**values)


class _Stop(Exception):
    """Ends a lookup early with one notice (blocked page, fetch error, unknown layout)."""

    def __init__(self, notice: Notice) -> None:
        super().__init__(notice.message)
        self.notice = notice


@dataclass(frozen=True, slots=True)
class _Wanted:
    """What we are looking for in the lists, and how a row compares to it."""

    licence_no: str | None
    names: tuple[str, ...]  # normalised

    def judge(self, row: ListRow) -> str | None:
        """Return "match", "candidate" (worth showing a human) or None."""
        row_name = normalize_name(row.name)
        if self.licence_no is not None:
            if row.licence_no == self.licence_no:
                return "match"
            return "candidate" if row_name in self.names else None
        if row_name in self.names:
            return "match"
        if any(len(n) >= 2 and (n in row_name or row_name in n) for n in self.names):
            return "candidate"
        return None


@dataclass(frozen=True, slots=True)
class _Scan:
    row: ListRow | None
    listed_in: str
    page: Fetched | None  # the list page the row was found on (evidence)
    candidates: tuple[ListRow, ...]
    truncated: bool  # stopped at max_pages with pages left


def _allowed_hosts(url: str) -> frozenset[str] | None:
    host = urlsplit(url).hostname or ""
    return PBOC_HOSTS if host in PBOC_HOSTS else None


def _listed_in(detail_url: str) -> str:
    """Which list a detail URL belongs to, from its folder (4081783 licensed, 4081786 not)."""
    if "/4081786/" in detail_url:
        return "cancelled"
    return "licensed" if "/4081783/" in detail_url else ""


def _next_page_url(page: ListPage, template: str | None) -> str | None:
    if page.next_url:
        return page.next_url
    if template and page.page and page.total_pages and page.page < page.total_pages:
        return template.format(n=page.page + 1)
    return None


class PbocLicencesSource(NoticeMaker):
    """Looks an acquirer up in the PBOC licence lists, by licence number or by legal name."""

    name: ClassVar[str] = "pboc_licences"

    async def lookup(self, party: PartyQuery, fetch: Fetcher) -> Lookup:
        """Find the party's licence, read its current record, report address, status, successor.

        The licence number, when known, is authoritative: the lists are searched by it and a
        different registered name is reported, not treated as a miss. Without one, the legal
        name (then the name) must match after folding brackets and spaces; near matches are
        handed to a human rather than guessed.
        """
        try:
            settings = _Settings.from_hints(party.hints.get(self.name))
        except ValueError as exc:
            return Lookup(notices=(self._notice(party, "error", str(exc)),))
        try:
            wanted = self._wanted(party)
        except ValueError as exc:
            return Lookup(notices=(self._notice(party, "error", str(exc)),))
        try:
            if settings.detail_url:
                detail_url = settings.detail_url
                scan = _Scan(None, _listed_in(detail_url), None, (), False)
            else:
                scan = await self._find(party, fetch, settings, wanted)
                if scan.row is None:
                    return Lookup(notices=(self._not_found(party, settings, wanted, scan),))
                detail_url = scan.row.detail_url
            fetched = await self._get(party, fetch, detail_url)
            try:
                record = parse_detail_page(fetched.text)
            except PageLayoutError as exc:
                raise _Stop(self._layout_notice(party, fetched.url, exc)) from exc
        except _Stop as stop:
            return Lookup(notices=(stop.notice,))
        return self._report(party, wanted, scan, fetched, record)

    # -- searching -------------------------------------------------------------------------
    def _wanted(self, party: PartyQuery) -> _Wanted:
        names = tuple(dict.fromkeys(normalize_name(n) for n in (party.legal_name, party.name) if n))
        licence: str | None = None
        if party.licence_no:
            try:
                licence = normalize_licence(party.licence_no)
            except InvalidContact as exc:
                raise ValueError(str(exc)) from exc
        if licence is None and not names:
            raise ValueError("the party has neither a licence number nor a name to search by")
        return _Wanted(licence, names)

    async def _find(
        self, party: PartyQuery, fetch: Fetcher, settings: _Settings, wanted: _Wanted
    ) -> _Scan:
        """The licensed list first; the cancelled list only when the licensed one has no match."""
        candidates: list[ListRow] = []
        truncated = False
        for listed_in, first, template in (
            ("licensed", settings.list_url, settings.list_page_url),
            ("cancelled", settings.cancelled_list_url, settings.cancelled_list_page_url),
        ):
            scan = await self._scan(party, fetch, listed_in, first, template, settings, wanted)
            if scan.row is not None:
                return scan
            candidates.extend(scan.candidates)
            truncated = truncated or scan.truncated
        return _Scan(None, "", None, tuple(candidates), truncated)

    async def _scan(
        self,
        party: PartyQuery,
        fetch: Fetcher,
        listed_in: str,
        first: str,
        template: str | None,
        settings: _Settings,
        wanted: _Wanted,
    ) -> _Scan:
        seen: set[str] = set()
        candidates: list[ListRow] = []
        url: str | None = first
        while url is not None and url not in seen:
            if len(seen) >= settings.max_pages:
                return _Scan(None, listed_in, None, tuple(candidates), True)
            seen.add(url)
            fetched = await self._get(party, fetch, url)
            try:
                page = parse_list_page(fetched.text, base_url=fetched.url)
                if not page.rows:
                    # Neither list is ever empty: no readable row means the row markup changed,
                    # and "not listed" would then be a false accusation of being unlicensed.
                    raise PageLayoutError("ul.txtlist holds no readable row")
            except PageLayoutError as exc:
                raise _Stop(self._layout_notice(party, fetched.url, exc)) from exc
            for row in page.rows:
                verdict = wanted.judge(row)
                if verdict == "match":
                    return _Scan(row, listed_in, fetched, (), False)
                if verdict == "candidate":
                    candidates.append(row)
            url = _next_page_url(page, template)
        return _Scan(None, listed_in, None, tuple(candidates), False)

    async def _get(self, party: PartyQuery, fetch: Fetcher, url: str) -> Fetched:
        """Fetch one page; a fetch failure, an HTTP error or the JS challenge ends the lookup."""
        try:
            fetched = await fetch.get(url, allowed_hosts=_allowed_hosts(url))
        except FetchError as exc:
            raise _Stop(
                self._notice(
                    party,
                    "error",
                    f"PBOC licence registry: {exc.kind} fetching {exc.url}: {exc}",
                    url=exc.url,
                    data={"kind": exc.kind, "status": exc.status},
                )
            ) from exc
        if fetched.status >= 400:
            raise _Stop(
                self._notice(
                    party,
                    "error",
                    f"PBOC licence registry: HTTP {fetched.status} for {fetched.url}",
                    url=fetched.url,
                    data={"kind": "http_status", "status": fetched.status},
                )
            )
        if is_challenge_page(fetched.text):
            raise _Stop(
                self._notice(
                    party,
                    "blocked",
                    "pbc.gov.cn answered with its JavaScript challenge "
                    "(请开启JavaScript并刷新该页) instead of the registry page",
                    url=url,
                    advice=(
                        f"Open {url} in a browser and find the institution in 已获许可机构 "
                        "(or 已注销许可机构). Either copy 许可证编号, 公司名称 and "
                        "住所（营业场所） "
                        f"into [parties.{party.key}] yourself, or put the detail page's URL in "
                        f'[parties.{party.key}.hints.pboc_licences] detail_url = "…" and run '
                        "discovery again later; the challenge comes and goes."
                    ),
                    fields=_FIELDS_FOR_HUMANS,
                    data={"evidence_sha256": fetched.sha256},
                )
            )
        return fetched

    # -- reporting -------------------------------------------------------------------------
    def _report(
        self,
        party: PartyQuery,
        wanted: _Wanted,
        scan: _Scan,
        fetched: Fetched,
        record: LicenceRecord,
    ) -> Lookup:
        expected = wanted.licence_no or (scan.row.licence_no if scan.row else None)
        if expected and record.licence_no and record.licence_no != expected:
            return Lookup(
                notices=(
                    self._notice(
                        party,
                        "error",
                        f"the detail page at {fetched.url} shows licence {record.licence_no}, "
                        f"not {expected}: not using it",
                        url=fetched.url,
                        data={"expected": expected, "found": record.licence_no},
                    ),
                )
            )
        cancelled = record.cancellation is not None or scan.listed_in == "cancelled"
        status = "cancelled" if cancelled else "licensed"
        findings: list[Finding] = []

        def finding(kind: str, value: str, label: str, confidence: float) -> Finding:
            return Finding(
                party=party.key,
                kind=kind,
                value=value,
                label=label,
                source=self.name,
                url=fetched.url,
                seen_at=fetched.fetched_at,
                evidence_sha256=fetched.sha256,
                confidence=confidence,
            )

        if record.licence_no:
            with contextlib.suppress(InvalidContact):
                licence = normalize_licence(record.licence_no)
                findings.append(finding("licence", licence, "支付业务许可证编号", 0.95))
        if record.address:
            # The registered address is where formal letters legally reach the company. For a
            # cancelled licence it may be an empty office, hence the lower confidence.
            with contextlib.suppress(InvalidContact):
                address = normalize_address(record.address)
                confidence = 0.3 if cancelled else 0.6
                findings.append(finding("postal", address, "住所（营业场所）", confidence))

        notices = [self._fact(party, scan, fetched, record, status)]
        c = record.cancellation
        if c is not None and c.successor:
            notices.append(
                self._notice(
                    party,
                    "successor",
                    f"licence {record.licence_no} of {record.name} was merged into {c.successor}: "
                    f"address notices to {c.successor}",
                    url=fetched.url,
                    data={
                        "name": c.successor,
                        "from_licence_no": record.licence_no,
                        "from_name": record.name,
                        "dated": c.dated.isoformat() if c.dated else None,
                        "annotations": list(c.annotations),
                    },
                )
            )
        if (
            wanted.licence_no
            and party.legal_name
            and record.name
            and normalize_name(party.legal_name) != normalize_name(record.name)
        ):
            notices.append(
                self._notice(
                    party,
                    "fact",
                    f"licence {record.licence_no} is registered to {record.name}, "
                    f"not {party.legal_name} as configured; the licence number decides",
                    url=fetched.url,
                    data={
                        "name_mismatch": True,
                        "registered_name": record.name,
                        "configured_name": party.legal_name,
                    },
                )
            )
        return Lookup(findings=tuple(findings), notices=tuple(notices))

    def _fact(
        self, party: PartyQuery, scan: _Scan, fetched: Fetched, record: LicenceRecord, status: str
    ) -> Notice:
        def iso(d: date | None) -> str | None:
            return d.isoformat() if d else None

        c = record.cancellation
        parts = [f"PBOC 支付业务许可证 {record.licence_no} {record.name}: {status}"]
        if record.business_types:
            parts.append("业务类型 " + "、".join(record.business_types))
        if record.coverage:
            parts.append(f"业务覆盖范围 {record.coverage}")
        if record.valid_until:
            parts.append(f"有效期至 {record.valid_until.isoformat()}")
        if c is not None:
            parts.append("cancelled (" + ", ".join(c.reasons) + ")")
        data: dict[str, Any] = {
            "status": status,
            "listed_in": scan.listed_in or None,
            "list_date": scan.row.date if scan.row else None,
            "list_url": scan.page.url if scan.page else None,
            "list_evidence_sha256": scan.page.sha256 if scan.page else None,
            "detail_url": fetched.url,
            "evidence_sha256": fetched.sha256,
            "licence_no": record.licence_no,
            "name": record.name,
            "legal_representative": record.legal_representative,
            "address": record.address,
            "business_types": list(record.business_types),
            "coverage": record.coverage,
            "reissued_on": iso(record.reissued_on),
            "issued_on": iso(record.issued_on),
            "first_licensed_on": iso(record.first_licensed_on),
            "valid_until": iso(record.valid_until),
            "remarks": record.remarks,
            "cancellation": None
            if c is None
            else {
                "reasons": list(c.reasons),
                "dated": iso(c.dated),
                "successor": c.successor,
                "annotations": list(c.annotations),
            },
            "urls_recorded_on": URLS_RECORDED_ON,
        }
        return self._notice(party, "fact", "; ".join(parts), url=fetched.url, data=data)

    def _not_found(
        self, party: PartyQuery, settings: _Settings, wanted: _Wanted, scan: _Scan
    ) -> Notice:
        what = wanted.licence_no or (party.legal_name or party.name)
        data: dict[str, Any] = {
            "status": "not_listed",
            "searched": [settings.list_url, settings.cancelled_list_url],
            "truncated": scan.truncated,
        }
        if scan.candidates:
            data["candidates"] = [
                {"licence_no": r.licence_no, "name": r.name, "detail_url": r.detail_url}
                for r in scan.candidates
            ]
            return self._notice(
                party,
                "manual_task",
                f"{what} is not in the PBOC licence lists by exact match; "
                f"{len(scan.candidates)} near match(es) need a human to choose",
                url=settings.list_url,
                advice=(
                    f"Pick the right institution and set licence_no (or legal_name) for "
                    f"[parties.{party.key}]."
                ),
                fields=("许可证编号", "公司名称"),
                data=data,
            )
        if scan.truncated:
            return self._notice(
                party,
                "manual_task",
                f"{what} not found in the first {settings.max_pages} page(s) of each PBOC list; "
                "the search stopped there",
                url=settings.list_url,
                advice="Raise hints.pboc_licences.max_pages, or look it up in a browser.",
                fields=("许可证编号", "公司名称"),
                data=data,
            )
        return self._notice(
            party,
            "fact",
            f"{what} is in neither PBOC list (已获许可机构 / 已注销许可机构). Banks acquire under "
            "their banking licence and are not listed here; a non-bank acquirer missing from "
            "both may be unlicensed - worth a look in a browser before saying so.",
            url=settings.list_url,
            data=data,
        )

    def _layout_notice(self, party: PartyQuery, url: str, exc: PageLayoutError) -> Notice:
        return self._notice(
            party,
            "error",
            f"PBOC licence registry: page layout not recognised at {url}: {exc}",
            url=url,
            advice="The site may have changed; open the page and check the parser against it.",
            data={"kind": "layout"},
        )
