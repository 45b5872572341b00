"""The tune report: tune.json, report.html (the summary of default, recommendation and grid's best from
the head-to-head, each point's table with its fraction of the in-process limit, and throughput against
p99, one curve per batch size and workers), the recommendation as a TorchServe model-config.yaml and
as the spec fragment to paste."""

from __future__ import annotations

import html
import json
from dataclasses import asdict

import yaml

from pipeline.report.html import CSS, _png, plt
from pipeline.report.schema import jsonable
from pipeline.tune.search import Measurement
from pipeline.tune.windows import agree


def _of_limit(res, m: Measurement | None, throughput: float | None = None) -> float | None:
    """Throughput as a fraction of the in-process handler's rows/s at the point's batch size (None: not measured)."""
    limit = res.limit.rows_per_s.get(m.setting.batch_size) if m is not None and res.limit is not None else None
    if not limit or limit != limit:
        return None
    return round((m.throughput_rps if throughput is None else throughput) / limit, 3)


def _row(m: Measurement, res=None) -> dict:
    s = m.setting
    return {"setting": s.key, "phase": m.phase, "workers": s.workers, "batch_size": s.batch_size,
            "max_batch_delay_ms": s.max_batch_delay_ms, "concurrency": s.concurrency,
            "threads": s.threads, "throughput_rps": round(m.throughput_rps, 1), "p50_ms": round(m.p50_ms, 2),
            "p99_ms": round(m.p99_ms, 2), "of_limit": _of_limit(res, m) if res is not None else None,
            "stable": m.stable, "windows": m.windows, "window_figures": [list(f) for f in m.window_figures],
            "formed_batches": {str(k): v for k, v in m.formed.items()}, "answers": m.answers, "detail": m.detail,
            "seconds": round(m.seconds, 1), "apply_s": round(m.apply_s, 2)}


def _fig(m: Measurement | None) -> dict | None:
    return None if m is None else {"setting": m.setting.key, "throughput_rps": round(m.throughput_rps, 1),
                                   "p99_ms": round(m.p99_ms, 2)}


def _contender(res, name: str, searched: Measurement | None) -> dict | None:
    """One of default, recommended, grid best: the head-to-head's medians (the closing figures) and the search's own."""
    if searched is None:
        return None
    out = {"setting": searched.setting.key, "search": _fig(searched) | {"of_limit": _of_limit(res, searched)}}
    c = res.versus.of(name) if res.versus is not None else None
    if c is None:  # no head-to-head: the search's figures are the closing ones
        return out | {"throughput_rps": out["search"]["throughput_rps"], "p99_ms": out["search"]["p99_ms"],
                      "of_limit": out["search"]["of_limit"], "from": "search"}
    return out | {"throughput_rps": round(c.throughput_rps, 1), "p99_ms": round(c.p99_ms, 2),
                  "of_limit": _of_limit(res, searched, c.throughput_rps), "answers": c.answers,
                  "rounds_rps": [round(m.throughput_rps, 1) for m in c.rounds], "from": "head-to-head median"}


def _default_of(res) -> Measurement | None:
    return next((m for m in res.guided if m.phase == "default"), None)


def _ratio(a: dict | None, b: dict | None, key: str = "throughput_rps") -> float | None:
    return round(a[key] / b[key], 3) if a and b and b.get(key) else None


def stability(measured: list[Measurement], tolerance: float) -> dict:
    """How many points ended UNSTABLE, and on what their last two counted windows disagreed (to size the windows)."""
    out = {"points": len(measured), "unstable": 0, "on_throughput": 0, "on_p99": 0}
    for m in measured:
        if m.stable:
            continue
        out["unstable"] += 1
        counted = m.window_figures[1:][-2:]
        if len(counted) == 2:
            (r0, p0), (r1, p1) = counted
            out["on_throughput"] += not agree(r0, r1, tolerance)
            out["on_p99"] += not agree(p0, p1, tolerance)
    return out


def _fractions(res) -> list[tuple[int, float]]:
    """(workers, fraction of the in-process limit) of every measurement, head-to-head rounds included."""
    rounds = [m for c in (res.versus.contenders if res.versus else ()) for m in c.rounds]
    return [(m.setting.workers, f) for m in res.guided + (res.grid or []) + rounds
            if (f := _of_limit(res, m)) is not None]


