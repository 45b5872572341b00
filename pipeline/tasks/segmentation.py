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
    arr = arr.astype(np.int16) if arr.dtype != bool else arr.astype(np.int16)
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
