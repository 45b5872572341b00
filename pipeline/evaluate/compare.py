"""Compare: the same metrics for every stage, side by side, and each candidate against the baseline.

Stages are named (``names.Stage``) and any number may take part: baseline, exported,
handled (at batch 1 and at the served batch size), served. Failed rows count against their
stage: each is a wrong prediction for accuracy and a missed one for its true class's
recall, so a failure can never make a candidate look better. A metric that cannot be
computed (0/0: a class never predicted) is undefined (NaN, with the reason), never 0.

Macro and weighted averages run over the classes *present* among the eval labels by default
(``gate.metric_classes: present``, sklearn's ``labels=`` set to those classes): a 1000-class
model evaluated on rows of 5 classes is averaged over those 5. A prediction of a class absent
from the eval rows is still an error (it lowers the true class's recall and the accuracy) but
adds no precision term of its own: the absent class is not averaged. ``metric_classes: all``
averages over every class of the model; a class absent from the rows then has recall 0/0,
which makes every macro and weighted figure undefined.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import binomtest

from pipeline.evaluate.stats import LatencySummary, summarize_latency
from pipeline.names import Stage, name_classes

log = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 1000
MAX_FLIPPED_LISTED = 50
MAX_DIVERGING_LISTED = 10
METRIC_CLASSES = ("present", "all")


@dataclass(frozen=True)
class StageOutputs:
    """What one stage produced per row, in dataset order.

    Attributes:
        name: the stage (a ``Stage``, or a ``StageName`` variant such as ``handled@batch4``).
        predictions: int64 [N], -1 where the row got no answer.
        probabilities: float64 [N, C], NaN where not carried or not answered; None when the
            stage's answers carry no probabilities.
        logits: float [N, C] or None.
        latencies_ms: float64 [N] or None.
        logits_from: what the logits are, as the output-difference check names them ("logits", or the
            model's outputs read inside the handler when its answers carry only a class).
    """

    name: str
    predictions: np.ndarray
    probabilities: np.ndarray | None
    logits: np.ndarray | None
    latencies_ms: np.ndarray | None
    logits_from: str = "logits"
    no_outputs_why: str | None = None  # why a stage whose answers carry only a class has no numbers to compare
    # tasks other than classification (tasks/values.py): each row's decision, float [N, K], NaN where unanswered
    # (multi-label: the labels present, 0/1; regression: the values)
    values: np.ndarray | None = None

    @classmethod
    def from_scores(cls, name: str, scores) -> "StageOutputs":
        """An in-process stage's outputs from its ``model.forward.Scores``."""
        return cls(name, scores.predictions, scores.probabilities, scores.logits, scores.latencies_ms)


@dataclass(frozen=True)
class StageMetrics:
    """Classification metrics of one stage's predictions over all rows (NaN: undefined, see ``undefined``)."""

    stage: str
    rows: int
    answered: int
    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    precision_weighted: float
    recall_weighted: float
    f1_weighted: float
    per_class: dict[str, dict[str, float]]  # class label -> precision, recall, f1, support
    confusion: list[list[int]]  # rows: true class, columns: predicted class (answered rows only)
    failed_by_class: list[int]
    latency: LatencySummary | None
    undefined: dict[str, str] = field(default_factory=dict)  # metric -> why it cannot be computed
    metric_classes: str = "present"  # what macro/weighted average over: "present" (in the eval labels) or "all"
    classes_averaged: int = 0  # how many classes the macro/weighted figures average over
    classes_total: int = 0  # the model's classes

    def get(self, metric: str) -> float:
        return float(getattr(self, metric))


@dataclass(frozen=True)
class OutputDiff:
    """How far a candidate's outputs are from the baseline's, on the rows both answered."""

    quantity: str | None  # "logits", "probabilities" or None when the answers carry neither
    max_abs: float | None
    rows_compared: int
    reason: str = ""  # why it could not be measured


@dataclass(frozen=True)
class PairedTest:
    """A candidate against a reference on the same rows: McNemar and bootstrap intervals."""

    candidate: str
    reference: str
    agreement: float
    disagreeing: int
    reference_only_correct: int
    candidate_only_correct: int
    mcnemar_p: float
    delta_accuracy: float
    delta_accuracy_ci: tuple[float, float]
    delta_f1_macro: float
    delta_f1_macro_ci: tuple[float, float]
    output: OutputDiff


@dataclass(frozen=True)
class FlippedRow:
    """A row whose prediction differs from the baseline's in some stage: each stage's class and probability."""

    id: str
    label: int
    predictions: dict[str, tuple[int | None, float | None]]


@dataclass(frozen=True)
class DivergingRow:
    """A row whose candidate outputs differ from the reference's beyond the tolerance."""

    id: str
    stage: str
    reference: str
    quantity: str
    max_abs_diff: float
    reference_values: tuple[float, ...]
    candidate_values: tuple[float, ...]


@dataclass(frozen=True)
class Comparison:
    labels: tuple[str, ...]
    stages: dict[str, StageMetrics]
    tests: dict[str, PairedTest]  # each candidate against the baseline
    steps: dict[str, PairedTest]  # each stage against the one before it (where blame is read)
    flipped: tuple[FlippedRow, ...]
    flipped_total: int
    served_server_latency: LatencySummary | None = None
    served_overhead_latency: LatencySummary | None = None
    diverging: tuple[DivergingRow, ...] = ()
    # stage -> ids of the rows whose answer named a class by a name several classes share (compared by name)
    shared_name_rows: dict[str, tuple[str, ...]] = field(default_factory=dict)


def class_keys(class_labels: tuple[str, ...]) -> list[str]:
    """One key per class for per-class tables: its name, with its index added where several classes share
    the name ('crane [134]', 'crane [517]'), so no class hides another."""
    seen: dict[str, int] = {}
    for name in class_labels:
        seen[name] = seen.get(name, 0) + 1
    return [name if seen[name] == 1 else f"{name} [{k}]" for k, name in enumerate(class_labels)]


def averaged_classes(y: np.ndarray, c: int, metric_classes: str = "present") -> np.ndarray:
    """bool [C]: the classes macro and weighted figures average over (those among ``y``, or all)."""
    if metric_classes not in METRIC_CLASSES:
        raise ValueError(f"metric_classes must be one of {METRIC_CLASSES}, got {metric_classes!r}")
    if metric_classes == "all":
        return np.ones(c, bool)
    return np.bincount(y, minlength=c)[:c] > 0


def _f1_macro(y: np.ndarray, p: np.ndarray, c: int, over: np.ndarray | None = None) -> float:
    """Macro F1 with 0 for 0/0 (for bootstrap intervals only), vectorised, over the classes ``over``
    (bool [C]; None: all). The intervals resample rows but keep the full rows' class set, so a
    resample that misses a class scores it 0 rather than averaging over fewer classes."""
    valid = p >= 0
    tp = np.bincount(y[valid & (p == y)], minlength=c).astype(float)
    predicted = np.bincount(p[valid], minlength=c).astype(float)
    actual = np.bincount(y, minlength=c).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(predicted > 0, tp / predicted, 0.0)
        rec = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    if over is not None:
        f1 = f1[:c][over] if over.any() else np.zeros(0)
    return float(f1.mean()) if len(f1) else 0.0


def score_predictions(stage: str, y: np.ndarray, pred: np.ndarray, class_labels: tuple[str, ...],
                      latencies_ms=None, metric_classes: str = "present") -> StageMetrics:
    """Metrics of one stage; ``pred`` is -1 where the row got no answer.

    Args:
        stage: name shown in reports.
        y: true class indices.
        pred: predicted class indices, -1 for failed rows.
        class_labels: names of the classes, index order.
        latencies_ms: per-row latencies to summarize, or None.
        metric_classes: "present": macro and weighted figures average over the classes among ``y``;
            "all": over every class (a class absent from ``y`` makes them undefined).

    Returns:
        Accuracy, macro and weighted precision/recall/F1, per-class figures (every class), confusion matrix;
        undefined figures are NaN and their reasons are in ``undefined``.
    """
    c = len(class_labels)
    answered = pred >= 0
    tp = np.bincount(y[answered & (pred == y)], minlength=c).astype(float)
    predicted = np.bincount(pred[answered], minlength=c).astype(float)
    support = np.bincount(y, minlength=c).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        f1 = np.where(np.isnan(precision) | np.isnan(recall), np.nan,
                      np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0))
    undefined: dict[str, str] = {}
    over = averaged_classes(y, c, metric_classes)
    keys = class_keys(class_labels)
    absent = [keys[k] for k in range(c) if over[k] and support[k] == 0]
    never = [keys[k] for k in range(c) if over[k] and predicted[k] == 0]
    why_recall = (f"{len(absent)} class(es) {name_classes(absent)} are absent from the eval rows: their recall is "
                  "0/0 (gate.metric_classes: all averages over every class; 'present' over those with rows)"
                  if absent else "")
    why_precision = f"{stage} never predicts class(es) {name_classes(never)}: their precision is 0/0" if never else ""
    for avg in ("macro", "weighted"):
        if why_recall:
            undefined[f"recall_{avg}"] = why_recall
        if why_precision:
            undefined[f"precision_{avg}"] = why_precision
        if why_recall or why_precision:
            undefined[f"f1_{avg}"] = "; ".join(w for w in (why_recall, why_precision) if w)
    weights = support[over] / support.sum() if support.sum() else np.full(int(over.sum()), np.nan)

    def macro(v: np.ndarray) -> float:
        v = v[over]
        return float(np.nan) if not len(v) or np.isnan(v).any() else float(v.mean())

    def weighted(v: np.ndarray) -> float:
        v = v[over]
        return float(np.nan) if not len(v) or np.isnan(v).any() else float((v * weights).sum())

    cm = np.zeros((c, c), int)
    np.add.at(cm, (y[answered], pred[answered]), 1)
    return StageMetrics(
        stage=stage, rows=int(len(y)), answered=int(answered.sum()),
        accuracy=float((pred == y).mean()) if len(y) else float("nan"),
        precision_macro=macro(precision), recall_macro=macro(recall), f1_macro=macro(f1),
        precision_weighted=weighted(precision), recall_weighted=weighted(recall), f1_weighted=weighted(f1),
        per_class={keys[k]: {"precision": float(precision[k]), "recall": float(recall[k]),
                                     "f1": float(f1[k]), "support": int(support[k])}
                   for k in range(c)},
        confusion=cm.tolist(),
        failed_by_class=[int(((y == k) & ~answered).sum()) for k in range(c)],
        latency=summarize_latency(latencies_ms) if latencies_ms is not None else None,
        undefined=undefined, metric_classes=metric_classes, classes_averaged=int(over.sum()), classes_total=c,
    )


