"""Input kind ``text``: one text column, each row sent as UTF-8 ``text/plain``.

TorchServe's worker hands a ``text/*`` body to the handler as ``str``. Tokenisation is the
model's own business, so there is no default reference: ``model.preprocess`` names the
function that turns the text into the model's input tensor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import DatasetError
from pipeline.inputs.base import MemoryBodies, Reference, Rows, check_ids, task_labels, no_rows, read_table
from pipeline.spec import Spec

NAME = "text"
CONTENT_TYPE = "text/plain; charset=utf-8"


def load(spec: Spec, path: Path, *, training: bool = False) -> Rows:
    """Rows of a CSV/Parquet with an id, a label and a text column.

    Raises:
        DatasetError: missing file or columns, no rows, duplicate ids, empty cells, a file that is
            not valid UTF-8 (lines named), labels outside the model's classes.
    """
    ds = spec.dataset
    df = read_table(path, "training data" if training else "dataset")
    if training and ds.id_column not in df.columns:
        df = df.assign(**{ds.id_column: [str(i) for i in range(len(df))]})
    for col, field in ((ds.text_column, "text_column"), (ds.label_column, "label_column")):
        if col not in df.columns and not (training and field == "label_column"):
            raise DatasetError(
                f"{path}: {field} {col!r} not found. Columns found: {list(df.columns)[:40]}. "
                f"Fix dataset.{field} in the spec."
            )
    ids = check_ids(df, spec, path)
    if len(df) == 0:
        raise no_rows(path)
    texts = df[ds.text_column]
    missing = [ids[i] for i in np.nonzero(texts.isna().to_numpy())[0]]
    if missing:
        raise DatasetError(f"{path}: {len(missing)} row(s) have no text in column {ds.text_column!r}: "
                           f"ids {missing[:10]}. Fill or drop them (an empty string is allowed).")
    texts = texts.astype(str).tolist()
    labels, notes = (task_labels(df, spec, path, ids) if ds.label_column in df.columns
                     else (np.zeros(len(df), np.int64), []))
    bodies = MemoryBodies(tuple(t.encode("utf-8") for t in texts))
    return Rows(kind=NAME, source=path, ids=ids, labels=labels, content_type=CONTENT_TYPE, bodies=bodies,
                notes=tuple(notes))


def default_reference(spec: Spec) -> Reference | None:
    return None


def handler_probes(rows: Rows, spec: Spec, index: int = 0) -> list:
    """Empty, very long and non-ASCII text: any answer or a clean refusal, never a crash."""
    from pipeline.inputs.probes import ANSWER, HandlerProbe

    original = rows.body(index).decode("utf-8")
    return [
        HandlerProbe("empty text", b"", CONTENT_TYPE, ANSWER, index),
        HandlerProbe("very long text (100,000 characters)", ((original + " ") * (100_000 // (len(original) + 1)
                     + 1))[:100_000].encode("utf-8"), CONTENT_TYPE, ANSWER, index),
        HandlerProbe("non-ASCII text", ("Grüße aus Köln, 東京, naïve café 🙂 " + original).encode("utf-8"),
                     CONTENT_TYPE, ANSWER, index),
    ]
