"""Format ``top1``: one object naming the predicted class and its confidence.

``{"label": "cat", "confidence": 0.93}``; the class under one of ``label``, ``class``,
``prediction``, ``name`` (a string is a label, a number a class index), the confidence under
one of ``confidence``, ``score``, ``probability``. Other keys are ignored. A list of one such
object is read as the object. The decoded prediction carries probability p at that class and
NaN elsewhere, so the output-difference check compares the confidence with the baseline's
probability of the same class.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.answers.base import AnswerError, Carries, ClassMap, Prediction
from pipeline.answers.naming import index_of_class, is_int

NAME = "top1"
CARRIES = Carries("some", False)
CLASS_KEYS = ("label", "class", "prediction", "name")
SCORE_KEYS = ("confidence", "score", "probability")


def probability(value: Any, what: str) -> float:
    """A confidence in [0, 1]; AnswerError says what is wrong."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AnswerError(f"{what} must be a number, got {str(value)[:80]!r}")
    if not math.isfinite(value):
        raise AnswerError(f"{what} is NaN or infinity")
    if not -1e-6 <= value <= 1 + 1e-6:
        raise AnswerError(f"{what} is {value}, outside [0, 1]: not a probability")
    return float(value)


def the_key(doc: dict, keys: tuple[str, ...], what: str) -> str:
    """The one key of ``keys`` the object has; AnswerError when none or several."""
    found = [k for k in keys if k in doc]
    if len(found) != 1:
        have = "none" if not found else f"{len(found)} ({', '.join(found)}), which would be a guess"
        raise AnswerError(f"a top-1 answer needs exactly one {what} key of {list(keys)}, got {have}: "
                          f"{str(doc)[:80]}")
    return found[0]


def named_class(doc: Any, num_classes: int, class_map: ClassMap) -> tuple[int, float]:
    """(class index, confidence) of one {class, confidence} object."""
    if not isinstance(doc, dict):
        raise AnswerError(f"expected a JSON object {{label, confidence}}, got {str(doc)[:80]!r}")
    ck = the_key(doc, CLASS_KEYS, "class")
    sk = the_key(doc, SCORE_KEYS, "confidence")
    k = index_of_class(doc[ck], num_classes, class_map, f"{ck!r}")
    return k, probability(doc[sk], f"{sk!r}")


class Decoder:
    name = NAME
    carries = CARRIES
    accepts_text = False

    def __init__(self, num_classes: int, class_map: ClassMap) -> None:
        self.num_classes = num_classes
        self.class_map = class_map

    def decode(self, doc: Any) -> Prediction:
        if isinstance(doc, list) and len(doc) == 1:
            doc = doc[0]
        k, p = named_class(doc, self.num_classes, self.class_map)
        probs = np.full(self.num_classes, np.nan)
        probs[k] = p
        return Prediction(k, probs, None)


def looks_like(doc: Any, num_classes: int, class_map: ClassMap) -> bool:
    """One object with exactly one class key naming a class and one numeric confidence key."""
    if isinstance(doc, list) and len(doc) == 1:
        doc = doc[0]
    if not isinstance(doc, dict):
        return False
    cks = [k for k in CLASS_KEYS if k in doc]
    sks = [k for k in SCORE_KEYS if k in doc]
    if len(cks) != 1 or len(sks) != 1:
        return False
    value, score = doc[cks[0]], doc[sks[0]]
    named = (isinstance(value, str) and value in class_map.labels) or (is_int(value) and 0 <= value < num_classes)
    return named and isinstance(score, (int, float)) and not isinstance(score, bool)
