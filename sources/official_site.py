"""Contacts read off an organisation's own web site: its 联系我们 / 投诉 pages and footers.

Why a source of its own: the PBOC licence list gives identity but no contact, and SEO
"POS客服" pages attribute one number to two acquirers (registries.md §0.5). What the acquirer
prints on its own site is the closest thing to an official channel, and the page bytes are
evidence that it did.

The work is split the froide way ("parse pure, fetch apart"): :func:`extract_contacts` is a
pure function from decoded HTML to :class:`Extracted` rows, tested on fixture pages;
:class:`OfficialSiteSource` only fetches through the engine's :class:`~sources.base.Fetcher`
and turns rows into findings carrying the page's URL, hash and fetch time.

How a value is judged: the page is flattened into lines (block elements break lines, table
cells stay on their row) that remember where each piece of text sat (footer, header, a
contact section, plain body text, an element matched by a selector hint). A value's label is
the text just before it on its line, or a short heading line above it. The label and the
place set the confidence; a 传真/fax label turns a number into ``fax``, which never becomes a
phone finding, because a notice "delivered" by calling a fax line proves nothing.
"""

from __future__ import annotations

import contextlib
import re
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode, SelectolaxError

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
from sources.normalize import InvalidContact, is_mobile, normalize

__all__ = ["Extracted", "OfficialSiteSource", "extract_contacts"]

#: Kinds :func:`extract_contacts` can return: contact kinds of :mod:`sources.base` plus ``fax``,
#: which is reported (so a human sees it) but never offered to the dialler.
EXTRACTED_KINDS = ("phone", "fax", "email", "postal", "web_form", "licence")

# Selector-hint keys accepted in a mapping; "*" (or a plain list) means "any kind".
_HINT_KINDS = frozenset({"phone", "fax", "email", "postal", "web_form", "licence", "*"})


@dataclass(frozen=True, slots=True)
class Extracted:
    """One value read from a page, already normalised with :mod:`sources.normalize`."""

    kind: str  # one of EXTRACTED_KINDS
    value: str  # normalised (E.164, lower-case e-mail, one-line address, absolute URL)
    label: str  # the words the page put next to it, e.g. "客服热线"; "" when none
    confidence: float  # 0..1
    where: str  # body | header | footer | contact | hint: the strongest place it was seen
    raw: str  # as written on the page (after de-obfuscation for e-mails)


# --------------------------------------------------------------------------- vocabulary

# Labels: a strong label names a channel meant for customers and complaints.
_STRONG = re.compile(
    r"客服|客户服务|热线|投诉|客诉|举报|消费者权益|消保|hotline|customer\s*service|complain",
    re.IGNORECASE,
)
_MILD = re.compile(r"联系|咨询|服务|电话|邮箱|地址|tel|phone|e-?mail|contact|service", re.I)
# Channels for job seekers, press and business partners: real, but the wrong door.
_NEGATIVE = re.compile(
    r"招聘|人力|(?<![A-Za-z])HR(?![A-Za-z])|简历|求职|媒体|新闻|记者|公关|品牌|市场合作|商务合作"
    r"|渠道合作|广告|投资者|董秘|证券事务|采购|供应商|recruit|career|jobs?\b|press|media|investor",
    re.IGNORECASE,
)
# Internal-ethics lines answer, but about staff misconduct, not a merchant's terminal.
_ETHICS = re.compile(r"廉政|纪检|监察|审计")
_FAX = re.compile(r"传真|fax|facsimile", re.IGNORECASE)
# Words that say "this number takes voice calls"; 客服 is not one (客服传真 is a fax).
_VOICE = re.compile(r"电话|热线|手机|座机|tel(?!ex)|phone|mobile|hotline", re.IGNORECASE)
# Any word that makes a bare 95xxx / 123xx short number believable as a phone number.
_PHONE_WORD = re.compile(
    r"电话|热线|客服|客户服务|咨询|投诉|举报|拨打|致电|联系|手机|座机|tel|phone|call|hotline",
    re.IGNORECASE,
)
_MAIL_WORD = re.compile(r"邮箱|邮件|信箱|e-?mail|mail", re.IGNORECASE)
_LICENCE_WORD = re.compile(r"许可|licen[cs]e", re.IGNORECASE)
_POSTAL_STRONG = re.compile(r"通信地址|通讯地址|邮寄地址|联系地址")

# Link texts that point at a complaint or contact page.
_LINK = re.compile(
    r"投诉|客诉|举报|消费者权益|消保|联系我们|联系方式|客服中心|客户服务|complain|contact",
    re.IGNORECASE,
)
# Title / heading / URL words that make the whole page a contact page.
_CONTACT_PAGE = re.compile(
    r"联系我们|联系方式|客户服务|客服中心|投诉|contact|lianxi|lxwm|kefu|complain|tousu",
    re.IGNORECASE,
)
# Anti-automation challenges seen on Chinese government and payment sites (registries.md §0.2,
# §3.2): the page is a script, not the site.
_CHALLENGE = re.compile(r"请开启JavaScript并刷新该页|wzwschallenge|__jsl_clearance", re.IGNORECASE)

# --------------------------------------------------------------------------- value patterns

