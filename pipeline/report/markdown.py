"""report.md: the release checklist, verdict first, then every check and the stages side by side."""

from __future__ import annotations

from pipeline.evaluate.latency import LABELS, ROW_LABELS
from pipeline.report.text import (PROBE_LEGEND, answers_line, averaged_over, check_word, differing_rows_header, fmt,
                                  labels_word, metric, section_markdown, shown_classes, table,
                                  task_sections)
from pipeline.report.tsconfig import markdown_section

SUMMARY_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted")


def _gate(rep: dict) -> list[str]:
    gate = rep.get("gate")
    if not gate:
        return []
    checks = gate["checks"]
    passed = sum(1 for c in checks if c["passed"])
    warned = sum(1 for c in checks if not c["passed"] and not c["is_gating"])
    if rep.get("complete"):
        head = f"## Gate: {passed} of {len(checks)} checks passed" + (
            f", {warned} warning(s) not gated" if warned else "")
    else:
        head = "## Gate: not evaluated (the run did not complete); checks on the partial results:"
    rows = [[check_word(c), c["stage"], c["name"], fmt(c["value"]), fmt(c["baseline"]), c["limit"], c["detail"]]
            for c in checks]
    return [head, ""] + table(["result", "stage", "check", "value", "baseline", "limit", "detail"], rows) + [""]


def _metrics(rep: dict) -> list[str]:
    metrics = rep.get("metrics")
    if not metrics:
        return []
    names = list(metrics)
    lines = ["## Metrics, stage by stage", ""]
    rows = [[m] + [metric(metrics[n], m) for n in names] for m in SUMMARY_METRICS]
    rows.append(["rows answered"] + [f"{metrics[n]['answered']}/{metrics[n]['rows']}" for n in names])
    lines += table(["metric"] + names, rows) + [""]
    over = averaged_over(metrics[names[0]])
    if over:
        lines += [over[0].upper() + over[1:] + ".", ""]
    undefined = {f"{n}: {k}": why for n in names for k, why in (metrics[n].get("undefined") or {}).items()}
    if undefined:
        lines += ["Undefined figures (never shown as 0):", ""] + [f"- {k}: {v}" for k, v in undefined.items()] + [""]
    lines += ["### Per class (precision / recall / F1)", ""]
    keys = list(metrics[names[0]]["per_class"])
    shown, hidden = shown_classes(metrics)
    classes = [keys[k] for k in shown]
    rows = [[c, str(metrics[names[0]]["per_class"][c]["support"])]
            + [" / ".join("undefined" if metrics[n]["per_class"][c][k] is None
                          else fmt(metrics[n]["per_class"][c][k], 3) for k in ("precision", "recall", "f1"))
               for n in names] for c in classes]
    lines += table(["class", "rows"] + names, rows) + [""]
    if hidden:
        lines += [f"... {hidden} more class(es) without rows and never predicted (all {len(keys)} are in "
                  "report.json).", ""]
    lines += _shared_rows(rep)
    lines += ["### Latency per row (ms)", ""]
    rows = []
    for n in names:
        lat = metrics[n].get("latency")
        if lat:
            rows.append([n] + [fmt(lat[k], 3) for k in ("p50", "p95", "p99", "mean", "max")] + [str(lat["count"])])
    split = rep.get("served_latency_split") or {}
    for key, label in (("server_prediction_time", "served: server PredictionTime"),
                       ("overhead", "served: HTTP + queue overhead")):
        lat = split.get(key)
        if lat:
            rows.append([label] + [fmt(lat[k], 3) for k in ("p50", "p95", "p99", "mean", "max")] + [str(lat["count"])])
    lines += table(["stage", "p50", "p95", "p99", "mean", "max", "n"], rows) + [""]
    return lines


