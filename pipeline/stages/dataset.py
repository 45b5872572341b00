"""Stage 0, dataset: the labeled rows, loaded once and checked before any server starts.

Also the leakage check: evaluation rows whose body (image bytes, text, record, features) is
byte-identical to a training row's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.inputs.base import Rows
from pipeline.inputs.registry import load_rows, load_training_rows
from pipeline.spec import Spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetResult:
    """The evaluation rows, and the ids of rows also found in the training data."""

    rows: Rows
    leaked_ids: tuple[str, ...] | None  # None: no training data to check against
    training_rows: int | None


def load_dataset(spec: Spec) -> DatasetResult:
    """Load and check the rows the spec names, and look for evaluation rows in the training data.

    Args:
        spec: the validated spec.

    Returns:
        The rows and the leaked ids.

    Raises:
        DatasetError: the rows cannot be read as the spec describes them (file, columns, ids,
            labels, values), each problem naming the rows or the field and the fix.
    """
    rows = load_rows(spec)
    log.info("dataset %s: %d %s rows", rows.source, len(rows), rows.kind)
    train = load_training_rows(spec)
    leaked = None
    if train is not None:
        seen = set(train.content_hashes())
        leaked = tuple(i for i, h in zip(rows.ids, rows.content_hashes()) if h in seen)
    return DatasetResult(rows=rows, leaked_ids=leaked, training_rows=len(train) if train is not None else None)
