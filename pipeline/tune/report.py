"""The tune report: tune.json, report.html (the table and throughput-against-p99, one curve per batch
size), the recommendation as a TorchServe model-config.yaml and as the spec fragment to paste."""

from __future__ import annotations

import html
import json
from dataclasses import asdict

import yaml

from pipeline.report.html import CSS, _png, plt
from pipeline.report.schema import jsonable
from pipeline.tune.search import Measurement


def _row(m: Measurement) -> dict:
    s = m.setting
    return {"setting": s.key, "phase": m.phase, "workers": s.workers, "batch_size": s.batch_size,
            "max_batch_delay_ms": s.max_batch_delay_ms, "concurrency": s.concurrency,
            "threads": s.threads, "throughput_rps": round(m.throughput_rps, 1), "p50_ms": round(m.p50_ms, 2),
            "p99_ms": round(m.p99_ms, 2), "stable": m.stable, "windows": m.windows,
            "formed_batches": {str(k): v for k, v in m.formed.items()}, "answers": m.answers, "detail": m.detail,
            "seconds": round(m.seconds, 1), "apply_s": round(m.apply_s, 2)}


def _fig(m: Measurement | None) -> dict | None:
    return None if m is None else {"setting": m.setting.key, "throughput_rps": round(m.throughput_rps, 1),
                                   "p99_ms": round(m.p99_ms, 2)}


def model_config(res) -> dict | None:
    m = res.recommended
    if m is None:
        return None
    s = m.setting
    return {"minWorkers": s.workers, "maxWorkers": s.workers, "batchSize": s.batch_size,
            "maxBatchDelay": s.max_batch_delay_ms, "responseTimeout": res.spec.serving.response_timeout_s}


def spec_fragment(res) -> dict | None:
    m = res.recommended
    if m is None:
        return None
    s = m.setting
    serving = {"workers": s.workers, "batch_size": s.batch_size, "max_batch_delay_ms": s.max_batch_delay_ms}
    if s.threads is not None:
        serving["env"] = {**res.spec.serving.env, "OMP_NUM_THREADS": str(s.threads), "MKL_NUM_THREADS": str(s.threads)}
    return {"serving": serving, "replay": {"concurrency": s.concurrency}}


def summary(res) -> dict:
    default = next((m for m in res.guided if m.phase == "default"), None)
    out = {"default": _fig(default), "recommended": _fig(res.recommended), "how": res.how,
           "guided_measuring_s": round(res.guided_s, 1), "guided_points": len(res.guided),
           "out_of_budget": res.out_of_budget, "budget_s": res.spec.tune.budget_s}
    if res.recommended is not None and default is not None and default.throughput_rps > 0:
        out["recommended_vs_default"] = round(res.recommended.throughput_rps / default.throughput_rps, 3)
    if res.grid is not None:
        out |= {"grid_best": _fig(res.grid_best), "grid_measuring_s": round(res.grid_s or 0, 1),
                "grid_points": len(res.grid)}
        if res.grid_best is not None and res.recommended is not None:
            out["guided_over_grid_best"] = round(res.recommended.throughput_rps / res.grid_best.throughput_rps, 3)
        if res.grid_s:
            out["guided_time_over_grid_time"] = round(res.guided_s / res.grid_s, 3)
    return out


