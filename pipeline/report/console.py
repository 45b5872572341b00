"""The verdict block printed at the end of a run: verdict first, then why, then where the report is."""

from __future__ import annotations

from pathlib import Path

from pipeline.names import Stage, StageName, handled_at_batch
from pipeline.report.text import fmt, metric
from pipeline.tasks.registry import task_of_report

MAX_FAILED_SHOWN = 12
MAX_WARNED_SHOWN = 4


def render_console(rep: dict, *, width: int = 12) -> str:
    """Verdict, failed checks (value, baseline, limit), attribution, the stages side by side, the report's path."""
    gate = rep.get("gate") or {}
    checks = gate.get("checks", [])
    failed = [c for c in checks if c["is_gating"] and not c["passed"]]
    warned = [c for c in checks if not c["is_gating"] and not c["passed"]]
    head = f"VERDICT: {rep['verdict']} (exit {rep['exit_code']})"
    if checks and rep.get("complete"):
        head += f"   {sum(1 for c in checks if c['passed'])}/{len(checks)} checks passed" + (
            f", {len(warned)} warning(s)" if warned else "")
    out = [head]
    if rep.get("error"):
        out.append(f"{rep['error']['type']}: {rep['error']['message']}")
        out += [f"  - {d}" for d in rep["error"].get("details", [])[:15]]
    if checks and not rep.get("complete"):
        # The checks of the stages that never ran all fail "not evaluated": one line says so, not one each.
        unrun = [c for c in failed if not c.get("evaluated", True)]
        failed = [c for c in failed if c.get("evaluated", True)]
        missing = not_run(rep)
        out.append("gate: not evaluated, the run did not complete" + (
            f"; did not run: {', '.join(missing)}" if missing else "") + (
            f"; {len(unrun)} check(s) without results" if unrun else "") + (
            f"; {len(failed)} failed on the partial results:" if failed else ""))
    for c in failed[:MAX_FAILED_SHOWN]:
        out.append(f"  FAIL {c['stage']}: {c['name']}: value {fmt(c['value'])}, baseline {fmt(c['baseline'])}, "
                   f"limit {c['limit']}" + (f" ({c['detail']})" if c["detail"] else ""))
    if len(failed) > MAX_FAILED_SHOWN:
        out.append(f"  ... and {len(failed) - MAX_FAILED_SHOWN} more failed checks in the report")
    out += _failed_rows(rep)
    for c in warned[:MAX_WARNED_SHOWN]:
        out.append(f"  WARN {c['stage']}: {c['name']}: value {fmt(c['value'])}, limit {c['limit']}"
                   + (f" ({c['detail']})" if c.get("detail") else ""))
    if len(warned) > MAX_WARNED_SHOWN:
        out.append(f"  ... and {len(warned) - MAX_WARNED_SHOWN} more warnings in the report")
    a = rep.get("attribution")
    if a and (rep.get("status") != "passed" or a.get("layer")):
        out.append(f"attribution: {a['summary']}")
    for exc in (rep.get("server_failures") or [])[:2]:
        out.append("handler raised (from TorchServe's model_log.log):")
        out += [f"  {ln}" for ln in exc]
    metrics = rep.get("metrics") or {}
    if metrics:
        out.append("")
        out += _stage_table(metrics, width, task_of_report(rep).tracked)  # the task's figures (tasks/<task>.py)
        first = next(iter(metrics.values()))
        if first.get("classes_total") and first.get("classes_averaged") != first.get("classes_total"):
            out.append(f"macro over the {first['classes_averaged']} classes present among the "
                       f"{first['classes_total']} (gate.metric_classes: {first.get('metric_classes')})")
        for stage, ids in ((rep.get("plan") or {}).get("shared_name_rows") or {}).items():
            out.append(f"{stage}: {len(ids)} row(s) answered a name two classes share, compared by name")
        split = rep.get("served_latency_split") or {}
        if split.get("server_prediction_time"):
            out.append("served p50 split".ljust(18) + f"model {fmt(split['server_prediction_time']['p50'], 3)} ms, "
                       f"overhead {fmt(split['overhead']['p50'], 3)} ms")
    if rep.get("published"):
        out.append(f"published: {rep['published']}")
    elif rep.get("status") == "passed":
        out.append("published: no (not asked to publish)")
    out.append(_where(rep.get("run_dir")))
    return "\n".join(out)


