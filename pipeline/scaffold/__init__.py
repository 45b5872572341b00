"""``package-validate init``: a commented spec for the user's model, from what can be seen.

Given the model's factory, its weights and its labeled data, it decides what the spec says
and writes why beside each choice:

- the input kind: a folder of class sub-folders of images is ``image``; a CSV or Parquet
  table with a column of image paths is an image manifest, numeric feature columns are
  ``tensor``, and a text column (with no numeric features) is ``text``; ``--kind`` overrides
  the guess (``json``: each row's numeric columns, or a column of JSON objects, as a record);
- the id, label and feature columns, by name and by content;
- the classes: the model's output width on one row, the labels seen, class names from text
  labels or image sub-folders (sorted, as the loaders order them);
- the input shape, confirmed by building the model, loading its weights and running it on
  the data: for ``tensor`` each plausible reshape of the flat features is tried ([N], [1, N],
  [c, h, w] with c*h*w = N, ...), for images the reference preprocessing (TorchServe's
  ``image_classifier`` transforms unless ``--preprocess`` names another);
- the export mode: ``eager`` when the factory's file defines exactly one nn.Module class
  (TorchServe's ``--model-file`` rule), else ``script`` when ``torch.jit.script`` compiles it;
- with a handler file (``handler_file``, ``answer_check``): its own transforms as the reference
  preprocessing (a ``reference.py`` beside the spec), the label maps, vocabularies and configs
  beside it as ``handler.extra_files``, and ``answers.format`` as seen when the handler ran
  in-process on the first row (a failure is quoted in the spec, never worked around).

Classes and rows are counted over the whole dataset (a folder listing, the label column); only
a spread sample of images is decoded to run the model on.

Before anything is written, the spec is read back through the pipeline's own spec parser,
planner and loaders, and the model runs on the first row through the reference
preprocessing the run will use. TODOs are left only where nothing on disk can tell (the
positive class of a binary model, metric floors). Existing files are never replaced
without ``force``.
"""

from __future__ import annotations

import logging
import math
import re
import textwrap
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml

from pipeline.compat import prepare_torchvision
from pipeline.errors import ConfigError, DatasetError, ModelError
from pipeline.files import write_atomic
from pipeline.inputs.base import read_table
from pipeline.inputs.image import IMAGE_SUFFIXES, FolderImages, builtin_reference, folder_images, other_files_note
from pipeline.inputs.tensor import features_of
from pipeline.scaffold.answer_check import AnswerCheck, check_answer
from pipeline.scaffold.handler_file import (HandlerFile, files_beside, read_handler_file,
                                            reference_source)
from pipeline.spec import Spec, parse_spec
from pipeline.spec.schema import HandlerSpec

log = logging.getLogger(__name__)

__all__ = ["InitConfig", "InitResult", "ShapeTrial", "TableGuess", "guess_table", "shape_candidates",
           "fit_input_shape", "parse_shape", "write_spec"]

LABEL_NAMES = ("label", "labels", "target", "class", "y", "category", "ground_truth")
ID_NAMES = ("id", "row_id", "sample_id", "example_id", "uid", "uuid", "key", "index")
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
KINDS = ("tensor", "image", "text", "json")  # what --kind may name: dataset.kind's values
LABEL_MAP_FILE = "index_to_name.json"  # what TorchServe's built-in classifiers name their answers with
SHAPE_ROWS = 512  # rows scored to choose between input shapes that all run
REFERENCE_FILE = "reference.py"  # written beside the spec from the handler's own preprocessing
IMAGE_ROWS = 64  # images scored: each is a [3, 224, 224] tensor through the built-in transforms
MAX_CANDIDATES = 40
_COMMENT_COL = 37
_WIDTH = 110


@dataclass(frozen=True)
class InitConfig:
    """What ``package-validate init`` was given.

    Attributes:
        factory: ``file.py:function`` or ``package.module:function``.
        weights: the state_dict file.
        data: a CSV/Parquet table or an image folder.
        out: the spec file to write.
        base_dir: the folder relative paths above are read against (the working directory).
        handler: a handler name or a handler file; default from the input kind.
        name: the model name; default from the factory's file or folder.
        preprocess: ``file.py:function``, the model's own preprocessing (text; custom images).
        label_column, id_column: override the columns init would choose.
        input_shape: try only this shape (kind tensor).
        kind: the input kind (tensor, image, text, json), overriding what the data looks like.
        force: replace files that exist.
        collate: ``file.py:function`` batching rows of ``preprocess``'s structure (``model.collate``).
    """

    factory: str
    weights: Path
    data: Path
    out: Path = Path("spec.yaml")
    base_dir: Path = Path(".")
    handler: str | None = None
    name: str | None = None
    preprocess: str | None = None
    label_column: str | None = None
    id_column: str | None = None
    input_shape: tuple[int, ...] | None = None
    kind: str | None = None
    force: bool = False
    collate: str | None = None


@dataclass(frozen=True)
class InitResult:
    """What was written and decided.

    Attributes:
        spec_path: the spec written.
        written: every file written (the spec, and a label map when one was needed).
        spec: the spec as the run will read it.
        decisions: one line per choice and why.
        todos: what only the user can decide.
    """

    spec_path: Path
    written: tuple[Path, ...]
    spec: Spec
    decisions: tuple[str, ...]
    todos: tuple[str, ...]


@dataclass(frozen=True)
class TableGuess:
    """What a table's columns look like to init.

    Attributes:
        kind: ``tensor``, ``text`` or ``image`` (a manifest).
        label_column, id_column: the chosen columns (id None: an image manifest's ids are its paths).
        feature_columns: kind tensor: the numeric columns, in table order.
        features_are_default: the feature columns are every column but the id and the label,
            so the spec need not list them.
        text_column, path_column: kind text / image.
        ignored: columns no field uses, with why.
        reasons: one line per choice.
    """

    kind: str
    label_column: str
    id_column: str | None
    feature_columns: tuple[str, ...] = ()
    features_are_default: bool = True
    text_column: str | None = None
    path_column: str | None = None
    json_column: str | None = None
    ignored: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShapeTrial:
    """One input shape tried on the model: the output width, the accuracy on the rows, or the error."""

    shape: tuple[int, ...]
    width: int | None = None
    accuracy: float | None = None
    error: str | None = None

    @property
    def fits(self) -> bool:
        return self.error is None

    def describe(self) -> str:
        if self.error is not None:
            return f"{list(self.shape)}: {self.error}"
        acc = "" if self.accuracy is None else f", accuracy {self.accuracy:.4f}"
        return f"{list(self.shape)}: logits [batch, {self.width}]{acc}"


# ---------------------------------------------------------------- what a table holds


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _looks_like_image_paths(s: pd.Series, base_dir: Path) -> bool:
    if _is_numeric(s):
        return False
    sample = [str(v) for v in s.dropna().head(20)]
    if not sample or not all(v.lower().endswith(IMAGE_SUFFIXES) for v in sample):
        return False
    return any((Path(v) if Path(v).is_absolute() else base_dir / v).is_file() for v in sample[:5])


def _by_name(columns: Sequence[str], names: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in reversed(list(columns))}
    return next((lower[n] for n in names if n in lower), None)


