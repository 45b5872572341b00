"""Stage 0, dataset: the labeled rows, loaded once and checked before any server starts.

Also the leakage check: evaluation rows whose body (image bytes, text, record, features) is
byte-identical to a training row's; bodies larger than TorchServe's ``max_request_size``
(the frontend would refuse them with HTTP 413 after a full run); non-RGB images for the
built-in image_classifier; classes with no rows.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

import numpy as np

from pipeline.errors import DatasetError
from pipeline.inputs.base import FileBodies, Rows
from pipeline.inputs.registry import load_rows, load_training_rows
from pipeline.spec import Spec
from pipeline.tasks.registry import task_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetResult:
    """The evaluation rows, and the ids of rows also found in the training data."""

    rows: Rows
    leaked_ids: tuple[str, ...] | None  # None: no training data to check against
    training_rows: int | None


def _body_sizes(rows: Rows) -> list[int]:
    """Each row's body size in bytes; image files by stat, so no file is read for it."""
    if isinstance(rows.bodies, FileBodies):
        return [os.stat(p).st_size for p in rows.bodies.paths]
    return [len(rows.body(i)) for i in range(len(rows))]


def check_body_sizes(rows: Rows, limit: int) -> None:
    """DatasetError naming every row whose body TorchServe's frontend would refuse (HTTP 413): the size
    of the body is known now, so it is said now rather than by the server after a full run."""
    sizes = _body_sizes(rows)
    big = [(rows.ids[i], n) for i, n in enumerate(sizes) if n > limit]
    if big:
        raise DatasetError(
            f"{rows.source}: {len(big)} row(s) have a request body larger than serving.max_request_size "
            f"({limit} bytes): TorchServe would refuse them (HTTP 413). Raise serving.max_request_size above "
            f"{max(n for _, n in big)} bytes, or shrink those rows.",
            details=[f"id {rid}: {n} bytes" for rid, n in big[:20]])


def classes_without_rows(rows: Rows, spec: Spec) -> str | None:
    """A note naming the model's classes that no evaluation row has: their recall is not measured."""
    counts = task_of(spec).label_counts(rows.labels, spec)
    if counts is None:  # the task's labels are not one class per row
        return None
    empty = [spec.class_labels[k] for k in np.nonzero(counts == 0)[0]]
    if not empty:
        return None
    words = ", ".join(f"class {c}" for c in empty[:20])
    return (f"{len(empty)} of {spec.model.num_classes} classes have no evaluation rows ({words}"
            f"{', ...' if len(empty) > 20 else ''}): nothing measures whether the served model still predicts "
            "them. Add labeled rows of those classes.")


def check_image_modes(rows: Rows, spec: Spec) -> None:
    """With TorchServe's built-in image_classifier and a reference that converts images itself, a
    non-RGB image would pass the baseline and crash only in the handler (serve #65): said now, from
    the image headers (no pixel is decoded). With the built-in reference the baseline says it."""
    if rows.kind != "image" or spec.handler.name != "image_classifier":
        return
    if spec.model.preprocess is None or spec.model.preprocess == "builtin:image_classifier":
        return
    from pipeline.inputs.image import NOT_RGB_FIX, image_mode

    bad = []
    for i, path in enumerate(rows.paths or ()):
        with open(path, "rb") as f:
            mode = image_mode(f.read(1 << 16))  # the header is in the first bytes
        if mode is not None and mode != "RGB":
            bad.append(f"id {rows.ids[i]}: mode {mode} ({path})")
    if bad:
        raise DatasetError(f"{rows.source}: {len(bad)} image(s) are not RGB, and handler image_classifier is "
                           f"TorchServe's built-in: {NOT_RGB_FIX}.", details=bad[:20])


def load_dataset(spec: Spec) -> DatasetResult:
    """Load and check the rows the spec names, and look for evaluation rows in the training data.

    Args:
        spec: the validated spec.

    Returns:
        The rows (with a note on classes that have no rows) and the leaked ids.

    Raises:
        DatasetError: the rows cannot be read as the spec describes them (file, columns, ids,
            labels, values), or a body is larger than serving.max_request_size, each problem
            naming the rows or the field and the fix.
    """
    rows = load_rows(spec)
    log.info("dataset %s: %d %s rows", rows.source, len(rows), rows.kind)
    check_body_sizes(rows, spec.serving.max_request_size)
    check_image_modes(rows, spec)
    note = classes_without_rows(rows, spec)
    if note:
        log.warning("dataset %s: %s", rows.source, note)
        rows = dataclasses.replace(rows, notes=(*rows.notes, note))
    train = load_training_rows(spec)
    leaked = None
    if train is not None:
        seen = set(train.content_hashes())
        leaked = tuple(i for i, h in zip(rows.ids, rows.content_hashes()) if h in seen)
    return DatasetResult(rows=rows, leaked_ids=leaked, training_rows=len(train) if train is not None else None)
