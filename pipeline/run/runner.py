"""The whole validation: plan, then dataset, baseline, export, archive, handled, serve, replay, compare, gate.

``run_validation`` runs the plan's stages in order and always writes a report into the run
folder, also when a stage fails, the run is interrupted, or package-validate itself breaks
(an internal error, exit 3, with the traceback's tail). Such a report is marked incomplete
and never reads as a pass. The checked .mar is published only when the gate passes.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
import traceback
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.answers.classes import names_classes
from pipeline.errors import ConfigError, DeadlineError, Interrupted, InternalError, PipelineError, RecordError, \
    ReplayError, ReportError
from pipeline.evaluate.attribution import attribute
from pipeline.evaluate.compare import StageOutputs
from pipeline.evaluate.gate import GateInputs, StageFacts, evaluate_gate
from pipeline.history.prior import load_prior_report
from pipeline.inputs.registry import handler_probes
from pipeline.history.store import HISTORY_FILE, last_passing
from pipeline.model.loading import load_model
from pipeline.names import Stage
from pipeline.record import RunRecord
from pipeline.run.options import TOKEN_ENV, RunOptions, apply_options
from pipeline.run.phases import ports_of, replay_config, serve_at
from pipeline.run.plan import Plan, plan_run
from pipeline.run.publish import StoreLock, check_publish_target
from pipeline.report.writer import free_space
from pipeline.run.release import RunOutcome, close_run
from pipeline.spec import load_spec
from pipeline.stages.archive import ArchiveConfig, build_archive, extract_archived_model
from pipeline.stages.baseline import score_baseline
from pipeline.stages.dataset import largest_body, load_dataset
from pipeline.stages.export import export_model, verify_archived
from pipeline.stages.handled import HandledConfig, run_handled, with_inner
from pipeline.stages.outcomes import RowOutcome
from pipeline.stages.replay import ReplayConfig, preflight, probe_served, replay_dataset, with_served_causes
from pipeline.stages.serve import remote_handle
from pipeline.tasks.base import CompareContext
from pipeline.tasks.registry import task_of
from pipeline.torchserve.config import lint_run
from pipeline.wire import worker_view
from pipeline.torchserve.errors import SERVER_FAILURES
from pipeline.torchserve.logs import explain_failure, handler_exceptions, log_offset, logged_causes, \
    model_log_offset, worker_recoveries
from pipeline.torchserve.process import Ports, check_ports, find_java

log = logging.getLogger(__name__)

StageEvent = Callable[[str, str, dict], None]  # stage, "start" | "end", facts


class _Run:
    """Holds the record while the stages run; every stage replaces it with a richer one."""

    def __init__(self, opts: RunOptions, events: StageEvent | None) -> None:
        self.opts = opts
        self.record = RunRecord(started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self.events = events or (lambda stage, phase, facts: None)
        self.current = "start"
        self.started = time.monotonic()
        self.lock: StoreLock | None = None

    def update(self, **changes) -> None:
        self.record = replace(self.record, **changes)

    @contextmanager
    def timed(self, stage: str) -> Iterator[dict]:
        facts: dict = {}
        t0 = time.perf_counter()
        self.current = stage
        log.info("stage %s: start", stage)
        self.events(stage, "start", facts)
        try:
            yield facts
        finally:
            seconds = round(time.perf_counter() - t0, 3)
            self.update(stage_seconds=self.record.stage_seconds + ((stage, seconds),))
            facts["seconds"] = seconds
            self.events(stage, "end", facts)
            log.info("stage %s: %.2f s", stage, seconds)


RUN_DIR_ATTEMPTS = 1000  # suffixes -2, -3, ... tried when a run of this process took the name this second


def _make_run_dir(reports_dir: Path, name: str) -> Path:
    """A new, empty, writable run folder ``NAME-STAMP-PID[-N]`` under ``reports_dir``.

    The stamp has whole seconds and the pid tells processes apart; two runs of one process in the
    same second (a test, an in-process caller) would share the name, so ``mkdir`` is retried with
    ``-2``, ``-3``, ... The names stay readable and sort in start order ("-123" < "-123-2").
    """
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = f"{name}-{stamp}-{os.getpid()}"
    try:
        reports_dir.mkdir(parents=True, exist_ok=True)
        for n in range(1, RUN_DIR_ATTEMPTS + 1):
            run_dir = reports_dir / (base if n == 1 else f"{base}-{n}")
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"{reports_dir / base} and {RUN_DIR_ATTEMPTS - 1} suffixed names all exist")
        probe = run_dir / ".writable"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ReportError(
            f"cannot write reports under {reports_dir}: {e.strerror or e}. "
            "Choose a writable folder with --reports-dir or fix its permissions."
        ) from e
    return run_dir


def _ports(plan: Plan) -> Ports | None:
    return ports_of(plan.spec)


def _stages(run: _Run, stack: ExitStack) -> None:
    opts, plan = run.opts, run.record.plan
    spec = plan.spec
    with run.timed("dataset") as facts:
        dataset = load_dataset(spec)
        run.update(dataset=dataset)
        facts.update(rows=len(dataset.rows), kind=dataset.rows.kind)
    rows = dataset.rows
    if opts.endpoint is not None:
        _check_endpoint(run, rows)
    with run.timed("baseline") as facts:
        model = load_model(spec)
        baseline = score_baseline(spec, model, rows, plan.reference)
        run.update(baseline=baseline)
        facts.update(reference=plan.reference.name)
        if spec.model.task == "classification":  # the other tasks' figures come with the comparison
            facts.update(accuracy=float((baseline.scores.predictions == rows.labels).mean()))
    # Probes start from the row the baseline is surest of, so a lossless variant has no excuse to differ.
    surest = int(np.nanargmax(np.nanmax(baseline.scores.probabilities, axis=1)))
    probes = handler_probes(spec, rows, surest) if spec.handler.probes else []
    exported = None  # --mar: the archive's own model, checked after the archive stage where it loads alone
    if opts.prebuilt_mar is None:
        with run.timed("export") as facts:
            exported = export_model(spec, model, rows, baseline, run.record.run_dir / "export")
            run.update(exported=exported)
            facts.update(mode=exported.mode, max_abs_diff=exported.consistency.max_abs_diff)
        if opts.until == "export":  # no archive: the config alone is linted
            run.update(lint=lint_run(plan, None, _largest_request(dataset.rows, plan.codec), plan.codec.envelope.service_envelope))
            return
    with run.timed("archive") as facts:
        archive = build_archive(spec, ArchiveConfig(work_dir=run.record.run_dir / "archive", prebuilt_mar=opts.prebuilt_mar,
                                                    expected_sha256=opts.expected_sha256),
                                plan.handler, exported, baseline.input_shape)
        run.update(archive=archive)
        facts.update(size_bytes=archive.size_bytes)
    run.update(lint=lint_run(plan, archive.mar_path, _largest_request(dataset.rows, plan.codec), plan.codec.envelope.service_envelope))
    if opts.prebuilt_mar is not None and plan.archive_model is not None:
        with run.timed("export") as facts:
            path, model_file = extract_archived_model(archive.mar_path, archive.manifest, run.record.run_dir / "export")
            exported = verify_archived(spec, model, rows, baseline, path, model_file)
            run.update(exported=exported)
            facts.update(mode=exported.mode, max_abs_diff=exported.consistency.max_abs_diff)
    if opts.until == "export":
        return
    envelope = plan.codec.envelope.service_envelope
    with run.timed("handled") as facts:
        handled = run_handled(HandledConfig(
            work_dir=run.record.run_dir / "handled", mar_path=archive.mar_path, model_name=spec.name,
            batch_size=spec.serving.batch_size, load_timeout_s=spec.serving.startup_timeout_s,
            response_timeout_s=spec.serving.response_timeout_s, service_envelope=envelope,
            secret_env=spec.serving.secret_env), rows, plan.codec, probes)
        run.update(handled=handled)
        facts.update(answered=sum(r.is_ok for r in handled.batch1), rows=len(rows),
                     probes_failed=sum(not p.passed for p in handled.probes))
    codec = handled.codec
    if opts.until == "handled":
        return
    if opts.endpoint is None:
        with run.timed("serve") as facts:
            server = stack.enter_context(serve_at(spec, None, archive.mar_path, run.record.run_dir, envelope=envelope,
                                                  user_config=plan.ts_config))
            run.update(server=server)
            facts.update(startup_s=server.startup_s)
        metrics_log = server.log_dir / "model_metrics.log"
        frontend_log = server.log_dir / "ts_metrics.log"
    else:
        server = remote_handle(opts.endpoint, spec.name, opts.endpoint_token)
        run.update(server=server)
        metrics_log = frontend_log = None
    replay_cfg = replace(_replay_config(run, server.inference_url, server.inference_token, codec, metrics_log),
                         frontend_log=frontend_log)
    ts_log_start, model_log_start = log_offset(server.log_dir), model_log_offset(server.log_dir)
    with run.timed("replay") as facts:
        replay = replay_dataset(replay_cfg, rows)
        run.update(worker_restarts=worker_recoveries(server.log_dir, ts_log_start))
        run.update(replay=replay)
        facts.update(answered=replay.answered, rows=len(rows), rps=replay.throughput_rps)
        # The tracebacks of the replay's failed rows, read before the probes add theirs to model_log.log.
        row_errors = replay.error_counts().get("handler_error", 0) if server.log_dir is not None else 0
        # (a failed batch logs one traceback for all its rows: at least ceil(errors / batch size) are due)
        row_causes = (_await_causes(server.log_dir, model_log_start, -(-row_errors // spec.serving.batch_size))
                      if row_errors else [])
        probe_log_start = model_log_offset(server.log_dir)
        if probes and replay.is_complete:
            run.update(served_probes=probe_served(replay_cfg, probes, replay.rows, replay.codec or codec))
        if server.log_dir is not None and replay.error_counts().get("handler_error"):
            run.update(server_failures=tuple(tuple(x) for x in handler_exceptions(server.log_dir)))
        probe_errors = sum(p.message.startswith("handler_error") for p in run.record.served_probes)
        probe_causes = _await_causes(server.log_dir, probe_log_start, probe_errors) if probe_errors else []
        if row_causes or probe_causes:
            quoted, served_probes = with_served_causes(run.record.replay, run.record.served_probes, row_causes,
                                                       probe_causes, handled.batch1)
            run.update(replay=quoted, served_probes=served_probes)


def _largest_request(rows, codec) -> tuple[int, str] | None:
    """The largest request body the replay will send, bytes and row id: the row's body, inside its KServe
    envelope where the spec names one (what TorchServe's max_request_size is measured against)."""
    if codec.envelope.service_envelope is None:
        return largest_body(rows)
    sizes = [len(codec.request(b, rows.content_type, worker_view(b, rows.content_type))[0])
             for b in (rows.body(i) for i in range(len(rows)))]
    if not sizes:
        return None
    i = max(range(len(sizes)), key=sizes.__getitem__)
    return sizes[i], str(rows.ids[i])


CAUSES_WAIT_S = 3.0


def _await_causes(log_dir: Path, since: int, wanted: int) -> list[str]:
    """The handler exceptions logged since ``since``: the worker's stdout reaches model_log.log a moment
    after its answer, so a stage with ``wanted`` handler errors waits (bounded) for that many tracebacks."""
    deadline = time.monotonic() + CAUSES_WAIT_S
    causes = logged_causes(log_dir, since)
    while len(causes) < wanted and time.monotonic() < deadline:
        time.sleep(0.05)
        causes = logged_causes(log_dir, since)
    return causes


def _replay_config(run: _Run, url_base: str, token: str | None, codec, metrics_log) -> ReplayConfig:
    return replay_config(run.record.plan.spec, url_base, token, codec, metrics_log, progress=run.opts.progress)


def _check_endpoint(run: _Run, rows) -> None:
    """A server this run did not start: URL, token and model name answer before any work is done."""
    plan = run.record.plan
    cfg = _replay_config(run, run.opts.endpoint.rstrip("/"), run.opts.endpoint_token, plan.codec, None)
    try:
        status, why = preflight(replace(cfg, request_timeout_s=min(cfg.request_timeout_s, 30.0), max_retries=2), rows)
    except ReplayError as e:
        raise ConfigError(f"--endpoint {run.opts.endpoint}: {e.message}. Give the inference URL, e.g. "
                          "https://host:8080 (the tool adds /predictions/NAME or the KServe path).") from e
    if status == 200:
        return
    cls = why.split(":", 1)[0]
    url = cfg.url
    if cls == "unauthorized":
        token = "is not set" if not run.opts.endpoint_token else "was refused"
        raise ConfigError(f"--endpoint {url}: the token {token} ({why}). Put the server's inference token in "
                          f"${TOKEN_ENV} and re-run.")
    if cls == "not_found":
        raise ConfigError(f"--endpoint {url}: no model {plan.spec.name!r} is served there ({why}). The spec's name "
                          "must be the model's name on the server; check the URL and the envelope (answers.envelope).")
    if cls in ("connection_error", "timeout"):
        raise ConfigError(f"--endpoint {url}: the server does not answer ({why}). Check the URL, the port and "
                          "that the server runs; for https, replay.ca_file names a private CA.")
    log.info("endpoint preflight answered %s (%s); the replay will account for it", status, why)


def _outputs(record: RunRecord) -> tuple[list[StageOutputs], np.ndarray | None]:
    plan, c = record.plan, record.plan.spec.model.num_classes
    spec = plan.spec
    task = task_of(spec)  # what each stage's outputs are is the task's (tasks/<task>.py)
    stages = [task.model_outputs(Stage.BASELINE, record.baseline.scores, spec)]
    if record.exported is not None:
        stages.append(task.model_outputs(Stage.EXPORTED, record.exported.scores, spec))
    if record.handled is not None:
        h = record.handled
        stages.append(with_inner(task.answer_outputs(Stage.HANDLED, h.batch1, spec), h.inner_batch1, c))
        if h.batched is not None and plan.batched_stage:
            stages.append(with_inner(task.answer_outputs(plan.batched_stage, h.batched, spec), h.inner_batched, c))
    server_ms = None
    if record.replay is not None:
        stages.append(task.answer_outputs(Stage.SERVED, record.replay.rows, spec))
        server_ms = np.array([r.server_ms if r.server_ms is not None else np.nan for r in record.replay.rows])
    return stages, server_ms


def _answered_facts(outcomes: tuple[RowOutcome, ...], complete: bool, abort: str | None) -> StageFacts:
    errors: dict[str, int] = {}
    for o in outcomes:
        if not o.is_ok:
            errors[o.error_class or "unknown"] = errors.get(o.error_class or "unknown", 0) + 1
    n = len(outcomes)
    return StageFacts(error_rate=sum(errors.values()) / n if n else None, errors=errors, complete=complete,
                      abort_reason=abort)


def warmup_differences(replay, tolerance: float, rtol: float = 0.0) -> tuple[int, tuple[str, ...]]:
    """Rows answered in the warm-up and in the replay, and those whose two answers differ (beyond
    ``tolerance + rtol * |steady|``: the task's tolerance, ``Task.tolerances``)."""
    checked, differing = 0, []
    for warm in replay.warmup_answers:
        steady = replay.rows[warm.index]
        if not (warm.is_ok and steady.is_ok):
            continue
        checked += 1
        a, b = warm.prediction, steady.prediction
        pair = [(x, y) for x, y in ((a.logits, b.logits), (a.probabilities, b.probabilities))
                if x is not None and y is not None]
        diff = float(np.nanmax(np.abs(pair[0][0] - pair[0][1]))) if pair else 0.0
        excess = float(np.nanmax(np.abs(pair[0][0] - pair[0][1]) - rtol * np.abs(pair[0][1]))) if pair else 0.0
        if a.index != b.index or excess > tolerance:
            differing.append(f"{warm.id}: warm-up class {a.index}, steady class {b.index}, max output diff {diff:.3g}")
    return checked, tuple(differing)


def _gate_inputs(record: RunRecord) -> GateInputs:
    ex, base, plan = record.exported, record.baseline, record.plan
    failed, warned, probes_run = {}, {}, []
    if ex is not None and plan.spec.export.probe:
        probes_run.append(Stage.EXPORTED)
        failed[Stage.EXPORTED] = tuple(
            f"{p.name} @ batch {p.batch_size}: max diff {p.max_abs_diff:.3g}" + (f" ({p.error})" if p.error else "")
            for p in ex.consistency.failed_probes)
    for stage, outcomes in ((Stage.HANDLED, record.handled.probes if record.handled else ()),
                            (Stage.SERVED, record.served_probes)):
        if outcomes:
            probes_run.append(stage)
            failed[stage] = tuple(p.line() for p in outcomes if not p.passed)
            warned[stage] = tuple(f"{p.probe}: {p.warning}" for p in outcomes if p.passed and p.warning)
    answered = {}
    if record.handled is not None:
        answered[Stage.HANDLED] = _answered_facts(record.handled.batch1, True, None)
        if record.handled.batched is not None and plan.batched_stage:
            answered[plan.batched_stage] = _answered_facts(record.handled.batched, True, None)
    if record.replay is not None:
        rp = record.replay
        answered[Stage.SERVED] = _answered_facts(rp.rows, rp.is_complete, rp.abort_reason)
    not_run = {s: "the run stopped before this stage finished" for s in plan.stages}
    warm_checked, warm_diff = (warmup_differences(record.replay, *task_of(plan.spec).tolerances(plan.spec))
                               if record.replay is not None else (None, ()))
    return GateInputs(
        warmup_checked=warm_checked, warmup_differing=warm_diff,
        export_size_ratio=ex.size_bytes / base.weights_size_bytes if ex and base.weights_size_bytes else None,
        export_latency_ratio=next((t.ratio for t in ex.timings if t.batch_size == 1), None) if ex else None,
        export_latency_untimed=getattr(ex, "untimed_reason", "") if ex is not None else "",
        failed_probes=failed, warned_probes=warned, probes_run=tuple(probes_run), answered=answered,
        eager_p50_ms=float(np.nanmedian(base.scores.latencies_ms)),
        leaked_ids=record.dataset.leaked_ids if record.dataset else None,
        prior_metrics=record.prior.metrics if record.prior else None,
        prior_label=f"run of {record.prior.started_at}" if record.prior else "previous run",
        not_run=not_run,
        lint_findings=getattr(record, "lint", None),  # (the gate-input tests build records of their own)
    )


def compare_stages(task, ids, labels, stages: list[StageOutputs], server_ms, ctx: CompareContext):
    """The task's comparison of every stage (``tasks.base``: classification's is
    ``evaluate.compare.compare_stages``); one name for the run's comparison step."""
    return task.compare(ids, labels, stages, server_ms, ctx)


def compare_and_gate(record: RunRecord) -> RunRecord:
    """The record with every stage compared with the baseline and the gate evaluated on the plan."""
    stages, server_ms = _outputs(record)
    spec = record.plan.spec
    cmap = record.plan.class_map
    by_name = frozenset(s.name for s in stages if s.name not in (Stage.BASELINE, Stage.EXPORTED)
                        and names_classes(_codec_of(record, s.name).format))
    ctx = CompareContext(cmap.labels, spec.gate.max_output_diff, spec.gate.metric_classes,
                         shared_names=cmap.shared_names(), by_name=by_name, spec=spec)
    cmp = compare_stages(task_of(spec), record.rows.ids, record.rows.labels, stages, server_ms, ctx)
    gate = evaluate_gate(spec.gate, record.plan.gate, cmp, _gate_inputs(record))
    return replace(record, comparison=cmp, gate=gate)


def _codec_of(record: RunRecord, stage: str):
    """The answer codec a stage's answers were read with (settled by its first answer under auto)."""
    if stage == Stage.SERVED and record.replay is not None and record.replay.codec is not None:
        return record.replay.codec
    return record.handled.codec if record.handled is not None else record.plan.codec


def _compare_and_gate(run: _Run) -> None:
    run.record = compare_and_gate(run.record)


def _server_failure(record: RunRecord) -> ReplayError | None:
    rp = record.replay
    if rp is None:
        return None
    counts = {k: v for k, v in rp.error_counts().items() if k in SERVER_FAILURES}
    if record.worker_restarts and rp.is_complete and not counts:
        return ReplayError(
            f"the worker died {record.worker_restarts} time(s) during the replay; TorchServe restarted it and "
            f"re-queued its requests, so every row was answered, but a worker that dies under load is a serving "
            f"failure, not a verdict on the model. See {record.server.log_dir}/ts_log.log and model_log.log.",
            details=explain_failure(record.server.log_dir, r"died|Backend worker|recovery")[:8])
    if rp.is_complete and not counts:
        return None
    focus = r"did not respond|responseTimeout|Worker died|died|Connection refused|Address"
    logs = explain_failure(record.server.log_dir, focus) if record.server and record.server.log_dir else []
    what = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    if not rp.is_complete:
        msg = f"replay incomplete: {rp.abort_reason}. {rp.answered} of {len(rp.rows)} rows answered."
    else:
        msg = (f"the server failed on {sum(counts.values())} of {len(rp.rows)} rows ({what}); "
               "this is a serving failure, not a model difference: see the causes below and the TorchServe logs.")
        if "unauthorized" in counts and record.server and not record.server.started_by_pipeline:
            msg += " The token comes from $PACKAGE_VALIDATE_TOKEN: check it."
    return ReplayError(msg, details=logs[:12])


def _disk_full(e: BaseException) -> RecordError | None:
    """A stage's write that the file system refused (full, over quota, read-only): the run's folder, not a bug."""
    if not isinstance(e, OSError) or e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return None
    where = next((p for p in Path(e.filename).parents if p.is_dir()), None) if e.filename else None
    err = RecordError(f"could not write {e.filename or 'a file of the run'}: {e.strerror} "
                      f"({free_space(where) if where else 'free space unknown'} on that file system). Free space "
                      "there or choose another --reports-dir, then re-run; nothing was published.")
    err.__cause__ = e
    return err


TOOL_DIR = str(Path(__file__).resolve().parents[1]) + os.sep  # the pipeline package
TAIL_FRAMES = 5


def traceback_tail(e: BaseException) -> list[str]:
    """The frames of a tool bug worth reading, ending at the tool's own frame.

    The innermost frames are often torch's or the user's (the tool called into them); the tail
    ends at the last frame in ``pipeline/``, the tool's line that made the call, and a first line
    names where below it the exception was raised.
    """
    frames = traceback.extract_tb(e.__traceback__)
    own = [i for i, f in enumerate(frames) if os.path.realpath(f.filename).startswith(TOOL_DIR)]
    last = own[-1] if own else len(frames) - 1
    out = []
    if 0 <= last < len(frames) - 1:
        inner = frames[-1]
        out.append(f"raised {len(frames) - 1 - last} frame(s) below the tool's call, innermost "
                   f"{_short_file(inner.filename)}:{inner.lineno} in {inner.name}: {type(e).__name__}: {e}")
    else:
        out.append(f"{type(e).__name__}: {e}")
    for f in frames[max(0, last - TAIL_FRAMES + 1): last + 1]:
        out.append(f"{_short_file(f.filename)}:{f.lineno} in {f.name}" + (f": {f.line.strip()}" if f.line else ""))
    return out


def _short_file(filename: str) -> str:
    real = os.path.realpath(filename)
    if real.startswith(TOOL_DIR):
        return "pipeline/" + real[len(TOOL_DIR):]
    if "/site-packages/" in filename:
        return filename.rsplit("/site-packages/", 1)[1]
    if "/lib/python3" in filename:  # the standard library: json/decoder.py
        return "/".join(filename.split("/")[-2:])
    return filename


def _internal(e: BaseException) -> InternalError:
    tail = traceback_tail(e)
    err = InternalError(f"package-validate failed inside itself: {type(e).__name__}: {e}. This is a bug in the "
                        "tool, not a verdict on the model: report it with the run folder.", details=tail)
    err.__cause__ = e
    return err


def _prepare(run: _Run) -> None:
    opts = run.opts
    spec = apply_options(load_spec(opts.spec_path), opts)
    run.update(spec=spec)
    _arm_deadline(run)
    run.update(run_dir=_make_run_dir(opts.reports_dir, spec.name))
    prior_path = opts.baseline_report
    if prior_path is None and opts.against_last_pass:
        last = last_passing(opts.reports_dir / HISTORY_FILE, spec.name, spec.model.task)
        if last is None:
            raise ReportError(
                f"--against-last-pass: no passing run of {spec.name} in {opts.reports_dir / HISTORY_FILE}. "
                "Run once without it to record a baseline."
            )
        prior_path = Path(last.run_dir)
    if prior_path is not None:
        run.update(prior=load_prior_report(prior_path, spec.name, spec.model.task))
    plan = plan_run(spec, prior=run.record.prior is not None, until=opts.until,
                    prebuilt=opts.prebuilt_mar)
    run.update(plan=plan)
    if opts.publish:
        check_publish_target(spec.name, opts.model_store, opts.force)
        run.lock = StoreLock(spec.name, opts.model_store, run.record.run_dir).acquire(
            opts.wait_for_lock, deadline=run.started + spec.timeout_s)
        check_publish_target(spec.name, opts.model_store, opts.force)  # again: the run we waited for may have published
    if opts.endpoint is None and opts.until in (None, "served"):  # the server's preconditions, before any stage
        find_java()
        if _ports(plan) is not None:
            check_ports(_ports(plan))


def _still_stopping(signum, frame) -> None:
    log.warning("still stopping: the run ends once its report is written")


@contextmanager
def _guarded(run: _Run) -> Iterator[None]:
    """The run's deadline (SIGALRM after ``timeout_s``) and a Ctrl-C that, pressed again while the
    run stops, does not cut the stop or the partial report short. Main thread only; restored afterwards.

    A Ctrl-C raises KeyboardInterrupt once; a second one only logs. The replay takes Ctrl-C with
    its own handler (the event loop's), so that first one never reaches ``on_int``: the server's
    and the handled child's stops hold signals themselves (``signals_deferred``), and from
    ``_disarm`` on, when the report is written, Ctrl-C only logs.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted: list[int] = []

    def on_int(signum, frame):
        if interrupted:
            _still_stopping(signum, frame)
            return
        interrupted.append(signum)
        raise KeyboardInterrupt

    def on_alarm(signum, frame):
        spec = run.record.spec
        limit = f"timeout_s={spec.timeout_s:g} s" if spec else "the deadline"
        raise DeadlineError(f"the run took longer than {limit} (--timeout, or timeout_s in the spec) and was "
                            f"stopped during stage {run.current}. Raise the deadline if the run is only slow.")

    old_int, old_alarm = signal.signal(signal.SIGINT, on_int), signal.signal(signal.SIGALRM, on_alarm)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGINT, old_int)


def _arm_deadline(run: _Run) -> None:
    import threading

    spec = run.record.spec
    if spec is not None and threading.current_thread() is threading.main_thread():
        left = spec.timeout_s - (time.monotonic() - run.started)
        signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


def _disarm() -> None:
    """The run is stopping (every stage and child is done): no deadline, and Ctrl-C no longer cuts the
    report short (``_guarded`` restores the caller's handler afterwards)."""
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGINT, _still_stopping)


def run_validation(opts: RunOptions, events: StageEvent | None = None) -> RunOutcome:
    """Run every stage and write the report; never raises for a pipeline failure.

    Args:
        opts: the spec path and run options.
        events: called at each stage's start and end (the console's progress), or None.

    Returns:
        The outcome: passed (exit 0), failed gate (1), bad input (2), runtime failure (3),
        or interrupted (130 for SIGINT, 143 for SIGTERM), with the report written.
    """
    run = _Run(opts, events)
    with _guarded(run):
        try:
            return _run_validation(run)
        finally:
            if run.lock is not None:
                run.lock.release()


def _run_validation(run: _Run) -> RunOutcome:
    opts = run.opts
    error: BaseException | None = None
    status = "error"
    try:
        _prepare(run)
        with ExitStack() as stack:  # leaving it stops the server before the comparison
            _stages(run, stack)
        with run.timed("compare"):
            _compare_and_gate(run)
        status = "passed" if run.record.gate.passed else "failed"
        server_error = _server_failure(run.record)
        if server_error is not None:
            status, error = "error", server_error
    except PipelineError as e:
        error, status = e, "error"
    except (KeyboardInterrupt, Interrupted) as e:
        error, status = e, "interrupted"
    except Exception as e:  # a bug of the tool: never read as a failed model
        log.debug("internal error", exc_info=True)
        error, status = _disk_full(e) or _internal(e), "error"
    _disarm()  # the report is written whatever the deadline
    record = run.record
    if error is not None and record.baseline is not None and record.comparison is None and record.plan is not None:
        try:
            _compare_and_gate(run)
        except Exception as e:  # a partial report must still be written
            log.warning("could not compare the partial results: %s", e)
    outcome = close_run(run.record, status, error, publish=opts.publish, store=opts.model_store, force=opts.force,
                        reports_dir=opts.reports_dir)
    run.record = outcome.record
    return outcome