def output_diff(ref: StageOutputs, cand: StageOutputs) -> tuple[OutputDiff, np.ndarray, np.ndarray | None,
                                                                  np.ndarray | None]:
    """The largest |candidate - reference| over the rows both answered, per row too.

    Logits when both carry them, else probabilities on the classes the candidate carries.

    Returns:
        The summary, the per-row maximum (NaN where not compared), and the two arrays compared.
    """
    n = len(cand.predictions)
    both = (cand.predictions >= 0) & (ref.predictions >= 0)
    if cand.logits is not None and ref.logits is not None:
        quantity, a, b = cand.logits_from, ref.logits.astype(np.float64), cand.logits.astype(np.float64)
    elif cand.probabilities is not None and ref.probabilities is not None:
        quantity, a, b = "probabilities", ref.probabilities, cand.probabilities
    else:
        why = f"the {cand.name} answers carry no logits or probabilities"
        if cand.no_outputs_why:
            why += f", and {cand.no_outputs_why}"
        return (OutputDiff(None, None, 0, why),
                np.full(n, np.nan), None, None)
    diff = np.abs(a - b)
    carried = np.isfinite(diff)
    rows = both & carried.any(axis=1)
    per_row = np.full(n, np.nan)
    if rows.any():
        per_row[rows] = np.where(carried[rows], diff[rows], -np.inf).max(axis=1)
    if not rows.any():
        return OutputDiff(quantity, None, 0, f"no row answered by both {ref.name} and {cand.name}"), per_row, a, b
    return OutputDiff(quantity, float(np.nanmax(per_row)), int(rows.sum())), per_row, a, b


