"""Rows through the reference preprocessing, chunk by chunk: the model inputs of every in-process stage.

Every row's body becomes its worker view, then the reference's tensor. A row the reference
cannot preprocess is collected (id and exception) and the stream goes on, so one error
names every bad row; the caller decides what a failed row means.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from pipeline.inputs.base import Reference, Rows, worker_view
from pipeline.usercode import plain, user_frame

_BYTES_IO = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")

SAMPLE_ROWS = 128


@dataclass
class StreamFacts:
    """What a pass over the rows saw: input shape and dtype, the value range, a sample, failures."""

    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    low: np.ndarray | None = None  # elementwise minimum over all rows
    high: np.ndarray | None = None
    sample: list[np.ndarray] = field(default_factory=list)  # the first SAMPLE_ROWS inputs
    failures: list[tuple[str, str]] = field(default_factory=list)  # (row id, reason)
    failed_count: int = 0
    preprocess_ms: list[float] = field(default_factory=list)

    def sample_array(self) -> np.ndarray:
        return np.stack(self.sample) if self.sample else np.zeros((0,), np.float32)


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, (tuple, list, dict)):
        raise TypeError(f"the reference preprocessing returned a {type(x).__name__}: several inputs per row are "
                        "not validated here; the model must take one tensor per row")
    raise TypeError(f"the reference preprocessing returned {type(x).__name__}, expected a torch.Tensor")


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread while a chunk is preprocessed: per-row image transforms are small tensor ops
    whose intra-op threads only contend (measured 4-6x slower with 2 threads on a 2-core machine);
    elementwise results do not depend on the thread count."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def reference_chunks(rows: Rows, reference: Reference, chunk_rows: int, facts: StreamFacts,
                     keep_range: bool = True) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (row indices, stacked inputs [k, *shape]) per chunk; failed rows are left out and recorded.

    A row whose tensor's shape or dtype differs from the first row's fails with that reason.
    """
    for chunk in rows.chunks(chunk_rows):
        kept, tensors = [], []
        with one_thread():
            _preprocess_chunk(rows, reference, chunk, facts, kept, tensors)
        if not tensors:
            continue
        batch = torch.stack(tensors)
        if keep_range:
            arr = batch.detach().to(torch.float32).numpy()
            lo, hi = arr.min(axis=0), arr.max(axis=0)
            facts.low = lo if facts.low is None else np.minimum(facts.low, lo)
            facts.high = hi if facts.high is None else np.maximum(facts.high, hi)
            room = SAMPLE_ROWS - len(facts.sample)
            if room > 0:
                facts.sample.extend(list(arr[:room]))
        yield kept, batch


def _preprocess_chunk(rows: Rows, reference: Reference, chunk: range, facts: StreamFacts, kept: list,
                      tensors: list) -> None:
    import time

    for i in chunk:
        t0 = time.perf_counter()
        try:
            x = _as_tensor(reference.fn(worker_view(rows.body(i), rows.content_type)))
            if facts.shape is None:
                facts.shape, facts.dtype = tuple(x.shape), str(x.dtype).replace("torch.", "")
            elif tuple(x.shape) != facts.shape or str(x.dtype).replace("torch.", "") != facts.dtype:
                raise ValueError(f"gave a {str(x.dtype).replace('torch.', '')} tensor of shape "
                                 f"{list(x.shape)}, the first row gave {facts.dtype} {list(facts.shape)}")
        except Exception as e:  # the user's preprocessing may raise anything: record it, go on
            facts.failed_count += 1
            if len(facts.failures) < 20:
                facts.failures.append((rows.ids[i], _reason(rows, i, e)))
            continue
        facts.preprocess_ms.append((time.perf_counter() - t0) * 1e3)
        kept.append(i)
        tensors.append(x)


def _reason(rows: Rows, i: int, e: Exception) -> str:
    """Why row ``i`` failed: the exception's own text (ANSI escapes out), with an image row's file named
    where PIL only says ``<_io.BytesIO object at 0x...>`` (a manifest may point outside its folder)."""
    text = plain(str(e))
    if rows.paths is not None:
        path = str(rows.paths[i])
        text = _BYTES_IO.sub(path, text)
        if path not in text:
            text += f" (file {path})"
    return f"{type(e).__name__}: {text}{user_frame(e)}"
