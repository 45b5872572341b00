"""Stage 6, replay: every labeled row over real HTTP, as a client sends it, each answer and its latency recorded.

The client is built to measure the server, not itself: a minimal keep-alive HTTP/1.1 client
(``transport.http``) with one connection per slot, a bounded number in flight (never above
the server's queue), warm-up requests excluded, latency from a monotonic clock. Each row's
request is built when it is sent (an image file is read then), so memory stays flat. In
open-loop mode (``rate``) each request's latency runs from its scheduled send time, so a
server stall shows up instead of being hidden (coordinated omission). Every row ends
answered or failed with a class; 'queue full' answers are retried with back-off, handler
errors never. A server that is gone (connections refused, workers dying) or a handler that
hangs (timeouts in a row) ends the replay early: the rows not sent are ``not_sent``.

Server-side time comes from TorchServe's ``model_metrics.log``: ``PredictionTime`` and
``HandlerTime`` lines carry the ``requestID`` that the response returned as ``x-request-id``.
The frontend's queue and total times come from ``ts_metrics.log``, without request ids
(distributions for ``evaluate.latency``, never joined to rows).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol

from pipeline.answers.registry import AnswerCodec
from pipeline.errors import DeadlineError, Interrupted, ReplayError
from pipeline.inputs.base import Rows, worker_view
from pipeline.stages.outcomes import RowOutcome, failed, interpret
from pipeline.torchserve.errors import RETRYABLE, classify_status
from pipeline.torchserve.logs import await_frontend_times, await_request_times, metrics_offset
from pipeline.transport.http import Connection, HttpConnectionError, HttpProtocolError, Response, Target, \
    build_request, tls_context

log = logging.getLogger(__name__)

# Error classes that mean the server itself is gone, not one row's problem.
FATAL_STREAK = frozenset({"connection_error", "worker_died"})
MAX_FATAL_STREAK = 8
BACKOFF_BASE_S = 0.05
WARMUP_DISTINCT_ROWS = 64

Progress = Callable[[str, int, int], None]  # phase ("warmup" | "replay"), done, total


class ConnectionLike(Protocol):
    async def request(self, raw: bytes, timeout_s: float) -> Response: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ReplayConfig:
    """Where and how to send the rows."""

    url: str
    token: str | None
    codec: AnswerCodec
    concurrency: int = 1
    warmup_requests: int = 20
    request_timeout_s: float = 30.0
    max_retries: int = 5
    max_consecutive_timeouts: int = 3
    rate: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    ca_file: Path | None = None
    metrics_log: Path | None = None
    frontend_log: Path | None = None  # ts_metrics.log: the frontend's queue and total time per request
    progress: Progress | None = None
    connect: Callable[[Target], ConnectionLike] | None = None  # injected transport (tests); default: HTTP


@dataclass(frozen=True)
class ReplayResult:
    rows: tuple[RowOutcome, ...]
    wall_s: float
    concurrency: int
    rate: float | None
    warmup_requests: int
    is_complete: bool
    abort_reason: str | None
    codec: AnswerCodec | None = None  # as settled by the first answer
    client_cpu_s: float = float("nan")  # this process's CPU time during the timed loop
    warmup_answers: tuple[RowOutcome, ...] = ()  # the first warm-up answer of each row warmed (serve #2983)
    # The frontend's figures per answered request of the timed loop (``logs.read_frontend_times``);
    # None without a ts_metrics.log to read (a server this run did not start).
    frontend: dict[str, tuple[float, ...]] | None = None

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


class _Answer:
    """A 200 answer kept raw during the timed loop; decoded after it."""

    __slots__ = ("index", "body", "request_id", "latency_ms", "attempts")

    def __init__(self, index: int, body: bytes, request_id: str | None, latency_ms: float, attempts: int) -> None:
        self.index, self.body, self.request_id, self.latency_ms, self.attempts = (
            index, body, request_id, latency_ms, attempts)


def request_bytes(rows: Rows, codec: AnswerCodec, target: Target, headers: dict[str, str], i: int) -> bytes:
    """The exact bytes sent for row ``i``."""
    body = rows.body(i)
    payload, content_type = codec.request(body, rows.content_type, worker_view(body, rows.content_type))
    return build_request(target, payload, {**headers, "Content-Type": content_type})


async def _send(conn: ConnectionLike, cfg: ReplayConfig, raw: bytes, index: int, row_id: str,
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
            return failed(index, row_id, "timeout",
                          f"no answer within replay.request_timeout_s={cfg.request_timeout_s:g} s",
                          latency=(time.perf_counter_ns() - origin) / 1e6, attempts=attempts)
        except HttpConnectionError as e:
            return failed(index, row_id, "connection_error", str(e), attempts=attempts)
        except HttpProtocolError as e:
            return failed(index, row_id, "bad_response", str(e), attempts=attempts)
        latency = (t1 - origin) / 1e6
        rid = resp.headers.get("x-request-id")
        if resp.status == 200:
            return _Answer(index, resp.body, rid, latency, attempts)
        cls, msg = classify_status(resp.status, resp.body.decode("utf-8", errors="replace"))
        if cls in RETRYABLE and attempts <= cfg.max_retries:
            await asyncio.sleep(BACKOFF_BASE_S * 2 ** (attempts - 1))
            continue
        return failed(index, row_id, cls, msg, status=resp.status, latency=latency, request_id=rid,
                      attempts=attempts)


class _Breaker:
    """Ends the replay when the server is gone or the handler hangs, instead of rows x timeout."""

    def __init__(self, cfg: ReplayConfig) -> None:
        self.cfg = cfg
        self.fatal = 0
        self.timeouts = 0
        self.reason: str | None = None

    def record(self, out: RowOutcome | _Answer) -> None:
        cls = out.error_class if isinstance(out, RowOutcome) else None
        self.fatal = self.fatal + 1 if cls in FATAL_STREAK else 0
        self.timeouts = self.timeouts + 1 if cls == "timeout" else 0
        if self.fatal >= MAX_FATAL_STREAK and self.reason is None:
            self.reason = f"{self.fatal} consecutive '{cls}' failures ({out.message}): the server is gone"
        if self.timeouts >= self.cfg.max_consecutive_timeouts and self.reason is None:
            self.reason = (
                f"{self.timeouts} consecutive requests got no answer within replay.request_timeout_s="
                f"{self.cfg.request_timeout_s:g} s (replay.max_consecutive_timeouts="
                f"{self.cfg.max_consecutive_timeouts}): the handler hangs. Raise replay.request_timeout_s "
                "if it is only slow"
            )


async def _replay(cfg: ReplayConfig, rows: Rows) -> tuple[list[RowOutcome | _Answer | None], float, str | None, float,
                                                          dict[int, Response], int]:
    target = Target.from_url(cfg.url)
    headers = dict(cfg.headers)
    if cfg.token:
        headers["Authorization"] = f"Bearer {cfg.token}"
    n = len(rows)
    results: list[RowOutcome | _Answer | None] = [None] * n
    if cfg.connect is not None:
        conns = [cfg.connect(target) for _ in range(cfg.concurrency)]
    else:
        tls = tls_context(cfg.ca_file) if target.tls else None
        conns = [Connection(target, tls) for _ in range(cfg.concurrency)]
    breaker = _Breaker(cfg)
    progress = cfg.progress or (lambda phase, done, total: None)
    warm_pool = [request_bytes(rows, cfg.codec, target, headers, i) for i in range(min(n, WARMUP_DISTINCT_ROWS))]
    warm_done = warm_ok = 0
    warm_first: dict[int, Response] = {}

    async def warm(conn: ConnectionLike, count: int) -> None:
        nonlocal warm_done, warm_ok
        for i in range(count):
            k = i % len(warm_pool)
            try:
                resp = await conn.request(warm_pool[k], cfg.request_timeout_s)
            except (HttpConnectionError, HttpProtocolError, asyncio.TimeoutError):
                return
            warm_first.setdefault(k, resp)
            warm_done += 1
            warm_ok += resp.status == 200  # the frontend logs its per-request metrics for answered ones only
            if warm_done % 50 == 0:
                progress("warmup", warm_done, cfg.warmup_requests)

    # Bodies held in memory are encoded before the timed loop; files are read as each row is sent.
    prebuilt = [request_bytes(rows, cfg.codec, target, headers, i) for i in range(n)] if rows.paths is None else None
    per_conn = -(-cfg.warmup_requests // cfg.concurrency) if cfg.warmup_requests and warm_pool else 0
    pending = iter(range(n))
    t_begin = cpu_begin = 0.0
    interval_ns = int(1e9 / cfg.rate) if cfg.rate else 0
    done = 0

    async def worker(conn: ConnectionLike) -> None:
        nonlocal done
        while breaker.reason is None:
            i = next(pending, None)
            if i is None:
                return
            raw = prebuilt[i] if prebuilt is not None else request_bytes(rows, cfg.codec, target, headers, i)
            scheduled = None
            if cfg.rate:
                scheduled = t_begin + i * interval_ns
                delay = (scheduled - time.perf_counter_ns()) / 1e9
                if delay > 0:
                    await asyncio.sleep(delay)
            out = await _send(conn, cfg, raw, i, rows.ids[i], scheduled)
            results[i] = out
            breaker.record(out)
            done += 1
            if done % 50 == 0 or done == n:
                progress("replay", done, n)

    try:
        with _signals_cancel(asyncio.current_task()) as arrived:
            try:
                await asyncio.gather(*(warm(c, per_conn) for c in conns))
                t_begin = time.perf_counter_ns()
                cpu_begin = time.process_time()
                await asyncio.gather(*(worker(c) for c in conns))
            except asyncio.CancelledError:
                if arrived:
                    _raise_for(arrived[0])
                raise
    finally:
        for c in conns:
            c.close()
    wall = (time.perf_counter_ns() - t_begin) / 1e9
    return results, wall, breaker.reason, time.process_time() - cpu_begin, warm_first, warm_ok


@contextmanager
def _signals_cancel(task: asyncio.Task):
    """While the loop runs, SIGTERM, SIGINT and the run's deadline (SIGALRM) cancel the replay cleanly
    instead of raising inside a loop callback (where an event loop may swallow it); the handlers
    in place before are restored after. Yields the list of signals that arrived."""
    arrived: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield arrived
        return
    loop = asyncio.get_running_loop()
    watched = (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)
    previous = {sig: signal.getsignal(sig) for sig in watched}

    def on_signal(sig: int) -> None:
        if not arrived:
            task.cancel()
        arrived.append(sig)

    installed = []
    try:
        for sig in watched:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    except (NotImplementedError, RuntimeError, ValueError):
        pass
    try:
        yield arrived
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous[sig] if previous[sig] is not None else signal.SIG_DFL)


def _raise_for(sig: int) -> None:
    if sig == signal.SIGALRM:
        raise DeadlineError("the run's deadline (timeout_s in the spec, --timeout) passed during the replay; "
                            "raise it if the run is only slow")
    if sig == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(sig)


def _loop_factory():
    """uvloop's event loop where installed: its per-request cost is a fraction of asyncio's,
    which keeps the client's own share of the measured latency small."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def decode_answers(results: list[RowOutcome | _Answer | None], rows: Rows, codec: AnswerCodec,
                   abort: str | None) -> tuple[list[RowOutcome], AnswerCodec]:
    """Outcomes in dataset order: raw answers decoded (after the first settles an 'auto' format)."""
    first = next((r for r in results if isinstance(r, _Answer)), None)
    if first is not None:
        codec = codec.settle(first.body)
    out = []
    for i, r in enumerate(results):
        if r is None:
            out.append(failed(i, rows.ids[i], "not_sent", abort or "replay stopped", attempts=0))
        elif isinstance(r, _Answer):
            out.append(interpret(i, rows.ids[i], 200, r.body, codec, latency=r.latency_ms, request_id=r.request_id,
                                 attempts=r.attempts))
        else:
            out.append(r)
    return out, codec