def guess_table(df: pd.DataFrame, base_dir: Path, *, label_column: str | None = None,
                id_column: str | None = None, kind: str | None = None) -> TableGuess:
    """Which columns are the label, the id and the inputs, and so the input kind.

    Args:
        df: the table.
        base_dir: the table's folder (image paths are relative to it).
        label_column, id_column: given by the user: used as they are.
        kind: given with ``--kind``: the columns are read for that kind, whatever they look like
            (``json``: the numeric columns are each record's fields, or a column of JSON documents).

    Returns:
        The guess, with one reason per choice.

    Raises:
        DatasetError: no label column, no id column where the kind needs one, a given column
            that does not exist, no column the model could read, or none the given kind can use.
        ConfigError: an unknown kind.
    """
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"--kind {kind!r}: expected one of {list(KINDS)}.")
    cols = [str(c) for c in df.columns]
    df = df.set_axis(cols, axis=1)
    reasons = []
    for given, flag in ((label_column, "--label-column"), (id_column, "--id-column")):
        if given is not None and given not in cols:
            raise DatasetError(f"{flag} {given!r} is not a column. Columns found: {cols[:40]}.")
    label = label_column or _by_name(cols, LABEL_NAMES)
    if label is None:
        raise DatasetError(
            f"no label column: none is named {list(LABEL_NAMES)}. Columns found: {cols[:40]}. "
            "Name it with --label-column."
        )
    reasons.append(f"label column {label!r}: " + ("given with --label-column" if label_column else
                                                  f"its name is one of {list(LABEL_NAMES[:4])}..."))
    ident = id_column
    if ident is not None:
        if df[ident].astype(str).duplicated().any():
            raise DatasetError(f"--id-column {ident!r} is not unique: ids must name one row each.")
        reasons.append(f"id column {ident!r}: given with --id-column")
    else:
        named = _by_name([c for c in cols if c != label], ID_NAMES)
        if named is not None and not df[named].astype(str).duplicated().any():
            ident = named
            reasons.append(f"id column {ident!r}: its name, and its {len(df)} values are unique")
        elif named is not None:
            reasons.append(f"column {named!r} is not used as the id: its values repeat")
    rest = [c for c in cols if c not in (label, ident)]
    paths = [c for c in rest if _looks_like_image_paths(df[c], base_dir)]
    if kind == "image" and not paths:
        raise DatasetError(f"--kind image: no column of {cols[:40]} holds paths of image files that exist "
                           "relative to the table's folder.")
    if paths and kind in (None, "image"):
        path_col = paths[0]
        others = [c for c in rest if c != path_col]
        reasons.append(f"kind image (a manifest): column {path_col!r} holds image file paths that exist "
                       "relative to the table's folder")
        if ident is None:
            reasons.append(f"no id column: each row's id is its path ({path_col!r})")
        return TableGuess(kind="image", label_column=label, id_column=ident, path_column=path_col,
                          ignored=tuple(f"{c}: not needed for an image manifest" for c in others),
                          reasons=tuple(reasons))
    # DataFrame.to_csv writes its index as a column named "Unnamed: 0": a row number, never a feature.
    unnamed = [c for c in rest if re.fullmatch(r"Unnamed: \d+", c)]
    rest = [c for c in rest if c not in unnamed]
    if ident is None and unnamed and not df[unnamed[0]].astype(str).duplicated().any():
        ident = unnamed.pop(0)
        reasons.append(f"id column {ident!r}: the index pandas wrote into the file, unique per row")
    numeric = [c for c in rest if _is_numeric(df[c])]
    strings = [c for c in rest if c not in numeric]
    if kind == "text" and not strings:
        raise DatasetError(f"--kind text: the table has no text column besides the label (columns {cols[:40]}).")
    if ident is None and len(strings) == 1 and numeric and kind != "text" and not df[strings[0]].astype(str).duplicated().any():
        ident = strings[0]
        strings = []
        reasons.append(f"id column {ident!r}: the only non-numeric column besides the label, unique per row")
    if ident is None:
        raise DatasetError(
            f"no id column: none is named {list(ID_NAMES[:5])}... with unique values, and every row needs an id "
            f"so it can be accounted for. Columns found: {cols[:40]}. Name it with --id-column, or add one "
            "(e.g. df.insert(0, 'id', range(len(df))))."
        )
    index_note = tuple(f"{c}: an index pandas wrote, not a feature" for c in unnamed)
    if kind == "json":
        return _json_guess(df, label, ident, numeric, strings, index_note, reasons)
    if numeric and kind != "text":
        ignored = index_note + tuple(f"{c}: not numeric, so not a feature" for c in strings)
        reasons.append(f"kind tensor: {len(numeric)} numeric feature column(s) {_span(numeric)}"
                       + (f"; left out {len(strings)} non-numeric column(s) {strings[:5]}" if strings else ""))
        return TableGuess(kind="tensor", label_column=label, id_column=ident, feature_columns=tuple(numeric),
                          features_are_default=not ignored, ignored=ignored, reasons=tuple(reasons))
    if kind == "tensor":
        raise DatasetError(f"--kind tensor: the table has no numeric feature columns (columns {cols[:40]}).")
    if strings:
        lengths = {c: float(df[c].dropna().astype(str).str.len().mean() or 0.0) for c in strings}
        text = max(strings, key=lambda c: lengths[c])
        why = "given with --kind" if kind == "text" else "no numeric features"
        reasons.append(f"kind text: {why}; {text!r} is the longest text column "
                       f"(mean {lengths[text]:.0f} characters)")
        return TableGuess(kind="text", label_column=label, id_column=ident, text_column=text,
                          ignored=tuple(f"{c}: a shorter text column" for c in strings if c != text),
                          reasons=tuple(reasons))
    raise DatasetError(f"no input columns: the table has only {cols}. Add the features, a text or a path column.")


def _json_column(s: pd.Series) -> bool:
    import json

    sample = [v for v in s.dropna().head(20)]
    try:
        return bool(sample) and all(isinstance(json.loads(str(v)), dict) for v in sample)
    except ValueError:
        return False


def _json_guess(df: pd.DataFrame, label: str, ident: str, numeric: list[str], strings: list[str],
                index_note: tuple[str, ...], reasons: list[str]) -> TableGuess:
    """--kind json: a column of JSON objects is each row's record; else the numeric columns are its fields."""
    docs = [c for c in strings if _json_column(df[c])]
    if docs:
        reasons.append(f"kind json (given with --kind): column {docs[0]!r} holds one JSON object per row, "
                       "sent as it is")
        return TableGuess(kind="json", label_column=label, id_column=ident, json_column=docs[0],
                          ignored=index_note + tuple(f"{c}: not the record column" for c in numeric + strings
                                                     if c != docs[0]), reasons=tuple(reasons))
    if not numeric:
        raise DatasetError(f"--kind json: no column holds JSON objects and none is numeric (columns "
                           f"{list(df.columns)[:40]}): nothing to send as a record.")
    reasons.append(f"kind json (given with --kind): each row is sent as the object of its {len(numeric)} numeric "
                   f"column(s) {_span(numeric)}, as application/json")
    return TableGuess(kind="json", label_column=label, id_column=ident, feature_columns=tuple(numeric),
                      features_are_default=False,
                      ignored=index_note + tuple(f"{c}: not numeric, so not a field" for c in strings),
                      reasons=tuple(reasons))


def _span(names: Sequence[str]) -> str:
    return f"{names[0]} .. {names[-1]}" if len(names) > 2 else str(list(names))


# ---------------------------------------------------------------- the input shape


def parse_shape(text: str) -> tuple[int, ...]:
    """'1,8,8' (or '[1, 8, 8]', '1x8x8') as (1, 8, 8); ConfigError for anything else."""
    try:
        shape = tuple(int(x) for x in re.split(r"[,x\s]+", text.strip().strip("[]")) if x)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"--input-shape {text!r}: expected positive whole numbers separated by commas, e.g. 1,8,8.")
    return shape


