"""Stage 7, report: report.json (versioned schema), report.md, per-row results, console summary.

Every file is written atomically (temporary file, fsync, rename), so a half-written report
is never read. A report whose run did not finish says so in ``status`` and ``complete``.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.files import write_atomic

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.run.runner import RunState

log = logging.getLogger(__name__)

SCHEMA = "package-validate/report/v1"
VERDICT = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "interrupted": "INTERRUPTED"}


def _jsonable(x: Any) -> Any:
    if is_dataclass(x) and not isinstance(x, type):
        return _jsonable(asdict(x))
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, np.integer):
        return int(x)
    return x


def environment() -> dict[str, str]:
    """Versions that can change results: Python, torch, TorchServe, the archiver, Java, the CPU."""
    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
           "cpu": platform.processor() or platform.machine(), "torch_threads": str(torch.get_num_threads())}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    env["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    for pkg in ("torchserve", "torch-model-archiver", "scikit-learn", "numpy"):
        try:
            from importlib.metadata import version

            env[pkg] = version(pkg)
        except Exception:
            env[pkg] = "not installed"
    return env


def _stage_block(state: "RunState") -> dict:
    out: dict[str, Any] = {}
    if state.baseline is not None:
        b = state.baseline
        out["baseline"] = {"weights": str(b.weights_path), "weights_sha256": b.weights_sha256,
                           "weights_size_bytes": b.weights_size_bytes}
    if state.exported is not None:
        e = state.exported
        out["export"] = {
            "mode": e.mode, "path": str(e.path), "sha256": e.sha256, "size_bytes": e.size_bytes,
            "optimized": e.optimized, "notes": list(e.notes),
            "consistency": _jsonable(e.consistency),
            "timings": [dict(_jsonable(t), ratio=_jsonable(t.ratio)) for t in e.timings],
            "warnings": _jsonable(e.warnings),
        }
    if state.archive is not None:
        a = state.archive
        out["archive"] = {"mar": str(a.mar_path), "published": str(a.published_path) if a.published_path else None,
                          "sha256": a.sha256, "size_bytes": a.size_bytes, "manifest": a.manifest,
                          "model_config": a.model_config}
    if state.server is not None:
        s = state.server
        out["server"] = {"inference_url": s.inference_url, "model": s.model_name, "java": s.java,
                         "startup_s": round(s.startup_s, 3), "logs": str(s.log_dir) if s.log_dir else None,
                         "token_auth": s.inference_token is not None, "started_by_pipeline": s.pid is not None}
    if state.replay is not None:
        r = state.replay
        out["replay"] = {"rows": len(r.rows), "answered": r.answered, "failed": r.failed,
                         "error_rate": _jsonable(r.error_rate), "errors": r.error_counts(),
                         "complete": r.is_complete, "abort_reason": r.abort_reason,
                         "concurrency": r.concurrency, "rate": r.rate, "warmup_requests": r.warmup_requests,
                         "wall_s": round(r.wall_s, 3), "throughput_rps": _jsonable(r.throughput_rps),
                         "client_cpu_us_per_request": _jsonable(r.client_cpu_us_per_request)}
    return out


def build_report(state: "RunState", status: str, exit_code: int, error: BaseException | None) -> dict:
    """The report as a JSON-ready dict, built from whatever the run produced.

    Args:
        state: the stages' results so far.
        status: passed, failed, error or interrupted.
        exit_code: the process exit code for this outcome.
        error: the error or interruption that ended the run early, if any.

    Returns:
        A dict following schema ``package-validate/report/v1``.
    """
    spec = state.spec
    cmp = state.comparison
    size_sizes = {}
    if state.baseline is not None:
        size_sizes["eager_weights"] = state.baseline.weights_size_bytes
    if state.exported is not None:
        size_sizes["exported"] = state.exported.size_bytes
    if state.archive is not None:
        size_sizes["mar"] = state.archive.size_bytes
    complete = status in ("passed", "failed")
    rep: dict[str, Any] = {
        "schema": SCHEMA,
        "status": status,
        "verdict": VERDICT[status],
        "complete": complete,
        "exit_code": exit_code,
        "started_at": state.started_at,
        "run_dir": str(state.run_dir) if state.run_dir else None,
        "spec": _jsonable(spec.model_dump(mode="json")) if spec else None,
        "spec_path": str(spec.spec_path) if spec and spec.spec_path else None,
        "model": spec.name if spec else None,
        "version": spec.version if spec else None,
        "error": None if error is None else {
            "type": type(error).__name__, "message": str(error).splitlines()[0] if str(error) else "",
            "details": getattr(error, "details", []),
        },
        "stage_seconds": dict(state.stage_seconds),
        "stages": _stage_block(state),
        "sizes_bytes": size_sizes,
        "environment": {**environment(), **({"java": state.server.java} if state.server and state.server.java else {})},
    }
    if cmp is not None:
        rep["metrics"] = {name: _jsonable(m) for name, m in cmp.stages.items()}
        rep["paired_tests"] = {name: _jsonable(t) for name, t in cmp.tests.items()}
        rep["flipped_rows"] = _jsonable(cmp.flipped)
        rep["flipped_total"] = cmp.flipped_total
        rep["diverging_rows"] = _jsonable(cmp.diverging)
        rep["served_latency_split"] = {
            "client": _jsonable(cmp.stages["served"].latency) if "served" in cmp.stages else None,
            "server_prediction_time": _jsonable(cmp.served_server_latency),
            "overhead": _jsonable(cmp.served_overhead_latency),
        }
        rep["attribution"] = attribute(state)
    if state.gate is not None:
        rep["gate"] = {"passed": state.gate.passed, "checks": _jsonable(state.gate.checks)}
    if state.leaked_ids is not None:
        rep["leakage"] = {"checked": True, "leaked_ids": list(state.leaked_ids)}
    return rep


def attribute(state: "RunState") -> str | None:
    """Where a served disagreement comes from: the export itself, or the handler/serving."""
    cmp = state.comparison
    if cmp is None or "served" not in cmp.tests:
        return None
    served_ok = cmp.tests["served"].agreement == 1.0 and (cmp.tests["served"].max_logit_diff or 0) <= (
        state.spec.gate.max_output_diff)
    if served_ok:
        return "served model matches the baseline"
    ex = state.exported
    if ex is not None and not ex.consistency.is_consistent:
        return ("export problem: the exported model already disagrees in-process "
                f"({len(ex.consistency.diverging_ids)} rows over tolerance, max diff {ex.consistency.max_abs_diff:.3g})")
    return "handler or serving problem: the exported model agrees in-process, the served answers do not"


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def render_markdown(rep: dict) -> str:
    """report.md: the verdict first, then the checks, metrics, latency, sizes and flipped rows."""
    lines = [f"# {rep['verdict']}: {rep.get('model')} {rep.get('version') or ''}".rstrip(), ""]
    if rep.get("error"):
        lines += [f"**{rep['error']['type']}**: {rep['error']['message']}", ""]
        lines += [f"- {d}" for d in rep["error"].get("details", [])[:20]]
        lines.append("")
    if not rep.get("complete"):
        lines += ["**This run did not complete: its figures are partial and it is not a pass.**", ""]
    if rep.get("attribution"):
        lines += [f"Attribution: {rep['attribution']}", ""]
    gate = rep.get("gate")
    if gate:
        failed = [c for c in gate["checks"] if c["is_gating"] and not c["passed"]]
        if rep.get("complete"):
            lines += [f"## Gate: {len(gate['checks']) - len(failed)} of {len(gate['checks'])} checks passed", ""]
        else:
            lines += ["## Gate: not evaluated (the run did not complete); checks on the partial results:", ""]
        rows = [["PASS" if c["passed"] else ("FAIL" if c["is_gating"] else "WARN"), c["stage"], c["name"],
                 _fmt(c["value"]), _fmt(c["baseline"]), c["limit"], c["detail"]] for c in gate["checks"]]
        lines += _table(["result", "stage", "check", "value", "baseline", "limit", "detail"], rows) + [""]
    metrics = rep.get("metrics")
    if metrics:
        names = list(metrics)
        lines += ["## Metrics", ""]
        rows = [[m] + [_fmt(metrics[n][m]) for n in names] for m in
                ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted")]
        rows.append(["rows answered"] + [f"{metrics[n]['answered']}/{metrics[n]['rows']}" for n in names])
        lines += _table(["metric"] + names, rows) + [""]
        lines += ["### Per class (precision / recall / F1)", ""]
        classes = list(metrics[names[0]]["per_class"])
        rows = [[c] + [" / ".join(_fmt(metrics[n]["per_class"][c][k], 3) for k in ("precision", "recall", "f1"))
                       for n in names] for c in classes]
        lines += _table(["class"] + names, rows) + [""]
        lines += ["### Latency (ms)", ""]
        rows = []
        for n in names:
            lat = metrics[n].get("latency")
            if lat:
                rows.append([n] + [_fmt(lat[k], 3) for k in ("p50", "p95", "p99", "mean", "max")] + [str(lat["count"])])
        split = rep.get("served_latency_split") or {}
        for key, label in (("server_prediction_time", "served: server PredictionTime"),
                           ("overhead", "served: HTTP + queue overhead")):
            lat = split.get(key)
            if lat:
                rows.append([label] + [_fmt(lat[k], 3) for k in ("p50", "p95", "p99", "mean", "max")] + [str(lat["count"])])
        lines += _table(["stage", "p50", "p95", "p99", "mean", "max", "n"], rows) + [""]
    tests = rep.get("paired_tests")
    if tests:
        lines += ["## Paired tests against the baseline", ""]
        rows = [[n, _fmt(t["agreement"]), str(t["baseline_only_correct"]), str(t["candidate_only_correct"]),
                 _fmt(t["mcnemar_p"]), f"{t['delta_accuracy']:+.4f} [{t['delta_accuracy_ci'][0]:+.4f}, {t['delta_accuracy_ci'][1]:+.4f}]",
                 _fmt(t["max_prob_diff"]), _fmt(t["max_logit_diff"])] for n, t in tests.items()]
        lines += _table(["candidate", "agreement", "only baseline right", "only candidate right", "McNemar p",
                         "delta accuracy [95% CI]", "max prob diff", "max logit diff"], rows) + [""]
    if rep.get("flipped_rows"):
        lines += [f"## Flipped rows ({rep['flipped_total']})", ""]
        rows = [[r["id"], str(r["label"]), f"{r['baseline']} ({_fmt(r['baseline_prob'], 3)})",
                 f"{_fmt(r['exported'])} ({_fmt(r['exported_prob'], 3)})", f"{_fmt(r['served'])} ({_fmt(r['served_prob'], 3)})"]
                for r in rep["flipped_rows"]]
        lines += _table(["id", "label", "baseline (p)", "exported (p)", "served (p)"], rows) + [""]
    if rep.get("diverging_rows"):
        lines += ["## Rows whose outputs differ beyond the tolerance (largest first)", ""]
        rows = [[r["id"], r["stage"], _fmt(r["max_abs_diff"]),
                 ", ".join(f"{v:.6g}" for v in r["baseline_logits"]),
                 ", ".join(f"{v:.6g}" for v in r["candidate_logits"])] for r in rep["diverging_rows"]]
        lines += _table(["id", "stage", "max abs diff", "baseline outputs", "candidate outputs"], rows) + [""]
    stages = rep.get("stages", {})
    ex = stages.get("export")
    if ex:
        c = ex["consistency"]
        lines += ["## Export", "", f"Mode `{ex['mode']}`{' (optimized)' if ex['optimized'] else ''}: max abs diff "
                  f"{_fmt(c['max_abs_diff'])}, mean {_fmt(c['mean_abs_diff'])}, max relative {_fmt(c['max_rel_diff'])}, "
                  f"agreement {_fmt(c['agreement'])} over {c['rows']} rows (atol {c['atol']:g}).", ""]
        if c["probes"]:
            rows = [[p["name"], str(p["batch_size"]), str(p["rows"]), _fmt(p["max_abs_diff"]),
                     "ok" if p["is_ok"] else "FAIL", p["error"] or ""] for p in c["probes"]]
            lines += _table(["probe", "batch", "rows", "max abs diff", "result", "note"], rows) + [""]
        rows = [[str(t["batch_size"]), _fmt(t["eager_median_us"], 1), _fmt(t["exported_median_us"], 1),
                 _fmt(t["ratio"], 3)] for t in ex["timings"]]
        lines += ["In-process latency (median of many repeats, us):", ""]
        lines += _table(["batch", "eager", "exported", "exported / eager"], rows) + [""]
        for n in ex["notes"]:
            lines.append(f"- {n}")
        if ex["warnings"]:
            lines += ["Warnings captured during export (each shown once):", ""]
            lines += [f"- {w['category']} x{w['count']}: {w['message']}" for w in ex["warnings"]]
        lines.append("")
    sizes = rep.get("sizes_bytes")
    if sizes:
        lines += ["## Sizes", ""] + _table(["artefact", "bytes"], [[k, str(v)] for k, v in sizes.items()]) + [""]
    if rep.get("stage_seconds"):
        lines += ["## Stage wall time (s)", ""]
        lines += _table(["stage", "seconds"], [[k, f"{v:.2f}"] for k, v in rep["stage_seconds"].items()]) + [""]
    rp = stages.get("replay")
    if rp:
        lines += ["## Replay", "", f"{rp['answered']} answered, {rp['failed']} failed of {rp['rows']} rows; "
                  f"concurrency {rp['concurrency']}, {rp['warmup_requests']} warm-up requests excluded, "
                  f"{_fmt(rp['throughput_rps'], 1)} requests/s, client CPU {_fmt(rp['client_cpu_us_per_request'], 0)} us per "
                  f"request. Errors: {rp['errors'] or 'none'}.", ""]
    lines += ["## Environment", ""] + [f"- {k}: {v}" for k, v in rep.get("environment", {}).items()]
    return "\n".join(lines) + "\n"


def render_console(rep: dict) -> str:
    """A compact summary table for the terminal: the verdict, the metrics and the failed checks."""
    out = []
    metrics = rep.get("metrics") or {}
    if metrics:
        names = list(metrics)
        w = 20
        out.append("metric".ljust(w) + "".join(n.rjust(12) for n in names))
        for m in ("accuracy", "precision_macro", "recall_macro", "f1_macro"):
            out.append(m.ljust(w) + "".join(_fmt(metrics[n][m]).rjust(12) for n in names))
        for k in ("p50", "p99"):
            vals = [metrics[n].get("latency") for n in names]
            out.append(f"latency {k} (ms)".ljust(w) + "".join((_fmt(v[k], 3) if v else "-").rjust(12) for v in vals))
        split = rep.get("served_latency_split") or {}
        if split.get("server_prediction_time"):
            out.append("served p50: model".ljust(w) + _fmt(split["server_prediction_time"]["p50"], 3).rjust(12)
                       + "   overhead " + _fmt(split["overhead"]["p50"], 3))
    gate = rep.get("gate")
    if gate and not rep.get("complete"):
        failed = [c for c in gate["checks"] if c["is_gating"] and not c["passed"]]
        out.append(f"gate: not evaluated, the run did not complete ({len(failed)} failed check(s) on partial results)")
    elif gate:
        failed = [c for c in gate["checks"] if c["is_gating"] and not c["passed"]]
        out.append(f"gate: {len(gate['checks']) - len(failed)}/{len(gate['checks'])} checks passed")
        for c in failed:
            out.append(f"  FAIL {c['stage']}: {c['name']}: value {_fmt(c['value'])}, baseline {_fmt(c['baseline'])}, "
                       f"limit {c['limit']}" + (f" ({c['detail']})" if c["detail"] else ""))
    if rep.get("error"):
        out.append(f"{rep['error']['type']}: {rep['error']['message']}")
        out += [f"  - {d}" for d in rep["error"].get("details", [])[:15]]
    if rep.get("attribution") and rep.get("status") != "passed":
        out.append(f"attribution: {rep['attribution']}")
    out.append(f"VERDICT: {rep['verdict']} (exit {rep['exit_code']})   report: {rep.get('run_dir')}/report.md")
    return "\n".join(out)


ROW_COLUMNS = (
    "id", "label",
    "baseline_pred", "baseline_prob", "baseline_latency_ms",
    "exported_pred", "exported_prob", "exported_latency_ms",
    "served_pred", "served_prob", "served_latency_ms", "served_server_ms", "served_status",
    "served_error_class", "served_message", "served_attempts", "request_id",
)


def build_rows(state: "RunState") -> "pd.DataFrame | None":
    """Per-row results of every stage, one row per dataset row, in dataset order.

    ``*_prob`` is the probability of that stage's own predicted class. Columns of a stage
    that did not run are left out; a served row that failed has no prediction (``<NA>``)
    but keeps its HTTP status, error class and message.

    Args:
        state: the stages' results so far.

    Returns:
        A DataFrame with the columns of ``ROW_COLUMNS`` that the run produced, or None before
        the dataset is loaded or if the stages' results cannot be lined up (logged as a
        warning: the per-row file is a convenience, the report must still be written).
    """
    if state.data is None:
        return None
    try:
        return _rows_frame(state)
    except (ValueError, IndexError, TypeError) as e:
        log.warning("rows.parquet left out: the per-row results could not be lined up: %s", e)
        return None


def _rows_frame(state: "RunState") -> "pd.DataFrame":
    import pandas as pd

    n = len(state.data)
    cols: dict[str, Any] = {"id": list(state.data.ids), "label": np.asarray(state.data.labels)}
    for prefix, result in (("baseline", state.baseline), ("exported", state.exported)):
        if result is None:
            continue
        scores = result.scores
        preds = np.asarray(scores.predictions)
        cols[f"{prefix}_pred"] = preds
        cols[f"{prefix}_prob"] = np.asarray(scores.probabilities)[np.arange(n), preds]
        cols[f"{prefix}_latency_ms"] = np.asarray(scores.latencies_ms, dtype=float)
    if state.replay is not None:
        rows = sorted(state.replay.rows, key=lambda r: r.index)
        if [r.index for r in rows] != list(range(n)):
            raise ValueError(f"the replay has {len(rows)} rows for {n} dataset rows")
        cols["served_pred"] = pd.array([r.prediction if r.is_ok else None for r in rows], dtype="Int64")
        cols["served_prob"] = pd.array([float(r.probabilities[r.prediction]) if r.is_ok else None for r in rows],
                                       dtype="Float64")
        cols["served_latency_ms"] = pd.array([r.latency_ms for r in rows], dtype="Float64")
        cols["served_server_ms"] = pd.array([r.server_ms for r in rows], dtype="Float64")
        cols["served_status"] = pd.array([r.status for r in rows], dtype="Int64")
        cols["served_error_class"] = pd.array([r.error_class for r in rows], dtype="string")
        cols["served_message"] = pd.array([r.message for r in rows], dtype="string")
        cols["served_attempts"] = pd.array([r.attempts for r in rows], dtype="Int64")
        cols["request_id"] = pd.array([r.request_id for r in rows], dtype="string")
    return pd.DataFrame(cols)


def write_reports(run_dir: Path, rep: dict, rows: "pd.DataFrame | None" = None) -> dict[str, Path]:
    """Write rows.parquet, junit.xml, report.html, report.md and report.json, each atomically.

    rows.parquet and report.html are conveniences: if one cannot be produced it is left out
    with a warning, and the verdict files are still written. report.json comes last.

    Args:
        run_dir: the run folder.
        rep: the report from ``build_report``.
        rows: per-row results from ``build_rows``, or None (no rows.parquet, no latency plots).

    Returns:
        The path of each file written, by kind: rows, junit, html, md, json.

    Raises:
        OSError: a file could not be written into ``run_dir``.
    """
    import io
    import time

    from pipeline.report.html import render_html
    from pipeline.report.junit import write_junit

    t0 = time.perf_counter()
    paths = {}
    if rows is not None:
        buf = io.BytesIO()
        try:
            rows.to_parquet(buf, index=False)
        except Exception as e:  # pyarrow raises its own types; the verdict must still be written
            log.warning("rows.parquet could not be serialized: %s", e)
        else:
            paths["rows"] = write_atomic(run_dir / "rows.parquet", buf.getvalue())
    paths["junit"] = write_junit(run_dir / "junit.xml", rep)
    try:
        page = render_html(rep, rows)
    except Exception as e:  # plots are a convenience; the verdict must still be written
        log.warning("report.html could not be rendered: %s", e)
    else:
        paths["html"] = write_atomic(run_dir / "report.html", page)
    rep.setdefault("stage_seconds", {})["report"] = round(time.perf_counter() - t0, 3)
    paths["md"] = write_atomic(run_dir / "report.md", render_markdown(rep))
    # report.json last: its presence means every other file of the run is complete.
    paths["json"] = write_atomic(run_dir / "report.json", json.dumps(_jsonable(rep), indent=2, allow_nan=False))
    return paths
