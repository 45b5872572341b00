"""Where a served request's time goes: the server's times joined to each row by request id, and the
frontend's queue and total times beside them as distributions (TorchServe 0.12 logs those without ids).

Per answered row (joined by its ``x-request-id``), the parts add up to the client's latency:

- ``handler_ms``: HandlerTime, BaseHandler.handle's own timing of preprocess + inference + postprocess;
- ``worker_other_ms``: PredictionTime - HandlerTime, TorchServe's Python worker around the handler;
- ``client_overhead_ms``: client latency - PredictionTime, everything outside the worker: the queue,
  the frontend, the worker's socket, HTTP and the client itself.

A batch logs one line per metric for all its ids, so each row of a batch gets its batch's times.
Every replayed row is counted in exactly one of ``ROW_KINDS``; a row that cannot be joined is
counted and said, never dropped. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol

import numpy as np

from pipeline.evaluate.stats import LatencySummary, summarize_latency

COMPONENTS = ("client_ms", "prediction_ms", "handler_ms", "worker_other_ms", "client_overhead_ms")
STACKED = ("handler_ms", "worker_other_ms", "client_overhead_ms")  # add up to client_ms on a joined row
FRONTEND = ("frontend_ms", "queue_ms", "queue_gauge_ms", "worker_thread_ms")
LABELS = {"client_ms": "client latency (HTTP round trip)", "prediction_ms": "server PredictionTime (worker)",
          "handler_ms": "handler (HandlerTime)",
          "worker_other_ms": "worker around the handler (PredictionTime - HandlerTime)",
          "client_overhead_ms": "outside the worker: queue, frontend, HTTP, client (client - PredictionTime)",
          "frontend_ms": "frontend total, arrival to answer (ts_inference_latency_microseconds)",
          "queue_ms": "queue (ts_queue_latency_microseconds)", "queue_gauge_ms": "queue (QueueTime gauge, whole ms)",
          "worker_thread_ms": "frontend worker thread, per batch (WorkerThreadTime)"}
ROW_LABELS = {"joined": "joined (PredictionTime and HandlerTime)",
              "prediction_only": "PredictionTime only (no HandlerTime)",
              "no_server_time": "answered, no server time logged", "no_request_id": "answered, no x-request-id",
              "failed": "failed (not split)"}
ROW_KINDS = ("joined", "prediction_only", "no_server_time", "no_request_id", "failed")
QUEUE_NOTE = ("Queue time comes from ts_metrics.log (ts_queue_latency_microseconds, and QueueTime, a gauge in "
              "whole ms): TorchServe 0.12 logs them without a request id, so they are shown as a distribution "
              "over the replay's answered requests beside the per-request join, never joined to rows; the same "
              "holds for the frontend's total (ts_inference_latency_microseconds) and WorkerThreadTime (per batch).")


class ServedRow(Protocol):
    """What a served row carries (``stages.outcomes.RowOutcome``)."""

    is_ok: bool
    status: int | None
    latency_ms: float | None
    request_id: str | None
    server_ms: float | None
    handler_ms: float | None
    server_batch: int | None


@dataclass(frozen=True)
class LatencySplit:
    """The replay's time, per part.

    Attributes:
        components: each part's percentiles over the rows that have it (None where no row has it).
        frontend: the frontend's distributions from ts_metrics.log (None without that log).
        rows: every replayed row in one of ``ROW_KINDS``; they sum to ``replayed``.
        frontend_logged: requests answered with 200 whose frontend figures were read (None without the log).
        batched_rows: joined rows served in a batch of more than one request.
        negative: per part, rows where it came out below zero (kept as measured, said in ``notes``).
        notes: what the figures mean where a row could not be joined or a part is unusual.
    """

    replayed: int
    components: dict[str, LatencySummary | None]
    frontend: dict[str, LatencySummary | None] | None
    rows: dict[str, int]
    frontend_logged: int | None
    batched_rows: int
    negative: dict[str, int]
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        def summary(s: LatencySummary | None) -> dict | None:
            return s.to_dict() if s is not None else None

        return {"replayed": self.replayed, "rows": dict(self.rows),
                "components": {k: summary(v) for k, v in self.components.items()},
                "frontend": {k: summary(v) for k, v in self.frontend.items()} if self.frontend is not None else None,
                "frontend_logged": self.frontend_logged, "batched_rows": self.batched_rows,
                "negative": dict(self.negative), "notes": list(self.notes)}


def row_kind(r: ServedRow) -> str:
    """Which of ``ROW_KINDS`` a served row is."""
    if not r.is_ok:
        return "failed"
    if not r.request_id:
        return "no_request_id"
    if r.server_ms is None:
        return "no_server_time"
    return "joined" if r.handler_ms is not None else "prediction_only"


def parts(client_ms: float, prediction_ms: float | None, handler_ms: float | None) -> dict[str, float]:
    """The parts of one answered row's latency that its joined times give (absent ones left out)."""
    out = {"client_ms": client_ms}
    if prediction_ms is not None:
        out["prediction_ms"] = prediction_ms
        out["client_overhead_ms"] = client_ms - prediction_ms
        if handler_ms is not None:
            out["handler_ms"] = handler_ms
            out["worker_other_ms"] = prediction_ms - handler_ms
    return out


