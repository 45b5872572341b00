"""Multi-label classification (``model.task: multilabel``): any number of labels per row.

Labels: one 0/1 column per label (``dataset.label_columns``, model order), or one column of lists
(``[0, 2]``, ``["cat", "dog"]``, ``cat;dog``; empty: no label). Answers: a list of one score per
label, a ``{label: score}`` mapping (a label it leaves out is absent, its score not compared), or a
list of the labels present; through KServe v2 a tensor of scores; ``answers.decode`` may return any
of these. Scores are checked on their own: each within [0, 1].

The model's outputs are logits; a label is present when its sigmoid is at least ``model.threshold``.
"The same answer" is the same set of labels (the gate's prediction agreement) and scores within
``gate.max_output_diff``. Metrics (torchmetrics): micro and macro F1, Hamming loss and the exact
match ratio (subset accuracy). An unanswered row counts as every label wrong, so a failure never
makes a candidate look better.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.answers.base import AnswerError, Prediction, numbers
from pipeline.errors import DatasetError
from pipeline.evaluate.compare import StageOutputs
from pipeline.evaluate.stats import LatencySummary, summarize_latency
from pipeline.tasks import values as V
from pipeline.tasks.base import CompareContext, Section

NAME = "multilabel"
GATED = ("f1_micro", "f1_macro", "hamming_loss", "subset_accuracy")
DEFAULT = ("f1_micro", "f1_macro", "hamming_loss")
LOWER = frozenset({"hamming_loss"})
TRACKED = ("f1_micro", "f1_macro", "hamming_loss", "subset_accuracy")
PRIMARY = "f1_micro"
SEPARATORS = (";", "|", ",")
SOFTMAX_SUM_ATOL = 1e-4


@dataclass(frozen=True)
class MultilabelMetrics:
    """One stage's multi-label figures over all rows (unanswered rows count as every label wrong)."""

    stage: str
    rows: int
    answered: int
    f1_micro: float
    f1_macro: float
    hamming_loss: float
    subset_accuracy: float
    per_label: dict[str, dict[str, float]]  # label -> precision, recall, f1, support
    latency: LatencySummary | None
    undefined: dict[str, str] = field(default_factory=dict)
    threshold: float = 0.5

    def get(self, metric: str) -> float:
        return float(getattr(self, metric))


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


# --- labels ---------------------------------------------------------------------------------------------


