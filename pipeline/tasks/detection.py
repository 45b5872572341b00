"""Detection: boxes as labels, TorchServe's ``object_detector`` answers, per-row sameness, mAP.

Pure functions over numpy arrays; the Task wiring sits at the end of the module.

- Labels: a COCO annotations JSON (``bbox`` is [x, y, width, height] in pixels) or a manifest
  column holding a JSON list of ``{"box": [x1, y1, x2, y2], "label": name or index}``. A box
  outside its image, a box of no area, an unknown class or an image the annotations do not
  know is exit 2, naming the row.
- Geometry: the built-in ``object_detector`` preprocesses with ToTensor only (no resize), so
  its boxes are in the pixels of the image as sent; the ground truth stays in that frame. A
  handler that resizes must scale its boxes back, and one that does not is caught by the
  comparison (the served boxes shrink) and by the answer check (boxes are read in the image's
  frame).
- Answers: the built-in's ``[{label_name: [x1, y1, x2, y2], "score": s}, ...]`` after its
  ``score >= 0.5`` filter; the baseline applies the same threshold (THRESHOLD) to the model's
  raw detections, so both sides are compared on what the built-in would answer.
- Sameness per row: boxes matched one to one by IoU (Hungarian on IoU, pairs below
  ``match_iou`` left unmatched), then labels, coordinates (pixels) and scores each within
  their tolerance. A box whose score lies within ``flip_band`` of the threshold on one side and
  not the other is a threshold flip, reported as such rather than as a missing box.
- Metrics: mAP@[.5:.95], mAP@.5 and per-class AP from torchmetrics' MeanAveragePrecision
  (backend faster_coco_eval), and per-class precision, recall and F1 at IoU 0.5 from a
  COCO-style greedy matching (by score, each ground-truth box matched once) whose per-row
  counts make paired intervals a sum over resampled rows. mAP's paired intervals come from
  tasks/coco_ap.py (COCO's matches once per stage; a resample only reweights images), equal to
  torchmetrics' figure on every resample.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pipeline.errors import DatasetError

NAME = "detection"
THRESHOLD = 0.5          # ts.torch_handler.object_detector.ObjectDetector.threshold (0.12)
SCORE_TOL = 1e-5         # the seeds' output tolerance
COORD_TOL_PX = 1e-3      # box coordinates, pixels
MATCH_IOU = 0.5          # two boxes below this IoU are different boxes
FLIP_BAND = 0.01         # a score this close to THRESHOLD may cross it through rounding alone
EDGE_TOL_PX = 1e-3       # a box may overhang its image by float rounding, not more


class DetectionAnswerError(ValueError):
    """An answer is not a detection answer of the expected format (the row becomes bad_response)."""


@dataclass(frozen=True)
class Boxes:
    """Boxes of one image: xyxy float64 pixels [n, 4], labels int64 [n], scores float64 [n] (1.0 for truth)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    @staticmethod
    def empty() -> "Boxes":
        return Boxes(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0))

    @staticmethod
    def of(boxes: Any, labels: Any, scores: Any = None) -> "Boxes":
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        lab = np.asarray(labels, np.int64).reshape(-1)
        s = np.ones(len(b)) if scores is None else np.asarray(scores, np.float64).reshape(-1)
        if not (len(b) == len(lab) == len(s)):
            raise ValueError(f"{len(b)} boxes, {len(lab)} labels and {len(s)} scores: one each per box")
        return Boxes(b, lab, s)

    def __len__(self) -> int:
        return len(self.boxes)

    def above(self, threshold: float) -> "Boxes":
        """The boxes the built-in keeps: ``score >= threshold`` (its comparison, inclusive)."""
        keep = self.scores >= threshold
        return Boxes(self.boxes[keep], self.labels[keep], self.scores[keep])

    def to_json(self) -> list[dict[str, Any]]:
        return [{"box": [round(float(v), 4) for v in b], "label": int(lab), "score": float(s)}
                for b, lab, s in zip(self.boxes, self.labels, self.scores)]


# ---------------------------------------------------------------------------------------- labels


def _box_problem(box: np.ndarray, width: int | None, height: int | None) -> str | None:
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return f"box {[x1, y1, x2, y2]} has a NaN or infinite coordinate"
    if x2 <= x1 or y2 <= y1:
        return f"box {[x1, y1, x2, y2]} (xyxy) has no area: x2 must exceed x1 and y2 exceed y1"
    if width is not None and height is not None and (
            x1 < -EDGE_TOL_PX or y1 < -EDGE_TOL_PX or x2 > width + EDGE_TOL_PX or y2 > height + EDGE_TOL_PX):
        return f"box {[x1, y1, x2, y2]} (xyxy) lies outside its {width}x{height} image"
    return None


