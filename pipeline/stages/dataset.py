"""The labeled rows every stage scores: loaded once, checked before any server starts."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.spec import DatasetSpec, Spec
from pipeline.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """Rows ready for the model: ``features[i]`` has the spec's ``input_shape``."""

    path: Path
    ids: tuple[str, ...]
    labels: np.ndarray  # int64 [N]
    features: np.ndarray  # float32 [N, *input_shape]
    feature_columns: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def content_hashes(self) -> tuple[str, ...]:
        return hash_rows(self.features.reshape(len(self), -1))


def hash_rows(flat: np.ndarray) -> tuple[str, ...]:
    """sha256 of each row's float32 bytes: equal features, equal hash."""
    flat = np.ascontiguousarray(flat, dtype=np.float32)
    return tuple(hashlib.sha256(row.tobytes()).hexdigest()[:16] for row in flat)


def _read_table(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{what} {path} does not exist. Fix dataset.path in the spec or create the file.")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype={})
    except Exception as e:  # pandas raises many types for a bad file
        raise DatasetError(f"{what} {path} could not be read: {e}") from e
    raise DatasetError(f"{what} {path}: unsupported file type {path.suffix!r}. Use .csv or .parquet.")


def _feature_columns(df: pd.DataFrame, spec: DatasetSpec) -> tuple[str, ...]:
    if spec.feature_columns is not None:
        return spec.feature_columns
    return tuple(c for c in df.columns if c not in (spec.id_column, spec.label_column))


def _features_of(df: pd.DataFrame, spec: DatasetSpec, path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    cols = _feature_columns(df, spec)
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{path}: feature column(s) {missing[:10]} not found.",
            details=[f"columns found: {list(df.columns)[:40]}", "fix dataset.feature_columns in the spec"],
        )
    want = int(np.prod(spec.input_shape))
    if len(cols) != want:
        raise DatasetError(
            f"{path}: {len(cols)} feature columns but dataset.input_shape {list(spec.input_shape)} needs {want}. "
            "Fix dataset.input_shape or dataset.feature_columns."
        )
    block = df[list(cols)]
    non_numeric = [c for c in cols if not pd.api.types.is_numeric_dtype(block[c])]
    if non_numeric:
        raise DatasetError(f"{path}: non-numeric feature column(s) {non_numeric[:10]}. Features must be numbers.")
    values = block.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        rows, colidx = np.nonzero(bad)
        ids = df[spec.id_column].astype(str).to_numpy()
        examples = [f"id {ids[r]}: {cols[c]}={values[r, c]}" for r, c in list(zip(rows, colidx))[:10]]
        raise DatasetError(
            f"{path}: {int(bad.any(axis=1).sum())} row(s) have NaN or infinite features. "
            "Clean or drop them before validating.",
            details=examples,
        )
    return values.astype(np.float32).reshape((len(df), *spec.input_shape)), cols


def load_dataset(spec: Spec) -> Dataset:
    """Load and check the labeled rows named by the spec.

    Args:
        spec: the validated spec.

    Returns:
        The rows as arrays, in file order.

    Raises:
        DatasetError: missing file or columns, no rows, duplicate ids, NaN/inf features,
            labels outside the model's classes, or a feature count that does not match.
    """
    ds = spec.dataset
    path = ds.path
    df = _read_table(path, "dataset")
    for col, field in ((ds.id_column, "id_column"), (ds.label_column, "label_column")):
        if col not in df.columns:
            raise DatasetError(
                f"{path}: {field} {col!r} not found. Columns found: {list(df.columns)[:40]}. "
                f"Fix dataset.{field} in the spec."
            )
    if len(df) == 0:
        raise DatasetError(f"{path} has no rows. A validation on zero rows proves nothing: point at labeled data.")
    ids = df[ds.id_column].astype(str)
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        raise DatasetError(
            f"{path}: {dup.nunique()} id(s) appear more than once in column {ds.id_column!r}, "
            f"e.g. {sorted(dup.unique())[:5]}. Ids must be unique so every row can be accounted for."
        )
    raw_labels = df[ds.label_column]
    if not pd.api.types.is_integer_dtype(raw_labels):
        as_num = pd.to_numeric(raw_labels, errors="coerce")
        if as_num.isna().any() or (as_num % 1 != 0).any():
            bad = raw_labels[as_num.isna() | (as_num % 1 != 0)].head(5).tolist()
            raise DatasetError(
                f"{path}: label column {ds.label_column!r} must hold class indices 0..{spec.model.num_classes - 1}, "
                f"found {bad}."
            )
        raw_labels = as_num
    labels = raw_labels.to_numpy().astype(np.int64)
    out_of_range = (labels < 0) | (labels >= spec.model.num_classes)
    if out_of_range.any():
        bad_ids = ids[out_of_range].head(5).tolist()
        raise DatasetError(
            f"{path}: {int(out_of_range.sum())} label(s) outside the model's classes 0..{spec.model.num_classes - 1}: "
            f"values {sorted(set(labels[out_of_range].tolist()))[:10]} (ids {bad_ids}). "
            "Fix the labels or model.num_classes."
        )
    features, cols = _features_of(df, ds, path)
    log.info("dataset %s: %d rows, %d features", path, len(df), len(cols))
    return Dataset(path=path, ids=tuple(ids.tolist()), labels=labels, features=features, feature_columns=cols)


def load_training_hashes(spec: Spec) -> tuple[str, ...] | None:
    """Content hashes of the training rows, for the leakage check; None without train_path."""
    ds = spec.dataset
    if ds.train_path is None:
        return None
    df = _read_table(ds.train_path, "training data")
    if ds.id_column not in df.columns:
        df = df.assign(**{ds.id_column: [str(i) for i in range(len(df))]})
    features, _ = _features_of(df, ds, ds.train_path)
    return hash_rows(features.reshape(len(df), -1))
