"""What every input kind provides: labeled rows, each row's request body, and its reference input.

A row's *body* is what a TorchServe client sends for it (an image file's bytes, UTF-8 text,
a JSON document); its *worker view* is what TorchServe's Python worker hands the handler for
that body (parsed JSON for ``application/json``, ``str`` for ``text/*``, else ``bytes``);
the *reference preprocessing* turns the worker view into the model's input tensor the way the
model was trained and evaluated. Bodies are read chunk by chunk, so memory stays flat
however many image files a dataset names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import DatasetError
from pipeline.names import name_classes
from pipeline.spec import Spec
from pipeline.wire import worker_view  # noqa: F401  (re-exported: the rows' worker view)

Preprocess = Callable[[Any], Any]  # worker view -> torch.Tensor of one row


class Bodies(Protocol):
    """Request bodies by row index, read on demand."""

    def __len__(self) -> int: ...

    def get(self, index: int) -> bytes: ...


@dataclass(frozen=True)
class MemoryBodies:
    """Bodies already encoded in memory (numbers, text, records)."""

    items: tuple[bytes, ...]

    def __len__(self) -> int:
        return len(self.items)

    def get(self, index: int) -> bytes:
        return self.items[index]


@dataclass(frozen=True)
class FileBodies:
    """Bodies read from files when asked (images)."""

    paths: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int) -> bytes:
        return self.paths[index].read_bytes()


@dataclass(frozen=True)
class Rows:
    """The labeled rows every stage scores, with the request body a client sends for each.

    Attributes:
        kind: the input kind (tensor, image, text, json).
        source: the manifest file or image folder.
        ids: row ids, unique, in dataset order.
        labels: int64 class indices.
        content_type: the Content-Type of every body.
        bodies: each row's request body, read on demand.
        features: kind tensor only: the numeric rows, float32 [N, *input_shape].
        paths: kind image only: each row's file.
        notes: facts a reader should know (how classes were ordered, labels mapped, ...).
        image_files: kind image only: the image files found (a folder's walk, or the manifest's paths).
        other_files: kind image only: (suffix, count) of the folder's files not read as images.
    """

    kind: str
    source: Path
    ids: tuple[str, ...]
    labels: np.ndarray
    content_type: str
    bodies: Bodies
    features: np.ndarray | None = None
    paths: tuple[Path, ...] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    image_files: int | None = None
    other_files: tuple[tuple[str, int], ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def body(self, index: int) -> bytes:
        return self.bodies.get(index)

    def chunks(self, size: int) -> Iterator[range]:
        """Consecutive index ranges of at most ``size`` rows."""
        for start in range(0, len(self), size):
            yield range(start, min(start + size, len(self)))

    def content_hashes(self) -> Iterator[str]:
        """sha256 (16 hex digits) of each row's body, in order: equal inputs, equal hash."""
        for i in range(len(self)):
            yield hashlib.sha256(self.body(i)).hexdigest()[:16]

    def take(self, index: Sequence[int], ids: Sequence[str] | None = None) -> "Rows":
        """The rows at ``index`` (repeats allowed, e.g. for benchmarks), optionally renamed."""
        idx = list(index)
        return Rows(
            kind=self.kind, source=self.source,
            ids=tuple(ids) if ids is not None else tuple(self.ids[i] for i in idx),
            labels=self.labels[idx], content_type=self.content_type,
            bodies=MemoryBodies(tuple(self.body(i) for i in idx)),
            features=self.features[idx] if self.features is not None else None,
            paths=tuple(self.paths[i] for i in idx) if self.paths is not None else None,
            notes=self.notes, image_files=self.image_files, other_files=self.other_files,
        )


@dataclass(frozen=True)
class Reference:
    """The reference preprocessing: where it comes from and the function itself."""

    name: str  # e.g. 'builtin:image_classifier' or '/path/transforms.py:preprocess'
    description: str
    fn: Preprocess


