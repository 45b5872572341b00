"""In-process forward passes shared by the baseline and export stages: outputs and per-row latency."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from pipeline.modelinput import Collate, batch_of, call_model

Forward = Callable[..., torch.Tensor]
Encode = Callable[[Any, int], np.ndarray]  # a task's model output for n rows -> float32 [n, D] (tasks/*.py)


class OutputError(TypeError):
    """The model's output is not one logits tensor (the model ran; what it returns is not validated here)."""


@dataclass(frozen=True)
class Scores:
    """Outputs of one model on every row, scored one row at a time as a server would.

    Rows that produced no output (their input failed) have NaN logits and latency.
    """

    logits: np.ndarray  # float32 [N, C]
    latencies_ms: np.ndarray  # float64 [N], one forward call per row

    @property
    def probabilities(self) -> np.ndarray:
        return softmax(self.logits)

    @property
    def predictions(self) -> np.ndarray:
        ok = np.isfinite(self.logits).all(axis=1)
        pred = np.where(ok, np.nan_to_num(self.logits, nan=-np.inf).argmax(axis=1), -1)
        return pred.astype(np.int64)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64; rows holding NaN stay NaN."""
    out = np.full(logits.shape, np.nan)
    ok = np.isfinite(logits).all(axis=1) if logits.ndim == 2 and logits.shape[1] else np.zeros(len(logits), bool)
    if ok.any():
        z = logits[ok].astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        out[ok] = e / e.sum(axis=1, keepdims=True)
    return out


def output_rows(y: torch.Tensor, n: int, encode: Encode | None = None) -> np.ndarray:
    """A model output as float32 [n, C]; TypeError for outputs that are not one tensor. ``encode``: the
    task's encoding of another output (detection's list of dicts, segmentation's {"out": ...}) as rows."""
    if encode is not None:
        return encode(y, n)
    if isinstance(y, (tuple, list)):
        raise OutputError(f"the model returns a {type(y).__name__} of {len(y)} outputs; "
                        "package-validate validates models that return one logits tensor")
    if not isinstance(y, torch.Tensor):
        raise OutputError(f"the model returns {type(y).__name__}, not a tensor of logits")
    return y.detach().to(torch.float32).reshape(n, -1).numpy()


def score_chunks(forward: Forward, chunks: Iterable[tuple[list[int], Any]], n_rows: int,
                 warmup: int = 5, encode: Encode | None = None) -> Scores:
    """Run ``forward`` on each row at batch 1, timing each call with a monotonic clock.

    Args:
        forward: the model's forward, called as ``modelinput.call_model`` does (``x``, ``*x`` or ``**x``).
        chunks: (row indices, ``inputs.stream.Chunk``) as ``inputs.stream.reference_chunks`` yields them.
        n_rows: the dataset's row count; rows never yielded keep NaN.
        warmup: untimed calls on the first row before timing starts.

    Returns:
        Logits and per-row latency in milliseconds.
    """
    logits: np.ndarray | None = None
    lat = np.full(n_rows, np.nan)
    warmed = False
    with torch.inference_mode():
        for index, chunk in chunks:
            if not warmed:
                first = chunk.one(0)
                for _ in range(warmup):
                    call_model(forward, first)
                warmed = True
            for j, i in enumerate(index):
                row = chunk.one(j)
                t0 = time.perf_counter_ns()
                y = call_model(forward, row)
                lat[i] = (time.perf_counter_ns() - t0) / 1e6
                out = output_rows(y, 1, encode)
                if logits is None:
                    logits = np.full((n_rows, out.shape[1]), np.nan, np.float32)
                logits[i] = out[0]
    if logits is None:
        logits = np.full((n_rows, 0), np.nan, np.float32)
    return Scores(logits=logits, latencies_ms=lat)


def run_batched(forward: Forward, rows: Sequence | np.ndarray, batch_size: int, collate: Collate | None = None,
                encode: Encode | None = None) -> np.ndarray:
    """Outputs of ``forward`` on ``rows`` (per-row structures, or one array [N, ...]) fed ``batch_size`` at a time,
    each batch stacked or built by ``collate``."""
    if isinstance(rows, np.ndarray):
        rows = list(torch.from_numpy(np.ascontiguousarray(rows)))
    outs = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            part = rows[i : i + batch_size]
            outs.append(output_rows(call_model(forward, batch_of(part, collate)), len(part), encode))
    return np.concatenate(outs, axis=0) if outs else np.zeros((0, 0), np.float32)