def summary(res) -> dict:
    """The closing figures: default, recommended and grid best from the head-to-head (medians), the search's kept."""
    default = _contender(res, "default", _default_of(res))
    rec = _contender(res, "recommended", res.recommended)
    out = {"default": default, "recommended": rec, "how": res.how,
           "guided_measuring_s": round(res.guided_s, 1), "guided_points": len(res.guided),
           "out_of_budget": res.out_of_budget, "budget_s": res.spec.tune.budget_s}
    out["recommended_vs_default"] = _ratio(rec, default)
    if rec and default:
        out["search_recommended_vs_default"] = _ratio(rec["search"], default["search"])
    if res.grid is not None:
        grid_best = _contender(res, "grid best", res.grid_best)
        out |= {"grid_best": grid_best, "grid_measuring_s": round(res.grid_s or 0, 1), "grid_points": len(res.grid)}
        out["guided_over_grid_best"] = _ratio(rec, grid_best)
        if rec and grid_best:
            out["search_guided_over_grid_best"] = _ratio(rec["search"], grid_best["search"])
        if res.grid_s:
            # each search's own measuring plus the head-to-head rounds of its shortlist (the default's in both)
            guided_t = res.guided_s + res.guided_settle_s
            grid_t = res.grid_s + (res.grid_settle_s or 0.0)
            out |= {"guided_with_head_to_head_s": round(guided_t, 1), "grid_with_head_to_head_s": round(grid_t, 1),
                    "guided_time_over_grid_time": round(guided_t / grid_t, 3),
                    "search_guided_time_over_grid_time": round(res.guided_s / res.grid_s, 3)}
    if res.versus is not None:
        h = res.versus
        notes = {}
        for key, (a, b) in (("recommended_vs_default", ("recommended", "default")),
                            ("guided_over_grid_best", ("recommended", "grid best"))):
            if key in out:
                notes[key] = h.ratio(a, b)[1]
        out["head_to_head"] = {"rounds": max((len(c.rounds) for c in h.contenders), default=0),
                               "contenders": [" = ".join(c.names) for c in h.contenders],
                               "seconds": round(h.seconds, 1), "ratio_notes": notes}
    out["stability"] = stability(res.guided + (res.grid or []), res.spec.tune.stability_tolerance)
    if res.limit is not None:
        out["in_process_limit_rows_per_s"] = {str(b): round(r, 1) for b, r in res.limit.rows_per_s.items()}
        out["in_process_limit_s"] = round(res.limit.seconds, 1)
        fractions, notes = _fractions(res), []
        # above 1.05 at one worker: the limit was measured under more load; above 1 at more: several handlers
        over = [f for w, f in fractions if w == 1 and f > 1.05]
        if over:
            notes.append(
                f"{len(over)} one-worker measurement(s) above the limit (up to {max(over):.0%}): the limit was "
                "measured at a slower moment than they were (machine load), as a server cannot outrun its one "
                "handler; read the fractions as rough")
        if any(w > 1 and f > 1.0 for w, f in fractions):
            notes.append("a point with more workers runs that many handlers at once, so its fraction of the "
                         "one-handler limit can pass 100%")
        if notes:
            out["in_process_limit_note"] = "; ".join(notes)
    return out


