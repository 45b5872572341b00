"""Single-label classification on the task seam: today's verdicts, unchanged.

The pieces stay where they were written (and where the mutation tests reach them): labels in
``inputs.base.labels_of``, answers in the ``answers/`` formats, metrics and paired tests in
``evaluate.compare``, checks in ``evaluate.gate``, rows in ``report.builder``. This module is
what the seam asks for each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.spec import GATED_METRICS
from pipeline.tasks.base import CompareContext, Section

TRACKED = ("accuracy", "precision_macro", "recall_macro", "f1_macro")


class Classification:
    name = "classification"
    gated_metrics = GATED_METRICS
    default_metrics = GATED_METRICS
    tracked = TRACKED
    lower_is_better = frozenset()  # losses: their rise is what the gate limits

    def read_labels(self, df, spec, path: Path, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        from pipeline.inputs.base import labels_of

        return labels_of(df[spec.dataset.label_column], spec, path, ids)

    def label_counts(self, labels: np.ndarray, spec) -> np.ndarray | None:
        return np.bincount(np.asarray(labels, np.int64), minlength=spec.model.num_classes)

    def decode(self, doc: Any, spec) -> None:
        return None  # the answers/ formats decode classification answers

    def decoder(self, spec) -> None:
        return None  # answers.registry.codec_for builds the format's decoder

    def tolerances(self, spec) -> tuple[float, float]:
        return spec.gate.max_output_diff, 0.0

    def model_outputs(self, name: str, scores, spec):
        from pipeline.evaluate.compare import StageOutputs

        return StageOutputs.from_scores(name, scores)

    def answer_outputs(self, name: str, outcomes: tuple, spec):
        from pipeline.stages.outcomes import stage_outputs

        return stage_outputs(name, outcomes, spec.model.num_classes)

    def compare(self, ids, labels, stages, server_ms, ctx: CompareContext):
        from pipeline.evaluate.compare import compare_stages

        return compare_stages(ids, labels, ctx.class_labels, stages, server_ms, tolerance=ctx.tolerance,
                              metric_classes=ctx.metric_classes, shared_names=ctx.shared_names,
                              by_name=ctx.by_name)

    def stage_checks(self, spec, plan, cmp, stage: str, base_name: str, labels: tuple[str, ...], why: str) -> list:
        from pipeline.evaluate.gate import agreement_checks, metric_checks, output_check

        have = cmp is not None and stage in cmp.stages and base_name in cmp.stages
        cand = cmp.stages[stage] if have else None
        base = cmp.stages[base_name] if have else None
        t = cmp.tests[stage] if have else None
        flipped = tuple(r.id for r in cmp.flipped if r.predictions.get(stage, (None,))[0] != r.predictions.get(
            base_name, (None,))[0]) if have else ()
        checks = agreement_checks(spec, t, cand, base, stage, labels, why, flipped)
        checks += metric_checks(spec, cand, base, stage, why)
        over = tuple(r.id for r in cmp.diverging if r.stage == stage) if cmp is not None else ()
        checks.append(output_check(spec, plan, t, stage, why, over))
        return checks

    def row_columns(self, prefix: str, outputs) -> dict[str, Any]:
        return {}  # report.builder writes <stage>_pred and <stage>_prob from the stages' results

    def report_sections(self, report: dict) -> list[Section]:
        return []  # the renderers' metric, confusion and flipped-row sections are classification's


TASK = Classification()
