"""Stage 4, handled: the archive's own handler, run in-process through TorchServe's handler API.

Every row is sent, with the very request body the replay sends, to the handler loaded from
the run's .mar by ``ts.model_loader`` in a child process (``torchserve.inprocess``): once
alone (batch 1) and once in batches of the served batch size. So a served answer that
differs can be blamed on the right layer: the export, the handler's pre/post-processing,
a handler that depends on its batch, or serving itself.

The child has deadlines: ``serving.startup_timeout_s`` for ``initialize`` and
``serving.response_timeout_s`` for each batch; a handler that hangs or crashes ends the
stage with the handler named, and cannot touch this process's torch settings or modules.
Two handlers with the same file name never share a module: each run has its own child.
The child inherits the caller's environment minus its secrets (``torchserve.childenv``), without
``serving.env`` (that is TorchServe's), and is stopped with all it started on every exit path.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
from pipeline.answers.registry import AnswerCodec
from pipeline.compat import worker_site_dir
from pipeline.errors import HandledError, UserCodeError
from pipeline.evaluate.compare import StageOutputs
from pipeline.inputs.base import Rows
from pipeline.stages.outcomes import RowOutcome, failed, interpret
from pipeline.stages.probing import ProbeOutcome, judge, probe_difference
from pipeline.torchserve.inprocess import PHASES_ENV, read_message, send_message
from pipeline.torchserve.childenv import child_env
from pipeline.torchserve.logcap import LogCap
from pipeline.torchserve.logs import tail
from pipeline.torchserve.process import RUN_MARKER_ENV, signals_deferred, stop_group
from pipeline.wire import worker_view

log = logging.getLogger(__name__)

STOP_GRACE_S = 3.0


@dataclass(frozen=True)
class HandledConfig:
    """Where the handler runs and how long it may take."""

    work_dir: Path
    mar_path: Path
    model_name: str
    batch_size: int
    load_timeout_s: float
    response_timeout_s: float
    service_envelope: str | None = None  # kserve | kservev2
    secret_env: tuple[str, ...] = ()  # serving.secret_env: withheld from the child with the other secrets
    time_phases: bool = False  # ``make bench``: the child times BaseHandler's phases (``inprocess.time_phases``)


@dataclass(frozen=True)
class InnerOutputs:
    """The model's outputs inside the handler (what BaseHandler's ``inference`` returned), per row.

    Read without changing the handler (``inprocess.capture_inference``), so a handler whose answers
    carry only a class still has its numbers compared with the exported model's in-process.

    Attributes:
        values: float32 [N, K], NaN for rows whose batch gave none; None when no batch gave any.
        why: why some or all rows have none (None when every row has its outputs).
    """

    values: np.ndarray | None
    why: str | None = None


def _collect_inner(n: int, batches: list[tuple[list[int], object, str | None]]) -> InnerOutputs:
    """One variant's inner outputs from each batch's (row indices, [k, K] array or None, why)."""
    values: np.ndarray | None = None
    why: str | None = None
    for index, arr, reason in batches:
        if arr is None:
            why = why or reason
            continue
        arr = np.asarray(arr, dtype=np.float32)
        if values is None:
            values = np.full((n, arr.shape[1]), np.nan, np.float32)
        elif arr.shape[1] != values.shape[1]:
            why = why or f"the handler's inference gave {arr.shape[1]} outputs per row, before {values.shape[1]}"
            continue
        values[index] = arr
    return InnerOutputs(values, why)


@dataclass(frozen=True)
class HandledResult:
    """The handler's answers in-process, at batch 1 and at the served batch size.

    Attributes:
        batch1: one outcome per row, each row sent alone.
        batched: one outcome per row, rows sent in consecutive batches of ``batch_size``
            (None when the served batch size is 1).
        codec: the answer codec, settled by the first answer when the format was "auto".
        handler: the manifest's handler entry.
        load_s: how long ``initialize`` took.
        log_path: the handler's own output.
        probes: what the handler did with each input probe (``inputs.probes``).
        inner_batch1, inner_batched: the model's outputs inside the handler, per variant.
    """

    batch1: tuple[RowOutcome, ...]
    batched: tuple[RowOutcome, ...] | None
    batch_size: int
    codec: AnswerCodec
    handler: str
    load_s: float
    log_path: Path
    probes: tuple[ProbeOutcome, ...] = ()
    inner_batch1: InnerOutputs | None = None
    inner_batched: InnerOutputs | None = None

    def outcomes(self, variant: str) -> tuple[RowOutcome, ...] | None:
        return self.batch1 if variant == "batch1" else self.batched


def _extract(mar: Path, dest: Path) -> dict:
    import json

    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(dest)
    return json.loads((dest / "MAR-INF" / "MANIFEST.json").read_text())


class HandlerProcess:
    """A child process holding the loaded handler; ``predict`` sends one batch with a deadline."""

    def __init__(self, cfg: HandledConfig) -> None:
        self.cfg = cfg
        self.model_dir = cfg.work_dir / "model"
        manifest = _extract(cfg.mar_path, self.model_dir)
        self.handler = manifest["model"]["handler"]
        self.log_path = cfg.work_dir / "handler.log"
        self.logcap = LogCap(cfg.work_dir, names=(self.log_path.name,))
        self.proc: subprocess.Popen | None = None
        self.load_s = 0.0
        self.last_cause: str | None = None  # what the handler raised on the last batch, quoted (None: nothing)
        self.last_inner: tuple[object, str | None] = (None, "no batch handled yet")
        # With ``time_phases``: the last batch's ms per phase, or None and why the handler is one phase.
        self.last_phases: tuple[dict[str, float] | None, str | None] = (None, "phases not timed")

    def __enter__(self) -> "HandlerProcess":
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self.to_child, self.from_child = to_child_w, from_child_r
        child = child_env(self.cfg.secret_env, {
            RUN_MARKER_ENV: str(self.cfg.work_dir), **({PHASES_ENV: "1"} if self.cfg.time_phases else {}),
            "PYTHONPATH": os.pathsep.join(p for p in (worker_site_dir(), os.environ.get("PYTHONPATH", "")) if p)})
        cmd = [sys.executable, "-m", "pipeline.torchserve.inprocess", str(to_child_r), str(from_child_w),
               str(self.model_dir), self.cfg.model_name, self.handler, str(self.cfg.batch_size),
               self.cfg.service_envelope or ""]
        try:
            with signals_deferred(), open(self.log_path, "ab") as out:  # a started child is always recorded
                self.proc = subprocess.Popen(cmd, cwd=self.model_dir, env=child.env, stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=subprocess.STDOUT,
                                             pass_fds=(to_child_r, from_child_w), start_new_session=True)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        try:
            self.logcap.start()
            msg = self._receive(self.cfg.load_timeout_s, "initialize", "serving.startup_timeout_s")
            if not msg.get("loaded"):
                causes = msg.get("causes") or [msg.get("error")]
                (self.log_path.parent / "load_traceback.txt").write_text(msg.get("traceback", ""))
                raise UserCodeError(
                    f"the handler {self.handler} cannot be loaded (TorchServe's worker would fail the same way): "
                    f"{causes[0]}. Fix the handler or install what it imports; found before any server starts "
                    f"(traceback in {self.log_path.parent / 'load_traceback.txt'}).",
                    details=causes,
                )
            self.load_s = float(msg.get("seconds", 0.0))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _receive(self, timeout_s: float, phase: str, field: str) -> dict:
        ready, _, _ = select.select([self.from_child], [], [], timeout_s)
        if not ready:
            raise HandledError(
                f"the handler {self.handler} did not finish {phase} within {field}={timeout_s:g} s: it hangs "
                f"(or is slower than allowed: raise {field}). Its output is in {self.log_path}.",
                details=_log_tail(self.log_path),
            )
        try:
            return read_message(self.from_child)
        except (EOFError, OSError) as e:
            code = self.proc.wait(timeout=5) if self.proc else None
            raise HandledError(
                f"the handler {self.handler} crashed the process during {phase} (exit code {code}): {e}. "
                f"Its output is in {self.log_path}.",
                details=_log_tail(self.log_path),
            ) from e

    def predict(self, requests: list[tuple[bytes, str]]) -> tuple[list[tuple[int, str, bytes]], float]:
        """(status, content type, body) per request, and the batch's handling time in ms."""
        send_message(self.to_child, {"requests": requests})
        msg = self._receive(self.cfg.response_timeout_s, f"handle (a batch of {len(requests)})",
                            "serving.response_timeout_s")
        if "error" in msg:
            raise HandledError(f"the in-process handler run failed: {msg['error']}",
                               details=_traceback_tail(msg.get("traceback", "")))
        self.last_cause = msg.get("cause")
        self.last_inner = (msg.get("inner"), msg.get("inner_why"))
        if "phases" in msg:
            self.last_phases = (msg["phases"], msg.get("phases_why"))
        return msg["answers"], float(msg["ms"])

    def close(self) -> None:
        """Stop the child and everything it started in its session; return only when all are gone.

        SIGTERM to the child's process group, SIGKILL after ``STOP_GRACE_S``: at most
        ``STOP_GRACE_S + KILL_WAIT_S`` (8 s). A Ctrl-C meanwhile is held until the stop is done.
        """
        with signals_deferred():
            for fd in ("to_child", "from_child"):
                try:
                    os.close(getattr(self, fd))
                except (AttributeError, OSError):
                    pass
            if self.proc is not None:
                stop_group(self.proc, STOP_GRACE_S)  # also when the child is gone: what it started may not be
            self.logcap.close()  # after the writer stopped: a handler.log over the cap becomes head, cut line, tail


