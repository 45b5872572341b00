"""One row's model input, of any structure: a tensor, a tuple of tensors or a dict of tensors.

The reference preprocessing returns one of these per row (int64 token ids, ids + attention
mask, text + offsets, an image tensor), of any dtype and of a shape that may vary by row.
A *batch* is the model's input for several rows: each tensor stacked on a new first
dimension (rows of one shape), or what ``model.collate`` builds from the list of rows
(padding, concatenated ids with offsets). The model is called as TorchServe's
``BaseHandler.inference`` would: ``model(x)``, ``model(*x)`` for a tuple, ``model(**x)`` for a dict.

Structures are plain values (``Tensor | tuple[Tensor, ...] | dict[str, Tensor]``), so a single
tensor stays a bare tensor everywhere and every existing path keeps its results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

Structure = Any  # torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]
Collate = Callable[[list], Any]


def as_input(x: Any) -> Structure:
    """A row's input as a structure of tensors: numpy arrays become tensors, a list becomes a tuple.

    Raises:
        TypeError: not a tensor, a tuple/list or a dict of tensors (names what was found).
    """
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, (tuple, list)) and x:
        return tuple(_leaf(v, f"item {i}") for i, v in enumerate(x))
    if isinstance(x, dict) and x:
        bad = [k for k in x if not isinstance(k, str)]
        if bad:
            raise TypeError(f"a dict of inputs needs str keys (forward's argument names), got {bad[:3]}")
        return {k: _leaf(v, f"key {k!r}") for k, v in x.items()}
    if isinstance(x, (tuple, list, dict)):
        raise TypeError(f"an empty {type(x).__name__}: expected at least one tensor")
    raise TypeError(f"a {type(x).__name__}; expected a torch.Tensor, a tuple of tensors (forward(*x)) or a dict "
                    "of tensors (forward(**x))")


def _leaf(v: Any, where: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))
    raise TypeError(f"{where} is a {type(v).__name__}, not a tensor; nest no deeper than one tuple or dict of "
                    "tensors")


def leaves(x: Structure) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    return list(x.values()) if isinstance(x, dict) else list(x)


def rebuild(x: Structure, new: Sequence) -> Structure:
    """``x``'s structure holding ``new`` (one value per leaf, in ``leaves`` order)."""
    if isinstance(x, torch.Tensor):
        (only,) = new
        return only
    if isinstance(x, dict):
        return dict(zip(x.keys(), new))
    return tuple(new)


def map_leaves(fn: Callable[[torch.Tensor], Any], x: Structure) -> Structure:
    return rebuild(x, [fn(t) for t in leaves(x)])


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def leaf_names(x: Structure) -> list[str]:
    if isinstance(x, torch.Tensor):
        return ["input"]
    return list(x.keys()) if isinstance(x, dict) else [f"input {i}" for i in range(len(x))]


def layout(x: Structure) -> tuple:
    """What every row must share with the first: the structure, each tensor's dtype and rank (not sizes)."""
    kind = "tensor" if isinstance(x, torch.Tensor) else "dict" if isinstance(x, dict) else "tuple"
    keys = tuple(x.keys()) if isinstance(x, dict) else len(leaves(x))
    return kind, keys, tuple((dtype_name(t), t.dim()) for t in leaves(x))


def shapes(x: Structure) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(t.shape) for t in leaves(x))


def describe(x: Structure) -> str:
    """``int64 [7]``, ``(int64 [7], int64 [1])`` or ``{ids: int64 [7], mask: bool [7]}``."""
    def one(t: torch.Tensor) -> str:
        return f"{dtype_name(t)} {list(t.shape)}"

    if isinstance(x, torch.Tensor):
        return one(x)
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {one(t)}" for k, t in x.items()) + "}"
    return "(" + ", ".join(one(t) for t in x) + ")"


def stack(rows: Sequence[Structure]) -> Structure:
    """Rows of one shape as a batch: each tensor stacked on a new first dimension.

    Raises:
        ValueError: the rows' shapes differ (names the first two that do).
    """
    first = shapes(rows[0])
    for r in rows[1:]:
        if shapes(r) != first:
            raise ValueError(f"rows of different shapes do not stack: {describe(rows[0])} and {describe(r)}; "
                             "name model.collate (file.py:function) to batch them")
    return rebuild(rows[0], [torch.stack(ts) for ts in zip(*(leaves(r) for r in rows))])


