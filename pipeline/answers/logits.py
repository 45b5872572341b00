"""Format ``logits``: a bare list of the model's C outputs (TorchServe's ``base_handler``).

``BaseHandler.postprocess`` answers ``output.tolist()``: the raw outputs of the row. They
are read as logits; probabilities are their softmax.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.answers.base import AnswerError, Carries, Prediction, numbers, softmax

NAME = "logits"
CARRIES = Carries("all", True)


class Decoder:
    name = NAME
    carries = CARRIES

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def decode(self, doc: Any) -> Prediction:
        if isinstance(doc, list) and len(doc) == 1 and isinstance(doc[0], list):
            doc = doc[0]
        if not isinstance(doc, list):
            raise AnswerError(f"expected a list of {self.num_classes} numbers, got {type(doc).__name__}")
        logits = numbers(doc, "the answer", self.num_classes)
        return Prediction(int(np.argmax(logits)), softmax(logits), logits)


def looks_like(doc: Any, num_classes: int) -> bool:
    if isinstance(doc, list) and len(doc) == 1 and isinstance(doc[0], list):
        doc = doc[0]
    return (isinstance(doc, list) and len(doc) == num_classes
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in doc))