MAX_ROW_EXAMPLES = 3
PIPELINE = ("dataset", "baseline", "export", "archive", "handled", "serve", "replay", "compare")


def not_run(rep: dict) -> list[str]:
    """The stages of the run's plan after the one it stopped in (stage_seconds holds those that started)."""
    ran = list(rep.get("stage_seconds") or {})
    planned = {StageName.of(s) for s in (rep.get("plan") or {}).get("stages") or ()}  # the report's text, read once
    wanted = {"dataset", "baseline"}  # compare is not listed: an error run compares its partial results
    if "exported" in planned:
        wanted.add("export")
    if any(s.stage == Stage.HANDLED for s in planned):
        wanted |= {"archive", "handled"}
    if "served" in planned:
        wanted |= {"serve", "replay"}
    if not rep.get("plan"):
        wanted = set(PIPELINE) - {"compare"}
    last = max((PIPELINE.index(s) for s in ran if s in PIPELINE), default=-1)
    return [s for s in PIPELINE[last + 1:] if s in wanted and s not in ran]


def _failed_rows(rep: dict) -> list[str]:
    """One failed row per stage and error class, with its message: what the handler raised, quoted."""
    stages = rep.get("stages") or {}
    handled = stages.get("handled") or {}
    batch = handled.get("batch_size")
    blocks = [("handled", handled.get("batch1")),
              (str(handled_at_batch(batch)) if isinstance(batch, int) and batch >= 1 else "handled@batch?",
               handled.get("batched")),
              ("served", stages.get("replay"))]
    out = []
    for stage, block in blocks:
        for cls, ex in ((block or {}).get("examples") or {}).items():
            out.append(f"  {stage} row {ex['id']} ({(block.get('errors') or {}).get(cls, 1)} like it): {cls}: "
                       f"{ex['message']}")
    return out[:MAX_ROW_EXAMPLES]


def _where(run_dir: str | None) -> str:
    """The report's path, or that none could be written (a full disk: the error above says which file failed)."""
    if run_dir is None:
        return "report: none (the run stopped before it had a folder)"
    for name in ("report.md", "report.json"):
        if (Path(run_dir) / name).is_file():
            return f"report: {run_dir}/{name}"
    return f"report: none could be written in {run_dir} (see the error above)"


def _stage_table(metrics: dict, width: int,
                 figures: tuple[str, ...] = ("accuracy", "precision_macro", "recall_macro", "f1_macro")) -> list[str]:
    """The stages side by side; each column as wide as its widest cell, so no two cells run together."""
    names = list(metrics)
    rows = [("metric", names)]
    rows += [(m, [metric(metrics[n], m) for n in names]) for m in figures]
    rows.append(("rows answered", [f"{metrics[n]['answered']}/{metrics[n]['rows']}" for n in names]))
    for k in ("p50", "p99"):
        rows.append((f"latency {k} (ms)", [fmt(metrics[n]["latency"][k], 3) if metrics[n].get("latency") else "-"
                                           for n in names]))
    widths = [max(width, *(len(cells[i]) + 2 for _, cells in rows)) for i in range(len(names))]
    label = max(18, *(len(name) + 1 for name, _ in rows))
    return [name.ljust(label) + "".join(c.rjust(w) for c, w in zip(cells, widths)) for name, cells in rows]


def verdict_json(rep: dict) -> dict:
    """The report's verdict block, for ``--json``."""
    gate = rep.get("gate") or {}
    return {
        "verdict": rep.get("verdict"), "status": rep.get("status"), "exit_code": rep.get("exit_code"),
        "complete": rep.get("complete"), "model": rep.get("model"), "run_dir": rep.get("run_dir"),
        "error": rep.get("error"),
        "failed_checks": [c for c in gate.get("checks", []) if c["is_gating"] and not c["passed"]],
        "checks": len(gate.get("checks", [])), "attribution": (rep.get("attribution") or {}).get("summary"),
        "published": rep.get("published"),
    }
