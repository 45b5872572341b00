"""The run's phases as functions that ``run``, ``tune`` and ``bench`` compose.

prepare (dataset, reference model, baseline, export), package (the .mar), check the handler
(in-process), serve at a setting (a TorchServe serving one ``Setting``), replay rows. Each phase
takes what the one before produced and returns a value; none writes the run record, evaluates
or formats a verdict (that is ``evaluate/``), so a caller can stop after any phase or repeat
one (tune serves and replays at many settings over one prepared model and archive).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from pipeline.inputs.base import Rows
from pipeline.model.loading import load_model
from pipeline.run.plan import Plan
from pipeline.spec import Spec
from pipeline.stages.archive import ArchiveConfig, ArchiveResult, build_archive
from pipeline.stages.baseline import BaselineResult, score_baseline
from pipeline.stages.dataset import DatasetResult, load_dataset
from pipeline.stages.export import ExportResult, export_model
from pipeline.stages.handled import HandledConfig, HandlerProcess
from pipeline.stages.replay import ReplayConfig, ReplayResult, replay_dataset
from pipeline.stages.serve import ServeConfig, ServerHandle, serve_model
from pipeline.torchserve.process import Ports
from pipeline.wire import worker_view


@dataclass(frozen=True)
class Setting:
    """How TorchServe serves the model and how hard the client presses: one point of ``tune``.

    ``threads`` is the worker's torch intra-op threads, applied through the worker's environment
    (OMP_NUM_THREADS, which torch reads when the worker imports it), never by editing the handler;
    None keeps the environment's own (torch's default: one per core).
    """

    workers: int
    batch_size: int
    max_batch_delay_ms: int
    concurrency: int
    threads: int | None = None

    @property
    def key(self) -> str:
        """The setting's text, as a ``StageName`` setting carries it: ``w1-b4-d5-c8-t1``."""
        return (f"w{self.workers}-b{self.batch_size}-d{self.max_batch_delay_ms}-c{self.concurrency}"
                f"-t{self.threads if self.threads is not None else 'env'}")

    @classmethod
    def of_spec(cls, spec: Spec) -> "Setting":
        threads = spec.serving.env.get("OMP_NUM_THREADS")
        return cls(spec.serving.workers, spec.serving.batch_size, spec.serving.max_batch_delay_ms,
                   spec.replay.concurrency, int(threads) if threads and threads.isdigit() else None)

    def apply(self, spec: Spec) -> Spec:
        """The spec serving and replaying at this setting (what the archive's model config and the server get)."""
        env = dict(spec.serving.env)
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
            env["MKL_NUM_THREADS"] = str(self.threads)
        serving = spec.serving.model_copy(update={
            "workers": self.workers, "batch_size": self.batch_size, "max_batch_delay_ms": self.max_batch_delay_ms,
            "env": env, "job_queue_size": max(spec.serving.job_queue_size, self.concurrency)})
        return spec.model_copy(update={"serving": serving,
                                       "replay": spec.replay.model_copy(update={"concurrency": self.concurrency})})


@dataclass(frozen=True)
class Prepared:
    """What the prepare phase made: the rows, the reference model's baseline, the export."""

    dataset: DatasetResult
    model: object
    baseline: BaselineResult
    exported: ExportResult | None

    @property
    def rows(self) -> Rows:
        return self.dataset.rows


def prepare(spec: Spec, plan: Plan, work_dir: Path, *, export: bool = True) -> Prepared:
    """Dataset, reference model, baseline and (``export``) the exported artefact under ``work_dir/export``."""
    dataset = load_dataset(spec)
    model = load_model(spec)
    baseline = score_baseline(spec, model, dataset.rows, plan.reference)
    exported = export_model(spec, model, dataset.rows, baseline, work_dir / "export") if export else None
    return Prepared(dataset, model, baseline, exported)


def package(spec: Spec, plan: Plan, prepared: Prepared, work_dir: Path, **archive_options) -> ArchiveResult:
    """The .mar under ``work_dir/archive`` (``archive_options``: ArchiveConfig's prebuilt_mar, expected_sha256)."""
    return build_archive(spec, ArchiveConfig(work_dir=work_dir / "archive", **archive_options), plan.handler,
                         prepared.exported, prepared.baseline.input_shape)


def ports_of(spec: Spec) -> Ports | None:
    p = spec.serving.ports
    return None if p is None else Ports(p.inference, p.management, p.metrics, p.grpc_inference, p.grpc_management)