def _flag(v: Any) -> int | None:
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, str):
        v = v.strip().lower()
        return {"0": 0, "1": 1, "true": 1, "false": 0, "0.0": 0, "1.0": 1}.get(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if f in (0.0, 1.0) else None


def _items(v: Any) -> list | None:
    """One row's label list, from a list/array or its text; None where it is not a list."""
    if hasattr(v, "tolist") and not isinstance(v, str):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return list(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []  # an empty cell: a CSV cannot tell it from no label at all (counted in the notes)
    if isinstance(v, float) and v.is_integer():
        return [str(int(v))]  # one label index in a column pandas read as floats (an empty cell elsewhere in it)
    text = str(v).strip()
    if text.startswith("["):
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        return doc if isinstance(doc, list) else None
    if not text:
        return []
    for sep in SEPARATORS:
        if sep in text:
            return [p.strip() for p in text.split(sep) if p.strip()]
    return [text]


def read_labels(df, spec, path: Path, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """int64 [N, L]: 1 where the row has the label; DatasetError naming the rows that cannot be read."""
    ds, n_labels = spec.dataset, spec.model.num_classes
    names = spec.class_labels
    if ds.label_columns:
        cols = list(ds.label_columns)
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise DatasetError(f"{path}: dataset.label_columns {missing} not found. Columns found: "
                               f"{list(df.columns)[:40]}.")
        if len(cols) != n_labels:
            raise DatasetError(f"{path}: dataset.label_columns names {len(cols)} column(s) but model.num_classes is "
                               f"{n_labels} labels: give one 0/1 column per label, in the model's order.")
        out = np.zeros((len(df), n_labels), np.int64)
        bad = []
        for j, c in enumerate(cols):
            for i, v in enumerate(df[c].tolist()):
                f = _flag(v)
                if f is None:
                    bad.append(f"id {ids[i]}: column {c!r} holds {v!r}")
                else:
                    out[i, j] = f
        if bad:
            raise DatasetError(f"{path}: {len(bad)} label value(s) are not 0 or 1 (multilabel: one 0/1 column per "
                               "label); fix them, no row is skipped.", details=bad[:20])
        return out, [f"labels read from {len(cols)} 0/1 columns {cols[:8]}"]
    if ds.label_column not in df.columns:
        raise DatasetError(f"{path}: label_column {ds.label_column!r} not found (multilabel: a column of label "
                           "lists, or dataset.label_columns with one 0/1 column per label).")
    index = {name: k for k, name in enumerate(names)}
    out = np.zeros((len(df), n_labels), np.int64)
    bad = []
    for i, v in enumerate(df[ds.label_column].tolist()):
        items = _items(v)
        if items is None:
            bad.append(f"id {ids[i]}: {v!r} is not a list of labels")
            continue
        for item in items:
            k = index.get(str(item))
            if k is None and not isinstance(item, bool) and isinstance(item, (int, float)) and float(item) % 1 == 0:
                k = int(item) if 0 <= int(item) < n_labels else None
            elif k is None and isinstance(item, str) and item.isdigit() and int(item) < n_labels:
                k = int(item)
            if k is None:
                bad.append(f"id {ids[i]}: {item!r} is not a label (0..{n_labels - 1} or a name of model.class_names)")
                break
            out[i, k] = 1
    if bad:
        raise DatasetError(f"{path}: {len(bad)} row(s) have labels that cannot be read in column "
                           f"{ds.label_column!r}; write each row's labels as a list ([0, 2], [\"cat\", \"dog\"] or "
                           "cat;dog, empty for none). No row is skipped.", details=bad[:20])
    empty = int((out.sum(axis=1) == 0).sum())
    return out, [f"labels read as lists from column {ds.label_column!r}"
                 + (f"; {empty} row(s) have no label (an empty cell or [])" if empty else "")]


# --- answers --------------------------------------------------------------------------------------------


def parse_answer(doc: Any, spec) -> Prediction:
    """One answer -> Prediction: scores as probabilities (NaN where a mapping leaves a label out), the labels
    present as ``extra['values']`` (0/1 [L])."""
    n_labels, names, threshold = spec.model.num_classes, spec.class_labels, spec.model.threshold
    doc = V.listed(doc)
    index = {name: k for k, name in enumerate(names)}
    scores = None
    if isinstance(doc, dict):
        scores = np.full(n_labels, np.nan)
        for label, p in doc.items():
            k = index.get(str(label))
            if k is None:
                raise AnswerError(f"label {label!r} is not a label of the model ({list(names)[:12]})")
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
                raise AnswerError(f"the score of {label!r} must be a finite number, got {p!r}")
            scores[k] = float(p)
    elif isinstance(doc, list) and len(doc) == n_labels and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in doc):
        scores = numbers(doc, "the per-label scores")
    elif isinstance(doc, list):
        present = np.zeros(n_labels)
        for item in doc:
            k = index.get(str(item))
            if k is None and isinstance(item, int) and not isinstance(item, bool) and 0 <= item < n_labels:
                k = item
            if k is None:
                raise AnswerError(f"{item!r} is not a label of the model ({list(names)[:12]}); a list answer is the "
                                  f"labels present, or {n_labels} scores")
            present[k] = 1
        return Prediction(0, None, None, {"values": present})
    else:
        raise AnswerError(f"a multilabel answer is a list of {n_labels} scores, a {{label: score}} object or a list "
                          f"of the labels present; got {type(doc).__name__} {str(doc)[:60]!r}")
    carried = scores[np.isfinite(scores)]
    if ((carried < -1e-6) | (carried > 1 + 1e-6)).any():
        raise AnswerError(f"the scores hold values outside [0, 1]: {carried[:6].tolist()} (sigmoid scores, not "
                          "logits, are answered)")
    present = np.where(np.isfinite(scores), scores >= threshold, False).astype(float)
    return Prediction(0, scores, None, {"values": present})


# --- metrics --------------------------------------------------------------------------------------------


def _filled(s: StageOutputs, y: np.ndarray) -> np.ndarray:
    """0/1 int [N, L]: the stage's labels, every label wrong where the row got no answer."""
    p = np.where(np.isfinite(s.values), s.values, 1 - y) if s.values is not None else 1 - y
    p = np.where((s.predictions >= 0)[:, None], p, 1 - y)
    return p.astype(np.int64)


def score(s: StageOutputs, y: np.ndarray, names: tuple[str, ...], threshold: float) -> MultilabelMetrics:
    """torchmetrics' multi-label figures of one stage (macro F1 scores 0/0 labels as 0, as torchmetrics does)."""
    from pipeline import compat

    compat.install_import_hook()  # torchmetrics imports torchvision (compat.py)
    import torch
    from torchmetrics.functional.classification import (multilabel_exact_match, multilabel_f1_score,
                                                        multilabel_hamming_distance)

    p = _filled(s, y)
    n, n_labels = y.shape
    pt, yt = torch.from_numpy(p), torch.from_numpy(y.astype(np.int64))
    if n:
        f1_micro = float(multilabel_f1_score(pt, yt, num_labels=n_labels, average="micro"))
        f1_macro = float(multilabel_f1_score(pt, yt, num_labels=n_labels, average="macro"))
        hamming = float(multilabel_hamming_distance(pt, yt, num_labels=n_labels, average="micro"))
        subset = float(multilabel_exact_match(pt, yt, num_labels=n_labels))
    else:
        f1_micro = f1_macro = hamming = subset = math.nan
    tp, fp, fn = (p & y).sum(0), (p & (1 - y)).sum(0), ((1 - p) & y).sum(0)
    per = {}
    for k, name in enumerate(names):
        prec = tp[k] / (tp[k] + fp[k]) if tp[k] + fp[k] else math.nan
        rec = tp[k] / (tp[k] + fn[k]) if tp[k] + fn[k] else math.nan
        f1 = 2 * tp[k] / (2 * tp[k] + fp[k] + fn[k]) if 2 * tp[k] + fp[k] + fn[k] else math.nan
        per[name] = {"precision": float(prec), "recall": float(rec), "f1": float(f1), "support": int(y[:, k].sum())}
    return MultilabelMetrics(s.name, n, int((s.predictions >= 0).sum()), f1_micro, f1_macro, hamming, subset, per,
                             summarize_latency(s.latencies_ms) if s.latencies_ms is not None else None,
                             threshold=threshold)


def weighted_figures(w: np.ndarray, p: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The figures of ``score`` on resamples given as row weights int [R, N] (numpy, for the bootstrap)."""
    n, n_labels = y.shape
    tp = w @ (p & y)
    fp = w @ (p & (1 - y))
    fn = w @ ((1 - p) & y)
    with np.errstate(divide="ignore", invalid="ignore"):
        den = 2 * tp.sum(1) + fp.sum(1) + fn.sum(1)
        micro = np.where(den > 0, 2 * tp.sum(1) / np.where(den > 0, den, 1), 0.0)
        per = 2 * tp + fp + fn
        macro = np.where(per > 0, 2 * tp / np.where(per > 0, per, 1), 0.0).mean(1)
    wrong = (p != y).sum(1)
    return {"f1_micro": micro, "f1_macro": macro, "hamming_loss": (w @ wrong) / (n * n_labels),
            "subset_accuracy": (w @ (wrong == 0)) / n}


class Multilabel:
    name = NAME
    gated_metrics = GATED
    default_metrics = DEFAULT
    tracked = TRACKED
    lower_is_better = LOWER  # losses: their rise is what the gate limits
    labels_word = "labels"  # what the report's "What ran" calls model.class_names

    def read_labels(self, df, spec, path: Path, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        return read_labels(df, spec, path, ids)

    def label_counts(self, labels: np.ndarray, spec) -> np.ndarray | None:
        return np.asarray(labels).sum(axis=0)

    def decode(self, doc: Any, spec) -> Prediction:
        return parse_answer(doc, spec)

    def decoder(self, spec):
        return V.task_decoder(NAME, lambda doc: parse_answer(doc, spec),
                              V.Carried("some", False, "per-label scores, or the labels present"), spec)

    def tolerances(self, spec) -> tuple[float, float]:
        return spec.gate.max_output_diff, 0.0

    def model_outputs(self, name: str, scores, spec) -> StageOutputs:
        logits = np.asarray(scores.logits, np.float64)
        ok = np.isfinite(logits).all(axis=1)
        probs = sigmoid(logits)
        values = np.where(ok[:, None], (probs >= spec.model.threshold).astype(float), np.nan)
        preds = np.where(ok, 0, -1).astype(np.int64)
        return StageOutputs(name, preds, np.where(ok[:, None], probs, np.nan), logits, scores.latencies_ms,
                            values=values)

    def answer_outputs(self, name: str, outcomes: tuple, spec) -> StageOutputs:
        return V.answer_outputs(name, outcomes, spec.model.num_classes, "probabilities")

    def compare(self, ids, labels, stages, server_ms, ctx: CompareContext):
        y = np.asarray(labels, np.int64)
        threshold = ctx.spec.model.threshold if ctx.spec is not None else 0.5

        def same(ref: StageOutputs, cand: StageOutputs) -> np.ndarray:
            both = V.answered(ref) & V.answered(cand)
            eq = np.all(np.nan_to_num(ref.values, nan=-1) == np.nan_to_num(cand.values, nan=-1), axis=1)
            return both & eq

        def deltas(ref: StageOutputs, cand: StageOutputs):
            pr, pc = _filled(ref, y), _filled(cand, y)

            def stat(w: np.ndarray) -> dict[str, np.ndarray]:
                a, b = weighted_figures(w, pr, y), weighted_figures(w, pc, y)
                return {k: b[k] - a[k] for k in a}
            return stat

        return V.value_comparison(self, ids, y, stages, server_ms, ctx,
                                  score=lambda s: score(s, y, ctx.class_labels, threshold), same=same, deltas=deltas,
                                  note=softmax_hint)

    def stage_checks(self, spec, plan, cmp, stage: str, base_name: str, labels: tuple[str, ...], why: str) -> list:
        have = cmp is not None and stage in cmp.stages and base_name in cmp.stages
        t = cmp.tests[stage] if have else None
        cand = cmp.stages[stage] if have else None
        base = cmp.stages[base_name] if have else None
        checks = [V.agreement_check(spec, t, stage, why, "answer another set of labels",
                                    t.differing_ids if t else ())]
        checks += V.metric_checks(spec, cand, base, stage, why, LOWER)
        over = tuple(r.id for r in cmp.diverging if r.stage == stage) if cmp is not None else ()
        out = V.output_check(spec, plan, t, stage, why, over)
        hint = cmp.notes.get(stage, "") if have else ""
        if hint and not out.passed:
            out = replace(out, detail=f"{out.detail}; {hint}")
        checks.append(out)
        improved = V.improvement_check(spec, t, stage, PRIMARY, False, why)
        if improved is not None:
            checks.append(improved)
        return checks

    def row_columns(self, prefix: str, outputs: StageOutputs, names: tuple[str, ...] = ()) -> dict[str, Any]:
        return V.row_columns(prefix, outputs, names, labels=True)

    def report_sections(self, report: dict) -> list[Section]:
        return V.sections(report, GATED, "Per label (precision / recall / F1)", "per_label",
                          ("precision", "recall", "f1"), lower=LOWER)


def softmax_hint(s: StageOutputs) -> str:
    """Why a multi-label stage's scores differ, when they sum to 1 on every answered row: a softmax."""
    scores = s.probabilities
    if scores is None or scores.shape[1] < 2:
        return ""
    rows = np.isfinite(scores).all(axis=1)
    if rows.sum() < 2:
        return ""
    if np.all(np.abs(scores[rows].sum(axis=1) - 1) <= SOFTMAX_SUM_ATOL):
        return ("the scores sum to 1 on every answered row: a softmax over the labels, where a multi-label model's "
                "scores are one sigmoid per label")
    return ""


TASK = Multilabel()
