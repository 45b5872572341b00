"""Format ``custom``: the team's own function reads each answer (``answers.decode: file.py:function``).

The function gets one answer body: the JSON document after the envelope is taken off (a dict,
list, number or string), or the raw text when the body is not JSON (TorchServe sends a
handler's ``str`` answer unquoted). It returns one of:

    an int                        the class index
    a str                         the class label (looked up as the ``label`` format does)
    a dict                        {"index" and/or "label", "probabilities"?, "logits"?, ...}

``probabilities`` is a list of C numbers or ``{label: probability}``; ``logits`` a list of C
numbers (numpy arrays and tensors are accepted through ``tolist``). Without index or label the
largest logit, else the most probable class, is the prediction. Other keys are kept in
``Prediction.extra`` (unread today: room for tasks other than classification). An exception in
the function makes that row ``bad_response``, quoted with its type, message and the line of the
user's file that raised it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pipeline.answers.base import (AnswerError, Carries, ClassMap, Prediction, argmax_carried, check_probabilities,
                                   numbers, softmax)
from pipeline.answers.naming import index_of_label, index_of_number, is_int
from pipeline.usercode import import_callable, plain, user_frame

NAME = "custom"
UNKNOWN = Carries("unknown", False)
KNOWN_KEYS = ("index", "label", "probabilities", "logits")


def _listed(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def carries_of(pred: Prediction) -> Carries:
    """What one decoded answer carries (the custom format's promise is what its first answer shows)."""
    if pred.logits is not None:
        return Carries("all", True)
    if pred.probabilities is None:
        return Carries("none", False)
    return Carries("all" if np.isfinite(pred.probabilities).all() else "some", False)


@dataclass(frozen=True)
class Decoder:
    fn: Callable[[Any], Any]
    ref: str
    num_classes: int
    class_map: ClassMap
    carries: Carries = UNKNOWN

    name = NAME
    accepts_text = True

    def observed(self, pred: Prediction) -> "Decoder":
        return Decoder(self.fn, self.ref, self.num_classes, self.class_map, carries_of(pred))

    def decode(self, doc: Any) -> Prediction:
        try:
            value = self.fn(doc)
        except Exception as e:  # the team's code: any exception is this row's bad answer, quoted
            raise AnswerError(f"answers.decode {self.ref} raised {type(e).__name__}: {plain(str(e))}"
                              f"{user_frame(e)}") from e
        return self.prediction(value)

    def prediction(self, value: Any) -> Prediction:
        """What the function returned, as a Prediction; AnswerError says what is wrong with it."""
        if isinstance(value, Prediction):
            return value
        if is_int(value):
            return Prediction(index_of_number(value, self.num_classes, "the class index answers.decode returned"))
        if isinstance(value, str):
            return Prediction(index_of_label(value, self.class_map, "the label answers.decode returned"))
        if not isinstance(value, dict):
            raise AnswerError(f"answers.decode {self.ref} returned {type(value).__name__} {str(value)[:60]!r}; "
                              "return a class index (int), a label (str) or a dict {index|label, probabilities?, "
                              "logits?}")
        return self._from_dict(value)

    def _probabilities(self, value: Any) -> np.ndarray:
        value = _listed(value)
        if isinstance(value, dict):
            probs = np.full(self.num_classes, np.nan)
            for label, p in value.items():
                if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
                    raise AnswerError(f"answers.decode: probability of {label!r} must be a finite number, got {p!r}")
                probs[index_of_label(str(label), self.class_map, "a label of 'probabilities'")] = float(p)
        else:
            probs = numbers(value, "'probabilities' from answers.decode", self.num_classes)
        check_probabilities(probs, "'probabilities' from answers.decode")
        return probs

    def _from_dict(self, value: dict) -> Prediction:
        c = self.num_classes
        probs = self._probabilities(value["probabilities"]) if value.get("probabilities") is not None else None
        logits = (numbers(_listed(value["logits"]), "'logits' from answers.decode", c)
                  if value.get("logits") is not None else None)
        if probs is None and logits is not None:
            probs = softmax(logits)
        index = None
        if value.get("index") is not None:
            index = index_of_number(_listed(value["index"]), c, "'index' from answers.decode")
        if value.get("label") is not None:
            k = index_of_label(value["label"], self.class_map, "'label' from answers.decode")
            if index is not None and k != index:
                raise AnswerError(f"answers.decode returned index {index} but label {value['label']!r} (class {k})")
            index = k
        if index is None:
            if logits is not None:
                index = int(np.argmax(logits))
            elif probs is not None:
                index = argmax_carried(probs)
            else:
                raise AnswerError(f"answers.decode {self.ref} returned a dict without index, label, probabilities "
                                  f"or logits (keys {sorted(map(str, value))[:8]}); return at least the class")
        extra = {k: v for k, v in value.items() if k not in KNOWN_KEYS} or None
        return Prediction(index, probs, logits, extra)


def decoder_for(ref: str, num_classes: int, class_map: ClassMap) -> Decoder:
    """The decoder of ``answers.decode``; UserCodeError (exit 2) when it cannot be imported."""
    fn = import_callable(ref, "answers.decode")
    return Decoder(fn, ref.rsplit("/", 1)[-1], num_classes, class_map)