_LOOKBEHIND = r"(?<![0-9A-Za-z@._/=#%&+])"
_PHONE = re.compile(
    _LOOKBEHIND
    + r"""(?:
      (?P<service>(?:(?:\+|00)86[- ]?)?[48]00(?:[- ]?\d){7})
    | (?P<mobile>(?:(?:\+|00)86[- ]?)?1[3-9]\d(?:[- ]?\d{4}){2})
    | (?P<landline>
        (?:(?:\+|00)86[- ]?(?:\(0?\d{2,3}\)|0?\d{2,3})|[(（]0\d{2,3}[)）]|0\d{2,3})
        [- ]?\d{3,4}[- ]?\d{4}
        (?:[ ]?(?:转|分机|ext\.?|x)[ ]?\d{1,6}|-\d{1,6})?)
    | (?P<short>9[56]\d{3,6}|12\d{3})
    )(?![0-9A-Za-z@])""",
    re.VERBOSE | re.IGNORECASE,
)

_LOCAL = r"[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}"
_DOMAIN_PLAIN = r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}"
_EMAIL = re.compile(
    rf"(?<![A-Za-z0-9._%+-])(?P<local>{_LOCAL}) ?@ ?(?P<domain>{_DOMAIN_PLAIN})(?![A-Za-z0-9-])"
)
_OPEN = r"[\[\(\{（【<]"
_CLOSE = r"[\]\)\}）】>]"
_AT_BRACKET = rf"\s*{_OPEN}\s*(?:at|@)\s*{_CLOSE}\s*"
_AT_WORD = r"\s+at\s+"
_DOT_ANY = rf"(?:\s*{_OPEN}\s*(?:dot|点|\.)\s*{_CLOSE}\s*|\s+dot\s+|\.)"
_OBFUSCATED = re.compile(
    rf"(?<![A-Za-z0-9._%+-])(?P<local>{_LOCAL})(?P<at>{_AT_BRACKET}|{_AT_WORD})"
    rf"(?P<domain>[A-Za-z0-9-]+(?:{_DOT_ANY}[A-Za-z0-9-]+)+)(?![A-Za-z0-9-])",
    re.IGNORECASE,
)
_DOT_SPLIT = re.compile(_DOT_ANY, re.IGNORECASE)
# "请将#换成@", "(#替换为@)", "replace # with @": the page tells readers how to undo it.
_SWAP_HINT = re.compile(
    r"(?P<c>[#*$%&!~])\s*号?\s*(?:换成|换为|替换为|替换成|改为|改成|->|→|=)\s*@"
    r"|replace\s+[\"'“]?(?P<e>[#*$%&!~])[\"'”]?\s+(?:with|by)\s+[\"'“]?@",
    re.IGNORECASE,
)

_LICENCE = re.compile(r"(?<![A-Za-z0-9])Z\d{13}(?!\d)")


def _spaced(*words: str) -> str:
    """Alternation that also matches "地　址" / "传 真": pages pad two-character labels."""
    return "|".join(r"\s*".join(map(re.escape, word)) for word in words)


_ADDRESS = re.compile(
    r"(?P<label>"
    + _spaced("通信地址", "通讯地址", "联系地址", "邮寄地址", "办公地址", "公司地址", "总部地址")
    + "|"
    + _spaced("注册地址", "地址")
    + r"|住\s*所(?:（营业场所）|\(营业场所\))?|Address)\s*[:：]\s*"
    r"(?P<value>[^|｜]+?)\s*(?=邮\s*编|邮政编码|电\s*话|传\s*真|邮\s*箱|电子邮件|E-?mail|Tel|Fax"
    r"|Phone|客服|热线|网\s*址|Post\s*code|Zip|[|｜]|$)",
    re.IGNORECASE,
)
_ADDRESS_WORD = re.compile(
    r"[省市区县路街道巷号楼层室座幢园镇乡村]|road|street|avenue|district|floor|\bRd\b", re.I
)
_POSTCODE = re.compile(
    r"(?:邮\s*编|邮政编码|Post\s*code|Zip(?:\s*code)?)\s*[:：]?\s*(?P<code>\d{6})(?!\d)", re.I
)
_TRAILING_POSTCODE = re.compile(r"\s*[（(]\s*(?P<code>\d{6})\s*[)）]\s*$")

# Label text: cut at separators, keep the last piece that says something.
_LABEL_SPLIT = re.compile(r"[\s|｜,，;；。!！]+")
# "传　　真" -> "传真": padding between CJK characters is layout, not a separator.
_CJK_PADDING = re.compile(r"(?<=[\u4e00-\u9fff])\s+(?=[\u4e00-\u9fff])")
_LABEL_STRIP = ":：-—_·•*/\\()（）[]【】<>《》\"'“”‘’ "
_LIST_GLUE = re.compile(r"^[\s、,，/／;；|｜或和及or]*$", re.IGNORECASE)
_PAREN_AFTER = re.compile(r"\s*[（(]([^）)]{1,16})[）)]")  # used with match(text, pos)

