"""report.html: one self-contained page (plots inlined as PNG data URIs, no external URL)."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.evaluate.latency import LABELS, ROW_LABELS, STACKED, stacked_rows  # noqa: E402
from pipeline.report.text import (PROBE_LEGEND, answers_line, averaged_over, differing_rows_header,  # noqa: E402
                                  labels_word, shown_classes, task_sections)
from pipeline.report.tsconfig import html_section  # noqa: E402
from pipeline.report.text import metric as metric_text  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd

STAGE_COLORS = {"baseline": "#4C72B0", "exported": "#DD8452", "handled": "#8172B3", "served": "#55A868"}
SPLIT_COLORS = {"total": "#8C8C8C", "model": "#2E7D32", "overhead": "#C44E52"}
SPLIT_LABELS = {"total": "client total (HTTP round trip)", "model": "model time (server PredictionTime)",
                "overhead": "HTTP + queue overhead"}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1300px}
.banner{padding:14px 18px;border-radius:6px;font-size:22px;font-weight:600;color:#fff}
.PASS{background:#2e7d32}.FAIL{background:#c62828}.ERROR{background:#6a1b9a}.INTERRUPTED{background:#ef6c00}
table{border-collapse:collapse;margin:10px 0;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}.ok{color:#2e7d32;font-weight:600}.bad{color:#c62828;font-weight:600}.warn{color:#ef6c00}
img{max-width:100%;border:1px solid #eee;margin:8px 0}h2{margin-top:28px}.facts{color:#555}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "NaN" if math.isnan(v) else (f"{v:.4g}" if abs(v) < 1e-3 and v else f"{v:.4f}")
    return str(v)


def _confusion_plot(rep: dict) -> str | None:
    metrics = rep.get("metrics") or {}
    if not metrics or any(not m.get("confusion") for m in metrics.values()):  # a task without classes per row
        return None
    names = list(metrics)
    shown, hidden = shown_classes(metrics)  # a 1000-class matrix is unreadable: the classes with rows or predicted
    labels = [list(metrics[names[0]]["per_class"])[k] for k in shown]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for ax, n in zip(axes[0], names):
        cm = np.array(metrics[n]["confusion"])
        kept = metrics[n].get("confusion_classes")  # a many-class report keeps only the classes in use
        pos = {k: i for i, k in enumerate(kept if kept is not None else range(len(cm)))}
        cm = np.array([[cm[pos[a], pos[b]] if a in pos and b in pos else 0 for b in shown] for a in shown], int)
        ax.imshow(cm, cmap="Blues")
        ax.set_title(f"{n} ({metrics[n]['answered']}/{metrics[n]['rows']} answered)"
                     + (f"\n{len(shown)} classes shown, {hidden} without rows or predictions left out"
                        if hidden else ""),
                     fontsize=9 if hidden else None)
        ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 4 else 0)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for (i, j), v in np.ndenumerate(cm):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                        color="white" if v > cm.max() / 2 else "black")
    return _png(fig)


def _task_class_plot(rep: dict) -> str | None:
    """A task's per-class figure by stage: AP@[.5:.95] for detection, IoU for segmentation."""
    metrics = rep.get("metrics") or {}
    names = list(metrics)
    per = (metrics[names[0]].get("per_class_figures") if names else None) or {}
    key = next((k for k in ("ap", "iou") if per and k in next(iter(per.values()))), None)
    if key is None:
        return None
    labels = list(per)
    x = np.arange(len(labels))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.0, 0.5 * len(labels) * len(names) + 2)), 3.6))
    for k, n in enumerate(names):
        vals = [(metrics[n].get("per_class_figures") or {}).get(c, {}).get(key) for c in labels]
        ax.bar(x + k * width, [np.nan if v is None else v for v in vals], width, label=n, color=STAGE_COLORS.get(n))
    ax.set_xticks(x + width * (len(names) - 1) / 2, labels)
    ax.set_ylim(0, 1.03)
    ax.set_ylabel({"ap": "AP@[.5:.95]", "iou": "IoU"}[key])
    ax.set_title(f"Per-class {'AP' if key == 'ap' else 'IoU'} by stage")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def _draw_boxes(ax, boxes: list, color: str, style: str, names: list) -> None:
    from matplotlib.patches import Rectangle

    for x1, y1, x2, y2, label, score in boxes:
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linestyle=style, linewidth=1.4))
        name = names[label] if 0 <= label < len(names) else str(label)
        ax.text(x1, y1 - 0.5, f"{name} {score:.2f}" if score < 1 else name, color=color, fontsize=6, va="bottom")