def load_coco(path: Path, num_classes: int, sizes: Mapping[str, tuple[int, int]] | None = None
              ) -> tuple[dict[str, Boxes], dict[int, str]]:
    """Ground-truth boxes per image file name from a COCO annotations document.

    Args:
        path: the JSON file (``images``, ``annotations``, ``categories``).
        num_classes: the model's classes; a category id must lie in [0, num_classes).
        sizes: file name -> (width, height) as read from the images themselves; when given, an
            image whose COCO width/height differ from it is an error too.

    Returns:
        file name -> Boxes (xyxy), and category id -> name.

    Raises:
        DatasetError: unreadable JSON, a missing key, an annotation of an unknown image or
            category, a box outside its image or of no area: every problem, each naming the
            image and the annotation id.
    """
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable COCO annotations JSON ({e}). Fix dataset.annotations.") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(
            doc.get("annotations"), list):
        raise DatasetError(f"{path}: a COCO annotations document needs 'images' and 'annotations' lists.")
    cats = {int(c["id"]): str(c.get("name", c["id"])) for c in doc.get("categories") or []
            if isinstance(c, dict) and "id" in c}
    problems: list[str] = []
    images: dict[Any, tuple[str, int | None, int | None]] = {}
    for im in doc["images"]:
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            problems.append(f"image entry {str(im)[:80]!r}: needs 'id' and 'file_name'")
            continue
        name = str(im["file_name"])
        w, h = im.get("width"), im.get("height")
        if sizes is not None:
            real = sizes.get(name)
            if real is None:
                problems.append(f"image {name!r} (COCO id {im['id']}): no such row among the dataset's images")
                continue
            if (w, h) != (None, None) and (w, h) != real:
                problems.append(f"image {name!r}: COCO says {w}x{h} but the file is {real[0]}x{real[1]}")
            w, h = real
        images[im["id"]] = (name, w, h)
    found: dict[str, tuple[list, list]] = {name: ([], []) for name, _, _ in images.values()}
    for a in doc["annotations"]:
        aid = a.get("id") if isinstance(a, dict) else None
        if not isinstance(a, dict) or a.get("image_id") not in images:
            problems.append(f"annotation {aid}: image_id {a.get('image_id') if isinstance(a, dict) else a!r} "
                            "is not among 'images'")
            continue
        name, w, h = images[a["image_id"]]
        bbox, cat = a.get("bbox"), a.get("category_id")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            problems.append(f"image {name!r}, annotation {aid}: bbox must be [x, y, width, height], got {bbox!r}")
            continue
        if not isinstance(cat, int) or isinstance(cat, bool) or not 0 <= cat < num_classes or (cats and cat not in cats):
            problems.append(f"image {name!r}, annotation {aid}: category_id {cat!r} is not a class of the model "
                            f"(0..{num_classes - 1}{', categories ' + str(sorted(cats)) if cats else ''})")
            continue
        x, y, bw, bh = (float(v) for v in bbox)
        box = np.array([x, y, x + bw, y + bh])
        why = _box_problem(box, w, h)
        if why:
            problems.append(f"image {name!r}, annotation {aid}: {why}")
            continue
        found[name][0].append(box)
        found[name][1].append(cat)
    if problems:
        raise DatasetError(f"{path}: {len(problems)} bad annotation(s). Fix the annotations file.",
                           details=problems[:20])
    return {name: Boxes.of(np.array(b).reshape(-1, 4), lab) for name, (b, lab) in found.items()}, cats


def boxes_from_cell(value: Any, row_id: str, class_index: Mapping[str, int], num_classes: int,
                    size: tuple[int, int] | None) -> Boxes:
    """One manifest cell: a JSON list of ``{"box": [x1, y1, x2, y2], "label": name or index}``.

    Raises:
        DatasetError: not such a list, an unknown class, a box outside the image (naming the row).
    """
    try:
        items = json.loads(value) if isinstance(value, str) else value
    except ValueError as e:
        raise DatasetError(f"row {row_id}: the boxes column is not JSON ({e}).") from e
    if not isinstance(items, list):
        raise DatasetError(f"row {row_id}: the boxes column must be a JSON list of "
                           f'{{"box": [x1, y1, x2, y2], "label": ...}}, got {str(items)[:80]!r}')
    boxes, labels, problems = [], [], []
    for n, it in enumerate(items):
        box, label = (it.get("box"), it.get("label")) if isinstance(it, dict) else (None, None)
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            problems.append(f"box {n}: needs 'box': [x1, y1, x2, y2] numbers, got {str(it)[:80]!r}")
            continue
        if isinstance(label, str) and label in class_index:
            label = class_index[label]
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < num_classes:
            problems.append(f"box {n}: label {label!r} is not a class of the model "
                            f"(0..{num_classes - 1} or {sorted(class_index)[:12]})")
            continue
        why = _box_problem(box, *(size or (None, None)))
        if why:
            problems.append(f"box {n}: {why}")
            continue
        boxes.append(box)
        labels.append(label)
    if problems:
        raise DatasetError(f"row {row_id}: {len(problems)} bad box(es). Fix the manifest's boxes column.",
                           details=problems[:20])
    return Boxes.of(boxes, labels)


# ---------------------------------------------------------------------------------------- answers


