"""What detection and segmentation share on the task seam: per-row answers that are objects, not classes.

Each stage's outputs carry one decoded answer per row (``TaskOutputs.answers``: boxes, a mask;
None where the row got no answer). A task supplies how two answers compare (a row diff with
``is_same``), how a stage's answers score against the ground truth (figures, per-class
figures, per-row counts that sum), and the comparison is assembled here into the shape the
generic readers use (``evaluate.compare.Comparison``: stages, tests, steps, flipped,
diverging), so attribution, the gate's shared checks and the report builder read it unchanged.
In-process stages encode their answers as float32 rows (``Scores.logits``), which
``model.forward`` stores as it stores logits; the task decodes them back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.evaluate.compare import (Comparison, DivergingRow, FlippedRow, OutputDiff, PairedTest, StageMetrics,
                                       StageOutputs, served_split)
from pipeline.evaluate.stats import summarize_latency

PICTURED_ROWS = 4         # per candidate stage: the worst-differing rows drawn in report.html
BOOTSTRAP_SECONDS = 1.0   # per candidate: the paired intervals stop resampling after this
BOOTSTRAP_RESAMPLES = 400
NOT_CLASSIFICATION = "not a classification figure: this task answers {what} per row"
CLASS_FIGURES = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_weighted",
                 "recall_weighted", "f1_weighted")


@dataclass(frozen=True)
class TaskOutputs(StageOutputs):
    """A stage's outputs with one decoded answer per row (None: not answered)."""

    answers: tuple = ()


@dataclass(frozen=True)
class TaskStageMetrics(StageMetrics):
    """A stage's task figures (``figures``: mAP, mIoU, ...) in the shape of classification's metrics."""

    # the detection and segmentation figures, flat as every task's (history and the renderers read them so)
    map: float = float("nan")
    map_50: float = float("nan")
    miou: float = float("nan")
    pixel_accuracy: float = float("nan")
    figures: dict[str, float] = field(default_factory=dict)
    per_class_figures: dict[str, dict[str, float]] = field(default_factory=dict)
    invalid_answers: dict[str, list[str]] = field(default_factory=dict)  # row id -> problems seen alone

    def get(self, metric: str) -> float:
        if metric in self.figures:
            return float(self.figures[metric])
        return float(getattr(self, metric))


@dataclass(frozen=True)
class TaskPairedTest(PairedTest):
    """A candidate against a reference: rows whose answers are not the same, the task's largest differences,
    each task figure's change with a paired bootstrap interval by row."""

    differences: dict[str, float] = field(default_factory=dict)
    deltas: dict[str, float] = field(default_factory=dict)
    delta_cis: dict[str, tuple[float, float]] = field(default_factory=dict)
    resamples: int = 0


def decoder_for(task, spec, words: str):
    """The answer codec's decoder for a task: the JSON document (or what ``answers.decode`` returned) -> the
    task's ``decode``; the values tasks' decoder (tasks/values.py) with this task's parsing."""
    from pipeline.tasks import values as V

    return V.task_decoder(task.name, lambda doc: task.decode(doc, spec), V.Carried("none", False, words), spec)


def encoded_outputs(name: str, scores, decode_row: Callable[[np.ndarray], Any]) -> TaskOutputs:
    """An in-process stage's outputs: each row's answer decoded from its float32 row (``Scores.logits``; None: the
    row got no answer)."""
    answers = tuple(decode_row(r) for r in np.asarray(scores.logits))
    return TaskOutputs(name, _predictions(answers), None, None, scores.latencies_ms, answers=answers)


def answered_outputs(name: str, outcomes: tuple, key: str) -> TaskOutputs:
    """A handler stage's outputs: each answered row's decoded answer (``Prediction.extra[key]``) and its latency."""
    n = len(outcomes)
    answers: list[Any] = [None] * n
    lat = np.full(n, np.nan)
    for r in outcomes:
        if r.is_ok and r.prediction is not None and (r.prediction.extra or {}).get(key) is not None:
            answers[r.index] = r.prediction.extra[key]
            if r.latency_ms is not None:
                lat[r.index] = r.latency_ms
    return TaskOutputs(name, _predictions(answers), None, None, lat, answers=tuple(answers))