def _row_pictures(rep: dict) -> str | None:
    """The worst-differing rows of each stage: the image with the ground truth, baseline and candidate boxes,
    or the ground truth, baseline and candidate masks side by side."""
    shown = [d for d in rep.get("diverging_rows") or [] if d.get("picture")]
    if not shown:
        return None
    shown = shown[:6]
    is_mask = shown[0]["picture"]["kind"] == "mask"
    cols = 3 if is_mask else 1
    fig, axes = plt.subplots(len(shown), cols, figsize=(3.2 * cols + (1.5 if not is_mask else 0), 3.2 * len(shown)),
                             squeeze=False)
    for row, d in zip(axes, shown):
        p = d["picture"]
        title = f"{d['id']}: {d['reference']} vs {d['stage']}"
        if is_mask:
            k = max(len(p["names"]) - 1, 1)
            for ax, key, words in zip(row, ("truth", "reference", "candidate"),
                                      ("ground truth", d["reference"], d["stage"])):
                grid = np.asarray(p[key], float)
                ax.imshow(grid, cmap="tab10", vmin=0, vmax=max(9, k), interpolation="nearest")
                odd = np.shape(p[key]) != np.shape(p["reference"])
                ax.set_title(f"{d['id']}: {words}" + (f" (another shape: {grid.shape[1]}x{grid.shape[0]})"
                                                       if odd else ""), fontsize=8)
                ax.axis("off")
            continue
        ax = row[0]
        try:
            from PIL import Image

            ax.imshow(np.asarray(Image.open(p["image"]).convert("RGB")))
        except Exception:  # the image moved since the run: the boxes alone, on the image's frame
            w, h = p.get("size") or (100, 100)
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
        _draw_boxes(ax, p["truth"], "white", ":", p["names"])
        _draw_boxes(ax, p["reference"], "lime", "-", p["names"])
        _draw_boxes(ax, p["candidate"], "red", "--", p["names"])
        ax.set_title(title + "\nwhite: truth, green: " + d["reference"] + ", red: " + d["stage"], fontsize=8)
        ax.axis("off")
    if is_mask:
        from matplotlib.patches import Patch

        cmap = plt.get_cmap("tab10")
        names = shown[0]["picture"]["names"]
        fig.legend(handles=[Patch(color=cmap(i / max(9, len(names) - 1)), label=n) for i, n in enumerate(names)],
                   loc="upper center", ncol=min(len(names), 6), fontsize=8)
        fig.suptitle(f"one pixel in {shown[0]['picture'].get('step', 1)} shown along each axis", y=0.005, fontsize=7)
    fig.tight_layout(rect=(0, 0.01, 1, 0.97) if is_mask else None)
    return _png(fig)


def _f1_plot(rep: dict) -> str | None:
    metrics = rep.get("metrics") or {}
    if not metrics or any(not m.get("per_class") for m in metrics.values()):
        return None
    names = list(metrics)
    shown, _ = shown_classes(metrics)
    labels = [list(metrics[names[0]]["per_class"])[k] for k in shown]
    values = {n: [metrics[n]["per_class"][c]["f1"] for c in labels] for n in names}
    finite = [v for vs in values.values() for v in vs if v is not None and math.isfinite(v)]
    # From 0 the few-thousandths differences a packaging bug causes are invisible: start near the lowest bar.
    floor = max(0.0, math.floor((min(finite, default=0.0) - 0.02) * 20) / 20)
    x = np.arange(len(labels))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.0, 0.35 * len(labels) * len(names) + 2)), 3.8))
    for k, n in enumerate(names):
        ax.bar(x + k * width, [np.nan if v is None else v for v in values[n]], width, label=n,
               color=STAGE_COLORS.get(n))
    ax.set_xticks(x + width * (len(names) - 1) / 2, labels, rotation=45 if len(labels) > 12 else 0)
    ax.set_ylim(floor, 1.0 + (1.0 - floor) * 0.03)
    ax.set_ylabel("F1" + (f" (axis starts at {floor:.2f})" if floor > 0 else ""))
    ax.set_xlabel("class")
    ax.set_title("Per-class F1 by stage")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def _latency_plot(rows) -> str | None:
    if rows is None:
        return None
    series = [(n, rows[f"{n}_latency_ms"].dropna().to_numpy(dtype=float))
              for n in ("baseline", "exported", "handled", "served") if f"{n}_latency_ms" in rows]
    series = [(n, v[v > 0]) for n, v in series]
    series = [(n, v) for n, v in series if v.size]
    if not series:
        return None
    every = np.concatenate([v for _, v in series])
    # One set of log-spaced bins for every stage, so bar widths and heights compare across stages.
    bins = np.logspace(np.log10(every.min() * 0.95), np.log10(every.max() * 1.05), 70)
    fig, ax = plt.subplots(figsize=(10, 3.8))
    names = {"baseline": "baseline (eager, in-process)", "exported": "exported (in-process)",
             "handled": "handled (handler in-process)", "served": "served (HTTP round trip)"}
    for n, v in series:
        color = STAGE_COLORS.get(n)
        p50, p99 = np.percentile(v, [50, 99])
        ax.hist(v, bins=bins, histtype="stepfilled", alpha=0.45, color=color,
                label=f"{names.get(n, n)}: p50 {p50:.3g} ms, p99 {p99:.3g} ms")
        ax.hist(v, bins=bins, histtype="step", color=color, linewidth=1.2)
        ax.axvline(p99, color=color, linestyle=":", linewidth=1.2)
    ax.set_xscale("log")
    # Log counts too: the slow tail is a handful of rows beside peaks of hundreds.
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.7)
    ax.set_xlabel("latency per row (ms, log scale); dotted lines: p99")
    ax.set_ylabel("rows (log scale)")
    ax.set_title("Per-row latency by stage")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(series), fontsize=9, frameon=False)
    return _png(fig)


