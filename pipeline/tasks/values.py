"""What multi-label and regression share: answers that are one fixed-length vector per row.

Each row's answer decodes into a vector (per-label scores, regressed values) and a decision
(the labels present; the values themselves). Stage outputs carry both: ``StageOutputs.values``
the decision (float [N, K], NaN where unanswered), ``probabilities`` or ``logits`` the numbers
compared with the baseline's. The task modules give the metrics and the labels; this module the
per-row comparison, the time-bounded paired bootstrap, the comparison's shape and the checks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from pipeline.answers.base import AnswerError, parse_json
from pipeline.evaluate.compare import DivergingRow, OutputDiff, StageOutputs, served_split
from pipeline.evaluate.gate import Check, at_least, at_most, is_bad, missing
from pipeline.evaluate.stats import LatencySummary

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SECONDS = 2.0  # per candidate: the resampling stops there, and the report says how many were drawn
MAX_FLIPPED_LISTED = 50
MAX_DIVERGING_LISTED = 10
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class ValuePairedTest:
    """A candidate against a reference on the same rows.

    Attributes:
        agreement: the fraction of rows whose decision is the reference's (labels identical; values within
            the tolerance); an unanswered row never agrees.
        disagreeing: how many rows do not.
        output: the largest difference of the compared numbers (``OutputDiff``).
        deltas: metric -> {"delta": candidate - reference, "ci": [2.5%, 97.5%]} by the paired bootstrap.
        resamples: how many bootstrap resamples were drawn (bounded by ``BOOTSTRAP_SECONDS``).
    """

    candidate: str
    reference: str
    agreement: float
    disagreeing: int
    output: OutputDiff
    deltas: dict[str, dict[str, Any]] = field(default_factory=dict)
    resamples: int = 0
    differing_ids: tuple[str, ...] = ()  # the first rows whose decision is not the reference's
    beyond: int = 0  # rows answered by both whose compared numbers are beyond the task's tolerance (blame reads it)


@dataclass(frozen=True)
class ValueRow:
    """A row whose decision differs from the baseline's in some stage: each stage's decision (None: no answer)."""

    id: str
    label: tuple[float, ...]
    predictions: dict[str, tuple[float, ...] | None]


@dataclass(frozen=True)
class ValueComparison:
    """Every stage's metrics and each candidate against the baseline (``tests``) and the stage before (``steps``)."""

    task: str
    labels: tuple[str, ...]
    stages: dict[str, Any]
    tests: dict[str, ValuePairedTest]
    steps: dict[str, ValuePairedTest]
    flipped: tuple[ValueRow, ...]
    flipped_total: int
    served_server_latency: LatencySummary | None = None
    served_overhead_latency: LatencySummary | None = None
    diverging: tuple[DivergingRow, ...] = ()
    shared_name_rows: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # stage -> what its numbers suggest (a softmax, ...)


def answered(s: StageOutputs) -> np.ndarray:
    return s.predictions >= 0


def compared(ref: StageOutputs, cand: StageOutputs) -> tuple[str, np.ndarray, np.ndarray] | None:
    """The numbers compared: scores (probabilities) when both carry them, else both stages' logits or values
    (a handled stage whose answers carry none compares the model's outputs inside the handler)."""
    if cand.probabilities is not None and ref.probabilities is not None:
        return "probabilities", ref.probabilities.astype(np.float64), cand.probabilities.astype(np.float64)
    if cand.logits is not None and ref.logits is not None:
        return cand.logits_from, ref.logits.astype(np.float64), cand.logits.astype(np.float64)
    return None


def output_diff(ref: StageOutputs, cand: StageOutputs) -> tuple[OutputDiff, np.ndarray]:
    """The largest |candidate - reference| of the compared numbers over the rows both answered, and per row."""
    n = len(cand.predictions)
    per_row = np.full(n, np.nan)
    pair = compared(ref, cand)
    if pair is None:
        why = f"the {cand.name} answers carry no scores or values to compare"
        if cand.no_outputs_why:
            why += f", and {cand.no_outputs_why}"
        return OutputDiff(None, None, 0, why), per_row
    quantity, a, b = pair
    diff = np.abs(a - b)
    rows = answered(ref) & answered(cand) & np.isfinite(diff).any(axis=1)
    if not rows.any():
        return OutputDiff(quantity, None, 0, f"no row answered by both {ref.name} and {cand.name}"), per_row
    per_row[rows] = np.nanmax(diff[rows], axis=1)
    return OutputDiff(quantity, float(np.nanmax(per_row)), int(rows.sum())), per_row