def with_cause(row: RowOutcome, cause: str | None) -> RowOutcome:
    """A failed row with what the handler raised added to its message ("Prediction failed" alone says nothing)."""
    if row.is_ok or not cause:
        return row
    return replace(row, message=f"{row.message}; the handler raised {cause}")


INNER_QUANTITY = "the model's outputs inside the handler (its inference result)"


def with_inner(outputs: StageOutputs, inner: InnerOutputs | None, num_classes: int) -> StageOutputs:
    """A handled stage's outputs, with the model's outputs inside the handler as its logits when its
    answers carry neither logits nor probabilities (a bare class index or label) and the handler's
    inference gave one number per class for every answered row. Otherwise unchanged: the answers'
    own numbers are what a client gets, so they are what is compared."""
    if outputs.logits is not None or outputs.probabilities is not None or inner is None:
        return outputs
    values = inner.values
    if values is None:
        return replace(outputs, no_outputs_why=f"the model's outputs inside the handler cannot be read: {inner.why}")
    if values.shape[1] != num_classes:
        return replace(outputs, no_outputs_why=f"the handler's inference gives {values.shape[1]} numbers per row, "
                                               f"not one per class ({num_classes})")
    answered = outputs.predictions >= 0
    if not np.isfinite(values[answered]).all():
        return replace(outputs, no_outputs_why=f"the model's outputs inside the handler are missing for some "
                                               f"answered rows: {inner.why}")
    return replace(outputs, logits=values, logits_from=INNER_QUANTITY)


