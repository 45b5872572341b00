"""Input kind ``tensor``: numeric feature columns, sent as ``{"features": [...]}`` JSON.

This is the contract of the project's own ``handlers/tensor_classifier.py``: a flat list of
numbers per row, reshaped to ``dataset.input_shape`` by the handler. The reference
preprocessing reads the same JSON document back into a float32 tensor of that shape.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import DatasetError
from pipeline.inputs.base import (MemoryBodies, Reference, Rows, check_ids, encode_json, task_labels, no_rows,
                                  read_table, require_columns)
from pipeline.spec import Spec

NAME = "tensor"
CONTENT_TYPE = "application/json"


def _feature_columns(df: pd.DataFrame, spec: Spec) -> tuple[str, ...]:
    ds = spec.dataset
    if ds.feature_columns is not None:
        return ds.feature_columns
    return tuple(c for c in df.columns if c not in (ds.id_column, ds.label_column))


def _count_mismatch(df: pd.DataFrame, cols: tuple[str, ...], want: int, spec: Spec, path: Path) -> str:
    """The feature count differs from input_shape's: which columns are the extra ones, when they can be told."""
    ds = spec.dataset
    head = f"{path}: {len(cols)} feature columns but dataset.input_shape {list(ds.input_shape)} needs {want}."
    if ds.feature_columns is not None or len(cols) < want:
        return (f"{head} Columns read as features: {list(cols)[:20]}. Fix dataset.input_shape or "
                "dataset.feature_columns.")
    extra = len(cols) - want
    # Every column but id and label is read as a feature: the extras are likely the non-numeric ones, or
    # the ones not named like the rest (f0..f3 beside 'split' and 'fold').
    non_numeric = [c for c in cols if not pd.api.types.is_numeric_dtype(df[c])]
    stems: dict[str, list[str]] = {}
    for c in cols:
        stems.setdefault(re.sub(r"\d+$", "", str(c)), []).append(c)
    common = max(stems.values(), key=len)
    odd = [c for c in cols if c not in common]
    likely = non_numeric if len(non_numeric) == extra else odd if len(odd) == extra else list(cols[-extra:])
    return (f"{head} With dataset.feature_columns unset, every column but {ds.id_column!r} and {ds.label_column!r} "
            f"is read as a feature: {list(cols)[:20]}; {extra} more than needed, likely {likely}. List the "
            f"features in dataset.feature_columns, or drop {likely} from the file.")


def features_of(df: pd.DataFrame, spec: Spec, path: Path, ids) -> tuple[np.ndarray, tuple[str, ...]]:
    """float32 [N, *input_shape] from the numeric columns; DatasetError names what is wrong."""
    ds = spec.dataset
    cols = _feature_columns(df, spec)
    require_columns(df, cols, path, "feature_columns")
    want = int(np.prod(ds.input_shape))
    if len(cols) != want:
        raise DatasetError(_count_mismatch(df, cols, want, spec, path))
    block = df[list(cols)]
    non_numeric = [c for c in cols if not pd.api.types.is_numeric_dtype(block[c])]
    if non_numeric:
        raise DatasetError(f"{path}: non-numeric feature column(s) {non_numeric[:10]}. Features must be numbers.")
    values = block.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        rows, colidx = np.nonzero(bad)
        examples = [f"id {ids[r]}: {cols[c]}={values[r, c]}" for r, c in list(zip(rows, colidx))[:10]]
        raise DatasetError(
            f"{path}: {int(bad.any(axis=1).sum())} row(s) have NaN or infinite features. "
            "Clean or drop them before validating.",
            details=examples,
        )
    return values.astype(np.float32).reshape((len(df), *ds.input_shape)), cols


def body_of(row: np.ndarray) -> bytes:
    """The request body of one row: ``{"features": [flat float32 values]}``."""
    return encode_json({"features": row.reshape(-1).tolist()})


def load(spec: Spec, path: Path, *, training: bool = False) -> Rows:
    """Rows of a CSV/Parquet with an id, a label and numeric feature columns.

    Raises:
        DatasetError: missing file or columns, no rows, duplicate ids, NaN/inf features,
            labels outside the model's classes, or a feature count that does not match.
    """
    df = read_table(path, "training data" if training else "dataset")
    ds = spec.dataset
    if training and ds.id_column not in df.columns:
        df = df.assign(**{ds.id_column: [str(i) for i in range(len(df))]})
    if ds.label_column not in df.columns and not training:
        raise DatasetError(
            f"{path}: label_column {ds.label_column!r} not found. Columns found: {list(df.columns)[:40]}. "
            f"Fix dataset.label_column in the spec."
        )
    ids = check_ids(df, spec, path)
    if len(df) == 0:
        raise no_rows(path)
    labels, notes = (task_labels(df, spec, path, ids) if ds.label_column in df.columns
                     else (np.zeros(len(df), np.int64), []))
    features, _ = features_of(df.drop(columns=[ds.label_column], errors="ignore"), spec, path, ids)
    bodies = MemoryBodies(tuple(body_of(r) for r in features))
    return Rows(kind=NAME, source=path, ids=ids, labels=labels, content_type=CONTENT_TYPE, bodies=bodies,
                features=features, notes=tuple(notes))


def default_reference(spec: Spec) -> Reference:
    """``{"features": [...]}`` (or a bare list) -> float32 tensor of ``dataset.input_shape``."""
    import torch

    shape = tuple(spec.dataset.input_shape)
    want = math.prod(shape)

    def features_tensor(view: Any):
        payload = view.get("features") if isinstance(view, dict) else view
        if not isinstance(payload, list):
            raise ValueError(f"expected {{'features': [...]}} or a list of numbers, got {type(view).__name__}")
        t = torch.tensor(payload, dtype=torch.float32).reshape(-1)
        if t.numel() != want:
            raise ValueError(f"expected {want} numbers for input shape {list(shape)}, got {t.numel()}")
        return t.reshape(shape)

    return Reference("builtin:tensor", f"JSON features as float32 {list(shape)}", features_tensor)


def handler_probes(rows: Rows, spec: Spec, index: int = 0) -> list:
    """A row with one feature missing (refuse) and one with an extra key (same)."""
    from pipeline.inputs.probes import REFUSE, SAME, HandlerProbe

    flat = rows.features[index].reshape(-1).tolist()
    return [
        HandlerProbe("one feature missing", encode_json({"features": flat[:-1]}), CONTENT_TYPE, REFUSE, index),
        HandlerProbe("an extra key beside 'features'", encode_json({"features": flat, "client": "probe"}),
                     CONTENT_TYPE, SAME, index),
    ]