def _shared_rows(rep: dict) -> list[str]:
    shared = (rep.get("plan") or {}).get("shared_name_rows") or {}
    out = []
    for stage, ids in shared.items():
        out.append(f"- {stage}: {len(ids)} row(s) answered a name several classes share, compared by name: "
                   f"{', '.join(ids[:10])}{f', ... {len(ids) - 10} more' if len(ids) > 10 else ''}")
    return (["Answers naming a shared class name (see the label map warning under What ran):", ""] + out + [""]
            if out else [])


def _attribution(rep: dict) -> list[str]:
    a = rep.get("attribution")
    if not a:
        return []
    lines = ["## Where the answers part from the baseline", "", f"**{a['summary']}**", ""]
    rows = [[s["stage"], s["reference"], "differs" if s["differs"] else "same", str(s["disagreeing"]),
             fmt(s["max_output_diff"]), s["quantity"] or "-", s["layer"] if s["differs"] else ""] for s in a["steps"]]
    return lines + table(["stage", "against", "result", differing_rows_header(rep), "max output diff",
                          "compared", "blame"], rows) + [""]


def _tests(rep: dict) -> list[str]:
    tests = rep.get("paired_tests")
    if not tests:
        return []
    rows = [[n, fmt(t["agreement"]), str(t["reference_only_correct"]), str(t["candidate_only_correct"]),
             fmt(t["mcnemar_p"]),
             f"{t['delta_accuracy']:+.4f} [{t['delta_accuracy_ci'][0]:+.4f}, {t['delta_accuracy_ci'][1]:+.4f}]"
             if t["delta_accuracy"] is not None and t["delta_accuracy_ci"][0] is not None else "-",
             f"{fmt(t['output']['max_abs'])} ({t['output']['quantity'] or t['output']['reason']})"]
            for n, t in tests.items()]
    return ["## Paired tests against the baseline", ""] + table(
        ["candidate", "agreement", "only baseline right", "only candidate right", "McNemar p",
         "delta accuracy [95% CI]", "max output diff"], rows) + [""]


def _rows_tables(rep: dict) -> list[str]:
    lines = []
    if rep.get("flipped_rows"):
        stages = list(rep["flipped_rows"][0]["predictions"])
        lines += [f"## Rows whose prediction differs from the baseline's ({rep['flipped_total']})", ""]
        rows = [[r["id"], str(r["label"])] + [f"{fmt(r['predictions'][s][0])} ({fmt(r['predictions'][s][1], 3)})"
                                              for s in stages] for r in rep["flipped_rows"]]
        lines += table(["id", "label"] + [f"{s} (p)" for s in stages], rows) + [""]
    if rep.get("diverging_rows"):
        lines += ["## Rows whose outputs differ beyond the tolerance (largest first)", ""]
        rows = [[r["id"], f"{r['stage']} vs {r['reference']}", r["quantity"], fmt(r["max_abs_diff"]),
                 ", ".join("-" if v is None else f"{v:.6g}" for v in r["reference_values"][:12]),
                 ", ".join("-" if v is None else f"{v:.6g}" for v in r["candidate_values"][:12])]
                for r in rep["diverging_rows"]]
        lines += table(["id", "stages", "compared", "max abs diff", "reference outputs", "candidate outputs"],
                       rows) + [""]
    return lines


def _plan(rep: dict) -> list[str]:
    plan, ds = rep.get("plan"), rep.get("dataset")
    if not plan:
        return []
    a = plan["answers"]
    lines = ["## What ran", "",
             f"- handler: {plan['handler']['display']}",
             f"- reference preprocessing of the baseline: `{plan['reference']['name']}` "
             f"({plan['reference']['description']})",
             f"- answers: {answers_line(rep, a)}",
             f"- {labels_word(rep)}: {len(plan['class_labels'])} from {plan['class_map_source']} "
             f"{plan['class_labels'][:10]}"
             + (f" ... {len(plan['class_labels']) - 10} more" if len(plan['class_labels']) > 10 else ""),
             f"- stages: {', '.join(plan['stages'])}"]
    if ds:
        lines.append(f"- dataset: {ds['rows']} {ds['kind']} rows from {ds['source']} (sent as {ds['content_type']})")
        lines += [f"- {n}" for n in ds["notes"]]
    lines += [f"- {n}" for n in plan["notes"]]
    return lines + [""]


