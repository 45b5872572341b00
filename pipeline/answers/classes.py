"""The class map: how answers name classes, from ``index_to_name.json`` or ``model.class_names``.

TorchServe's built-in classifiers label their answers through ``index_to_name.json`` (keys
are class indices as strings; a list value means its last element) and fall back to the
index as a string. Both sources given and disagreeing is an input error: one of them is
stale, and a shifted label map is a classic served-vs-local bug.

A name shared by several classes (TorchServe's own ImageNet map names 134 and 517 'crane',
638 and 639 'maillot') is a warning, not an error: an answer that names it is compared by
name (``shared_name_note``; ``evaluate.compare.resolve_shared_names``).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.answers.base import ClassMap
from pipeline.errors import ConfigError
from pipeline.spec import Spec

LABEL_MAP_FILE = "index_to_name.json"


def read_label_map(path: Path, num_classes: int) -> tuple[str, ...]:
    """Names of classes 0..C-1 from an index_to_name.json, as TorchServe 0.12 reads it.

    Raises:
        ConfigError: not JSON, not an object, or a class without a name (the built-in handler
            would raise KeyError on it). Two classes with one name are allowed (``shared_name_note``).
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable JSON file: {e}. Fix the label map.") from e
    if isinstance(doc, dict) and isinstance(doc.get("object_type_names"), list):
        doc = {str(i): v for i, v in enumerate(doc["object_type_names"])}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a JSON object {{\"0\": \"name\", ...}}, got {type(doc).__name__}.")
    names = {}
    for k, v in doc.items():
        name = v[-1] if isinstance(v, list) and v else v
        if not isinstance(name, str):
            raise ConfigError(f"{path}: class {k!r} has name {v!r}; names must be strings (or lists of strings).")
        names[str(k)] = name
    missing = [str(i) for i in range(num_classes) if str(i) not in names]
    if missing:
        raise ConfigError(
            f"{path}: no name for class(es) {missing[:10]} of the model's {num_classes}; TorchServe's handler "
            "raises KeyError when such a class is in its answer. Give every class 0..C-1 a name."
        )
    extra = sorted(set(names) - {str(i) for i in range(num_classes)})
    if extra:
        raise ConfigError(f"{path}: keys {extra[:10]} are not classes of the model (0..{num_classes - 1}). "
                          "Fix the label map or model.num_classes.")
    return tuple(names[str(i)] for i in range(num_classes))


# Formats whose answers name the predicted class by its index: a shared name never reaches them.
INDEX_FORMATS = frozenset({"package_validate", "logits", "index"})


def names_classes(fmt: str) -> bool:
    """Whether answers of format ``fmt`` name classes by label (so a shared name is ambiguous in them)."""
    return fmt not in INDEX_FORMATS


def shared_name_note(class_map: ClassMap) -> str | None:
    """The plan's warning for names several classes share, or None when every name is unique."""
    shared = class_map.shared_names()
    if not shared:
        return None
    groups = ", ".join(f"{name!r}: classes {list(ix)}" for name, ix in list(shared.items())[:10])
    more = f", ... {len(shared) - 10} more" if len(shared) > 10 else ""
    return (f"warning: {class_map.source} gives {len(shared)} name(s) to more than one class ({groups}{more}). An "
            "answer that names such a class cannot say which one: it is compared by name (it matches the baseline "
            "when the baseline's class has that name) and its probability of that name is not compared; such rows "
            "are listed in the report. TorchServe's {label: probability} answer also keeps only one probability "
            "per name when both classes are in its top k.")


def label_map_file(spec: Spec) -> Path | None:
    return next((p for p in spec.handler.extra_files if p.name == LABEL_MAP_FILE), None)


def class_map_for(spec: Spec) -> ClassMap:
    """The class map of the spec's answers.

    Raises:
        ConfigError: the label map is unusable, or it and ``model.class_names`` disagree.
    """
    path = label_map_file(spec)
    names = spec.model.class_names
    if path is None:
        if names is not None:
            return ClassMap(names, "model.class_names")
        return ClassMap(tuple(str(i) for i in range(spec.model.num_classes)), "class indices")
    if not path.is_file():
        raise ConfigError(f"handler.extra_files: {path} does not exist.")
    labels = read_label_map(path, spec.model.num_classes)
    if names is not None and tuple(names) != labels:
        diff = [f"class {i}: index_to_name.json {a!r}, model.class_names {b!r}"
                for i, (a, b) in enumerate(zip(labels, names)) if a != b]
        raise ConfigError(
            f"{path} and model.class_names disagree on {len(diff)} class(es); one of them is stale (a shifted "
            "label map makes every served answer name the wrong class). Make them the same.",
            details=diff[:10],
        )
    return ClassMap(labels, path.name)
