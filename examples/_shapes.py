"""Synthetic shapes on noise, rendered deterministically: the detection and segmentation examples' data.

Each image is SIZE x SIZE RGB: a noisy dark background with one to three non-overlapping
shapes, each of one class (colour and shape go together so a tiny network learns them in
seconds). Nothing is downloaded; the same seed gives the same PNG bytes on every run.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

SEED = 0
# Class index (1-based: torchvision's detection convention keeps 0 for the background) -> name.
CLASS_NAMES = ("background", "red_box", "green_disc", "blue_box")
_COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (50, 80, 230)}
_DISC = {2}


@dataclass(frozen=True)
class Shape:
    """One rendered object: its class and its box in pixels, xyxy, exclusive right/bottom edge."""

    label: int
    box: tuple[int, int, int, int]


def _place(rng: np.random.Generator, size: int, taken: list[tuple[int, int, int, int]],
           min_side: int, max_side: int) -> tuple[int, int, int, int] | None:
    for _ in range(50):
        w, h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        box = (x, y, x + w, y + h)
        # two pixels of gap, so boxes never touch and masks never merge
        if all(box[2] + 2 <= t[0] or t[2] + 2 <= box[0] or box[3] + 2 <= t[1] or t[3] + 2 <= box[1]
               for t in taken):
            return box
    return None


def render(rng: np.random.Generator, size: int, min_side: int, max_side: int
           ) -> tuple[np.ndarray, np.ndarray, list[Shape]]:
    """One image: uint8 RGB [size, size, 3], its class mask uint8 [size, size] and its shapes."""
    img = rng.integers(0, 70, size=(size, size, 3)).astype(np.int16)
    mask = np.zeros((size, size), np.uint8)
    shapes: list[Shape] = []
    taken: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, 4))):
        box = _place(rng, size, taken, min_side, max_side)
        if box is None:
            continue
        label = int(rng.integers(1, len(CLASS_NAMES)))
        x0, y0, x1, y1 = box
        if label in _DISC:
            # a disc whose bounding box is the whole box: the ellipse inscribed in it
            yy, xx = np.mgrid[y0:y1, x0:x1]
            cx, cy, rx, ry = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        else:
            inside = np.ones((y1 - y0, x1 - x0), bool)
        jitter = rng.integers(-20, 21, size=3)
        colour = np.clip(np.asarray(_COLOURS[label]) + jitter, 0, 255)
        region = img[y0:y1, x0:x1]
        region[inside] = colour + rng.integers(-15, 16, size=(int(inside.sum()), 3))
        mask[y0:y1, x0:x1][inside] = label
        taken.append(box)
        shapes.append(Shape(label, box))
    return np.clip(img, 0, 255).astype(np.uint8), mask, shapes


def png_bytes(array: np.ndarray) -> bytes:
    """An RGB or single-channel uint8 array as PNG bytes (Pillow writes no varying chunk)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