def _export(rep: dict) -> list[str]:
    ex = (rep.get("stages") or {}).get("export")
    if not ex:
        return []
    if "not_applicable" in ex:
        return ["## Export", "", f"Export {ex['not_applicable']}.", ""]
    c = ex["consistency"]
    lines = ["## Export", "", f"Mode `{ex['mode']}`{' (optimized)' if ex['optimized'] else ''}: max abs diff "
             f"{fmt(c['max_abs_diff'])}, mean {fmt(c['mean_abs_diff'])}, max relative {fmt(c['max_rel_diff'])}, "
             f"agreement {fmt(c['agreement'])} over {c['rows']} rows (tolerance {c['tolerance']:g}).", ""]
    if c["probes"]:
        rows = [[p["name"], str(p["batch_size"]), str(p["rows"]), fmt(p["max_abs_diff"]),
                 "ok" if p["is_ok"] else "FAIL", p["error"] or ""] for p in c["probes"]]
        lines += table(["probe", "batch", "rows", "max abs diff", "result", "note"], rows) + [""]
    rows = [[str(t["batch_size"]), fmt(t["eager_median_us"], 1), fmt(t["exported_median_us"], 1),
             fmt(t["ratio"], 3)] for t in ex["timings"]]
    if rows:  # none in eager mode, nor for an archive's own model (--mar): the notes say why
        lines += ["In-process latency (median of many repeats, us):", ""]
        lines += table(["batch", "eager", "exported", "exported / eager"], rows) + [""]
    lines += [f"- {n}" for n in ex["notes"]]
    if ex["warnings"]:
        lines += ["Warnings captured during export (each shown once):", ""]
        lines += [f"- {w['category']} x{w['count']}: {w['message']}" for w in ex["warnings"]]
    return lines + [""]


def _answered(name: str, block: dict | None) -> list[str]:
    if not block:
        return []
    line = f"- {name}: {block['answered']} of {block['rows']} rows answered"
    if block["errors"]:
        line += f"; errors {block['errors']}"
    out = [line]
    for cls, ex in block.get("examples", {}).items():
        out.append(f"  - {cls}, e.g. id {ex['id']}: {ex['message']}")
    return out


def _probes(rep: dict) -> list[str]:
    probes = rep.get("probes")
    if not probes:
        return []
    by_name: dict[str, dict] = {}
    for stage in ("handled", "served"):
        for p in probes.get(stage) or []:
            by_name.setdefault(p["probe"], {"expect": p["expect"]})[stage] = p
    lines = ["## Handler input probes (variants real clients send)", "", PROBE_LEGEND, ""]
    rows = []
    for name, entry in by_name.items():
        cells = []
        for stage in ("handled", "served"):
            p = entry.get(stage)
            if p is None:
                cells.append("-")
                continue
            word = p["outcome"] + ("" if p["passed"] else " (FAIL)") + (" (WARN)" if p.get("warning") else "")
            cells.append(word + (f": {p['message']}" if p["message"] else ""))
        rows.append([name, entry["expect"], *cells])
    return lines + table(["probe", "expect", "handled", "served"], rows) + [""]


def _handled_and_replay(rep: dict) -> list[str]:
    stages = rep.get("stages") or {}
    lines = []
    h = stages.get("handled")
    if h:
        lines += ["## Handled (the archive's handler in-process)", "",
                  f"Handler `{h['handler']}` loaded in {h['load_s']:.2f} s; output in {h['log']}."]
        lines += _answered("batch 1", h["batch1"]) + _answered(f"batch {h['batch_size']}", h["batched"]) + [""]
    rp = stages.get("replay")
    if rp:
        lines += ["## Replay", "", f"{rp['answered']} answered, {rp['failed']} failed of {rp['rows']} rows; "
                  f"concurrency {rp['concurrency']}, {rp['warmup_requests']} warm-up requests excluded, "
                  f"{fmt(rp['throughput_rps'], 1)} requests/s, client CPU {fmt(rp['client_cpu_us_per_request'], 0)} "
                  f"us per request."]
        lines += _answered("served", rp)
        if rp.get("abort_reason"):
            lines.append(f"- stopped early: {rp['abort_reason']}")
        lines.append("")
    for exc in rep.get("server_failures") or []:
        lines += ["Handler exception quoted from TorchServe's model_log.log:", "", "```", *exc, "```", ""]
    return lines


