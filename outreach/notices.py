"""Rendering formal notices: text for the wire, an autoescaped HTML letter, SMS parameters.

Every value that came from a user or a registry reaches HTML only through Jinja's autoescape;
the plain-text body is not markup, so it is rendered without escaping (an "&" in a company
name must stay an "&" in an e-mail). Subjects are forced onto one line so no value can inject
an e-mail header.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

GOAL_TITLES = {
    "zh-CN": {
        "cancel_terminal": "终端注销申请",
        "refund_deposit": "押金退还申请",
        "reinstate_terminal": "终端恢复申请",
    },
    "en": {
        "cancel_terminal": "Request to cancel POS terminals",
        "refund_deposit": "Request to refund the terminal deposit",
        "reinstate_terminal": "Request to reinstate POS terminals",
    },
}

VIA_NAMES = {
    "zh-CN": {
        "email": "电子邮件",
        "sms": "短信",
        "webhook": "网络接口",
        "postal": "邮寄信函",
        "phone": "电话",
    },
    "en": {
        "email": "e-mail",
        "sms": "SMS",
        "webhook": "webhook",
        "postal": "letter",
        "phone": "phone",
    },
}


@dataclass(frozen=True, slots=True)
class LegalBasis:
    """A rule a notice may cite. ``source`` and ``as_of`` say where the text was checked."""

    key: str
    zh: str
    en: str
    source: str
    as_of: str


# From shared/reference/registries.md §5 (researched 2026-11, sources named there). Only
# provisions whose text was found in public material are cited; nothing is guessed.
LEGAL_BASIS: tuple[LegalBasis, ...] = (
    LegalBasis(
        "card_acquiring_2013_art7",
        "《银行卡收单业务管理办法》（中国人民银行公告〔2013〕第9号）第七条：收单机构承担特约商户收单业务管理责任。",
        "Measures for the Administration of Bank Card Acquiring (PBOC Announcement [2013] No. 9), "
        "Art. 7: the acquirer bears the management responsibility for its merchants' acquiring business.",
        "text reprinted at tmdps.cn/a2/201905122/90b03fc8dc7f2a75.html (registries.md §5)",
        "2026-11",
    ),
    LegalBasis(
        "consumer_protection_2020",
        "《中国人民银行金融消费者权益保护实施办法》（中国人民银行令〔2020〕第5号）第八条、第十六条：金融机构应当建立投诉处理制度，并披露解除合同的方式及投诉途径。",
        "PBOC Measures for the Protection of Financial Consumers' Rights (PBOC Order [2020] No. 5), "
        "Arts. 8 and 16: institutions must run a complaint-handling system and disclose how a "
        "contract is terminated and how to complain.",
        "fgw.sh.gov.cn/ys-hqjrfw-1.3.3.2/index.html (official; registries.md §5)",
        "2026-11",
    ),
    LegalBasis(
        "non_bank_payment_regulation_2023",
        "《非银行支付机构监督管理条例》（国务院令第768号，2024年5月1日起施行）：支付机构应当履行投诉处理主体责任。",
        "Regulations on the Supervision of Non-bank Payment Institutions (State Council Decree "
        "No. 768, in force 2024-05-01): payment institutions bear primary responsibility for "
        "handling complaints.",
        "official summary reprinted at ybc58.com/news/595a598632.html (registries.md §5)",
        "2026-11",
    ),
)

BASIS_FOR_TEMPLATE = {
    "cancellation_request": ("card_acquiring_2013_art7",),
    "reminder": (),
    "complaint_acquirer": (
        "card_acquiring_2013_art7",
        "consumer_protection_2020",
        "non_bank_payment_regulation_2023",
    ),
    "complaint_regulator": (
        "card_acquiring_2013_art7",
        "consumer_protection_2020",
        "non_bank_payment_regulation_2023",
    ),
}


@dataclass(frozen=True, slots=True)
class Rendered:
    template: str
    language: str
    subject: str
    body: str
    html: str
    sms_params: dict[str, str]
    sha256: str  # of the UTF-8 body: what the notice *says*, independent of channel framing


@dataclass(frozen=True, slots=True)
class NoticeContext:
    reference: str
    goal: str
    language: str
    today: date
    deadline: date
    sender: Mapping[str, Any]
    merchant: Mapping[str, Any]
    party: Mapping[str, Any]
    terminals: Sequence[Mapping[str, Any]]
    acquirers: Sequence[Mapping[str, Any]] = ()
    agents: Sequence[str] = ()
    previous: Sequence[Mapping[str, str]] = ()
    statement: str | None = None
    deposit: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def _env(autoescape: bool) -> Environment:
    return Environment(
        loader=PackageLoader("outreach", "templates"),
        autoescape=select_autoescape(
            ["html", "htm"], default=autoescape, default_for_string=autoescape
        ),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=False,
    )


_TEXT = _env(False)
_HTML = _env(True)


def render(template: str, ctx: NoticeContext) -> Rendered:
    lang = ctx.language
    basis = [
        b.zh if lang == "zh-CN" else b.en
        for b in LEGAL_BASIS
        if b.key in BASIS_FOR_TEMPLATE.get(template, ())
    ]
    variables: dict[str, Any] = {
        "reference": ctx.reference,
        "goal": ctx.goal,
        "goal_title": GOAL_TITLES[lang][ctx.goal],
        "today": ctx.today.isoformat(),
        "deadline": ctx.deadline.isoformat(),
        "sender": ctx.sender,
        "merchant": ctx.merchant,
        "party": ctx.party,
        "terminals": ctx.terminals,
        "acquirers": ctx.acquirers,
        "agents": list(ctx.agents),
        "previous": list(ctx.previous),
        "first_sent": ctx.previous[0]["date"] if ctx.previous else None,
        "statement": ctx.statement,
        "deposit": ctx.deposit,
        "legal_basis": basis,
        **ctx.extra,
    }
    module = _TEXT.get_template(f"{template}.{lang}.j2").make_module(variables)
    body = _tidy(str(module))
    subject = " ".join(str(getattr(module, "subject", ctx.reference)).split())
    sha = hashlib.sha256(body.encode("utf-8")).hexdigest()
    paragraphs = [p for p in body.split("\n\n") if p.strip()]
    html = _HTML.get_template("letter.html.j2").render(
        language=lang,
        subject=subject,
        paragraphs=paragraphs,
        reference=ctx.reference,
        body_sha256=sha,
    )
    terminals = [str(t["terminal_no"]) for t in ctx.terminals]
    sms_params = {
        "reference": ctx.reference,
        "merchant": str(ctx.merchant["name"])[:20],
        "merchant_no": str(ctx.merchant["merchant_no"]),
        "terminal": terminals[0] + (f"等{len(terminals)}台" if len(terminals) > 1 else ""),
        "deadline": ctx.deadline.isoformat(),
        "goal": GOAL_TITLES[lang][ctx.goal],
    }
    return Rendered(template, lang, subject, body, html, sms_params, sha)


def _tidy(text: str) -> str:
    """Collapse runs of blank lines left by optional blocks; end with exactly one newline."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    out: list[str] = []
    for line in lines:
        if not line and out and not out[-1]:
            continue
        out.append(line)
    return "\n".join(out) + "\n"