def paired_test(y: np.ndarray, ref: StageOutputs, cand: StageOutputs, c: int, seed: int = 0,
                resamples: int | None = None, metric_classes: str = "present") -> PairedTest:
    """McNemar's exact test on correctness and paired-bootstrap intervals for the metric deltas
    (macro F1 over the same classes as ``score_predictions``: see ``averaged_classes``)."""
    base, pred = ref.predictions, cand.predictions
    bc, cc = base == y, pred == y
    b = int((bc & ~cc).sum())
    k = int((~bc & cc).sum())
    p = float(binomtest(min(b, k), b + k, 0.5).pvalue) if b + k else 1.0
    rng = np.random.default_rng(seed)
    n = len(y)
    over = averaged_classes(y, c, metric_classes)
    d_acc, d_f1 = [], []
    for _ in range((BOOTSTRAP_RESAMPLES if resamples is None else resamples) if n else 0):
        idx = rng.integers(0, n, n)
        d_acc.append(cc[idx].mean() - bc[idx].mean())
        d_f1.append(_f1_macro(y[idx], pred[idx], c, over) - _f1_macro(y[idx], base[idx], c, over))

    def ci(v: list[float]) -> tuple[float, float]:
        return (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v else (float("nan"),) * 2

    diff, _, _, _ = output_diff(ref, cand)
    return PairedTest(
        candidate=cand.name, reference=ref.name,
        agreement=float((pred == base).mean()) if n else float("nan"),
        disagreeing=int((pred != base).sum()),
        reference_only_correct=b, candidate_only_correct=k, mcnemar_p=p,
        delta_accuracy=float(cc.mean() - bc.mean()) if n else float("nan"), delta_accuracy_ci=ci(d_acc),
        delta_f1_macro=_f1_macro(y, pred, c, over) - _f1_macro(y, base, c, over), delta_f1_macro_ci=ci(d_f1),
        output=diff,
    )


def _diverging(ids, ref: StageOutputs, cand: StageOutputs, tolerance: float) -> list[DivergingRow]:
    diff, per_row, a, b = output_diff(ref, cand)
    if diff.quantity is None:
        return []
    over = np.nonzero(np.nan_to_num(per_row, nan=0.0) > tolerance)[0]
    out = []
    for i in over[np.argsort(-per_row[over])][:MAX_DIVERGING_LISTED]:
        out.append(DivergingRow(ids[i], cand.name, ref.name, diff.quantity, float(per_row[i]),
                                tuple(map(float, a[i])), tuple(map(float, b[i]))))
    return out


def resolve_shared_names(stage: StageOutputs, reference: np.ndarray, shared: dict[str, tuple[int, ...]]
                         ) -> tuple[StageOutputs, np.ndarray]:
    """A stage whose answers name classes, with each name several classes share decided by name.

    An answer naming 'crane' (classes 134 and 517) says only the name; its decoder gave the first
    class. The row counts as the reference's class when that class has the name (so it matches
    the baseline by name), else stays the first class of the name. The probabilities of every
    class of that name are dropped on such rows (NaN, not compared): the answer holds one number
    for two classes.

    Returns:
        The stage with the decided predictions, and the row mask of answers that named a shared name.
    """
    pred = stage.predictions.copy()
    probs = stage.probabilities.copy() if stage.probabilities is not None else None
    mask = np.zeros(len(pred), bool)
    for classes in shared.values():
        group = np.asarray(classes)
        rows = np.isin(pred, group)
        if not rows.any():
            continue
        mask |= rows
        same = rows & np.isin(reference, group)
        pred[same] = reference[same]
        if probs is not None:
            probs[np.ix_(rows, group)] = np.nan
    if not mask.any():
        return stage, mask
    return StageOutputs(stage.name, pred, probs, stage.logits, stage.latencies_ms), mask



def served_split(stages, server_ms: np.ndarray | None) -> tuple:
    """The served stage's server-side latency and the client's overhead over it, over the rows both timed
    (None, None without a served stage or server times). Every task's comparison reports this split."""
    served = next((s for s in stages if s.name == Stage.SERVED), None)
    if served is None or server_ms is None or served.latencies_ms is None:
        return None, None
    ok = np.isfinite(server_ms) & np.isfinite(served.latencies_ms)
    if not ok.any():
        return None, None
    return summarize_latency(server_ms[ok]), summarize_latency(served.latencies_ms[ok] - server_ms[ok])

def compare_stages(ids: tuple[str, ...], y: np.ndarray, class_labels: tuple[str, ...],
                   stages: list[StageOutputs], server_ms: np.ndarray | None = None,
                   tolerance: float = 1e-5, metric_classes: str = "present",
                   shared_names: dict[str, tuple[int, ...]] | None = None,
                   by_name: frozenset[str] = frozenset()) -> Comparison:
    """Metrics for every stage, each candidate against the first (the baseline) and against the one before it.

    Args:
        ids: row ids, dataset order.
        y: true class indices.
        class_labels: class names, index order.
        stages: the baseline first, then candidates in pipeline order.
        server_ms: the served model's server-side time per row (NaN where unknown).
        tolerance: the output tolerance; rows beyond it are listed with both outputs.
        metric_classes: the classes macro and weighted figures average over ("present" or "all").
        shared_names: names several classes share -> those classes (``ClassMap.shared_names``).
        by_name: the stages whose answers name classes by label; their answers of a shared name are
            decided against the baseline by name (``resolve_shared_names``) and listed.

    Returns:
        Side-by-side metrics, paired tests, flipped and diverging rows, the served latency split.
    """
    c = len(class_labels)
    base = stages[0]
    shared_rows: dict[str, tuple[str, ...]] = {}
    if shared_names:
        decided = [base]
        for s in stages[1:]:
            if s.name in by_name:
                s, mask = resolve_shared_names(s, base.predictions, shared_names)
                if mask.any():
                    shared_rows[s.name] = tuple(ids[i] for i in np.nonzero(mask)[0])
            decided.append(s)
        stages = decided
    metrics = {s.name: score_predictions(s.name, y, s.predictions, class_labels, s.latencies_ms, metric_classes)
               for s in stages}
    tests = {s.name: paired_test(y, base, s, c, metric_classes=metric_classes) for s in stages[1:]}
    # The steps are read for blame (disagreements, output moves), never gated: no bootstrap intervals.
    steps = {s.name: paired_test(y, prev, s, c, resamples=0, metric_classes=metric_classes)
             for prev, s in zip(stages, stages[1:])}
    flipped_mask = np.zeros(len(y), bool)
    for s in stages[1:]:
        flipped_mask |= s.predictions != base.predictions

    def pick(s: StageOutputs, i: int) -> tuple[int | None, float | None]:
        if s.predictions[i] < 0:
            return None, None
        k = int(s.predictions[i])
        p = float(s.probabilities[i, k]) if s.probabilities is not None else None
        return k, (p if p is not None and np.isfinite(p) else None)

    flipped = [FlippedRow(ids[i], int(y[i]), {s.name: pick(s, i) for s in stages})
               for i in np.nonzero(flipped_mask)[0][:MAX_FLIPPED_LISTED]]
    server_lat, overhead = served_split(stages, server_ms)
    diverging = [row for s in stages[1:] for row in _diverging(ids, base, s, tolerance)]
    return Comparison(
        labels=class_labels, stages=metrics, tests=tests, steps=steps, flipped=tuple(flipped),
        flipped_total=int(flipped_mask.sum()), served_server_latency=server_lat, served_overhead_latency=overhead,
        diverging=tuple(diverging), shared_name_rows=shared_rows,
    )
