"""Stage 5, replay: every labeled row over real HTTP, each answer and its latency recorded.

The client is built to measure the server, not itself: a minimal keep-alive HTTP/1.1 client
(``httpclient``) with one connection per slot, a bounded number in flight (never above the server's queue), warm-up requests excluded,
latency from a monotonic clock. In open-loop mode (``rate``) each request's latency runs
from its scheduled send time, so a server stall shows up instead of being hidden
(coordinated omission). Every row ends answered or failed with a class; 'queue full' and
'no worker' answers are retried with back-off, handler errors never.

Server-side time comes from TorchServe's ``model_metrics.log``: ``PredictionTime`` lines
carry the ``requestID`` that the response returned as ``x-request-id``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.spec import Spec
from pipeline.stages.dataset import Dataset
from pipeline.errors import Interrupted, ReplayError
from pipeline.transport.http import Connection, HttpConnectionError, HttpProtocolError, Target, build_request

log = logging.getLogger(__name__)

RETRYABLE = frozenset({"queue_full"})
# Error classes that mean the server itself is gone, not one row's problem.
FATAL_STREAK = frozenset({"connection_error", "worker_died"})
MAX_FATAL_STREAK = 8
BACKOFF_BASE_S = 0.05

ERROR_CLASSES = {
    "bad_input": "the handler rejected the row (HTTP 400)",
    "handler_error": "the handler raised (HTTP 503 'Prediction failed')",
    "batch_mismatch": "the handler returned the wrong number of results for a batch",
    "queue_full": "TorchServe's queue was full or no worker was free (HTTP 503), retries exhausted",
    "worker_died": "the worker died or exceeded the response timeout (HTTP 500 'Worker died.')",
    "timeout": "no answer within replay.request_timeout_s",
    "connection_error": "the connection was refused or dropped",
    "bad_response": "the answer was not the expected JSON (prediction, probabilities)",
    "unauthorized": "the token was refused (HTTP 401/403)",
    "not_found": "the model is not served at this URL (HTTP 404)",
    "http_error": "another HTTP error status",
    "not_sent": "the replay stopped before this row was sent",
}


@dataclass(frozen=True)
class ReplayConfig:
    """Where and how to send the rows."""

    url: str
    token: str | None
    num_classes: int
    concurrency: int = 1
    warmup_requests: int = 20
    request_timeout_s: float = 30.0
    max_retries: int = 5
    rate: float | None = None
    show_progress: bool = False
    metrics_log: Path | None = None


@dataclass(frozen=True)
class RowOutcome:
    """What happened to one dataset row."""

    index: int
    id: str
    is_ok: bool
    status: int | None
    prediction: int | None
    probabilities: tuple[float, ...] | None
    logits: tuple[float, ...] | None
    latency_ms: float | None
    request_id: str | None
    server_ms: float | None
    error_class: str | None
    message: str | None
    attempts: int


@dataclass(frozen=True)
class ReplayResult:
    rows: tuple[RowOutcome, ...]
    wall_s: float
    concurrency: int
    rate: float | None
    warmup_requests: int
    is_complete: bool
    abort_reason: str | None
    client_cpu_s: float = float("nan")  # this process's CPU time during the timed loop

    @property
    def answered(self) -> int:
        return sum(r.is_ok for r in self.rows)

    @property
    def failed(self) -> int:
        return len(self.rows) - self.answered

    @property
    def client_cpu_us_per_request(self) -> float:
        return self.client_cpu_s / len(self.rows) * 1e6 if self.rows else float("nan")

    @property
    def error_rate(self) -> float:
        return self.failed / len(self.rows) if self.rows else float("nan")

    @property
    def throughput_rps(self) -> float:
        return len(self.rows) / self.wall_s if self.wall_s > 0 else float("nan")

    def error_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            if not r.is_ok:
                out[r.error_class or "unknown"] = out.get(r.error_class or "unknown", 0) + 1
        return out


def classify_status(status: int, body: str) -> tuple[str, str]:
    """Error class and message of a non-200 TorchServe answer."""
    try:
        msg = str(json.loads(body).get("message", body))
    except (ValueError, AttributeError):
        msg = body
    msg = msg.strip()[:500]
    if "Token Authorization failed" in msg or "Token Authentication failed" in msg:
        return "unauthorized", msg  # TorchServe 0.12 answers a missing or wrong token with 400
    if status == 400:
        return "bad_input", msg
    if status in (401, 403):
        return "unauthorized", msg
    if status == 404:
        return "not_found", msg
    if status == 503:
        if "Prediction failed" in msg:
            return "handler_error", msg
        if "batch response mismatched" in msg:
            return "batch_mismatch", msg
        if "Invalid model predict output" in msg:
            return "bad_response", msg
        return "queue_full", msg
    if status == 500 and "Worker died" in msg:
        return "worker_died", msg
    if status in (408, 504):
        return "timeout", msg
    return "http_error", f"HTTP {status}: {msg}"


def parse_answer(body: str, num_classes: int) -> tuple[int, tuple[float, ...], tuple[float, ...] | None]:
    """Prediction, probabilities and logits from a 200 answer; ValueError says what is wrong."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    pred, probs = data.get("prediction"), data.get("probabilities")
    if not isinstance(pred, int) or isinstance(pred, bool) or not 0 <= pred < num_classes:
        raise ValueError(f"'prediction' must be a class index in 0..{num_classes - 1}, got {pred!r}")
    if not isinstance(probs, list) or len(probs) != num_classes:
        raise ValueError(f"'probabilities' must be a list of {num_classes} numbers, got {str(probs)[:80]}")
    probs_t = tuple(float(p) for p in probs)
    if not all(math.isfinite(p) for p in probs_t):
        raise ValueError("'probabilities' holds NaN or infinity")
    logits = data.get("logits")
    logits_t = tuple(float(v) for v in logits) if isinstance(logits, list) and len(logits) == num_classes else None
    return pred, probs_t, logits_t


