"""In-process scoring shared by the baseline and export stages: outputs and per-row latency."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Scores:
    """Outputs of one model on every row, scored one row at a time as a server would."""

    logits: np.ndarray  # float32 [N, C]
    latencies_ms: np.ndarray  # float64 [N], one forward call per row

    @property
    def probabilities(self) -> np.ndarray:
        return softmax(self.logits)

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1).astype(np.int64)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def score_rows(forward: Forward, features: np.ndarray, *, warmup: int = 5) -> Scores:
    """Run ``forward`` on each row at batch 1, timing each call with a monotonic clock.

    Args:
        forward: the model's forward, taking a [1, *shape] float32 tensor.
        features: float32 [N, *shape].
        warmup: untimed calls before the first row.

    Returns:
        Logits and per-row latency in milliseconds.
    """
    x = torch.from_numpy(np.ascontiguousarray(features))
    outs = []
    lat = np.empty(len(x), dtype=np.float64)
    with torch.inference_mode():
        for _ in range(min(warmup, len(x))):
            forward(x[:1])
        for i in range(len(x)):
            row = x[i : i + 1]
            t0 = time.perf_counter_ns()
            y = forward(row)
            lat[i] = (time.perf_counter_ns() - t0) / 1e6
            outs.append(y.detach().to(torch.float32).reshape(1, -1).numpy())
    return Scores(logits=np.concatenate(outs, axis=0), latencies_ms=lat)


def run_batched(forward: Forward, features: np.ndarray, batch_size: int) -> np.ndarray:
    """Outputs of ``forward`` on ``features`` fed in batches of ``batch_size``."""
    x = torch.from_numpy(np.ascontiguousarray(features))
    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            batch = x[i : i + batch_size]
            outs.append(forward(batch).detach().to(torch.float32).reshape(len(batch), -1).numpy())
    return np.concatenate(outs, axis=0) if outs else np.zeros((0, 0), np.float32)