@contextmanager
def serve_at(spec: Spec, setting: Setting | None, mar_path: Path, run_dir: Path, *, envelope: str | None = None,
             properties: dict | None = None, user_config=None) -> Iterator[ServerHandle]:
    """A TorchServe serving ``mar_path`` at ``setting`` (None: the spec's own), stopped on exit.

    The archive's model config must carry the setting's batch size, delay and workers (TorchServe
    0.12 reads them from the .mar over config.properties); ``serve_model`` checks what it serves.
    """
    spec = setting.apply(spec) if setting is not None else spec
    with serve_model(spec, ServeConfig(run_dir=run_dir, mar_path=mar_path, startup_timeout_s=spec.serving.startup_timeout_s,
                                       envelope=envelope, ports=ports_of(spec), properties=properties,
                                       user_config=user_config)) as server:
        yield server


def replay_config(spec: Spec, url_base: str, token: str | None, codec, metrics_log: Path | None,
                  progress=None, **changes) -> ReplayConfig:
    """How the rows are sent to the served model (the spec's replay section, the queue bounding concurrency)."""
    r = spec.replay
    cfg = ReplayConfig(
        url=url_base + codec.envelope.path(spec.name), token=token, codec=codec,
        concurrency=min(r.concurrency, spec.serving.job_queue_size), warmup_requests=r.warmup_requests,
        request_timeout_s=r.request_timeout_s, max_retries=r.max_retries,
        max_consecutive_timeouts=r.max_consecutive_timeouts, rate=r.rate, headers=dict(r.headers),
        ca_file=r.ca_file, metrics_log=metrics_log, progress=progress)
    return replace(cfg, **changes) if changes else cfg


def replay_rows(cfg: ReplayConfig, rows: Rows) -> ReplayResult:
    """Every row over HTTP, each answer and latency recorded (``stages.replay``)."""
    return replay_dataset(cfg, rows)


def handler_config(spec: Spec, archive: ArchiveResult, codec, work_dir: Path, batch_size: int,
                   **changes) -> HandledConfig:
    """How the archive's handler runs in-process (TorchServe's ``Service.predict`` in a child process)."""
    return HandledConfig(work_dir=work_dir, mar_path=archive.mar_path, model_name=spec.name, batch_size=batch_size,
                         load_timeout_s=spec.serving.startup_timeout_s,
                         response_timeout_s=spec.serving.response_timeout_s,
                         service_envelope=codec.envelope.service_envelope, secret_env=spec.serving.secret_env,
                         **changes)


def handler_batches(proc: HandlerProcess, rows: Rows, codec, batch: int, count: int) -> Iterator[float]:
    """``count`` batches of ``batch`` consecutive rows (cycled) through the in-process handler; each batch's ms.

    Raises:
        RuntimeError: a row of a batch was not answered with 200 (the limit would be of failures).
    """
    for k in range(count):
        start = (k * batch) % len(rows)
        requests = []
        for i in ((start + j) % len(rows) for j in range(batch)):
            body = rows.body(i)
            requests.append(codec.request(body, rows.content_type, worker_view(body, rows.content_type)))
        answers, ms = proc.predict(requests)
        if any(status != 200 for status, _, _ in answers):
            raise RuntimeError(f"the handler failed in-process on rows {start}..{start + batch - 1}: "
                               f"{answers[0][2][:200]!r}")
        yield ms


@dataclass(frozen=True)
class HandlerLimit:
    """The in-process handler's rows/s at each batch size: the most one worker can serve, with no server around it."""

    rows_per_s: dict[int, float]
    batch_ms: dict[int, float]  # median per batch
    batches: dict[int, int]
    seconds: float


def handler_limit(spec: Spec, archive: ArchiveResult, codec, rows: Rows, batch_sizes, work_dir: Path, *,
                  seconds_each: float = 1.0, warmup: int = 5, least: int = 12, rounds: int = 3) -> HandlerLimit:
    """The handler in-process at each batch size: batches of that many rows, ``seconds_each`` in all after ``warmup``.

    One child process is loaded configured at the largest batch size and sent batches of each
    size (as TorchServe's worker is when a batch smaller than its batchSize forms). The sizes
    take turns over ``rounds`` rounds (a moment of load hits each alike). Median ms per batch;
    rows/s = batch / median.
    """
    t0 = time.monotonic()
    sizes = sorted(set(batch_sizes))
    cfg = handler_config(spec, archive, codec, work_dir, max(sizes))
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    totals: dict[int, list[float]] = {b: [] for b in sizes}
    with HandlerProcess(cfg) as proc:
        for b in sizes:
            for _ in handler_batches(proc, rows, codec, b, warmup):
                pass
        for r in range(rounds):
            for b in sizes:
                start = time.monotonic()
                while len(totals[b]) < least * (r + 1) // rounds or time.monotonic() - start < seconds_each / rounds:
                    totals[b].extend(handler_batches(proc, rows, codec, b, 1))
    per = {b: statistics.median(v) for b, v in totals.items()}
    return HandlerLimit({b: b / (ms / 1e3) if ms > 0 else float("nan") for b, ms in per.items()}, per,
                        {b: len(v) for b, v in totals.items()}, time.monotonic() - t0)