def shape_candidates(n: int) -> list[tuple[int, ...]]:
    """Plausible shapes of one row of ``n`` flat features, most likely first.

    [n], [1, n], square images [c, s, s] (c = 1, 3, 4, 2), [s, s], then every other [c, h, w]
    with c in (1, 3) and h * w = n / c.
    """
    out: list[tuple[int, ...]] = [(n,), (1, n)]
    for c in (1, 3, 4, 2):
        s = math.isqrt(n // c) if n % c == 0 else 0
        if s > 1 and s * s * c == n:
            out.append((c, s, s))
    s = math.isqrt(n)
    if s > 1 and s * s == n:
        out.append((s, s))
    for c in (1, 3):
        if n % c:
            continue
        m = n // c
        for h in range(2, math.isqrt(m) + 1):
            if m % h == 0:
                out.extend([(c, h, m // h), (c, m // h, h)])
    seen, unique = set(), []
    for shape in out:
        if shape not in seen:
            seen.add(shape)
            unique.append(shape)
    return unique[:MAX_CANDIDATES]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160] if text else ''}"


def _logits(model, x, call=None, rows: int | None = None, min_width: int = 2) -> np.ndarray:
    """The model's logits [rows, C] for the batch ``x`` (a tensor; with ``call``, any input structure)."""
    import torch

    n = x.shape[0] if rows is None else rows
    with torch.inference_mode():
        y = call(model, x) if call is not None else model(x)
    if isinstance(y, (tuple, list)) or not isinstance(y, torch.Tensor):
        raise TypeError(f"the model returns {type(y).__name__}, expected one logits tensor")
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"output shape {list(y.shape)} for a batch of {n}, expected [batch, classes]")
    if y.shape[1] < min_width:  # 1 for a regression model (model.task)
        raise ValueError(f"output shape {list(y.shape)}: a classifier has at least 2 classes")
    return y.detach().to(torch.float32).numpy()


def _try_shape(model, flat: np.ndarray, labels: np.ndarray | None, shape: tuple[int, ...],
               min_width: int = 2) -> ShapeTrial:
    import torch

    try:
        x = torch.from_numpy(np.ascontiguousarray(flat.reshape((len(flat), *shape))))
        width = _logits(model, x[:1], min_width=min_width).shape[1]
        out = _logits(model, x, min_width=min_width)
    except Exception as e:  # the user's model may raise anything on a wrong shape: that is the answer
        return ShapeTrial(shape, error=_first_line(e))
    acc = None if labels is None else float((out.argmax(axis=1) == labels).mean())
    return ShapeTrial(shape, width=width, accuracy=acc)


def fit_input_shape(model, flat: np.ndarray, labels: np.ndarray | None = None,
                    candidates: Sequence[tuple[int, ...]] | None = None, *, what: str = "the model", min_width: int = 2
                    ) -> tuple[ShapeTrial, tuple[ShapeTrial, ...]]:
    """The input shape the model runs on: each candidate tried on one row, then on a batch.

    Among shapes that run, the most accurate on ``labels`` wins (ties: the earlier candidate).

    Args:
        model: the eager model, in eval mode.
        flat: float32 [rows, N] features.
        labels: class indices of those rows, or None.
        candidates: shapes to try; default ``shape_candidates(N)``.
        what: the model, for messages.

    Returns:
        The chosen trial and every trial.

    Raises:
        ConfigError: no candidate runs; every candidate is listed with the model's error.
    """
    n = flat.shape[1]
    trials = tuple(_try_shape(model, flat, labels, s, min_width) for s in (candidates or shape_candidates(n)))
    fitting = [t for t in trials if t.fits]
    if not fitting:
        raise ConfigError(
            f"{what} ran on none of the {len(trials)} input shape(s) tried for {n} feature column(s). "
            "Give the shape with --input-shape (e.g. --input-shape 1,8,8), or check the factory and the columns.",
            details=[t.describe() for t in trials],
        )
    best = max(fitting, key=lambda t: (t.accuracy if t.accuracy is not None else 0.0, -trials.index(t)))
    return best, trials


# ---------------------------------------------------------------- labels and classes


def label_task(values: pd.Series) -> tuple[str, str]:
    """The task a label column suggests, and why: fractional numbers -> regression, lists of labels ("[0, 2]",
    "cat;dog") -> multilabel, else classification (an integer column stays classification: say
    ``model.task: regression`` for integer targets)."""
    text = values.dropna().astype(str).str.strip()
    if len(text) and (text.str.startswith("[") | text.str.contains(r"[;|]")).mean() >= 0.5:
        return "multilabel", "the label column holds lists of labels"
    as_num = pd.to_numeric(values, errors="coerce")
    if len(as_num) and as_num.notna().all() and (as_num % 1 != 0).any():
        return "regression", "the label column holds fractional numbers"
    return "classification", ""


def _task_labels(f: "_Facts", values: pd.Series) -> bool:
    """Set ``f.task`` from the label column; True when it is classification (class indices or names to read)."""
    f.task, f.task_why = label_task(values)
    if f.task == "classification":
        return True
    f.decisions.append(f"model.task {f.task}: {f.task_why} (set model.task yourself if that is wrong)")
    if f.task != "classification":
        f.todos.append(f"{f.task}: the built-in and package-validate's tensor handlers answer classes; serve the "
                       "model through your own handler (--handler file.py) answering "
                       + ("per-label scores or {label: score}" if f.task == "multilabel" else "its value(s)"))
    if f.task == "multilabel":
        f.todos.append("multilabel: model.class_names lists the labels in the model's output order; "
                       "model.threshold (0.5) is the score a label needs to be present")
    return False


def _label_values(values: pd.Series) -> tuple[np.ndarray | None, list[str] | None]:
    """(int labels, None) when the labels are class indices, else (None, sorted class names)."""
    as_num = pd.to_numeric(values, errors="coerce")
    if as_num.notna().all() and (as_num % 1 == 0).all():
        return as_num.to_numpy().astype(np.int64), None
    return None, sorted(values.dropna().astype(str).unique().tolist())


def _indices(values: pd.Series, names: list[str] | None) -> np.ndarray:
    if names is None:
        return pd.to_numeric(values).to_numpy().astype(np.int64)
    index = {n: i for i, n in enumerate(names)}
    return np.array([index.get(str(v), -1) for v in values], dtype=np.int64)


# ---------------------------------------------------------------- the spec file


def _y(v: Any) -> str:
    text = yaml.safe_dump(v, default_flow_style=True, width=10 ** 9, allow_unicode=True, sort_keys=False).strip()
    return text.removesuffix("...").strip()


class _Doc:
    """YAML lines with a comment beside or above each value."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def comment(self, text: str, indent: int = 0, hang: int = 0) -> None:
        for part in text.splitlines() or [""]:
            for n, piece in enumerate(textwrap.wrap(part, _WIDTH - indent - 2 - hang, break_on_hyphens=False,
                                                    break_long_words=False) or [""]):
                self.lines.append((" " * indent + "# " + " " * (hang if n else 0) + piece).rstrip())

    def key(self, key: str, value: Any = None, note: str | None = None, indent: int = 0, *,
            commented: bool = False) -> None:
        body = f"{key}:" if value is None else f"{key}: {_y(value)}"
        body = " " * indent + ("# " if commented else "") + body
        if note:
            body = body.ljust(_COMMENT_COL - 1) + f" # {note}"
        self.lines.append(body)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _rel(p: Path, spec_dir: Path) -> str:
    """A path as the spec writes it: relative when it lies under the spec's folder, else absolute."""
    try:
        return p.resolve().relative_to(spec_dir.resolve()).as_posix()
    except ValueError:
        return str(p.resolve())


def _factory_ref(ref: str, base_dir: Path) -> tuple[str, Path | None]:
    """(the reference with an absolute file, the file) for 'file.py:fn'; module references stay."""
    module, sep, fn = ref.rpartition(":")
    if not sep or not module or not fn.isidentifier():
        raise ConfigError(f"{ref!r}: expected 'path/to/file.py:function' or 'package.module:function'.")
    if not module.endswith(".py"):
        return ref, None
    path = Path(module).expanduser()
    path = path if path.is_absolute() else (base_dir / path)
    if not path.is_file():
        raise ConfigError(f"{ref!r}: file {path} does not exist.")
    return f"{path.resolve()}:{fn}", path.resolve()


def _short_ref(ref: str) -> str:
    """'/abs/path/file.py:fn' as 'file.py:fn', for comments."""
    module, _, fn = ref.rpartition(":")
    return f"{Path(module).name}:{fn}" if module.endswith(".py") else ref


def _ref_in_spec(ref: str, spec_dir: Path) -> str:
    module, _, fn = ref.rpartition(":")
    return f"{_rel(Path(module), spec_dir)}:{fn}" if module.endswith(".py") else ref


def _model_name(cfg: InitConfig, factory_file: Path | None) -> tuple[str, str]:
    if cfg.name is not None:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", cfg.name):
            raise ConfigError(f"--name {cfg.name!r}: a TorchServe model name is a letter, then up to 63 letters, "
                              "digits or underscores.")
        return cfg.name, "given with --name"
    if factory_file is not None:
        stem = factory_file.stem
        generic = stem.lower() in ("model", "models", "net", "network", "train", "factory", "__init__")
        raw, why = ((factory_file.parent.name, f"the factory's folder {factory_file.parent.name!r}") if generic
                    else (stem, f"the factory's file {factory_file.name!r}"))
    else:
        raw = cfg.factory.rpartition(":")[0].split(".")[-1]
        why = f"the factory's module {cfg.factory.rpartition(':')[0]!r}"
    name = re.sub(r"[^A-Za-z0-9_]", "_", raw).strip("_") or "model"
    if not name[0].isalpha():
        name = "m_" + name
    return name[:64], f"from {why}; --name to choose another"


def _train_sibling(data: Path) -> Path | None:
    """test.csv -> train.csv, images/test -> images/train, x_test.parquet -> x_train.parquet."""
    name = data.name
    if "test" not in name.lower():
        return None
    candidate = data.with_name(re.sub("test", lambda m: "TRAIN" if m.group(0).isupper() else "train", name,
                                      flags=re.IGNORECASE))
    if candidate == data or not candidate.exists() or candidate.is_dir() != data.is_dir():
        return None
    return candidate


@dataclass
class _Facts:
    """Everything the spec file states, gathered before it is rendered."""

    name: str
    name_why: str
    factory: str
    weights: Path
    data: Path
    kind: str
    num_classes: int
    classes_why: str
    class_names: list[str] | None = None
    class_names_why: str | None = None
    label_map: Path | None = None
    write_label_map: bool = False
    guess: TableGuess | None = None
    input_shape: tuple[int, ...] | None = None
    shape_why: str | None = None
    preprocess: str | None = None
    collate: str | None = None
    handler_function: str | None = None  # --handler file.py:function: the function TorchServe calls
    observed_input: str | None = None
    handler: str = "tensor_classifier"
    handler_why: str = ""
    handler_file: Path | None = None
    train_path: Path | None = None
    export_mode: str = "script"
    export_why: str = ""
    accuracy: float | None = None
    positive_todo: bool = False
    label_names: bool = False  # the label column holds class names, not indices
    builtin_image: bool = False  # TorchServe's image_classifier serves the model
    handler_info: HandlerFile | None = None  # a --handler file, as read without running it
    reference_file: Path | None = None  # reference.py init writes from the handler's own preprocessing
    reference_text: str | None = None
    extra_files: list[Path] = field(default_factory=list)  # beside the handler file
    handler_config: Path | None = None  # its model-config.yaml
    requirements: Path | None = None
    answer: AnswerCheck | None = None  # the handler's answer to one row, in-process
    task: str = "classification"  # model.task, from the label column (label_task)
    task_why: str = ""
    created: list[Path] = field(default_factory=list)  # files init created: removed if it fails
    decisions: list[str] = field(default_factory=list)
    todos: list[str] = field(default_factory=list)


def _render(f: _Facts, out: Path, when: str) -> str:
    spec_dir = out.parent
    d = _Doc()
    d.comment(f"Written by `package-validate init` ({when}). Review it, then: package-validate run {out.name}")
    d.comment("Relative paths are resolved against this file's folder. What init saw and chose:")
    for line in f.decisions:
        d.comment(f"  - {line}", hang=4)
    if f.todos:
        d.comment("TODO (only you can tell):")
        for line in f.todos:
            d.comment(f"  - {line}", hang=4)
    d.key("name", f.name, f.name_why)
    d.key("version", "1.0")
    d.key("model")
    d.key("factory", _ref_in_spec(f.factory, spec_dir), "built with no arguments, then the weights loaded", 2)
    d.key("weights", _rel(f.weights, spec_dir), "a torch.save'd state_dict, loaded strictly", 2)
    if f.task != "classification":
        d.key("task", f.task, f.task_why, 2)
    d.key("num_classes", f.num_classes, f.classes_why, 2)
    if f.class_names is not None:
        d.key("class_names", f.class_names, f.class_names_why, 2)
    else:
        d.comment(f"class_names: [...]  (optional: a name for each class 0..{f.num_classes - 1}, in output order)", 2)
    if f.reference_file is not None:
        d.key("preprocess", _ref_in_spec(f.preprocess, spec_dir), "the handler's own preprocessing (see that file)", 2)
    elif f.preprocess is not None:
        d.key("preprocess", _ref_in_spec(f.preprocess, spec_dir), "your preprocessing: the worker's view -> input", 2)
    if f.collate is not None:
        d.key("collate", _ref_in_spec(f.collate, spec_dir), "your batching of those rows' inputs", 2)
    d.key("dataset")
    g = f.guess
    kind_note = {"tensor": "numeric columns, sent as {\"features\": [...]} JSON",
                 "image": "image files, each posted as its raw bytes",
                 "text": "a text column, each row posted as UTF-8 text/plain",
                 "json": "one JSON object per row, posted as application/json"}[f.kind]
    d.key("kind", f.kind, kind_note, 2)
    d.key("path", _rel(f.data, spec_dir), "the held-out rows the gate scores", 2)
    if f.train_path is not None:
        d.key("train_path", _rel(f.train_path, spec_dir), "found beside the data: the leakage check hashes its rows", 2)
    if g is not None:
        if g.id_column is not None:
            d.key("id_column", g.id_column, "unique per row: every row is accounted for by id", 2)
        d.key("label_column", g.label_column, {"regression": "the regression target", "multilabel": "lists of labels"}.get(
            f.task, "class names" if f.label_names else "class indices"), 2)
        if f.kind == "json" and g.feature_columns:
            d.key("feature_columns", list(g.feature_columns), "each record's fields, in table order", 2)
        if g.json_column is not None:
            d.key("json_column", g.json_column, "one JSON object per row, sent as it is", 2)
        if f.kind == "tensor":
            if g.features_are_default:
                d.comment(f"feature_columns: every other column, {len(g.feature_columns)} numeric: "
                          f"{_span(list(g.feature_columns))}", 2)
            else:
                d.key("feature_columns", list(g.feature_columns), "the numeric columns, in table order", 2)
        if g.text_column is not None:
            d.key("text_column", g.text_column, None, 2)
        if g.path_column is not None:
            d.key("path_column", g.path_column, "relative to the table's folder", 2)
        for line in g.ignored:
            d.comment(f"ignored column {line}", 2)
    if f.input_shape is not None:
        d.key("input_shape", list(f.input_shape), f.shape_why, 2)
    elif f.observed_input:
        d.comment(f"one row's input tensor: {f.observed_input}", 2)
    d.key("export")
    d.key("mode", f.export_mode, f.export_why, 2)
    handler = _rel(f.handler_file, spec_dir) if f.handler_file is not None else f.handler
    if f.handler_file is not None and f.handler_function:
        handler = f"{handler}:{f.handler_function}"
    extra = list(dict.fromkeys(([f.label_map] if f.label_map is not None else []) + f.extra_files))
    if extra or f.handler_config is not None or f.requirements is not None or (f.answer and f.answer.failure):
        d.key("handler")
        d.key("name", handler, f.handler_why, 2)
        if f.extra_files:
            d.key("extra_files", [_rel(p, spec_dir) for p in extra], "found beside the handler (--extra-files)", 2)
        elif extra:
            d.key("extra_files", [_rel(p, spec_dir) for p in extra], "the label map the built-in names its answers "
                  "with", 2)
        if f.handler_config is not None:
            if "config" in HandlerSpec.model_fields:
                d.key("config", _rel(f.handler_config, spec_dir), "the handler's own model-config.yaml", 2)
            else:
                d.comment(f"TODO: {f.handler_config.name} beside the handler is its own config; handler.config "
                          "(planned) will ship it: until then the tool writes model-config.yaml from serving: only", 2)
                d.key("config", _rel(f.handler_config, spec_dir), None, 2, commented=True)
        if f.requirements is not None:
            d.key("requirements", _rel(f.requirements, spec_dir), "checked against this environment, never "
                  "installed", 2)
        if f.answer is not None and f.answer.failure is not None:
            d.comment(f"init ran this handler in-process on row {f.answer.row_id!r} and it FAILED: "
                      f"{f.answer.failure}", 2)
            d.comment("The run fails the same way until the handler is fixed; init does not work around it.", 2)
    else:
        d.key("handler", handler, f.handler_why)
    if f.answer is not None and f.answer.failure is None:
        d.key("answers")
        d.comment(f"init ran the handler in-process on row {f.answer.row_id!r}; it answered: {f.answer.answer}", 2)
        if f.answer.format is not None:
            d.key("format", f.answer.format, "what that answer is (answers.format auto would settle the same)", 2)
        else:
            d.comment("TODO: no answers.format reads that answer: set answers.format (and answers.mapping)", 2)
            d.key("format", "auto", "reads none of that answer: every row fails as bad_response", 2)
    d.key("serving")
    d.key("workers", 1, None, 2)
    d.key("batch_size", 1, "raise it to also check TorchServe's server-side batching", 2)
    d.key("replay")
    d.key("concurrency", 1, None, 2)
    d.key("warmup_requests", 200, "excluded from the latency figures", 2)
    d.key("gate")
    d.comment("The seeds: every metric within 1 point of the baseline (the eager model on these rows),", 2)
    d.comment("outputs within 1e-5, identical confusion matrices, no failed requests.", 2)
    d.key("max_output_diff", 1.0e-5, None, 2)
    d.key("min_prediction_agreement", 1.0, None, 2)
    d.key("require_identical_confusion", True, None, 2)
    d.key("max_error_rate", 0.0, None, 2)
    if f.builtin_image:
        whose = ("TorchServe 0.12's built-in" if f.handler_info is None else
                 f"{f.handler_info.path.name} keeps TorchServe 0.12's VisionHandler.preprocess, which")
        d.comment("The handler probes (grayscale, RGBA, palette, CMYK, EXIF-rotated copies of a row) still run and "
                  f"are reported, but do not gate: {whose} never calls .convert(\"RGB\") nor "
                  "applies the EXIF orientation, so such probes fail by its design, not your model's.", 2)
        d.key("probes", False, "reported, not gated (see above)", 2)
    if f.task != "classification":
        from pipeline.spec.schema import default_thresholds
        from pipeline.tasks.registry import task_for

        limits = ", ".join(f"{m} {{{', '.join(f'{k}: {v:g}' for k, v in th.model_dump(exclude_none=True).items())}}}"
                           for m, th in default_thresholds(task_for(f.task)).items())
        d.comment(f"metrics: by default {limits} (model.task {f.task}; a loss's rise)", 2)
        return d.text()
    acc = "" if f.accuracy is None else f"; the eager model scores accuracy {f.accuracy:.4f} on these rows"
    d.comment(f"metrics: by default all 7 metrics {{max_drop: 0.01}}. Optional: a floor{acc}:", 2)
    d.key("metrics", {"accuracy": {"min": 0.9, "max_drop": 0.01}}, None, 2, commented=True)
    if f.positive_todo:
        d.key("positive_class", 1, "TODO: the class whose misses cost most (binary model)", 2, commented=True)
        d.key("min_positive_recall", 0.9, "TODO: then gate its recall on its own", 2, commented=True)
    return d.text()


# ---------------------------------------------------------------- inferring, per kind


def _probe_spec(f: _Facts, dataset: dict, base: Path) -> Spec:
    """A minimal spec for the pipeline's own loaders (num_classes is not known yet: 2 is the least allowed)."""
    data = {"name": f.name, "model": {"factory": f.factory, "weights": str(f.weights), "num_classes": 2},
            "dataset": dataset}
    return parse_spec(data, base_dir=base, source="init")


def _load_model(f: _Facts, base: Path):
    from pipeline.model.loading import load_model

    return load_model(_probe_spec(f, {"path": str(f.data), "input_shape": [1]}, base))


def _classes(f: _Facts, width: int, labels: np.ndarray | None, names: list[str] | None, source: str) -> None:
    f.num_classes = width
    if f.task != "classification":  # regression: one output per target; multilabel: one per label
        f.classes_why = f"the model's output width on one row ({'targets' if f.task == 'regression' else 'labels'})"
        return
    if names is not None:
        if len(names) != width:
            raise DatasetError(
                f"{source}: the labels are {len(names)} class names {names[:10]} but the model has {width} outputs; "
                "init cannot tell which output is which name. Write model.class_names (in output order) yourself, "
                "or label the rows with class indices."
            )
        f.class_names, f.label_names = names, True
        f.class_names_why = "the label names, sorted (the accuracy above tells whether that is the model's order)"
        f.classes_why = f"the model's output width on one row; {len(names)} label names"
    else:
        hi = int(labels.max()) if labels is not None and len(labels) else -1
        lo = int(labels.min()) if labels is not None and len(labels) else 0
        if hi >= width or lo < 0:
            raise DatasetError(f"{source}: labels run {lo}..{hi} but the model has {width} outputs (classes "
                               f"0..{width - 1}). Check the weights and the label column.")
        seen = len(np.unique(labels)) if labels is not None else 0
        f.classes_why = f"the model's output width on one row; labels seen: {seen} classes in 0..{hi}"
    f.positive_todo = width == 2
    if width == 2:
        f.todos.append("binary model: if missing one class is the costly error, set gate.positive_class and "
                       "gate its recall (commented out at the end)")


def _check_accuracy(f: _Facts, acc: float | None) -> None:
    f.accuracy = acc
    if acc is not None and f.num_classes and acc <= 1.5 / f.num_classes:
        f.todos.append(f"the eager model scores accuracy {acc:.4f} on these rows, about chance for "
                       f"{f.num_classes} classes: check the weights, the labels' order or the input shape")


def _infer_tensor(f: _Facts, cfg: InitConfig, df: pd.DataFrame, g: TableGuess, model) -> None:
    ds = {"path": str(f.data), "id_column": g.id_column, "label_column": g.label_column,
          "feature_columns": list(g.feature_columns), "input_shape": [len(g.feature_columns)]}
    spec = _probe_spec(f, ds, f.data.parent)
    ids = tuple(df[g.id_column].astype(str))
    flat, _ = features_of(df.drop(columns=[g.label_column]), spec, f.data, ids)
    classes = _task_labels(f, df[g.label_column])
    labels, names = _label_values(df[g.label_column]) if classes else (None, None)
    idx = _indices(df[g.label_column], names)[:SHAPE_ROWS] if classes else None
    candidates = [cfg.input_shape] if cfg.input_shape is not None else None
    if cfg.input_shape is not None and math.prod(cfg.input_shape) != flat.shape[1]:
        raise ConfigError(f"--input-shape {list(cfg.input_shape)} holds {math.prod(cfg.input_shape)} values but the "
                          f"table has {flat.shape[1]} feature columns.")
    best, trials = fit_input_shape(model, flat[:SHAPE_ROWS], idx, candidates, what=f"the model of {cfg.factory}",
                                   min_width=2 if classes else 1)
    _classes(f, best.width, labels, names, str(f.data))
    f.input_shape = best.shape
    others = [t for t in trials if t is not best]
    ran = [t for t in others if t.fits]
    f.shape_why = (f"the model ran on one row as [1, {', '.join(map(str, best.shape))}]"
                   + ("" if cfg.input_shape is None else " (given with --input-shape)"))
    f.decisions.append(f"input_shape {list(best.shape)}: tried {len(trials)} shape(s) for {flat.shape[1]} "
                       f"features; {best.describe()}")
    if ran:
        f.decisions.append("other shapes that also ran, less or equally accurate: "
                           + "; ".join(t.describe() for t in ran[:4]))
    ties = [t for t in ran if t.accuracy == best.accuracy]
    if ties:
        f.todos.append(f"input_shape: {', '.join(str(list(t.shape)) for t in ties[:3])} run as accurately as "
                       f"{list(best.shape)} on these rows: check which one the model was trained with")
    failed = [t for t in others if not t.fits]
    if failed:
        f.decisions.append("shapes the model refused: " + "; ".join(t.describe() for t in failed[:3])
                           + (f"; and {len(failed) - 3} more" if len(failed) > 3 else ""))
    _check_accuracy(f, best.accuracy)
    if g.kind == "json":
        f.handler, f.handler_why = cfg.handler, "given with --handler"
        return
    f.handler, f.handler_why = cfg.handler or "tensor_classifier", (
        "given with --handler" if cfg.handler else "package-validate's handler for fixed-shape tensor rows")


def _infer_json(f: _Facts, cfg: InitConfig, df: pd.DataFrame, g: TableGuess, model) -> None:
    """--kind json: records of the numeric columns fit like tensor rows; a column of documents needs
    the model's own preprocessing (--preprocess, or the handler's)."""
    from pipeline.inputs import records

    if cfg.handler is None:
        raise ConfigError(
            f"{f.data}: kind json: TorchServe has no built-in handler for JSON records, and how a record becomes "
            "the model's input is your handler's preprocess. Pass --handler your_handler.py and run init again."
        )
    if g.feature_columns:
        _infer_tensor(f, cfg, df, g, model)
        return
    if f.preprocess is None:
        raise ConfigError(
            f"{f.data}: kind json with column {g.json_column!r} of documents: how a document becomes your model's "
            "input is your preprocessing, which init cannot see. Pass --preprocess file.py:function (given the "
            "parsed JSON object, returning one row's input tensor) and run init again."
        )
    labels, names = _label_values(df[g.label_column])
    sample = df.head(SHAPE_ROWS)
    logits, shape, _ = _run_bodies(f, model, [str(t).encode("utf-8") for t in sample[g.json_column]],
                                   records.CONTENT_TYPE, f"records of {f.data}")
    f.observed_input = f"{_shown(shape)}, from {_short_ref(f.preprocess)}"
    f.decisions.append(f"the model ran on one record as {_batched(shape)}: "
                       f"logits [batch, {logits.shape[1]}]")
    _classes(f, logits.shape[1], labels, names, str(f.data))
    _check_accuracy(f, _accuracy(logits, _indices(sample[g.label_column], names)))
    f.handler, f.handler_why = cfg.handler, "given with --handler"


def _reference(f: _Facts):
    """The reference preprocessing init runs rows through: ``--preprocess``, else TorchServe's image transforms."""
    if f.preprocess is None:
        return builtin_reference()
    from pipeline.inputs.base import Reference
    from pipeline.usercode import import_callable

    return Reference(f.preprocess, f"your function {_short_ref(f.preprocess)}", import_callable(f.preprocess, "--preprocess"))


def _run_bodies(f: _Facts, model, bodies: list[bytes], content_type: str, what: str
                ) -> tuple[np.ndarray, tuple[int, ...], str]:
    """Logits [len(bodies), C] of request bodies through the reference preprocessing, one row's input
    shape, and the reference's name; ConfigError quotes what failed and says what to pass instead."""
    import torch

    from pipeline.wire import worker_view

    from pipeline.modelinput import as_input, batch_of, call_model, describe, shapes
    from pipeline.usercode import import_callable

    ref = _reference(f)
    shape, seen = None, None
    try:
        collate = import_callable(f.collate, "--collate") if f.collate else None
        xs = [as_input(ref.fn(worker_view(b, content_type))) for b in bodies]
        seen = describe(xs[0])
        shape = tuple(xs[0].shape) if isinstance(xs[0], torch.Tensor) else seen
        # rows that do not stack and have no collate run one at a time, as the baseline scores them
        groups = [xs] if collate is not None or all(shapes(x) == shapes(xs[0]) for x in xs) else [[x] for x in xs]
        _logits(model, batch_of(xs[:1], collate), call=call_model, rows=1)
        out = np.concatenate([_logits(model, batch_of(g, collate), call=call_model, rows=len(g)) for g in groups])
    except Exception as e:  # the user's model or preprocessing: quote it with what was tried
        became = f"one row became {seen}" if seen else "the preprocessing failed"
        fix = ("Pass --preprocess file.py:function: the preprocessing your model was trained with (given what "
               "TorchServe's worker hands the handler, returning one row's input tensor)." if f.preprocess is None
               else f"Check that --preprocess {f.preprocess} returns what the model's forward takes (one tensor per "
               "row); a model of several inputs (text and offsets, ids and mask) is validated by a spec whose "
               "model.preprocess returns a tuple or dict, with model.collate where rows do not stack: pass "
               "--collate file.py:function, given the list of rows' inputs and returning the model's batch.")
        raise ConfigError(
            f"the model of {f.factory} did not run on {what} through {ref.name} ({became}): {_first_line(e)}. {fix}"
        ) from e
    return out, shape, ref.name


def _shown(shape) -> str:
    """One row's input for comments: a tensor's shape, or a structure's description (``(int64 [7], ...)``)."""
    return shape if isinstance(shape, str) else str(list(shape))


def _batched(shape) -> str:
    return f"{shape} (one row)" if isinstance(shape, str) else f"[1, {', '.join(map(str, shape))}]"


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels[: len(logits)]).mean())


