"""Registry list parsing: the pboc_licences adapter's parser against BeautifulSoup, same pages, same run.

Why: discovery walks every page of the PBOC lists for every acquirer it checks, and the
project's baseline (reference/performance.md, "HTML parsing") puts BeautifulSoup at ~6-8 pages/s
on a 300-row registry table - slow enough to matter when a run checks dozens of parties. The
target is >= 20x BeautifulSoup (bs4 + lxml) on the same page, measured side by side because the
machines are shared and noisy.

The page is generated: a 300-row x 9-column ``ul.txtlist`` list (~200 KB of Chinese text) in
the layout of the reconstructed fixtures (tests/fixtures/pboc/README.md), with the nine spans a
richer registry row could carry. Both parsers extract the same thing - licence number, name,
absolute detail URL and date of every row, plus the paging numbers and the next-page link -
and the script checks that they agree before timing anything.

    .venv/bin/python bench/parse_registry.py            # ~10 s
    .venv/bin/python bench/parse_registry.py --smoke    # ~1 s, for CI (numbers are rough)
"""

from __future__ import annotations

import argparse
import gc
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bs4 import BeautifulSoup

from sources.pboc_licences import LICENSED_LIST_URL, parse_list_page

ROWS = 300
SECTION = "/zhengwugongkai/4081330/4081344/4081407/4081702/4081749/4081783/"
_NAMES = (
    "银联商务股份有限公司",
    "通联支付网络服务股份有限公司",
    "快钱支付清算信息有限公司",
    "上海汇付支付有限公司",
    "上海盛付通电子支付服务有限公司",
    "拉卡拉支付股份有限公司",
    "北京海科融通支付服务有限公司",
    "杉德支付网络服务发展有限公司",
)
_ADDRESSES = (
    "中国（上海）自由贸易试验区博霞路50号504室",
    "北京市海淀区马甸东路17号6层706",
    "上海市张江高科技园区郭守敬路498号浦东软件园14幢22301-216座",
    "合肥市包河区工业区长白山路16号长润大厦",
)
_TYPES = (
    "互联网支付、移动电话支付、银行卡收单",
    "预付卡发行与受理（仅限于线上实名支付账户充值）、银行卡收单",
    "银行卡收单（仅限于广东省内）",
)


def make_page(rows: int = ROWS) -> str:
    """A list page of ``rows`` rows x 9 spans, deterministic, ~200 KB for 300 rows."""
    out = [
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Type" '
        'content="text/html; charset=utf-8" /><title>已获许可机构（支付机构）</title></head><body>'
        '<div class="location">当前位置：首页 &gt; 政务公开 &gt; 支付业务许可信息公示 &gt; '
        '已获许可机构（支付机构）</div><div id="9398ddc068334e17b5553540fa482a66">'
        '<div class="portlet"><ul class="txtlist"><li class="title">'
        '<span class="xkzh">许可证编号</span><span class="jgmc">机构名称</span>'
        '<span class="fddbr">法定代表人（负责人）</span><span class="zs">住所（营业场所）</span>'
        '<span class="ywlx">业务类型</span><span class="fgfw">业务覆盖范围</span>'
        '<span class="xkrq">首次许可日期</span><span class="yxq">有效期至</span>'
        '<span class="date">发布日期</span></li>'
    ]
    for i in range(rows):
        name = f"{_NAMES[i % len(_NAMES)][:-4]}第{i}分公司有限公司"
        licence = f"Z20{i:05d}{i % 45 + 11:02d}0000{i % 10}"[:14]
        out.append(
            f'<li><span class="xkzh">{licence}</span><span class="jgmc">'
            f'<a href="{SECTION}{4149992 + 3 * i}/index.html" target="_blank" '
            f'title="{name}">{name}</a></span>'
            f'<span class="fddbr">法定代表人{i}号</span>'
            f'<span class="zs">{_ADDRESSES[i % len(_ADDRESSES)]}（第{i}号楼）</span>'
            f'<span class="ywlx">{_TYPES[i % len(_TYPES)]}</span>'
            f'<span class="fgfw">全国</span>'
            f'<span class="xkrq">2011年{i % 12 + 1}月{i % 28 + 1}日</span>'
            f'<span class="yxq">2026年{i % 12 + 1}月{i % 28 + 1}日</span>'
            f'<span class="date">2022年11月{i % 28 + 1}日</span></li>'
        )
    out.append(
        '</ul></div><div class="pagination"><span><div>'
        f'<a href="{SECTION}index.html">首页</a><a>上一页</a>'
        f'<a href="{SECTION}9398ddc0-2.html">下一页</a>'
        f'<a href="{SECTION}9398ddc0-11.html">尾页</a>'
        f'<span style="padding:0 15px;">共:<b>{rows * 11}</b>条 当前页:<b>1</b>/<b>11</b></span>'
        "</div></span></div></div></body></html>"
    )
    return "".join(out)