def name_to_index(index_to_name: Mapping[str, Any]) -> tuple[dict[str, int], list[str]]:
    """Label name -> class index as the built-in names boxes (``mapping[str(label)]``), and duplicates.

    A name given to two classes cannot be told apart in an answer: returned as a problem so the
    plan can refuse it (the built-in's answer collapses them).
    """
    index: dict[str, int] = {}
    dupes: list[str] = []
    for k, v in index_to_name.items():
        name = v[-1] if isinstance(v, list) else v  # ts.utils.util.load_label_mapping keeps a list's last
        name = str(name)
        if name in index:
            dupes.append(f"{name!r} names classes {index[name]} and {k}")
        else:
            index[name] = int(k)
    if "score" in index:
        dupes.append("'score' names a class, but each box of the built-in's answer also carries its 'score' "
                     "key: that class's boxes cannot be read")
    return index, dupes


def decode_builtin(answer: Any, names: Mapping[str, int]) -> Boxes:
    """The built-in ``object_detector``'s answer for one image: ``[{name: [x1, y1, x2, y2], "score": s}]``.

    A label the index_to_name.json does not know is read as an integer when it is one (the
    built-in answers ``str(label)`` when it has no mapping).

    Raises:
        DetectionAnswerError: anything else, naming the box.
    """
    if not isinstance(answer, list):
        raise DetectionAnswerError(f"expected a list of {{label: [x1, y1, x2, y2], 'score': s}}, got "
                                   f"{type(answer).__name__} {str(answer)[:80]!r}")
    boxes, labels, scores = [], [], []
    for n, item in enumerate(answer):
        if not isinstance(item, dict) or "score" not in item or len(item) != 2:
            raise DetectionAnswerError(f"box {n}: expected {{label: [x1, y1, x2, y2], 'score': s}}, got "
                                       f"{str(item)[:80]!r}")
        (name, box), = [(k, v) for k, v in item.items() if k != "score"]
        score = item["score"]
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise DetectionAnswerError(f"box {n} ({name!r}): expected [x1, y1, x2, y2], got {str(box)[:80]!r}")
        if not _is_number(score):
            raise DetectionAnswerError(f"box {n} ({name!r}): score must be a number, got {score!r}")
        if name in names:
            label = names[name]
        elif name.lstrip("-").isdigit():
            label = int(name)
        else:
            raise DetectionAnswerError(f"box {n}: label {name!r} is not in index_to_name.json ({sorted(names)[:12]})")
        boxes.append(box)
        labels.append(label)
        scores.append(score)
    return Boxes.of(boxes, labels, scores)


