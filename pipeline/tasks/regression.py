"""Regression (``model.task: regression``): one or several numbers per row.

Labels: one numeric column (``dataset.label_column``) or one per target (``dataset.label_columns``,
model order); ``model.num_classes`` is the number of targets. (An integer label column is read as
classes unless the spec says ``task: regression``.) Answers: a number, a list of one number per
target, a ``{target: value}`` mapping (targets named by ``model.class_names``), or those under a
``"value"``/``"values"``/``"prediction"``/``"predictions"`` key; through KServe v2 a tensor; or what
``answers.decode`` returns. Values are checked on their own: finite numbers, one per target.

"The same answer": every value within ``gate.max_output_diff + gate.value_rtol * |baseline|``.
Metrics (torchmetrics): MAE, RMSE and R2 (averaged over targets). A row without an answer makes
every metric undefined (it cannot be scored as a worse value), which fails its checks as not
evaluable, besides the error-rate check that counts it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.answers.base import AnswerError, Prediction, numbers
from pipeline.errors import DatasetError
from pipeline.evaluate.compare import StageOutputs
from pipeline.evaluate.stats import LatencySummary, summarize_latency
from pipeline.tasks import values as V
from pipeline.tasks.base import CompareContext, Section

NAME = "regression"
GATED = ("mae", "rmse", "r2")
DEFAULT = GATED
LOWER = frozenset({"mae", "rmse"})
TRACKED = GATED
PRIMARY = "mae"
VALUE_KEYS = ("value", "values", "prediction", "predictions")
MAX_POINTS = 400  # residual points kept in report.json per stage (the plot's)


@dataclass(frozen=True)
class RegressionMetrics:
    """One stage's regression figures over all rows (undefined while any row is unanswered)."""

    stage: str
    rows: int
    answered: int
    mae: float
    rmse: float
    r2: float
    per_target: dict[str, dict[str, float]]  # target -> mae, rmse, r2
    latency: LatencySummary | None
    undefined: dict[str, str] = field(default_factory=dict)
    points: tuple[tuple[float, float], ...] = ()  # (truth, prediction) of the first target, the first rows

    def get(self, metric: str) -> float:
        return float(getattr(self, metric))


# --- labels ---------------------------------------------------------------------------------------------


def read_labels(df, spec, path: Path, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """float64 [N, K]; DatasetError naming the rows whose target is missing or not a finite number."""
    ds, k = spec.dataset, spec.model.num_classes
    cols = list(ds.label_columns) or [ds.label_column]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: label column(s) {missing} not found. Columns found: {list(df.columns)[:40]}. "
                           "Fix dataset.label_column (one target) or dataset.label_columns (one per target).")
    if len(cols) == 1 and k > 1:
        rows = [_listed_row(v, k, ids[i], path) for i, v in enumerate(df[cols[0]].tolist())]
        return np.asarray(rows, np.float64), [f"{k} targets read as lists from column {cols[0]!r}"]
    if len(cols) != k:
        raise DatasetError(f"{path}: {len(cols)} label column(s) {cols[:8]} but model.num_classes is {k} targets: "
                           "give one numeric column per model output, in the model's order.")
    out = np.zeros((len(df), k))
    bad = []
    for j, c in enumerate(cols):
        for i, v in enumerate(df[c].tolist()):
            try:
                f = float(v) if not isinstance(v, bool) else math.nan
            except (TypeError, ValueError):
                f = math.nan
            if not math.isfinite(f):
                bad.append(f"id {ids[i]}: column {c!r} holds {v!r}")
            out[i, j] = f
    if bad:
        raise DatasetError(f"{path}: {len(bad)} regression target(s) are missing or not finite numbers; fix or drop "
                           "those rows, no row is skipped.", details=bad[:20])
    return out, [f"regression targets read from column(s) {cols[:8]}"]


def _listed_row(v: Any, k: int, row_id: str, path: Path) -> list[float]:
    items = v.tolist() if hasattr(v, "tolist") and not isinstance(v, str) else v
    if isinstance(items, str):
        try:
            items = json.loads(items)
        except ValueError:
            items = None
    if not isinstance(items, list) or len(items) != k or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in items):
        raise DatasetError(f"{path}: id {row_id}: the targets {str(v)[:60]!r} are not a list of {k} finite numbers "
                           "(model.num_classes targets); or give one column per target in dataset.label_columns.")
    return [float(x) for x in items]


# --- answers --------------------------------------------------------------------------------------------