def _predictions(answers) -> np.ndarray:
    return np.array([0 if a is not None else -1 for a in answers], np.int64)


def stage_metrics(stage: str, n: int, answered: int, figures: dict[str, float],
                  per_class: dict[str, dict[str, float]], latencies_ms, what: str, n_classes: int) -> TaskStageMetrics:
    """A stage's figures; the classification ones are NaN and said to be undefined (so no renderer prints 0)."""
    why = NOT_CLASSIFICATION.format(what=what)
    undefined = {m: why for m in CLASS_FIGURES if m not in figures}
    undefined.update({m: "undefined (0/0)" for m, v in figures.items() if v is None or not math.isfinite(v)})
    nan = float("nan")
    flat = {k: (float(v) if v is not None else nan) for k, v in figures.items()
            if k in ("map", "map_50", "miou", "pixel_accuracy", "precision_macro", "recall_macro", "f1_macro")}
    return TaskStageMetrics(
        stage=stage, rows=n, answered=answered, accuracy=nan, **{"precision_macro": nan, "recall_macro": nan,
                                                                 "f1_macro": nan, **flat},
        precision_weighted=nan, recall_weighted=nan, f1_weighted=nan, per_class={}, confusion=[],
        failed_by_class=[], latency=summarize_latency(latencies_ms) if latencies_ms is not None else None,
        undefined=undefined, classes_total=0, figures=dict(figures), per_class_figures=per_class)


def answered_of(outputs: StageOutputs) -> np.ndarray:
    return np.asarray(outputs.predictions) >= 0


def paired_bootstrap(stat: Callable[[np.ndarray], dict[str, float]], n: int, seed: int = 0,
                     seconds: float = BOOTSTRAP_SECONDS, resamples: int = BOOTSTRAP_RESAMPLES
                     ) -> tuple[dict[str, tuple[float, float]], int]:
    """95% percentile intervals of ``stat(rows)`` (a dict of figure changes) over row resamples, bounded in time.

    Returns:
        figure -> (low, high), and how many resamples were drawn (fewer than asked when time ran out).
    """
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    deadline = time.monotonic() + seconds
    done = 0
    for done in range(1, resamples + 1):
        for k, v in stat(rng.integers(0, n, size=n)).items():
            if v is not None and math.isfinite(v):
                draws.setdefault(k, []).append(v)
        if time.monotonic() > deadline:
            break
    return {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for k, v in draws.items()
            if len(v) >= 20}, done


@dataclass(frozen=True)
class RowCompare:
    """One row's comparison as a task reports it."""

    same: bool
    differences: dict[str, float]   # quantity -> its largest difference on this row
    detail: str
    reference_values: tuple[float, ...] = ()
    candidate_values: tuple[float, ...] = ()
    picture: dict | None = None  # what report.html draws for this row (boxes on the image, both masks)


@dataclass(frozen=True)
class TaskDivergingRow(DivergingRow):
    """A differing row, with what report.html draws of it (kept for the worst few rows of each stage)."""

    picture: dict | None = None


