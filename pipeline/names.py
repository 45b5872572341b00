"""Names every layer shares: the stages a row's answer passes through, in pipeline order."""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """A stage whose per-row outputs are compared with the baseline's.

    baseline  the eager model through the reference preprocessing, in-process
    exported  the exported artefact (TorchScript, AOTInductor, or the eager model file) in-process
    handled   the archive's handler, run in-process through TorchServe's own handler API
    served    the real TorchServe, over HTTP
    """

    BASELINE = "baseline"
    EXPORTED = "exported"
    HANDLED = "handled"
    SERVED = "served"


CANDIDATES = (Stage.EXPORTED, Stage.HANDLED, Stage.SERVED)