def encode_json(doc: Any) -> bytes:
    """Canonical JSON bytes: the same document always gives the same body (and content hash)."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def read_table(path: Path, what: str) -> pd.DataFrame:
    """A CSV or Parquet manifest; DatasetError names the file and what to do."""
    if not path.is_file():
        raise DatasetError(f"{what} {path} does not exist. Fix dataset.path in the spec or create the file.")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix == ".csv":
            df = pd.read_csv(path, encoding="utf-8")
            _check_delimiter(path, what, df)
            return df
    except DatasetError:
        raise
    except UnicodeDecodeError as e:
        raise _not_utf8(path, what) from e
    except Exception as e:  # pandas raises many types for a bad file
        raise DatasetError(f"{what} {path} could not be read: {type(e).__name__}: {e}") from e
    raise DatasetError(f"{what} {path}: unsupported file type {suffix!r}. Use .csv or .parquet.")


def _check_delimiter(path: Path, what: str, df: pd.DataFrame) -> None:
    """DatasetError when the header is split by ';', tab or '|' rather than commas (a spreadsheet's
    export in many locales): read with commas, it is one column, and every column 'is not found'."""
    with open(path, "rb") as f:
        header = f.readline().decode("utf-8", "replace").rstrip("\r\n")
    for sep, name in ((";", "';'"), ("\t", "tab"), ("|", "'|'")):
        fields = header.split(sep)
        if header.count(sep) > header.count(",") and len(fields) > len(df.columns):
            raise DatasetError(
                f"{what} {path}: the file looks {name}-separated: its header {header[:120]!r} has {len(fields)} "
                f"{name}-separated fields, but read as a comma-separated CSV it has {len(df.columns)} column(s). "
                f"Re-save it comma-separated, e.g. pandas.read_csv(path, sep={sep!r}).to_csv(path, index=False).")


def row_place(path: Path, i: int) -> str:
    """Where row ``i`` (0-based) is in its file, for messages: a CSV's line (the header is line 1; a
    cell spanning lines shifts it), the row number otherwise (a .jsonl's loader keeps its own lines)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return f"line {i + 2}"
    return f"row {i + 1}"


def _not_utf8(path: Path, what: str) -> DatasetError:
    """Which lines of a CSV are not UTF-8, with the first field of each (usually the id)."""
    bad = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(f"line {n} (first field {line.decode('latin-1').split(',', 1)[0]!r})")
    return DatasetError(f"{what} {path}: {len(bad)} line(s) hold text that is not valid UTF-8. Re-encode the file "
                        "as UTF-8; no row is skipped.", details=bad[:20])


def check_ids(df: pd.DataFrame, spec: Spec, path: Path) -> tuple[str, ...]:
    """The id column as unique strings; DatasetError on a missing column or duplicates."""
    ds = spec.dataset
    if ds.id_column not in df.columns:
        raise DatasetError(
            f"{path}: id_column {ds.id_column!r} not found. Columns found: {list(df.columns)[:40]}. "
            "Fix dataset.id_column in the spec."
        )
    ids = df[ds.id_column].astype(str)
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        raise DatasetError(
            f"{path}: {dup.nunique()} id(s) appear more than once in column {ds.id_column!r}, "
            f"e.g. {sorted(dup.unique())[:5]}. Ids must be unique so every row can be accounted for."
        )
    return tuple(ids.tolist())


def labels_of(values: pd.Series, spec: Spec, path: Path, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Class indices from a label column holding indices or class names (``model.class_names``).

    Returns:
        int64 labels, and notes on how they were read.

    Raises:
        DatasetError: a label that is neither a class index in range nor a class name, with ids.
    """
    n = spec.model.num_classes
    names = spec.model.class_names
    notes: list[str] = []
    empty = (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()
    if empty.any():
        where = [f"id {ids[i]} ({row_place(path, i)})" for i in np.nonzero(empty)[0][:10]]
        raise DatasetError(
            f"{path}: {int(empty.sum())} row(s) have an empty label in column {spec.dataset.label_column!r}: "
            f"{', '.join(where)}. Fill each with a class index or a name of model.class_names, or drop the "
            "row; no row is skipped.")
    as_num = pd.to_numeric(values, errors="coerce")
    numeric = as_num.notna() & (as_num % 1 == 0)
    if numeric.all():
        labels = as_num.to_numpy().astype(np.int64)
    else:
        fractional = as_num.notna() & (as_num % 1 != 0)
        if fractional.any() or values.astype(str).str.contains(r"[,;|\[]").any():
            bad = values[fractional | values.astype(str).str.contains(r"[,;|\[]")].head(5).tolist()
            raise DatasetError(
                f"{path}: label column {spec.dataset.label_column!r} holds {bad}: regression targets or "
                "multi-label sets, not one class per row (model.task: classification). Set model.task: regression "
                "(one number per target) or model.task: multilabel (a list of labels per row)."
            )
        if names is None:
            bad = values[~numeric].head(5).tolist()
            raise DatasetError(
                f"{path}: label column {spec.dataset.label_column!r} must hold class indices 0..{n - 1} "
                f"or class names listed in model.class_names; found {bad}. Add model.class_names to map names."
            )
        index = {name: i for i, name in enumerate(names)}
        strs = values.astype(str)
        unknown = strs[~strs.isin(list(index)) & ~numeric]
        if len(unknown):
            bad_ids = [ids[i] for i in np.nonzero(~strs.isin(list(index)) & ~numeric.to_numpy())[0][:5]]
            raise DatasetError(
                f"{path}: {len(unknown)} label(s) are not class names of model.class_names: "
                f"{sorted(set(unknown.tolist()))[:10]} (ids {bad_ids}). Allowed: {name_classes(names)}."
            )
        labels = np.array([index[s] if s in index else int(float(s)) for s in strs], dtype=np.int64)
        notes.append(f"labels given as class names, mapped through model.class_names {name_classes(names)}")
    out_of_range = (labels < 0) | (labels >= n)
    if out_of_range.any():
        bad_ids = [ids[i] for i in np.nonzero(out_of_range)[0][:5]]
        raise DatasetError(
            f"{path}: {int(out_of_range.sum())} label(s) outside the model's classes 0..{n - 1}: "
            f"values {sorted(set(labels[out_of_range].tolist()))[:10]} (ids {bad_ids}). "
            "Fix the labels or model.num_classes."
        )
    return labels, notes


def task_labels(df: pd.DataFrame, spec: Spec, path: Path, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """The labels of every row as ``model.task`` reads them (``tasks.base``: classification reads
    ``labels_of`` on the label column)."""
    from pipeline.tasks.registry import task_of

    return task_of(spec).read_labels(df, spec, path, ids)


def require_columns(df: pd.DataFrame, columns: Sequence[str], path: Path, field_name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{path}: {field_name} column(s) {missing[:10]} not found.",
            details=[f"columns found: {list(df.columns)[:40]}", f"fix dataset.{field_name} in the spec"],
        )


def no_rows(path: Path) -> DatasetError:
    return DatasetError(f"{path} has no rows. A validation on zero rows proves nothing: point at labeled data.")
