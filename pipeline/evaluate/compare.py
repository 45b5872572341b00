"""Compare: the same metrics for every stage, side by side, and each candidate against the baseline.

Stages are named (``names.Stage``) and any number may take part: baseline, exported,
handled (at batch 1 and at the served batch size), served. Failed rows count against their
stage: each is a wrong prediction for accuracy and a missed one for its true class's
recall, so a failure can never make a candidate look better. A metric that cannot be
computed (0/0: a class absent from the eval rows, a class never predicted) is undefined
(NaN, with the reason), never 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import binomtest

from pipeline.evaluate.stats import LatencySummary, summarize_latency
from pipeline.names import Stage

log = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 1000
MAX_FLIPPED_LISTED = 50
MAX_DIVERGING_LISTED = 10


@dataclass(frozen=True)
class StageOutputs:
    """What one stage produced per row, in dataset order.

    Attributes:
        name: the stage (a ``Stage``, or a variant name such as ``handled@batch4``).
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


def _f1_macro(y: np.ndarray, p: np.ndarray, c: int) -> float:
    """Macro F1 with 0 for 0/0 (for bootstrap intervals only), vectorised."""
    valid = p >= 0
    tp = np.bincount(y[valid & (p == y)], minlength=c).astype(float)
    predicted = np.bincount(p[valid], minlength=c).astype(float)
    actual = np.bincount(y, minlength=c).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(predicted > 0, tp / predicted, 0.0)
        rec = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    return float(f1.mean())


def score_predictions(stage: str, y: np.ndarray, pred: np.ndarray, class_labels: tuple[str, ...],
                      latencies_ms=None) -> StageMetrics:
    """Metrics of one stage; ``pred`` is -1 where the row got no answer.

    Args:
        stage: name shown in reports.
        y: true class indices.
        pred: predicted class indices, -1 for failed rows.
        class_labels: names of the classes, index order.
        latencies_ms: per-row latencies to summarize, or None.

    Returns:
        Accuracy, macro and weighted precision/recall/F1, per-class figures, confusion matrix;
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
    absent = [class_labels[k] for k in range(c) if support[k] == 0]
    never = [class_labels[k] for k in range(c) if predicted[k] == 0]
    why_recall = f"class(es) {absent} are absent from the eval rows: their recall is 0/0" if absent else ""
    why_precision = f"{stage} never predicts class(es) {never}: their precision is 0/0" if never else ""
    for avg in ("macro", "weighted"):
        if why_recall:
            undefined[f"recall_{avg}"] = why_recall
        if why_precision:
            undefined[f"precision_{avg}"] = why_precision
        if why_recall or why_precision:
            undefined[f"f1_{avg}"] = "; ".join(w for w in (why_recall, why_precision) if w)
    weights = support / support.sum() if support.sum() else np.full(c, np.nan)

    def macro(v: np.ndarray) -> float:
        return float(np.nan) if np.isnan(v).any() else float(v.mean())

    def weighted(v: np.ndarray) -> float:
        return float(np.nan) if np.isnan(v).any() else float((v * weights).sum())

    cm = np.zeros((c, c), int)
    np.add.at(cm, (y[answered], pred[answered]), 1)
    return StageMetrics(
        stage=stage, rows=int(len(y)), answered=int(answered.sum()),
        accuracy=float((pred == y).mean()) if len(y) else float("nan"),
        precision_macro=macro(precision), recall_macro=macro(recall), f1_macro=macro(f1),
        precision_weighted=weighted(precision), recall_weighted=weighted(recall), f1_weighted=weighted(f1),
        per_class={class_labels[k]: {"precision": float(precision[k]), "recall": float(recall[k]),
                                     "f1": float(f1[k]), "support": int(support[k])} for k in range(c)},
        confusion=cm.tolist(),
        failed_by_class=[int(((y == k) & ~answered).sum()) for k in range(c)],
        latency=summarize_latency(latencies_ms) if latencies_ms is not None else None,
        undefined=undefined,
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
                resamples: int | None = None) -> PairedTest:
    """McNemar's exact test on correctness and paired-bootstrap intervals for the metric deltas."""
    base, pred = ref.predictions, cand.predictions
    bc, cc = base == y, pred == y
    b = int((bc & ~cc).sum())
    k = int((~bc & cc).sum())
    p = float(binomtest(min(b, k), b + k, 0.5).pvalue) if b + k else 1.0
    rng = np.random.default_rng(seed)
    n = len(y)
    d_acc, d_f1 = [], []
    for _ in range((BOOTSTRAP_RESAMPLES if resamples is None else resamples) if n else 0):
        idx = rng.integers(0, n, n)
        d_acc.append(cc[idx].mean() - bc[idx].mean())
        d_f1.append(_f1_macro(y[idx], pred[idx], c) - _f1_macro(y[idx], base[idx], c))

    def ci(v: list[float]) -> tuple[float, float]:
        return (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v else (float("nan"),) * 2

    diff, _, _, _ = output_diff(ref, cand)
    return PairedTest(
        candidate=cand.name, reference=ref.name,
        agreement=float((pred == base).mean()) if n else float("nan"),
        disagreeing=int((pred != base).sum()),
        reference_only_correct=b, candidate_only_correct=k, mcnemar_p=p,
        delta_accuracy=float(cc.mean() - bc.mean()) if n else float("nan"), delta_accuracy_ci=ci(d_acc),
        delta_f1_macro=_f1_macro(y, pred, c) - _f1_macro(y, base, c), delta_f1_macro_ci=ci(d_f1),
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


def compare_stages(ids: tuple[str, ...], y: np.ndarray, class_labels: tuple[str, ...],
                   stages: list[StageOutputs], server_ms: np.ndarray | None = None,
                   tolerance: float = 1e-5) -> Comparison:
    """Metrics for every stage, each candidate against the first (the baseline) and against the one before it.

    Args:
        ids: row ids, dataset order.
        y: true class indices.
        class_labels: class names, index order.
        stages: the baseline first, then candidates in pipeline order.
        server_ms: the served model's server-side time per row (NaN where unknown).
        tolerance: the output tolerance; rows beyond it are listed with both outputs.

    Returns:
        Side-by-side metrics, paired tests, flipped and diverging rows, the served latency split.
    """
    c = len(class_labels)
    base = stages[0]
    metrics = {s.name: score_predictions(s.name, y, s.predictions, class_labels, s.latencies_ms) for s in stages}
    tests = {s.name: paired_test(y, base, s, c) for s in stages[1:]}
    # The steps are read for blame (disagreements, output moves), never gated: no bootstrap intervals.
    steps = {s.name: paired_test(y, prev, s, c, resamples=0) for prev, s in zip(stages, stages[1:])}
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
    server_lat = overhead = None
    served = next((s for s in stages if s.name == Stage.SERVED), None)
    if served is not None and server_ms is not None and served.latencies_ms is not None:
        ok = np.isfinite(server_ms) & np.isfinite(served.latencies_ms)
        if ok.any():
            server_lat = summarize_latency(server_ms[ok])
            overhead = summarize_latency(served.latencies_ms[ok] - server_ms[ok])
    diverging = [row for s in stages[1:] for row in _diverging(ids, base, s, tolerance)]
    return Comparison(
        labels=class_labels, stages=metrics, tests=tests, steps=steps, flipped=tuple(flipped),
        flipped_total=int(flipped_mask.sum()), served_server_latency=server_lat, served_overhead_latency=overhead,
        diverging=tuple(diverging),
    )