def compare_structured(ids: Sequence[str], stages: list[StageOutputs], class_labels: tuple[str, ...],
                       server_ms: np.ndarray | None, *, row_compare: Callable[[Any, Any], RowCompare],
                       score: Callable[[list[Any], np.ndarray], dict[str, float]],
                       row_stats: Callable[[list[Any]], Any], stats_of: Callable[[Any, np.ndarray], dict[str, float]],
                       per_class: Callable[[list[Any]], dict[str, dict[str, float]]],
                       output_quantity: str, output_key: str, what: str, tolerance: float,
                       validate: Callable[[Any, int], list[str]] | None = None) -> Comparison:
    """Every stage scored and compared, each candidate with the baseline (tests) and with the stage before (steps).

    Args:
        row_compare: (reference answer, candidate answer, row index) -> RowCompare.
        score: (answers, rows) -> the stage's figures on those rows (all rows: the metrics).
        row_stats / stats_of: per-row statistics computed once per stage, and the figures of a row resample
            from them (the paired bootstrap's inner loop).
        per_class: answers -> per-class figures.
        validate: (answer, row index) -> its problems on its own (no reference): classes in range,
            probabilities in [0, 1], boxes inside the image.
        output_quantity, output_key: what the output-difference check compares and which difference it is.
    """
    n = len(ids)
    all_rows = np.arange(n)
    metrics = {}
    cached = {}
    for s in stages:
        answers = list(s.answers) if isinstance(s, TaskOutputs) else [None] * n
        metrics[s.name] = stage_metrics(s.name, n, int(answered_of(s).sum()), score(answers, all_rows),
                                        per_class(answers), s.latencies_ms, what, len(class_labels))
        if validate is not None:
            bad = {ids[i]: p for i, a in enumerate(answers) if a is not None and (p := validate(a, i))}
            metrics[s.name] = replace(metrics[s.name], invalid_answers=dict(list(bad.items())[:50]))
        cached[s.name] = (answers, row_stats(answers))
    base = stages[0]
    diffs: dict[tuple[str, str], list[RowCompare | None]] = {}

    def pair(ref: StageOutputs, cand: StageOutputs, intervals: bool) -> TaskPairedTest:
        ra, ca = cached[ref.name][0], cached[cand.name][0]
        rows = [row_compare(a, b, i) if a is not None and b is not None else None
                for i, (a, b) in enumerate(zip(ra, ca))]
        diffs[(ref.name, cand.name)] = rows
        both = [r for r in rows if r is not None]
        not_same = sum(1 for r in both if not r.same) + sum(
            1 for a, b in zip(ra, ca) if (a is None) != (b is None))
        biggest: dict[str, float] = {}
        for r in both:
            for k, v in r.differences.items():
                biggest[k] = max(biggest.get(k, 0.0), v)
        out_max = biggest.get(output_key) if both else None
        output = OutputDiff(output_quantity if both else None, out_max, len(both),
                            "" if both else f"no row answered by both {ref.name} and {cand.name}")
        fr, fc = metrics[ref.name].figures, metrics[cand.name].figures
        deltas = {k: fc[k] - fr[k] for k in fr if k in fc and fr[k] is not None and fc[k] is not None}
        cis: dict[str, tuple[float, float]] = {}
        drawn = 0
        if intervals and n > 1:
            rs, cs = cached[ref.name][1], cached[cand.name][1]

            def change(idx: np.ndarray) -> dict[str, float]:
                a, b = stats_of(rs, idx), stats_of(cs, idx)
                return {k: b[k] - a[k] for k in a if k in b}

            cis, drawn = paired_bootstrap(change, n)
        nan = float("nan")
        return TaskPairedTest(
            candidate=cand.name, reference=ref.name, agreement=(1 - not_same / n) if n else nan,
            disagreeing=int(not_same), reference_only_correct=0, candidate_only_correct=0, mcnemar_p=nan,
            delta_accuracy=nan, delta_accuracy_ci=(nan, nan), delta_f1_macro=deltas.get("f1_macro", nan),
            delta_f1_macro_ci=cis.get("f1_macro", (nan, nan)), output=output, differences=biggest, deltas=deltas,
            delta_cis=cis, resamples=drawn)

    tests = {s.name: pair(base, s, True) for s in stages[1:]}
    steps = {s.name: pair(prev, s, False) for prev, s in zip(stages, stages[1:])}
    flipped_mask = np.zeros(n, bool)
    diverging = []
    for s in stages[1:]:
        rows = diffs[(base.name, s.name)]
        ra, ca = cached[base.name][0], cached[s.name][0]
        mine = []
        for i, r in enumerate(rows):
            if r is None:
                flipped_mask[i] |= (ra[i] is None) != (ca[i] is None)
                continue
            if not r.same:
                flipped_mask[i] = True
                mine.append(TaskDivergingRow(ids[i], s.name, base.name, r.detail,
                                             float(max(r.differences.values(), default=0.0)),
                                             r.reference_values, r.candidate_values, r.picture))
        mine.sort(key=lambda d: -d.max_abs_diff)
        diverging += [d if k < PICTURED_ROWS else replace(d, picture=None) for k, d in enumerate(mine)]
    diverging.sort(key=lambda d: -d.max_abs_diff)
    flipped = [FlippedRow(ids[i], -1, {s.name: (None, None) for s in stages}) for i in np.nonzero(flipped_mask)[0][:50]]
    server_lat, overhead = served_split(stages, server_ms)
    return Comparison(labels=class_labels, stages=metrics, tests=tests, steps=steps, flipped=tuple(flipped),
                      flipped_total=int(flipped_mask.sum()), served_server_latency=server_lat,
                      served_overhead_latency=overhead, diverging=tuple(diverging[:100]))


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "undefined"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def sections(report: dict, figures: tuple[str, ...], per_title: str, notes: tuple[str, ...] = ()) -> list:
    """The stage-by-stage figures, the per-class table, the paired intervals and the rows that differ most,
    from report.json alone (report.html adds the per-class bars and the pictures of those rows)."""
    from pipeline.tasks.base import Section

    metrics = report.get("metrics") or {}
    if not metrics:
        return []
    names = list(metrics)
    rows = tuple((m, *(_num((metrics[n].get("figures") or {}).get(m)) for n in names)) for m in figures)
    rows += (("rows answered", *(f"{metrics[n]['answered']}/{metrics[n]['rows']}" for n in names)),)
    out = [Section("Metrics, stage by stage", notes, ((("metric", *names), rows),))]
    per = metrics[names[0]].get("per_class_figures") or {}
    if per:
        keys = [k for k in next(iter(per.values())) if k != "support"]
        per_rows = tuple((c, str(per[c].get("support", "")),
                          *(" / ".join(_num((metrics[n].get("per_class_figures") or {}).get(c, {}).get(k), 3)
                                       for k in keys) for n in names)) for c in per)
        out.append(Section(f"{per_title} ({' / '.join(keys)})", (), (((("class", "truth", *names)), per_rows),)))
    t_rows = []
    for cand, t in (report.get("paired_tests") or {}).items():
        for m, d in (t.get("deltas") or {}).items():
            lo, hi = (t.get("delta_cis") or {}).get(m) or (None, None)
            t_rows.append((cand, m, _num(d), f"[{_num(lo)}, {_num(hi)}]" if lo is not None else "-",
                           str(t.get("resamples"))))
    if t_rows:
        out.append(Section("Paired bootstrap: each figure's change against the baseline, by row", (),
                           ((("candidate", "figure", "change", "95% CI", "resamples"), tuple(t_rows)),)))
    div = report.get("diverging_rows") or []
    if div:
        out.append(Section(f"Rows whose answer differs from the baseline's ({report.get('flipped_total')})", (),
                           ((("id", "stage", "against", "what differs", "largest difference"),
                             tuple((d["id"], d["stage"], d["reference"], d["quantity"], _num(d["max_abs_diff"], 6))
                                   for d in div[:20])),)))
    return out