def replay_dataset(cfg: ReplayConfig, rows: Rows) -> ReplayResult:
    """Send every row to the served model and account for each one.

    Args:
        cfg: URL, token, codec, concurrency, warm-up, timeouts, retries, optional open-loop rate.
        rows: the labeled rows.

    Returns:
        One outcome per row, in dataset order, with client latency and, when the metrics
        log is readable, the server's PredictionTime joined by request id. ``is_complete``
        is False when the replay stopped early; unsent rows are recorded as ``not_sent``.

    Raises:
        ReplayError: the replay could not run at all (e.g. an invalid URL).
    """
    # The cyclic GC's pauses would land in the measured latencies (a tail the server does not
    # have): the timed loop allocates little that forms cycles, so collect before and after.
    gc.collect()
    was_enabled = gc.isenabled()
    frontend_since = metrics_offset(cfg.frontend_log)
    gc.disable()
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            results, wall, abort, cpu_s, warm_first, warm_ok = runner.run(_replay(cfg, rows))
    except ValueError as e:
        raise ReplayError(f"cannot replay to {cfg.url}: {e}") from e
    finally:
        if was_enabled:
            gc.enable()
    outcomes, codec = decode_answers(results, rows, cfg.codec, abort)
    warmed = tuple(interpret(k, rows.ids[k], r.status, r.body, codec) for k, r in sorted(warm_first.items()))
    outcomes = with_server_times(outcomes, await_request_times(
        cfg.metrics_log, {r.request_id for r in outcomes if r.is_ok and r.request_id}))
    frontend = None
    if cfg.frontend_log is not None:
        # The frontend logs its figures for every 200 answer, also one whose body does not decode.
        answered = sum(r.status == 200 for r in outcomes)
        frontend = {k: tuple(v) for k, v in await_frontend_times(cfg.frontend_log, frontend_since, warm_ok,
                                                                 answered).items()}
    return ReplayResult(
        rows=tuple(outcomes), wall_s=wall, concurrency=cfg.concurrency, rate=cfg.rate,
        warmup_requests=cfg.warmup_requests, is_complete=abort is None, abort_reason=abort, codec=codec,
        client_cpu_s=cpu_s, warmup_answers=warmed, frontend=frontend,
    )


