"""How an answer names its class: a class index (a JSON number) or a label (a string), read the same
way by every format that names one class (``index``, ``label``, ``top1``, ``label_scores``, ``custom``).

A label set made only of digit strings is ambiguous: ``"3"`` may be the label of class 3 (TorchServe's
fallback without ``index_to_name.json``: the index as its label) or of another class (a label map
whose names are numbers). Labels are always looked up by name first, so with the fallback an index
string maps to its class; ``digit_label_note`` says so in the report.
"""

from __future__ import annotations

import numbers as _numbers
from typing import Any

from pipeline.answers.base import AnswerError, ClassMap, is_index_labels


def is_int(value: Any) -> bool:
    """A whole number as JSON or numpy gives it (``5``, ``np.int64(5)``); never a bool."""
    return isinstance(value, _numbers.Integral) and not isinstance(value, bool)


def index_of_number(value: Any, num_classes: int, what: str = "the answer") -> int:
    """A class index in 0..C-1; AnswerError says what is wrong."""
    if not is_int(value):
        if isinstance(value, float) and value.is_integer():
            raise AnswerError(f"{what} is {value!r}, a decimal number; a class index is a whole number (5, not 5.0)")
        raise AnswerError(f"{what} must be a class index (a whole number), got {str(value)[:80]!r}")
    if not 0 <= int(value) < num_classes:
        raise AnswerError(f"{what} is {int(value)}, not a class index of the model (0..{num_classes - 1})")
    return int(value)


def index_of_label(value: Any, class_map: ClassMap, what: str = "the answer") -> int:
    """The class a label names. A number is accepted only where every label is a digit string (a
    handler that returns the label ``"5"`` as a str is sent as ``5``, which parses as a number)."""
    if is_int(value) and class_map.digit_labels:
        value = str(int(value))
    if not isinstance(value, str):
        hint = "; a number is a class index: set answers.format: index" if is_int(value) else ""
        raise AnswerError(f"{what} must be a class label (a string), got {str(value)[:80]!r}{hint}")
    try:
        return class_map.index_of(value)
    except AnswerError as e:
        hint = (" (a class index as a string: set answers.format: index, or give the class names in "
                "index_to_name.json / model.class_names)" if value.isdigit() and not class_map.digit_labels else "")
        raise AnswerError(f"{e}{hint}") from None


def index_of_class(value: Any, num_classes: int, class_map: ClassMap, what: str = "the class") -> int:
    """A class named either way: a number is an index, a string a label."""
    if is_int(value):
        return index_of_number(value, num_classes, what)
    return index_of_label(value, class_map, what)


def digit_label_note(class_map: ClassMap, fmt: str) -> str | None:
    """The warning for an ambiguous label set, or None."""
    if not class_map.digit_labels:
        return None
    if is_index_labels(class_map.labels):
        return (f"answers ({fmt}): the class labels are the class indices as strings ({class_map.source}, "
                "TorchServe's fallback without index_to_name.json), so an answer '3' is read as class 3; give "
                "the class names (index_to_name.json or model.class_names) if the handler answers names")
    return (f"answers ({fmt}): every class label is a digit string ({class_map.source}: "
            f"{list(class_map.labels)[:6]}), so an answer like '{class_map.labels[0]}' is read as the label "
            f"{class_map.labels[0]!r} (class 0), not as class index {class_map.labels[0]}; set answers.format: "
            "index if the handler answers indices")
