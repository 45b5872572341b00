"""Attribution: which layer a served difference comes from, read step by step along the pipeline.

    exported vs baseline          export problem (the artefact differs in-process)
    handled  vs exported          handler problem (the handler's pre/post-processing)
    handled@batchN vs handled     handler problem that depends on the batch
    served@SETTING vs served      serving problem that depends on the setting (tune's points)
    served   vs handled           serving problem (the worker's environment, dynamic batching, concurrency)

With ``--mar`` the exported stage is the archive's own model where the tool can load it
without the handler (a difference there is the archive's model); where it cannot, there is no
exported stage, the handled stage faces the baseline directly, and a difference there is
blamed on the archive (its model or its handler), never on the handler alone.

A step "differs" when a prediction changes or an output moves beyond the tolerance. The
first step that differs is blamed; later steps that differ are listed too.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.evaluate.compare import Comparison, PairedTest
from pipeline.names import Stage, StageName

# keyed by (stage, what it varies: None, "batch" or "setting")
LAYERS = {
    (Stage.EXPORTED, None): ("export problem", "the exported model already differs from the eager model in-process"),
    (Stage.HANDLED, None): ("handler problem",
                            "the handler's pre/post-processing changes the answers of the same artefact"),
    (Stage.HANDLED, "batch"): ("handler problem that depends on the batch",
                               "the handler answers differently when it gets several requests at once"),
    (Stage.SERVED, None): ("serving problem", "the served answers differ from the same handler run in-process: the "
                           "worker's environment, dynamic batching or concurrency"),
    (Stage.SERVED, "setting"): ("serving problem that depends on the setting",
                                "the served answers change with the serving setting (workers, batch size and "
                                "delay, threads, concurrency): dynamic batching or the worker's threads"),
}


FROM_MAR_MODEL = ("archive problem", "the archive's own model (--mar), loaded without its handler, differs from "
                  "the spec's model in-process: its weights or its code are not the spec's")
FROM_MAR = ("archive problem", "the archive given with --mar answers differently from the spec's model: its "
            "model or its handler (the archive's model is read only through its handler, so the two are not told "
            "apart); rebuild the archive from the spec or check its weights")


@dataclass(frozen=True)
class Step:
    stage: str
    reference: str
    layer: str
    why: str
    differs: bool
    disagreeing: int
    max_output_diff: float | None
    quantity: str | None


@dataclass(frozen=True)
class Attribution:
    """The blamed layer (None when every stage matches the baseline) and every step's finding."""

    layer: str | None
    summary: str
    steps: tuple[Step, ...]


def _layer(stage: StageName | str) -> tuple[str, str]:
    """The layer a step of this stage blames: by the stage and whether it ran at another batch (any N)."""
    try:
        name = StageName.of(stage)
    except ValueError:
        return "unknown layer", ""
    varies = "setting" if name.setting is not None else "batch" if name.batch is not None else None
    return LAYERS.get((name.stage, varies), ("unknown layer", ""))


def step_differs(t: PairedTest, tolerance: float) -> bool:
    beyond = getattr(t, "beyond", None)  # a task whose tolerance is not one absolute number counts its rows
    if beyond is not None:  # (tasks/values.py: regression's atol + rtol x |reference|)
        return t.disagreeing > 0 or beyond > 0
    moved = t.output.max_abs is not None and t.output.max_abs > tolerance
    return t.disagreeing > 0 or moved


def attribute(cmp: Comparison, tolerance: float, from_mar: bool = False) -> Attribution:
    """Blame the first step along the pipeline whose answers differ from the step before.

    Args:
        cmp: the comparison (its ``steps``: each stage against the one before it).
        tolerance: the output tolerance (``gate.max_output_diff``).
        from_mar: the run validates a prebuilt archive (--mar): the handled stage is blamed on the archive.

    Returns:
        The layer, a one-line summary, and each step's finding.
    """
    steps = []
    for stage, t in cmp.steps.items():
        layer, why = _layer(stage)
        if from_mar and stage == Stage.EXPORTED:
            layer, why = FROM_MAR_MODEL
        elif from_mar and stage == Stage.HANDLED and t.reference == Stage.BASELINE:
            layer, why = FROM_MAR
        steps.append(Step(stage, t.reference, layer, why, step_differs(t, tolerance), t.disagreeing,
                          t.output.max_abs, t.output.quantity))
    bad = [s for s in steps if s.differs]
    if not steps:  # only the baseline has results (a run that stopped early): nothing was compared
        return Attribution(None, "nothing to attribute: no stage after the baseline has results", ())
    if not bad:
        return Attribution(None, f"{steps[-1].stage} matches the baseline at every step", tuple(steps))
    first = bad[0]
    diff = f", max {first.quantity} difference {first.max_output_diff:.3g}" if first.max_output_diff is not None else ""
    summary = (f"{first.layer}: {first.why} ({first.stage} vs {first.reference}: {first.disagreeing} row(s) with "
               f"another prediction{diff})")
    if len(bad) > 1:
        summary += "; also differs: " + ", ".join(f"{s.stage} vs {s.reference}" for s in bad[1:])
    return Attribution(first.layer, summary, tuple(steps))
