"""Judging handler probes: what the handler did with each variant, against what a correct handler does.

The outcome of a probe in a stage is one of:

    same       answered with the class the original row gets in that stage
    different  answered with another class
    refused    a clean refusal: HTTP 4xx with a reason (bad input, request too large)
    crashed    the handler raised, died, timed out or answered something unreadable
    not run    the stage could not send it (the in-process handler has no request size limit, ...)

A probe passes when the outcome is what its ``expect`` allows (``inputs.probes``).

Tasks whose answer is not one class (detection's boxes, segmentation's masks) give "the same
answer" their own meaning through an optional ``probe_difference(original, answered,
orientation, upright_size)`` (``tasks/<task>.py``): the same objects matched by IoU with the same
labels, or nearly every pixel of the same class. A probe stored under an EXIF orientation is
then compared in both frames:

    same          the answer matches the original in the upright frame: the handler honours EXIF
    stored frame  it matches only once turned back from the stored pixels' frame: the handler
                  ignores EXIF, so a client sending phone photos gets boxes (or a mask) turned
                  against the picture it shows; passed, with a warning naming the fix
    different     it matches in neither frame
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pipeline.inputs.probes import ANSWER, REFUSE, SAME, HandlerProbe
from pipeline.stages.outcomes import RowOutcome

REFUSALS = frozenset({"bad_input", "too_large"})
STORED_FRAME = "stored frame"
ALLOWED = {SAME: {"same", STORED_FRAME}, ANSWER: {"same", "different", "refused", STORED_FRAME},
           REFUSE: {"refused"}}
EXIF_FIX = ("call PIL.ImageOps.exif_transpose(image) in the handler's preprocess before its transforms (TorchServe's "
            "built-in vision handlers do not), or on the client before it sends")
# (original answer, probe answer, orientation, upright size) -> "" when the same, else what differs
Difference = Callable[[Any, Any, int, "tuple[int, int] | None"], str]


@dataclass(frozen=True)
class ProbeOutcome:
    probe: str
    expect: str
    stage: str
    outcome: str
    status: int | None
    predicted: int | None
    original: int | None
    message: str
    passed: bool
    warning: str = ""  # passed, but a client would be surprised (the handler ignores EXIF): the gate WARNs

    def line(self) -> str:
        why = f": {self.message}" if self.message else ""
        return f"{self.probe}: expected {self.expect}, got {self.outcome}{why}"


def outcome_of(row: RowOutcome, original: int | None) -> str:
    if row.is_ok:
        return "same" if original is not None and row.predicted == original else "different"
    if row.error_class in REFUSALS or (row.status is not None and 400 <= row.status < 500
                                       and row.error_class not in ("unauthorized", "not_found")):
        return "refused"
    return "crashed"


def probe_difference(codec: Any) -> Difference | None:
    """The run's task's comparison of a probe's answer with the original row's (None: classes are compared):
    its own ``probe_difference``, else its values (``Prediction.logits``: scores, regressed values) within the
    task's output tolerances."""
    spec = getattr(codec, "spec", None)
    task_name = getattr(getattr(spec, "model", None), "task", None)
    if not task_name or task_name == "classification":
        return None
    from pipeline.tasks.registry import task_for

    task = task_for(task_name)
    own = getattr(task, "probe_difference", None)
    if own is not None:
        return own
    atol, rtol = task.tolerances(spec)

    def values(original: Any, answered: Any, orientation: int, size: Any) -> str:
        return values_difference(original, answered, atol, rtol)

    values.in_frames = False  # a value has no frame: an EXIF-rotated probe is compared as it is
    return values


def values_difference(original: Any, answered: Any, atol: float, rtol: float) -> str:
    """'' when two answers' values (``Prediction.logits``) agree within the tolerances, else how far apart."""
    import numpy as np

    a, b = getattr(original, "logits", None), getattr(answered, "logits", None)
    if a is None and b is None:
        return ""  # nothing but the answer itself to compare
    if a is None or b is None or np.shape(a) != np.shape(b):
        return f"values {None if b is None else np.round(b, 4).tolist()[:6]}, the original row gets " \
               f"{None if a is None else np.round(a, 4).tolist()[:6]}"
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if np.all(np.abs(a - b) <= atol + rtol * np.abs(a)):
        return ""
    return (f"values {np.round(b, 4).tolist()[:6]}, the original row gets {np.round(a, 4).tolist()[:6]} (max "
            f"difference {float(np.max(np.abs(a - b))):.3g}, tolerance {atol:g})")


def judge(probe: HandlerProbe, stage: str, row: RowOutcome | None, original: int | None,
          reference: Any = None, difference: Difference | None = None) -> ProbeOutcome:
    """The probe's outcome in ``stage`` and whether a correct handler would have done the same.

    Args:
        probe: the probe sent.
        stage: handled or served.
        row: its outcome (None: not sent in this stage).
        original: the class the original row got in this stage (None: it got no answer).
        reference: the original row's Prediction in this stage, for a task's ``difference``.
        difference: the task's comparison (``probe_difference``); None compares classes.
    """
    if row is None:
        return ProbeOutcome(probe.name, probe.expect, stage, "not run", None, None, original,
                            probe.note or f"not sent in the {stage} stage", True)
    outcome = outcome_of(row, original)
    message = "" if row.is_ok else f"{row.error_class}: {row.message}"
    warning = ""
    if row.is_ok and difference is not None:
        outcome, message, warning = _task_outcome(probe, row, reference, difference)
    elif outcome == "different":
        message = f"class {row.predicted}, the original row gets {original}"
    return ProbeOutcome(probe.name, probe.expect, stage, outcome, row.status, row.predicted, original, message,
                        outcome in ALLOWED[probe.expect], warning)


def _task_outcome(probe: HandlerProbe, row: RowOutcome, reference: Any, difference: Difference
                  ) -> tuple[str, str, str]:
    """(outcome, message, warning) of an answered probe, compared by the task (in both frames for EXIF)."""
    if reference is None:
        return "different", "the original row got no answer in this stage to compare with", ""
    try:
        upright = difference(reference, row.prediction, 1, probe.upright_size)
        if not probe.orientation or probe.orientation == 1 or not getattr(difference, "in_frames", True):
            return ("same", "", "") if not upright else ("different", upright, "")
        stored = difference(reference, row.prediction, probe.orientation, probe.upright_size)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # an answer the task cannot line up
        return "different", f"cannot be compared with the original row's answer: {type(e).__name__}: {e}", ""
    if not upright and not stored:
        return "same", ("the answer is the same in both frames (the picture looks alike turned): whether the "
                        "handler honours EXIF cannot be told from this row"), ""
    if not upright:
        return "same", "answered in the upright frame: the handler honours the EXIF orientation", ""
    if not stored:
        from pipeline.inputs.orientation import WORDS

        warning = (f"the handler ignores the EXIF orientation: its answer matches the original only in the stored "
                   f"pixels' frame ({WORDS.get(probe.orientation, probe.orientation)}), so a client sending phone "
                   f"photos gets boxes or masks turned against the picture it shows ({upright}). Fix: {EXIF_FIX}")
        return STORED_FRAME, warning, warning
    return "different", f"upright frame: {upright}; stored frame: {stored}", ""
