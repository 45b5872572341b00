"""Stage 6a, compare: the same metrics for baseline, exported and served, side by side.

Failed rows count against the served model: each is a wrong prediction for accuracy and a
missed one for its true class's recall, so a failure can never make a candidate look better.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from pipeline.evaluate.stats import LatencySummary, summarize_latency

log = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 1000
MAX_FLIPPED_LISTED = 50


@dataclass(frozen=True)
class StageMetrics:
    """Classification metrics of one stage's predictions over all rows."""

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

    def get(self, metric: str) -> float:
        return float(getattr(self, metric))


@dataclass(frozen=True)
class FlippedRow:
    id: str
    label: int
    baseline: int
    baseline_prob: float
    exported: int | None
    exported_prob: float | None
    served: int | None
    served_prob: float | None


@dataclass(frozen=True)
class DivergingRow:
    """A row whose candidate outputs differ from the baseline's beyond the tolerance."""

    id: str
    stage: str
    max_abs_diff: float
    baseline_logits: tuple[float, ...]
    candidate_logits: tuple[float, ...]


MAX_DIVERGING_LISTED = 10


@dataclass(frozen=True)
class PairedTest:
    """Candidate against baseline on the same rows: McNemar and bootstrap intervals."""

    candidate: str
    agreement: float
    baseline_only_correct: int
    candidate_only_correct: int
    mcnemar_p: float
    delta_accuracy: float
    delta_accuracy_ci: tuple[float, float]
    delta_f1_macro: float
    delta_f1_macro_ci: tuple[float, float]
    max_prob_diff: float | None
    max_logit_diff: float | None