def with_server_times(outcomes: list[RowOutcome], times: dict) -> list[RowOutcome]:
    """Each row with its request id's PredictionTime, HandlerTime and batch size (``logs.RequestTime``)."""
    if not times:
        return outcomes
    out = []
    for r in outcomes:
        t = times.get(r.request_id) if r.request_id else None
        out.append(replace(r, server_ms=t.prediction_ms, handler_ms=t.handler_ms, server_batch=t.batch)
                   if t is not None else r)
    return out


def probe_served(cfg: ReplayConfig, probes, served: tuple[RowOutcome, ...], codec: AnswerCodec) -> tuple:
    """Send each handler probe once to the served model (a fresh connection each) and judge the answer.

    Args:
        cfg: the replay's settings (URL, token, headers, timeouts, transport).
        probes: ``inputs.probes.HandlerProbe`` list.
        served: the replay's outcomes, for the class each probe's original row got.
        codec: the settled answer codec.

    Returns:
        One ``stages.probing.ProbeOutcome`` per probe.
    """
    from pipeline.stages.probing import judge, probe_difference

    async def go() -> list:
        target = Target.from_url(cfg.url)
        headers = dict(cfg.headers)
        if cfg.token:
            headers["Authorization"] = f"Bearer {cfg.token}"
        tls = tls_context(cfg.ca_file) if target.tls else None
        out = []
        difference = probe_difference(codec)
        for probe in probes:
            source = served[probe.source_index] if probe.source_index < len(served) else None
            original = source.predicted if source is not None else None
            if "served" not in probe.stages:
                out.append(judge(probe, "served", None, original))
                continue
            payload, content_type = codec.request(probe.body, probe.content_type,
                                                  worker_view(probe.body, probe.content_type))
            raw = build_request(target, payload, {**headers, "Content-Type": content_type})
            conn = cfg.connect(target) if cfg.connect is not None else Connection(target, tls)
            try:
                res = await _send(conn, cfg, raw, -1, probe.name, None)
            finally:
                conn.close()
            row = interpret(-1, probe.name, 200, res.body, codec, latency=res.latency_ms) if isinstance(
                res, _Answer) else res
            out.append(judge(probe, "served", row, original, source.prediction if source is not None else None,
                             difference))
        return out

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return tuple(runner.run(go()))


