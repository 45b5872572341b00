"""Formats ``index`` and ``label``: an answer that is only the predicted class.

``index``: a bare JSON number, the class index (TorchServe's MNIST example answers
``argmax(1).tolist()``, so one row's body is ``5``). ``label``: a bare string, the class
label (a Hugging Face handler answers ``"business"``; TorchServe sends a ``str`` as raw text,
so the body is ``business`` with no quotes, and either is read). Either may come as a list
of one element (a handler that answers a list for its one row); a list of several is refused,
since which of them is this row's answer cannot be known.

These answers carry no probabilities: the served output-difference check compares classes
only (see ``pipeline/evaluate/gate.py``).
"""

from __future__ import annotations

from typing import Any

from pipeline.answers.base import AnswerError, Carries, ClassMap, Prediction, is_index_labels
from pipeline.answers.naming import index_of_label, index_of_number, is_int

INDEX = "index"
LABEL = "label"
CARRIES = Carries("none", False)


def one_element(doc: Any, what: str) -> Any:
    """The answer itself, or the single element of a one-element list."""
    if isinstance(doc, list):
        if len(doc) != 1:
            raise AnswerError(f"expected {what} (or a list of one), got a list of {len(doc)} elements "
                              f"{str(doc)[:80]}: one request carries one row, so its answer names one class")
        return doc[0]
    return doc


class IndexDecoder:
    name = INDEX
    carries = CARRIES
    accepts_text = False

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def decode(self, doc: Any) -> Prediction:
        value = one_element(doc, "a class index")
        return Prediction(index_of_number(value, self.num_classes))


class LabelDecoder:
    name = LABEL
    carries = CARRIES
    accepts_text = True

    def __init__(self, class_map: ClassMap) -> None:
        self.class_map = class_map

    def decode(self, doc: Any) -> Prediction:
        value = one_element(doc, "a class label")
        return Prediction(index_of_label(value, self.class_map))


def looks_like_index(doc: Any, num_classes: int, class_map: ClassMap) -> bool:
    """A number (or a list of one) that is a class index, where no label could read it otherwise."""
    if isinstance(doc, list) and len(doc) == 1:
        doc = doc[0]
    if not is_int(doc) or not 0 <= int(doc) < num_classes:
        return False
    # labels that are digit strings but not the indices ('3' names class 0): index or label? not guessed
    return not class_map.digit_labels or is_index_labels(class_map.labels)


def looks_like_label(doc: Any, class_map: ClassMap) -> bool:
    if isinstance(doc, list) and len(doc) == 1:
        doc = doc[0]
    return isinstance(doc, str) and doc in class_map.labels
