"""Judging handler probes: what the handler did with each variant, against what a correct handler does.

The outcome of a probe in a stage is one of:

    same       answered with the class the original row gets in that stage
    different  answered with another class
    refused    a clean refusal: HTTP 4xx with a reason (bad input, request too large)
    crashed    the handler raised, died, timed out or answered something unreadable
    not run    the stage could not send it (the in-process handler has no request size limit, ...)

A probe passes when the outcome is what its ``expect`` allows (``inputs.probes``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.inputs.probes import ANSWER, REFUSE, SAME, HandlerProbe
from pipeline.stages.outcomes import RowOutcome

REFUSALS = frozenset({"bad_input", "too_large"})
ALLOWED = {SAME: {"same"}, ANSWER: {"same", "different", "refused"}, REFUSE: {"refused"}}


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


def judge(probe: HandlerProbe, stage: str, row: RowOutcome | None, original: int | None) -> ProbeOutcome:
    """The probe's outcome in ``stage`` and whether a correct handler would have done the same."""
    if row is None:
        return ProbeOutcome(probe.name, probe.expect, stage, "not run", None, None, original,
                            probe.note or f"not sent in the {stage} stage", True)
    outcome = outcome_of(row, original)
    message = "" if row.is_ok else f"{row.error_class}: {row.message}"
    if outcome == "different":
        message = f"class {row.predicted}, the original row gets {original}"
    return ProbeOutcome(probe.name, probe.expect, stage, outcome, row.status, row.predicted, original, message,
                        outcome in ALLOWED[probe.expect])