@dataclass(frozen=True)
class Comparison:
    labels: tuple[str, ...]
    stages: dict[str, StageMetrics]
    tests: dict[str, PairedTest]
    flipped: tuple[FlippedRow, ...]
    flipped_total: int
    served_server_latency: LatencySummary | None = None
    served_overhead_latency: LatencySummary | None = None
    diverging: tuple[DivergingRow, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


def _f1_macro(y: np.ndarray, p: np.ndarray, labels: list[int]) -> float:
    """Macro F1 as scikit-learn computes it (zero_division=0), vectorised for the bootstrap."""
    c = len(labels)
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
        Accuracy, macro and weighted precision/recall/F1, per-class figures, confusion matrix.
    """
    labels = list(range(len(class_labels)))
    answered = pred >= 0
    p_m, r_m, f_m, _ = precision_recall_fscore_support(y, pred, labels=labels, average="macro", zero_division=0)
    p_w, r_w, f_w, _ = precision_recall_fscore_support(y, pred, labels=labels, average="weighted", zero_division=0)
    p_c, r_c, f_c, s_c = precision_recall_fscore_support(y, pred, labels=labels, average=None, zero_division=0)
    cm = confusion_matrix(y[answered], pred[answered], labels=labels) if answered.any() else np.zeros(
        (len(labels), len(labels)), int)
    failed_by_class = [int(((y == k) & ~answered).sum()) for k in labels]
    return StageMetrics(
        stage=stage,
        rows=int(len(y)),
        answered=int(answered.sum()),
        accuracy=float(accuracy_score(y, pred)),
        precision_macro=float(p_m), recall_macro=float(r_m), f1_macro=float(f_m),
        precision_weighted=float(p_w), recall_weighted=float(r_w), f1_weighted=float(f_w),
        per_class={
            class_labels[k]: {"precision": float(p_c[k]), "recall": float(r_c[k]), "f1": float(f_c[k]),
                              "support": int(s_c[k])}
            for k in labels
        },
        confusion=cm.astype(int).tolist(),
        failed_by_class=failed_by_class,
        latency=summarize_latency(latencies_ms) if latencies_ms is not None else None,
    )


def paired_test(candidate: str, y: np.ndarray, base: np.ndarray, cand: np.ndarray, labels: list[int],
                base_probs: np.ndarray, cand_probs: np.ndarray | None, base_logits: np.ndarray,
                cand_logits: np.ndarray | None, seed: int = 0) -> PairedTest:
    """McNemar's exact test on correctness and paired-bootstrap intervals for the metric deltas."""
    bc, cc = base == y, cand == y
    b = int((bc & ~cc).sum())
    c = int((~bc & cc).sum())
    p = float(binomtest(min(b, c), b + c, 0.5).pvalue) if b + c else 1.0
    rng = np.random.default_rng(seed)
    n = len(y)
    d_acc, d_f1 = [], []
    for _ in range(BOOTSTRAP_RESAMPLES):
        idx = rng.integers(0, n, n)
        d_acc.append(cc[idx].mean() - bc[idx].mean())
        d_f1.append(_f1_macro(y[idx], cand[idx], labels) - _f1_macro(y[idx], base[idx], labels))
    answered = cand >= 0
    max_prob = max_logit = None
    if cand_probs is not None and answered.any():
        max_prob = float(np.nanmax(np.abs(cand_probs[answered] - base_probs[answered])))
    if cand_logits is not None and answered.any():
        diffs = np.abs(cand_logits[answered] - base_logits[answered])
        if np.isfinite(diffs).any():
            max_logit = float(np.nanmax(diffs))
    return PairedTest(
        candidate=candidate,
        agreement=float((cand == base).mean()),
        baseline_only_correct=b,
        candidate_only_correct=c,
        mcnemar_p=p,
        delta_accuracy=float(cc.mean() - bc.mean()),
        delta_accuracy_ci=(float(np.percentile(d_acc, 2.5)), float(np.percentile(d_acc, 97.5))),
        delta_f1_macro=_f1_macro(y, cand, labels) - _f1_macro(y, base, labels),
        delta_f1_macro_ci=(float(np.percentile(d_f1, 2.5)), float(np.percentile(d_f1, 97.5))),
        max_prob_diff=max_prob,
        max_logit_diff=max_logit,
    )


@dataclass(frozen=True)
class StageOutputs:
    """What one stage produced per row, in dataset order."""

    name: str
    predictions: np.ndarray  # int64 [N], -1 where no answer
    probabilities: np.ndarray | None  # float64 [N, C], NaN rows where no answer
    logits: np.ndarray | None
    latencies_ms: np.ndarray | None

    @classmethod
    def from_scores(cls, name: str, scores) -> "StageOutputs":
        """An in-process stage's outputs from its ``scoring.Scores``."""
        return cls(name, scores.predictions, scores.probabilities, scores.logits, scores.latencies_ms)


def compare_stages(ids: tuple[str, ...], y: np.ndarray, class_labels: tuple[str, ...],
                   stages: list[StageOutputs], server_ms: np.ndarray | None = None,
                   atol: float = 1e-5) -> Comparison:
    """Metrics for every stage and paired tests of each candidate against the first (the baseline).

    Args:
        ids: row ids, dataset order.
        y: true class indices.
        class_labels: class names, index order.
        stages: baseline first, then candidates (exported, served).
        server_ms: the served model's server-side time per row (NaN where unknown).
        atol: output tolerance; rows beyond it are listed with both outputs.

    Returns:
        Side-by-side metrics, paired tests, flipped rows and the served latency split.
    """
    labels = list(range(len(class_labels)))
    base = stages[0]
    metrics = {s.name: score_predictions(s.name, y, s.predictions, class_labels, s.latencies_ms) for s in stages}
    tests = {
        s.name: paired_test(s.name, y, base.predictions, s.predictions, labels, base.probabilities,
                            s.probabilities, base.logits, s.logits)
        for s in stages[1:]
    }
    by_name = {s.name: s for s in stages}
    flipped_mask = np.zeros(len(y), bool)
    for s in stages[1:]:
        flipped_mask |= s.predictions != base.predictions
    flipped = []

    def pick(name: str, i: int) -> tuple[int | None, float | None]:
        s = by_name.get(name)
        if s is None or s.predictions[i] < 0:
            return None, None
        k = int(s.predictions[i])
        return k, (float(s.probabilities[i, k]) if s.probabilities is not None else None)

    for i in np.nonzero(flipped_mask)[0][:MAX_FLIPPED_LISTED]:
        k = int(base.predictions[i])
        e, ep = pick("exported", i)
        sv, sp = pick("served", i)
        flipped.append(FlippedRow(ids[i], int(y[i]), k, float(base.probabilities[i, k]), e, ep, sv, sp))
    server_lat = overhead = None
    served = by_name.get("served")
    if served is not None and server_ms is not None and served.latencies_ms is not None:
        ok = np.isfinite(server_ms) & np.isfinite(served.latencies_ms)
        if ok.any():
            server_lat = summarize_latency(server_ms[ok])
            overhead = summarize_latency(served.latencies_ms[ok] - server_ms[ok])
    diverging = []
    for s in stages[1:]:
        if s.logits is None or base.logits is None:
            continue
        diff = np.abs(s.logits.astype(np.float64) - base.logits.astype(np.float64)).max(axis=1)
        over = np.nonzero(np.nan_to_num(diff, nan=0.0) > atol)[0]
        for i in over[np.argsort(-diff[over])][:MAX_DIVERGING_LISTED]:
            diverging.append(DivergingRow(ids[i], s.name, float(diff[i]), tuple(map(float, base.logits[i])),
                                          tuple(map(float, s.logits[i]))))
    return Comparison(
        labels=class_labels, stages=metrics, tests=tests, flipped=tuple(flipped),
        flipped_total=int(flipped_mask.sum()), served_server_latency=server_lat,
        served_overhead_latency=overhead, diverging=tuple(diverging),
    )
