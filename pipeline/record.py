"""The record of a run: what each stage produced, frozen, in one place.

The runner replaces it stage by stage (``dataclasses.replace``); the report is built from a
record and the run's outcome, and never sees the runner's own state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.evaluate.compare import Comparison
from pipeline.evaluate.gate import GateResult
from pipeline.stages.archive import ArchiveResult
from pipeline.stages.baseline import BaselineResult
from pipeline.stages.dataset import DatasetResult
from pipeline.stages.export import ExportResult
from pipeline.stages.handled import HandledResult
from pipeline.stages.replay import ReplayResult
from pipeline.stages.serve import ServerHandle


@dataclass(frozen=True)
class RunRecord:
    """Every result a run produced so far (None: the stage did not run or did not finish)."""

    started_at: str
    spec: Any = None  # pipeline.spec.Spec
    plan: Any = None  # pipeline.run.plan.Plan
    run_dir: Path | None = None
    dataset: DatasetResult | None = None
    baseline: BaselineResult | None = None
    exported: ExportResult | None = None
    archive: ArchiveResult | None = None
    handled: HandledResult | None = None
    server: ServerHandle | None = None
    replay: ReplayResult | None = None
    served_probes: tuple = ()  # stages.probing.ProbeOutcome, one per handler probe sent to the server
    comparison: Comparison | None = None
    gate: GateResult | None = None
    prior: Any = None  # pipeline.history.prior.PriorRun
    published: Path | None = None
    publish_note: str | None = None
    release_state: str | None = None  # pending | published | rolled back (run.release); None: nothing released
    server_failures: tuple[tuple[str, ...], ...] = ()
    worker_restarts: int = 0  # TorchServe restarted a dead worker during the replay  # handler exceptions quoted from the model log
    stage_seconds: tuple[tuple[str, float], ...] = field(default_factory=tuple)
    lint: tuple | None = None  # pipeline.lint.Finding of the served config and the archive; None: not linted

    @property
    def rows(self):
        return self.dataset.rows if self.dataset is not None else None

    def seconds(self) -> dict[str, float]:
        return dict(self.stage_seconds)