def read_server_times(metrics_log: Path) -> dict[str, float]:
    """requestID -> PredictionTime (ms) from TorchServe's model_metrics.log.

    A batch logs one PredictionTime for all its request ids; each id gets the batch's time.
    """
    out: dict[str, float] = {}
    if not metrics_log or not metrics_log.is_file():
        return out
    pat = re.compile(r"PredictionTime\.ms:([0-9.]+)\|.*?requestID:(.*?),timestamp:")
    for line in metrics_log.read_text(errors="replace").splitlines():
        m = pat.search(line)
        if m:
            for rid in m.group(2).split(","):
                out[rid.strip()] = float(m.group(1))
    return out


METRICS_WAIT_S = 3.0


def _await_server_times(metrics_log: Path | None, wanted: set[str]) -> dict[str, float]:
    """Server times once every answered request's line is in the log: TorchServe writes a
    request's PredictionTime a moment after its response is sent (bounded wait)."""
    if metrics_log is None:
        return {}
    deadline = time.monotonic() + METRICS_WAIT_S
    server = read_server_times(metrics_log)
    while wanted - server.keys() and time.monotonic() < deadline:
        time.sleep(0.05)
        server = read_server_times(metrics_log)
    return server


def _failed(index: int, row_id: str, cls: str, msg: str, *, status: int | None = None,
            latency: float | None = None, request_id: str | None = None, attempts: int = 1) -> RowOutcome:
    return RowOutcome(index, row_id, False, status, None, None, None, latency, request_id, None, cls, msg, attempts)


class _Abort(Exception):
    pass


class _Answer:
    """A 200 answer kept raw during the timed loop; parsed into a RowOutcome afterwards."""

    __slots__ = ("index", "body", "request_id", "latency_ms", "attempts")

    def __init__(self, index: int, body: bytes, request_id: str | None, latency_ms: float, attempts: int) -> None:
        self.index, self.body, self.request_id, self.latency_ms, self.attempts = (
            index, body, request_id, latency_ms, attempts)


def _outcome(a: _Answer, row_id: str, num_classes: int) -> RowOutcome:
    body = a.body.decode("utf-8", errors="replace")
    try:
        pred, probs, logits = parse_answer(body, num_classes)
    except (ValueError, TypeError) as e:
        return _failed(a.index, row_id, "bad_response", f"{e}; body: {body[:200]!r}", status=200,
                       latency=a.latency_ms, request_id=a.request_id, attempts=a.attempts)
    return RowOutcome(a.index, row_id, True, 200, pred, probs, logits, a.latency_ms, a.request_id, None, None,
                      None, a.attempts)