# Full-width digits and punctuation that pages use in contact lines, mapped one to one.
_WIDTH = str.maketrans(
    {
        **{chr(0xFF10 + i): str(i) for i in range(10)},
        "＠": "@",
        "＃": "#",
        "．": ".",
        "＋": "+",
        "－": "-",
        "‐": "-",
        "‑": "-",
        "‒": "-",
        "–": "-",
        "—": "-",
        "―": "-",
        "−": "-",
        "\u00a0": " ",
        "\u3000": " ",
    }
)
_SPACES = re.compile(r"\s+")

_SKIP_TAGS = frozenset(
    {
        "head",
        "script",
        "style",
        "noscript",
        "template",
        "svg",
        "math",
        "iframe",
        "object",
        "select",
        "textarea",
        "button",
        "input",
    }
)
_BLOCK_TAGS = frozenset(
    {
        "address",
        "article",
        "aside",
        "blockquote",
        "body",
        "caption",
        "center",
        "dd",
        "details",
        "dialog",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hgroup",
        "hr",
        "html",
        "legend",
        "li",
        "main",
        "menu",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "summary",
        "table",
        "tbody",
        "tfoot",
        "thead",
        "tr",
        "ul",
    }
)
_CELL_TAGS = frozenset({"td", "th"})
_HEADING_TAGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})

_WHERE_RANK = {"body": 0, "header": 1, "footer": 1, "contact": 2}
_WHERE_DELTA = {"body": -0.1, "header": 0.05, "footer": 0.1, "contact": 0.15}
_BASE = {
    "phone": 0.5,
    "fax": 0.5,
    "email": 0.5,
    "postal": 0.5,
    "web_form": 0.45,
    "licence": 0.6,
}
#: A selector hint means the user looked at the page and said "the hotline is here".
HINT_CONFIDENCE = 0.9


# --------------------------------------------------------------------------- flattening


@dataclass(frozen=True, slots=True)
class _Ctx:
    where: str
    hinted: frozenset[str]
    section: str = ""  # heading above the value; set per line, see _Line.section

    def with_node(
        self, node: LexborNode, own: str | None, hints: Mapping[int, frozenset[str]]
    ) -> _Ctx:
        where = own if own and _WHERE_RANK[own] > _WHERE_RANK[self.where] else self.where
        extra = hints.get(node.mem_id)
        hinted = self.hinted | extra if extra else self.hinted
        if where == self.where and hinted is self.hinted:
            return self
        return _Ctx(where, hinted, self.section)


_CONTACT_TOKENS = ("contact", "lianxi", "lxwm", "kefu", "hotline", "complain", "tousu")
_FOOTER_TOKENS = frozenset({"foot", "ft", "bottom", "copyright", "copy", "beian"})
_HEADER_TOKENS = frozenset({"head", "top", "topbar", "nav", "navbar", "menu"})


def _place_of(node: LexborNode) -> str | None:
    """What an element's tag, id and class say about the region it is."""
    tag = node.tag or ""
    if tag == "footer":
        return "footer"
    if tag == "address":
        return "contact"
    attrs = node.attributes
    names = f"{attrs.get('id') or ''} {attrs.get('class') or ''}".lower()
    tokens = [t for t in re.split(r"[\s_\-]+", names) if t]
    if any(t.startswith(_CONTACT_TOKENS) or t in ("kf", "lx") for t in tokens):
        return "contact"
    if any(t.startswith("footer") or t in _FOOTER_TOKENS for t in tokens):
        return "footer"
    if tag in ("header", "nav") or any(
        t.startswith("header") or t in _HEADER_TOKENS for t in tokens
    ):
        return "header"
    return None


@dataclass(slots=True)
class _Line:
    text: str
    starts: list[int]
    ctxs: list[_Ctx]
    section: str  # text of the heading this line sits under ("人才招聘", "媒体联系"), or ""

    def ctx_at(self, pos: int) -> _Ctx:
        return self.ctxs[max(bisect_right(self.starts, pos) - 1, 0)]


@dataclass(slots=True)
class _Anchor:
    node: LexborNode
    ctx: _Ctx
    line: int
    col: int
    section: str


@dataclass(slots=True)
class _Flattener:
    """Turns a DOM into lines of text, each piece remembering its :class:`_Ctx`."""

    lines: list[_Line] = field(default_factory=list)
    anchors: list[_Anchor] = field(default_factory=list)
    _text: list[str] = field(default_factory=list)
    _starts: list[int] = field(default_factory=list)
    _ctxs: list[_Ctx] = field(default_factory=list)
    _length: int = 0
    section: str = ""
    section_owner: int | None = None  # mem_id of the heading's parent: the section ends with it

    def add(self, raw: str, ctx: _Ctx) -> None:
        text = _SPACES.sub(" ", raw.translate(_WIDTH))
        if not text.strip():
            if self._text and not self._text[-1].endswith(" "):
                self._append(" ", ctx)
            return
        if self._text:
            prev = self._text[-1][-1:]
            # Keep "Tel" and "95118" from two elements apart, but not "kefu" and "@".
            if prev.isascii() and prev.isalnum() and text[0].isascii() and text[0].isalnum():
                self._append(" ", ctx)
        elif text.startswith(" "):
            text = text.lstrip()
        self._append(text, ctx)

    def _append(self, text: str, ctx: _Ctx) -> None:
        self._starts.append(self._length)
        self._ctxs.append(ctx)
        self._text.append(text)
        self._length += len(text)

    def position(self) -> tuple[int, int]:
        return len(self.lines), self._length

    def newline(self) -> None:
        text = "".join(self._text)
        stripped = text.rstrip()
        if stripped:
            self.lines.append(_Line(stripped, self._starts, self._ctxs, self.section))
        self._text, self._starts, self._ctxs, self._length = [], [], [], 0