def preflight(cfg: ReplayConfig, rows: Rows) -> tuple[int, str]:
    """Send the first row once to a server this run did not start (``--endpoint``), before any stage works.

    Returns:
        The answer's status and, for a failure, its error class and message as one string.

    Raises:
        ReplayError: the URL is not an http(s) URL.
    """
    async def go():
        target = Target.from_url(cfg.url)
        headers = dict(cfg.headers)
        if cfg.token:
            headers["Authorization"] = f"Bearer {cfg.token}"
        conn = (cfg.connect(target) if cfg.connect is not None
                else Connection(target, tls_context(cfg.ca_file) if target.tls else None))
        try:
            return await _send(conn, cfg, request_bytes(rows, cfg.codec, target, headers, 0), 0, rows.ids[0], None)
        finally:
            conn.close()

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            res = runner.run(go())
    except ValueError as e:
        raise ReplayError(f"cannot replay to {cfg.url}: {e}") from e
    if isinstance(res, _Answer):
        return 200, ""
    return res.status or 0, f"{res.error_class}: {res.message}"


MAX_CAUSES_QUOTED = 3


def served_cause(causes: list[str]) -> str | None:
    """What to add to a failed served row from the handler exceptions model_log.log holds for the replay.

    TorchServe logs no request id with a handler's traceback, so one cause is quoted as the row's
    cause only when every traceback logged in the replay is the same; several distinct ones are all
    quoted, saying the row failed with one of them.
    """
    distinct = list(dict.fromkeys(causes))
    if not distinct:
        return None
    if len(distinct) == 1:
        return f"the handler raised {distinct[0]} (model_log.log)"
    shown = " | ".join(distinct[:MAX_CAUSES_QUOTED])
    more = f" | ... {len(distinct) - MAX_CAUSES_QUOTED} more" if len(distinct) > MAX_CAUSES_QUOTED else ""
    return f"the handler raised one of {len(distinct)} exceptions in model_log.log: {shown}{more}"