def _split_plot(rows) -> str | None:
    if rows is None or "served_server_ms" not in rows:
        return None
    ok = rows[["served_latency_ms", "served_server_ms"]].dropna().astype(float)
    if ok.empty:
        return None
    total = ok["served_latency_ms"].to_numpy()
    model = ok["served_server_ms"].to_numpy()
    overhead = total - model
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 2.4]})
    # Means add up (total = model + overhead); percentiles do not, so only the mean is stacked.
    m_mean, o_mean = float(model.mean()), float(overhead.mean())
    left.bar(["mean"], [m_mean], color=SPLIT_COLORS["model"], label="model time (server PredictionTime)")
    left.bar(["mean"], [o_mean], bottom=[m_mean], color=SPLIT_COLORS["overhead"], label="HTTP + queue overhead")
    for y, v in ((m_mean / 2, m_mean), (m_mean + o_mean / 2, o_mean)):
        if v < 0.1 * (m_mean + o_mean):
            continue  # too thin a segment to hold its label
        left.text(0, y, f"{v:.3g} ms\n({v / (m_mean + o_mean):.0%})", ha="center", va="center", color="white",
                  fontsize=9, fontweight="bold")
    left.set_ylabel("ms")
    left.set_title(f"Mean split of {len(total)} requests")
    qs = [50, 90, 95, 99]
    x = np.arange(len(qs))
    width = 0.27
    for k, (what, v) in enumerate((("total", total), ("model", model), ("overhead", overhead))):
        pct = np.percentile(v, qs)
        bars = right.bar(x + (k - 1) * width, pct, width, color=SPLIT_COLORS[what], label=SPLIT_LABELS[what])
        right.bar_label(bars, fmt="%.3g", fontsize=8, padding=1)
    right.set_xticks(x, [f"p{q}" for q in qs])
    right.set_ylabel("ms")
    right.set_title("Percentiles of each part")
    right.margins(y=0.12)
    handles, labels = right.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, frameon=False)
    return _png(fig)


STACK_COLORS = {"handler_ms": "#2E7D32", "worker_other_ms": "#8172B3", "client_overhead_ms": "#C44E52"}