def decode_tensors(doc: Any, boxes_key: str = "boxes", labels_key: str = "labels", scores_key: str = "scores",
                   get: Callable[[Any, str], Any] | None = None) -> Boxes:
    """Columns of one answer: boxes [n, 4] (or flat 4n), labels [n], scores [n].

    ``get`` reads a path (``answers.mapping``'s dotted paths); by default a key of a dict, or the
    output of that name in a KServe v2 ``outputs`` list.

    Raises:
        DetectionAnswerError: a column missing, not numbers, or of mismatched lengths.
    """
    def default_get(d: Any, key: str) -> Any:
        if isinstance(d, dict) and isinstance(d.get("outputs"), list):
            for out in d["outputs"]:
                if isinstance(out, dict) and out.get("name") == key:
                    return out.get("data")
        if isinstance(d, dict) and key in d:
            return d[key]
        raise DetectionAnswerError(f"the answer has no {key!r}")

    read = get or default_get
    try:
        b = np.asarray(read(doc, boxes_key), np.float64)
        lab = np.asarray(read(doc, labels_key), np.float64).reshape(-1)
        s = np.asarray(read(doc, scores_key), np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DetectionAnswerError(f"boxes, labels and scores must be numbers: {e}") from e
    if b.size % 4 or len(b.reshape(-1, 4)) != len(lab) or len(lab) != len(s):
        raise DetectionAnswerError(f"{b.size} box coordinates, {len(lab)} labels, {len(s)} scores: expected 4n, n, n")
    if not np.all(lab == np.round(lab)):
        raise DetectionAnswerError(f"labels must be integers, got {lab[lab != np.round(lab)][:5].tolist()}")
    return Boxes.of(b, lab, s)


def model_output(out: Any) -> Boxes:
    """One image's entry of torchvision's detection output: ``{"boxes", "labels", "scores"}`` tensors."""
    if not isinstance(out, Mapping) or not {"boxes", "labels", "scores"} <= set(out):
        raise DetectionAnswerError("the model must return torchvision's detection output: a list with one dict "
                                   f"of 'boxes', 'labels', 'scores' per image, got {type(out).__name__}")
    def arr(v: Any) -> Any:
        return v.detach().cpu().double().numpy() if hasattr(v, "detach") else v
    return Boxes.of(arr(out["boxes"]), arr(out["labels"]), arr(out["scores"]))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_answer(b: Boxes, num_classes: int, size: tuple[int, int] | None) -> list[str]:
    """Problems of one answer on its own: labels in range, scores in [0, 1], boxes finite, ordered, inside the image."""
    problems = []
    bad = [int(v) for v in b.labels if not 0 <= v < num_classes]
    if bad:
        problems.append(f"label(s) {bad[:5]} outside 0..{num_classes - 1}")
    s = b.scores
    if np.any(~np.isfinite(s)) or np.any((s < 0) | (s > 1)):
        problems.append(f"score(s) {s[~np.isfinite(s) | (s < 0) | (s > 1)][:5].tolist()} outside [0, 1]")
    for n, box in enumerate(b.boxes):
        why = _box_problem(box, *(size or (None, None)))
        if why:
            problems.append(f"box {n}: {why}")
            if len(problems) >= 8:
                break
    return problems


# ---------------------------------------------------------------------------------------- sameness


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` [n, 4] with every box of `b` [m, 4] (xyxy): [n, m]."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: np.clip(z[:, 2] - z[:, 0], 0, None) * np.clip(z[:, 3] - z[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_one_to_one(a: np.ndarray, b: np.ndarray, min_iou: float) -> list[tuple[int, int, float]]:
    """Pairs (i, j, IoU) maximising the total IoU, each box used once, pairs below `min_iou` dropped."""
    from scipy.optimize import linear_sum_assignment

    iou = iou_matrix(a, b)
    if not iou.size:
        return []
    rows, cols = linear_sum_assignment(-iou)
    return [(int(i), int(j), float(iou[i, j])) for i, j in zip(rows, cols) if iou[i, j] >= min_iou]


@dataclass(frozen=True)
class Tolerances:
    score: float = SCORE_TOL
    coord_px: float = COORD_TOL_PX
    match_iou: float = MATCH_IOU
    threshold: float = THRESHOLD
    flip_band: float = FLIP_BAND


@dataclass(frozen=True)
class RowDiff:
    """How one row's candidate boxes differ from the reference's (both as the built-in keeps them).

    Attributes:
        matched: pairs matched by IoU.
        label_mismatches: matched pairs whose labels differ.
        max_coord_px: largest coordinate difference over matched pairs (pixels).
        max_score: largest score difference over matched pairs.
        missing: reference boxes with no candidate (and not a threshold flip).
        extra: candidate boxes with no reference (and not a threshold flip).
        flips: boxes kept on one side and dropped on the other with a score within the band.
        min_iou: smallest IoU among matched pairs (1.0 with none).
    """

    n_reference: int
    n_candidate: int
    matched: int
    label_mismatches: int
    max_coord_px: float
    max_score: float
    missing: int
    extra: int
    flips: int
    min_iou: float
    details: tuple[str, ...] = field(default=())

    def is_same(self, tol: Tolerances) -> bool:
        """Same answer: every box matched, same labels, coordinates and scores within tolerance (flips aside)."""
        return (self.missing == 0 and self.extra == 0 and self.label_mismatches == 0
                and self.max_coord_px <= tol.coord_px and self.max_score <= tol.score)


def compare_row(reference: Boxes, candidate: Boxes, tol: Tolerances = Tolerances(),
                candidate_raw: bool = False) -> RowDiff:
    """Compare one row's detections.

    Args:
        reference: the reference side's raw detections (all scores, before the threshold).
        candidate: the candidate's detections: raw when `candidate_raw` (an in-process stage),
            else as answered (already thresholded by the built-in).
        tol: tolerances and the threshold band.

    Returns:
        The row's differences; boxes dropped on one side only because their score is within
        ``flip_band`` of the threshold are counted as flips, not as missing or extra.
    """
    thr, band = tol.threshold, tol.flip_band
    ref_kept, cand_kept = reference.above(thr), candidate.above(thr)
    pairs = match_one_to_one(ref_kept.boxes, cand_kept.boxes, tol.match_iou)
    details: list[str] = []
    coords = scores = 0.0
    mism = 0
    for i, j, iou in pairs:
        if ref_kept.labels[i] != cand_kept.labels[j]:
            mism += 1
            details.append(f"box {ref_kept.boxes[i].round(2).tolist()}: label {int(ref_kept.labels[i])} -> "
                           f"{int(cand_kept.labels[j])}")
        coords = max(coords, float(np.abs(ref_kept.boxes[i] - cand_kept.boxes[j]).max()))
        scores = max(scores, abs(float(ref_kept.scores[i]) - float(cand_kept.scores[j])))
    un_ref = sorted(set(range(len(ref_kept))) - {i for i, _, _ in pairs})
    un_cand = sorted(set(range(len(cand_kept))) - {j for _, j, _ in pairs})
    flips = missing = extra = 0
    # candidate boxes the reference dropped: a flip when the reference has the box just under the threshold
    ref_low = reference.boxes[(reference.scores < thr) & (reference.scores >= thr - band)]
    for j in un_cand:
        if len(ref_low) and iou_matrix(cand_kept.boxes[j:j + 1], ref_low).max() >= tol.match_iou \
                and cand_kept.scores[j] < thr + band:
            flips += 1
            details.append(f"box {cand_kept.boxes[j].round(2).tolist()}: threshold flip (candidate score "
                           f"{cand_kept.scores[j]:.6f}, reference just under {thr})")
        else:
            extra += 1
            details.append(f"extra box {cand_kept.boxes[j].round(2).tolist()} label {int(cand_kept.labels[j])} "
                           f"score {cand_kept.scores[j]:.4f}")
    cand_low = candidate.boxes[(candidate.scores < thr) & (candidate.scores >= thr - band)] if candidate_raw else None
    for i in un_ref:
        s = float(ref_kept.scores[i])
        if cand_low is not None:
            flip = s < thr + band and len(cand_low) > 0 and \
                iou_matrix(ref_kept.boxes[i:i + 1], cand_low).max() >= tol.match_iou
        else:
            # an answered side shows no dropped box: near the threshold, its score may just have crossed it
            flip = s < thr + band
        if flip:
            flips += 1
            details.append(f"box {ref_kept.boxes[i].round(2).tolist()}: threshold flip (reference score {s:.6f})")
        else:
            missing += 1
            details.append(f"missing box {ref_kept.boxes[i].round(2).tolist()} label {int(ref_kept.labels[i])} "
                           f"score {s:.4f}")
    return RowDiff(len(ref_kept), len(cand_kept), len(pairs), mism, coords, scores, missing, extra, flips,
                   min((p[2] for p in pairs), default=1.0), tuple(details[:10]))


PROBE_TOLERANCES = Tolerances(score=math.inf, coord_px=math.inf)  # a probe re-encodes: the same objects suffice


def probe_difference(original: Boxes, answered: Boxes, orientation: int = 1,
                     upright_size: tuple[int, int] | None = None) -> str:
    """'' when ``answered`` finds the objects of ``original`` (one to one at IoU >= 0.5, same labels), read after
    turning it back from the frame of pixels stored under EXIF ``orientation`` (1: as is); else what differs."""
    from pipeline.inputs.orientation import upright_boxes

    if orientation != 1 and upright_size is not None:
        answered = Boxes(upright_boxes(answered.boxes, orientation, upright_size), answered.labels, answered.scores)
    d = compare_row(original, answered, PROBE_TOLERANCES)
    return "" if d.is_same(PROBE_TOLERANCES) else "; ".join(d.details[:3]) or "boxes differ"


# ---------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class RowCounts:
    """One row's true positives, false positives and false negatives per class at IoU 0.5: int [K] each."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray


def row_counts(pred: Boxes, truth: Boxes, num_classes: int, iou: float = 0.5) -> RowCounts:
    """COCO-style matching per class: predictions by score, best free ground-truth box with IoU >= `iou`."""
    tp, fp, fn = (np.zeros(num_classes, np.int64) for _ in range(3))
    for c in range(num_classes):
        p = np.flatnonzero(pred.labels == c)
        t = np.flatnonzero(truth.labels == c)
        p = p[np.argsort(-pred.scores[p], kind="stable")]
        m = iou_matrix(pred.boxes[p], truth.boxes[t])
        free = np.ones(len(t), bool)
        for k in range(len(p)):
            cand = np.where(free, m[k], -1.0) if len(t) else np.zeros(0)
            if len(cand) and cand.max() >= iou:
                free[int(cand.argmax())] = False
                tp[c] += 1
            else:
                fp[c] += 1
        fn[c] += int(free.sum())
    return RowCounts(tp, fp, fn)


def prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 per class (NaN where undefined: no prediction, no truth)."""
    tp, fp, fn = (np.asarray(v) for v in (tp, fp, fn))
    with np.errstate(invalid="ignore"):  # 0/0 is NaN, the undefined figure; no other division by 0 can occur
        return {"precision": tp / (tp + fp), "recall": tp / (tp + fn), "f1": 2 * tp / (2 * tp + fp + fn)}


def mean_average_precision(preds: Sequence[Boxes], truths: Sequence[Boxes]) -> dict[str, Any]:
    """mAP@[.5:.95], mAP@.5 and AP per class, torchmetrics with the faster_coco_eval backend.

    Returns:
        ``map``, ``map_50`` (floats, -1 where torchmetrics has nothing to score) and
        ``ap_per_class`` {class index: AP@[.5:.95]}.
    """
    from pipeline import compat

    compat.install_import_hook()  # torchmetrics.detection imports torchvision, a CUDA build here
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True,
                                  backend="faster_coco_eval")
    t = lambda b: {"boxes": torch.as_tensor(b.boxes, dtype=torch.float32).reshape(-1, 4),  # noqa: E731
                   "labels": torch.as_tensor(b.labels, dtype=torch.int64)}
    metric.update([dict(t(p), scores=torch.as_tensor(p.scores, dtype=torch.float32)) for p in preds],
                  [t(g) for g in truths])
    r = metric.compute()
    classes = r["classes"].reshape(-1).tolist()
    per = r["map_per_class"].reshape(-1).tolist()
    return {"map": float(r["map"]), "map_50": float(r["map_50"]),
            "ap_per_class": {int(c): float(v) for c, v in zip(classes, per)}}


# ---------------------------------------------------------------------------------------- the task

MAX_ENCODED = 100  # boxes kept per row by an in-process stage (torchvision's detections_per_img)
TRACKED = ("map", "map_50", "precision_macro", "recall_macro", "f1_macro")
GEOMETRY_NOTE = ("boxes are compared and scored in the pixels of each image as sent: the built-in object_detector "
                 "preprocesses with ToTensor only (no resize), so the ground truth needs no transform; a handler "
                 "that resizes must scale its boxes back")
THRESHOLD_NOTE = (f"the baseline and every in-process stage keep the boxes with score >= {THRESHOLD}, the built-in "
                  "object_detector's threshold, before they are scored or compared")


@dataclass(frozen=True)
class Truth:
    """One row's ground truth: its boxes and its image's (width, height)."""

    boxes: Boxes
    size: tuple[int, int] | None
    path: str | None = None  # the image, for report.html's pictures

    def __str__(self) -> str:  # rows.parquet's label column
        return json.dumps([{"box": [float(v) for v in b], "label": int(lab)}
                           for b, lab in zip(self.boxes.boxes, self.boxes.labels)])


def encode_outputs(y: Any, n: int) -> np.ndarray:
    """torchvision detection output for `n` rows as float32 [n, 1 + 6 * MAX_ENCODED]: the count, then
    (x1, y1, x2, y2, label, score) per box, best first; so in-process stages store it as they store logits."""
    if not isinstance(y, (list, tuple)) or len(y) != n:
        raise DetectionAnswerError(f"the model must return torchvision's detection output (a list of {n} dict(s) "
                                   f"of boxes, labels, scores), got {type(y).__name__}")
    out = np.zeros((n, 1 + 6 * MAX_ENCODED), np.float32)
    for i, d in enumerate(y):
        b = model_output(d)
        order = np.argsort(-b.scores, kind="stable")[:MAX_ENCODED]
        k = len(order)
        out[i, 0] = k
        out[i, 1:1 + 6 * k] = np.column_stack([b.boxes[order], b.labels[order], b.scores[order]]).reshape(-1)
    return out


def decode_encoded(row: np.ndarray) -> Boxes | None:
    if not np.all(np.isfinite(row[:1])):
        return None
    k = int(row[0])
    v = row[1:1 + 6 * k].reshape(k, 6)
    return Boxes.of(v[:, :4], v[:, 4].round(), v[:, 5])


def _image_sizes(paths: Sequence[Path]) -> list[tuple[int, int] | None]:
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                out.append(im.size)
        except Exception:
            out.append(None)  # the dataset stage names unreadable images itself
    return out


class Detection:
    name = NAME
    gated_metrics = ("map", "map_50", "precision_macro", "recall_macro", "f1_macro")
    default_metrics = gated_metrics
    tracked = TRACKED
    what = "boxes"
    labels_word = "box labels"  # what the report's "What ran" calls the class map
    encode_outputs = staticmethod(encode_outputs)
    outputs_by_name = True  # KServe v2 answers: every output, by name (answers.envelopes.KServeV2.unwrap_outputs)

    # labels
    def read_labels(self, df, spec, path: Path, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        ds = spec.dataset
        paths = [(path.parent / str(p)) if not Path(str(p)).is_absolute() else Path(str(p))
                 for p in df[ds.path_column]]
        sizes = _image_sizes(paths)
        check_serving(spec, ids, sizes)
        c = spec.model.num_classes
        index = {n: i for i, n in enumerate(spec.class_labels)}
        annotations = getattr(ds, "annotations", None)
        truths: list[Truth] = []
        if annotations is not None:
            by_name: dict[str, int] = {}
            for i, p in enumerate(paths):
                if p.name in by_name:
                    raise DatasetError(f"rows {ids[by_name[p.name]]} and {ids[i]} share the file name {p.name!r}: "
                                       "COCO annotations are joined on the file name. Rename one.")
                by_name[p.name] = i
            known = {Path(str(k)).name: s for k, s in zip(paths, sizes) if s is not None}
            found, _ = load_coco(Path(annotations), c, sizes=None)
            problems, boxes_of = [], {}
            for name, b in found.items():
                key = Path(name).name
                if key not in by_name:
                    continue  # an image of the annotations that is not among the rows: not scored
                size = known.get(key)
                for n, box in enumerate(b.boxes):
                    why = _box_problem(box, *(size or (None, None)))
                    if why:
                        problems.append(f"row {ids[by_name[key]]} ({key}), box {n}: {why}")
                boxes_of[key] = b
            absent = [ids[i] for i, p in enumerate(paths) if p.name not in boxes_of]
            if absent:
                problems.append(f"{len(absent)} row(s) have no entry among the annotations' images: "
                                f"{absent[:8]} (an image without objects is an 'images' entry with no annotation)")
            if problems:
                raise DatasetError(f"{annotations}: {len(problems)} bad label(s). Fix the annotations.",
                                   details=problems[:20])
            truths = [Truth(boxes_of[p.name], s, str(p)) for p, s in zip(paths, sizes)]
            source = f"COCO annotations {Path(annotations).name}"
        else:
            col = ds.label_column
            if col not in df.columns:
                raise DatasetError(f"{path}: no boxes column {col!r} and no dataset.annotations. Give a COCO "
                                   "annotations JSON in dataset.annotations, or a column of JSON box lists in "
                                   "dataset.label_column.")
            truths = [Truth(boxes_from_cell(v, rid, index, c, s), s, str(p))
                      for v, rid, s, p in zip(df[col], ids, sizes, paths)]
            source = f"the JSON column {col!r}"
        labels = np.empty(len(truths), object)
        labels[:] = truths
        total = sum(len(t.boxes) for t in truths)
        return labels, [f"detection labels: {total} box(es) over {len(truths)} image(s) from {source}; {GEOMETRY_NOTE}",
                        THRESHOLD_NOTE]

    def label_counts(self, labels, spec):
        return None

    # answers
    def decode(self, doc: Any, spec):
        from pipeline.answers.base import Prediction

        names = name_to_index(dict(enumerate_names(spec)))[0]
        try:
            if isinstance(doc, list):
                b = decode_builtin(doc, names)
            else:
                b = decode_tensors(doc)
        except DetectionAnswerError as e:
            from pipeline.answers.base import AnswerError

            raise AnswerError(str(e)) from e
        return Prediction(index=0, extra={"boxes": b})

    def probe_difference(self, original, answered, orientation: int = 1, upright_size=None) -> str:
        """'' when a handler probe's boxes are the original row's objects, else what differs (stages.probing)."""
        return probe_difference(original.extra["boxes"], answered.extra["boxes"], orientation, upright_size)

    def check_answer(self, pred, spec) -> list[str]:
        b = (pred.extra or {}).get("boxes")
        return [] if b is None else check_answer(b, spec.model.num_classes, None)

    # stage outputs
    def model_outputs(self, name: str, scores, spec):
        from pipeline.tasks.structured import encoded_outputs

        return encoded_outputs(name, scores, decode_encoded)

    def answer_outputs(self, name: str, outcomes: tuple, spec):
        from pipeline.tasks.structured import answered_outputs

        return answered_outputs(name, outcomes, "boxes")

    # comparison
    def decoder(self, spec):
        from pipeline.tasks.structured import decoder_for

        return decoder_for(self, spec, "boxes with labels and scores")

    def tolerances(self, spec) -> tuple[float, float]:
        """The seam's (absolute, relative) output tolerance: the box scores' (``box_tolerances`` has the rest)."""
        return spec.gate.max_output_diff, 0.0

    def box_tolerances(self, spec) -> Tolerances:
        g = spec.gate
        return Tolerances(score=g.max_output_diff, coord_px=getattr(g, "max_box_diff_px", None) or COORD_TOL_PX,
                          flip_band=getattr(g, "threshold_band", None) or FLIP_BAND)

    def compare(self, ids, labels, stages, server_ms, ctx):
        from pipeline.tasks import coco_ap
        from pipeline.tasks.structured import RowCompare, compare_structured

        tol = self.box_tolerances(ctx.spec) if ctx.spec is not None else Tolerances()
        truths = [t.boxes for t in labels]
        k = len(ctx.class_labels)

        def kept(b: Boxes | None) -> Boxes | None:
            return None if b is None else b.above(THRESHOLD)

        def drawn(b: Boxes) -> list[list[float]]:
            k_ = b.above(THRESHOLD)
            return [[round(float(v), 2) for v in box] + [int(lab), round(float(s), 4)]
                    for box, lab, s in zip(k_.boxes[:20], k_.labels[:20], k_.scores[:20])]

        def row_compare(a: Boxes, b: Boxes, i: int) -> RowCompare:
            d = compare_row(a, b, tol, candidate_raw=True)
            same = d.is_same(tol)
            detail = "; ".join(d.details[:3]) or ("threshold flip(s)" if d.flips else "boxes differ")
            return RowCompare(same, {"score": d.max_score, "coordinate_px": d.max_coord_px,
                                     "missing_or_extra": float(d.missing + d.extra),
                                     "label_mismatches": float(d.label_mismatches), "threshold_flips": float(d.flips)},
                              f"boxes: {detail}", tuple(a.above(THRESHOLD).boxes.reshape(-1)[:16].round(3)),
                              tuple(b.above(THRESHOLD).boxes.reshape(-1)[:16].round(3)),
                              None if same else {"kind": "boxes", "image": labels[i].path, "size": labels[i].size,
                                                 "truth": drawn(labels[i].boxes), "reference": drawn(a),
                                                 "candidate": drawn(b), "names": list(ctx.class_labels)})

        def row_stats(answers):
            return [row_counts(kept(a), t, k) if a is not None else row_counts(Boxes.empty(), t, k)
                    for a, t in zip(answers, truths)]

        def stats_of(counts, idx):
            tp = sum(counts[i].tp for i in idx)
            fp = sum(counts[i].fp for i in idx)
            fn = sum(counts[i].fn for i in idx)
            m = prf(tp[1:], fp[1:], fn[1:]) if k > 1 else prf(tp, fp, fn)
            return {f"{q}_macro": float(np.nanmean(m[q])) if np.isfinite(m[q]).any() else float("nan")
                    for q in ("precision", "recall", "f1")}

        def scored(answers) -> list[Boxes]:
            return [kept(a) if a is not None else Boxes.empty() for a in answers]

        def score(answers, rows):
            preds = scored(answers)
            figs = mean_average_precision(preds, truths) if len(preds) else {"map": float("nan"), "map_50": float("nan")}
            out = {"map": figs["map"], "map_50": figs["map_50"]}
            out.update(stats_of(row_stats(answers), rows))
            return out

        def per_class(answers):
            preds = scored(answers)
            ap = mean_average_precision(preds, truths)["ap_per_class"] if len(preds) else {}
            counts = row_stats(answers)
            tp, fp, fn = (sum(getattr(c, f) for c in counts) for f in ("tp", "fp", "fn"))
            m = prf(tp, fp, fn)
            return {ctx.class_labels[c]: {"ap": ap.get(c, float("nan")), "precision": float(m["precision"][c]),
                                          "recall": float(m["recall"][c]), "f1": float(m["f1"][c]),
                                          "support": int(tp[c] + fn[c])}
                    for c in range(k) if tp[c] + fp[c] + fn[c] > 0 or c in ap}

        def resampled_stats(answers):  # the paired intervals' inputs, once per stage: counts and COCO's matches
            return row_stats(answers), coco_ap.match_stage(scored(answers), truths)

        def resampled(stats, idx):
            counts, matches = stats
            ap = coco_ap.average_precision(matches, np.bincount(idx, minlength=len(truths))[None])
            return {**stats_of(counts, idx), "map": float(ap["map"][0]), "map_50": float(ap["map_50"][0])}

        return compare_structured(ids, stages, ctx.class_labels, server_ms, row_compare=row_compare, score=score,
                                  row_stats=resampled_stats, stats_of=resampled, per_class=per_class,
                                  output_quantity="box scores", output_key="score", what=self.what,
                                  tolerance=ctx.tolerance,
                                  validate=lambda a, i: check_answer(a.above(THRESHOLD), k, labels[i].size))

    def stage_checks(self, spec, plan, cmp, stage: str, base_name: str, labels, why: str) -> list:
        from pipeline.evaluate.gate import Check
        from pipeline.tasks.structured import checks_for, improvement_check, metric_limits

        def extra(t) -> list:
            coord = t.differences.get("coordinate_px", 0.0)
            flips = t.differences.get("threshold_flips", 0.0)
            lim = getattr(spec, "max_box_diff_px", None) or COORD_TOL_PX
            return [Check("max box coordinate difference", stage, coord, 0.0, f"<= {lim:g} px", coord <= lim,
                          "matched boxes, pixels of the image as sent"),
                    Check("threshold flips", stage, flips, 0.0, "reported", True,
                          f"boxes whose score lies within {FLIP_BAND} of {THRESHOLD} on one side only: not counted as "
                          "missing", is_gating=False)]

        checks = checks_for(spec, plan, cmp, stage, base_name, why, metric_limits(spec, self.gated_metrics),
                            ("ap", "precision", "recall", "f1"), f"<= {spec.max_output_diff:g} (box scores)", extra)
        improved = improvement_check(spec, cmp, stage, "map", why)
        return checks + ([improved] if improved is not None else [])

    def row_columns(self, prefix: str, outputs, names: tuple[str, ...] = ()) -> dict[str, Any]:
        answers = getattr(outputs, "answers", ())
        return {f"{prefix}_boxes": [json.dumps(a.above(THRESHOLD).to_json()) if a is not None else None
                                    for a in answers]}

    def report_sections(self, report: dict) -> list:
        from pipeline.tasks.structured import sections

        return sections(report, self.gated_metrics, "Per class at IoU 0.5 (AP is over IoU .5:.95)",
                        (THRESHOLD_NOTE, GEOMETRY_NOTE))


LABEL_MAP = "index_to_name.json"  # what BaseHandler.initialize loads as self.mapping


def enumerate_names(spec) -> list[tuple[str, Any]]:
    """index_to_name pairs as the built-in names boxes: the archive's index_to_name.json when the spec ships
    one (handler.extra_files), else the spec's class labels, index order."""
    f = next((p for p in spec.handler.extra_files if Path(p).name == LABEL_MAP and Path(p).is_file()), None)
    if f is not None:
        try:
            doc = json.loads(Path(f).read_text(encoding="utf-8"))
            if isinstance(doc, dict):
                return [(str(k), v) for k, v in doc.items()]
        except ValueError:
            pass  # the plan's class map check names a broken label map
    return [(str(i), n) for i, n in enumerate(spec.class_labels)]


def check_serving(spec, ids: Sequence[str], sizes: Sequence[tuple[int, int] | None]) -> None:
    """Refuse what the built-in object_detector cannot answer right, before any stage runs.

    Raises:
        ConfigError: duplicate label names (a box's label is its name: two classes of one name cannot be
            told apart); images of several sizes at serving.batch_size > 1 (VisionHandler.preprocess stacks
            a batch's images, so any batch that mixes sizes fails).
    """
    from pipeline.errors import ConfigError

    _, problems = name_to_index(dict(enumerate_names(spec)))
    if problems:
        raise ConfigError(f"{LABEL_MAP}: the answers name each box's class, and {'; '.join(problems)}. Give every "
                          "class its own name.")
    distinct = sorted({s for s in sizes if s is not None})
    if spec.handler.name == "object_detector" and spec.serving.batch_size > 1 and len(distinct) > 1:
        first = {}
        for rid, s in zip(ids, sizes):
            first.setdefault(s, rid)
        raise ConfigError(
            f"serving.batch_size is {spec.serving.batch_size} but the images have {len(distinct)} sizes "
            f"({', '.join(f'{w}x{h} (e.g. {first[(w, h)]})' for w, h in distinct[:4])}): the built-in "
            "object_detector preprocesses with ToTensor only and stacks a batch's images (torch.stack in "
            "VisionHandler.preprocess), so every batch mixing sizes fails. Serve at batch_size 1, give every "
            "image one size, or use a handler that batches images of several sizes.")


TASK = Detection()
