"""The company registry (国家企业信用信息公示系统, GSXT) as a manual lookup: never fetched.

Why a source that fetches nothing: every enterprise's annual report publishes 企业联系电话,
企业电子邮箱 and 企业通信地址 (《企业信息公示暂行条例》), which for an agent that stopped answering
is often the only channel left that the company itself declared to the state. But GSXT is
built to stop scripts: a JavaScript challenge (HTTP 521, 加速乐), a slider CAPTCHA on every
search, real-name login since 2021-11-26, and no answer abroad (registries.md §3.2). Working
around that would be scraping a system that says no, so this adapter hands a human the exact
page, the exact name to search and the exact fields to copy, and the engine records the task
once and shows it until someone answers it with ``outreach contacts add``.

The task is keyed by the report year, so it comes back once a year (a new report is due every
1 January - 30 June) and never more often.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import ClassVar
from zoneinfo import ZoneInfo

from sources.base import Fetcher, Lookup, NoticeMaker, PartyQuery

__all__ = ["GSXT_URL", "WANTS", "CompanyRegistrySource", "report_year"]

#: The national portal; its home page holds the search box (registries.md §3.1).
GSXT_URL = "https://www.gsxt.gov.cn/index.html"

#: Contact kinds that answer the task, and the annual-report field each is copied from
#: (the 企业基本信息 block; registries.md §3.1).
WANTS: Mapping[str, str] = {
    "phone": "企业联系电话",
    "email": "企业电子邮箱",
    "postal": "企业通信地址",
}

# GSXT lists enterprises. The PBOC is a state organ and PCAC a social organisation (社会团体):
# neither files an enterprise annual report.
_ENTERPRISE_ROLES = frozenset({"agent", "acquirer"})
_HINT_KEYS = frozenset({"search_url", "name"})
_CST = ZoneInfo("Asia/Shanghai")


def report_year(today: date) -> int:
    """The year of the annual report a lookup on ``today`` should copy.

    Reports for year Y are filed between 1 January and 30 June of Y+1, so from July the
    previous year's report must be there; before July it may still be missing, and the advice
    says to take the one before.
    """
    return today.year - 1


class CompanyRegistrySource(NoticeMaker):
    """Raises one manual lookup task per party and report year; never touches the network.

    Optional ``[parties.<key>.hints.company_registry]``: ``search_url`` (another page to open,
    e.g. a provincial portal or a licensed data service you use) and ``name`` (the exact
    registered name to search, when it differs from ``legal_name``).
    """

    name: ClassVar[str] = "company_registry"

    def __init__(self, today: Callable[[], date] | None = None) -> None:
        self._today = today or (lambda: datetime.now(UTC).astimezone(_CST).date())

    async def lookup(self, party: PartyQuery, fetch: Fetcher) -> Lookup:
        try:
            hints = _read_hints(party.hints.get(self.name))
        except ValueError as exc:
            return Lookup(notices=(self._notice(party, "error", str(exc)),))
        if party.role not in _ENTERPRISE_ROLES:
            return Lookup(
                notices=(
                    self._notice(
                        party,
                        "error",
                        f"{party.name} is configured as {party.role}, which files no enterprise "
                        "annual report: remove company_registry from its sources",
                    ),
                )
            )
        year = report_year(self._today())
        search_name = hints.get("name") or party.legal_name or party.name
        url = hints.get("search_url") or GSXT_URL
        fields = tuple(WANTS.values()) + (() if party.uscc else ("统一社会信用代码",))
        return Lookup(
            notices=(
                self._notice(
                    party,
                    "manual_task",
                    f"copy the contacts of {search_name}'s {year} annual report from the company "
                    "registry (GSXT blocks automated lookups)",
                    url=url,
                    advice=_advice(party, search_name, url, year),
                    fields=fields,
                    data={
                        "task": f"gsxt-annual-report-{year}",
                        "search": search_name,
                        "uscc": party.uscc,
                        "report_year": year,
                        "wants": dict(WANTS),
                    },
                ),
            )
        )


def _read_hints(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError("hints.company_registry must be a table")
    unknown = set(raw) - _HINT_KEYS
    if unknown:
        raise ValueError(f"hints.company_registry: unknown keys {sorted(unknown)}")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"hints.company_registry.{key} must be a non-empty string")
        if key == "search_url" and not value.startswith(("https://", "http://")):
            raise ValueError("hints.company_registry.search_url must be an http(s) URL")
        out[str(key)] = value.strip()
    return out


def _advice(party: PartyQuery, search_name: str, url: str, year: int) -> str:
    search_for = f"{party.uscc} (统一社会信用代码)" if party.uscc else f"“{search_name}”"
    source = f"annual report {year}"
    add = (
        f'outreach contacts add {party.key} --kind {{kind}} --value "…" --label {{label}} '
        f'--source "{source}" --url "<the report page>"'
    )
    lines = [
        f"1. Open {url} in a browser (the site asks for a real-name login and a slider CAPTCHA).",
        f"2. Search for {search_for} and open the company's page"
        + ("" if party.uscc else "; check that the registered name matches exactly")
        + ".",
        f"3. Open 企业年报 → {year}年度报告 (published by 30 June {year + 1}; if it is not "
        f"there yet, take {year - 1}) and find the 企业基本信息 block.",
        "4. Copy each field that is filled in:",
    ]
    lines += [
        f"     {label}: " + add.format(kind=kind, label=label) for kind, label in WANTS.items()
    ]
    if not party.uscc:
        lines.append(
            f'   and put its 统一社会信用代码 in [parties.{party.key}] uscc = "…" in the config.'
        )
    lines.append(
        "5. A field that is empty or hidden (个体工商户 may hide them): close the task with "
        f'outreach contacts tasks close <task number> --reason "no e-mail in the {year} report".'
    )
    return "\n".join(lines)
