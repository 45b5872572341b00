"""Run options: everything a run needs besides the spec, built from the CLI at the edge.

Overrides of spec fields given on the command line (``--export-mode``, ``--concurrency``,
``--rate``, ``--timeout``) are applied to the spec once, here, so every stage and the report
see one spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.spec import Spec
from pipeline.torchserve.childenv import TOKEN_ENV  # noqa: F401  (the --endpoint token; never given to a child)
DEFAULT_MODEL_STORE = Path("model_store")  # relative: resolved against the working directory at the edge
DEFAULT_REPORTS_DIR = Path("reports")


@dataclass(frozen=True)
class RunOptions:
    """The spec path and the run's options; paths are absolute by the time a run starts."""

    spec_path: Path
    reports_dir: Path = DEFAULT_REPORTS_DIR
    model_store: Path = DEFAULT_MODEL_STORE
    force: bool = False
    publish: bool = True
    prebuilt_mar: Path | None = None
    expected_sha256: str | None = None
    endpoint: str | None = None
    endpoint_token: str | None = None
    export_mode: str | None = None
    rate: float | None = None
    concurrency: int | None = None
    timeout_s: float | None = None
    baseline_report: Path | None = None
    against_last_pass: bool = False
    wait_for_lock: bool = False
    ts_config: Path | None = None  # --ts-config: the user's config.properties (serving.ts_config)
    until: str | None = None  # the last stage to run: export, handled or served (default)
    progress: Callable[[str, int, int], None] | None = None


def apply_options(spec: Spec, opts: RunOptions) -> Spec:
    """The spec with the command line's overrides applied (once, for every stage)."""
    if opts.export_mode and opts.export_mode != spec.export.mode:
        spec = spec.model_copy(update={"export": spec.export.model_copy(update={"mode": opts.export_mode})})
    replay = {}
    if opts.rate is not None:
        replay["rate"] = opts.rate
    if opts.concurrency is not None:
        replay["concurrency"] = opts.concurrency
    if replay:
        spec = spec.model_copy(update={"replay": spec.replay.model_copy(update=replay)})
    if opts.timeout_s is not None:
        spec = spec.model_copy(update={"timeout_s": opts.timeout_s})
    if opts.ts_config is not None:
        spec = spec.model_copy(update={"serving": spec.serving.model_copy(update={"ts_config": opts.ts_config})})
    return spec