def summary_lines(res, s: dict) -> list[str]:
    """The summary as the CLI prints it: one line per contender, then the ratios and the times."""
    lines = []
    for name, key in (("default", "default"), ("recommended", "recommended"), ("grid best", "grid_best")):
        c = s.get(key)
        if c is None:
            continue
        lim = f", {c['of_limit']:.0%} of the in-process limit" if c.get("of_limit") is not None else ""
        lines.append(f"{name:<12} {c['setting']:<18} {c['throughput_rps']:8.1f} req/s  p99 {c['p99_ms']:7.2f} ms"
                     f"  ({c['from']}{lim}; search: {c['search']['throughput_rps']} req/s)")
    notes = s.get("head_to_head", {}).get("ratio_notes", {})
    for key, what in (("recommended_vs_default", "recommended / default"),
                      ("guided_over_grid_best", "recommended / grid best")):
        if s.get(key) is not None:
            lines.append(f"{what}: {s[key]:.3f}" + (f" ({notes[key]})" if key in notes else ""))
    times = (f"measuring: guided {s['guided_measuring_s']} s of a {s['budget_s']:g} s budget "
             f"({s['guided_points']} points)")
    if "grid_measuring_s" in s:
        times += f", grid {s['grid_measuring_s']} s ({s['grid_points']} points)"
    if "head_to_head" in s:
        times += f", head-to-head {s['head_to_head']['seconds']} s"
    if "guided_time_over_grid_time" in s:
        times += (f"; guided / grid time {s['guided_time_over_grid_time']:.3f} with each shortlist's head-to-head "
                  f"rounds ({s['search_guided_time_over_grid_time']:.3f} searches only)")
    return lines + [times]


def objective_text(res) -> str:
    if res.p99_ms is None:
        return f"objective: none ({res.p99_from}): the knee of the frontier"
    return f"objective: p99 <= {res.p99_ms:g} ms ({res.p99_from})"


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


def curves(measured: list[Measurement]) -> list[tuple[str, list[Measurement]]]:
    """The plot's curves: one per (batch size, workers), and per threads and delay where several were measured
    (a curve then joins points that differ in concurrency only), each as its legend label and its points in
    concurrency order."""
    several = {k: len({getattr(m.setting, k) for m in measured}) > 1 for k in ("max_batch_delay_ms", "threads")}

    def key(m: Measurement) -> tuple:
        st = m.setting
        return (st.batch_size, st.workers, (st.threads or 0) if several["threads"] else 0,
                st.max_batch_delay_ms if several["max_batch_delay_ms"] else 0)

    out = []
    for b, w, t, d in sorted({key(m) for m in measured}):
        pts = sorted((m for m in measured if key(m) == (b, w, t, d)), key=lambda m: m.setting.concurrency)
        out.append((f"batch {b}, {w} worker{'s' if w > 1 else ''}"
                    + (f", threads {t or 'env'}" if several["threads"] else "")
                    + (f", delay {d} ms" if several["max_batch_delay_ms"] else ""), pts))
    return out


def _plot(measured: list[Measurement], title: str) -> str | None:
    """Throughput against p99, one curve per ``curves``, each point labelled with its client concurrency."""
    if not measured:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 5))
    lines = curves(measured)
    # colour by (batch, workers), line style by threads and delay: a colour is never reused for another batch
    pairs = sorted({(m.setting.batch_size, m.setting.workers) for m in measured})
    palette = plt.get_cmap("tab10" if len(pairs) <= 10 else "tab20")
    colours = {k: palette(i % 20) for i, k in enumerate(pairs)}
    styles = {k: ("-", "--", ":", "-.")[i % 4] for i, k in enumerate(sorted(
        {(m.setting.threads or 0, m.setting.max_batch_delay_ms) for m in measured}))}
    for label, pts in lines:
        st = pts[0].setting
        line, = ax.plot([m.p99_ms for m in pts], [m.throughput_rps for m in pts], marker="o", label=label,
                        color=colours[(st.batch_size, st.workers)],
                        linestyle=styles[(st.threads or 0, st.max_batch_delay_ms)])
        for m in pts:
            ax.annotate(f"c{m.setting.concurrency}", (m.p99_ms, m.throughput_rps), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=line.get_color())
        bad = [m for m in pts if not m.keeps_answers]
        if bad:
            ax.scatter([m.p99_ms for m in bad], [m.throughput_rps for m in bad], marker="x", s=90, color="#c62828",
                       zorder=3, label=None)
    ax.set_xlabel("client p99 (ms)")
    ax.set_ylabel("throughput (requests/s)")
    ax.set_title(title + " (labels: client concurrency; red x: answers changed, never recommended)", fontsize=10)
    ax.legend(fontsize=7, ncol=2 if len(lines) > 8 else 1)
    ax.grid(alpha=0.3)
    return _png(fig)