def _stacked_plot(report: dict, rows) -> str | None:
    """Each joined request's latency stacked by part (``evaluate.latency.STACKED``), requests sorted by client
    latency; the frontend's queue and total distributions (no request id: not joined) drawn beside as their
    percentiles on the same rank axis."""
    if rows is None or not {"served_server_ms", "served_handler_ms"} <= set(rows):
        return None
    parts = stacked_rows(rows["served_latency_ms"].to_numpy(dtype=float, na_value=np.nan),
                         rows["served_server_ms"].to_numpy(dtype=float, na_value=np.nan),
                         rows["served_handler_ms"].to_numpy(dtype=float, na_value=np.nan))
    n = len(parts["client_ms"])
    if n == 0:
        return None
    rank = (np.arange(n) + 0.5) / n * 100
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.stackplot(rank, *(parts[k] for k in STACKED), labels=[LABELS[k] for k in STACKED],
                 colors=[STACK_COLORS[k] for k in STACKED], alpha=0.85, step="mid")
    b = (report.get("served_latency_split") or {}).get("breakdown") or {}
    for key, style in (("frontend_ms", "k--"), ("queue_ms", "k:")):
        s = (b.get("frontend") or {}).get(key)
        if s:
            ax.plot([50, 90, 99, 100], [s["p50"], s["p90"], s["p99"], s["max"]], style, marker="o", markersize=3,
                    label=f"{LABELS[key]}: p50/p90/p99/max, not joined")
    ax.set_yscale("symlog", linthresh=max(0.01, float(np.median(parts["client_ms"])) / 4))
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"the {n} joined requests, sorted by client latency (percentile rank)")
    ax.set_ylabel("ms (symlog)")
    ax.set_title("Where the time goes: each request's parts, stacked")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8, frameon=False)
    return _png(fig)


