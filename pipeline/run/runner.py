"""The whole validation: baseline, export, archive, serve, replay, compare, gate, report.

``run_validation`` calls each stage in order and always writes a report into the run
folder, also when a stage fails or the run is interrupted; such a report is marked
incomplete and never reads as a pass.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.report import builder as report_mod
from pipeline.stages.archive import ArchiveConfig, ArchiveResult, build_archive, check_publish_target
from pipeline.stages.baseline import BaselineResult, load_model, score_baseline
from pipeline.evaluate.compare import Comparison, StageOutputs, compare_stages
from pipeline.spec import DEFAULT_MODEL_STORE, DEFAULT_REPORTS_DIR, Spec, load_spec
from pipeline.stages.dataset import Dataset, load_dataset, load_training_hashes
from pipeline.errors import Interrupted, PipelineError, ReplayError, ReportError
from pipeline.stages.export import ExportResult, export_model
from pipeline.evaluate.gate import GateInputs, GateResult, evaluate_gate
from pipeline.history.store import HISTORY_FILE, last_passing, record_run
from pipeline.history.prior import PriorRun, load_prior_report
from pipeline.stages.replay import ReplayResult, replay_config_for, replay_dataset
from pipeline.stages.serve import ServeConfig, ServerHandle, explain_failure, remote_handle, serve_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """Everything a run needs besides the spec; built from the CLI at the edge."""

    spec_path: Path
    reports_dir: Path = DEFAULT_REPORTS_DIR
    model_store: Path = DEFAULT_MODEL_STORE
    force: bool = False
    prebuilt_mar: Path | None = None
    expected_sha256: str | None = None
    endpoint: str | None = None
    endpoint_token: str | None = None
    export_mode: str | None = None
    rate: float | None = None
    concurrency: int | None = None
    show_progress: bool = False
    baseline_report: Path | None = None
    against_last_pass: bool = False


@dataclass
class RunState:
    """What the stages produced so far; the report is built from whatever is here."""

    spec: Spec | None = None
    run_dir: Path | None = None
    data: Dataset | None = None
    baseline: BaselineResult | None = None
    exported: ExportResult | None = None
    archive: ArchiveResult | None = None
    server: ServerHandle | None = None
    replay: ReplayResult | None = None
    comparison: Comparison | None = None
    gate: GateResult | None = None
    leaked_ids: tuple[str, ...] | None = None
    prior: PriorRun | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    started_at: str = ""


@dataclass(frozen=True)
class RunOutcome:
    status: str  # passed | failed | error | interrupted
    exit_code: int
    run_dir: Path | None
    report: dict | None
    error: BaseException | None = None


@contextmanager
def _timed(state: RunState, stage: str) -> Iterator[None]:
    t0 = time.perf_counter()
    log.info("stage %s: start", stage)
    try:
        yield
    finally:
        state.stage_seconds[stage] = round(time.perf_counter() - t0, 3)
        log.info("stage %s: %.2f s", stage, state.stage_seconds[stage])


def _make_run_dir(reports_dir: Path, name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    try:
        reports_dir.mkdir(parents=True, exist_ok=True)
        run_dir = reports_dir / f"{name}-{stamp}-{os.getpid()}"
        run_dir.mkdir()
        probe = run_dir / ".writable"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ReportError(
            f"cannot write reports under {reports_dir}: {e.strerror or e}. "
            "Choose a writable folder with --reports-dir or fix its permissions."
        ) from e
    return run_dir


def _effective_spec(spec: Spec, opts: RunOptions) -> Spec:
    if opts.export_mode and opts.export_mode != spec.export.mode:
        spec = spec.model_copy(update={"export": spec.export.model_copy(update={"mode": opts.export_mode})})
    return spec


def _served_outputs(replay: ReplayResult, n_classes: int) -> tuple[StageOutputs, np.ndarray]:
    n = len(replay.rows)
    probs = np.full((n, n_classes), np.nan)
    logits = np.full((n, n_classes), np.nan)
    lat = np.full(n, np.nan)
    server = np.full(n, np.nan)
    has_logits = False
    for r in replay.rows:
        if r.is_ok:
            probs[r.index] = r.probabilities
            if r.logits is not None:
                logits[r.index] = r.logits
                has_logits = True
            lat[r.index] = r.latency_ms
        if r.server_ms is not None:
            server[r.index] = r.server_ms
    preds = np.array([r.prediction if r.is_ok else -1 for r in replay.rows], dtype=np.int64)
    return StageOutputs("served", preds, probs, logits if has_logits else None, lat), server


def _compare_and_gate(state: RunState) -> None:
    spec, data, base = state.spec, state.data, state.baseline
    stages = [StageOutputs.from_scores("baseline", base.scores)]
    ex = state.exported
    if ex is not None:
        stages.append(StageOutputs.from_scores("exported", ex.scores))
    server_ms = None
    if state.replay is not None:
        served, server_ms = _served_outputs(state.replay, spec.model.num_classes)
        stages.append(served)
    state.comparison = compare_stages(data.ids, data.labels, spec.class_labels, stages, server_ms,
                                      atol=spec.gate.max_output_diff)
    rp = state.replay
    failed_probes = ()
    if ex is not None:
        failed_probes = tuple(f"{p.name} @ batch {p.batch_size}: max diff {p.max_abs_diff:.3g}"
                              + (f" ({p.error})" if p.error else "")
                              for p in ex.consistency.probes if not p.is_ok)
    inputs = GateInputs(
        export_max_abs_diff=ex.consistency.max_abs_diff if ex else None,
        export_diverging_ids=ex.consistency.diverging_ids if ex else (),
        export_failed_probes=failed_probes,
        export_size_ratio=ex.size_bytes / base.weights_size_bytes if ex and base.weights_size_bytes else None,
        export_latency_ratio=next((t.ratio for t in ex.timings if t.batch_size == 1), None) if ex else None,
        replay_error_rate=rp.error_rate if rp else None,
        replay_errors=rp.error_counts() if rp else {},
        replay_complete=rp.is_complete if rp else False,
        replay_abort_reason=rp.abort_reason if rp else None,
        eager_p50_ms=float(np.median(base.scores.latencies_ms)),
        leaked_ids=state.leaked_ids,
        prior_metrics=state.prior.metrics if state.prior else None,
        prior_label=f"run of {state.prior.started_at}" if state.prior else "previous run",
    )
    state.gate = evaluate_gate(spec.gate, state.comparison, inputs)


def _leakage(spec: Spec, data: Dataset) -> tuple[str, ...] | None:
    train = load_training_hashes(spec)
    if train is None:
        return None
    train_set = set(train)
    return tuple(i for i, h in zip(data.ids, data.content_hashes) if h in train_set)


def _stages(state: RunState, opts: RunOptions, stack: ExitStack) -> None:
    spec = state.spec
    archive_cfg = ArchiveConfig(work_dir=state.run_dir / "archive", model_store=opts.model_store,
                                force=opts.force, prebuilt_mar=opts.prebuilt_mar,
                                expected_sha256=opts.expected_sha256)
    if opts.endpoint is None:
        check_publish_target(spec, archive_cfg)
    with _timed(state, "dataset"):
        state.data = load_dataset(spec)
        state.leaked_ids = _leakage(spec, state.data)
    with _timed(state, "baseline"):
        model = load_model(spec)
        state.baseline = score_baseline(spec, model, state.data)
    with _timed(state, "export"):
        state.exported = export_model(spec, model, state.data, state.baseline.scores, state.run_dir / "export")
    if opts.endpoint is None:
        with _timed(state, "archive"):
            state.archive = build_archive(spec, archive_cfg, state.exported.path)
        with _timed(state, "serve"):
            state.server = stack.enter_context(serve_model(spec, ServeConfig(
                run_dir=state.run_dir, mar_path=state.archive.mar_path,
                startup_timeout_s=spec.serving.startup_timeout_s,
                ports=None if spec.serving.ports is None else _ports(spec))))
        metrics_log = state.server.log_dir / "model_metrics.log"
    else:
        state.server = remote_handle(opts.endpoint, spec.name, opts.endpoint_token)
        metrics_log = None
    with _timed(state, "replay"):
        cfg = replay_config_for(spec, state.server.predict_url, state.server.inference_token, metrics_log,
                                opts.show_progress, opts.rate, opts.concurrency)
        state.replay = replay_dataset(cfg, state.data)


def _ports(spec: Spec):
    from pipeline.stages.serve import Ports

    p = spec.serving.ports
    return Ports(p.inference, p.management, p.metrics, p.grpc_inference, p.grpc_management)


def run_validation(opts: RunOptions) -> RunOutcome:
    """Run every stage and write the report; never raises for a pipeline failure.

    Args:
        opts: the spec path and run options.

    Returns:
        The outcome: passed (exit 0), failed gate (1), bad input (2), runtime failure (3),
        or interrupted (130 for SIGINT, 143 for SIGTERM), with the report written.
    """
    state = RunState(started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    error: BaseException | None = None
    status = "error"
    try:
        state.spec = _effective_spec(load_spec(opts.spec_path), opts)
        prior_path = opts.baseline_report
        if prior_path is None and opts.against_last_pass:
            last = last_passing(opts.reports_dir / HISTORY_FILE, state.spec.name)
            if last is None:
                raise ReportError(
                    f"--against-last-pass: no passing run of {state.spec.name} in "
                    f"{opts.reports_dir / HISTORY_FILE}. Run once without it to record a baseline."
                )
            prior_path = Path(last.run_dir)
        if prior_path is not None:
            state.prior = load_prior_report(prior_path, state.spec.name)
        state.run_dir = _make_run_dir(opts.reports_dir, state.spec.name)
        with ExitStack() as stack:  # leaving it stops the server before the comparison
            _stages(state, opts, stack)
        with _timed(state, "compare"):
            _compare_and_gate(state)
        status = "passed" if state.gate.passed else "failed"
        server_error = _server_failure(state)
        if server_error is not None:
            status, error = "error", server_error
    except PipelineError as e:
        error = e
        status = "error"
    except (KeyboardInterrupt, Interrupted) as e:
        error = e
        status = "interrupted"
    if error is not None and state.data is not None and state.baseline is not None and state.comparison is None:
        try:
            _compare_and_gate(state)
        except Exception as e:  # a partial report must still be written
            log.warning("could not compare the partial results: %s", e)
    exit_code = _exit_code(status, error)
    report = None
    if state.run_dir is not None:
        report = report_mod.build_report(state, status, exit_code, error)
        report_mod.write_reports(state.run_dir, report, report_mod.build_rows(state))
        try:
            record_run(opts.reports_dir / HISTORY_FILE, report)
        except ReportError as e:  # history is for trends; it must never break a run
            log.warning("could not record the run: %s", e)
    return RunOutcome(status=status, exit_code=exit_code, run_dir=state.run_dir, report=report, error=error)


# Failures of the server, not of the model: the run cannot vouch for the model (exit 3).
SERVER_FAILURES = ("worker_died", "timeout", "connection_error", "not_found", "unauthorized")


def _server_failure(state: RunState) -> ReplayError | None:
    rp = state.replay
    if rp is None:
        return None
    counts = {k: v for k, v in rp.error_counts().items() if k in SERVER_FAILURES}
    if rp.is_complete and not counts:
        return None
    focus = r"did not respond|responseTimeout|Worker died|died|Connection refused|Address"
    logs = explain_failure(state.server.log_dir, focus) if state.server and state.server.log_dir else []
    what = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    if not rp.is_complete:
        msg = f"replay incomplete: {rp.abort_reason}. {rp.answered} of {len(rp.rows)} rows answered."
    else:
        msg = (f"the server failed on {sum(counts.values())} of {len(rp.rows)} rows ({what}); "
               "this is a serving failure, not a model difference: see the causes below and the TorchServe logs.")
    return ReplayError(msg, details=logs[:12])


def _exit_code(status: str, error: BaseException | None) -> int:
    if status == "passed":
        return 0
    if status == "failed":
        return 1
    if status == "interrupted":
        if isinstance(error, Interrupted) and error.signum == signal.SIGTERM:
            return 143
        return 130
    if isinstance(error, PipelineError):
        return error.exit_code
    return 3