def _cf_decode(encoded: str) -> str | None:
    """Cloudflare's e-mail protection: hex bytes XORed with the first byte."""
    try:
        data = bytes.fromhex(encoded)
    except ValueError:
        return None
    if len(data) < 2:
        return None
    return "".join(chr(b ^ data[0]) for b in data[1:])


def _flatten(root: LexborNode, base: _Ctx, hints: Mapping[int, frozenset[str]]) -> _Flattener:
    out = _Flattener()
    # Iterative walk: a hostile page nested ten thousand deep must not hit the recursion limit.
    stack: list[tuple[LexborNode, _Ctx, bool]] = [(root, base, False)]
    while stack:
        node, ctx, closing = stack.pop()
        tag = node.tag or ""
        if closing:
            if tag in _BLOCK_TAGS:
                out.newline()
            elif tag in _CELL_TAGS:
                out.add(" ", ctx)
            if tag in _HEADING_TAGS and out.lines:
                parent = node.parent
                out.section = out.lines[-1].text[:40]
                out.section_owner = parent.mem_id if parent is not None else None
            elif out.section_owner is not None and node.mem_id == out.section_owner:
                out.section, out.section_owner = "", None
            continue
        if tag == "-text":
            out.add(node.text_content or "", ctx)
            continue
        if tag.startswith("-") or tag in _SKIP_TAGS:
            continue
        if tag == "br":
            out.newline()
            continue
        place = _place_of(node)
        if place in ("footer", "header"):
            # A footer after a flat "人才招聘" section must not inherit that heading.
            out.section, out.section_owner = "", None
        own = ctx.with_node(node, place, hints)
        if tag == "img":
            alt = node.attributes.get("alt") or ""
            if alt.strip():
                out.add(f" {alt} ", own)
            continue
        if tag in _BLOCK_TAGS:
            out.newline()
        elif tag in _CELL_TAGS:
            out.add(" ", own)
        if tag == "a":
            line, col = out.position()
            out.anchors.append(_Anchor(node, own, line, col, out.section))
        protected = node.attributes.get("data-cfemail")
        if protected:
            decoded = _cf_decode(protected)
            if decoded:
                out.add(f" {decoded} ", own)
            stack.append((node, own, True))
            continue
        stack.append((node, own, True))
        children = list(node.iter(include_text=True))
        stack.extend((child, own, False) for child in reversed(children))
    out.newline()
    return out


# --------------------------------------------------------------------------- scanning


@dataclass(slots=True)
class _Hit:
    start: int
    end: int
    kind: str  # phone | email | postal | licence
    raw: str
    value: str
    family: str = ""  # phones: service | mobile | landline | short; e-mails: plain | word | ...
    label: str = ""
    postcode: str | None = None


