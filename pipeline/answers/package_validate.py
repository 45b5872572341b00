"""Format ``package_validate``: this project's JSON, ``{"prediction", "label", "probabilities", "logits"}``.

Written by ``handlers/tensor_classifier.py``: every class's probability, and the logits.
"""

from __future__ import annotations

from typing import Any

from pipeline.answers.base import AnswerError, Carries, Prediction, check_probabilities, numbers

NAME = "package_validate"
CARRIES = Carries("all", True)


class Decoder:
    name = NAME
    carries = CARRIES

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def decode(self, doc: Any) -> Prediction:
        if not isinstance(doc, dict):
            raise AnswerError(f"expected a JSON object with 'prediction' and 'probabilities', got {type(doc).__name__}")
        c = self.num_classes
        pred = doc.get("prediction")
        if not isinstance(pred, int) or isinstance(pred, bool) or not 0 <= pred < c:
            raise AnswerError(f"'prediction' must be a class index in 0..{c - 1}, got {pred!r}")
        probs = numbers(doc.get("probabilities"), "'probabilities'", c)
        check_probabilities(probs, "'probabilities'")
        logits = doc.get("logits")
        logits = numbers(logits, "'logits'", c) if logits is not None else None
        return Prediction(pred, probs, logits)


def looks_like(doc: Any) -> bool:
    return isinstance(doc, dict) and "prediction" in doc and "probabilities" in doc
