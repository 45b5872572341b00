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


MAX_CLASSES_NAMED = 10  # a class list longer than this is shown as its first ones and "... N more"


def name_classes(names, limit: int = MAX_CLASSES_NAMED) -> str:
    """A list of class names for a message: all of them when short, else the first ``limit`` and a count
    (a 1000-class model must not print 1000 names in every line that names classes)."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f", ... {len(names) - limit} more" if len(names) > limit else ""
    return f"[{shown}{more}]"
