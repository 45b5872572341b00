"""Format ``mapping``: a custom answer whose figures sit where ``answers.mapping`` says.

Paths are dotted, with list indices as numbers: ``result.scores``, ``predictions.0.label``.
``probabilities`` may be a list of C numbers or an object ``{label: probability}``. At
least one of ``prediction`` and ``label`` fixes the class; otherwise the most probable
class (or the largest logit) does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.answers.base import (AnswerError, Carries, ClassMap, Prediction, argmax_carried, check_probabilities,
                                   numbers, softmax)
from pipeline.spec import AnswerMapping

NAME = "mapping"


def get_path(doc: Any, path: str) -> Any:
    """The value at a dotted path; AnswerError names the part that is missing."""
    cur = doc
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise AnswerError(f"the answer has no {path!r} (stopped at {part!r})")
    return cur


def carries_of(mapping: AnswerMapping) -> Carries:
    """Logits carry every class; a probabilities path may hold every class or only some (an object)."""
    if mapping.logits:
        return Carries("all", True)
    return Carries("some" if mapping.probabilities else "none", False)


class Decoder:
    name = NAME

    def __init__(self, num_classes: int, class_map: ClassMap, mapping: AnswerMapping) -> None:
        self.num_classes = num_classes
        self.class_map = class_map
        self.mapping = mapping
        self.carries = carries_of(mapping)

    def _probabilities(self, value: Any) -> np.ndarray:
        c = self.num_classes
        if isinstance(value, dict):
            probs = np.full(c, np.nan)
            for label, p in value.items():
                if isinstance(p, bool) or not isinstance(p, (int, float)):
                    raise AnswerError(f"probability of {label!r} must be a number, got {p!r}")
                if not math.isfinite(p):
                    raise AnswerError(f"probability of {label!r} is NaN or infinity")
                probs[self.class_map.index_of(str(label))] = float(p)
        else:
            probs = numbers(value, f"{self.mapping.probabilities!r}", c)
        check_probabilities(probs, f"{self.mapping.probabilities!r}")
        return probs

    def decode(self, doc: Any) -> Prediction:
        m = self.mapping
        c = self.num_classes
        probs = self._probabilities(get_path(doc, m.probabilities)) if m.probabilities else None
        logits = numbers(get_path(doc, m.logits), f"{m.logits!r}", c) if m.logits else None
        if probs is None and logits is not None:
            probs = softmax(logits)
        index = None
        if m.prediction:
            v = get_path(doc, m.prediction)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < c:
                raise AnswerError(f"{m.prediction!r} must be a class index in 0..{c - 1}, got {v!r}")
            index = v
        if m.label:
            k = self.class_map.index_of(str(get_path(doc, m.label)))
            if index is not None and k != index:
                raise AnswerError(f"{m.prediction!r} says class {index} but {m.label!r} names class {k}")
            index = k
        if index is None:
            index = int(np.argmax(logits)) if logits is not None else argmax_carried(probs)
        return Prediction(index, probs, logits)
