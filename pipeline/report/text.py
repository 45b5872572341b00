"""Shared formatting of figures for the text renderers (Markdown, console, JUnit, HTML)."""

from __future__ import annotations

import math
from typing import Any


def fmt(v: Any, digits: int = 4) -> str:
    """A figure for people: '-' for missing, 'undefined' never shown as 0, small and large numbers in %g."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.{digits}f}"
    return str(v)


def metric(m: dict, key: str, digits: int = 4) -> str:
    """A stage metric, or 'undefined' when it cannot be computed (0/0)."""
    if key in (m.get("undefined") or {}):
        return "undefined"
    return fmt(m.get(key), digits)


def check_word(c: dict) -> str:
    if c["passed"]:
        return "PASS"
    return "FAIL" if c["is_gating"] else "WARN"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in rows]
    return out