def _table(rows: list[dict]) -> str:
    cols = ["setting", "phase", "throughput_rps", "p50_ms", "p99_ms", "of_limit", "formed_batches", "stable", "windows",
            "answers", "detail", "seconds"]
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = []
    for r in rows:
        cls = "ok" if r["answers"] == "same" else "bad"
        cells = "".join(f"<td class='{cls}'>{html.escape(str(r[c]))}</td>" if c == "answers" else
                        f"<td>{html.escape(_cell(r[c]))}</td>" for c in cols)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {x}" for k, x in v.items()) or "-"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _summary_table(res, s: dict) -> str:
    e = html.escape
    head = ("<tr><th></th><th>setting</th><th>throughput (req/s)</th><th>p99 (ms)</th><th>of the in-process limit</th>"
            "<th>from</th><th>search: throughput</th><th>search: p99</th><th>head-to-head rounds (req/s)</th></tr>")
    trs = []
    for name, key in (("default", "default"), ("recommended", "recommended"), ("grid best", "grid_best")):
        c = s.get(key)
        if c is None:
            continue
        lim = "-" if c.get("of_limit") is None else f"{c['of_limit']:.0%}"
        trs.append(f"<tr><th>{name}</th><td>{e(c['setting'])}</td><td><b>{c['throughput_rps']}</b></td>"
                   f"<td>{c['p99_ms']}</td><td>{lim}</td><td>{e(c['from'])}</td>"
                   f"<td>{c['search']['throughput_rps']}</td><td>{c['search']['p99_ms']}</td>"
                   f"<td>{e(', '.join(map(str, c.get('rounds_rps', []))) or '-')}</td></tr>")
    notes = s.get("head_to_head", {}).get("ratio_notes", {})
    facts = []
    for key, what in (("recommended_vs_default", "recommended / default"),
                      ("guided_over_grid_best", "recommended / grid best"),
                      ("search_recommended_vs_default", "recommended / default, search figures"),
                      ("search_guided_over_grid_best", "recommended / grid best, search figures"),
                      ("guided_time_over_grid_time", "guided measuring time / grid measuring time, each with the "
                                                     "head-to-head rounds of its shortlist"),
                      ("search_guided_time_over_grid_time", "guided measuring time / grid measuring time, searches "
                                                            "only")):
        if s.get(key) is not None:
            facts.append((what, f"{s[key]:.3f}" + (f" ({notes[key]})" if key in notes else "")))
    facts.append(("guided search", f"{s['guided_points']} points, {s['guided_measuring_s']} s of a {s['budget_s']:g} s "
                                   f"budget" + (" (cut short by the budget)" if s["out_of_budget"] else "")))
    if "grid_measuring_s" in s:
        facts.append(("grid", f"{s['grid_points']} points, {s['grid_measuring_s']} s"))
    if "head_to_head" in s:
        h = s["head_to_head"]
        facts.append(("head-to-head", f"{h['rounds']} interleaved round{'s' if h['rounds'] > 1 else ''} of "
                                      f"{', '.join(h['contenders'])}, "
                                      f"{h['seconds']} s"))
    st = s["stability"]
    facts.append(("stability", f"{st['unstable']} of {st['points']} search points UNSTABLE (last two counted windows "
                               f"apart by more than {res.spec.tune.stability_tolerance:g}: {st['on_throughput']} on "
                               f"throughput, {st['on_p99']} on p99)"))
    if "in_process_limit_rows_per_s" in s:
        facts.append(("in-process limit", ", ".join(f"batch {b}: {r} rows/s" for b, r in
                                                    s["in_process_limit_rows_per_s"].items())
                      + f" (one handler through TorchServe's Service.predict, no server; {s['in_process_limit_s']} s)"
                      + (f". {s['in_process_limit_note']}" if "in_process_limit_note" in s else "")))
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts)
    return f"<table>{head}{''.join(trs)}</table><table>{rows}</table>"