def _where_time_goes(rep: dict) -> list[str]:
    """The served latency by part (``served_latency_split.breakdown``, ``evaluate.latency``)."""
    b = (rep.get("served_latency_split") or {}).get("breakdown")
    if not b:
        return []
    lines = ["## Where the time goes (served, ms)", "",
             f"{b['replayed']} replayed rows: " + ", ".join(f"{n} {ROW_LABELS[k]}" for k, n in b["rows"].items() if n)
             + ".", ""]

    def row(key: str, s: dict | None) -> list[str]:
        return [LABELS[key]] + ([fmt(s[k], 3) for k in ("p50", "p90", "p99", "max")] + [str(s["count"])]
                                if s else ["-"] * 4 + ["0"])

    rows = [row(k, s) for k, s in b["components"].items()]
    lines += ["Per request, joined by request id:", ""]
    lines += table(["part", "p50", "p90", "p99", "max", "n"], rows) + [""]
    if b.get("frontend"):
        lines += ["TorchServe's frontend (ts_metrics.log, no request id in 0.12: distributions, not joined):", ""]
        lines += table(["part", "p50", "p90", "p99", "max", "n"],
                       [row(k, s) for k, s in b["frontend"].items()]) + [""]
    lines += [f"- {n}" for n in b["notes"]]
    return lines + [""]


def render_markdown(rep: dict) -> str:
    """report.md: the verdict first, then the checks, the blame, metrics, latency, sizes and rows."""
    lines = [f"# {rep['verdict']}: {rep.get('model')} {rep.get('version') or ''}".rstrip(), ""]
    if rep.get("error"):
        lines += [f"**{rep['error']['type']}**: {rep['error']['message']}", ""]
        lines += [f"- {d}" for d in rep["error"].get("details", [])[:20]]
        lines.append("")
    if not rep.get("complete"):
        lines += ["**This run did not complete: its figures are partial and it is not a pass.**", ""]
    if rep.get("published"):
        lines += [f"Published: `{rep['published']}`", ""]
    elif (rep.get("release") or {}).get("state") == "pending":
        lines += ["**Release pending: this report was written before the archive was published; until it is "
                  "rewritten as published, the model store holds the previous release** (archive sha256 "
                  f"`{rep['release']['archive_sha256']}`).", ""]
    sections = task_sections(rep)
    if sections is None:
        lines += _gate(rep) + _attribution(rep) + _metrics(rep) + _tests(rep) + _rows_tables(rep) + _plan(rep)
    else:  # another task's metrics and rows (tasks/<task>.py report_sections); the diverging rows are shared
        lines += _gate(rep) + _attribution(rep) + [ln for sec in sections for ln in section_markdown(sec)]
        lines += _rows_tables({**rep, "flipped_rows": None}) + _plan(rep)
    lines += _export(rep) + _probes(rep) + _handled_and_replay(rep) + _where_time_goes(rep) + markdown_section(rep)
    sizes = rep.get("sizes_bytes")
    if sizes:
        lines += ["## Sizes", ""] + table(["artefact", "bytes"], [[k, str(v)] for k, v in sizes.items()]) + [""]
    if rep.get("stage_seconds"):
        lines += ["## Stage wall time (s)", ""]
        lines += table(["stage", "seconds"], [[k, f"{v:.2f}"] for k, v in rep["stage_seconds"].items()]) + [""]
    lines += ["## Environment", ""] + [f"- {k}: {v}" for k, v in (rep.get("environment") or {}).items()]
    return "\n".join(lines) + "\n"
