"""One row's answer from a handler, in-process (handled) or over HTTP (served), read the same way.

Both stages hand each row's status and body to ``interpret``: a 200 answer is decoded by the
run's answer codec (a body that does not decode is ``bad_response``, quoted); any other
status is classified by TorchServe's wording. Then ``stage_outputs`` lines the outcomes up
by row for the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.answers.base import AnswerError, Prediction
from pipeline.answers.registry import AnswerCodec
from pipeline.evaluate.compare import StageOutputs
from pipeline.names import Stage
from pipeline.torchserve.errors import classify_status

BODY_QUOTE_CHARS = 300


@dataclass(frozen=True)
class RowOutcome:
    """What happened to one dataset row in one stage."""

    index: int
    id: str
    is_ok: bool
    status: int | None
    prediction: Prediction | None
    latency_ms: float | None
    request_id: str | None
    server_ms: float | None
    error_class: str | None
    message: str | None
    attempts: int
    handler_ms: float | None = None  # the batch's HandlerTime in model_metrics.log (served rows)
    server_batch: int | None = None  # how many requests that batch held (its ids share its times)

    @property
    def predicted(self) -> int | None:
        return self.prediction.index if self.prediction is not None else None


def failed(index: int, row_id: str, cls: str, msg: str, *, status: int | None = None,
           latency: float | None = None, request_id: str | None = None, attempts: int = 1) -> RowOutcome:
    return RowOutcome(index, row_id, False, status, None, latency, request_id, None, cls, msg, attempts)


def quote(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace")
    return repr(text[:BODY_QUOTE_CHARS]) + ("..." if len(text) > BODY_QUOTE_CHARS else "")


def interpret(index: int, row_id: str, status: int, body: bytes, codec: AnswerCodec, *,
              latency: float | None = None, request_id: str | None = None, attempts: int = 1) -> RowOutcome:
    """The outcome of one answer: decoded, or classified with its reason."""
    if status != 200:
        cls, msg = classify_status(status, body.decode("utf-8", errors="replace"))
        return failed(index, row_id, cls, msg, status=status, latency=latency, request_id=request_id,
                      attempts=attempts)
    try:
        pred = codec.decode(body)
    except AnswerError as e:
        return failed(index, row_id, "bad_response", f"{e}; body: {quote(body)}", status=200, latency=latency,
                      request_id=request_id, attempts=attempts)
    return RowOutcome(index, row_id, True, 200, pred, latency, request_id, None, None, None, attempts)


def stage_outputs(stage: Stage, outcomes: tuple[RowOutcome, ...], num_classes: int) -> StageOutputs:
    """Per-row predictions, probabilities (NaN where not carried) and logits, in dataset order."""
    n = len(outcomes)
    probs = np.full((n, num_classes), np.nan)
    logits = np.full((n, num_classes), np.nan)
    lat = np.full(n, np.nan)
    preds = np.full(n, -1, dtype=np.int64)
    has_probs = has_logits = False
    for r in outcomes:
        if r.latency_ms is not None and r.is_ok:
            lat[r.index] = r.latency_ms
        if not r.is_ok or r.prediction is None:
            continue
        preds[r.index] = r.prediction.index
        if r.prediction.probabilities is not None:
            probs[r.index] = r.prediction.probabilities
            has_probs = True
        if r.prediction.logits is not None:
            logits[r.index] = r.prediction.logits
            has_logits = True
    return StageOutputs(stage, preds, probs if has_probs else None, logits if has_logits else None, lat)