def render(res, doc: dict) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tune {e(res.spec.name)}</title>"
             f"<style>{CSS}</style></head><body><h1>tune: {e(res.spec.name)}</h1>"]
    s = doc["summary"]
    rec = s["recommended"]
    parts.append(f"<p>recommended: <b>{e(rec['setting']) if rec else 'none'}</b>"
                 + (f" &mdash; {rec['throughput_rps']} req/s, p99 {rec['p99_ms']} ms ({e(rec['from'])})" if rec else "")
                 + f"<br>chosen as {e(res.how)}<br>{e(objective_text(res))}</p>")
    parts.append(_summary_table(res, s))
    parts.append(f"<p class='facts'>points applied by: {e(res.apply_mode)} ("
                 + e(", ".join(f"{k} {round(v, 2) if isinstance(v, float) else v}"
                               for k, v in res.apply_figures.items())) + "); model API "
                 + ("on for tune only (loopback, token authorization, allowed_urls pinned to the run's store)"
                    if res.apply_mode == "register" or "register_s" in res.apply_figures else "off") + "</p>")
    if doc.get("model_config"):
        parts.append("<h2>model-config.yaml</h2><pre>" + e(yaml.safe_dump(doc["model_config"], sort_keys=False))
                     + "</pre><h2>spec fragment</h2><pre>" + e(yaml.safe_dump(doc["spec_fragment"], sort_keys=False))
                     + "</pre>")
    if doc.get("head_to_head"):
        parts.append("<h2>head-to-head: every measurement, round by round (each round's order rotated)</h2>"
                     + _table(doc["head_to_head"]))
    for name, measured in (("guided", res.guided), ("grid", res.grid)):
        if measured:
            img = _plot(measured, f"{name} search")
            parts.append(f"<h2>{name} search: {len(measured)} points</h2>" + (f"<img src='{img}'>" if img else ""))
            parts.append(_table([_row(m, res) for m in measured]))
    if res.rate:
        r = res.rate
        parts.append(f"<h2>open loop (--rate)</h2><p>highest rate holding p99 &le; {r['objective_p99_ms']:g} ms "
                     f"({e(r['objective_from'])}): <b>{r['highest_rate']}</b> req/s</p><table><tr><th>rate</th>"
                     "<th>throughput</th><th>p99 (ms)</th><th>answers</th><th>holds</th></tr>"
                     + "".join(f"<tr><td>{t['rate']}</td><td>{t['throughput_rps']:.1f}</td><td>{t['p99_ms']:.2f}</td>"
                               f"<td>{e(t['answers'])}</td><td>{t['holds']}</td></tr>" for t in r["tried"])
                     + "</table>")
    for n in res.notes:
        parts.append(f"<p class='warn'>{e(n)}</p>")
    parts.append("</body></html>")
    return "".join(parts)


def _versus_rows(res) -> list[dict] | None:
    """The head-to-head's measurements in the order taken (round by round), each named by its contender."""
    if res.versus is None:
        return None
    taken = sorted(((k, c, m) for c in res.versus.contenders for k, m in enumerate(c.rounds)),
                   key=lambda t: (t[0], [x.setting for x in res.versus.contenders].index(t[1].setting)))
    return [_row(m, res) | {"phase": f"round {k + 1}: {' = '.join(c.names)}"} for k, c, m in taken]


def write_tune_report(res) -> dict:
    doc = {"spec_path": str(res.spec.spec_path), "model": res.spec.name, "objective_p99_ms": res.p99_ms,
           "objective_from": res.p99_from, "ranges": asdict(res.ranges), "apply": res.apply_mode,
           "apply_figures": res.apply_figures, "summary": summary(res), "guided": [_row(m, res) for m in res.guided],
           "confirmed": _row(res.confirmed, res) if res.confirmed else None,
           "head_to_head": _versus_rows(res),
           "grid": [_row(m, res) for m in res.grid] if res.grid is not None else None, "rate": res.rate,
           "model_config": model_config(res), "spec_fragment": spec_fragment(res), "notes": res.notes}
    (res.run_dir / "tune.json").write_text(json.dumps(jsonable(doc), indent=1))
    (res.run_dir / "report.html").write_text(render(res, doc), encoding="utf-8")
    if doc["model_config"]:
        (res.run_dir / "model-config.yaml").write_text(yaml.safe_dump(doc["model_config"], sort_keys=False))
        (res.run_dir / "spec-fragment.yaml").write_text(yaml.safe_dump(doc["spec_fragment"], sort_keys=False))
    return doc
