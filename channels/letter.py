"""Printable formal letters (函件) for the ``postal`` kind: printed, signed and posted by a person.

An acquirer or a regulator that ignores e-mail still has a registered address, and a letter
sent there by EMS or registered mail, with its contents named on the waybill (内件品名), is the
form of delivery that complaint handlers and courts accept most readily. Nothing leaves the
machine here: :meth:`LetterChannel.send` writes the printable file into ``dir/<reference>/``
and answers ``pending``. The attempt waits until the user records the courier's tracking
number (``outreach letter sent CASE --tracking …``, :mod:`outreach.manual`), which is the
proof event that the letter went out.

The payload is deterministic, so every claim of an attempt yields the same bytes: the date is
the attempt's creation day in Beijing, never "today", and nothing depends on the locale.
Every value that reaches the HTML is escaped here or was autoescaped by the engine
(``Outgoing.html``), so no merchant or party name can inject markup into the letter.

With ``pdf = true`` the payload is a PDF instead (what is printed is what is hashed). That
needs the optional ``fpdf2`` package and a CJK font (Debian ``fonts-noto-cjk`` or
``fonts-wqy-microhei``, or ``font_file``); when either is missing the channel refuses to start
and says what to install, rather than printing empty boxes where the Chinese should be.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from datetime import date
from html import escape
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

from channels.base import Outgoing, Permanent, Prepared, Receipt

_BEIJING = ZoneInfo("Asia/Shanghai")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_BODY = re.compile(r"<body[^>]*>(.*)</body>", re.S | re.I)

# Fonts tried in order when ``font_file`` is not set. Noto Serif CJK suits a formal letter;
# the collection's Simplified Chinese face is chosen by name (index 0 is the Japanese one).
FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "C:/Windows/Fonts/simsun.ttc",
)

LABELS: Mapping[str, Mapping[str, str]] = {
    "zh-CN": {
        "from": "寄件人",
        "to": "收件人",
        "date": "日期",
        "reference": "编号",
        "contents": "内件",
        "envelope": "信封及快递详情单",
        "hint": (
            "寄出时请在快递详情单“内件品名”栏写明上述内件名称，并保留收据。"
            "寄出后登记快递单号：outreach letter sent {reference} --tracking 快递单号 "
            "[--carrier EMS] [--receipt 收据照片]"
        ),
    },
    "en": {
        "from": "From",
        "to": "To",
        "date": "Date",
        "reference": "Reference",
        "contents": "Contents",
        "envelope": "Envelope and waybill",
        "hint": (
            "Write the contents above in the waybill's contents field and keep the receipt. "
            "After posting, record the tracking number: outreach letter sent {reference} "
            "--tracking NUMBER [--carrier EMS] [--receipt PHOTO]"
        ),
    },
}

_CSS = """\
@page { size: A4; margin: 20mm 20mm 22mm; }
@page { @bottom-center { content: "%(ref)s · " counter(page) " / " counter(pages); font-size: 8pt; } }
body { font-family: "Noto Serif CJK SC", "Source Han Serif SC", "SimSun", "Songti SC", serif;
       font-size: 12pt; line-height: 1.7; color: #000; margin: 0; }
@media screen { body { max-width: 170mm; margin: 12mm auto; } }
table.head { width: 100%%; border-collapse: collapse; font-size: 9.5pt; line-height: 1.5; }
table.head td { vertical-align: top; padding: 0; }
td.ref { text-align: right; white-space: nowrap; }
.k { color: #333; }
.to { margin: 8mm 0 10mm; font-size: 11pt; line-height: 1.6; }
h1 { font-size: 15pt; text-align: center; margin: 0 0 1.2em; }
p { margin: 0 0 .6em; white-space: pre-wrap; }
.meta { font-size: 9pt; color: #333; border-top: 1px solid #999; margin-top: 2em; padding-top: .5em; }
.envelope { break-before: page; page-break-before: always; }
.envelope h2 { font-size: 11pt; font-weight: normal; color: #333; }
.label { border: 1px dashed #000; padding: 5mm 6mm; margin: 0 0 6mm; width: 120mm; }
.label .v { font-size: 14pt; line-height: 1.6; }
.small .v { font-size: 11pt; }
@media print { .noprint { display: none; } }
"""


class LetterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    dir: str = "var/letters"  # relative paths are resolved against the config file's folder
    # Each defaults to the same field of [sender]; set one here only to differ on letters.
    sender_name: str | None = None
    sender_organisation: str | None = None
    sender_address: str | None = None  # return address for the letterhead and the envelope
    sender_phone: str | None = None
    sender_email: str | None = None
    pdf: bool = False
    font_file: str | None = None  # a TTF/OTF/TTC with CJK glyphs (pdf = true)


def write_numbered(folder: Path, stem: str, ext: str, data: bytes) -> tuple[Path, int]:
    """Write ``data`` to ``folder/stem.ext`` without ever overwriting: a re-send of the same
    attempt lands in ``stem.2.ext``, so a duplicate stays as visible as in a real inbox."""
    if not _SAFE_NAME.match(folder.name) or not _SAFE_NAME.match(stem):
        raise Permanent(f"refusing an unsafe file name {folder.name}/{stem}", bad_recipient=False)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.{ext}"
    n = 1
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            n += 1
            path = folder / f"{stem}.{n}.{ext}"
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return path, n


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def letter_date(msg: Outgoing) -> date:
    """The day printed on the letter: the attempt's creation day in Beijing, never "today"."""
    return msg.created_at.astimezone(_BEIJING).date()


def format_date(day: date, language: str) -> str:
    if language == "en":
        return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"
    return f"{day.year}年{day.month}月{day.day}日"


def find_cjk_font(explicit: str | None) -> tuple[str, int] | None:
    """(path, face index) of a font that can print Chinese, or None.

    In a collection the Simplified Chinese face is preferred: the same code point is drawn
    differently in the JP/KR/TC faces, and a formal letter to a mainland institution should
    use mainland glyph forms.
    """
    paths = [explicit] if explicit else [p for p in FONT_CANDIDATES if Path(p).is_file()]
    for path in paths:
        if not Path(path).is_file():
            return None
        if not path.lower().endswith((".ttc", ".otc")):
            return path, 0
        if not _installed("fontTools"):
            return path, 0
        ttlib = importlib.import_module("fontTools.ttLib")
        with ttlib.TTCollection(path, lazy=True) as coll:
            names = [str(f["name"].getDebugName(4) or "") for f in coll.fonts]
        for i, name in enumerate(names):
            if " SC" in name or "Simplified" in name:
                return path, i
        return path, 0
    return None


class LetterChannel:
    adapter: ClassVar[str] = "letter"
    kinds: ClassVar[frozenset[str]] = frozenset({"postal"})
    Settings: ClassVar[type[BaseModel]] = LetterSettings

    def __init__(self, name: str, settings: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.name = name
        self.settings = LetterSettings.model_validate(dict(settings))
        self.dir = Path(self.settings.dir)
        self.font: tuple[str, int] | None = None
        if self.settings.pdf:
            if not _installed("fpdf"):
                raise ValueError(
                    f"{name}.pdf: PDF letters need the fpdf2 package (pip install 'outreach[pdf]'); "
                    "or set pdf = false to print the HTML letter from a browser"
                )
            self.font = find_cjk_font(self.settings.font_file)
            if self.font is None:
                where = self.settings.font_file or "the usual font folders"
                raise ValueError(
                    f"{name}.font_file: no CJK font found in {where}; install one "
                    "(apt-get install fonts-noto-cjk) or set font_file to a TTF/OTF/TTC "
                    "with Chinese glyphs"
                )

    # ------------------------------------------------------------------ prepare

    def _sender(self, msg: Outgoing) -> list[str]:
        s = self.settings
        lines = [s.sender_name or msg.sender_name or ""]
        org = s.sender_organisation or msg.sender_organisation
        if org:
            framed = f" ({org})" if msg.language == "en" else f"（{org}）"
            lines[0] = f"{lines[0]}{framed}" if lines[0] else org
        lines += [
            v
            for v in (
                s.sender_address or msg.sender_address,
                s.sender_phone or msg.sender_phone,
                s.sender_email or msg.sender_email,
            )
            if v
        ]
        return [line for line in lines if line]

    def prepare(self, msg: Outgoing) -> Prepared:
        if msg.kind != "postal":
            raise Permanent(f"the letter channel cannot send {msg.kind!r}", bad_recipient=False)
        if not msg.recipient.strip():
            raise Permanent("no postal address to print on the letter")
        if self.font is not None:
            payload = render_pdf(msg, self._sender(msg), self.font)
            return Prepared(msg, payload, "application/pdf", msg.idempotency_key, {"ext": "pdf"})
        html = render_html(msg, self._sender(msg))
        return Prepared(
            msg,
            html.encode("utf-8"),
            "text/html; charset=utf-8",
            msg.idempotency_key,
            {"ext": "html"},
        )

    # ------------------------------------------------------------------ send

    async def send(self, prepared: Prepared) -> Receipt:
        msg = prepared.outgoing
        ext = str(prepared.meta.get("ext", "html"))
        path, copy = write_numbered(
            self.dir / msg.reference, f"letter-{msg.idempotency_key}", ext, prepared.payload
        )
        reply = (
            f"written {path.name} ({len(prepared.payload)} bytes); print, sign and post it, "
            f"then record the tracking number"
        )
        return Receipt(
            accepted=False,
            provider_id=path.name,
            response=reply.encode(),
            transcript={"path": str(path), "copy": copy, "waiting_for": "tracking number"},
            pending=True,
        )

    async def aclose(self) -> None:
        return None


# ---------------------------------------------------------------------- HTML


def _labels(language: str) -> Mapping[str, str]:
    return LABELS.get(language, LABELS["zh-CN"])


def _notice_fragment(msg: Outgoing) -> str:
    """The notice as the engine rendered it (already autoescaped), without its own page shell.

    Splitting at ``<body>`` is safe because autoescaping turned every ``<`` that came from a
    value into ``&lt;``: only the template's own tags remain.
    """
    if msg.html:
        m = _BODY.search(msg.html)
        return (m.group(1) if m else msg.html).strip()
    paragraphs = [p for p in msg.body.split("\n\n") if p.strip()]
    title = f"<h1>{escape(msg.subject or msg.reference)}</h1>\n"
    return title + "\n".join(f"<p>{escape(p)}</p>" for p in paragraphs)


def _contents(msg: Outgoing) -> str:
    """What the waybill's contents field (内件品名) should say: the notice, by its subject."""
    if not msg.subject:
        return msg.reference
    return msg.subject if msg.reference in msg.subject else f"{msg.subject}（{msg.reference}）"


def _lines(values: Sequence[str]) -> str:
    return "<br>\n".join(escape(v) for v in values)


def render_html(msg: Outgoing, sender: Sequence[str]) -> str:
    """The whole printable letter: letterhead, recipient, the notice, an envelope sheet."""
    lab = _labels(msg.language)
    ref = escape(msg.reference)
    css_ref = re.sub(r"[^A-Za-z0-9._-]", "", msg.reference)
    day = format_date(letter_date(msg), msg.language)
    to = [v for v in (msg.recipient_name, msg.recipient) if v]
    contents = _contents(msg)
    hint = lab["hint"].format(reference=msg.reference)
    sender_block = (
        f'<span class="k">{lab["from"]}：</span><br>\n{_lines(sender)}' if sender else "&nbsp;"
    )
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="{escape(msg.language)}">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{escape(msg.subject or msg.reference)}</title>",
        f"<style>\n{_CSS % {'ref': css_ref}}</style>",
        "</head>",
        "<body>",
        '<table class="head"><tr>',
        f'<td class="from">{sender_block}</td>',
        f'<td class="ref"><span class="k">{lab["reference"]}：</span>{ref}<br>\n'
        f'<span class="k">{lab["date"]}：</span>{escape(day)}</td>',
        "</tr></table>",
        f'<div class="to"><span class="k">{lab["to"]}：</span><br>\n{_lines(to)}</div>',
        '<div class="notice">',
        _notice_fragment(msg),
        "</div>",
        '<section class="envelope">',
        f"<h2>{lab['envelope']} · {ref}</h2>",
        f'<div class="label"><div class="k">{lab["to"]}</div>'
        f'<div class="v">{_lines(to)}</div></div>',
    ]
    if sender:
        parts.append(
            f'<div class="label small"><div class="k">{lab["from"]}</div>'
            f'<div class="v">{_lines(sender)}</div></div>'
        )
    parts += [
        f'<p><span class="k">{lab["contents"]}：</span>{escape(contents)}</p>',
        f'<p class="noprint">{escape(hint)}</p>',
        "</section>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------------- PDF


def render_pdf(msg: Outgoing, sender: Sequence[str], font: tuple[str, int]) -> bytes:
    """The same letter as a PDF, laid out from the plain text (no markup to escape).

    Deterministic: the creation date is the attempt's, the producer string is fixed, and the
    font subset depends only on the text.
    """
    fpdf = importlib.import_module("fpdf")  # optional: imported only when pdf = true
    enums = importlib.import_module("fpdf.enums")
    wrap_mode, x_pos, y_pos = enums.WrapMode, enums.XPos, enums.YPos

    lab = _labels(msg.language)
    wrap = wrap_mode.WORD if msg.language == "en" else wrap_mode.CHAR
    reference = msg.reference

    def footer(self: Any) -> None:
        self.set_y(-14)
        self.set_font("cjk", size=8)
        self.cell(0, 6, f"{reference} · {self.page_no()} / {{nb}}", align="C")

    pdf = type("_Letter", (fpdf.FPDF,), {"footer": footer})(format="A4", unit="mm")
    pdf.set_creation_date(msg.created_at)
    pdf.set_producer("outreach letter")
    pdf.set_title(msg.subject or reference)
    pdf.set_lang(msg.language)
    pdf.set_margins(22, 20, 22)
    pdf.set_auto_page_break(True, margin=22)
    pdf.add_font("cjk", "", font[0], collection_font_number=font[1])
    pdf.add_page()
    width = pdf.epw

    def block(text: str, size: float, height: float, align: str = "L") -> None:
        pdf.set_font("cjk", size=size)
        pdf.multi_cell(
            width,
            height,
            text,
            align=align,
            wrapmode=wrap,
            new_x=x_pos.LMARGIN,
            new_y=y_pos.NEXT,
        )

    top = pdf.get_y()
    pdf.set_font("cjk", size=9.5)
    right = f"{lab['reference']}：{reference}\n{lab['date']}：{format_date(letter_date(msg), msg.language)}"
    pdf.multi_cell(width, 5.5, right, align="R", new_x=x_pos.LMARGIN, new_y=y_pos.NEXT)
    below_right = pdf.get_y()
    pdf.set_y(top)
    if sender:
        pdf.multi_cell(
            width * 0.6,
            5.5,
            f"{lab['from']}：\n" + "\n".join(sender),
            wrapmode=wrap,
            new_x=x_pos.LMARGIN,
            new_y=y_pos.NEXT,
        )
    pdf.set_y(max(pdf.get_y(), below_right) + 8)
    to = [v for v in (msg.recipient_name, msg.recipient) if v]
    block(f"{lab['to']}：\n" + "\n".join(to), 11, 6.5)
    pdf.ln(8)
    block(msg.subject or reference, 15, 8, align="C")
    pdf.ln(4)
    block(msg.body.rstrip("\n"), 12, 7)
    pdf.ln(6)
    sha = hashlib.sha256(msg.body.encode("utf-8")).hexdigest()
    block(f"{reference} · SHA-256 {sha}", 7.5, 4.5)

    pdf.add_page()
    block(f"{lab['envelope']} · {reference}", 10, 6)
    pdf.ln(4)
    block(f"{lab['to']}\n" + "\n".join(to), 14, 8)
    pdf.ln(6)
    if sender:
        block(f"{lab['from']}\n" + "\n".join(sender), 11, 6.5)
        pdf.ln(6)
    block(f"{lab['contents']}：{_contents(msg)}", 11, 6.5)
    return bytes(pdf.output())