class _Spans:
    """Non-overlapping spans already claimed on a line; bisect keeps a long line linear-ish."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def overlaps(self, span: tuple[int, int]) -> bool:
        i = bisect_right(self._starts, span[0])
        if i and self._ends[i - 1] > span[0]:
            return True
        return i < len(self._starts) and self._starts[i] < span[1]

    def add(self, span: tuple[int, int]) -> None:
        i = bisect_right(self._starts, span[0])
        self._starts.insert(i, span[0])
        self._ends.insert(i, span[1])


def _emails(text: str, swap: str | None) -> list[_Hit]:
    hits: list[_Hit] = []
    for m in _EMAIL.finditer(text):
        hits.append(_Hit(m.start(), m.end(), "email", m.group(0), f"{m['local']}@{m['domain']}"))
    taken = _Spans()
    for h in hits:
        taken.add((h.start, h.end))
    for m in _OBFUSCATED.finditer(text):
        if taken.overlaps(m.span()):
            continue
        domain = ".".join(_DOT_SPLIT.split(m["domain"]))
        family = "word" if not re.search(r"[\[\(\{（【<]", m["at"]) else "bracket"
        if family == "word" and m["at"].strip() == "AT":
            family = "WORD"  # "name AT domain DOT com": the capitals say it is on purpose
        hits.append(_Hit(m.start(), m.end(), "email", m.group(0), f"{m['local']}@{domain}", family))
        taken.add(m.span())
    if swap:
        c = re.escape(swap)
        pattern = re.compile(
            rf"(?<![A-Za-z0-9._%+-])(?P<local>{_LOCAL}) ?{c} ?(?P<domain>{_DOMAIN_PLAIN})"
            r"(?![A-Za-z0-9-])"
        )
        for m in pattern.finditer(text):
            if not taken.overlaps(m.span()):
                hits.append(
                    _Hit(m.start(), m.end(), "email", m.group(0), f"{m['local']}@{m['domain']}")
                )
                taken.add(m.span())
    return hits


def _scan(line: _Line, swap: str | None) -> list[_Hit]:
    """Every candidate value on one line, without overlaps, in reading order."""
    text = line.text
    hits = _emails(text, swap)
    taken = _Spans()
    for h in hits:
        taken.add((h.start, h.end))
    for m in _LICENCE.finditer(text):
        if not taken.overlaps(m.span()):
            hits.append(_Hit(m.start(), m.end(), "licence", m.group(0), m.group(0)))
            taken.add(m.span())
    phones = [m for m in _PHONE.finditer(text) if not taken.overlaps(m.span()) and m.lastgroup]
    phone_starts = [p.start() for p in phones]
    for m in _ADDRESS.finditer(text):
        start, end = m.span("value")
        # An address runs to the next label; an unlabelled number after it is not part of it.
        j = bisect_right(phone_starts, start)
        while j < len(phones) and phones[j].start() < end:
            if phones[j].lastgroup != "short":
                end = phones[j].start()
                break
            j += 1
        value = text[start:end].strip(" ,，;；。")
        if taken.overlaps((start, end)):
            continue
        postcode = None
        trailing = _TRAILING_POSTCODE.search(value)
        if trailing:
            postcode, value = trailing["code"], value[: trailing.start()]
        if len(value) < 6 or "@" in value or value.lower().startswith("http"):
            continue
        if not _ADDRESS_WORD.search(value):
            continue
        hits.append(_Hit(start, end, "postal", value, value, label=m["label"], postcode=postcode))
        taken.add((start, end))
    for p in phones:
        if not taken.overlaps(p.span()):
            raw = p.group(0)
            hits.append(_Hit(p.start(), p.end(), "phone", raw, raw, p.lastgroup or ""))
    hits.sort(key=lambda h: h.start)
    return hits


def _label_piece(window: str) -> str:
    for piece in reversed(_LABEL_SPLIT.split(_CJK_PADDING.sub("", window))):
        cleaned = piece.strip(_LABEL_STRIP)
        if cleaned:
            return cleaned[-24:]
    return ""


def _has_keyword(label: str) -> bool:
    return any(
        p.search(label)
        for p in (_STRONG, _MILD, _NEGATIVE, _ETHICS, _FAX, _PHONE_WORD, _MAIL_WORD, _LICENCE_WORD)
    )


def _label_for(
    lines: list[_Line],
    hits: list[list[_Hit]],
    index: int,
    pos: int,
    end: int | None = None,
    kind: str = "",
) -> str:
    """The words the page put next to the value at ``lines[index].text[pos:end]``."""
    line = lines[index]
    before = bisect_right(hits[index], pos, key=lambda h: h.end)  # hits are sorted, disjoint
    last = hits[index][before - 1] if before else None
    # A label sits right before its value; 48 characters is plenty and keeps long lines cheap.
    window = line.text[max(last.end if last else 0, pos - 48) : pos]
    if last is not None and last.kind == kind and _LIST_GLUE.match(window):
        return last.label  # "电话：010-1、010-2": the second shares the first's label
    label = _label_piece(window)
    if _has_keyword(label):
        return label
    if end is not None:
        after = _PAREN_AFTER.match(line.text, end)
        if after and _has_keyword(after.group(1)):
            return after.group(1).strip()
    if last is None and not label and index > 0:
        above = lines[index - 1].text.strip()
        if len(above) <= 20 and not hits[index - 1]:
            return above.strip(_LABEL_STRIP)
    return label


def _confidence(kind: str, label: str, ctx: _Ctx, *, bonus: float = 0.0) -> float:
    """Base per kind, then place, then label; a heading like "人才招聘" only ever lowers."""
    score = _BASE[kind] + _WHERE_DELTA[ctx.where] + bonus
    negative = bool(_NEGATIVE.search(label))
    if negative or _NEGATIVE.search(ctx.section):
        score -= 0.3
    elif _ETHICS.search(label) or _ETHICS.search(ctx.section):
        score -= 0.15
    elif (
        _STRONG.search(label)
        or (kind == "licence" and _LICENCE_WORD.search(label))
        or (kind == "postal" and _POSTAL_STRONG.search(label))
    ):
        score += 0.25
    elif _MILD.search(label):
        score += 0.1
    if not negative and (kind in ctx.hinted or "*" in ctx.hinted):
        score = max(score, HINT_CONFIDENCE)
    return round(min(max(score, 0.05), 0.99), 2)


def _where(ctx: _Ctx, kind: str) -> str:
    return "hint" if kind in ctx.hinted or "*" in ctx.hinted else ctx.where


def _phone_row(raw: str, label: str, ctx: _Ctx, family: str, forced: bool) -> Extracted | None:
    """Judge one phone-looking match; ``forced`` when a tel: link or hint vouches for it."""
    hinted = "phone" in ctx.hinted or "*" in ctx.hinted
    if family == "short" and not (forced or hinted or _PHONE_WORD.search(label)):
        return None  # a bare 5-digit number in prose is more likely a count than a hotline
    try:
        value = normalize("phone", raw)
    except InvalidContact:
        return None
    kind = "phone"
    bonus = 0.05 if family in ("service", "short") else 0.0
    if _FAX.search(label):
        if _VOICE.search(label):
            bonus -= 0.1  # "电话/传真": it answers calls, but may be a fax machine
        else:
            kind = "fax"
    if kind == "fax":
        ctx = replace(ctx, hinted=ctx.hinted - {"phone"})
    return Extracted(
        kind, value, label, _confidence(kind, label, ctx, bonus=bonus), _where(ctx, kind), raw
    )


def _compile_hints(
    tree: LexborHTMLParser, selectors: Mapping[str, str | Sequence[str]] | Sequence[str] | None
) -> dict[int, frozenset[str]]:
    if not selectors:
        return {}
    pairs: list[tuple[str, str]] = []
    if isinstance(selectors, Mapping):
        for kind, value in selectors.items():
            if kind not in _HINT_KINDS:
                raise ValueError(f"selector hint for unknown kind {kind!r}")
            if not isinstance(value, (str, Sequence)):
                raise ValueError(f"selector hint for {kind!r} must be a selector or a list")
            pairs.extend((kind, sel) for sel in ([value] if isinstance(value, str) else value))
    elif isinstance(selectors, str):
        pairs.append(("*", selectors))
    else:
        pairs.extend(("*", sel) for sel in selectors)
    marks: dict[int, set[str]] = {}
    for kind, sel in pairs:
        if not isinstance(sel, str) or not sel.strip():
            raise ValueError(f"selector hint {sel!r} is not a CSS selector")
        try:
            nodes = tree.css(sel)
        except SelectolaxError as exc:
            raise ValueError(f"invalid CSS selector {sel!r}: {exc}") from exc
        for node in nodes:
            marks.setdefault(node.mem_id, set()).add(kind)
    return {k: frozenset(v) for k, v in marks.items()}


def _is_contact_page(tree: LexborHTMLParser, url: str) -> bool:
    heads = [n.text() for n in tree.css("title, h1")[:4]]
    with contextlib.suppress(ValueError):  # a URL urllib refuses simply has no path to read
        heads.append(unquote(urlsplit(url).path))
    return bool(_CONTACT_PAGE.search(" ".join(heads)))


def _swap_char(lines: list[_Line]) -> str | None:
    for line in lines:
        m = _SWAP_HINT.search(line.text)
        if m:
            return m["c"] or m["e"]
    return None


def extract_contacts(
    html: str,
    url: str,
    selectors: Mapping[str, str | Sequence[str]] | Sequence[str] | None = None,
) -> list[Extracted]:
    """Every contact value on one page, normalised and judged, best first.

    ``url`` is the page's own (final) URL: relative links resolve against it and its path can
    mark the page as a contact page. ``selectors`` are the user's hints: a list of CSS
    selectors (any value inside is high confidence) or a mapping ``kind -> selector(s)``.
    Raises ``ValueError`` only for a hint that is not a valid CSS selector; a malformed page
    yields what can be read from it.
    """
    tree = LexborHTMLParser(html)
    hints = _compile_hints(tree, selectors)
    root = tree.root
    if root is None:
        return []
    base = _Ctx("contact" if _is_contact_page(tree, url) else "body", frozenset())
    flat = _flatten(root, base, hints)
    lines = flat.lines
    swap = _swap_char(lines)
    hits = [_scan(line, swap) for line in lines]

    found: list[Extracted] = []
    for index, line in enumerate(lines):
        for hit in hits[index]:
            ctx = replace(line.ctx_at(hit.start), section=line.section)
            if hit.kind == "postal":
                row = _postal_row(hit, lines, hits, index, ctx)
            else:
                hit.label = _label_for(lines, hits, index, hit.start, hit.end, hit.kind)
                row = _value_row(hit, ctx)
            if row is not None:
                found.append(row)
    found.extend(_anchor_rows(flat.anchors, lines, hits, url))
    return _best(found)


def _value_row(hit: _Hit, ctx: _Ctx) -> Extracted | None:
    label = hit.label
    if hit.kind == "phone":
        return _phone_row(hit.raw, label, ctx, hit.family, forced=False)
    if hit.kind == "email":
        hinted = "email" in ctx.hinted or "*" in ctx.hinted
        if hit.family == "word" and not (hinted or _MAIL_WORD.search(label)):
            return None  # "look at this dot com" is prose, not an address
        try:
            value = normalize("email", hit.value)
        except InvalidContact:
            return None
        return Extracted(
            "email", value, label, _confidence("email", label, ctx), _where(ctx, "email"), hit.value
        )
    if hit.kind == "licence":
        try:
            value = normalize("licence", hit.value)
        except InvalidContact:
            return None
        return Extracted(
            "licence",
            value,
            label,
            _confidence("licence", label, ctx),
            _where(ctx, "licence"),
            hit.raw,
        )
    return None


def _postal_row(
    hit: _Hit, lines: list[_Line], hits: list[list[_Hit]], index: int, ctx: _Ctx
) -> Extracted | None:
    postcode = hit.postcode
    if postcode is None:
        # 邮编 sits on the same line, or on the line right below / above the address.
        # Only look close by: a long line full of addresses must not be rescanned per address.
        m = _POSTCODE.search(lines[index].text, hit.end, hit.end + 40)
        for near in (index + 1, index - 1):
            if m is not None:
                break
            if 0 <= near < len(lines) and not any(h.kind == "postal" for h in hits[near]):
                m = _POSTCODE.search(lines[near].text, 0, 60)
        if m is not None:
            postcode = m["code"]
    text = f"{hit.value}（邮编 {postcode}）" if postcode else hit.value
    try:
        value = normalize("postal", text)
    except InvalidContact:
        return None
    label = hit.label
    return Extracted(
        "postal",
        value,
        label,
        _confidence("postal", label, ctx),
        _where(ctx, "postal"),
        hit.raw,
    )


def _anchor_rows(
    anchors: list[_Anchor], lines: list[_Line], hits: list[list[_Hit]], page_url: str
) -> list[Extracted]:
    rows: list[Extracted] = []
    try:
        page = urldefrag(page_url).url
    except ValueError:
        page = page_url
    for anchor in anchors:
        anchor.ctx = replace(anchor.ctx, section=anchor.section)
        href = (anchor.node.attributes.get("href") or "").strip()
        if not href:
            continue
        text = " ".join(anchor.node.text(deep=True).translate(_WIDTH).split())
        title = (anchor.node.attributes.get("title") or "").strip()
        scheme = href.split(":", 1)[0].lower() if ":" in href else ""
        if scheme in ("mailto", "tel"):
            label = text if text and not re.search(r"[@\d]", text) else ""
            if not label and anchor.line < len(lines):
                label = _label_for(lines, hits, anchor.line, anchor.col)
            rows.extend(_link_values(scheme, href, label or title, anchor.ctx))
            continue
        words = text or title
        if not _LINK.search(words) or scheme in ("javascript", "data"):
            continue
        try:
            target = urldefrag(urljoin(page_url, href)).url
            scheme = urlsplit(target).scheme
        except ValueError:  # "http://[::1": urllib refuses it, so would any browser
            continue
        if target == page or scheme not in ("http", "https"):
            continue
        try:
            value = normalize("web_form", target)
        except InvalidContact:
            continue
        label = words[:24]
        rows.append(
            Extracted(
                "web_form",
                value,
                label,
                _confidence("web_form", label, anchor.ctx),
                _where(anchor.ctx, "web_form"),
                href,
            )
        )
    return rows


def _link_values(scheme: str, href: str, label: str, ctx: _Ctx) -> list[Extracted]:
    target = unquote(href.split(":", 1)[1]).split("?", 1)[0]
    rows: list[Extracted] = []
    for part in target.split(","):
        part = part.strip()
        if not part:
            continue
        if scheme == "tel":
            row = _phone_row(part, label, ctx, "tel", forced=True)
            if row is not None:
                rows.append(row)
            continue
        try:
            value = normalize("email", part)
        except InvalidContact:
            continue
        rows.append(
            Extracted(
                "email", value, label, _confidence("email", label, ctx), _where(ctx, "email"), part
            )
        )
    return rows


def _best(rows: list[Extracted]) -> list[Extracted]:
    """One row per (kind, value): the most confident sighting, its label and place."""
    best: dict[tuple[str, str], Extracted] = {}
    for row in rows:
        key = (row.kind, row.value)
        kept = best.get(key)
        if (
            kept is None
            or row.confidence > kept.confidence
            or (row.confidence == kept.confidence and not kept.label and row.label)
        ):
            best[key] = row
    return sorted(best.values(), key=lambda r: (-r.confidence, r.kind, r.value))


# --------------------------------------------------------------------------- the source


@dataclass(frozen=True, slots=True)
class _SiteHints:
    pages: tuple[str, ...]
    selectors: Mapping[str, str | Sequence[str]] | Sequence[str] | None
    allowed_hosts: frozenset[str] | None


def _read_hints(party: PartyQuery) -> _SiteHints:
    """``[parties.<key>.hints.official_site]``, checked here because hints are free-form."""
    raw: Any = party.hints.get("official_site") or {}
    if not isinstance(raw, Mapping):
        raise ValueError("hints.official_site must be a table")
    unknown = set(raw) - {"pages", "selectors", "allowed_hosts"}
    if unknown:
        raise ValueError(f"hints.official_site: unknown keys {sorted(unknown)}")
    pages_raw: Any = raw.get("pages") or ([party.website] if party.website else [])
    if isinstance(pages_raw, str):
        pages_raw = [pages_raw]
    if not isinstance(pages_raw, Sequence) or not all(isinstance(p, str) for p in pages_raw):
        raise ValueError("hints.official_site.pages must be a list of URLs")
    pages: list[str] = []
    for page in pages_raw:
        try:
            pages.append(normalize("website", page))
        except InvalidContact as exc:
            raise ValueError(f"hints.official_site.pages: {exc}") from exc
    selectors: Any = raw.get("selectors")
    if selectors is not None:
        if not isinstance(selectors, (str, Sequence, Mapping)):
            raise ValueError("hints.official_site.selectors must be a list or a table")
        # Check the selectors once, before any fetch, rather than once per page.
        _compile_hints(LexborHTMLParser("<html></html>"), selectors)
    hosts: Any = raw.get("allowed_hosts")
    allowed: frozenset[str] | None = None
    if hosts is not None:
        if (
            isinstance(hosts, str)
            or not isinstance(hosts, Sequence)
            or not all(isinstance(h, str) for h in hosts)
        ):
            raise ValueError("hints.official_site.allowed_hosts must be a list of host names")
        allowed = frozenset(h.strip().lower() for h in hosts if h.strip())
    return _SiteHints(tuple(dict.fromkeys(pages)), selectors, allowed)


class OfficialSiteSource(NoticeMaker):
    """Reads the configured 联系我们 / 投诉 pages of a party's official site.

    Configure with ``[parties.<key>.hints.official_site]``: ``pages`` (URLs; default the
    party's ``website``), optional ``selectors`` (see :func:`extract_contacts`) and optional
    ``allowed_hosts`` for redirects (default: the page's own host, the fetcher's rule).
    """

    name: ClassVar[str] = "official_site"

    async def lookup(self, party: PartyQuery, fetch: Fetcher) -> Lookup:
        try:
            site = _read_hints(party)
        except ValueError as exc:
            return Lookup(notices=(self._notice(party, "error", str(exc)),))
        if not site.pages:
            return Lookup(
                notices=(
                    self._notice(
                        party,
                        "manual_task",
                        f"no official site page is configured for {party.name}",
                        advice="set the party's website or hints.official_site.pages to its "
                        "联系我们 / 投诉 page",
                        fields=("website",),
                    ),
                )
            )
        best: dict[tuple[str, str], Finding] = {}
        notices: list[Notice] = []
        for page in site.pages:
            page_findings, page_notices = await self._read_page(party, fetch, page, site)
            for f in page_findings:
                # Two pages of one site are not two independent witnesses: the engine combines
                # confidences across findings, so keep only the best sighting of each value.
                kept = best.get((f.kind, f.value))
                if kept is None or f.confidence > kept.confidence:
                    best[(f.kind, f.value)] = f
            notices.extend(page_notices)
        return Lookup(findings=tuple(best.values()), notices=tuple(notices))

    async def _read_page(
        self, party: PartyQuery, fetch: Fetcher, page: str, site: _SiteHints
    ) -> tuple[list[Finding], list[Notice]]:
        try:
            fetched = await fetch.get(page, allowed_hosts=site.allowed_hosts)
        except FetchError as exc:
            return [], [
                self._notice(
                    party,
                    "error",
                    f"could not fetch {exc.url}: {exc.kind}: {exc}",
                    url=exc.url,
                    data={"kind": exc.kind, "status": exc.status},
                )
            ]
        if not 200 <= fetched.status < 300 and not fetched.not_modified:
            return [], [
                self._notice(
                    party,
                    "error",
                    f"HTTP {fetched.status} from {fetched.url}",
                    url=fetched.url,
                    data={"kind": "http_status", "status": fetched.status},
                )
            ]
        try:
            rows = extract_contacts(fetched.text, fetched.url, site.selectors)
        except ValueError as exc:
            return [], [self._notice(party, "error", f"hints.official_site.selectors: {exc}")]
        except Exception as exc:  # noqa: BLE001 - a parser bug must not stop discovery
            return [], [
                self._notice(
                    party, "error", f"could not read {fetched.url}: {exc!r}", url=fetched.url
                )
            ]
        notices: list[Notice] = []
        if not rows and _CHALLENGE.search(fetched.text):
            notices.append(
                self._notice(
                    party,
                    "blocked",
                    f"{fetched.url} answered with an anti-automation challenge",
                    url=fetched.url,
                    advice="open the page in a browser and copy the contacts into the config",
                )
            )
        return self._findings(party, fetched, rows, notices), notices

    def _findings(
        self, party: PartyQuery, fetched: Fetched, rows: list[Extracted], notices: list[Notice]
    ) -> list[Finding]:
        def finding(kind: str, row: Extracted) -> Finding:
            return Finding(
                party=party.key,
                kind=kind,
                value=row.value,
                label=row.label,
                source=self.name,
                url=fetched.url,
                seen_at=fetched.fetched_at,
                evidence_sha256=fetched.sha256,
                confidence=row.confidence,
            )

        findings: list[Finding] = []
        faxes = [r for r in rows if r.kind == "fax"]
        for row in rows:
            if row.kind == "fax":
                continue
            findings.append(finding(row.kind, row))
            # A mobile on the organisation's own page can take an SMS notice as well.
            if row.kind == "phone" and is_mobile(row.value):
                findings.append(finding("sms", row))
        if faxes:
            notices.append(
                self._notice(
                    party,
                    "fact",
                    f"{fetched.url} lists fax numbers; they are not used as phone contacts",
                    url=fetched.url,
                    data={"fax": [{"value": r.value, "label": r.label} for r in faxes]},
                )
            )
        licences = {r.value for r in rows if r.kind == "licence"}
        if party.licence_no and licences and party.licence_no not in licences:
            notices.append(
                self._notice(
                    party,
                    "manual_task",
                    f"{fetched.url} shows licence {', '.join(sorted(licences))}, but "
                    f"{party.name} is configured with {party.licence_no}: is this its site?",
                    url=fetched.url,
                    fields=("licence_no", "website"),
                )
            )
        return findings