def _traceback_tail(tb: str) -> list[str]:
    lines = [ln for ln in tb.strip().splitlines() if ln.strip()]
    return lines[-6:]


def _log_tail(path: Path) -> list[str]:
    return [ln for ln in tail(path, 200) if ln.strip()][-8:]  # never the whole file, never across a punched hole


def _batches(rows: Rows, size: int) -> Iterator[list[int]]:
    for chunk in rows.chunks(size):
        yield list(chunk)


def _run_variant(proc: HandlerProcess, rows: Rows, codec: AnswerCodec, batch: int
                 ) -> tuple[list[RowOutcome], AnswerCodec, InnerOutputs]:
    out: list[RowOutcome | None] = [None] * len(rows)
    inner: list[tuple[list[int], object, str | None]] = []
    for index in _batches(rows, batch):
        requests = []
        for i in index:
            body = rows.body(i)
            requests.append(codec.request(body, rows.content_type, worker_view(body, rows.content_type)))
        answers, ms = proc.predict(requests)
        inner.append((index, *getattr(proc, "last_inner", (None, "the handler process reads no outputs"))))
        per_row_ms = ms / len(index)
        cause = getattr(proc, "last_cause", None)
        for i, (status, _ct, body) in zip(index, answers):
            if status == 200:
                codec = codec.settle(body)
            out[i] = with_cause(interpret(i, rows.ids[i], status, body, codec, latency=per_row_ms), cause)
    done = [o if o is not None else failed(i, rows.ids[i], "not_sent", "no answer") for i, o in enumerate(out)]
    return done, codec, _collect_inner(len(rows), inner)


