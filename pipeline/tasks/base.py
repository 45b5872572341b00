"""The task seam: what one task (classification, multi-label, regression, detection, segmentation) owns.

``model.task`` in the spec picks one module of this package through ``registry``; every place
that used to assume a single-label classifier asks that module instead. A new task is one module
that provides a ``Task`` and one line in ``registry.TASKS``.

What a task module owns, and where each piece is asked for:

1. **Labels** (``read_labels``): the dataset's label columns -> one array, dataset order, or
   ``DatasetError`` naming the rows. Called by every input kind (``inputs/*.py`` through
   ``inputs.base.task_labels``) with the whole manifest frame, so a task may read one column
   (classification: class indices or names), several (multi-label: one 0/1 column per label;
   regression: one column per target) or a file the column names (detection: a COCO JSON or a
   JSON column; segmentation: a PNG mask per row). The array's first axis is the row; what else
   it holds is the task's business (int64 [N]; 0/1 [N, L]; float [N, K]; an object array of
   per-row ground truths for detection and segmentation). ``label_counts`` gives the per-class
   counts the dataset stage prints (None where counting classes makes no sense).

2. **Answers** (``decode``): one handler answer (JSON after the envelope is taken off) ->
   ``answers.base.Prediction``. Classification returns None here: its answers go through the
   ``answers/`` formats as before. Other tasks put what they decoded into the Prediction:
   a fixed-length vector (per-label scores, regressed values) in ``Prediction.logits`` (their
   "raw" outputs, compared as they are), or a per-row variable-length object (boxes, a mask) in
   ``Prediction.extra``; ``Prediction.index`` is then 0 (the row was answered).
   ``decoder`` gives the answer codec (``answers.registry.codec_for``) an object with ``decode(doc)``
   and ``carries`` for the run (``answers.decode``, when set, applied first; classification: None).
   ``decode`` also checks the answer on its own, without a reference (classes in range, scores
   within [0, 1], values finite, boxes inside the image), raising ``AnswerError``: the row is then
   ``bad_response`` with that reason, counted by the error-rate check.
   ``tolerances`` gives (absolute, relative) tolerances of the numbers compared, for the checks
   outside the task (the served warm-up answers against the steady ones).

3. **Stage outputs** (``model_outputs`` for in-process stages from ``model.forward.Scores``;
   ``answer_outputs`` for stages that answered over a handler, from ``RowOutcome`` s): one
   ``evaluate.compare.StageOutputs`` per stage. Every task keeps ``predictions`` int64 [N] with -1
   where the row got no answer (the gate counts answered rows from it); a task whose answer is
   not one class fills ``values`` (float [N, K], NaN where unanswered) and/or ``answers`` (a tuple
   of per-row decoded objects, None where unanswered: detection's boxes, segmentation's masks).

4. **"The same answer"** and **metrics** (``compare``): every stage's metrics, each candidate
   against the baseline (``tests``) and against the stage before it (``steps``, read for blame by
   ``evaluate.attribution``), the rows whose decoded answer differs (``flipped``) and the rows whose
   compared quantities move beyond their tolerances (``diverging``). What is compared per row and
   with which tolerance is the task's: classes and logits (classification); thresholded labels and
   scores (multi-label); values (regression); matched boxes' labels, coordinates and scores
   (detection); per-pixel classes and probabilities (segmentation). The result must offer what the
   generic readers use: ``stages[name]`` with ``answered``, ``latency``, ``get(metric)`` and
   ``undefined``; ``tests``/``steps`` values with ``reference``, ``disagreeing`` and ``output``
   (an ``OutputDiff``); ``flipped_total``; ``diverging``; ``served_server_latency`` and
   ``served_overhead_latency``. ``evaluate.compare.Comparison`` is classification's.

5. **Paired statistics**: inside ``compare``, each candidate's metric change against the baseline
   with a paired bootstrap interval by row (``stats.paired_bootstrap``, bounded in time).

6. **Gate checks** (``stage_checks``): the task's checks of one candidate stage (agreement with the
   baseline, each gated metric within its limits, the output difference); the gate adds the checks
   every task shares (probes, answered rows, export ratios, latency, warm-up, prior run, leakage).
   ``gated_metrics`` names the metrics ``gate.metrics`` may list, and ``default_metrics`` those gated
   when the spec lists none (the seeds: each within 1 point of the baseline); ``lower_is_better`` the
   losses among them, whose rise (not drop) the limits bound, also against a prior run.

7. **rows.parquet** (``row_columns``): the task's columns of one stage's outputs (``<stage>_pred``,
   ``<stage>_prob`` for classification; per-label or per-target columns for the others).

8. **History** (``tracked``): the per-stage figures ``history.store`` records for trends and the
   prior-run baseline (``--against-last-pass``) reads back; figures are stored under
   ``<stage>.<figure>`` with the task's name in the run's figures (``task``), so a history holding
   several tasks compares each model with runs of its own task.

9. **Report sections** (``report_sections``): markdown/HTML sections the renderers add for this
   task, from ``report.json`` alone (a heading, lines, optional tables and an inline SVG plot).

Detection and segmentation follow the same protocol: their labels are object arrays of per-row
ground truths, their answers live in ``Prediction.extra`` and ``StageOutputs.answers``, their
``compare`` matches boxes by IoU (or compares pixels) and fills the same result shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from pipeline.answers.base import Prediction
    from pipeline.evaluate.compare import StageOutputs
    from pipeline.evaluate.gate import Check, GatePlan
    from pipeline.spec import GateSpec, Spec


@dataclass(frozen=True)
class Section:
    """One report section a task adds: a heading, text lines, tables (header + rows) and an optional SVG."""

    title: str
    lines: tuple[str, ...] = ()
    tables: tuple[tuple[tuple[str, ...], tuple[tuple[str, ...], ...]], ...] = ()
    svg: str = ""


@dataclass(frozen=True)
class CompareContext:
    """What a task's ``compare`` may need beyond the rows and the stages' outputs."""

    class_labels: tuple[str, ...]
    tolerance: float
    metric_classes: str = "present"
    shared_names: dict[str, tuple[int, ...]] | None = None
    by_name: frozenset[str] = frozenset()
    spec: Any = None  # the run's Spec, for task-specific tolerances


class Task(Protocol):
    """One task's module (see the module docstring for who calls what)."""

    name: str
    gated_metrics: tuple[str, ...]
    default_metrics: tuple[str, ...]
    tracked: tuple[str, ...]
    lower_is_better: frozenset[str]  # the gated metrics that are losses (a rise is the worsening)
    # optional ``in_target_units``: the losses measured in the target's units (regression's MAE and RMSE);
    # their default limit is relative (spec.schema.default_thresholds) and their max_drop may exceed 1

    def read_labels(self, df: "pd.DataFrame", spec: "Spec", path: Path,
                    ids: Sequence[str]) -> tuple[np.ndarray, list[str]]: ...

    def label_counts(self, labels: np.ndarray, spec: "Spec") -> np.ndarray | None: ...

    def decode(self, doc: Any, spec: "Spec") -> "Prediction | None": ...

    def decoder(self, spec: "Spec") -> Any: ...

    def tolerances(self, spec: "Spec") -> tuple[float, float]: ...

    def model_outputs(self, name: str, scores: Any, spec: "Spec") -> "StageOutputs": ...

    def answer_outputs(self, name: str, outcomes: tuple, spec: "Spec") -> "StageOutputs": ...

    def compare(self, ids: tuple[str, ...], labels: np.ndarray, stages: list["StageOutputs"],
                server_ms: np.ndarray | None, ctx: CompareContext) -> Any: ...

    def stage_checks(self, spec: "GateSpec", plan: "GatePlan", cmp: Any, stage: str, base_name: str,
                     labels: tuple[str, ...], why: str) -> list["Check"]: ...

    def row_columns(self, prefix: str, outputs: "StageOutputs") -> dict[str, Any]: ...

    def report_sections(self, report: dict) -> list[Section]: ...

