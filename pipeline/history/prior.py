"""A previous run's report as a second baseline (e.g. the last passing nightly run)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ReportError
from pipeline.report.schema import READABLE_SCHEMAS, SCHEMA as REPORT_SCHEMA
from pipeline.tasks.registry import task_name_of_report, task_of_report


@dataclass(frozen=True)
class PriorRun:
    """The served metrics of an earlier complete run of the same model."""

    path: Path
    model: str
    started_at: str
    status: str
    metrics: dict[str, float]
    served_p99_ms: float | None


def load_prior_report(path: Path, model_name: str, task: str | None = None) -> PriorRun:
    """Read a previous report.json to compare against.

    Args:
        path: the report.json (or its run folder).
        model_name: the spec's model name; the prior report must be of the same model.
        task: the spec's ``model.task``; when given, the prior report must be of the same task (its metrics).

    Returns:
        The prior run's served metrics.

    Raises:
        ReportError: missing, unreadable, another schema, another model, or a run that did
            not complete; a missing baseline never means "nothing to compare, so pass".
    """
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise ReportError(f"baseline report {path} does not exist. Pass the report.json of an earlier run.")
    try:
        rep = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ReportError(f"baseline report {path} is not readable JSON: {e}") from e
    schema = rep.get("schema") if isinstance(rep, dict) else None
    if schema not in READABLE_SCHEMAS:
        raise ReportError(
            f"baseline report {path} has schema {schema!r}, expected {REPORT_SCHEMA!r}. "
            "Use a report written by this version of package-validate, or re-run the baseline."
        )
    if rep.get("model") != model_name:
        raise ReportError(f"baseline report {path} is of model {rep.get('model')!r}, not {model_name!r}.")
    if task is not None and task_name_of_report(rep) != task:
        raise ReportError(f"baseline report {path} is of a {task_name_of_report(rep)} run, this spec's model.task is "
                          f"{task}: their metrics are not the same figures. Pass a report of a {task} run.")
    if not rep.get("complete") or "served" not in (rep.get("metrics") or {}):
        raise ReportError(
            f"baseline report {path} is of a run that did not complete (status {rep.get('status')!r}); "
            "it cannot serve as a baseline."
        )
    served = rep["metrics"]["served"]
    metrics = {m: float(served[m]) for m in task_of_report(rep).gated_metrics if served.get(m) is not None}
    lat = served.get("latency") or {}
    return PriorRun(path=path, model=rep["model"], started_at=rep.get("started_at", ""), status=rep["status"],
                    metrics=metrics, served_p99_ms=lat.get("p99"))
