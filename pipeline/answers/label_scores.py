"""Format ``label_scores``: a list of ``{"label", "score"}`` objects, as Hugging Face pipelines answer.

``[{"label": "sports", "score": 0.91}, {"label": "business", "score": 0.06}]``: the
probabilities of the classes named (NaN for the others); the prediction is the most probable
class carried. A list of one such list (a pipeline's answer for a batch of one) is read as
the inner list. Each object names its class and score as a ``top1`` object does (``label``
or ``class``/``prediction``/``name``; ``score`` or ``confidence``/``probability``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.answers.base import AnswerError, Carries, ClassMap, Prediction, argmax_carried, check_probabilities
from pipeline.answers.top1 import looks_like as looks_like_one
from pipeline.answers.top1 import named_class

NAME = "label_scores"
CARRIES = Carries("some", False)


def _items(doc: Any) -> Any:
    if isinstance(doc, list) and len(doc) == 1 and isinstance(doc[0], list):
        return doc[0]
    return doc


class Decoder:
    name = NAME
    carries = CARRIES
    accepts_text = False

    def __init__(self, num_classes: int, class_map: ClassMap) -> None:
        self.num_classes = num_classes
        self.class_map = class_map

    def decode(self, doc: Any) -> Prediction:
        items = _items(doc)
        if not isinstance(items, list) or not items:
            raise AnswerError(f"expected a non-empty JSON list of {{label, score}} objects, got {str(doc)[:80]!r}")
        probs = np.full(self.num_classes, np.nan)
        for n, item in enumerate(items):
            k, p = named_class(item, self.num_classes, self.class_map)
            if np.isfinite(probs[k]):
                raise AnswerError(f"class {self.class_map.labels[k]!r} appears twice in the answer (item {n})")
            probs[k] = p
        check_probabilities(probs, "the answer's scores")
        return Prediction(argmax_carried(probs), probs, None)


def looks_like(doc: Any, num_classes: int, class_map: ClassMap) -> bool:
    items = _items(doc)
    return (isinstance(items, list) and bool(items)
            and all(isinstance(item, dict) and looks_like_one(item, num_classes, class_map) for item in items))