def _run_probes(proc: HandlerProcess, probes, codec: AnswerCodec, batch1: list[RowOutcome]
                ) -> tuple[ProbeOutcome, ...]:
    out, broken = [], ""
    difference = probe_difference(codec)
    for probe in probes:
        original = batch1[probe.source_index].predicted
        if "handled" not in probe.stages or broken:
            row = None if not broken else failed(-1, probe.name, "not_sent", broken)
            out.append(judge(probe, "handled", row, original))
            continue
        payload = codec.request(probe.body, probe.content_type, worker_view(probe.body, probe.content_type))
        try:
            answers, ms = proc.predict([payload])
        except HandledError as e:  # the handler hung or died on this probe: the later ones cannot run
            broken = f"the handler stopped answering at probe {probe.name!r}"
            out.append(judge(probe, "handled", failed(-1, probe.name, "timeout", e.message), original))
            continue
        status, _ct, body = answers[0]
        row = with_cause(interpret(-1, probe.name, status, body, codec, latency=ms), getattr(proc, "last_cause", None))
        out.append(judge(probe, "handled", row, original, batch1[probe.source_index].prediction, difference))
    return tuple(out)


def run_handled(cfg: HandledConfig, rows: Rows, codec: AnswerCodec, probes=()) -> HandledResult:
    """Every row through the archive's handler in-process, at batch 1 and at the served batch size.

    Args:
        cfg: the run folder, the .mar, the served batch size, the deadlines, the envelope.
        rows: the labeled rows.
        codec: how rows travel and answers are read (the replay's).
        probes: handler input probes to send after the rows (``inputs.probes.HandlerProbe``).

    Returns:
        One outcome per row for each batch size, decoded like served answers, and the probes' outcomes.

    Raises:
        HandledError: the handler cannot be loaded, crashes the process, or misses a deadline.
    """
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    with HandlerProcess(cfg) as proc:
        t0 = time.perf_counter()
        batch1, codec, inner1 = _run_variant(proc, rows, codec, 1)
        batched, inner_b = None, None
        if cfg.batch_size > 1:
            batched, codec, inner_b = _run_variant(proc, rows, codec, cfg.batch_size)
        log.info("handled %d rows in %.2f s", len(rows), time.perf_counter() - t0)
        probed = _run_probes(proc, probes, codec, batch1)
    return HandledResult(batch1=tuple(batch1), batched=tuple(batched) if batched is not None else None,
                         batch_size=cfg.batch_size, codec=codec, handler=proc.handler, load_s=proc.load_s,
                         log_path=proc.log_path, probes=probed, inner_batch1=inner1, inner_batched=inner_b)