async def _send(conn: Connection, cfg: ReplayConfig, raw: bytes, index: int, row_id: str,
                t_start_ns: int | None) -> RowOutcome | _Answer:
    attempts = 0
    while True:
        attempts += 1
        t0 = time.perf_counter_ns()
        origin = t_start_ns if t_start_ns is not None else t0
        try:
            resp = await conn.request(raw, cfg.request_timeout_s)
            t1 = time.perf_counter_ns()
        except asyncio.TimeoutError:
            return _failed(index, row_id, "timeout", f"no answer within {cfg.request_timeout_s:g} s",
                           latency=(time.perf_counter_ns() - origin) / 1e6, attempts=attempts)
        except HttpConnectionError as e:
            return _failed(index, row_id, "connection_error", str(e), attempts=attempts)
        except HttpProtocolError as e:
            return _failed(index, row_id, "bad_response", str(e), attempts=attempts)
        latency = (t1 - origin) / 1e6
        rid = resp.headers.get("x-request-id")
        if resp.status == 200:
            return _Answer(index, resp.body, rid, latency, attempts)
        cls, msg = classify_status(resp.status, resp.body.decode("utf-8", errors="replace"))
        if cls in RETRYABLE and attempts <= cfg.max_retries:
            await asyncio.sleep(BACKOFF_BASE_S * 2 ** (attempts - 1))
            continue
        return _failed(index, row_id, cls, msg, status=resp.status, latency=latency, request_id=rid,
                       attempts=attempts)


def _payloads(data: Dataset) -> list[bytes]:
    flat = data.features.reshape(len(data), -1)
    return [json.dumps({"features": row.tolist()}).encode() for row in flat]


async def _replay(cfg: ReplayConfig, data: Dataset
                  ) -> tuple[list[RowOutcome | _Answer | None], float, str | None, float]:
    target = Target.from_url(cfg.url)
    headers = {"Content-Type": "application/json"}
    if cfg.token:
        headers["Authorization"] = f"Bearer {cfg.token}"
    requests = [build_request(target, p, headers) for p in _payloads(data)]
    results: list[RowOutcome | _Answer | None] = [None] * len(data)
    conns = [Connection(target) for _ in range(cfg.concurrency)]
    abort_reason: str | None = None
    fatal_streak = 0
    progress = _progress(len(data), cfg.show_progress)

    async def warm(conn: Connection, n: int) -> None:
        for i in range(n):
            try:
                await conn.request(requests[i % len(requests)], cfg.request_timeout_s)
            except (HttpConnectionError, HttpProtocolError, asyncio.TimeoutError):
                return

    per_conn = -(-cfg.warmup_requests // cfg.concurrency) if cfg.warmup_requests else 0
    await asyncio.gather(*(warm(c, per_conn) for c in conns))
    pending = iter(range(len(data)))
    t_begin = time.perf_counter_ns()
    cpu_begin = time.process_time()
    interval_ns = int(1e9 / cfg.rate) if cfg.rate else 0

    async def worker(conn: Connection) -> None:
        nonlocal fatal_streak, abort_reason
        while abort_reason is None:
            i = next(pending, None)
            if i is None:
                return
            scheduled = None
            if cfg.rate:
                scheduled = t_begin + i * interval_ns
                delay = (scheduled - time.perf_counter_ns()) / 1e9
                if delay > 0:
                    await asyncio.sleep(delay)
            out = await _send(conn, cfg, requests[i], i, data.ids[i], scheduled)
            results[i] = out
            progress(1)
            if isinstance(out, RowOutcome) and out.error_class in FATAL_STREAK:
                fatal_streak += 1
                if fatal_streak >= MAX_FATAL_STREAK:
                    abort_reason = (
                        f"{fatal_streak} consecutive '{out.error_class}' failures ({out.message}): "
                        "the server is gone"
                    )
            else:
                fatal_streak = 0

    try:
        with _sigterm_cancels(asyncio.current_task()) as terminated:
            try:
                await asyncio.gather(*(worker(c) for c in conns))
            except asyncio.CancelledError:
                if terminated:
                    raise Interrupted(signal.SIGTERM) from None
                raise
    finally:
        for c in conns:
            c.close()
        progress(0, close=True)
    wall = (time.perf_counter_ns() - t_begin) / 1e9
    return results, wall, abort_reason, time.process_time() - cpu_begin


@contextmanager
def _sigterm_cancels(task: asyncio.Task):
    """While the loop runs, SIGTERM cancels the replay cleanly instead of raising inside a
    loop callback (where an event loop may swallow it); the CLI's own handler is restored after."""
    terminated: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield terminated
        return
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    def on_term() -> None:
        terminated.append(signal.SIGTERM)
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_term)
    except (NotImplementedError, RuntimeError, ValueError):
        yield terminated
        return
    try:
        yield terminated
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _progress(total: int, enabled: bool):
    if not enabled or total < 200 or not sys.stderr.isatty():
        return lambda n, close=False: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="req", desc="replay", file=sys.stderr, leave=False)

    def step(n: int, close: bool = False) -> None:
        bar.update(n)
        if close:
            bar.close()

    return step


