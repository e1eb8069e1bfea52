"""Plain-text and Markdown tables of result rows (one formatter, so the console and the files agree)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def render(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], markdown: bool = False) -> str:
    """Rows of already formatted values; `columns` is (key, header). Text columns left-aligned, others right."""
    cells = [[str(row.get(key, "")) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    left = [all(not _numeric(r[i]) for r in cells) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        parts = [v.ljust(w) if lft else v.rjust(w) for v, w, lft in zip(values, widths, left, strict=True)]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts)

    out = [line(headers)]
    if markdown:
        out.append(
            "|"
            + "|".join(
                (":" if lft else "") + "-" * (w + 1) + ("" if lft else ":") for w, lft in zip(widths, left, strict=True)
            )
            + "|"
        )
    else:
        out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def _numeric(text: str) -> bool:
    stripped = text.replace(",", "").replace("×", "").replace("%", "").strip()
    try:
        float(stripped)
    except ValueError:
        return stripped in ("-", "never", "")
    return True
