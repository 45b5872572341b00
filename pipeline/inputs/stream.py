"""Rows through the reference preprocessing, chunk by chunk: the model inputs of every in-process stage.

Every row's body becomes its worker view, then the reference's model input (a tensor, a tuple
or a dict of tensors: ``pipeline.modelinput``). A row the reference
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
from pipeline.modelinput import (Collate, InputSample, RangeTracker, batch_of, describe, layout, map_leaves, shapes,
                                 stack, take)
from pipeline.usercode import plain, user_frame

_BYTES_IO = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")

SAMPLE_ROWS = 128


@dataclass
class StreamFacts:
    """What a pass over the rows saw: the input's structure, dtype and shape, the value range, a sample,
    failures.

    ``shape``/``dtype``/``low``/``high``/``sample`` describe one tensor per row of one shape (the common
    case, and the report's input shape); ``layout``, ``sample_inputs`` and ``ranges`` describe any structure
    (a tuple or dict of tensors, of any dtype, shapes varying by row).
    """

    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    low: np.ndarray | None = None  # elementwise minimum over all rows (one tensor of one shape)
    high: np.ndarray | None = None
    sample: list[np.ndarray] = field(default_factory=list)  # the first SAMPLE_ROWS inputs, as float32
    failures: list[tuple[str, str]] = field(default_factory=list)  # (row id, reason)
    failed_count: int = 0
    preprocess_ms: list[float] = field(default_factory=list)
    layout: tuple | None = None  # the first row's structure, dtypes and ranks
    first_shapes: tuple | None = None
    first_described: str = ""
    is_fixed: bool = True  # every row had the first row's shapes
    sample_inputs: list = field(default_factory=list)  # the first SAMPLE_ROWS inputs, structure and dtype kept
    ranges: RangeTracker = field(default_factory=RangeTracker)

    def sample_array(self) -> np.ndarray:
        return np.stack(self.sample) if self.sample else np.zeros((0,), np.float32)

    def input_sample(self, collate: Collate | None) -> InputSample:
        return InputSample(rows=tuple(self.sample_inputs), collate=collate, is_fixed=self.is_fixed,
                           lows=tuple(self.ranges.lows), highs=tuple(self.ranges.highs))

    def description(self) -> str:
        return InputSample(rows=tuple(self.sample_inputs[:1]), is_fixed=self.is_fixed).description()


@dataclass
class Chunk:
    """One chunk's model inputs: the rows, and the stacked batch when they stack without a collate."""

    rows: list
    collate: Collate | None = None
    stacked: object = None  # Structure [k, ...], rows of one shape and no collate

    def __len__(self) -> int:
        return len(self.rows)

    def one(self, j: int):
        """Row ``j`` as the model's input at batch 1."""
        if self.stacked is not None:
            return take(self.stacked, j)
        return batch_of([self.rows[j]], self.collate)


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
                     keep_range: bool = True, collate: Collate | None = None) -> Iterator[tuple[list[int], Chunk]]:
    """Yield (row indices, the chunk's model inputs) per chunk; failed rows are left out and recorded.

    A row's input may be a tensor, a tuple or a dict of tensors (``modelinput.as_input``); a row whose
    structure, dtypes or ranks differ from the first row's fails with that reason. Rows of one shape are
    stacked (unless ``collate`` is given); rows whose shapes vary are batched by ``collate`` or fed one by one.
    """
    for chunk in rows.chunks(chunk_rows):
        kept, inputs = [], []
        with one_thread():
            _preprocess_chunk(rows, reference, chunk, facts, kept, inputs)
        if not inputs:
            continue
        fixed = all(shapes(x) == facts.first_shapes for x in inputs)
        facts.is_fixed = facts.is_fixed and fixed
        stacked = stack(inputs) if fixed and collate is None else None
        if keep_range:
            _keep_range(facts, inputs, stacked)
        yield kept, Chunk(inputs, collate, stacked)


def _keep_range(facts: StreamFacts, inputs: list, stacked) -> None:
    facts.ranges.add(inputs, stacked)
    room = SAMPLE_ROWS - len(facts.sample_inputs)
    if room > 0:
        # Rows of a stacked chunk are kept as views of it, so an image sample is held once, not twice.
        facts.sample_inputs.extend(inputs[:room] if stacked is None else
                                   [map_leaves(lambda t, j=j: t[j], stacked) for j in range(min(room, len(inputs)))])
    if not (facts.is_fixed and isinstance(stacked, torch.Tensor)):
        return
    # One tensor of one shape: the elementwise float32 range and sample the numeric probes have always used.
    arr = stacked.detach().to(torch.float32).numpy()
    lo, hi = arr.min(axis=0), arr.max(axis=0)
    facts.low = lo if facts.low is None else np.minimum(facts.low, lo)
    facts.high = hi if facts.high is None else np.maximum(facts.high, hi)
    room = SAMPLE_ROWS - len(facts.sample)
    if room > 0:
        facts.sample.extend(list(arr[:room]))


def _preprocess_chunk(rows: Rows, reference: Reference, chunk: range, facts: StreamFacts, kept: list,
                      inputs: list) -> None:
    import time

    from pipeline.modelinput import as_input

    for i in chunk:
        t0 = time.perf_counter()
        try:
            out = reference.fn(worker_view(rows.body(i), rows.content_type))
            try:
                x = as_input(out)
            except TypeError as e:
                raise TypeError(f"the reference preprocessing returned {e}") from None
            if facts.layout is None:
                facts.layout, facts.first_shapes, facts.first_described = layout(x), shapes(x), describe(x)
                if isinstance(x, torch.Tensor):
                    facts.shape, facts.dtype = tuple(x.shape), str(x.dtype).replace("torch.", "")
                else:
                    facts.shape, facts.dtype = facts.first_shapes[0], describe(x)
            elif layout(x) != facts.layout:
                raise ValueError(f"gave {describe(x)}, the first row gave {facts.first_described}: every row needs the "
                                 "same structure, dtypes and number of dimensions")
        except Exception as e:  # the user's preprocessing may raise anything: record it, go on
            facts.failed_count += 1
            if len(facts.failures) < 20:
                facts.failures.append((rows.ids[i], _reason(rows, i, e)))
            continue
        facts.preprocess_ms.append((time.perf_counter() - t0) * 1e3)
        kept.append(i)
        inputs.append(x)


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
