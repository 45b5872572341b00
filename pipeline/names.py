"""Names every layer shares: the stages a row's answer passes through, in pipeline order."""

from __future__ import annotations

import functools
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


_ORDER = {s: i for i, s in enumerate((Stage.BASELINE, Stage.EXPORTED, Stage.HANDLED, Stage.SERVED))}


@functools.total_ordering
class StageName:
    """A stage's name as a value: the stage, the batch it ran at, the serving setting it ran at.

    ``str()`` is the text the report, rows.parquet and history carry: ``handled``, ``handled@batch4``,
    ``served@w2-b4-d5-c8-t1``. It compares and hashes equal to that text (and so to a plain ``Stage``),
    so a mapping keyed by names is read with either; text from outside (a report, a test) is read once
    with ``StageName.of``, and the code then asks ``.stage``/``.batch``/``.setting``, never a prefix.
    Ordered along the pipeline, then by batch, then by setting. Immutable. Not a dataclass on purpose:
    ``dataclasses.asdict`` of a record holding one (a gate ``Check``) must keep the name, not a dict of it.

    Attributes:
        stage: the stage.
        batch: the batch size a handled variant ran at (None: one row per call, or the served setting's).
        setting: the serving setting a stage ran at (a tune point's key), or None: the spec's own.
    """

    __slots__ = ("stage", "batch", "setting")
    stage: Stage
    batch: int | None
    setting: str | None

    def __init__(self, stage: Stage | str, batch: int | None = None, setting: str | None = None):
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise ValueError(f"StageName batch must be a positive integer, got {batch!r}")
        if setting is not None and (not isinstance(setting, str) or "@" in setting or not setting):
            raise ValueError(f"StageName setting must be non-empty text without '@', got {setting!r}")
        object.__setattr__(self, "stage", Stage(stage))
        object.__setattr__(self, "batch", batch)
        object.__setattr__(self, "setting", setting)

    def __setattr__(self, key, value):
        raise AttributeError(f"StageName is immutable: cannot set {key}")

    def __reduce__(self):
        return StageName, (self.stage, self.batch, self.setting)

    def __str__(self) -> str:
        parts = [str(self.stage)]
        if self.batch is not None:
            parts.append(f"batch{self.batch}")
        if self.setting is not None:
            parts.append(self.setting)
        return "@".join(parts)

    def __repr__(self) -> str:
        return f"StageName({str(self)!r})"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __hash__(self) -> int:
        return hash(str(self))

    def __eq__(self, other) -> bool:
        if isinstance(other, StageName):
            return str(self) == str(other)
        if isinstance(other, str):
            return str(self) == other
        return NotImplemented

    def _key(self) -> tuple:
        return (_ORDER[self.stage], self.batch or 0, self.setting or "")

    def __lt__(self, other) -> bool:
        if isinstance(other, str):
            other = StageName.of(other)
        if not isinstance(other, StageName):
            return NotImplemented
        return self._key() < other._key()

    @property
    def is_variant(self) -> bool:
        """A stage run at another batch or setting than its own (handled@batch4, served@...)."""
        return self.batch is not None or self.setting is not None

    @classmethod
    def of(cls, name: "StageName | Stage | str") -> "StageName":
        """The name read from its text (``handled@batch4``), or the value as it is.

        Raises:
            ValueError: the text names no stage, or a part after ``@`` is neither ``batchN`` nor a setting.
        """
        if isinstance(name, StageName):
            return name
        head, *rest = str(name).split("@")
        if head not in _ORDER:
            raise ValueError(f"{name!r} names no stage: the stages are {', '.join(map(str, _ORDER))}")
        batch = setting = None
        for part in rest:
            if batch is None and setting is None and part.startswith("batch") and part[5:].isdigit():
                batch = int(part[5:])
            elif setting is None:
                setting = part
            else:
                raise ValueError(f"{name!r}: a stage name is stage[@batchN][@setting]")
        return cls(Stage(head), batch, setting)


def handled_at_batch(batch_size: int) -> StageName:
    """The handled stage run with ``batch_size`` rows per call (the served batch size)."""
    return StageName(Stage.HANDLED, batch=batch_size)