def parse_answer(doc: Any, spec) -> Prediction:
    """One answer -> Prediction with the values as logits and as ``extra['values']``."""
    k, names = spec.model.num_classes, spec.class_labels
    doc = V.listed(doc)
    if isinstance(doc, dict):
        key = next((key for key in VALUE_KEYS if key in doc), None)
        if key is not None and len(doc) == 1 or key is not None and not set(doc) & set(names):
            return parse_answer(doc[key], spec)
        unknown = [t for t in doc if t not in names]
        if unknown or len(doc) != k:
            raise AnswerError(f"a {{target: value}} answer names each of the {k} target(s) {list(names)[:8]}; got "
                              f"keys {sorted(map(str, doc))[:8]}")
        doc = [doc[t] for t in names]
    if isinstance(doc, (int, float)) and not isinstance(doc, bool):
        doc = [doc]
    if isinstance(doc, list) and len(doc) == 1 and isinstance(doc[0], list):
        doc = doc[0]  # a batch of one, as a list of rows
    vals = numbers(doc, f"a regression answer ({k} value(s))", k)
    return Prediction(0, None, vals, {"values": vals})


# --- metrics --------------------------------------------------------------------------------------------


def score(s: StageOutputs, y: np.ndarray, names: tuple[str, ...]) -> RegressionMetrics:
    ok = s.predictions >= 0
    n = len(y)
    lat = summarize_latency(s.latencies_ms) if s.latencies_ms is not None else None
    if not n or not ok.all() or s.values is None:
        why = (f"{int((~ok).sum())} of {n} row(s) got no answer: a regression metric cannot score a missing value"
               if n else "no rows")
        undefined = {m: why for m in GATED}
        return RegressionMetrics(s.name, n, int(ok.sum()), math.nan, math.nan,
                                 math.nan, {}, lat, undefined)
    from pipeline import compat

    compat.install_import_hook()  # torchmetrics imports torchvision (compat.py)
    import torch
    from torchmetrics.functional import mean_absolute_error, mean_squared_error, r2_score

    pred = torch.from_numpy(s.values.astype(np.float64))
    true = torch.from_numpy(y.astype(np.float64))
    undefined: dict[str, str] = {}
    mae = float(mean_absolute_error(pred, true))
    rmse = float(mean_squared_error(pred, true, squared=False))
    const = [names[j] for j in range(y.shape[1]) if np.all(y[:, j] == y[0, j])]
    if n < 2 or const:
        r2 = math.nan
        undefined["r2"] = ("R2 needs at least 2 rows" if n < 2 else
                           f"target(s) {const} take one value over every row: R2 is 0/0")
    else:
        r2 = float(r2_score(pred.squeeze(1) if y.shape[1] == 1 else pred,
                            true.squeeze(1) if y.shape[1] == 1 else true, multioutput="uniform_average"))
    err = s.values - y
    per = {}
    for j, name in enumerate(names):
        ss_tot = float(((y[:, j] - y[:, j].mean()) ** 2).sum())
        per[name] = {"mae": float(np.abs(err[:, j]).mean()), "rmse": float(np.sqrt((err[:, j] ** 2).mean())),
                     "r2": 1 - float((err[:, j] ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan}
    points = tuple((float(y[i, 0]), float(s.values[i, 0])) for i in range(min(n, MAX_POINTS)))
    return RegressionMetrics(s.name, n, n, mae, rmse, r2, per, lat, undefined, points)


def weighted_figures(w: np.ndarray, pred: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The figures of ``score`` on resamples given as row weights int [R, N] (numpy, for the bootstrap)."""
    n, k = y.shape
    err = pred - y
    mae = (w @ np.abs(err).mean(1)) / n
    rmse = np.sqrt((w @ (err ** 2).mean(1)) / n)
    ss_res = w @ (err ** 2)
    mean = (w @ y) / n
    ss_tot = w @ (y ** 2) - n * mean ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 1e-12 * np.maximum(1.0, w @ (y ** 2)), 1 - ss_res / ss_tot, np.nan).mean(1)
    return {"mae": mae, "rmse": rmse, "r2": r2}


class Regression:
    name = NAME
    gated_metrics = GATED
    default_metrics = DEFAULT
    tracked = TRACKED
    lower_is_better = LOWER  # losses: their rise is what the gate limits
    in_target_units = LOWER  # MAE and RMSE: gated by default on their relative rise (spec.default_thresholds)
    labels_word = "targets"  # what the report's "What ran" calls model.class_names

    def read_labels(self, df, spec, path: Path, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        return read_labels(df, spec, path, ids)

    def label_counts(self, labels: np.ndarray, spec) -> None:
        return None  # targets are not classes

    def decode(self, doc: Any, spec) -> Prediction:
        return parse_answer(doc, spec)

    def decoder(self, spec):
        return V.task_decoder(NAME, lambda doc: parse_answer(doc, spec), V.Carried("none", True, "values"), spec)

    def tolerances(self, spec) -> tuple[float, float]:
        return spec.gate.max_output_diff, spec.gate.value_rtol

    def model_outputs(self, name: str, scores, spec) -> StageOutputs:
        out = np.asarray(scores.logits, np.float64)
        ok = np.isfinite(out).all(axis=1)
        return StageOutputs(name, np.where(ok, 0, -1).astype(np.int64), None, out, scores.latencies_ms,
                            logits_from="values", values=np.where(ok[:, None], out, np.nan))

    def answer_outputs(self, name: str, outcomes: tuple, spec) -> StageOutputs:
        return V.answer_outputs(name, outcomes, spec.model.num_classes, "values")

    def compare(self, ids, labels, stages, server_ms, ctx: CompareContext):
        y = np.asarray(labels, np.float64)
        rtol = ctx.spec.gate.value_rtol if ctx.spec is not None else 0.0
        atol = ctx.tolerance

        def same(ref: StageOutputs, cand: StageOutputs) -> np.ndarray:
            return within(ref, cand, atol, rtol)

        def deltas(ref: StageOutputs, cand: StageOutputs):
            if not (V.answered(ref).all() and V.answered(cand).all()):
                return lambda w: {}

            def stat(w: np.ndarray) -> dict[str, np.ndarray]:
                a, b = weighted_figures(w, ref.values, y), weighted_figures(w, cand.values, y)
                return {k: b[k] - a[k] for k in a}
            return stat

        return V.value_comparison(self, ids, y, stages, server_ms, ctx, score=lambda s: score(s, y, ctx.class_labels),
                                  same=same, deltas=deltas, rtol=rtol)

    def stage_checks(self, spec, plan, cmp, stage: str, base_name: str, labels: tuple[str, ...], why: str) -> list:
        have = cmp is not None and stage in cmp.stages and base_name in cmp.stages
        t = cmp.tests[stage] if have else None
        cand = cmp.stages[stage] if have else None
        base = cmp.stages[base_name] if have else None
        checks = [V.agreement_check(spec, t, stage, why,
                                    f"answer a value beyond {spec.max_output_diff:g} + {spec.value_rtol:g} x |baseline|",
                                    t.differing_ids if t else ())]
        checks += V.metric_checks(spec, cand, base, stage, why, LOWER)
        over = tuple(r.id for r in cmp.diverging if r.stage == stage) if cmp is not None else ()
        # every compared value within its tolerance: the largest difference is shown, the rows beyond are named
        beyond = any(r.stage == stage for r in cmp.diverging) if cmp is not None else False
        checks.append(V.output_check(
            spec, plan, t, stage, why, over, name="max abs value difference",
            limit=f"<= {spec.max_output_diff:g} + {spec.value_rtol:g} x |baseline|",
            passed=lambda d: not beyond))
        improved = V.improvement_check(spec, t, stage, PRIMARY, True, why)
        if improved is not None:
            checks.append(improved)
        return checks

    def row_columns(self, prefix: str, outputs: StageOutputs, names: tuple[str, ...] = ()) -> dict[str, Any]:
        return V.row_columns(prefix, outputs, names, labels=False)

    def report_sections(self, report: dict) -> list[Section]:
        return V.sections(report, GATED, "Per target (MAE / RMSE / R2)", "per_target", ("mae", "rmse", "r2"),
                          lower=LOWER, svg=residual_svg(report))


def within(ref: StageOutputs, cand: StageOutputs, atol: float, rtol: float) -> np.ndarray:
    """bool [N]: both answered and every value within atol + rtol * |reference|."""
    both = V.answered(ref) & V.answered(cand)
    if ref.values is None or cand.values is None:
        return np.zeros(len(both), bool)
    a, b = ref.values.astype(np.float64), cand.values.astype(np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.all(np.abs(a - b) <= atol + rtol * np.abs(a), axis=1)
    return both & ok


def residual_svg(report: dict, width: int = 560, height: int = 300) -> str:
    """Residual (prediction - truth) against the truth, one colour per stage, first target (inline SVG)."""
    metrics = report.get("metrics") or {}
    series = {n: m.get("points") or [] for n, m in metrics.items() if m.get("points")}
    if not series:
        return ""
    pts = [(t, p - t) for s in series.values() for t, p in s]
    xs, rs = [t for t, _ in pts], [r for _, r in pts]
    x0, x1 = min(xs), max(xs)
    lim = max(max(abs(r) for r in rs), 1e-12)
    pad = 40
    colours = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")

    def sx(x: float) -> float:
        return pad + (x - x0) / ((x1 - x0) or 1) * (width - 2 * pad)

    def sy(r: float) -> float:
        return height / 2 - r / lim * (height / 2 - pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="residuals">',
             f'<line x1="{pad}" y1="{height / 2}" x2="{width - pad}" y2="{height / 2}" stroke="#999"/>',
             f'<text x="{pad}" y="14" font-size="11">residual (prediction - truth), +/-{lim:.3g}; x: truth '
             f'{x0:.3g}..{x1:.3g}</text>']
    for k, (name, s) in enumerate(series.items()):
        c = colours[k % len(colours)]
        parts.append(f'<text x="{width - pad - 120}" y="{14 + 12 * (k + 1)}" font-size="11" fill="{c}">{name}</text>')
        parts += [f'<circle cx="{sx(t):.1f}" cy="{sy(p - t):.1f}" r="{3 if k == 0 else 2}" fill="none" '
                  f'stroke="{c}"/>' for t, p in s]
    return "".join(parts) + "</svg>"


TASK = Regression()
