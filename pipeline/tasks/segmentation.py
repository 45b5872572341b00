"""Segmentation: PNG class masks as labels, TorchServe's ``image_segmenter`` answers, per-pixel sameness, mIoU.

Pure functions over numpy arrays; the Task wiring sits at the end of the module.

- Labels: one PNG per image (mode L, P or I;16), each pixel its class index. A mask whose size
  is not its image's, or a pixel of no class of the model, is exit 2 naming the row.
- Geometry: the built-in ``image_segmenter`` answers 224 x 224 after Resize(256) and
  CenterCrop(224) (torchvision's, on the PIL image); the ground truth mask is given the same
  geometry with NEAREST resampling (a class index must never be interpolated), so metrics are
  computed in the frame the answer is in. The report says so.
- Answers: the built-in's nested list [224][224][2] of (class index as a float, its softmax
  probability); KServe v2 gives the same numbers flat; ``answers.mapping`` names a class array
  and optionally a probability array; ``answers.decode`` returns {"classes", "probabilities"}.
  Each answer is turned into two small arrays at once (uint8/int16 classes, float32
  probabilities) so memory stays bounded by the rows, not by the JSON.
- Sameness per row: the fraction of pixels whose class agrees, and the largest probability
  difference over the pixels that agree (where the classes differ, the two probabilities are
  of different classes and are not compared).
- Metrics: per-class IoU, mIoU (over classes present in truth or prediction) and pixel
  accuracy from a confusion matrix summed over rows; per-row matrices make a paired interval
  a sum over resampled rows.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from pipeline.errors import DatasetError

NAME = "segmentation"
RESIZE, CROP = 256, 224  # ts.torch_handler.image_segmenter.ImageSegmenter.image_processing (0.12)
PROB_TOL = 1e-5          # the seeds' output tolerance
MASK_MODES = ("L", "P", "I;16", "I", "1")
GEOMETRY_NOTE = (f"the built-in image_segmenter answers {CROP}x{CROP} after Resize({RESIZE}) and "
                 f"CenterCrop({CROP}); the ground-truth masks were given the same geometry (NEAREST, so class "
                 "indices are never blended) and every metric is computed in that frame")


class SegmentationAnswerError(ValueError):
    """An answer is not a segmentation answer of the expected format (the row becomes bad_response)."""


def resized_size(width: int, height: int, size: int = RESIZE) -> tuple[int, int]:
    """torchvision's Resize(size) on a PIL image: the shorter side becomes `size`, the longer is truncated."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def mask_in_handler_frame(mask: np.ndarray, resize: int = RESIZE, crop: int = CROP) -> np.ndarray:
    """A class mask [H, W] given the built-in's geometry: Resize(resize) NEAREST, then CenterCrop(crop).

    torchvision's CenterCrop pads with zeros (class 0) where the image is smaller than the crop,
    and takes ``int(round((side - crop) / 2))`` off the top and left; both are followed here.
    """
    from PIL import Image

    mask = np.asarray(mask)
    h, w = mask.shape
    nw, nh = resized_size(w, h, resize)
    im = Image.fromarray(mask.astype(np.int32 if mask.dtype.itemsize > 1 else np.uint8))
    out = np.asarray(im.resize((nw, nh), Image.Resampling.NEAREST)).astype(mask.dtype)
    if nw < crop or nh < crop:
        pw, ph = max(crop - nw, 0), max(crop - nh, 0)
        out = np.pad(out, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
        nh, nw = out.shape
    top, left = int(round((nh - crop) / 2.0)), int(round((nw - crop) / 2.0))
    return out[top:top + crop, left:left + crop]


def read_mask(path: Path, row_id: str, num_classes: int, image_size: tuple[int, int] | None) -> np.ndarray:
    """One ground-truth mask in the image's own frame (int16 [H, W]).

    Raises:
        DatasetError: unreadable, not a single-channel PNG, not the size of its image, or a pixel
            of no class (naming the row, the values and the fix).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode, size = im.mode, im.size
            if mode not in MASK_MODES:
                raise DatasetError(
                    f"row {row_id}: mask {path} is a {mode} image; a mask is one channel whose pixel values are "
                    "class indices (PNG mode L or P). Save it as Image.fromarray(classes.astype('uint8')).")
            arr = np.asarray(im)
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"row {row_id}: mask {path} cannot be read ({e}). Fix the mask column or the file.") from e
    if image_size is not None and tuple(size) != tuple(image_size):
        raise DatasetError(f"row {row_id}: mask {path} is {size[0]}x{size[1]} but its image is "
                           f"{image_size[0]}x{image_size[1]}. A mask has its image's size, one class per pixel.")
    arr = arr.astype(np.int16)
    bad = np.unique(arr[(arr < 0) | (arr >= num_classes)])
    if bad.size:
        raise DatasetError(f"row {row_id}: mask {path} has pixel value(s) {bad[:8].tolist()} that are no class of "
                           f"the model (0..{num_classes - 1}). Fix the mask or model.num_classes.")
    return arr


@dataclass(frozen=True)
class Mask:
    """One answer or truth: classes int16 [H, W], probabilities float32 [H, W] (None for truth)."""

    classes: np.ndarray
    probabilities: np.ndarray | None = None


def _check_shape(arr: np.ndarray, what: str) -> None:
    if arr.ndim != 2 or not arr.size:
        raise SegmentationAnswerError(f"{what} must be an H x W grid, got shape {list(arr.shape)}")


def decode_builtin(answer: Any, crop: int = CROP) -> Mask:
    """The built-in's answer for one image: [H][W][2] of (class as float, probability); flat from KServe v2."""
    try:
        arr = np.asarray(answer, np.float32)
    except (TypeError, ValueError) as e:
        raise SegmentationAnswerError(f"expected an H x W x 2 grid of [class, probability] numbers: {e}") from e
    if arr.ndim == 1 and arr.size == crop * crop * 2:
        arr = arr.reshape(crop, crop, 2)
    if arr.ndim != 3 or arr.shape[2] != 2:
        raise SegmentationAnswerError(f"expected an H x W x 2 grid of [class, probability], got shape "
                                      f"{list(arr.shape)}")
    cls = arr[:, :, 0]
    if not np.all(np.isfinite(cls)) or not np.all(cls == np.round(cls)):
        raise SegmentationAnswerError("classes must be integers (the built-in sends them as floats like 2.0)")
    return Mask(cls.astype(np.int16), np.ascontiguousarray(arr[:, :, 1]))


def decode_mapping(answer: Any, classes_path: str, probabilities_path: str | None,
                   get: Callable[[Any, str], Any]) -> Mask:
    """A custom answer whose class grid (and optionally probability grid) sit at the given paths."""
    cls = np.asarray(get(answer, classes_path), np.float64)
    _check_shape(cls, classes_path)
    if not np.all(cls == np.round(cls)):
        raise SegmentationAnswerError(f"{classes_path}: classes must be integers")
    probs = None
    if probabilities_path:
        probs = np.asarray(get(answer, probabilities_path), np.float32)
        if probs.shape != cls.shape:
            raise SegmentationAnswerError(f"{probabilities_path}: shape {list(probs.shape)} differs from the "
                                          f"classes' {list(cls.shape)}")
    return Mask(cls.astype(np.int16), probs)


def decode_custom(value: Any) -> Mask:
    """What an ``answers.decode`` function returned: {"classes": grid, "probabilities": grid (optional)}."""
    if not isinstance(value, Mapping) or "classes" not in value:
        raise SegmentationAnswerError(f"answers.decode must return {{'classes': H x W, 'probabilities': H x W}}, "
                                      f"got {type(value).__name__}")
    return decode_mapping(value, "classes", "probabilities" if value.get("probabilities") is not None else None,
                          lambda d, k: d[k])


def model_outputs(out: Any) -> list[Mask]:
    """A segmentation model's output ``{"out": logits [N, K, H, W]}`` read as the built-in reads it, per row.

    The softmax runs over the whole batch tensor, as the built-in's postprocess does: a row
    sliced out first can differ in the last bit (vectorised kernels round differently).
    """
    import torch

    logits = out["out"] if isinstance(out, Mapping) else out
    if not hasattr(logits, "dim") or logits.dim() != 4:
        raise SegmentationAnswerError("the model must return {'out': logits [N, K, H, W]} as torchvision's "
                                      "segmentation models do")
    p = torch.softmax(logits.detach().float(), dim=1).max(dim=1)
    return [Mask(i.numpy().astype(np.int16), v.numpy().astype(np.float32)) for i, v in zip(p.indices, p.values)]


def check_answer(m: Mask, num_classes: int, shape: tuple[int, int] | None = (CROP, CROP)) -> list[str]:
    """Problems of one answer on its own: the grid's shape, classes in range, probabilities in [0, 1]."""
    problems = []
    if shape is not None and tuple(m.classes.shape) != tuple(shape):
        problems.append(f"the answer is {m.classes.shape[1]}x{m.classes.shape[0]} pixels; {shape[1]}x{shape[0]} "
                        "expected")
    bad = np.unique(m.classes[(m.classes < 0) | (m.classes >= num_classes)])
    if bad.size:
        problems.append(f"class(es) {bad[:5].tolist()} outside 0..{num_classes - 1}")
    if m.probabilities is not None:
        p = m.probabilities
        out = ~np.isfinite(p) | (p < 0) | (p > 1)
        if out.any():
            problems.append(f"{int(out.sum())} probabilit(ies) outside [0, 1], e.g. {p[out][:3].tolist()}")
        # the top class's softmax probability can never be under 1/K
        if num_classes > 0 and np.any(p[~out] < 1.0 / num_classes - 1e-6):
            problems.append(f"a top-class probability under 1/{num_classes}: these are not the argmax class's "
                            "softmax probabilities (an argmax over the wrong dimension?)")
    return problems


@dataclass(frozen=True)
class RowDiff:
    """Per-pixel differences of one row: agreement fraction, differing pixels, largest probability difference."""

    pixels: int
    differing: int
    max_probability: float

    @property
    def agreement(self) -> float:
        return 1.0 - self.differing / self.pixels if self.pixels else 1.0

    def is_same(self, prob_tol: float = PROB_TOL) -> bool:
        return self.differing == 0 and not (self.max_probability > prob_tol)


def compare_row(reference: Mask, candidate: Mask) -> RowDiff:
    """Compare two answers for one row (the same frame); shapes that differ are every pixel differing."""
    if reference.classes.shape != candidate.classes.shape:
        return RowDiff(int(reference.classes.size), int(reference.classes.size), math.inf)
    same = reference.classes == candidate.classes
    diff = 0.0
    if reference.probabilities is not None and candidate.probabilities is not None and same.any():
        diff = float(np.abs(reference.probabilities[same].astype(np.float64)
                            - candidate.probabilities[same].astype(np.float64)).max())
    return RowDiff(int(same.size), int((~same).sum()), diff)


PROBE_AGREEMENT = 0.98  # a probe re-encodes (JPEG): edges may move a pixel, the mask may not


def probe_difference(original: Mask, answered: Mask, orientation: int = 1) -> str:
    """'' when at least PROBE_AGREEMENT of the pixels of ``answered`` (turned back from the frame of pixels stored
    under EXIF ``orientation``; 1: as is) have the class of ``original``'s; else the agreement. The built-in's
    Resize and CenterCrop commute with a quarter turn (to a pixel), so its mask turns as the picture does."""
    from pipeline.inputs.orientation import upright_grid

    got = answered.classes if orientation == 1 else upright_grid(answered.classes, orientation)
    if got.shape != original.classes.shape:
        return f"a {got.shape[1]}x{got.shape[0]} mask, the original row's is {original.classes.shape[1]}x" \
               f"{original.classes.shape[0]}"
    agree = float((got == original.classes).mean())
    return "" if agree >= PROBE_AGREEMENT else f"{agree:.1%} of the pixels have the original row's class " \
                                                f"(at least {PROBE_AGREEMENT:.0%} expected)"


def confusion(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixel confusion matrix [truth, prediction] (int64 K x K) of one row; shapes must agree."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {list(pred.shape)} and truth {list(truth.shape)} differ in shape")
    t, p = truth.reshape(-1).astype(np.int64), pred.reshape(-1).astype(np.int64)
    ok = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    return np.bincount(t[ok] * num_classes + p[ok], minlength=num_classes ** 2).reshape(num_classes, num_classes)


def metrics_of(conf: np.ndarray) -> dict[str, Any]:
    """mIoU (over classes present in truth or prediction), pixel accuracy and IoU per class from a confusion."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    total = conf.sum()
    return {"miou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
            "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
            "iou_per_class": {int(c): float(v) for c, v in enumerate(iou) if not np.isnan(v)}}


def image_size(body: bytes) -> tuple[int, int] | None:
    """(width, height) of an image's bytes from its header, or None if PIL cannot open it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(body)) as im:
            return im.size
    except Exception:
        return None


# ---------------------------------------------------------------------------------------- the task

TRACKED = ("miou", "pixel_accuracy")


@dataclass(frozen=True)
class Truth:
    """One row's ground truth mask, in the frame the answers are in (int16 [H, W])."""

    mask: np.ndarray
    image_size: tuple[int, int] | None

    def __str__(self) -> str:  # rows.parquet's label column: the classes present and the frame
        classes = np.unique(self.mask).tolist()
        return f"mask {self.mask.shape[1]}x{self.mask.shape[0]}, classes {classes}"


def encode_outputs(y: Any, n: int) -> np.ndarray:
    """{"out": logits [n, K, H, W]} as float32 [n, 2 + 2 H W]: H, W, the top class per pixel, its probability."""
    masks = model_outputs(y)
    if len(masks) != n:
        raise SegmentationAnswerError(f"the model answered {len(masks)} row(s) for {n}")
    h, w = masks[0].classes.shape
    out = np.empty((n, 2 + 2 * h * w), np.float32)
    for i, m in enumerate(masks):
        out[i, :2] = (h, w)
        out[i, 2:2 + h * w] = m.classes.reshape(-1)
        out[i, 2 + h * w:] = m.probabilities.reshape(-1)
    return out


def decode_encoded(row: np.ndarray) -> Mask | None:
    if not np.isfinite(row[0]):
        return None
    h, w = int(row[0]), int(row[1])
    return Mask(row[2:2 + h * w].reshape(h, w).astype(np.int16), row[2 + h * w:2 + 2 * h * w].reshape(h, w).copy())


def uses_builtin_geometry(spec) -> bool:
    """The answers come in the built-in image_segmenter's frame (its handler, or its reference preprocessing)."""
    return spec.handler.name == "image_segmenter" or spec.model.preprocess == "builtin:image_segmenter"


class Segmentation:
    name = NAME
    gated_metrics = ("miou", "pixel_accuracy")
    default_metrics = gated_metrics
    tracked = TRACKED
    what = "a class per pixel"
    labels_word = "pixel classes"  # what the report's "What ran" calls the class map
    encode_outputs = staticmethod(encode_outputs)

    def read_labels(self, df, spec, path: Path, ids):
        ds = spec.dataset
        col = ds.label_column
        if col not in df.columns:
            raise DatasetError(f"{path}: no mask column {col!r}: for model.task segmentation, dataset.label_column "
                               "names a column of PNG mask paths (relative to the manifest), one class index per pixel.")
        geometry = uses_builtin_geometry(spec)
        c = spec.model.num_classes
        truths = []
        for rid, img, m in zip(ids, df[ds.path_column], df[col]):
            ip = Path(str(img)) if Path(str(img)).is_absolute() else path.parent / str(img)
            mp = Path(str(m)) if Path(str(m)).is_absolute() else path.parent / str(m)
            try:
                size = image_size(ip.read_bytes())
            except OSError:
                size = None  # the image loader names missing images itself
            mask = read_mask(mp, str(rid), c, size)
            truths.append(Truth(mask_in_handler_frame(mask) if geometry else mask, size))
        labels = np.empty(len(truths), object)
        labels[:] = truths
        notes = [f"segmentation labels: {len(truths)} PNG mask(s) from the column {col!r}"]
        notes.append(GEOMETRY_NOTE if geometry else "masks compared in the image's own frame (the handler is not the "
                     "built-in image_segmenter: its answers must have each image's size)")
        return labels, notes

    def label_counts(self, labels, spec):
        return None

    def decoder(self, spec):
        from pipeline.tasks.structured import decoder_for

        return decoder_for(self, spec, "a class and its probability per pixel")

    def tolerances(self, spec) -> tuple[float, float]:
        """The seam's (absolute, relative) output tolerance: the top-class probabilities'."""
        return spec.gate.max_output_diff, 0.0

    def decode(self, doc: Any, spec):
        from pipeline.answers.base import AnswerError, Prediction

        try:
            m = decode_custom(doc) if isinstance(doc, Mapping) and "classes" in doc else decode_builtin(doc)
        except SegmentationAnswerError as e:
            raise AnswerError(str(e)) from e
        return Prediction(index=0, extra={"mask": m})

    def probe_difference(self, original, answered, orientation: int = 1, upright_size=None) -> str:
        """'' when a handler probe's mask is nearly the original row's, else how far apart (stages.probing)."""
        return probe_difference(original.extra["mask"], answered.extra["mask"], orientation)

    def check_answer(self, pred, spec) -> list[str]:
        m = (pred.extra or {}).get("mask")
        return [] if m is None else check_answer(m, spec.model.num_classes,
                                                 (CROP, CROP) if uses_builtin_geometry(spec) else None)

    def model_outputs(self, name: str, scores, spec):
        from pipeline.tasks.structured import encoded_outputs

        return encoded_outputs(name, scores, decode_encoded)

    def answer_outputs(self, name: str, outcomes: tuple, spec):
        from pipeline.tasks.structured import answered_outputs

        return answered_outputs(name, outcomes, "mask")

    def compare(self, ids, labels, stages, server_ms, ctx):
        from pipeline.tasks.structured import RowCompare, compare_structured

        tol = ctx.tolerance
        k = len(ctx.class_labels)
        truths = [t.mask for t in labels]

        def row_compare(a: Mask, b: Mask, i: int) -> RowCompare:
            d = compare_row(a, b)
            same = d.is_same(tol)
            step = max(1, max(a.classes.shape) // 56)  # about 56 x 56 per mask in report.json: enough to see
            return RowCompare(same, {"probability": d.max_probability,
                                     "pixels_differing": float(d.differing),
                                     "pixel_disagreement": 1.0 - d.agreement},
                              f"{d.differing} of {d.pixels} pixel(s) of another class; largest probability difference "
                              f"{d.max_probability:.3g}", picture=None if same else {
                                  "kind": "mask", "step": step, "truth": truths[i][::step, ::step].tolist(),
                                  "reference": a.classes[::step, ::step].tolist(),
                                  "candidate": b.classes[::step, ::step].tolist(), "names": list(ctx.class_labels)})

        def row_stats(answers):
            out = []
            for a, t in zip(answers, truths):
                if a is None or a.classes.shape != t.shape:
                    conf = confusion(np.full(t.shape, -1), t, k)  # unanswered: no pixel predicted
                    conf = conf + np.diag(np.zeros(k, np.int64))
                    out.append((conf, int(t.size)))
                else:
                    out.append((confusion(a.classes, t, k), int(t.size)))
            return out

        def stats_of(stats, idx):
            conf = sum(stats[i][0] for i in idx)
            total = sum(stats[i][1] for i in idx)
            m = metrics_of(conf)
            # pixel accuracy over every pixel of the rows, answered or not
            return {"miou": m["miou"], "pixel_accuracy": float(np.trace(conf) / total) if total else float("nan")}

        def score(answers, rows):
            return stats_of(row_stats(answers), rows)

        def per_class(answers):
            conf = sum(s[0] for s in row_stats(answers))
            m = metrics_of(conf)
            return {ctx.class_labels[c]: {"iou": v, "support": int(np.asarray(conf)[c].sum())}
                    for c, v in m["iou_per_class"].items()}

        return compare_structured(ids, stages, ctx.class_labels, server_ms, row_compare=row_compare, score=score,
                                  row_stats=row_stats, stats_of=stats_of, per_class=per_class,
                                  output_quantity="top-class probabilities", output_key="probability",
                                  what=self.what, tolerance=tol,
                                  validate=lambda a, i: check_answer(a, k, truths[i].shape))

    def stage_checks(self, spec, plan, cmp, stage: str, base_name: str, labels, why: str) -> list:
        from pipeline.evaluate.gate import Check
        from pipeline.tasks.structured import checks_for, improvement_check, metric_limits

        def extra(t) -> list:
            worst = t.differences.get("pixel_disagreement", 0.0)
            return [Check("pixel class agreement", stage, 1.0 - worst, 1.0, "every pixel, every row", worst == 0,
                          f"worst row: {worst:.4%} of its pixels of another class")]

        checks = checks_for(spec, plan, cmp, stage, base_name, why, metric_limits(spec, self.gated_metrics), ("iou",),
                            f"<= {spec.max_output_diff:g} (top-class probabilities)", extra)
        improved = improvement_check(spec, cmp, stage, "miou", why)
        return checks + ([improved] if improved is not None else [])

    def row_columns(self, prefix: str, outputs, names: tuple[str, ...] = ()) -> dict[str, Any]:
        answers = getattr(outputs, "answers", ())
        return {f"{prefix}_classes": [json.dumps(np.unique(a.classes).tolist()) if a is not None else None
                                      for a in answers]}

    def report_sections(self, report: dict) -> list:
        from pipeline.tasks.structured import sections

        geometry = GEOMETRY_NOTE if (report.get("spec") or {}).get("handler", {}).get("name") == "image_segmenter" \
            else "masks compared in each image's own frame"
        return sections(report, self.gated_metrics, "Per class", (geometry,))


TASK = Segmentation()