def _image_folder(root: Path) -> FolderImages:
    """The folder's images, found by the dataset stage's own walk (symlinked folders and files
    followed, loops and broken links refused), so init counts what the run will read."""
    found = folder_images(root)
    if not found.image_count:
        raise DatasetError(f"{root}: a folder, but with no class sub-folders holding images "
                           f"({', '.join(IMAGE_SUFFIXES[:4])}, ...). Lay it out as {root}/<class name>/<image files>, "
                           "or pass a CSV/Parquet table.")
    return found


def _image_folder_classes(root: Path) -> list[str]:
    return _image_folder(root).classes


def _find_label_map(f: _Facts, classes: list[str], width: int) -> Path | None:
    """An index_to_name.json beside the data, the weights or the factory that names every class seen."""
    from pipeline.answers.classes import read_label_map

    places = [f.data, f.data.parent, f.data.parent.parent, f.weights.parent]
    if f.handler_file is not None:
        places.insert(0, f.handler_file.parent)  # TorchServe's examples keep index_to_name.json beside the handler
    factory_file = f.factory.rpartition(":")[0]
    if factory_file.endswith(".py"):
        places.append(Path(factory_file).parent)
    for folder in dict.fromkeys(p.resolve() for p in places):
        path = folder / LABEL_MAP_FILE
        if not path.is_file():
            continue
        try:
            names = read_label_map(path, width)
        except ConfigError as e:
            f.decisions.append(f"{path} not used: {e.message}")
            continue
        missing = [c for c in classes if c not in names]
        if missing:
            f.decisions.append(f"{path} not used: it does not name the class(es) {missing[:5]}")
            continue
        return path
    return None


