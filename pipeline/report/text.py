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
    figures = m.get("figures") or {}
    return fmt(figures[key] if key in figures else m.get(key), digits)


def summary_metrics(metrics: dict, default: tuple[str, ...]) -> tuple[str, ...]:
    """The figures a stage table shows: a task's own (detection's mAP, segmentation's mIoU: ``figures``),
    else classification's ``default``."""
    first = next(iter(metrics.values()), {}) if metrics else {}
    return tuple(first.get("figures") or {}) or default


def task_per_class(metrics: dict) -> tuple[list[str], list[list[str]]] | None:
    """A task's per-class table (``per_class_figures``: AP, IoU, P/R/F1 at IoU 0.5), or None for classification."""
    names = list(metrics)
    first = metrics[names[0]] if names else {}
    per = first.get("per_class_figures")
    if not per:
        return None
    keys = [k for k in next(iter(per.values())) if k != "support"]
    rows = [[c] + [" / ".join(fmt((metrics[n].get("per_class_figures") or {}).get(c, {}).get(k), 3) for k in keys)
                   for n in names] for c in per]
    return [f"class ({' / '.join(keys)})"] + names, rows


def check_word(c: dict) -> str:
    if c["passed"]:
        return "PASS"
    return "FAIL" if c["is_gating"] else "WARN"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in rows]
    return out


MAX_CLASS_ROWS = 40  # a per-class table longer than this shows the classes with rows (and those predicted) only


def shown_classes(metrics: dict) -> tuple[list[int], int]:
    """The classes a per-class table or plot shows, by index, and how many it leaves out.

    Every class when the model has few; otherwise those with eval rows and those some stage
    predicted (a prediction of a class without rows is an error worth seeing). report.json keeps all.
    """
    names = list(metrics)
    keys = list(metrics[names[0]]["per_class"]) if names else []
    if len(keys) <= MAX_CLASS_ROWS:
        return list(range(len(keys))), 0
    shown = [k for k, key in enumerate(keys)
             if metrics[names[0]]["per_class"][key]["support"]
             or any(metrics[n]["per_class"][key]["precision"] is not None for n in names)]
    return shown, len(keys) - len(shown)


def averaged_over(m: dict) -> str:
    """What the macro and weighted figures of a stage's metrics average over, in words."""
    total, n = m.get("classes_total"), m.get("classes_averaged")
    if not total:
        return ""
    if m.get("metric_classes") == "all":
        return f"macro and weighted figures average over all {total} classes (gate.metric_classes: all)"
    return (f"macro and weighted figures average over the {n} class(es) present among the eval labels, of the "
            f"model's {total} (gate.metric_classes: present; predictions of other classes count as errors)")