def metric_limits(gate, names: Sequence[str]) -> dict:
    """The spec's limits for this task's figures, or the seeds' (each within 1 point of the baseline)."""
    from pipeline.spec import MetricThreshold

    mine = {m: th for m, th in gate.metrics.items() if m in names}
    return mine or {m: MetricThreshold(max_drop=0.01) for m in names}


def improvement_check(spec, cmp: Comparison | None, stage: str, metric: str, why: str):
    """No improvement beyond noise of the task's primary figure (``values.improvement_check`` on this task's
    paired intervals): packaging should not improve a model; suspect the wrong data or model. None when
    ``gate.flag_improvement`` is off."""
    from types import SimpleNamespace

    from pipeline.tasks import values as V

    t = cmp.tests.get(stage) if cmp is not None else None
    view = None if t is None else SimpleNamespace(
        deltas={m: {"delta": t.deltas[m], "ci": list(ci)} for m, ci in t.delta_cis.items() if m in t.deltas},
        resamples=t.resamples)
    return V.improvement_check(spec, view, stage, metric, False, why)


def checks_for(spec, plan, cmp: Comparison | None, stage: str, base_name: str, why: str,
               metrics: dict[str, Any], per_class_keys: tuple[str, ...], output_limit_words: str,
               extra: Callable[[TaskPairedTest], list] | None = None) -> list:
    """A structured task's gate checks of one candidate: identical answers, each figure within its limits,
    per-class figures within max drop, the output difference (and the task's extra checks)."""
    from pipeline.evaluate.gate import Check, metric_checks, missing

    have = cmp is not None and stage in cmp.stages and base_name in cmp.stages
    t = cmp.tests.get(stage) if have else None
    cand = cmp.stages[stage] if have else None
    base = cmp.stages[base_name] if have else None
    checks = []
    name, limit = "answers valid on their own", "no row"
    if cand is None:
        checks.append(missing(name, stage, limit, why, spec))
    else:
        bad = cand.invalid_answers
        first = next(iter(bad.items()), None)
        checks.append(Check(name, stage, len(bad), 0, limit, not bad,
                            f"{first[0]}: {'; '.join(first[1][:3])}" if first else "every answer checked alone"))
    name, limit = "identical answers", f">= {spec.min_prediction_agreement:.4f} of rows"
    if t is None:
        checks.append(missing(name, stage, limit, why, spec))
    else:
        over = [d.id for d in cmp.diverging if d.stage == stage][:5]
        checks.append(Check(name, stage, t.agreement, 1.0, limit, t.agreement >= spec.min_prediction_agreement - 1e-12,
                            f"{t.disagreeing} row(s) differ" + (f": {', '.join(over)}" if over else "")))
    checks += metric_checks(spec.model_copy(update={"metrics": metrics}), cand, base, stage, why)
    drop = min((th.max_drop for th in metrics.values() if th.max_drop is not None), default=0.01)
    name, limit = "per-class figures drop", f"drop <= {drop:.4f} for every class"
    if cand is None or base is None:
        checks.append(missing(name, stage, limit, why, spec))
    else:
        worst, where = 0.0, ""
        for cls, figs in base.per_class_figures.items():
            for k in per_class_keys:
                b, v = figs.get(k), cand.per_class_figures.get(cls, {}).get(k)
                if b is None or not math.isfinite(b):
                    continue
                d = b - (v if v is not None and math.isfinite(v) else 0.0)
                if d > worst:
                    worst, where = d, f"{k} of {cls}: {b:.4f} -> {v if v is None else round(v, 4)}"
        checks.append(Check(name, stage, worst, 0.0, limit, worst <= drop + 1e-12, where or "no class dropped"))
    name = "max abs output difference"
    if t is None or t.output.max_abs is None:
        checks.append(missing(name, stage, output_limit_words, why if t is None else t.output.reason, spec))
    else:
        checks.append(Check(name, stage, t.output.max_abs, 0.0, output_limit_words,
                            t.output.max_abs <= spec.max_output_diff, f"{t.output.quantity}, {t.output.rows_compared} "
                            "row(s) compared"))
    if extra is not None and t is not None:
        checks += extra(t)
    return checks
