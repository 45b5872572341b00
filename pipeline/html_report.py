"""report.html: one self-contained page (plots inlined as PNG data URIs, no external URL)."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STAGE_COLORS = {"baseline": "#4C72B0", "exported": "#DD8452", "served": "#55A868"}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1300px}
.banner{padding:14px 18px;border-radius:6px;font-size:22px;font-weight:600;color:#fff}
.PASS{background:#2e7d32}.FAIL{background:#c62828}.ERROR{background:#6a1b9a}.INTERRUPTED{background:#ef6c00}
table{border-collapse:collapse;margin:10px 0;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}.ok{color:#2e7d32;font-weight:600}.bad{color:#c62828;font-weight:600}.warn{color:#ef6c00}
img{max-width:100%;border:1px solid #eee;margin:8px 0}h2{margin-top:28px}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
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
    if not metrics:
        return None
    names = list(metrics)
    labels = list(metrics[names[0]]["per_class"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for ax, n in zip(axes[0], names):
        cm = np.array(metrics[n]["confusion"])
        ax.imshow(cm, cmap="Blues")
        ax.set_title(f"{n} ({metrics[n]['answered']}/{metrics[n]['rows']} answered)")
        ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 4 else 0)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for (i, j), v in np.ndenumerate(cm):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                        color="white" if v > cm.max() / 2 else "black")
    return _png(fig)


def _f1_plot(rep: dict) -> str | None:
    metrics = rep.get("metrics") or {}
    if not metrics:
        return None
    names = list(metrics)
    labels = list(metrics[names[0]]["per_class"])
    x = np.arange(len(labels))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(labels) * len(names)), 3.5))
    for k, n in enumerate(names):
        ax.bar(x + k * width, [metrics[n]["per_class"][c]["f1"] for c in labels], width, label=n,
               color=STAGE_COLORS.get(n))
    ax.set_xticks(x + width * (len(names) - 1) / 2, labels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title("Per-class F1")
    ax.legend(loc="lower right")
    return _png(fig)


def _latency_plot(rows) -> str | None:
    if rows is None:
        return None
    series = [(n, rows[f"{n}_latency_ms"].dropna().to_numpy(dtype=float))
              for n in ("baseline", "exported", "served") if f"{n}_latency_ms" in rows]
    series = [(n, v) for n, v in series if v.size]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for n, v in series:
        ax.hist(v, bins=np.logspace(np.log10(max(v.min(), 1e-3)), np.log10(v.max() * 1.01 + 1e-3), 40),
                alpha=0.6, label=f"{n} (p50 {np.median(v):.3g} ms)", color=STAGE_COLORS.get(n))
    ax.set_xscale("log")
    ax.set_xlabel("latency per row (ms, log scale)")
    ax.set_ylabel("rows")
    ax.set_title("Latency: eager and exported in-process, served over HTTP")
    ax.legend()
    return _png(fig)


def _split_plot(rows) -> str | None:
    if rows is None or "served_server_ms" not in rows:
        return None
    ok = rows[["served_latency_ms", "served_server_ms"]].dropna().astype(float)
    if ok.empty:
        return None
    model = ok["served_server_ms"].to_numpy()
    overhead = (ok["served_latency_ms"] - ok["served_server_ms"]).to_numpy()
    qs = [50, 90, 95, 99]
    m, o = np.percentile(model, qs), np.percentile(overhead, qs)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = [f"p{q}" for q in qs]
    ax.bar(labels, m, label="model time (server PredictionTime)", color="#55A868")
    ax.bar(labels, o, bottom=m, label="HTTP + queue overhead", color="#C44E52")
    ax.set_ylabel("ms")
    ax.set_title("Served latency split (percentiles of each part)")
    ax.legend()
    return _png(fig)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: dict, rows=None) -> str:
    """A self-contained HTML page: verdict, checks, metrics and four plots.

    Args:
        report: the dict from ``report.build_report``.
        rows: per-row results (``report.build_rows``) for the latency plots, or None.

    Returns:
        The page; every image is an inline data URI.
    """
    e = html.escape
    verdict = report.get("verdict", "ERROR")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(verdict)}: {e(str(report.get('model')))}"
             f"</title><style>{CSS}</style></head><body>",
             f"<div class='banner {e(verdict)}'>{e(verdict)}: {e(str(report.get('model')))} "
             f"{e(str(report.get('version') or ''))}</div>"]
    if report.get("error"):
        err = report["error"]
        parts.append(f"<p><b>{e(err['type'])}</b>: {e(err['message'])}</p>")
        parts.append("<ul>" + "".join(f"<li>{e(d)}</li>" for d in err.get("details", [])[:20]) + "</ul>")
    if not report.get("complete"):
        parts.append("<p class='bad'>This run did not complete: its figures are partial and it is not a pass.</p>")
    if report.get("attribution"):
        parts.append(f"<p>Attribution: {e(report['attribution'])}</p>")
    gate = report.get("gate")
    if gate:
        parts.append("<h2>Gate checks</h2>")
        trs = []
        for c in gate["checks"]:
            cls, word = ("ok", "PASS") if c["passed"] else (("bad", "FAIL") if c["is_gating"] else ("warn", "WARN"))
            trs.append([f"<span class='{cls}'>{word}</span>", e(c["stage"]), e(c["name"]), e(_fmt(c["value"])),
                        e(_fmt(c["baseline"])), e(c["limit"]), e(c["detail"])])
        parts.append(_table(["result", "stage", "check", "value", "baseline", "limit", "detail"], trs))
    metrics = report.get("metrics") or {}
    if metrics:
        names = list(metrics)
        parts.append("<h2>Metrics</h2>")
        parts.append(_table(["metric"] + names, [[m] + [e(_fmt(metrics[n][m])) for n in names] for m in
                     ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted")]))
    plots = [("Confusion matrices", _confusion_plot(report)), ("Per-class F1", _f1_plot(report)),
             ("Latency distributions", _latency_plot(rows)), ("Served latency split", _split_plot(rows))]
    for title, uri in plots:
        if uri:
            parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='{uri}'>")
    if report.get("flipped_rows"):
        parts.append(f"<h2>Flipped rows ({report['flipped_total']})</h2>")
        parts.append(_table(["id", "label", "baseline", "exported", "served"],
                            [[e(r["id"]), str(r["label"]), e(_fmt(r["baseline"])), e(_fmt(r["exported"])),
                              e(_fmt(r["served"]))] for r in report["flipped_rows"]]))
    env = report.get("environment") or {}
    parts.append("<h2>Environment</h2>" + _table(["what", "version"], [[e(k), e(str(v))] for k, v in env.items()]))
    parts.append("</body></html>")
    return "\n".join(parts)
