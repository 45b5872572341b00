"""The input kinds: the only place that switches on ``dataset.kind``.

Each kind module provides ``NAME``, ``CONTENT_TYPE``, ``load(spec, path, training=False) ->
Rows``, ``default_reference(spec) -> Reference | None`` and ``handler_probes(rows, spec)``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType


from pipeline.errors import ConfigError
from pipeline.inputs import image, records, tensor, text
from pipeline.inputs.base import Reference, Rows
from pipeline.spec import Spec
from pipeline.usercode import import_callable

KINDS: dict[str, ModuleType] = {m.NAME: m for m in (tensor, image, text, records)}
BUILTIN_REFERENCES = {
    "image_classifier": lambda spec: image.builtin_reference(),
    "object_detector": lambda spec: image.object_detector_reference(),
    "image_segmenter": lambda spec: image.image_segmenter_reference(),
    "tensor": tensor.default_reference,
    "records": records.default_reference,
}


def kind_of(spec: Spec) -> ModuleType:
    return KINDS[spec.dataset.kind]


def load_rows(spec: Spec) -> Rows:
    """The evaluation rows of the spec's dataset, checked before any stage uses them."""
    return kind_of(spec).load(spec, spec.dataset.path)


def load_training_rows(spec: Spec) -> Rows | None:
    """The training rows (for the leakage check), read like the evaluation rows; None without train_path."""
    if spec.dataset.train_path is None:
        return None
    return kind_of(spec).load(spec, spec.dataset.train_path, training=True)


def handler_probes(spec: Spec, rows: Rows, index: int = 0) -> list:
    """The handler input probes of the spec's input kind (``inputs.probes``), made from row ``index``."""
    return kind_of(spec).handler_probes(rows, spec, index)


def content_type_of(spec: Spec) -> str:
    return kind_of(spec).CONTENT_TYPE


def default_reference(spec: Spec) -> Reference | None:
    return kind_of(spec).default_reference(spec)


def resolve_reference(spec: Spec) -> Reference:
    """The reference preprocessing the baseline scores through.

    ``model.preprocess`` when set (a user function, or ``builtin:<name>``), else the kind's
    default.

    Raises:
        ConfigError: no preprocessing is named and the kind has no default, or an unknown builtin.
        UserCodeError: the user's function cannot be imported.
    """
    ref = spec.model.preprocess
    if ref is None:
        default = default_reference(spec)
        if default is None:
            raise ConfigError(
                f"dataset.kind {spec.dataset.kind} needs model.preprocess: the function your model was "
                "trained and evaluated with, given what the worker hands the handler for a row "
                f"({_view_words(spec)}) and returning the model's input tensor, e.g. "
                "model.preprocess: transforms.py:preprocess."
            )
        return default
    if ref.startswith("builtin:"):
        name = ref.split(":", 1)[1]
        if name not in BUILTIN_REFERENCES:
            raise ConfigError(f"model.preprocess: unknown built-in {ref!r}; known: "
                              f"{['builtin:' + n for n in BUILTIN_REFERENCES]}.")
        built = BUILTIN_REFERENCES[name](spec)
        if built is None:
            raise ConfigError(f"model.preprocess {ref} does not apply to this dataset (it needs feature_columns).")
        return built
    fn = import_callable(ref, "model.preprocess")
    return Reference(ref, f"your function {Path(ref.rpartition(':')[0]).name}:{ref.rpartition(':')[2]}", fn)


def _view_words(spec: Spec) -> str:
    return {"image": "the image's bytes", "text": "a str", "json": "the parsed JSON record",
            "tensor": "the parsed JSON document"}[spec.dataset.kind]