def split_latency(rows: Iterable[ServedRow], frontend: dict[str, Iterable[float]] | None = None,
                  logs_read: bool = True) -> LatencySplit:
    """Each part of the served latency, its percentiles, and an account of every replayed row.

    Args:
        rows: the replay's outcomes (failed ones included: they are counted).
        frontend: ``logs.read_frontend_times`` of the replay (None: no ts_metrics.log was read).
        logs_read: False when the run could read no TorchServe log (a server it did not start).

    Returns:
        The split; ``rows`` sums to the number of rows given.
    """
    rows = list(rows)
    kinds = {k: 0 for k in ROW_KINDS}
    values: dict[str, list[float]] = {k: [] for k in COMPONENTS}
    batched = 0
    for r in rows:
        kind = row_kind(r)
        kinds[kind] += 1
        if kind == "failed" or r.latency_ms is None:
            continue
        for k, v in parts(r.latency_ms, r.server_ms if kind in ("joined", "prediction_only") else None,
                          r.handler_ms if kind == "joined" else None).items():
            values[k].append(v)
        if kind in ("joined", "prediction_only") and (r.server_batch or 1) > 1:
            batched += 1
    components = {k: summarize_latency(v) for k, v in values.items()}
    negative = {k: int(sum(x < 0 for x in values[k])) for k in ("worker_other_ms", "client_overhead_ms")}
    answered = sum(r.status == 200 for r in rows)  # the frontend logs its figures for each 200 answer
    fr = None
    logged = None
    if frontend is not None:
        fr = {k: summarize_latency(list(frontend.get(k, ()))) for k in FRONTEND}
        logged = len(list(frontend.get("frontend_ms", ())))
    notes = _notes(kinds, answered, batched, negative, values, logged, logs_read)
    return LatencySplit(replayed=len(rows), components=components, frontend=fr, rows=kinds, frontend_logged=logged,
                        batched_rows=batched, negative=negative, notes=tuple(notes))


def _notes(kinds: dict[str, int], answered: int, batched: int, negative: dict[str, int],
           values: dict[str, list[float]], logged: int | None, logs_read: bool) -> list[str]:
    notes = []
    if not logs_read:
        notes.append("No TorchServe log could be read (a server this run did not start): only the client's latency "
                     "is known, nothing is joined.")
    else:
        notes.append(QUEUE_NOTE)
    if kinds["prediction_only"]:
        notes.append(f"{kinds['prediction_only']} answered row(s) have a PredictionTime but no HandlerTime in "
                     "model_metrics.log: TorchServe's BaseHandler.handle logs HandlerTime, a handler that overrides "
                     "handle or is a function logs none, so their handler time is not split from the worker's.")
    if kinds["no_server_time"] and logs_read:
        notes.append(f"{kinds['no_server_time']} answered row(s) have no PredictionTime line for their request id in "
                     "model_metrics.log (not written within the wait, or the log is not this server's): their "
                     "server time is unknown.")
    if kinds["no_request_id"]:
        notes.append(f"{kinds['no_request_id']} answered row(s) came back without an x-request-id header: there is "
                     "nothing to join them by.")
    if kinds["failed"]:
        notes.append(f"{kinds['failed']} failed row(s) are not split: TorchServe logs PredictionTime and HandlerTime "
                     "only for batches that succeeded.")
    if batched:
        notes.append(f"{batched} row(s) were served in batches of more than one request: each has its batch's "
                     "PredictionTime and HandlerTime (one line for all the batch's ids).")
    if negative["client_overhead_ms"]:
        worst = -min(values["client_overhead_ms"])
        notes.append(f"{negative['client_overhead_ms']} row(s) have a PredictionTime above the client's latency (by up "
                     f"to {worst:.3g} ms), kept as measured: the worker times with the wall clock (time.time(), "
                     "rounded to 0.01 ms), the client with a monotonic one, so a clock step makes them disagree.")
    if negative["worker_other_ms"]:
        notes.append(f"{negative['worker_other_ms']} row(s) have a HandlerTime above their PredictionTime, kept as "
                     "measured: TorchServe rounds both to 0.01 ms, so two nearly equal times can cross.")
    if logged is not None and logged < answered:
        notes.append(f"ts_metrics.log holds the frontend's figures for {logged} of the {answered} request(s) "
                     "answered with 200: the rest were cut by the log cap or not yet written, so its distributions cover "
                     "those only.")
    return notes


def stacked_rows(client_ms, prediction_ms, handler_ms) -> dict[str, np.ndarray]:
    """The ``STACKED`` parts of the joined rows (those with both server times), sorted by client latency:
    the arrays a stacked plot draws, one value per row (they add up to that row's client latency)."""
    c, p, h = (np.asarray(x, dtype=float) for x in (client_ms, prediction_ms, handler_ms))
    ok = np.isfinite(c) & np.isfinite(p) & np.isfinite(h)
    order = np.argsort(c[ok], kind="stable")
    c, p, h = c[ok][order], p[ok][order], h[ok][order]
    return {"client_ms": c, "handler_ms": h, "worker_other_ms": p - h, "client_overhead_ms": c - p}
