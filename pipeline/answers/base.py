"""What every answer format provides: one ``Prediction`` per answer, or an ``AnswerError`` saying why not.

A format decodes the handler's answer for one row (after any envelope is taken off) into a
class index, the probabilities it carries (NaN for classes it leaves out) and logits when it
has them. The class map turns the labels an answer uses back into class indices.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np


class AnswerError(ValueError):
    """An answer does not match its decoder; the row becomes ``bad_response`` with this reason."""


class NotJSON(AnswerError):
    """The answer is UTF-8 text but not JSON. ``text`` keeps it: TorchServe sends a handler's ``str``
    answer as raw UTF-8 (``business``, not ``"business"``), so the formats that read a bare label,
    and a custom decode function, take the text itself."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


@dataclass(frozen=True)
class Prediction:
    """One decoded answer.

    Attributes:
        index: the predicted class index.
        probabilities: float64 [C]; NaN for the classes the answer does not carry; None when
            the answer carries no probabilities at all.
        logits: float64 [C], or None.
    """

    index: int
    probabilities: np.ndarray | None = None
    logits: np.ndarray | None = None
    extra: dict | None = None  # what a custom decode function returned beyond these (kept for other tasks)

    @property
    def classes_carried(self) -> int:
        return classes_carried(self)


def classes_carried(pred: Prediction) -> int:
    """How many classes an answer carries: all with logits, else those with a probability.
    (A function, not the property's body, so the mutation tester reaches it.)"""
    if pred.logits is not None:
        return len(pred.logits)
    if pred.probabilities is None:
        return 0
    return int(np.isfinite(pred.probabilities).sum())


@dataclass(frozen=True)
class Carries:
    """What a format's answers can hold, known before any answer arrives (for planning checks)."""

    probabilities: str  # "all" | "top_k" | "some" | "none" | "unknown" (a custom decode, before its first answer)
    logits: bool

    def describe(self) -> str:
        if self.probabilities == "unknown":
            return "what answers.decode returns (known after the first answer)"
        parts = []
        if self.logits:
            parts.append("logits")
        if self.probabilities == "all":
            parts.append("probabilities of every class")
        elif self.probabilities == "top_k":
            parts.append("probabilities of the top-k classes")
        elif self.probabilities == "some":
            parts.append("probabilities of the classes each answer names")
        return " and ".join(parts) or "only the predicted class"


@dataclass(frozen=True)
class ClassMap:
    """Class labels as answers name them, index order, and where they came from.

    A name may belong to several classes (TorchServe's ImageNet ``index_to_name.json`` has two
    'crane' and two 'maillot'): ``index_of`` then gives the first of them and ``candidates`` all
    of them; the comparison decides between them by name (``evaluate.compare``).
    """

    labels: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        index: dict[str, int] = {}
        for i, name in enumerate(self.labels):
            index.setdefault(name, i)  # the first class of a shared name, the same on every run
        object.__setattr__(self, "_index", index)

    @property
    def digit_labels(self) -> bool:
        """Every label is a string of digits: TorchServe's fallback without index_to_name.json (the
        class index as its label), or a label map whose names are numbers. A bare answer ``5`` then
        reads the same as the label ``"5"``."""
        return digit_labels(self.labels)

    def index_of(self, label: str) -> int:
        """The class index of ``label`` (the first, for a name several classes share); AnswerError when
        the model has no such class."""
        index = self._index.get(label)  # type: ignore[attr-defined]
        if index is None:
            raise AnswerError(f"label {label!r} is not a class of the model "
                              f"({self.source}: {list(self.labels)[:12]})")
        return index

    def candidates(self, label: str) -> tuple[int, ...]:
        """Every class named ``label`` (one for a unique name, none for an unknown one)."""
        return tuple(i for i, name in enumerate(self.labels) if name == label)

    def shared_names(self) -> dict[str, tuple[int, ...]]:
        """Names that belong to more than one class -> those classes."""
        return shared_names(self.labels)


def shared_names(labels: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Names that belong to more than one class -> those classes, in index order."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(labels):
        groups.setdefault(name, []).append(i)
    return {name: tuple(ix) for name, ix in groups.items() if len(ix) > 1}


def digit_labels(labels: tuple[str, ...]) -> bool:
    return bool(labels) and all(label.isdigit() for label in labels)


def is_index_labels(labels: tuple[str, ...]) -> bool:
    """The labels are the class indices themselves ("0", "1", ...): an index and a label name one class."""
    return labels == tuple(str(i) for i in range(len(labels)))


def parse_json(body: bytes | str | Any) -> Any:
    """The JSON document of an answer body (bytes or str); other values are already parsed."""
    if isinstance(body, (bytes, bytearray)):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise AnswerError(f"the answer is not UTF-8 text: {e}") from e
    if isinstance(body, str):
        try:
            return json.loads(body)
        except ValueError as e:
            raise NotJSON(f"the answer is not JSON: {e}", body) from e
    return body


def numbers(values: Any, what: str, length: int | None = None) -> np.ndarray:
    """A list of finite numbers as float64; AnswerError says what is wrong."""
    if not isinstance(values, (list, tuple)):
        raise AnswerError(f"{what} must be a list of numbers, got {type(values).__name__}")
    if length is not None and len(values) != length:
        raise AnswerError(f"{what} must hold {length} numbers, got {len(values)}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise AnswerError(f"{what} must hold only numbers, got {str(values)[:80]}")
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise AnswerError(f"{what} holds NaN or infinity")
    return arr


def check_probabilities(p: np.ndarray, what: str) -> None:
    """Carried probabilities lie in [0, 1] and sum to at most 1 (to rounding)."""
    carried = p[np.isfinite(p)]
    if ((carried < -1e-6) | (carried > 1 + 1e-6)).any():
        raise AnswerError(f"{what} holds values outside [0, 1]: {carried[:6].tolist()}")
    if carried.sum() > 1 + 1e-4:
        raise AnswerError(f"{what} sum to {carried.sum():.6f}, more than 1: not probabilities")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - np.max(logits)
    e = np.exp(z)
    return e / e.sum()


def argmax_carried(p: np.ndarray) -> int:
    """Index of the largest carried probability (the first on ties)."""
    masked = np.where(np.isfinite(p), p, -math.inf)
    return int(np.argmax(masked))