def _plot(measured: list[Measurement], title: str) -> str | None:
    if not measured:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for b in sorted({m.setting.batch_size for m in measured}):
        pts = sorted((m for m in measured if m.setting.batch_size == b), key=lambda m: m.p99_ms)
        line, = ax.plot([m.p99_ms for m in pts], [m.throughput_rps for m in pts], marker="o", label=f"batch {b}")
        bad = [m for m in pts if not m.keeps_answers]
        if bad:
            ax.scatter([m.p99_ms for m in bad], [m.throughput_rps for m in bad], marker="x", s=90, color="#c62828",
                       zorder=3, label=None)
    ax.set_xlabel("client p99 (ms)")
    ax.set_ylabel("throughput (requests/s)")
    ax.set_title(title + " (red x: answers changed, never recommended)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def _table(rows: list[dict]) -> str:
    cols = ["setting", "phase", "throughput_rps", "p50_ms", "p99_ms", "formed_batches", "stable", "answers", "detail",
            "seconds"]
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = []
    for r in rows:
        cls = "ok" if r["answers"] == "same" else "bad"
        cells = "".join(f"<td class='{cls}'>{html.escape(str(r[c]))}</td>" if c == "answers" else
                        f"<td>{html.escape(str(r[c]))}</td>" for c in cols)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render(res, doc: dict) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tune {e(res.spec.name)}</title>"
             f"<style>{CSS}</style></head><body><h1>tune: {e(res.spec.name)}</h1>"]
    s = doc["summary"]
    rec = s["recommended"]
    parts.append(f"<p>recommended: <b>{e(rec['setting']) if rec else 'none'}</b>"
                 + (f" &mdash; {rec['throughput_rps']} req/s, p99 {rec['p99_ms']} ms" if rec else "")
                 + f"<br>chosen as {e(res.how)}<br>objective: p99 &le; {res.p99_ms} ms ({e(res.p99_from)})</p>")
    parts.append(f"<pre>{e(json.dumps(s, indent=1))}</pre>")
    parts.append(f"<p class='facts'>points applied by: {e(res.apply_mode)} "
                 f"({e(json.dumps(res.apply_figures))}); model API "
                 + ("on for tune only (loopback, token authorization, allowed_urls pinned to the run's store)"
                    if res.apply_mode == "register" or "register_s" in res.apply_figures else "off") + "</p>")
    if doc.get("model_config"):
        parts.append("<h2>model-config.yaml</h2><pre>" + e(yaml.safe_dump(doc["model_config"], sort_keys=False))
                     + "</pre><h2>spec fragment</h2><pre>" + e(yaml.safe_dump(doc["spec_fragment"], sort_keys=False))
                     + "</pre>")
    for name, measured in (("guided", res.guided), ("grid", res.grid)):
        if measured:
            img = _plot(measured, f"{name} search")
            parts.append(f"<h2>{name} search: {len(measured)} points</h2>" + (f"<img src='{img}'>" if img else ""))
            parts.append(_table([_row(m) for m in measured]))
    if res.confirmed is not None:
        parts.append("<h2>every row at the recommendation</h2>" + _table([_row(res.confirmed)]))
    if res.rate:
        parts.append(f"<h2>open loop (--rate)</h2><pre>{e(json.dumps(res.rate, indent=1))}</pre>")
    for n in res.notes:
        parts.append(f"<p class='warn'>{e(n)}</p>")
    parts.append("</body></html>")
    return "".join(parts)


def write_tune_report(res) -> dict:
    doc = {"spec_path": str(res.spec.spec_path), "model": res.spec.name, "objective_p99_ms": res.p99_ms,
           "objective_from": res.p99_from, "ranges": asdict(res.ranges), "apply": res.apply_mode,
           "apply_figures": res.apply_figures, "summary": summary(res), "guided": [_row(m) for m in res.guided],
           "confirmed": _row(res.confirmed) if res.confirmed else None,
           "grid": [_row(m) for m in res.grid] if res.grid is not None else None, "rate": res.rate,
           "model_config": model_config(res), "spec_fragment": spec_fragment(res), "notes": res.notes}
    (res.run_dir / "tune.json").write_text(json.dumps(jsonable(doc), indent=1))
    (res.run_dir / "report.html").write_text(render(res, doc), encoding="utf-8")
    if doc["model_config"]:
        (res.run_dir / "model-config.yaml").write_text(yaml.safe_dump(doc["model_config"], sort_keys=False))
        (res.run_dir / "spec-fragment.yaml").write_text(yaml.safe_dump(doc["spec_fragment"], sort_keys=False))
    return doc
