"""Format ``topk``: TorchServe's built-in classifiers, a JSON object ``{label: probability}``.

``image_classifier`` answers its top 5 classes (``topk = 5``), ``text_classifier`` every
class; labels come from ``index_to_name.json`` (or are the class indices as strings) and are
mapped back to class indices through the class map. The prediction is the most probable
class carried.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.answers.base import AnswerError, Carries, ClassMap, Prediction, argmax_carried, check_probabilities

NAME = "topk"
CARRIES = Carries("top_k", False)


class Decoder:
    name = NAME
    carries = CARRIES

    def __init__(self, num_classes: int, class_map: ClassMap) -> None:
        self.num_classes = num_classes
        self.class_map = class_map

    def decode(self, doc: Any) -> Prediction:
        if isinstance(doc, list) and len(doc) == 1 and isinstance(doc[0], dict):
            doc = doc[0]
        if not isinstance(doc, dict) or not doc:
            raise AnswerError(f"expected a JSON object {{label: probability}}, got {str(doc)[:80]!r}")
        probs = np.full(self.num_classes, np.nan)
        seen: set[int] = set()
        for label, p in doc.items():
            if isinstance(p, bool) or not isinstance(p, (int, float)):
                raise AnswerError(f"probability of {label!r} must be a number, got {p!r}")
            if not math.isfinite(p):
                raise AnswerError(f"the answer holds NaN or infinity (class {label!r})")
            k = self.class_map.index_of(str(label))
            if k in seen:
                raise AnswerError(f"class {k} appears twice in the answer")
            seen.add(k)
            probs[k] = float(p)
        check_probabilities(probs, "the answer's probabilities")
        return Prediction(argmax_carried(probs), probs, None)


def looks_like(doc: Any, class_map: ClassMap) -> bool:
    if isinstance(doc, list) and len(doc) == 1:
        doc = doc[0]
    return (isinstance(doc, dict) and bool(doc) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                        for v in doc.values())
            and all(str(k) in class_map.labels for k in doc))
