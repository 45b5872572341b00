"""COCO's mAP@[.5:.95] and mAP@.5 over row weights: one matching per stage, any resample of images after.

COCO matches detections to ground truth per image (per class, detections by score, each taking the
unmatched ground-truth box of highest IoU >= t, at each IoU threshold t), so the matches are computed
once per stage (``match_stage``). A resample of images only changes how often each image counts: per
class and threshold, the detections sorted by score over all images carry their image's multiplicity
as a weight, the weighted cumulative true and false positives give precision and recall, and the
101-point interpolated precision (made monotone from the right, sampled at the recall thresholds)
averages into AP. ``average_precision`` evaluates a batch of resamples at once (numpy over resamples,
thresholds and detections; one pass per class).

It reproduces torchmetrics' ``MeanAveragePrecision`` (backend ``faster_coco_eval``, box_format xyxy,
area 'all', maxDets 100, no crowd) as detection.mean_average_precision calls it: boxes and scores
go through float32 as they do there, the IoU is COCO's, and the IoU and recall thresholds are
torchmetrics' own float32 linspaces. A class with no ground truth in the (resampled) rows is left
out, as COCO's -1; with none at all the figures are NaN. Equal scores in different images are
ordered by image, as COCO orders them (a resample's order among such ties is arbitrary anyway).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

MAX_DETS = 100              # COCO's maxDets[-1], per image and class
CHUNK_ELEMENTS = 1 << 16       # resamples x thresholds x detections evaluated at once (fits the caches)


@functools.cache
def thresholds() -> tuple[np.ndarray, np.ndarray]:
    """The IoU thresholds [10] and recall thresholds [101] exactly as torchmetrics builds them (float32 linspaces)."""
    import torch

    iou = np.array(torch.linspace(0.5, 0.95, round((0.95 - 0.5) / 0.05) + 1).tolist(), np.float64)
    rec = np.array(torch.linspace(0.0, 1.00, round(1.00 / 0.01) + 1).tolist(), np.float64)
    iou.setflags(write=False)  # cached: shared by every call
    rec.setflags(write=False)
    return iou, rec


@dataclass(frozen=True)
class StageMatches:
    """A stage's detections matched once, sorted per class by score (COCO's accumulate order).

    Attributes:
        classes: class ids scored (those with ground truth or detections anywhere), int [K].
        truth_counts: ground-truth boxes per image and class, int [N, K].
        image: the image of each detection, int [D] (detections grouped by class, best score first).
        starts: where each class's detections begin, int [K + 1] (``starts[-1]`` is D).
        hits: whether each detection is a true positive at each IoU threshold, bool [T, D].
    """

    classes: np.ndarray
    truth_counts: np.ndarray
    image: np.ndarray
    starts: np.ndarray
    hits: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.truth_counts)


def _xywh32(boxes: Any) -> np.ndarray:
    # torchmetrics hands COCO float32 boxes converted to xywh in float32 (torchvision's box_convert)
    b = np.asarray(boxes, np.float64).reshape(-1, 4).astype(np.float32)
    return np.column_stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]]).astype(np.float64)


def _coco_iou(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """COCO's bbox IoU (maskApi bbIou, no crowd) of xywh boxes d [n, 4] and g [m, 4]: [n, m]."""
    dx, dy, dw, dh = (d[:, None, j] for j in range(4))
    gx, gy, gw, gh = (g[None, :, j] for j in range(4))
    w = np.minimum(dx + dw, gx + gw) - np.maximum(dx, gx)
    h = np.minimum(dy + dh, gy + gh) - np.maximum(dy, gy)
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = (d[:, 2] * d[:, 3])[:, None] + (g[:, 2] * g[:, 3])[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def _match(iou: np.ndarray, iou_thresholds: np.ndarray) -> np.ndarray:
    """COCO's greedy matching of detections (rows of `iou`, best score first) at every threshold: bool [T, n]."""
    t_count, (n, m) = len(iou_thresholds), iou.shape
    hits = np.zeros((t_count, n), bool)
    if not m:
        return hits
    floor = np.minimum(iou_thresholds, 1 - 1e-10)[:, None]
    free = np.ones((t_count, m), bool)
    rows = np.arange(t_count)
    for k in range(n):
        cand = np.where(free & (iou[k][None, :] >= floor), iou[k][None, :], -1.0)
        last = m - 1 - np.argmax(cand[:, ::-1], axis=1)  # COCO keeps the last box of the highest IoU
        ok = cand[rows, last] >= 0
        hits[:, k] = ok
        free[rows[ok], last[ok]] = False
    return hits


def match_stage(preds: Sequence[Any], truths: Sequence[Any]) -> StageMatches:
    """Match one stage's detections to the ground truth, per image and class, at every IoU threshold.

    Args:
        preds: per row, the boxes scored (``.boxes`` xyxy [n, 4], ``.labels`` [n], ``.scores`` [n]).
        truths: per row, the ground truth (``.boxes``, ``.labels``).

    Returns:
        The stage's matches, for ``average_precision`` on any row weights.

    Raises:
        ValueError: preds and truths of different lengths.
    """
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} rows of detections but {len(truths)} of ground truth: one each per row")
    iou_thr, _ = thresholds()
    n = len(truths)
    labels = [np.asarray(p.labels, np.int64).reshape(-1) for p in preds]
    truth_labels = [np.asarray(t.labels, np.int64).reshape(-1) for t in truths]
    classes = np.unique(np.concatenate(labels + truth_labels + [np.zeros(0, np.int64)]))
    col = {int(c): j for j, c in enumerate(classes)}
    counts = np.zeros((n, len(classes)), np.int64)
    parts: list[tuple[int, int, np.ndarray, np.ndarray]] = []  # (class column, image, scores, hits [T, n])
    for i, (p, t) in enumerate(zip(preds, truths)):
        for c in np.unique(truth_labels[i]):
            counts[i, col[int(c)]] = int((truth_labels[i] == c).sum())
        if not len(labels[i]):
            continue
        d_all, g_all = _xywh32(p.boxes), _xywh32(t.boxes)
        scores = np.asarray(p.scores, np.float64).reshape(-1).astype(np.float32).astype(np.float64)
        for c in np.unique(labels[i]):
            mine = np.flatnonzero(labels[i] == c)
            mine = mine[np.argsort(-scores[mine], kind="mergesort")][:MAX_DETS]
            g = g_all[truth_labels[i] == c]
            parts.append((col[int(c)], i, scores[mine], _match(_coco_iou(d_all[mine], g), iou_thr)))
    if parts:
        seg = np.concatenate([np.full(len(s), c) for c, _, s, _ in parts])
        img = np.concatenate([np.full(len(s), i) for _, i, s, _ in parts])
        score = np.concatenate([s for _, _, s, _ in parts])
        rank = np.concatenate([np.arange(len(s)) for _, _, s, _ in parts])
        hits = np.concatenate([h for _, _, _, h in parts], axis=1)
        order = np.lexsort((rank, img, -score, seg))  # per class, by score, ties by image as COCO's stable sort
        seg, img, hits = seg[order], img[order], hits[:, order]
    else:
        seg = img = np.zeros(0, np.int64)
        hits = np.zeros((len(iou_thr), 0), bool)
    starts = np.searchsorted(seg, np.arange(len(classes) + 1))
    return StageMatches(classes, counts, img.astype(np.int64), starts, hits)