def _image_handler(f: _Facts, cfg: InitConfig) -> None:
    f.builtin_image = (cfg.handler or "image_classifier") == "image_classifier" or (
        f.handler_info is not None and f.handler_info.vision_preprocess)
    if cfg.handler is not None:
        f.handler, f.handler_why = cfg.handler, "given with --handler"
        if f.builtin_image and f.preprocess is None and f.handler_info is not None:
            # a subclass keeping VisionHandler.preprocess and ImageClassifier's transforms: the run's reference
            # is those transforms, which the model just ran through (the plan needs it named for a handler file)
            f.preprocess = "builtin:image_classifier"
            f.decisions.append(f"reference preprocessing: builtin:image_classifier, the transforms "
                               f"{f.handler_info.path.name} inherits from TorchServe's ImageClassifier")
        return
    f.handler = "image_classifier"
    f.handler_why = "TorchServe's built-in: Resize(256), CenterCrop(224), ToTensor, ImageNet Normalize; top 5"
    if f.preprocess is not None:
        f.todos.append("your --preprocess differs from the built-in image_classifier's transforms, which the "
                       "served model would use: name the handler that applies yours (--handler file.py)")
    if f.num_classes < 5:
        f.todos.append(f"image_classifier answers its top 5 classes but the model has {f.num_classes}: subclass it "
                       f"in a handler file with topk = {f.num_classes} and name that file in handler")