Extracted = tuple[list[tuple[str, str, str, str]], int | None, int | None, str | None]


def extract_adapter(html: str) -> Extracted:
    page = parse_list_page(html, base_url=LICENSED_LIST_URL)
    rows = [(r.licence_no, r.name, r.detail_url, r.date) for r in page.rows]
    return rows, page.total_rows, page.total_pages, page.next_url


_PAGING = re.compile(r"共[:：](\d+)条当前页[:：](\d+)/(\d+)")


def extract_bs4(html: str) -> Extracted:
    """The same extraction the way the public scrapers do it (civl/gitvenv), with bs4 + lxml."""
    soup = BeautifulSoup(html, "lxml")
    ul = soup.find("ul", class_="txtlist")
    if ul is None:
        raise ValueError("no ul.txtlist")
    rows = []
    for li in ul.find_all("li", recursive=False):
        jgmc = li.find("span", class_="jgmc")
        a = jgmc.find("a") if jgmc else None
        if a is None or not a.get("href"):
            continue
        xkzh = li.find("span", class_="xkzh")
        date = li.find("span", class_="date")
        name = " ".join(str(a.get("title") or "").split()) or " ".join(a.get_text().split())
        rows.append(
            (
                "".join(xkzh.get_text().split()).upper() if xkzh else "",
                name,
                urljoin(LICENSED_LIST_URL, str(a["href"]).strip()),
                " ".join(date.get_text().split()) if date else "",
            )
        )
    span = soup.find("span", style="padding:0 15px;")
    m = _PAGING.search("".join(span.get_text().split())) if span else None
    nxt = soup.find("a", string="下一页")
    href = nxt.get("href") if nxt else None
    next_url = urljoin(LICENSED_LIST_URL, str(href)) if href else None
    return (
        rows,
        int(m.group(1)) if m else None,
        int(m.group(3)) if m else None,
        next_url,
    )


def measure(
    fns: dict[str, Callable[[str], Extracted]], html: str, seconds: float
) -> dict[str, tuple[float, float]]:
    """Median (CPU, wall) seconds per page for each parser, interleaved round by round.

    Interleaving puts both parsers under the same background load (the machines are shared);
    a collection before each turn keeps one parser's garbage out of the other's time.
    CPU time (``process_time``) is what a page costs us, wall time what a user would see.
    Each round runs every parser for at least ~20 ms so that the clocks' resolution does not
    matter; the run lasts until ``seconds`` have passed and at least 3 rounds were done.
    """
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < 3 or time.perf_counter() - start < seconds:
        for name, fn in fns.items():
            gc.collect()  # the other parser's garbage is not this one's cost
            n = 0
            cpu0, wall0 = time.process_time(), time.perf_counter()
            while True:
                fn(html)
                n += 1
                if time.perf_counter() - wall0 >= 0.02:
                    break
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            samples[name].append((cpu / n, wall / n))
        rounds += 1
    return {
        name: (
            statistics.median(c for c, _ in rows),
            statistics.median(w for _, w in rows),
        )
        for name, rows in samples.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="short run for CI (~1 s)")
    parser.add_argument("--seconds", type=float, default=None, help="length of the run")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else (0.5 if args.smoke else 10.0)

    html = make_page()
    ours, theirs = extract_adapter(html), extract_bs4(html)
    if ours != theirs:
        print("parsers disagree on the page; not timing", file=sys.stderr)
        return 1
    if len(ours[0]) != ROWS:
        print(f"expected {ROWS} rows, got {len(ours[0])}", file=sys.stderr)
        return 1

    size_kb = len(html.encode()) / 1024
    print(f"page: {ROWS} rows x 9 columns, {size_kb:.0f} KB UTF-8; interleaved for {seconds:g} s")
    result = measure(
        {"adapter": extract_adapter, "bs4": extract_bs4},
        html,
        seconds,
    )
    (a_cpu, a_wall), (b_cpu, b_wall) = result["adapter"], result["bs4"]
    print("                                                  CPU pages/s   wall pages/s")
    print(f"pboc_licences.parse_list_page (selectolax/lexbor) {1 / a_cpu:11.1f} {1 / a_wall:14.1f}")
    print(f"BeautifulSoup (lxml), same extraction             {1 / b_cpu:11.1f} {1 / b_wall:14.1f}")
    print(
        f"ratio: {b_cpu / a_cpu:.1f}x on CPU time, {b_wall / a_wall:.1f}x on wall time "
        "(target >= 20x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