def _where_time_goes_table(report: dict) -> str:
    """The breakdown's percentiles and notes, as HTML (empty without a breakdown)."""
    b = (report.get("served_latency_split") or {}).get("breakdown")
    if not b:
        return ""

    def row(key: str, s: dict | None) -> list[str]:
        return [_esc(LABELS[key])] + ([_esc(_fmt(s[k])) for k in ("p50", "p90", "p99", "max")] + [_esc(s["count"])]
                                      if s else ["-"] * 4 + ["0"])

    rows = [row(k, s) for k, s in b["components"].items()]
    rows += [row(k, s) for k, s in (b.get("frontend") or {}).items()]
    accounted = ", ".join(f"{n} {ROW_LABELS[k]}" for k, n in b["rows"].items() if n)
    return (f"<p>{_esc(b['replayed'])} replayed rows: {_esc(accounted)}.</p>"
            + _table(["part (ms)", "p50", "p90", "p99", "max", "n"], rows)
            + "<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in b["notes"]) + "</ul>")


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: dict, rows: "pd.DataFrame | None" = None) -> str:
    """A self-contained HTML page: verdict, checks, metrics and four plots.

    Args:
        report: the dict from ``report.build_report``.
        rows: per-row results (``report.build_rows``) for the latency plots, or None (those
            two plots are then left out).

    Returns:
        The page; every image is an inline PNG data URI and every text is HTML-escaped.

    Raises:
        Nothing on purpose; a plotting failure propagates and ``report.write_reports`` logs it.
    """
    e = _esc
    verdict = report.get("verdict", "ERROR")
    title = f"{verdict}: {report.get('model')} {report.get('version') or ''}".rstrip()
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<div class='banner {e(verdict)}'>{e(title)}</div>"]
    gate = report.get("gate")
    facts = [f"status {report.get('status')}", f"exit code {report.get('exit_code')}"]
    if gate:
        passed = sum(1 for c in gate["checks"] if c["passed"])
        facts.insert(0, f"{passed} of {len(gate['checks'])} checks passed")
    facts += [f"started {report.get('started_at')}", f"run folder {report.get('run_dir')}"]
    parts.append(f"<p class='facts'>{e('; '.join(facts))}</p>")
    if report.get("error"):
        err = report["error"]
        parts.append(f"<p><b>{e(err.get('type'))}</b>: {e(err.get('message'))}</p>")
        parts.append("<ul>" + "".join(f"<li>{e(d)}</li>" for d in (err.get("details") or [])[:20]) + "</ul>")
    if not report.get("complete"):
        parts.append("<p class='bad'>This run did not complete: its figures are partial and it is not a pass.</p>")
    attribution = report.get("attribution")
    if attribution:
        parts.append(f"<p><b>Attribution</b>: {e(attribution['summary'])}</p>")
        parts.append(_table(["stage", "against", "result", differing_rows_header(report), "max output diff"],
                            [[e(s["stage"]), e(s["reference"]), e("differs" if s["differs"] else "same"),
                              e(s["disagreeing"]), e(_fmt(s["max_output_diff"]))] for s in attribution["steps"]]))
    if gate:
        parts.append("<h2>Gate checks</h2>")
        trs = []
        for c in gate["checks"]:
            cls, word = ("ok", "PASS") if c["passed"] else (("bad", "FAIL") if c["is_gating"] else ("warn", "WARN"))
            trs.append([f"<span class='{cls}'>{word}</span>", e(c["stage"]), e(c["name"]), e(_fmt(c["value"])),
                        e(_fmt(c["baseline"])), e(c["limit"]), e(c.get("detail") or "")])
        parts.append(_table(["result", "stage", "check", "value", "baseline", "limit", "detail"], trs))
    metrics = report.get("metrics") or {}
    sections = task_sections(report)
    for sec in sections or ():  # another task's sections (tasks/<task>.py), its plot inline
        parts.append(f"<h2>{e(sec.title)}</h2>")
        for header, body in sec.tables:  # (not "rows": the per-row table the latency plots read)
            parts.append(_table([e(h) for h in header], [[e(c) for c in r] for r in body]))
        parts += [f"<p>{e(ln)}</p>" for ln in sec.lines]
        if sec.svg:
            parts.append(f"<div class='plot'>{sec.svg}</div>")
    if metrics and sections is None:
        names = list(metrics)
        parts.append("<h2>Metrics</h2>")
        parts.append(_table(["metric"] + names, [[m] + [e(metric_text(metrics[n], m)) for n in names] for m in
                     ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted")]))
        if averaged_over(metrics[names[0]]):
            parts.append(f"<p>{e(averaged_over(metrics[names[0]]))}.</p>")
        for stage, ids in ((report.get("plan") or {}).get("shared_name_rows") or {}).items():
            parts.append(f"<p>{e(stage)}: {len(ids)} row(s) answered a name several classes share, compared by "
                         f"name: {e(', '.join(ids[:10]))}{e(' ...' if len(ids) > 10 else '')}</p>")
    plots = [("Confusion matrices", _confusion_plot(report) if sections is None else None),
             ("Per-class F1", _f1_plot(report) if sections is None else None),
             ("Per-class figures", _task_class_plot(report)),
             ("Rows that differ most from the baseline", _row_pictures(report)),
             ("Latency distributions", _latency_plot(rows)), ("Served latency split", _split_plot(rows))]
    for heading, uri in plots:
        if uri:
            parts.append(f"<h2>{e(heading)}</h2><img alt='{e(heading)}' src='{uri}'>")
    where = _where_time_goes_table(report)
    if where:
        uri = _stacked_plot(report, rows)
        parts.append("<h2>Where the time goes</h2>" + (f"<img alt='Where the time goes' src='{uri}'>" if uri else "")
                     + where)
    if report.get("flipped_rows") and sections is None:
        stages = list(report["flipped_rows"][0]["predictions"])
        parts.append(f"<h2>Rows whose prediction differs from the baseline's ({e(report['flipped_total'])})</h2>")
        parts.append(_table(["id", "label"] + stages,
                            [[e(r["id"]), e(r["label"])] + [e(_fmt(r["predictions"][s][0])) for s in stages]
                             for r in report["flipped_rows"]]))
    plan = report.get("plan")
    if plan:
        a = plan["answers"]
        facts = [("handler", plan["handler"]["display"]),
                 ("reference preprocessing", f"{plan['reference']['name']}: {plan['reference']['description']}"),
                 ("answers", answers_line(report, a).replace("`", "")),
                 (labels_word(report), f"{len(plan['class_labels'])} from {plan['class_map_source']}: "
                                       + ", ".join(map(str, plan["class_labels"][:10]))
                                       + (f" ... {len(plan['class_labels']) - 10} more"
                                          if len(plan["class_labels"]) > 10 else "")),
                 ("stages", ", ".join(plan["stages"]))]
        parts.append("<h2>What ran</h2>" + _table(["what", "value"], [[e(k), e(v)] for k, v in facts]))
    probes = report.get("probes")
    if probes:
        by_name: dict = {}
        for stage in ("handled", "served"):
            for p in probes.get(stage) or []:
                by_name.setdefault(p["probe"], {"expect": p["expect"]})[stage] = p

        def cell(p):
            if p is None:
                return "-"
            cls = ("warn" if p.get("warning") else "ok") if p["passed"] else "bad"
            return f"<span class='{cls}'>{e(p['outcome'])}</span> {e(p['message'])}"

        parts.append("<h2>Handler input probes</h2>" + f"<p>{e(PROBE_LEGEND)}</p>" + _table(
            ["probe", "expect", "handled", "served"],
            [[e(n), e(v["expect"]), cell(v.get("handled")), cell(v.get("served"))] for n, v in by_name.items()]))
    parts.append(html_section(report, e, _table))
    env = report.get("environment") or {}
    parts.append("<h2>Environment</h2>" + _table(["what", "version"], [[e(k), e(v)] for k, v in env.items()]))
    parts.append("</body></html>")
    return "\n".join(parts)