def _class_ap(weights: np.ndarray, image: np.ndarray, hits: np.ndarray, npos: np.ndarray) -> np.ndarray:
    """One class's AP at every IoU threshold on each resample: float [B, T].

    COCO samples the precision, made monotone from the right, at the first detection whose recall
    reaches each recall threshold; so a detection's envelope counts once for every threshold its
    recall passes first. Recall is tp / npos with tp a whole number up to npos, so the thresholds
    each value passes are looked up in a table of the npos + 1 values (COCO's own division).
    """
    _, rec = thresholds()
    w = weights[:, image]                                           # [B, Dc]
    tp = np.cumsum(w[:, None, :] * hits[None], axis=2)              # [B, T, Dc]
    seen = np.cumsum(w, axis=1)[:, None, :]
    precision = tp / (seen + np.spacing(1))                         # COCO's tp / (tp + fp + eps)
    envelope = np.maximum.accumulate(precision[..., ::-1], axis=2)[..., ::-1]
    sizes = npos + 1
    at = np.cumsum(sizes) - sizes                                   # each resample's table starts here
    tp_values = np.arange(sizes.sum()) - np.repeat(at, sizes)     # 0 .. npos, each resample's in turn
    table = np.searchsorted(rec, tp_values / np.repeat(np.maximum(npos, 1), sizes), side="right")
    passed = table[at[:, None, None] + tp]                          # thresholds <= recall, per detection
    first = np.diff(passed, axis=2, prepend=0)                      # thresholds this detection reaches first
    return (envelope * first).sum(axis=2) / len(rec)


def _chunk(m: StageMatches, weights: np.ndarray) -> dict[str, np.ndarray]:
    t_count = len(thresholds()[0])
    npos = weights @ m.truth_counts                                 # [B, K]
    valid = npos > 0
    ap = np.zeros((len(weights), t_count, len(m.classes)))
    for k in np.flatnonzero(valid.any(axis=0) & (m.starts[1:] > m.starts[:-1])):
        d = slice(m.starts[k], m.starts[k + 1])
        ap[:, :, k] = _class_ap(weights, m.image[d], m.hits[:, d], npos[:, k])
    per = np.where(valid[:, None, :], ap, 0.0)                      # a class without ground truth: left out
    classes = valid.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"map": np.where(classes > 0, per.sum(axis=(1, 2)) / (classes * t_count), np.nan),
                "map_50": np.where(classes > 0, per[:, 0, :].sum(axis=1) / classes, np.nan)}


def average_precision(m: StageMatches, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """mAP@[.5:.95] and mAP@.5 of a stage on each resample of its rows.

    Args:
        m: the stage's matches (``match_stage``).
        weights: how often each row counts in each resample, int [B, N] (None: every row once, B = 1).

    Returns:
        ``map`` and ``map_50``, float [B] each (NaN where no row of the resample has ground truth).
    """
    w = np.ones((1, m.rows), np.int64) if weights is None else np.asarray(weights, np.int64).reshape(-1, m.rows)
    per = max(1, CHUNK_ELEMENTS // max(1, len(thresholds()[0]) * len(m.image)))
    parts = [_chunk(m, w[i:i + per]) for i in range(0, len(w), per)] or [_chunk(m, w)]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("map", "map_50")}
