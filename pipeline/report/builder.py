"""The report: built from a run's record and outcome, as JSON-ready data and a per-row table.

Rendering is elsewhere: one module per output (``markdown``, ``console``, ``html``, ``junit``),
all reading the dict built here; ``writer.write_reports`` writes every file atomically.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.answers.classes import shared_name_note
from pipeline.evaluate.attribution import attribute
from pipeline.evaluate.latency import split_latency
from pipeline.names import Stage
from pipeline.record import RunRecord
from pipeline.report.text import MAX_CLASS_ROWS
from pipeline.report.schema import REPORT_KEYS, SCHEMA, VERDICT, environment, jsonable
from pipeline.report.tsconfig import serving_config_block
from pipeline.stages.archive import NOT_APPLICABLE_FROM_MAR
from pipeline.tasks.registry import task_of
from pipeline.torchserve.childenv import withheld_names
from pipeline.torchserve.logcap import read_cuts

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def _plan_block(record: RunRecord) -> dict | None:
    plan = record.plan
    if plan is None:
        return None
    codec = plan.codec
    if record.handled is not None:
        codec = record.handled.codec
    if record.replay is not None and record.replay.codec is not None:
        codec = record.replay.codec
    carries = codec.carries
    return {
        "handler": {"name": plan.handler.name, "origin": plan.handler.origin, "display": plan.handler.display},
        "reference": {"name": plan.reference.name, "description": plan.reference.description},
        "answers": {"format": codec.format, "chosen_by": codec.chosen_by, "envelope": codec.envelope.name,
                    "required_classes": codec.required_classes, "required_words": codec.required_words,
                    "carries": carries.describe() if carries else "unknown (no answer decoded)"},
        "class_labels": list(plan.class_map.labels),
        "class_map_source": plan.class_map.source,
        "shared_names": {k: list(v) for k, v in plan.class_map.shared_names().items()},
        # stage -> ids of rows whose answer named a shared name (compared by name)
        "shared_name_rows": {k: list(v) for k, v in record.comparison.shared_name_rows.items()}
        if record.comparison is not None else {},
        "stages": [Stage.BASELINE.value, *map(str, plan.stages)],
        "notes": list(plan.notes) + [n for n in (shared_name_note(plan.class_map),) if n]
        + list(getattr(codec, "notes", ())),  # the first answer's (answers/registry.py)
    }


def _dataset_block(record: RunRecord) -> dict | None:
    d = record.dataset
    if d is None:
        return None
    r = d.rows
    return {"kind": r.kind, "source": str(r.source), "rows": len(r), "content_type": r.content_type,
            "notes": list(r.notes), "training_rows": d.training_rows,
            "leaked_ids": list(d.leaked_ids) if d.leaked_ids is not None else None,
            # every image file accounted for: found, loaded as rows, sent to the server; other files by suffix
            "image_files": r.image_files, "other_files": dict(r.other_files),
            "rows_sent": len(record.replay.rows) if getattr(record, "replay", None) is not None else None}


def _answered_block(outcomes) -> dict:
    errors: dict[str, int] = {}
    for o in outcomes:
        if not o.is_ok:
            errors[o.error_class or "unknown"] = errors.get(o.error_class or "unknown", 0) + 1
    examples = {}
    for o in outcomes:
        if not o.is_ok and o.error_class not in examples:
            examples[o.error_class] = {"id": o.id, "message": o.message}
    return {"rows": len(outcomes), "answered": sum(o.is_ok for o in outcomes), "errors": errors,
            "examples": examples}


def _stage_block(record: RunRecord) -> dict:
    out: dict[str, Any] = {}
    if record.baseline is not None:
        b = record.baseline
        out["baseline"] = {"weights": str(b.weights_path), "weights_sha256": b.weights_sha256,
                           "weights_size_bytes": b.weights_size_bytes, "reference": b.reference.name,
                           "input_shape": list(b.input_shape), "input_dtype": b.input_dtype,
                           "input": b.inputs.description() if b.inputs.rows else f"{b.input_dtype} {list(b.input_shape)}",
                           "preprocess_ms_p50": jsonable(b.preprocess_ms_p50)}
    if record.exported is not None:
        e = record.exported
        out["export"] = {
            "mode": e.mode, "path": str(e.path), "model_file": str(e.model_file) if e.model_file else None,
            "sha256": e.sha256, "size_bytes": e.size_bytes, "optimized": e.optimized, "notes": list(e.notes),
            "consistency": jsonable(e.consistency),
            "timings": [dict(jsonable(t), ratio=jsonable(t.ratio)) for t in e.timings],
            "warnings": jsonable(e.warnings),
        }
    if record.archive is not None:
        a = record.archive
        out["archive"] = {"mar": str(a.mar_path), "sha256": a.sha256, "size_bytes": a.size_bytes,
                          "manifest": a.manifest, "model_config": a.model_config, "members": list(a.members),
                          "prebuilt": a.prebuilt, "artefacts": jsonable(a.artefacts)}
        if a.prebuilt and record.exported is None:
            out["export"] = {"not_applicable": NOT_APPLICABLE_FROM_MAR}
    if record.handled is not None:
        h = record.handled
        out["handled"] = {"handler": h.handler, "load_s": round(h.load_s, 3), "batch_size": h.batch_size,
                          "log": str(h.log_path), "batch1": _answered_block(h.batch1),
                          "batched": _answered_block(h.batched) if h.batched is not None else None,
                          "log_cut": read_cuts(h.log_path.parent).get(h.log_path.name)}
    if record.server is not None:
        s = record.server
        out["server"] = {"inference_url": s.inference_url, "model": s.model_name, "java": s.java,
                         "startup_s": round(s.startup_s, 3), "logs": str(s.log_dir) if s.log_dir else None,
                         "token_auth": s.inference_token is not None, "started_by_pipeline": s.started_by_pipeline,
                         "served_settings": {k: (s.described or {}).get(k) for k in
                                             ("batchSize", "maxBatchDelay", "responseTimeout")}
                         if s.described else None,
                         "logs_cut": read_cuts(s.log_dir)}
    if record.replay is not None:
        r = record.replay
        out["replay"] = {**_answered_block(r.rows), "failed": r.failed, "error_rate": jsonable(r.error_rate),
                         "complete": r.is_complete, "abort_reason": r.abort_reason, "concurrency": r.concurrency,
                         "rate": r.rate, "warmup_requests": r.warmup_requests, "wall_s": round(r.wall_s, 3),
                         "throughput_rps": jsonable(r.throughput_rps),
                         "client_cpu_us_per_request": jsonable(r.client_cpu_us_per_request)}
    return out


def _probes_block(record: RunRecord) -> dict | None:
    handled = record.handled.probes if record.handled is not None else ()
    if not handled and not record.served_probes:
        return None
    return {"handled": jsonable(list(handled)), "served": jsonable(list(record.served_probes))}


def _sizes(record: RunRecord) -> dict[str, int]:
    sizes = {}
    if record.baseline is not None:
        sizes["eager_weights"] = record.baseline.weights_size_bytes
    if record.exported is not None:
        sizes["exported"] = record.exported.size_bytes
    if record.archive is not None:
        sizes["mar"] = record.archive.size_bytes
    return sizes


def _error_block(error: BaseException | None) -> dict | None:
    if error is None:
        return None
    text = str(getattr(error, "message", None) or error)
    return {"type": type(error).__name__, "message": text.splitlines()[0] if text else "",
            "details": list(getattr(error, "details", []) or [])}


def build_report(record: RunRecord, status: str, exit_code: int, error: BaseException | None) -> dict:
    """The report as a JSON-ready dict, built from whatever the run produced.

    Args:
        record: the run's record.
        status: passed, failed, error or interrupted.
        exit_code: the process exit code for this outcome.
        error: the error or interruption that ended the run early, if any.

    Returns:
        A dict following schema ``package-validate/report/v3`` (keys: ``schema.REPORT_KEYS``).
    """
    spec = record.spec
    cmp = record.comparison
    rep: dict[str, Any] = {key: None for key in ("metrics", "paired_tests", "steps", "flipped_rows", "flipped_total",
                                                  "diverging_rows", "served_latency_split", "attribution", "gate")}
    rep.update({
        "schema": SCHEMA,
        "status": status,
        "verdict": VERDICT[status],
        "complete": status in ("passed", "failed"),
        "exit_code": exit_code,
        "started_at": record.started_at,
        "run_dir": str(record.run_dir) if record.run_dir else None,
        "model": spec.name if spec else None,
        "version": spec.version if spec else None,
        "spec_path": str(spec.spec_path) if spec and spec.spec_path else None,
        "spec": jsonable(spec.model_dump(mode="json")) if spec else None,
        "error": _error_block(error),
        "plan": _plan_block(record),
        "dataset": _dataset_block(record),
        "stage_seconds": record.seconds(),
        "stages": _stage_block(record),
        "sizes_bytes": _sizes(record),
        "environment": {**environment(), **({"java": record.server.java} if record.server and record.server.java
                                           else {}),
                        # names (never values) of the caller's variables no child that runs user code inherited
                        "withheld_env": list(withheld_names(spec.serving.secret_env)) if spec else []},
        "published": str(record.published) if record.published else None,
        "release": _release_block(record),
        "server_failures": [list(x) for x in record.server_failures],
        "probes": _probes_block(record),
        "serving_config": serving_config_block(record),
    })
    if cmp is not None:
        rep["metrics"] = _metrics_block(cmp)
        rep["paired_tests"] = {str(name): jsonable(t) for name, t in cmp.tests.items()}
        rep["steps"] = {str(name): jsonable(t) for name, t in cmp.steps.items()}
        rep["flipped_rows"] = jsonable(cmp.flipped)
        rep["flipped_total"] = cmp.flipped_total
        rep["diverging_rows"] = jsonable(cmp.diverging)
        served = cmp.stages.get(Stage.SERVED)
        rep["served_latency_split"] = {
            "client": jsonable(served.latency) if served else None,
            "server_prediction_time": jsonable(cmp.served_server_latency),
            "overhead": jsonable(cmp.served_overhead_latency),
            **_where_the_time_goes(record),
        }
        rep["attribution"] = jsonable(attribute(cmp, spec.gate.max_output_diff,
                                                from_mar=record.archive is not None and record.archive.prebuilt))
    if record.gate is not None:
        rep["gate"] = {"passed": record.gate.passed, "checks": jsonable(record.gate.checks)}
    extra = set(rep) - set(REPORT_KEYS)
    if extra:
        raise ValueError(f"report keys {sorted(extra)} are not in the schema's REPORT_KEYS")
    return {key: rep.get(key) for key in REPORT_KEYS}


def _where_the_time_goes(record: RunRecord) -> dict:
    """The served latency split by part (``evaluate.latency``): added beside the older keys of
    ``served_latency_split`` (additive: every reader of those keys reads them as before)."""
    if record.replay is None:
        return {}
    rp = record.replay
    logs_read = record.server is not None and record.server.log_dir is not None
    return {"breakdown": split_latency(rp.rows, rp.frontend, logs_read=logs_read).to_dict()}


def _metrics_block(cmp) -> dict:
    """Each stage's metrics; with many classes, the confusion matrices keep only the classes with rows or
    predictions (``confusion_classes``: their indices; every other entry is 0), not 1000 x 1000 zeros."""
    c = len(cmp.labels)
    if c <= MAX_CLASS_ROWS or not cmp.stages or not hasattr(next(iter(cmp.stages.values())), "confusion"):
        return {str(name): jsonable(m) for name, m in cmp.stages.items()}
    # the full matrices never pass through jsonable (a million Python ints per stage, twice per run)
    out = {str(name): jsonable(replace(m, confusion=[])) for name, m in cmp.stages.items()}
    used = np.zeros(c, bool)
    for m in cmp.stages.values():
        cm = np.asarray(m.confusion)
        used |= (cm.sum(axis=0) > 0) | (cm.sum(axis=1) > 0) | (np.asarray(m.failed_by_class) > 0)
    keep = np.nonzero(used)[0]
    for name, m in cmp.stages.items():
        out[name]["confusion"] = np.asarray(m.confusion)[np.ix_(keep, keep)].tolist()
        out[name]["confusion_classes"] = keep.tolist()
    return out


def _release_block(record: RunRecord) -> dict | None:
    """What the release act did: pending (the record written, the archive not yet confirmed), published, or
    rolled back (the record could not be written, the previous archive put back)."""
    if record.release_state is None or record.archive is None:
        return None
    return {"state": record.release_state, "archive_sha256": record.archive.sha256,
            "target": str(record.published) if record.published else None}


def _stage_columns(prefix: str, outcomes, cols: dict, n: int) -> None:
    import pandas as pd

    rows = sorted(outcomes, key=lambda r: r.index)
    if [r.index for r in rows] != list(range(n)):
        raise ValueError(f"{prefix} has {len(rows)} rows for {n} dataset rows")

    def prob(r):
        p = r.prediction.probabilities if r.prediction is not None else None
        if p is None:
            return None
        v = float(p[r.prediction.index])
        return v if np.isfinite(v) else None

    cols[f"{prefix}_pred"] = pd.array([r.predicted if r.is_ok else None for r in rows], dtype="Int64")
    cols[f"{prefix}_prob"] = pd.array([prob(r) if r.is_ok else None for r in rows], dtype="Float64")
    cols[f"{prefix}_latency_ms"] = pd.array([r.latency_ms for r in rows], dtype="Float64")
    cols[f"{prefix}_status"] = pd.array([r.status for r in rows], dtype="Int64")
    cols[f"{prefix}_error_class"] = pd.array([r.error_class for r in rows], dtype="string")
    cols[f"{prefix}_message"] = pd.array([r.message for r in rows], dtype="string")


def build_rows(record: RunRecord) -> "pd.DataFrame | None":
    """Per-row results of every stage, one row per dataset row, in dataset order.

    ``<stage>_prob`` is the probability of that stage's own predicted class. Columns of a
    stage that did not run are left out; a row that failed has no prediction (``<NA>``) but
    keeps its status, error class and message.

    Returns:
        The table, or None before the dataset is loaded or if the stages' results cannot be
        lined up (logged as a warning: the per-row file is a convenience, the report must
        still be written).
    """
    if record.dataset is None:
        return None
    try:
        return _rows_frame(record)
    except (ValueError, IndexError, TypeError) as e:
        log.warning("rows.parquet left out: the per-row results could not be lined up: %s", e)
        return None


def _rows_frame(record: RunRecord) -> "pd.DataFrame":
    import pandas as pd

    rows = record.rows
    n = len(rows)
    task = task_of(record.spec)
    if task.name != "classification":
        return _task_rows_frame(record, task)
    cols: dict[str, Any] = {"id": list(rows.ids), "label": np.asarray(rows.labels)}
    for prefix, result in ((Stage.BASELINE, record.baseline), (Stage.EXPORTED, record.exported)):
        if result is None:
            continue
        scores = result.scores
        preds = np.asarray(scores.predictions)
        probs = np.asarray(scores.probabilities)
        cols[f"{prefix}_pred"] = pd.array([int(p) if p >= 0 else None for p in preds], dtype="Int64")
        cols[f"{prefix}_prob"] = pd.array([float(probs[i, p]) if p >= 0 else None for i, p in enumerate(preds)],
                                          dtype="Float64")
        cols[f"{prefix}_latency_ms"] = np.asarray(scores.latencies_ms, dtype=float)
    if record.handled is not None:
        _stage_columns("handled", record.handled.batch1, cols, n)
        if record.handled.batched is not None:
            _stage_columns("handled_batched", record.handled.batched, cols, n)
    if record.replay is not None:
        _stage_columns("served", record.replay.rows, cols, n)
        _served_columns(record.replay.rows, cols)
    return pd.DataFrame(cols)


def _served_columns(outcomes, cols: dict) -> None:
    """The served rows' server and handler times, attempts and request ids (every task: the report's
    "Where the time goes" plot reads them)."""
    import pandas as pd

    ordered = sorted(outcomes, key=lambda r: r.index)
    cols["served_server_ms"] = pd.array([r.server_ms for r in ordered], dtype="Float64")
    cols["served_handler_ms"] = pd.array([r.handler_ms for r in ordered], dtype="Float64")
    cols["served_attempts"] = pd.array([r.attempts for r in ordered], dtype="Int64")
    cols["request_id"] = pd.array([r.request_id for r in ordered], dtype="string")


def _task_rows_frame(record: RunRecord, task) -> "pd.DataFrame":
    """rows.parquet of a task other than classification: its label and per-stage columns
    (``tasks/<task>.py row_columns``), with each stage's latency, status and error as for classification."""
    import pandas as pd

    rows, spec = record.rows, record.spec
    n, names = len(rows), spec.class_labels
    labels = np.asarray(rows.labels)
    cols: dict[str, Any] = {"id": list(rows.ids)}
    if labels.dtype == object:  # an object per row (detection's boxes, segmentation's mask): its text form
        cols["label"] = [str(v) for v in labels]
    else:
        for k, name in enumerate(names):
            cols[f"label_{name}"] = labels[:, k] if labels.ndim == 2 else labels
    for prefix, result in ((Stage.BASELINE, record.baseline), (Stage.EXPORTED, record.exported)):
        if result is None:
            continue
        cols.update(task.row_columns(prefix, task.model_outputs(prefix, result.scores, spec), names))
        cols[f"{prefix}_latency_ms"] = np.asarray(result.scores.latencies_ms, dtype=float)
    answered = []
    if record.handled is not None:
        answered.append(("handled", record.handled.batch1))
        if record.handled.batched is not None:
            answered.append(("handled_batched", record.handled.batched))
    if record.replay is not None:
        answered.append(("served", record.replay.rows))
    for prefix, outcomes in answered:
        ordered = sorted(outcomes, key=lambda r: r.index)
        if [r.index for r in ordered] != list(range(n)):
            raise ValueError(f"{prefix} has {len(ordered)} rows for {n} dataset rows")
        cols.update(task.row_columns(prefix, task.answer_outputs(prefix, tuple(ordered), spec), names))
        cols[f"{prefix}_latency_ms"] = pd.array([r.latency_ms for r in ordered], dtype="Float64")
        cols[f"{prefix}_status"] = pd.array([r.status for r in ordered], dtype="Int64")
        cols[f"{prefix}_error_class"] = pd.array([r.error_class for r in ordered], dtype="string")
        cols[f"{prefix}_message"] = pd.array([r.message for r in ordered], dtype="string")
    if record.replay is not None:
        _served_columns(record.replay.rows, cols)
    return pd.DataFrame(cols)