def take(batch: Structure, j: int, k: int = 1) -> Structure:
    """Rows ``j .. j+k`` of a stacked batch."""
    return map_leaves(lambda t: t[j:j + k], batch)


def batch_of(rows: Sequence[Structure], collate: Collate | None) -> Structure:
    """The model's input for ``rows``: ``collate(list of rows)`` when the spec names one, else stacked."""
    if collate is None:
        return stack(rows)
    return as_input(collate(list(rows)))


def call_model(fn: Callable, x: Structure) -> Any:
    """``fn(x)``, ``fn(*x)`` or ``fn(**x)``: how BaseHandler.inference hands the model its input."""
    if isinstance(x, dict):
        return fn(**x)
    if isinstance(x, tuple):
        return fn(*x)
    return fn(x)


def example_inputs(x: Structure) -> tuple[tuple, dict]:
    """(args, kwargs) for torch.jit.trace and torch.export from one batch."""
    if isinstance(x, dict):
        return (), dict(x)
    if isinstance(x, tuple):
        return x, {}
    return (x,), {}


def dynamic_dims(examples: Sequence[Structure]) -> Structure:
    """torch.export ``dynamic_shapes`` for batches like ``examples``: a dimension whose size differs between
    them (the batch, a token length) is ``Dim.AUTO`` (torch.export finds how dims relate, e.g. ids and mask
    sharing a length), the others static."""
    per_leaf = []
    for ts in zip(*(leaves(e) for e in examples)):
        varying = {d for d in range(ts[0].dim()) if len({t.shape[d] for t in ts}) > 1}
        per_leaf.append({d: torch.export.Dim.AUTO for d in sorted(varying)} or None)
    return rebuild(examples[0], per_leaf)


@dataclass(frozen=True)
class InputSample:
    """The model inputs a pass over the rows kept, for export examples, probes and latency timing.

    Attributes:
        rows: the first rows' inputs, one structure each, dtype kept.
        collate: ``model.collate``, or None (rows stacked).
        is_fixed: every row's tensors had the first row's shapes.
        lows, highs: per tensor (``leaves`` order), its range over every row: elementwise while every row
            had that tensor's shape, a scalar where the shape varied.
    """

    rows: tuple[Structure, ...]
    collate: Collate | None = None
    is_fixed: bool = True
    lows: tuple[np.ndarray, ...] = ()
    highs: tuple[np.ndarray, ...] = ()

    @property
    def can_batch(self) -> bool:
        """Several rows make one model input: a collate is named, or every row has one shape."""
        return self.collate is not None or self.is_fixed

    @property
    def is_single_float(self) -> bool:
        """One floating-point tensor per row, of one shape, stacked: today's numeric probes apply."""
        return (bool(self.rows) and self.collate is None and self.is_fixed and isinstance(self.rows[0], torch.Tensor)
                and self.rows[0].is_floating_point())

    def description(self) -> str:
        if not self.rows:
            return "no input"
        text = describe(self.rows[0])
        if not self.is_fixed:
            text += " (first row; shapes vary by row)"
        return text

    def batch(self, indices: Sequence[int]) -> Structure:
        return batch_of([self.rows[i % len(self.rows)] for i in indices], self.collate)