def _infer_images(f: _Facts, cfg: InitConfig, model, bodies: list[bytes], labels: list[str], what: str,
                  classes: list[str], rows: int) -> None:
    """Images whose labels are class names (sub-folders, or a manifest's text labels).

    ``bodies`` and ``labels`` are a spread sample the model runs on (each image is decoded);
    ``classes`` and ``rows`` are counted over every row (a folder listing or the label column)."""
    from pipeline.answers.classes import read_label_map
    from pipeline.inputs import image

    logits, shape, ref_name = _run_bodies(f, model, bodies, image.CONTENT_TYPE, what)
    width = logits.shape[1]
    f.observed_input = f"{list(shape)} float32, from {ref_name}"
    f.decisions.append(f"the model ran on one image as [1, {', '.join(map(str, shape))}] through {ref_name}: "
                       f"logits [batch, {width}]")
    if len(classes) > width:
        raise DatasetError(f"{f.data}: {len(classes)} classes {classes[:10]} but the model has {width} outputs.")
    f.num_classes = width
    label_map = _find_label_map(f, classes, width)
    if label_map is not None:
        f.class_names = list(read_label_map(label_map, width))
        f.class_names_why = f"from {label_map.parent.name}/{label_map.name}, which orders the model's classes"
        f.label_map = label_map
        f.decisions.append(f"class order from {label_map} (it names every class in the data)")
    elif len(classes) == width:
        f.class_names = classes
        f.class_names_why = "the class names, sorted as the loader orders them (the accuracy tells if right)"
        f.write_label_map = (cfg.handler or "image_classifier") == "image_classifier"
    else:
        f.todos.append(f"the model has {width} outputs but the data names {len(classes)} classes: write "
                       "model.class_names for all of them, in output order")
    f.classes_why = f"the model's output width; {len(classes)} classes over all {rows} rows"
    index = {n: i for i, n in enumerate(f.class_names or classes)}
    _check_accuracy(f, _accuracy(logits, np.array([index[c] for c in labels], np.int64)))
    f.decisions.append(f"accuracy of the eager model on {len(labels)} of the {rows} images (spread over the "
                       f"classes; every image is loaded by the check below): {f.accuracy:.4f}")
    if width == 2:
        f.positive_todo = True
        f.todos.append("binary model: set gate.positive_class if missing one class is the costly error")
    _image_handler(f, cfg)


