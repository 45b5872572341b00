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


def task_sections(rep: dict) -> list | None:
    """The report sections of the run's task (``tasks.base.Section``), or None for classification, whose
    metric, per-class, paired-test and flipped-row sections the renderers draw themselves."""
    from pipeline.tasks.registry import task_name_of_report, task_of_report

    if task_name_of_report(rep) == "classification":
        return None
    return task_of_report(rep).report_sections(rep)


def labels_word(rep: dict) -> str:
    """What the run's label set names, in the task's words (``labels_word`` of ``tasks/<task>.py``): classes,
    box labels, pixel classes, targets, labels."""
    from pipeline.tasks.registry import task_of_report

    return getattr(task_of_report(rep), "labels_word", "classes")


def differing_rows_header(rep: dict) -> str:
    """The attribution table's count of rows whose answer moved: a class for classification, any answer else."""
    from pipeline.tasks.registry import task_name_of_report

    return "rows with another prediction" if task_name_of_report(rep) == "classification" else \
        "rows whose answer differs"


PROBE_LEGEND = ("same: must get the original row's answer (its class; for detection the same objects, for "
                "segmentation nearly the same pixels, for values the same numbers within the output tolerance); "
                "answer: any answer or a clean 4xx refusal; refuse: must be refused. Crashed = the handler raised, died "
                "or timed out. Stored frame = the answer fits the EXIF-rotated image only in its stored pixels' frame: "
                "the handler ignores EXIF (a WARN).")


def answers_line(rep: dict, a: dict) -> str:
    """The plan's answers: format, what chose it, envelope, what answers carry; and, for classification, how many
    classes each must carry (a task's own answers carry no classes to count)."""
    from pipeline.tasks.registry import task_name_of_report

    line = (f"format `{a['format']}` (chosen by {a['chosen_by']}), envelope `{a['envelope']}`, carrying "
            f"{a['carries']}")
    if task_name_of_report(rep) == "classification":
        line += f"; each must carry {a['required_classes']} class(es) ({a['required_words']})"
    return line


def section_markdown(sec: Any) -> list[str]:
    """One task section as Markdown: heading, lines, tables (an SVG plot is for report.html)."""
    lines = [f"## {sec.title}", ""]
    for header, rows in sec.tables:
        lines += table(list(header), [list(r) for r in rows]) + [""]
    if sec.lines:
        lines += [f"- {ln}" for ln in sec.lines] + [""]
    return lines