def probe_range(sample: InputSample, leaf: int, value_range: tuple[float, float] | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """The [low, high] a probe of tensor ``leaf`` draws from: the spec's ``export.probe_value_range`` (clipped
    to an integer tensor's whole numbers), else what the data showed."""
    t = leaves(sample.rows[0])[leaf]
    if value_range is None:
        return sample.lows[leaf], sample.highs[leaf]
    lo, hi = value_range
    if not t.is_floating_point():
        lo, hi = np.ceil(lo), np.floor(hi)
    return np.asarray(lo, np.float64), np.asarray(hi, np.float64)


def probe_rows(sample: InputSample, n: int, value_range: tuple[float, float] | None = None,
               seed: int = 0) -> list[tuple[str, list[Structure]]]:
    """Probe inputs for structured or integer inputs: ``n`` rows per family, each the shape of a dataset row.

    Integer tensors (token ids, offsets, masks) take whole numbers within their range (never random floats,
    never negated or scaled: an id outside the vocabulary is not an input); bool tensors take False, True
    and random values; floating tensors take what ``the export stage`` gives one float tensor.
    """
    rng = np.random.default_rng(seed)
    base = [sample.rows[i % len(sample.rows)] for i in range(n)]
    count = len(leaves(base[0]))
    ranges = [probe_range(sample, k, value_range) for k in range(count)]

    def family(make: Callable[[int, torch.Tensor, np.ndarray, np.ndarray], np.ndarray]) -> list[Structure]:
        out = []
        for row in base:
            new = []
            for k, t in enumerate(leaves(row)):
                lo = np.broadcast_to(ranges[k][0], t.shape)
                hi = np.broadcast_to(ranges[k][1], t.shape)
                new.append(_cast(make(k, t, lo, hi), t))
            out.append(rebuild(row, new))
        return out

    def uniform(k, t, lo, hi):
        if t.dtype == torch.bool:
            return rng.random(t.shape) < 0.5
        if t.is_floating_point():
            return rng.uniform(lo, hi)
        return np.floor(lo + rng.random(t.shape) * (hi - lo + 1)).clip(lo, hi)

    def zeros(k, t, lo, hi):
        return np.clip(np.zeros(t.shape), lo, hi) if not t.is_floating_point() else np.zeros(t.shape)

    families = [
        ("zeros (within an integer input's range)", family(zeros)),
        ("domain minimum", family(lambda k, t, lo, hi: lo)),
        ("domain maximum", family(lambda k, t, lo, hi: hi)),
        ("random corners of the domain", family(lambda k, t, lo, hi: np.where(rng.random(t.shape) < 0.5, lo, hi))),
        ("uniform in the domain", family(uniform)),
    ]
    if any(t.is_floating_point() for t in leaves(base[0])):
        def scaled(factor):
            return family(lambda k, t, lo, hi: t.double().numpy() * factor if t.is_floating_point()
                          else t.numpy())
        families += [("negated rows (floating inputs)", scaled(-1.0)), ("rows scaled x2 (floating inputs)", scaled(2.0))]
    return families


def _cast(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    if like.dtype == torch.bool:
        return torch.from_numpy(np.array(np.asarray(values) != 0))
    return torch.from_numpy(np.array(values, np.float64)).to(like.dtype)


class RangeTracker:
    """Each tensor's range over every row: elementwise while its shape holds, then a scalar."""

    def __init__(self) -> None:
        self.lows: list[np.ndarray] = []
        self.highs: list[np.ndarray] = []

    def add(self, rows: Sequence[Structure], stacked: Structure | None = None) -> None:
        """Fold in ``rows``; ``stacked``: the same rows already stacked (read in place, not copied again)."""
        per_leaf = zip(*(leaves(r) for r in rows)) if stacked is None else ([t] for t in leaves(stacked))
        for k, ts in enumerate(per_leaf):
            if stacked is not None:
                lo, hi = _extremes(ts[0])
            elif len({tuple(t.shape) for t in ts}) == 1:
                lo, hi = _extremes(torch.stack(ts))
            else:
                lo = np.asarray(min(float(t.min()) for t in ts if t.numel()))
                hi = np.asarray(max(float(t.max()) for t in ts if t.numel()))
            if k == len(self.lows):
                self.lows.append(lo)
                self.highs.append(hi)
                continue
            if self.lows[k].shape != lo.shape:
                self.lows[k], lo = np.asarray(self.lows[k].min()), np.asarray(lo.min())
                self.highs[k], hi = np.asarray(self.highs[k].max()), np.asarray(hi.max())
            self.lows[k] = np.minimum(self.lows[k], lo)
            self.highs[k] = np.maximum(self.highs[k], hi)


def _extremes(batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise min and max over the first dimension, as float64 (only the results are converted)."""
    b = batch.detach()
    if b.dtype == torch.bool:
        b = b.to(torch.uint8)
    return b.amin(0).to(torch.float64).numpy(), b.amax(0).to(torch.float64).numpy()
