"""Tables for people (aligned, CJK-aware) and JSON for scripts, from the same rows."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import click


def width(text: str) -> int:
    """Display width: CJK characters take two terminal columns."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *, max_width: int = 90
) -> str:
    if not rows:
        return "(none)"
    cols = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    cells = [[v if width(v) <= max_width else _clip(v, max_width) for v in row] for row in cells]
    widths = [max(width(c), *(width(row[i]) for row in cells)) for i, c in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v + " " * (w - width(v)) for v, w in zip(values, widths, strict=True)
        ).rstrip()

    out = [line(cols), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def _clip(text: str, limit: int) -> str:
    out, used = "", 0
    for ch in text:
        w = width(ch)
        if used + w > limit - 1:
            break
        out += ch
        used += w
    return out + "…"


def emit(
    rows: Sequence[Mapping[str, Any]], *, as_json: bool, columns: Sequence[str] | None = None
) -> None:
    if as_json:
        click.echo(json.dumps(list(rows), ensure_ascii=False, indent=2, default=str))
    else:
        click.echo(table(rows, columns))
