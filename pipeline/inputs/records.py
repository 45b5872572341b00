"""Input kind ``json``: one JSON object per row, sent as ``application/json``.

A row's record is either its named feature columns (``dataset.feature_columns``: the object
``{"mean_radius": 17.99, ...}``) or a column holding a JSON document per row
(``dataset.json_column``); a ``.jsonl`` file holds one object per line with the id and
label inside. The default reference preprocessing reads the named fields, in
``feature_columns`` order, into a float32 tensor.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import DatasetError
from pipeline.inputs.base import (MemoryBodies, Reference, Rows, check_ids, encode_json, task_labels, no_rows,
                                  read_table, require_columns, row_place)
from pipeline.spec import Spec

NAME = "json"
CONTENT_TYPE = "application/json"
_TOO_DEEP = ("nested too deeply for Python's JSON parser (RecursionError); TorchServe's worker parses the "
             "body with the same parser and would fail too. Flatten the record")


def _read(path: Path, spec: Spec, training: bool) -> pd.DataFrame:
    if path.suffix.lower() != ".jsonl":
        return read_table(path, "training data" if training else "dataset")
    if not path.is_file():
        raise DatasetError(f"dataset {path} does not exist. Fix dataset.path in the spec or create the file.")
    ds = spec.dataset
    rows, bad = [], []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
                if not isinstance(obj, dict):
                    raise ValueError(f"a {type(obj).__name__}, not an object")
            except ValueError as e:  # UnicodeDecodeError is a ValueError too
                bad.append(f"line {n}: {e}")
                continue
            except RecursionError:  # the user's bytes, not the tool: an input error naming the line
                bad.append(f"line {n}: {_TOO_DEEP}")
                continue
            record = obj.pop(ds.json_column) if ds.json_column and ds.json_column in obj else None
            rows.append({ds.id_column: obj.pop(ds.id_column, str(n)), ds.label_column: obj.pop(ds.label_column, None),
                         "__record__": record if record is not None else obj, "__line__": n})
    if bad:
        raise DatasetError(f"{path}: {len(bad)} line(s) are not JSON objects this tool can read. Fix them; "
                           "no row is skipped.",
                           details=bad[:20])
    return pd.DataFrame(rows, columns=[ds.id_column, ds.label_column, "__record__", "__line__"])


def _native(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{v} is not a JSON number")
    return v


def _records(df: pd.DataFrame, spec: Spec, path: Path, ids) -> list[Any]:
    ds = spec.dataset
    if "__record__" in df.columns:
        return list(df["__record__"])
    if ds.json_column is not None:
        require_columns(df, [ds.json_column], path, "json_column")
        out, bad = [], []
        for i, (rid, cell) in enumerate(zip(ids, df[ds.json_column])):
            try:
                out.append(json.loads(cell) if isinstance(cell, str) else cell)
            except ValueError as e:
                bad.append(f"id {rid} ({row_place(path, i)}): {e}: {str(cell)[:80]!r}")
            except RecursionError:
                bad.append(f"id {rid} ({row_place(path, i)}): {_TOO_DEEP}: {str(cell)[:40]!r}...")
        if bad:
            raise DatasetError(f"{path}: {len(bad)} row(s) of column {ds.json_column!r} are not valid JSON. "
                               "Fix them; no row is skipped.", details=bad[:20])
        return out
    cols = list(ds.feature_columns)
    require_columns(df, cols, path, "feature_columns")
    out, bad = [], []
    for rid, values in zip(ids, df[cols].itertuples(index=False, name=None)):
        try:
            out.append({c: _native(v) for c, v in zip(cols, values)})
        except ValueError as e:
            bad.append(f"id {rid}: {e}")
    if bad:
        raise DatasetError(f"{path}: {len(bad)} row(s) have NaN or infinite fields, which JSON cannot carry. "
                           "Clean or drop them.", details=bad[:20])
    return out


def load(spec: Spec, path: Path, *, training: bool = False) -> Rows:
    """Rows whose bodies are JSON records.

    Raises:
        DatasetError: missing file or columns, no rows, duplicate ids, cells or lines that are
            not JSON, NaN fields, labels outside the model's classes.
    """
    ds = spec.dataset
    df = _read(path, spec, training)
    if training and ds.id_column not in df.columns:
        df = df.assign(**{ds.id_column: [str(i) for i in range(len(df))]})
    if not training and (ds.label_column not in df.columns or df[ds.label_column].isna().all()):
        raise DatasetError(f"{path}: label_column {ds.label_column!r} not found. Columns found: "
                           f"{[c for c in df.columns if c not in ('__record__', '__line__')][:40]}. "
                           "Fix dataset.label_column.")
    ids = check_ids(df, spec, path)
    if len(df) == 0:
        raise no_rows(path)
    labels, notes = (task_labels(df, spec, path, ids) if ds.label_column in df.columns
                     and not df[ds.label_column].isna().all() else (np.zeros(len(df), np.int64), []))
    records = _records(df, spec, path, ids)
    places = [f"line {n}" for n in df["__line__"]] if "__line__" in df.columns else [
        row_place(path, i) for i in range(len(df))]
    encoded, bad = [], []
    for rid, place, r in zip(ids, places, records):
        try:
            encoded.append(encode_json(r))
        except (ValueError, TypeError, RecursionError) as e:  # NaN (json.loads reads it), bytes, depth
            bad.append(f"id {rid} ({place}): {type(e).__name__}: {e}")
    if bad:
        raise DatasetError(f"{path}: {len(bad)} record(s) cannot be sent as JSON (a NaN or infinite number, a "
                           "value JSON has no form for). Fix them; no row is skipped.", details=bad[:20])
    bodies = MemoryBodies(tuple(encoded))
    return Rows(kind=NAME, source=path, ids=ids, labels=labels, content_type=CONTENT_TYPE, bodies=bodies,
                notes=tuple(notes))


def default_reference(spec: Spec) -> Reference | None:
    """The record's ``feature_columns`` fields, in that order, as a float32 tensor."""
    cols = spec.dataset.feature_columns
    if not cols:
        return None
    import torch

    shape = tuple(spec.dataset.input_shape or (len(cols),))

    def fields_tensor(view: Any):
        if not isinstance(view, dict):
            raise ValueError(f"expected a JSON object, got {type(view).__name__}")
        missing = [c for c in cols if c not in view]
        if missing:
            raise ValueError(f"record lacks field(s) {missing[:5]}")
        return torch.tensor([float(view[c]) for c in cols], dtype=torch.float32).reshape(shape)

    return Reference("builtin:records", f"fields {list(cols)[:3]}... in feature_columns order as float32 "
                     f"{list(shape)}", fields_tensor)


def handler_probes(rows: Rows, spec: Spec, index: int = 0) -> list:
    """A record missing a field (refuse) and one with an extra field (same)."""
    import json as _json

    from pipeline.inputs.probes import REFUSE, SAME, HandlerProbe

    record = _json.loads(rows.body(index))
    probes = []
    if isinstance(record, dict) and record:
        first = next(iter(record))
        probes.append(HandlerProbe(f"field {first!r} missing", encode_json({k: v for k, v in record.items()
                                                                            if k != first}), CONTENT_TYPE, REFUSE, index))
        probes.append(HandlerProbe("an extra field", encode_json({**record, "client_extra_field": 1}), CONTENT_TYPE,
                                   SAME, index))
    return probes
