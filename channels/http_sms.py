"""A configurable HTTP SMS gateway, for the many smaller Chinese SMS providers.

Dozens of domestic gateways (短信平台) differ only in field names, encodings and reply codes,
so one adapter described by config reaches all of them instead of one module each:

.. code-block:: toml

    [channels.gw]
    adapter = "http_sms"
    url = "https://sms.example.cn/api/send"
    encoding = "form"                      # json | form | query
    request = { mobile = "{recipient_national}", content = "【商户】{text}", ext = "{idempotency_key}" }
    fields_env = { apikey = "GW_APIKEY" }  # secrets: only ever named, read from the environment
    headers_env = { "X-Api-Key" = "GW_TOKEN" }
    success_path = "code"
    success_values = ["0"]
    id_path = "data.sid"
    bad_recipient_codes = ["1004"]         # 号码无效 / 黑名单
    permanent_codes = ["1001", "1002"]     # 鉴权失败 / 签名未报备
    transient_codes = ["1008"]             # 频率超限

Templates use a small, safe substitution - not Jinja, no expressions, no attribute access:
``{recipient}`` (E.164), ``{recipient_national}`` (national number, e.g. 13800138000 for
+8613800138000, which is what domestic gateways expect), ``{text}`` (the notice text trimmed
to ``max_length`` with the case reference kept), ``{reference}``, ``{idempotency_key}`` and
``{param.NAME}`` (a template parameter of the notice); ``{{`` and ``}}`` are literal braces.
Unknown placeholders fail at config load. A non-string value (``type = 1``) is sent as is in
JSON and as its text in forms and queries. ``max_length`` bounds ``{text}`` only: leave room
for the template's own characters (a 【签名】 prefix). Static ``headers`` and literal
``request`` values under credential-like names (``Authorization``, ``*token*``, ``apikey``,
``password`` …) are refused at config load: those belong in ``headers_env`` / ``fields_env``.
Per-recipient :attr:`HttpSmsChannel.default_limits` (1/min, 5/h, 10/day) apply unless the
channel's table sets ``limits``.

Proof: ``prepare`` encodes the request deterministically (fields in config order, then the
``fields_env`` fields), and the payload the engine stores is exactly the request body (the
query string for ``encoding = "query"``) - except that a value from ``fields_env`` appears as
``***``, because a credential must never reach the evidence log. ``send`` re-encodes the same
fields with the secrets filled in and checks that, with the secrets masked again, the result
is byte-identical to the stored payload. Without ``fields_env`` the bytes sent are the payload.
Secret headers from ``headers_env`` are added at send time and shown as ``***`` in transcripts.

Outcomes:

============================================================  ===================================
gateway answer                                                outcome
============================================================  ===================================
2xx, and the value at ``success_path`` is in                  accepted; ``provider_id`` from
``success_values`` (or no ``success_path`` configured)        ``id_path``
a code (at ``code_path``, default ``success_path``) in        :class:`Permanent`,
``bad_recipient_codes``                                       ``bad_recipient=True``
… in ``permanent_codes``                                      :class:`Permanent`, our config
… in ``transient_codes``                                      :class:`Transient`
2xx with another failure code                                 :class:`Permanent`, our config
                                                              ("unclassified": add it to a table)
2xx whose reply has no value at ``success_path``              :class:`Unknown`
HTTP 429 or 503                                               :class:`Transient`, ``Retry-After``
HTTP 408                                                      :class:`Transient`
other 5xx; timeout or disconnect after the request was sent   :class:`Unknown`
other 4xx                                                     :class:`Permanent`, our config
connect error, connect or pool timeout                        :class:`Transient`
============================================================  ===================================

Codes are compared as text: JSON ``0`` and ``"0"`` both match ``"0"``, ``true`` matches
``"true"``. Code tables are consulted before the HTTP status, because several gateways answer
400 with a precise code.

Not covered (yet): gateways that sign each request (MD5 of key + timestamp, as some do) and
nested JSON request bodies.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, Literal, Self
from urllib.parse import quote, quote_plus, urlencode

import httpx
import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from channels.base import (
    ChannelError,
    Outgoing,
    Permanent,
    Prepared,
    RateLimit,
    Receipt,
    Transient,
    Unknown,
)
from channels.http import (
    describe_exchange,
    failure_from_transport_error,
    fit_text,
    make_client,
    retry_after_seconds,
)

__all__ = ["HttpSmsChannel", "HttpSmsSettings", "Template", "lookup"]

FieldValue = str | int | bool
_MASK = "***"
#: Names that announce a credential: a literal value under such a name belongs in *_env.
_SECRETISH = re.compile(
    r"password|passwd|pwd|secret|token|api[-_]?key|access[-_]?key|authorization|cookie",
    re.IGNORECASE,
)


class Template:
    """A template string compiled once: literal text and ``{placeholder}`` names.

    Substitution is a join over pre-split parts, so a value can never be re-interpreted as a
    template (a body containing ``{param.x}`` is sent as those characters).
    """

    _TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
    _PARAM = re.compile(r"param\.[A-Za-z0-9_\-]+")
    NAMES = frozenset({"recipient", "recipient_national", "text", "reference", "idempotency_key"})

    def __init__(self, source: str) -> None:
        self.source = source
        self.parts: list[tuple[bool, str]] = []  # (is_placeholder, literal text or name)
        pos = 0
        for m in self._TOKEN.finditer(source):
            literal = source[pos : m.start()]
            pos = m.end()
            token = m.group(0)
            if token in ("{{", "}}"):
                literal += token[0]
            elif m.group(1) is None:
                raise ValueError(f"stray {token!r} in template {source!r}; write {token * 2}")
            self._literal(literal)
            name = m.group(1)
            if name is not None:
                if name not in self.NAMES and not self._PARAM.fullmatch(name):
                    raise ValueError(f"unknown placeholder {{{name}}} in template {source!r}")
                self.parts.append((True, name))
        self._literal(source[pos:])

    def _literal(self, text: str) -> None:
        if text:
            self.parts.append((False, text))

    @property
    def params(self) -> set[str]:
        return {name[6:] for is_name, name in self.parts if is_name and name.startswith("param.")}

    def render(self, values: Mapping[str, str], params: Mapping[str, str]) -> str:
        out: list[str] = []
        for is_name, text in self.parts:
            if not is_name:
                out.append(text)
            elif text.startswith("param."):
                out.append(params[text[6:]])
            else:
                out.append(values[text])
        return "".join(out)


class HttpSmsSettings(BaseModel):
    """``[channels.<name>]`` with ``adapter = "http_sms"``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(pattern=r"^https?://[^\s]+$")
    method: Literal["POST", "GET"] = "POST"
    encoding: Literal["json", "form", "query"] = "json"
    charset: Literal["utf-8", "gbk", "gb18030"] = "utf-8"  # some older gateways want GBK
    request: dict[str, FieldValue]
    headers: dict[str, str] = {}
    headers_env: dict[str, str] = {}
    fields_env: dict[str, str] = {}
    success_path: str | None = None
    success_values: list[str] = []
    code_path: str | None = None
    message_path: str | None = None
    id_path: str | None = None
    permanent_codes: list[str] = []
    bad_recipient_codes: list[str] = []
    transient_codes: list[str] = []
    max_length: int = Field(default=500, ge=20)
    timeout: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=20, ge=1)

    @field_validator(
        "success_values", "permanent_codes", "bad_recipient_codes", "transient_codes", mode="before"
    )
    @classmethod
    def _codes_as_text(cls, value: Any) -> Any:
        """TOML writes codes as numbers or strings; we compare them as text."""
        if isinstance(value, list):
            return [_as_code(v) if isinstance(v, int | bool) else v for v in value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.method == "GET" and self.encoding != "query":
            raise ValueError('method = "GET" needs encoding = "query"')
        if self.success_path is not None and not self.success_values:
            raise ValueError("success_values: list the values of success_path that mean sent")
        if not self.request:
            raise ValueError("request: map at least one field to a template")
        for header in self.headers:
            if _SECRETISH.search(header):
                raise ValueError(f"headers.{header}: credentials go in headers_env, never the file")
        for key, value in self.request.items():
            if _SECRETISH.search(key) and not (isinstance(value, str) and "{" in value):
                raise ValueError(f"request.{key}: credentials go in fields_env, never the file")
        if clash := set(self.request) & set(self.fields_env):
            raise ValueError(f"fields_env: {sorted(clash)} already in request")
        tables = [
            set(self.permanent_codes),
            set(self.bad_recipient_codes),
            set(self.transient_codes),
        ]
        if (tables[0] & tables[1]) or (tables[0] & tables[2]) or (tables[1] & tables[2]):
            raise ValueError("a code may appear in only one of the code tables")
        return self


class HttpSmsChannel:
    """One HTTP SMS gateway, described entirely by its settings."""

    adapter: ClassVar[str] = "http_sms"
    kinds: ClassVar[frozenset[str]] = frozenset({"sms"})
    Settings: ClassVar[type[BaseModel]] = HttpSmsSettings
    #: Per recipient. Domestic carriers cap non-marketing SMS to one number at about 10 a day
    #: whatever the gateway, and gateways add minute/hour caps; a notice never needs more.
    #: ``limits`` in the channel's config table overrides these.
    default_limits: ClassVar[tuple[RateLimit, ...]] = (
        RateLimit(1, 60),
        RateLimit(5, 3600),
        RateLimit(10, 86400),
    )

    def __init__(self, name: str, settings: Mapping[str, Any], env: Mapping[str, str]) -> None:
        self.name = name
        self.settings = s = HttpSmsSettings.model_validate(dict(settings))
        try:
            self._templates = {
                key: Template(value) if isinstance(value, str) else value
                for key, value in s.request.items()
            }
        except ValueError as exc:
            raise ValueError(f"request: {exc}") from None
        self._secret_fields = {
            key: _env(env, var, "fields_env", key) for key, var in s.fields_env.items()
        }
        self._secret_headers = {
            key: _env(env, var, "headers_env", key) for key, var in s.headers_env.items()
        }
        # Scrub secrets from error text also in the forms a URL or form body would carry them.
        self._secrets = tuple(
            form
            for value in (*self._secret_fields.values(), *self._secret_headers.values())
            for form in (value, quote_plus(value), quote(value, safe=""))
        )
        self._codes: dict[str, Literal["bad_recipient", "permanent", "transient"]] = {
            **{c: "permanent" for c in s.permanent_codes},
            **{c: "bad_recipient" for c in s.bad_recipient_codes},
            **{c: "transient" for c in s.transient_codes},
        }
        self._url = httpx.URL(s.url)
        self._client = make_client(timeout=s.timeout, max_connections=s.max_connections)
        if s.encoding == "json":
            self._content_type: str | None = f"application/json; charset={s.charset}"
        elif s.encoding == "form":
            self._content_type = f"application/x-www-form-urlencoded; charset={s.charset}"
        else:
            self._content_type = None

    # -- prepare ------------------------------------------------------------------------------

    def prepare(self, msg: Outgoing) -> Prepared:
        """Render the templates and encode the request; secrets appear as ``***``."""
        if msg.kind not in self.kinds:
            raise Permanent(
                f"{self.adapter} cannot send {msg.kind!r} messages", bad_recipient=False
            )
        values = {
            "recipient": msg.recipient,
            "recipient_national": _national(msg.recipient),
            "text": fit_text(msg.body, msg.reference, self.settings.max_length),
            "reference": msg.reference,
            "idempotency_key": msg.idempotency_key,
        }
        fields: list[tuple[str, FieldValue]] = []
        for key, template in self._templates.items():
            if isinstance(template, Template):
                missing = template.params - set(msg.params)
                if missing:
                    raise Permanent(
                        f"request.{key}: the notice has no parameter {sorted(missing)[0]!r}",
                        bad_recipient=False,
                    )
                fields.append((key, template.render(values, msg.params)))
            else:
                fields.append((key, template))
        payload = self._encode(fields, {k: _MASK for k in self._secret_fields})
        return Prepared(
            msg,
            payload,
            "application/json"
            if self.settings.encoding == "json"
            else "application/x-www-form-urlencoded",
            msg.idempotency_key,
            {"fields": [[k, v] for k, v in fields], "encoding": self.settings.encoding},
        )

    def _encode(
        self, fields: Sequence[tuple[str, FieldValue]], secrets: Mapping[str, str]
    ) -> bytes:
        """Deterministic encoding: template fields in config order, then secret fields."""
        s = self.settings
        items: list[tuple[str, FieldValue]] = [*fields, *secrets.items()]
        try:
            if s.encoding == "json":
                text = json.dumps(dict(items), ensure_ascii=False, separators=(",", ":"))
                return text.encode(s.charset)
            pairs = [(k, v if isinstance(v, str) else _as_code(v)) for k, v in items]
            return urlencode(pairs, encoding=s.charset).encode("ascii")
        except UnicodeEncodeError as exc:
            raise Permanent(
                f"the text has characters {s.charset} cannot encode ({exc.reason})",
                bad_recipient=False,
                code="charset",
            ) from None

    # -- send ---------------------------------------------------------------------------------

    async def send(self, prepared: Prepared) -> Receipt:
        s = self.settings
        content = prepared.payload
        if self._secret_fields:
            fields = [(str(k), v) for k, v in prepared.meta["fields"]]
            if self._encode(fields, {k: _MASK for k in self._secret_fields}) != prepared.payload:
                raise Permanent(
                    "prepared payload does not match its fields; refusing to send unrecorded bytes",
                    bad_recipient=False,
                )
            content = self._encode(fields, self._secret_fields)
        headers = dict(s.headers)
        headers.update(self._secret_headers)
        url: httpx.URL | str = self._url
        shown_url = s.url
        if s.encoding == "query":
            joiner = "&" if "?" in s.url else "?"
            url = s.url + joiner + content.decode("ascii")
            shown_url = s.url + joiner + prepared.payload.decode("ascii")
            body = b""
        else:
            body = content
            if self._content_type:
                headers["Content-Type"] = self._content_type
        started = time.monotonic()
        request = self._client.build_request(s.method, url, content=body or None, headers=headers)
        try:
            response = await self._client.send(request)
        except httpx.TransportError as exc:
            transcript = describe_exchange(
                request, None, started=started, url=shown_url, secret_headers=self._secret_headers
            )
            raise failure_from_transport_error(
                exc, what=self.name, transcript=transcript, secrets=self._secrets
            ) from exc
        transcript = describe_exchange(
            request, response, started=started, url=shown_url, secret_headers=self._secret_headers
        )
        return self._receipt(response, transcript)

    def _receipt(self, response: httpx.Response, transcript: dict[str, Any]) -> Receipt:
        s = self.settings
        status = response.status_code
        reply = _json(response.content)
        code_path = s.code_path or s.success_path
        raw_code = lookup(reply, code_path)
        code = None if raw_code is _MISSING else _as_code(raw_code)
        message = lookup(reply, s.message_path) if s.message_path else _MISSING
        detail = f"{self.name}: HTTP {status}" + (f" code {code}" if code is not None else "")
        if isinstance(message, str) and message:
            detail += f": {message}"
        detail = detail.replace("\n", " ")[:500]
        common: dict[str, Any] = {"response": response.content, "transcript": transcript}
        if 200 <= status < 300:
            if s.success_path is not None:
                value = lookup(reply, s.success_path)
                if value is _MISSING:
                    raise Unknown(
                        f"{self.name}: HTTP {status} without {s.success_path!r} in the reply",
                        code=str(status),
                        **common,
                    )
                if _as_code(value) not in s.success_values:
                    raise self._by_code(code, detail, response, common) or Permanent(
                        f"{detail} (unclassified: add the code to a table in the channel settings)",
                        bad_recipient=False,
                        code=code,
                        **common,
                    )
            provider_id = lookup(reply, s.id_path) if s.id_path else _MISSING
            return Receipt(
                accepted=True,
                provider_id=None if provider_id in (_MISSING, None) else _as_code(provider_id),
                response=response.content,
                response_type=response.headers.get("Content-Type", "application/octet-stream"),
                transcript=transcript,
            )
        if (by_code := self._by_code(code, detail, response, common)) is not None:
            raise by_code
        if status in (429, 503):
            hint = retry_after_seconds(response.headers.get("Retry-After"))
            raise Transient(detail, retry_after=hint, code=str(status), **common)
        if status == 408:
            raise Transient(detail, code="408", **common)
        if status >= 500:
            raise Unknown(detail, code=str(status), **common)
        raise Permanent(detail, bad_recipient=False, code=code or str(status), **common)

    def _by_code(
        self, code: str | None, detail: str, response: httpx.Response, common: dict[str, Any]
    ) -> ChannelError | None:
        kind = self._codes.get(code) if code is not None else None
        if kind == "bad_recipient":
            return Permanent(detail, bad_recipient=True, code=code, **common)
        if kind == "permanent":
            return Permanent(detail, bad_recipient=False, code=code, **common)
        if kind == "transient":
            hint = retry_after_seconds(response.headers.get("Retry-After"))
            return Transient(detail, retry_after=hint, code=code, **common)
        return None

    async def aclose(self) -> None:
        await self._client.aclose()


# -- pure helpers -------------------------------------------------------------------------------


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def lookup(document: Any, path: str | None) -> Any:
    """Follow a dotted path (``"data.0.sid"``) through dicts and lists; ``_MISSING`` if absent."""
    if path is None or document is _MISSING:
        return _MISSING
    node = document
    for step in path.split("."):
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        else:
            return _MISSING
    return node


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:  # includes UnicodeDecodeError
        return _MISSING


def _as_code(value: Any) -> str:
    """A reply value as comparable text: JSON ``true`` -> ``"true"``, ``0`` -> ``"0"``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


#: ITU country calling codes. They form a prefix code (none is the start of another), so the
#: country code of an E.164 number is the one code its digits start with.
_COUNTRY_CODES: Final = frozenset(str(c) for c in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
_E164: Final = re.compile(r"\+[1-9]\d{6,14}")


def _national(recipient: str) -> str:
    """The national significant number (13800138000) of an E.164 number, else as given.

    Contact numbers are stored in E.164, so splitting off the country code is enough; a full
    ``phonenumbers.parse`` cost ~45 us per SMS, the largest part of preparing one. Unlike its
    ``national_number`` integer, this keeps a significant leading zero (Italy's 06...)."""
    if _E164.fullmatch(recipient):
        for size in (1, 2, 3):
            if recipient[1 : 1 + size] in _COUNTRY_CODES:
                return recipient[1 + size :]
    try:
        return str(phonenumbers.parse(recipient).national_number)
    except phonenumbers.NumberParseException:
        return recipient


def _env(env: Mapping[str, str], var: str, setting: str, key: str) -> str:
    value = env.get(var)
    if not value:
        raise ValueError(f"{setting}.{key}: environment variable {var} is not set")
    return value
