"""Phone calls as tasks for a person: the ``phone`` kind, sent by someone with a telephone.

Many agents can only be reached by phone, and a call leaves no trace by itself. So the
dispatcher does not dial anything: :meth:`ManualChannel.prepare` writes a call script (who to
call, the number, what to say, the case reference, what to note down) whose bytes are hashed
and chained like any other payload, and :meth:`ManualChannel.send` drops it into
``dir/<reference>/`` and answers ``pending``. The call task stays pending until the user logs
what happened with ``outreach manual log CASE --party P --via phone --outcome …`` (see
:mod:`outreach.manual`), with any recording or photo hashed into the evidence.

The script is deterministic (same attempt, same bytes) and is plain UTF-8 text, so nothing in
it is markup to escape.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import phonenumbers
from pydantic import BaseModel, ConfigDict

from channels.base import Outgoing, Permanent, Prepared, Receipt
from channels.letter import format_date, letter_date, write_numbered

RULE = "=" * 60


class ManualSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    dir: str = "var/tasks"  # relative paths are resolved against the config file's folder
    caller_name: str | None = None  # who makes the calls; default: the engine's sender


def display_number(e164: str) -> str:
    """``+8613900139000`` -> ``139 0013 9000 (+8613900139000)``: dialable as printed in China."""
    try:
        number = phonenumbers.parse(e164.split(";", 1)[0], None)
    except phonenumbers.NumberParseException:
        return e164
    national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    ext = f" 转 {e164.split('ext=', 1)[1]}" if ";ext=" in e164 else ""
    return f"{national}{ext} ({e164})"


def _zh(msg: Outgoing, caller: str) -> list[str]:
    p = msg.params
    merchant = p.get("merchant", "")
    merchant_no = p.get("merchant_no", "")
    goal = p.get("goal", "")
    terminal = p.get("terminal", "")
    deadline = p.get("deadline", "")
    ident = "".join(
        [
            f"{merchant}" if merchant else "本商户",
            f"（商户编号 {merchant_no}）" if merchant_no else "",
        ]
    )
    lines = [
        f"电话任务 · 案件编号 {msg.reference}",
        RULE,
        f"拨打对象：{msg.recipient_name or '（未知）'}",
        f"电话号码：{display_number(msg.recipient)}",
        f"来电人：{caller or '（本人）'}",
        f"事由：{msg.subject or msg.reference}",
        f"任务日期：{format_date(letter_date(msg), msg.language)}",
        "",
        "通话要点（请依次说明）：",
        f"1. 您好，我是{ident}的{caller or '负责人'}。",
        f"2. 本商户已书面提出：{goal or '见下方通知全文'}"
        + (f"（终端 {terminal}）" if terminal else "")
        + f"。案件编号 {msg.reference}，请贵方记录。",
        (f"3. 请于 {deadline} 前书面答复" if deadline else "3. 请尽快书面答复")
        + f"，答复时注明案件编号 {msg.reference}。",
        "4. 请问您的姓名、职务或工号？贵方能否办理？预计何时办理完毕？",
        "",
        "请记录：",
        "- 通话的日期和时间，接听人的姓名、职务或工号",
        "- 对方的答复：已办理 / 承诺办理（何时）/ 拒绝（理由）/ 无人接听",
        "- 如有通话录音或截图，请保存文件，登记时一并提交",
        "",
        "通话后登记（--outcome 取 reached 已接通 / promised 承诺办理 / refused 拒绝 / no-answer 无人接听）：",
        f"  outreach manual log {msg.reference} --party <参与方> --via phone "
        f'--number {msg.recipient} --outcome reached --note "接听人、答复要点" '
        "[--evidence 录音文件]",
        "",
        "通知全文（可宣读）：",
        "-" * 60,
    ]
    return lines


def _en(msg: Outgoing, caller: str) -> list[str]:
    p = msg.params
    merchant = p.get("merchant", "")
    merchant_no = p.get("merchant_no", "")
    goal = p.get("goal", "")
    terminal = p.get("terminal", "")
    deadline = p.get("deadline", "")
    ident = merchant + (f" (merchant no. {merchant_no})" if merchant_no else "")
    return [
        f"Call task · case {msg.reference}",
        RULE,
        f"Call:      {msg.recipient_name or '(unknown)'}",
        f"Number:    {display_number(msg.recipient)}",
        f"Caller:    {caller or '(you)'}",
        f"Subject:   {msg.subject or msg.reference}",
        f"Task date: {format_date(letter_date(msg), msg.language)}",
        "",
        "What to say, in order:",
        f"1. Hello, this is {caller or 'the owner'} for {ident or 'the merchant'}.",
        f"2. We have asked in writing: {goal or 'see the notice below'}"
        + (f" (terminal {terminal})" if terminal else "")
        + f". Our case reference is {msg.reference}; please note it.",
        (
            f"3. Please answer in writing by {deadline}"
            if deadline
            else "3. Please answer in writing"
        )
        + f", quoting {msg.reference}.",
        "4. May I have your name and position? Will you do it, and by when?",
        "",
        "Note down:",
        "- the date and time of the call; who answered (name, position or staff number)",
        "- their answer: done / promised (by when) / refused (why) / no answer",
        "- keep any recording or screenshot and attach it when you log the call",
        "",
        "After the call (--outcome reached | promised | refused | no-answer):",
        f"  outreach manual log {msg.reference} --party <party> --via phone "
        f'--number {msg.recipient} --outcome reached --note "who answered, what they said" '
        "[--evidence RECORDING]",
        "",
        "The notice in full (to read out if useful):",
        "-" * 60,
    ]


def call_script(msg: Outgoing, caller: str) -> str:
    lines = _en(msg, caller) if msg.language == "en" else _zh(msg, caller)
    return "\n".join(lines) + "\n" + msg.body.rstrip("\n") + "\n"


class ManualChannel:
    adapter: ClassVar[str] = "manual"
    kinds: ClassVar[frozenset[str]] = frozenset({"phone"})
    Settings: ClassVar[type[BaseModel]] = ManualSettings

    def __init__(self, name: str, settings: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.name = name
        self.settings = ManualSettings.model_validate(dict(settings))
        self.dir = Path(self.settings.dir)

    def prepare(self, msg: Outgoing) -> Prepared:
        if msg.kind != "phone":
            raise Permanent(f"the manual channel cannot handle {msg.kind!r}", bad_recipient=False)
        caller = self.settings.caller_name or msg.sender_name or ""
        script = call_script(msg, caller)
        return Prepared(
            msg,
            script.encode("utf-8"),
            "text/plain; charset=utf-8",
            msg.idempotency_key,
            {"ext": "txt"},
        )

    async def send(self, prepared: Prepared) -> Receipt:
        msg = prepared.outgoing
        path, copy = write_numbered(
            self.dir / msg.reference, f"call-{msg.idempotency_key}", "txt", prepared.payload
        )
        reply = f"written {path.name}; call {msg.recipient}, then log the outcome"
        return Receipt(
            accepted=False,
            provider_id=path.name,
            response=reply.encode(),
            transcript={"path": str(path), "copy": copy, "waiting_for": "call outcome"},
            pending=True,
        )

    async def aclose(self) -> None:
        return None