HANDLED_CAUSE = "; the handler raised "  # how the handled stage quotes a row's cause (``stages.handled``)


def with_served_causes(result: "ReplayResult", probes: tuple, row_causes: list[str],
                       probe_causes: list[str] = (), handled: tuple = ()) -> tuple["ReplayResult", tuple]:
    """The replay's rows and the served probes, each failed ``handler_error`` one with its quoted cause.

    ``row_causes`` are the tracebacks logged during the replay. A row whose in-process answer
    (``handled``: the handled stage's batch-1 outcomes) quoted a cause that model_log.log also holds
    gets that one (matched by content: the log has no request id); the others get ``served_cause``.
    ``probe_causes`` are those logged while the probes were sent (one at a time, in order): when
    there are as many as failed probes, each probe gets its own; otherwise each gets them all.
    """
    row_cause = served_cause(row_causes)
    logged = set(row_causes)
    in_process = {o.index: o.message.split(HANDLED_CAUSE, 1)[1] for o in handled
                  if not o.is_ok and o.message and HANDLED_CAUSE in o.message}

    def cause_of(r) -> str | None:
        mine = in_process.get(r.index)
        return f"the handler raised {mine} (model_log.log)" if mine in logged else row_cause

    rows = tuple(replace(r, message=f"{r.message}; {cause_of(r)}")
                 if row_cause and not r.is_ok and r.error_class == "handler_error" else r for r in result.rows)
    failing = [i for i, p in enumerate(probes) if p.message.startswith("handler_error")]
    own = len(probe_causes) == len(failing)
    shared = served_cause(list(probe_causes))
    out = list(probes)
    for n, i in enumerate(failing):
        cause = f"the handler raised {probe_causes[n]} (model_log.log)" if own else shared
        if cause:
            out[i] = replace(probes[i], message=f"{probes[i].message}; {cause}")
    return replace(result, rows=rows), tuple(out)