def _loop_factory():
    """uvloop's event loop where installed: its per-request cost is a fraction of asyncio's,
    which keeps the client's own share of the measured latency small."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def replay_dataset(cfg: ReplayConfig, data: Dataset) -> ReplayResult:
    """Send every row to the served model and account for each one.

    Args:
        cfg: URL, token, concurrency, warm-up, timeout, retries, optional open-loop rate.
        data: the labeled rows.

    Returns:
        One outcome per row, in dataset order, with client latency and, when the metrics
        log is readable, the server's PredictionTime joined by request id. ``is_complete``
        is False when the replay stopped early (the server went away); unsent rows are
        recorded as ``not_sent``.

    Raises:
        ReplayError: the replay could not run at all (e.g. an invalid URL).
    """
    # The cyclic GC's pauses would land in the measured latencies (a tail the server does not
    # have): the timed loop allocates little that forms cycles, so collect before and after.
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            results, wall, abort, cpu_s = runner.run(_replay(cfg, data))
    except ValueError as e:
        raise ReplayError(f"cannot replay to {cfg.url}: {e}") from e
    finally:
        if was_enabled:
            gc.enable()
    rows = [
        _failed(i, data.ids[i], "not_sent", abort or "replay stopped", attempts=0) if r is None
        else _outcome(r, data.ids[i], cfg.num_classes) if isinstance(r, _Answer) else r
        for i, r in enumerate(results)
    ]
    server = _await_server_times(cfg.metrics_log, {r.request_id for r in rows if r.is_ok and r.request_id})
    if server:
        rows = [replace(r, server_ms=server.get(r.request_id)) if r.request_id else r for r in rows]
    return ReplayResult(
        rows=tuple(rows),
        wall_s=wall,
        concurrency=cfg.concurrency,
        rate=cfg.rate,
        warmup_requests=cfg.warmup_requests,
        is_complete=abort is None,
        client_cpu_s=cpu_s,
        abort_reason=abort,
    )


def replay_config_for(spec: Spec, url: str, token: str | None, metrics_log: Path | None,
                      show_progress: bool = False, rate: float | None = None,
                      concurrency: int | None = None) -> ReplayConfig:
    """The replay settings of a spec, with concurrency capped at the server's queue size."""
    r = spec.replay
    conc = min(concurrency or r.concurrency, spec.serving.job_queue_size)
    if conc < (concurrency or r.concurrency):
        log.warning("replay concurrency capped at the server's job_queue_size %d", conc)
    return ReplayConfig(
        url=url, token=token, num_classes=spec.model.num_classes, concurrency=conc,
        warmup_requests=r.warmup_requests, request_timeout_s=r.request_timeout_s,
        max_retries=r.max_retries, rate=rate if rate is not None else r.rate,
        show_progress=show_progress, metrics_log=metrics_log,
    )


def predictions_array(result: ReplayResult) -> np.ndarray:
    """Served predictions, -1 for rows without an answer."""
    return np.array([r.prediction if r.is_ok else -1 for r in result.rows], dtype=np.int64)