def resample_weights(n: int, rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` bootstrap resamples of n rows as row weights (how often each row is drawn), int [count, n]."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=count) if n else np.zeros((count, 0), int)


def paired_bootstrap(stat: Callable[[np.ndarray], dict[str, np.ndarray]], n: int, seed: int = 0,
                     resamples: int | None = None, seconds: float | None = None) -> tuple[dict[str, list], int]:
    """The 95% intervals of each statistic over row resamples, bounded in count and in time.

    ``stat`` takes row weights int [R, n] and returns metric -> float [R] (the candidate's change against the
    reference on each resample, both computed on the same rows). Resamples are drawn in batches of 100 until
    ``resamples`` or ``seconds`` is reached, whichever comes first.

    Returns:
        metric -> [low, high] (NaN where nothing was drawn), and how many resamples were drawn.
    """
    total = BOOTSTRAP_RESAMPLES if resamples is None else resamples
    limit = BOOTSTRAP_SECONDS if seconds is None else seconds
    rng = np.random.default_rng(seed)
    start = time.monotonic()
    drawn: dict[str, list[np.ndarray]] = {}
    done = 0
    while n and done < total and (done == 0 or time.monotonic() - start < limit):
        batch = min(100, total - done)
        for k, v in stat(resample_weights(n, rng, batch)).items():
            drawn.setdefault(k, []).append(np.asarray(v, float))
        done += batch
    out = {}
    for k, parts in drawn.items():
        v = np.concatenate(parts)
        v = v[np.isfinite(v)]
        out[k] = [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v.size else [math.nan] * 2
    return out, done


def value_comparison(task, ids: tuple[str, ...], labels: np.ndarray, stages: list[StageOutputs],
                     server_ms: np.ndarray | None, ctx, *, score, same, deltas, resamples: int | None = None,
                     note: Callable[[StageOutputs], str] | None = None, rtol: float = 0.0) -> ValueComparison:
    """The comparison of a values task.

    Args:
        score: (stage outputs) -> the stage's metrics (with ``answered`` and ``latency``).
        same: (reference, candidate) -> bool [N]: the rows whose decision is the reference's.
        deltas: (reference, candidate) -> the weighted statistic ``paired_bootstrap`` resamples.
        note: (a candidate's outputs) -> what they suggest, for its checks ("" for nothing).
        rtol: rows beyond ``ctx.tolerance + rtol * |reference|`` are listed as diverging.
    """
    base = stages[0]
    metrics = {s.name: score(s) for s in stages}
    tol = ctx.tolerance

    def test(ref: StageOutputs, cand: StageOutputs, boot: int | None) -> ValuePairedTest:
        agree = same(ref, cand)
        diff, _ = output_diff(ref, cand)
        pair = compared(ref, cand)
        beyond = int((rows_beyond(np.abs(pair[2] - pair[1]) - tol - rtol * np.abs(pair[1]))
                      & answered(ref) & answered(cand)).sum()) if pair is not None else 0
        n = len(agree)
        out: dict[str, dict[str, Any]] = {}
        drawn = 0
        if boot != 0:
            cis, drawn = paired_bootstrap(deltas(ref, cand), n, resamples=boot)
            for m, ci in cis.items():
                out[m] = {"delta": metrics[cand.name].get(m) - metrics[ref.name].get(m), "ci": ci}
        return ValuePairedTest(cand.name, ref.name, float(agree.mean()) if n else math.nan, int((~agree).sum()),
                               diff, out, drawn, tuple(ids[i] for i in np.nonzero(~agree)[0][:MAX_FLIPPED_LISTED]),
                               beyond)

    tests = {s.name: test(base, s, resamples) for s in stages[1:]}
    steps = {s.name: test(prev, s, 0) for prev, s in zip(stages, stages[1:])}  # read for blame, not gated
    flipped_mask = np.zeros(len(ids), bool)
    for s in stages[1:]:
        flipped_mask |= ~same(base, s)

    def decision(s: StageOutputs, i: int) -> tuple[float, ...] | None:
        return tuple(float(v) for v in s.values[i]) if s.predictions[i] >= 0 and s.values is not None else None

    flipped = tuple(ValueRow(ids[i], tuple(float(v) for v in np.atleast_1d(labels[i])),
                             {s.name: decision(s, i) for s in stages})
                    for i in np.nonzero(flipped_mask)[0][:MAX_FLIPPED_LISTED])
    diverging = []
    for s in stages[1:]:
        pair = compared(base, s)
        if pair is None:
            continue
        quantity, a, b = pair
        _, per_row = output_diff(base, s)
        excess = np.abs(a - b) - tol - rtol * np.abs(a)
        over = np.nonzero(rows_beyond(excess) & answered(base) & answered(s))[0]
        for i in over[np.argsort(-per_row[over])][:MAX_DIVERGING_LISTED]:
            diverging.append(DivergingRow(ids[i], s.name, base.name, quantity, float(per_row[i]),
                                          tuple(map(float, a[i])), tuple(map(float, b[i]))))
    server_lat, overhead = served_split(stages, server_ms)
    notes = {s.name: note(s) for s in stages[1:]} if note is not None else {}
    return ValueComparison(task.name, ctx.class_labels, metrics, tests, steps, flipped, int(flipped_mask.sum()),
                           server_lat, overhead, tuple(diverging), notes={k: v for k, v in notes.items() if v})


def rows_beyond(excess: np.ndarray) -> np.ndarray:
    """bool [N]: rows with some compared number beyond its tolerance (NaN: not carried, not compared)."""
    return (np.nan_to_num(excess, nan=-1.0) > 0).any(axis=1)


# --- stage outputs ---------------------------------------------------------------------------------------


def answer_outputs(name: str, outcomes: tuple, k: int, quantity: str) -> StageOutputs:
    """A handler stage's outputs: each answered row's decision (``Prediction.extra['values']``) and the
    numbers its answer carries (scores as probabilities, or values as logits)."""
    n = len(outcomes)
    values = np.full((n, k), np.nan)
    numbers = np.full((n, k), np.nan)
    lat = np.full(n, np.nan)
    preds = np.full(n, -1, dtype=np.int64)
    carried = False
    for r in outcomes:
        if r.latency_ms is not None and r.is_ok:
            lat[r.index] = r.latency_ms
        if not r.is_ok or r.prediction is None:
            continue
        preds[r.index] = 0
        values[r.index] = r.prediction.extra["values"]
        nums = r.prediction.probabilities if quantity == "probabilities" else r.prediction.logits
        if nums is not None:
            numbers[r.index] = nums
            carried = True
    if quantity == "probabilities":
        return StageOutputs(name, preds, numbers if carried else None, None, lat, values=values)
    return StageOutputs(name, preds, None, numbers if carried else None, lat, logits_from=quantity, values=values)


# --- answers ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Carried:
    """What a values task's answers carry, in the shape ``answers.base.Carries`` describes."""

    probabilities: str
    logits: bool
    words: str

    def describe(self) -> str:
        return self.words


class TaskDecoder:
    """The decoder a values task gives the answer codec: the JSON document -> Prediction, or, with
    ``answers.decode``, what the team's function returned -> Prediction."""

    accepts_text = False

    def __init__(self, name: str, parse: Callable[[Any], Any], carries: Carried, fn=None, ref: str = "") -> None:
        self.name = name
        self._parse = parse
        self.carries = carries
        self._fn = fn
        self._ref = ref

    def observed(self, pred) -> "TaskDecoder":
        return self

    def decode(self, doc: Any):
        if self._fn is not None:
            from pipeline.usercode import plain, user_frame

            try:
                doc = self._fn(doc)
            except Exception as e:  # the team's code: any exception is this row's bad answer, quoted
                raise AnswerError(f"answers.decode {self._ref} raised {type(e).__name__}: {plain(str(e))}"
                                  f"{user_frame(e)}") from e
            if hasattr(doc, "tolist"):
                doc = doc.tolist()
        return self._parse(parse_json(doc) if isinstance(doc, (bytes, str)) and self._fn is None else doc)


def task_decoder(name: str, parse: Callable[[Any], Any], carries: Carried, spec) -> TaskDecoder:
    """A task's decoder: ``answers.decode`` (when the spec names one) applied first, then the task's parsing."""
    fn = ref = None
    if spec.answers.decode:
        from pipeline.usercode import import_callable

        fn, ref = import_callable(spec.answers.decode, "answers.decode"), spec.answers.decode.rsplit("/", 1)[-1]
    return TaskDecoder(name, parse, carries, fn, ref or "")


def listed(v: Any) -> Any:
    return v.tolist() if hasattr(v, "tolist") else v


# --- checks ----------------------------------------------------------------------------------------------


def metric_checks(spec, cand, base, stage: str, why: str, lower_is_better: frozenset[str]) -> list[Check]:
    """min, max_drop and max_relative_drop of every gated metric; for a loss (``lower_is_better``) the drop is
    its rise and ``min`` does not apply (it bounds scores)."""
    out = []
    for metric, th in spec.metrics.items():
        low = metric in lower_is_better
        if cand is None or base is None:
            v = b = None
            undefined = ""
        else:
            v, b = cand.get(metric), base.get(metric)
            undefined = cand.undefined.get(metric) or base.undefined.get(metric) or ""
        worse = (lambda v, b: v - b) if low else (lambda v, b: b - v)
        limits = []
        if th.min is not None and not low:
            limits.append((f"{metric} >= min", f">= {th.min:.4f}", lambda v, b, t=th.min: at_least(v, t),
                           lambda v, b: ""))
        word = "rise" if low else "drop"
        if th.max_drop is not None:
            limits.append((f"{metric} {word}", f"{word} <= {th.max_drop:.4f}",
                           lambda v, b, t=th.max_drop: at_most(worse(v, b), t),
                           lambda v, b: f"{word} {worse(v, b):+.4f}"))
        if th.max_relative_drop is not None:
            limits.append((f"{metric} relative {word}", f"relative {word} <= {th.max_relative_drop:.2%}",
                           lambda v, b, t=th.max_relative_drop: abs(b) > 0 and at_most(worse(v, b) / abs(b), t),
                           lambda v, b: f"relative {word} {worse(v, b) / abs(b):+.2%}" if abs(b) > 0
                           else "baseline is 0"))
        for name, limit, ok, detail in limits:
            if undefined or is_bad(v) or is_bad(b):
                out.append(missing(name, stage, limit, undefined or why or f"{metric} could not be measured", spec,
                                   evaluable_gap=bool(undefined)))
                continue
            out.append(Check(name, stage, v, b, limit, bool(ok(v, b)), detail(v, b)))
    return out


def agreement_check(spec, t: ValuePairedTest | None, stage: str, why: str, what: str,
                    differing: tuple[str, ...]) -> Check:
    """The fraction of rows whose decision is the baseline's (the seeds: identical predictions)."""
    name, limit = "prediction agreement", f">= {spec.min_prediction_agreement:.4f}"
    if t is None:
        return missing(name, stage, limit, why, spec)
    named = f" ({', '.join(differing[:8])}{', ...' if len(differing) > 8 else ''})" if differing else ""
    return Check(name, stage, t.agreement, 1.0, limit, at_least(t.agreement, spec.min_prediction_agreement),
                 f"{t.disagreeing} row(s) {what}{named}")


def improvement_check(spec, t: ValuePairedTest | None, stage: str, metric: str, lower_is_better: bool,
                      why: str) -> Check | None:
    """A candidate better than the baseline beyond noise (the 95% interval of the change on the better side
    of 0) fails: packaging should not improve a model; suspect the wrong data or model."""
    if not spec.flag_improvement:
        return None
    name, limit = "no improvement beyond noise", f"95% CI of the {metric} change includes 0 or worse"
    if t is None:
        return missing(name, stage, limit, why, spec)
    d = t.deltas.get(metric)
    if not d or is_bad(d["ci"][0]) or is_bad(d["ci"][1]):
        return Check(name, stage, None, 0.0, limit, True, f"no interval ({t.resamples} resamples)",
                     evaluated=False)
    lo, hi = d["ci"]
    improved = hi < 0 if lower_is_better else lo > 0
    return Check(name, stage, d["delta"], 0.0, limit, not improved,
                 ("metrics improved after packaging beyond noise: suspect the wrong data or model; " if improved
                  else "") + f"delta {metric} {d['delta']:+.4g}, 95% CI [{lo:+.4g}, {hi:+.4g}], "
                 f"{t.resamples} resamples")


def output_check(spec, plan, t: ValuePairedTest | None, stage: str, why: str, over: tuple[str, ...],
                 name: str = "max abs output difference", limit: str | None = None,
                 passed: Callable[[float], bool] | None = None) -> Check:
    limit = limit or f"<= {spec.max_output_diff:g}"
    if t is None:
        return missing(name, stage, limit, why, spec)
    d = t.output
    if d.quantity is None or d.max_abs is None:
        return missing(name, stage, limit, d.reason or "nothing to compare", spec, evaluable_gap=d.quantity is None)
    detail = f"{d.quantity}, {d.rows_compared} row(s) compared"
    if over:
        detail += f"; largest beyond the tolerance: {', '.join(over)}"
    ok = passed(d.max_abs) if passed is not None else at_most(d.max_abs, spec.max_output_diff)
    return Check(name, stage, d.max_abs, 0.0, limit, bool(ok), detail)


def fmt_values(v: tuple[float, ...] | None, digits: int = 4) -> str:
    if v is None:
        return "no answer"
    return ", ".join(f"{x:.{digits}g}" for x in v[:8]) + (", ..." if len(v) > 8 else "")


# --- rows.parquet -----------------------------------------------------------------------------------------


def row_columns(prefix: str, outputs: StageOutputs, names: tuple[str, ...], labels: bool) -> dict[str, Any]:
    """A stage's columns: ``<stage>_labels`` (the labels present, ``;``-joined) for multi-label, or
    ``<stage>_value_<target>`` per target for regression; None where the row got no answer."""
    import pandas as pd

    ok = outputs.predictions >= 0
    v = outputs.values
    if labels:
        col = [";".join(names[k] for k in np.nonzero(v[i] > 0.5)[0]) if ok[i] and v is not None else None
               for i in range(len(ok))]
        out: dict[str, Any] = {f"{prefix}_labels": pd.array(col, dtype="string")}
        if outputs.probabilities is not None:
            for k, name in enumerate(names):
                p = outputs.probabilities[:, k]
                out[f"{prefix}_score_{name}"] = pd.array([float(x) if ok[i] and np.isfinite(x) else None
                                                          for i, x in enumerate(p)], dtype="Float64")
        return out
    return {f"{prefix}_value_{name}": pd.array([float(v[i, k]) if ok[i] and v is not None and np.isfinite(v[i, k])
                                                 else None for i in range(len(ok))], dtype="Float64")
            for k, name in enumerate(names)}


# --- report sections ------------------------------------------------------------------------------------


def _num(v: Any, digits: int = 4) -> str:
    return "undefined" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def sections(report: dict, figures: tuple[str, ...], per_title: str, per_key: str, per_figures: tuple[str, ...],
             lower: frozenset[str] = frozenset(), svg: str = "") -> list:
    """The metric table (stage by stage), the per-label or per-target table, the paired intervals and the rows
    whose decision differs, from report.json alone."""
    from pipeline.tasks.base import Section

    metrics = report.get("metrics") or {}
    if not metrics:
        return []
    names = list(metrics)
    rows = tuple((m + (" (lower is better)" if m in lower else ""),
                  *(_num(metrics[n].get(m)) for n in names)) for m in figures)
    rows += (("rows answered", *(f"{metrics[n]['answered']}/{metrics[n]['rows']}" for n in names)),)
    undefined = tuple(f"{n}: {k}: {why}" for n in names for k, why in (metrics[n].get("undefined") or {}).items())
    out = [Section("Metrics, stage by stage", undefined, ((("metric", *names), rows),), svg)]
    first = metrics[names[0]].get(per_key) or {}
    counted = bool(first) and "support" in next(iter(first.values()))  # labels have rows; targets do not

    def cells(key: str) -> tuple[str, ...]:
        return tuple(" / ".join(_num((metrics[n].get(per_key) or {}).get(key, {}).get(f), 3) for f in per_figures)
                     for n in names)

    per_rows = tuple((key, *((str(first[key]["support"]),) if counted else ()), *cells(key)) for key in list(first)[:50])
    if per_rows:
        out.append(Section(per_title, (), ((("", *(("rows",) if counted else ()), *names), per_rows),)))
    tests = report.get("paired_tests") or {}
    t_rows = []
    for cand, t in tests.items():
        for m, d in (t.get("deltas") or {}).items():
            lo, hi = d["ci"]
            t_rows.append((cand, m, _num(d["delta"]), f"[{_num(lo)}, {_num(hi)}]", str(t.get("resamples"))))
    if t_rows:
        out.append(Section("Paired bootstrap: each metric's change against the baseline, by row", (),
                           ((("candidate", "metric", "change", "95% CI", "resamples"), tuple(t_rows)),)))
    flipped = report.get("flipped_rows") or []
    if flipped:
        stages = list(flipped[0]["predictions"])
        f_rows = tuple((r["id"], fmt_values(tuple(r["label"])), *(fmt_values(
            tuple(r["predictions"][s]) if r["predictions"][s] is not None else None) for s in stages))
            for r in flipped[:20])
        out.append(Section(f"Rows whose answer differs from the baseline's ({report.get('flipped_total')})", (),
                           ((("id", "label", *stages), f_rows),)))
    return out