def _spread(items: list, k: int) -> list:
    """At most k items spread over the list (every class of a sorted folder gets rows)."""
    return items[:: max(1, len(items) // k)][:k]


def _infer_image_folder(f: _Facts, cfg: InitConfig, model) -> None:
    found = _image_folder(f.data)
    classes = found.classes
    files = [(q, c) for c in classes for q in found.files[c]]
    f.decisions.append(f"kind image: {f.data.name}/ holds {len(classes)} class sub-folder(s), {len(files)} images; "
                       f"class order = the sorted folder names {classes[:10]}{' ...' if len(classes) > 10 else ''}")
    if other_files_note(found):
        f.decisions.append(other_files_note(found))
    sample = _spread(files, IMAGE_ROWS)
    _infer_images(f, cfg, model, [q.read_bytes() for q, _ in sample], [c for _, c in sample],
                  f"images of {f.data}", list(classes), len(files))


def _infer_image_manifest(f: _Facts, cfg: InitConfig, df: pd.DataFrame, g: TableGuess, model) -> None:
    from pipeline.inputs import image

    sample = df.iloc[_spread(list(range(len(df))), IMAGE_ROWS)]
    bodies = [(Path(str(p)) if Path(str(p)).is_absolute() else f.data.parent / str(p)).read_bytes()
              for p in sample[g.path_column]]
    labels, names = _label_values(df[g.label_column])
    if names is not None:
        f.label_names = True
        _infer_images(f, cfg, model, bodies, [str(v) for v in sample[g.label_column]], f"images of {f.data}",
                      names, len(df))
        return
    logits, shape, ref_name = _run_bodies(f, model, bodies, image.CONTENT_TYPE, f"images of {f.data}")
    f.observed_input = f"{list(shape)} float32, from {ref_name}"
    f.decisions.append(f"the model ran on one image as [1, {', '.join(map(str, shape))}] through {ref_name}: "
                       f"logits [batch, {logits.shape[1]}]")
    _classes(f, logits.shape[1], labels, None, str(f.data))
    f.classes_why += f" (all {len(df)} rows)"
    _check_accuracy(f, _accuracy(logits, _indices(sample[g.label_column], None)))
    _image_handler(f, cfg)


def _infer_text(f: _Facts, cfg: InitConfig, df: pd.DataFrame, g: TableGuess, model) -> None:
    from pipeline.inputs import text

    if f.preprocess is None:
        raise ConfigError(
            f"{f.data}: the rows are text (column {g.text_column!r}); how text becomes your model's input is "
            "your tokenisation, which init cannot see. Pass --preprocess file.py:function (given a str, "
            "returning one row's input tensor) and run init again."
        )
    labels, names = _label_values(df[g.label_column])
    sample = df.head(SHAPE_ROWS)
    logits, shape, _ = _run_bodies(f, model, [str(t).encode("utf-8") for t in sample[g.text_column]],
                                   text.CONTENT_TYPE, f"texts of {f.data}")
    f.observed_input = f"{_shown(shape)}, from {_short_ref(f.preprocess)}"
    f.decisions.append(f"the model ran on one text as {_batched(shape)}: "
                       f"logits [batch, {logits.shape[1]}]")
    _classes(f, logits.shape[1], labels, names, str(f.data))
    _check_accuracy(f, _accuracy(logits, _indices(sample[g.label_column], names)))
    if cfg.handler is not None:
        f.handler, f.handler_why = cfg.handler, "given with --handler"
    else:
        f.handler, f.handler_why = "text_classifier", "TorchServe's built-in (see the TODO)"
        f.todos.append("text: TorchServe's text_classifier needs torchtext and a source_vocab.pt, and reads text "
                       "its own way: name your own handler file with --handler unless you ship those")


def _eager_fits(f: _Facts) -> bool:
    """TorchServe's --model-file rule holds: the factory's file defines exactly one nn.Module class,
    built without arguments, whose state_dict is the weights (``model_file_for_eager`` checks it)."""
    from pipeline.model.loading import model_file_for_eager

    if not f.factory.rpartition(":")[0].endswith(".py"):
        return False
    if f.handler_info is not None and f.handler_info.loads_torchscript:
        f.decisions.append(f"export mode not eager: {f.handler_info.path.name} calls torch.jit.load, so its "
                           "serialized file must be TorchScript")
        return False
    try:
        model_file_for_eager(_probe_spec(f, {"path": str(f.data), "input_shape": [1]}, f.data.parent))
    except ModelError as e:
        f.decisions.append(f"export mode not eager: {e.message}")
        return False
    return True


def _export_mode(f: _Facts, model) -> None:
    import torch

    if _eager_fits(f):
        f.export_mode = "eager"
        f.export_why = "TorchServe's --model-file: the factory's file defines one nn.Module class"
        f.decisions.append(f"export mode eager: {Path(f.factory.rpartition(':')[0]).name} defines exactly one "
                           "nn.Module class, built without arguments, that takes the weights: the archive ships "
                           "that file and the state_dict as they are (torch-model-archiver --model-file)")
        return
    try:
        torch.jit.script(model)
        f.export_mode, f.export_why = "script", "torch.jit.script compiled the model here"
    except Exception as e:  # TorchScript rejects many Python constructs: trace is the fallback
        f.export_mode = "trace"
        f.export_why = "torch.jit.script failed here; trace bakes in one path of data-dependent branches"
        f.decisions.append(f"export mode trace: torch.jit.script raised {_first_line(e)}")
        f.todos.append("export.mode trace: check forward has no data-dependent control flow (or use export/eager)")


# ---------------------------------------------------------------- checking and writing


def _confirm(spec: Spec, model, f: _Facts) -> None:
    """Read the spec as the run will: plan it, load the rows, run the first one through the reference."""
    import torch

    from pipeline.run.plan import plan_run
    from pipeline.stages.dataset import load_dataset
    from pipeline.wire import worker_view

    plan = None
    try:
        plan = plan_run(spec)
        reference = plan.reference
    except ConfigError as e:
        f.todos.append(f"the run's plan refuses this spec as written: {e}")
        from pipeline.inputs.registry import resolve_reference

        reference = resolve_reference(spec)
    from pipeline.modelinput import as_input, batch_of, call_model, map_leaves
    from pipeline.usercode import import_callable

    data = load_dataset(spec)
    x = as_input(reference.fn(worker_view(data.rows.body(0), data.rows.content_type)))
    collate = import_callable(spec.model.collate, "model.collate") if spec.model.collate else None
    batch = batch_of([x], collate) if collate is not None else map_leaves(lambda t: t.unsqueeze(0), x)
    width = _logits(model, batch, call=call_model, rows=1,
                    min_width=2 if spec.model.task == "classification" else 1).shape[1]
    if width != spec.model.num_classes:
        raise ModelError(f"init inferred {spec.model.num_classes} classes but the model gives {width} outputs on "
                         f"row {data.rows.ids[0]} through {reference.name}.")
    f.decisions.append(f"checked: the spec parses, {len(data.rows)} rows load, and row {data.rows.ids[0]!r} "
                       f"runs through {reference.name} to {width} logits")
    if plan is not None and plan.handler.origin == "file":
        _check_handler(f, spec, plan, model, data.rows, x, batch)
    if data.leaked_ids:
        f.todos.append(f"{len(data.leaked_ids)} evaluation row(s) also appear in {spec.dataset.train_path} (e.g. "
                       f"{list(data.leaked_ids[:3])}): the gate fails on leakage; drop them or remove train_path")


def _write_new(f: _Facts, path: Path, text: str, force: bool, what: str) -> None:
    """Write a file init derives, refusing to replace one with other content without --force."""
    if path.exists() and path.read_text(encoding="utf-8", errors="replace") == text:
        return
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists with other content. Re-run with --force to overwrite it, or "
                          f"remove it ({what}).")
    if not path.exists():
        f.created.append(path)
    write_atomic(path, text)


def _handler_reference(f: _Facts, cfg: InitConfig, spec_dir: Path) -> None:
    """The handler's own preprocessing as the run's reference, when it has one and --preprocess is not given.

    Images: its ``image_processing`` transforms (copied), else its ``preprocess`` method. Text:
    its ``preprocess`` method. Tensor and json rows keep the kind's own reading of the columns,
    so the handler's reading of them is what gets checked."""
    hf = f.handler_info
    if hf is None or f.preprocess is not None or f.kind not in ("image", "text"):
        return
    if f.kind == "text" and hf.preprocess_owner is None:
        return
    text = reference_source(hf if f.kind == "image" else HandlerFile(hf.path, preprocess_owner=hf.preprocess_owner),
                            spec_dir)
    if text is None:
        return
    path = spec_dir / REFERENCE_FILE
    _write_new(f, path, text, cfg.force, f"init writes it from {hf.path.name}'s preprocessing")
    f.reference_file, f.reference_text = path, text
    f.preprocess = f"{path}:preprocess"
    what = (f"its image_processing transforms ({'class ' + hf.transforms_owner if hf.transforms_owner else 'module'})"
            if f.kind == "image" and hf.transforms is not None else f"its {hf.preprocess_owner}.preprocess method")
    f.decisions.append(f"reference preprocessing: {REFERENCE_FILE} beside the spec applies {hf.path.name}'s own "
                       f"preprocessing, {what}, as TorchServe's worker does")
    f.todos.append(f"the reference preprocessing is {hf.path.name}'s own ({REFERENCE_FILE}): a defect in it is "
                   "not caught by comparing the handler with it; if your model was trained with other "
                   "preprocessing, write that in reference.py")


def _beside_handler(f: _Facts, out: Path, factory_file: Path | None) -> None:
    """Label maps, vocabularies and configs beside the handler file, for handler.extra_files."""
    hf = f.handler_info
    if hf is None:
        _builtin_vocabulary(f)
        return
    skip = {p.resolve() for p in (out, f.data, f.weights, hf.path, factory_file, f.train_path, f.reference_file)
            if p is not None}
    found = files_beside(hf.path, skip)
    f.extra_files = list(found.extra_files)
    if f.extra_files:
        f.decisions.append(f"packed beside {hf.path.name}: {[p.name for p in f.extra_files]} (handler.extra_files, "
                           "as torch-model-archiver --extra-files ships them)")
    f.decisions.extend(found.left_out)
    f.handler_config, f.requirements = found.config, found.requirements
    if found.config is not None and "config" not in HandlerSpec.model_fields:
        f.todos.append(f"{found.config.name} beside the handler is its own config (context.model_yaml_config): "
                       "this version of package-validate writes that file from serving: only, so the handler "
                       "does not see your keys (handler.config is planned)")


def _builtin_vocabulary(f: _Facts) -> None:
    """TorchServe's text_classifier loads ``source_vocab.pt`` from its archive: the one beside the model,
    the data or the preprocessing (the first found) is packed; none found is a TODO (the plan refuses it)."""
    if f.handler != "text_classifier":
        return
    refs = [r.rpartition(":")[0] for r in (f.factory, f.preprocess) if r and r.rpartition(":")[0].endswith(".py")]
    places = [Path(r).parent for r in refs] + [f.data.parent if f.data.is_file() else f.data, Path.cwd()]
    for folder in dict.fromkeys(p.resolve() for p in places):
        vocab = folder / "source_vocab.pt"
        if vocab.is_file():
            f.extra_files = [vocab]
            f.decisions.append(f"packed {vocab.name} from {folder}: text_classifier looks its words up there")
            return
    f.todos.append("text_classifier loads source_vocab.pt from the archive: put yours in handler.extra_files")


def _check_handler(f: _Facts, spec: Spec, plan, model, rows, x, batch) -> None:
    """The handler file run on the first row in-process (``batch``: that row as the model's input, for the
    export): its answer's format goes into the spec."""
    import torch

    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else ()  # only this project's handlers read it
    check = check_answer(spec, plan, model, rows, batch, shape)
    f.answer = check
    if check.failure is not None:
        f.todos.append(f"the handler failed on row {check.row_id!r} when init ran it in-process: {check.failure}. "
                       "The run fails the same way until the handler is fixed")
    elif check.format is None:
        f.todos.append(f"the handler answered row {check.row_id!r} with {check.answer!r}, which no answers.format "
                       "reads: set answers.format (and answers.mapping) for it")
    else:
        f.decisions.append(f"the handler ran in-process on row {check.row_id!r} and answered {check.answer!r}: "
                           f"answers.format {check.format}")


def _label_map_text(names: Sequence[str]) -> str:
    import json

    return json.dumps({str(i): n for i, n in enumerate(names)}, indent=2, ensure_ascii=False) + "\n"


def write_spec(cfg: InitConfig) -> InitResult:
    """Infer a spec for the model and data in ``cfg``, check it as the run will read it, and write it.

    Args:
        cfg: the factory, weights, data and where to write.

    Returns:
        The files written, the spec, the decisions and the TODOs.

    Raises:
        ConfigError: a file to write exists (without force), a bad flag, no input shape or
            preprocessing the model runs on (each candidate listed), or text without
            ``--preprocess``.
        DatasetError: the data cannot be read, or has no label or id column.
        ModelError, UserCodeError: the factory or the weights do not build the model.
    """
    base = cfg.base_dir.resolve()

    def absolute(p: Path) -> Path:
        p = Path(p).expanduser()
        return (p if p.is_absolute() else base / p).resolve()

    out = absolute(cfg.out)
    spec_dir = out.parent
    if out.exists() and not cfg.force:
        raise ConfigError(f"{out} already exists. Re-run with --force to overwrite it, or choose --out.")
    factory, factory_file = _factory_ref(cfg.factory, base)
    name, name_why = _model_name(cfg, factory_file)
    weights, data = absolute(cfg.weights), absolute(cfg.data)
    if not weights.is_file():
        raise ModelError(f"--weights {weights} does not exist.")
    if not data.exists():
        raise DatasetError(f"--data {data} does not exist. Pass a CSV/Parquet table or an image folder.")
    preprocess = _factory_ref(cfg.preprocess, base)[0] if cfg.preprocess else None
    f = _Facts(name=name, name_why=name_why, factory=factory, weights=weights, data=data, kind="tensor",
               num_classes=2, classes_why="", preprocess=preprocess,
               collate=_factory_ref(cfg.collate, base)[0] if cfg.collate else None)
    handler_path, _, function = (cfg.handler or "").rpartition(":")
    if not (handler_path.endswith(".py") and function.isidentifier()):
        handler_path, function = cfg.handler or "", ""
    if cfg.handler is not None and ("/" in handler_path or handler_path.endswith(".py")):
        f.handler_file, f.handler_function = absolute(Path(handler_path)), function or None
        if not f.handler_file.is_file():
            raise ConfigError(f"--handler {cfg.handler}: file {f.handler_file} does not exist.")
        f.handler_info = read_handler_file(f.handler_file)
    if cfg.kind is not None and cfg.kind not in KINDS:
        raise ConfigError(f"--kind {cfg.kind!r}: expected one of {list(KINDS)}.")
    prepare_torchvision()  # before any user module: factories and handlers import torchvision (see compat)
    model = _load_model(f, base)
    f.decisions.append(f"model: {cfg.factory} built and {weights.name} loaded strictly ({type(model).__name__}, "
                       f"{sum(p.numel() for p in model.parameters())} parameters)")
    f.train_path = _train_sibling(data)
    try:
        return _infer_and_write(f, cfg, model, out, factory_file)
    except BaseException:
        for path in f.created:  # never leave half a scaffold behind; files that were there stay
            path.unlink(missing_ok=True)
        raise


def _infer_and_write(f: _Facts, cfg: InitConfig, model, out: Path, factory_file: Path | None) -> InitResult:
    spec_dir, data = out.parent, f.data
    if data.is_dir():
        if cfg.kind not in (None, "image"):
            raise ConfigError(f"--kind {cfg.kind}: --data {data} is a folder, which init reads as images in class "
                              "sub-folders. Pass a CSV/Parquet table for other kinds.")
        f.kind = "image"
        _handler_reference(f, cfg, spec_dir)
        _infer_image_folder(f, cfg, model)
    elif data.suffix.lower() in TABLE_SUFFIXES:
        df = read_table(data, "dataset")
        if len(df) == 0:
            raise DatasetError(f"{data} has no rows. init needs labeled rows to run the model on.")
        g = guess_table(df, data.parent, label_column=cfg.label_column, id_column=cfg.id_column, kind=cfg.kind)
        f.guess, f.kind = g, g.kind
        f.decisions.extend(g.reasons)
        _handler_reference(f, cfg, spec_dir)
        {"tensor": lambda: _infer_tensor(f, cfg, df, g, model),
         "image": lambda: _infer_image_manifest(f, cfg, df, g, model),
         "text": lambda: _infer_text(f, cfg, df, g, model),
         "json": lambda: _infer_json(f, cfg, df, g, model)}[g.kind]()
    else:
        raise DatasetError(f"--data {data}: init reads a .csv or .parquet table or an image folder, got "
                           f"{data.suffix or 'no suffix'!r}. For JSON records write dataset.kind json by hand.")
    if cfg.preprocess is not None:
        f.decisions.append(f"reference preprocessing: {cfg.preprocess} (given with --preprocess)")
    if f.train_path is not None:
        f.decisions.append(f"training data {f.train_path.name} found beside {data.name}: used for the leakage check")
    _beside_handler(f, out, factory_file)
    _export_mode(f, model)
    if f.write_label_map:
        f.label_map = spec_dir / LABEL_MAP_FILE
        if f.label_map.exists() and not cfg.force and f.label_map.read_text(encoding="utf-8", errors="replace") \
                != _label_map_text(f.class_names):
            raise ConfigError(f"{f.label_map} already exists with other names. Re-run with --force to overwrite it, "
                              "or remove it.")
        f.decisions.append(f"{LABEL_MAP_FILE} written beside the spec: TorchServe's built-in names its answers "
                           "with it (else with the class indices)")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    spec = _read_back(f, out, when)
    written = [f.reference_file] if f.reference_file is not None else []
    if f.write_label_map:  # the plan reads it: it must exist before the check
        text = _label_map_text(f.class_names)
        if not f.label_map.is_file() or f.label_map.read_text(encoding="utf-8", errors="replace") != text:
            _write_new(f, f.label_map, text, True, "the label map")
            written.append(f.label_map)
    _confirm(spec, model, f)
    spec = _read_back(f, out, when)  # again: the check may have added the handler's answer format
    written.insert(0, write_atomic(out, _render(f, out, when)))
    log.info("init wrote %s", out)
    return InitResult(spec_path=out, written=tuple(written), spec=spec, decisions=tuple(f.decisions),
                      todos=tuple(f.todos))


def _read_back(f: _Facts, out: Path, when: str) -> Spec:
    try:
        spec = parse_spec(yaml.safe_load(_render(f, out, when)), base_dir=out.parent, source=str(out))
    except ConfigError as e:
        raise ConfigError(f"init rendered a spec it cannot read back (a bug in package-validate init): {e}") from e
    return spec.model_copy(update={"spec_path": out})
