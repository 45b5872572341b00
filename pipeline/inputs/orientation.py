"""EXIF orientation: how a phone stores an image's pixels turned, and how to undo it on an answer.

A camera held sideways stores the sensor's pixels as they came and writes the EXIF Orientation
tag (0x0112) saying how a viewer must turn them to show the picture upright. PIL's
``Image.open`` ignores the tag (``ImageOps.exif_transpose`` applies it), so a handler that does
not call it sees the stored pixels, and its boxes or mask are in the stored frame.

Only the rotations are handled (1, 3, 6, 8: what cameras write); the mirrored ones (2, 4, 5, 7)
come from editing software. Coordinates are continuous pixel coordinates (a box [x1, y1, x2, y2]
spans pixels x1..x2), arrays are [H, W] grids.
"""

from __future__ import annotations

import numpy as np

ORIENTATION_TAG = 0x0112
# orientation -> quarter turns counter-clockwise that take the upright picture to the stored pixels
# (PIL's ImageOps.exif_transpose turns them back: 3 ROTATE_180, 6 ROTATE_270, 8 ROTATE_90)
STORED_TURNS = {1: 0, 3: 2, 6: 1, 8: 3}
WORDS = {1: "upright", 3: "stored upside down (turned 180 degrees)",
         6: "stored turned 90 degrees counter-clockwise, as a phone held upright writes a photo",
         8: "stored turned 90 degrees clockwise"}


def turns_of(orientation: int) -> int:
    """Counter-clockwise quarter turns from the upright picture to the stored pixels; ValueError for a mirror."""
    if orientation not in STORED_TURNS:
        raise ValueError(f"EXIF orientation {orientation} is not a rotation (1, 3, 6 or 8)")
    return STORED_TURNS[orientation]


def stored_image(upright, orientation: int):
    """The PIL image a camera stores for ``upright`` under ``orientation`` (exif_transpose undoes it)."""
    from PIL import Image

    op = {0: None, 1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180,
          3: Image.Transpose.ROTATE_270}[turns_of(orientation)]
    return upright if op is None else upright.transpose(op)


def _turn_ccw(xy: np.ndarray, width: float) -> np.ndarray:
    """Points [n, 2] of a W-wide picture after a counter-clockwise quarter turn: (x, y) -> (y, W - x)."""
    return np.column_stack([xy[:, 1], width - xy[:, 0]])


def upright_boxes(boxes: np.ndarray, orientation: int, upright_size: tuple[int, int]) -> np.ndarray:
    """Boxes [n, 4] xyxy read in the stored pixels' frame, mapped into the upright picture's frame.

    Args:
        boxes: xyxy boxes as a handler that ignores EXIF answers them (the stored frame).
        orientation: the EXIF orientation the image was stored under.
        upright_size: (width, height) of the upright picture.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    back = (4 - turns_of(orientation)) % 4  # counter-clockwise turns from stored to upright
    w, h = upright_size
    size = (w, h) if turns_of(orientation) % 2 == 0 else (h, w)  # the stored frame's (width, height)
    corners = [b[:, [0, 1]], b[:, [2, 3]]]
    for _ in range(back):
        corners = [_turn_ccw(c, size[0]) for c in corners]
        size = (size[1], size[0])
    xs = np.column_stack([corners[0][:, 0], corners[1][:, 0]])
    ys = np.column_stack([corners[0][:, 1], corners[1][:, 1]])
    return np.column_stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)])


def upright_grid(grid: np.ndarray, orientation: int) -> np.ndarray:
    """An [H, W] grid (a class mask) answered in the stored frame, turned into the upright frame."""
    return np.rot90(np.asarray(grid), k=-turns_of(orientation))
