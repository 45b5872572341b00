"""Stage 2, export: script, trace or torch.export the model, then prove it is the same model.

The saved artefact is loaded back from disk and compared with the eager model on every
dataset row and on probe inputs that exercise what tracing misses: several batch sizes,
zeros, the edges of the input domain and random points inside it.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from pipeline.spec import Spec
from pipeline.stages.dataset import Dataset
from pipeline.errors import ExportError
from pipeline.files import file_sha256
from pipeline.model.forward import Forward, Scores, run_batched, score_rows

log = logging.getLogger(__name__)

PROBE_BATCH_SIZES = (1, 2, 7, 64)
TIMING_BATCH_SIZES = (1, 32)
_AOTI_MAX_BATCH = 1024


@dataclass(frozen=True)
class CapturedWarning:
    category: str
    message: str
    count: int


@dataclass(frozen=True)
class ProbeResult:
    """One probe: a family of inputs fed to both models."""

    name: str
    rows: int
    batch_size: int
    max_abs_diff: float
    agreement: float
    is_ok: bool
    error: str | None = None


@dataclass(frozen=True)
class Consistency:
    """How far the exported model's outputs are from the eager model's."""

    rows: int
    max_abs_diff: float
    mean_abs_diff: float
    max_rel_diff: float
    agreement: float
    atol: float
    diverging_ids: tuple[str, ...]
    probes: tuple[ProbeResult, ...] = ()

    @property
    def is_consistent(self) -> bool:
        return not self.diverging_ids and all(p.is_ok for p in self.probes)


@dataclass(frozen=True)
class Timing:
    """In-process latency of one forward call at one batch size, medians over many repeats."""

    batch_size: int
    eager_median_us: float
    eager_iqr_us: float
    exported_median_us: float
    exported_iqr_us: float

    @property
    def ratio(self) -> float:
        return self.exported_median_us / self.eager_median_us if self.eager_median_us > 0 else float("nan")


@dataclass(frozen=True)
class ExportResult:
    mode: str
    path: Path
    sha256: str
    size_bytes: int
    scores: Scores
    consistency: Consistency
    timings: tuple[Timing, ...]
    warnings: tuple[CapturedWarning, ...]
    optimized: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


def _capture(recorded: list[warnings.WarningMessage]) -> tuple[CapturedWarning, ...]:
    counts = Counter((w.category.__name__, str(w.message).strip().splitlines()[0][:300]) for w in recorded)
    return tuple(CapturedWarning(c, m, n) for (c, m), n in counts.most_common())


def _script_or_trace(spec: Spec, model: nn.Module, example: torch.Tensor, out: Path) -> None:
    mode = spec.export.mode
    try:
        if mode == "script":
            exported = torch.jit.script(model)
        else:
            exported = torch.jit.trace(model, example, check_trace=False)
    except Exception as e:
        first = str(e).strip().splitlines()
        hint = (
            "Try export.mode: trace (if forward has no data-dependent control flow) or export.mode: export."
            if mode == "script"
            else "Try export.mode: script or export.mode: export."
        )
        raise ExportError(
            f"torch.jit.{mode} could not export {spec.model.factory}: {type(e).__name__}: "
            f"{' '.join(first[:6])[:800]}. {hint}"
        ) from e
    torch.jit.save(exported, str(out))


def _aoti_package(spec: Spec, model: nn.Module, example: torch.Tensor, out: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=_AOTI_MAX_BATCH)
    try:
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)
        torch._inductor.aoti_compile_and_package(ep, package_path=str(out))
    except Exception as e:
        first = " ".join(str(e).strip().splitlines()[:6])[:800]
        raise ExportError(
            f"torch.export could not export {spec.model.factory}: {type(e).__name__}: {first}. "
            "Try export.mode: script."
        ) from e


def load_exported(path: Path) -> Forward:
    """Load an exported artefact the way the handler does: TorchScript .pt or AOTInductor .pt2."""
    if path.suffix == ".pt2":
        runner = torch._inductor.aoti_load_package(str(path))
        return lambda x: runner(x)
    m = torch.jit.load(str(path), map_location="cpu")
    m.eval()
    return m


def _compare(ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> tuple[np.ndarray, float, float, float]:
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    row_max = diff.max(axis=1)
    limit = atol + rtol * np.abs(ref).max(axis=1)
    rel = diff / np.maximum(np.abs(ref), 1e-12)
    return row_max > limit, float(diff.max()), float(diff.mean()), float(rel.max())


def _probe_inputs(spec: Spec, data: Dataset) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    flat = data.features.reshape(len(data), -1)
    if spec.export.probe_value_range is not None:
        lo = np.full(flat.shape[1], spec.export.probe_value_range[0], np.float32)
        hi = np.full(flat.shape[1], spec.export.probe_value_range[1], np.float32)
    else:
        lo, hi = flat.min(axis=0), flat.max(axis=0)
    shape = (-1, *spec.dataset.input_shape)
    n = 64
    uniform = rng.uniform(lo, hi, size=(n, flat.shape[1])).astype(np.float32)
    corners = np.where(rng.random((n, flat.shape[1])) < 0.5, lo, hi).astype(np.float32)
    shuffled = np.stack([flat[rng.integers(0, len(flat), flat.shape[1]), np.arange(flat.shape[1])] for _ in range(n)])
    return [
        ("zeros", np.zeros((4, flat.shape[1]), np.float32).reshape(shape)),
        ("domain minimum", np.tile(lo, (4, 1)).reshape(shape)),
        ("domain maximum", np.tile(hi, (4, 1)).reshape(shape)),
        ("random corners of the domain", corners.reshape(shape)),
        ("uniform in the domain", uniform.reshape(shape)),
        ("features mixed across rows", shuffled.astype(np.float32).reshape(shape)),
        ("negated rows", (-flat[:n]).reshape(shape)),
        ("rows scaled x2", (2 * flat[:n]).reshape(shape)),
    ]


def _run_probes(spec: Spec, eager: Forward, exported: Forward, data: Dataset) -> tuple[ProbeResult, ...]:
    atol, rtol = spec.export.atol, spec.export.rtol
    results = []

    def check(name: str, x: np.ndarray, batch: int) -> None:
        try:
            ref = run_batched(eager, x, batch)
        except Exception as e:  # the eager model itself rejects this input: nothing to compare
            results.append(ProbeResult(name, len(x), batch, float("nan"), float("nan"), True,
                                       f"skipped, the eager model fails too: {type(e).__name__}"))
            return
        try:
            got = run_batched(exported, x, batch)
        except Exception as e:
            results.append(ProbeResult(name, len(x), batch, float("nan"), float("nan"), False,
                                       f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"))
            return
        if ref.shape != got.shape:
            results.append(ProbeResult(name, len(x), batch, float("nan"), 0.0, False,
                                       f"output shape {got.shape} differs from eager {ref.shape}"))
            return
        bad, max_abs, _, _ = _compare(ref, got, atol, rtol)
        agree = float((ref.argmax(1) == got.argmax(1)).mean())
        results.append(ProbeResult(name, len(x), batch, max_abs, agree, not bad.any()))

    rows = data.features[: max(PROBE_BATCH_SIZES) * 2]
    for b in PROBE_BATCH_SIZES:
        check(f"dataset rows at batch {b}", rows, b)
    for name, x in _probe_inputs(spec, data):
        check(name, x, 1)
        check(name, x, len(x))
    return tuple(results)


def _median_iqr(fn: Forward, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    samples = []
    with torch.inference_mode():
        for _ in range(max(5, repeats // 10)):
            fn(x)
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            fn(x)
            samples.append((time.perf_counter_ns() - t0) / 1e3)
    q = statistics.quantiles(samples, n=4)
    return statistics.median(samples), q[2] - q[0]


def _time_models(spec: Spec, eager: Forward, exported: Forward, data: Dataset) -> tuple[Timing, ...]:
    out = []
    for b in TIMING_BATCH_SIZES:
        idx = np.arange(b) % len(data)
        x = torch.from_numpy(np.ascontiguousarray(data.features[idx]))
        # Interleave the two so that machine noise hits both alike.
        e1, ei1 = _median_iqr(eager, x, spec.export.latency_repeats // 2)
        x1, xi1 = _median_iqr(exported, x, spec.export.latency_repeats // 2)
        e2, ei2 = _median_iqr(eager, x, spec.export.latency_repeats // 2)
        x2, xi2 = _median_iqr(exported, x, spec.export.latency_repeats // 2)
        out.append(Timing(b, (e1 + e2) / 2, (ei1 + ei2) / 2, (x1 + x2) / 2, (xi1 + xi2) / 2))
    return tuple(out)


def _consistency(spec: Spec, ref: Scores, got: Scores, data: Dataset, probes: tuple[ProbeResult, ...]) -> Consistency:
    bad, max_abs, mean_abs, max_rel = _compare(ref.logits, got.logits, spec.export.atol, spec.export.rtol)
    return Consistency(
        rows=len(data),
        max_abs_diff=max_abs,
        mean_abs_diff=mean_abs,
        max_rel_diff=max_rel,
        agreement=float((ref.predictions == got.predictions).mean()),
        atol=spec.export.atol,
        diverging_ids=tuple(np.asarray(data.ids)[bad].tolist()),
        probes=probes,
    )


def _try_optimize(spec: Spec, path: Path, eager_scores: Scores, data: Dataset) -> tuple[Path, list[str]]:
    """freeze + optimize_for_inference: kept only when consistent and faster at batch 1."""
    notes = []
    opt_path = path.with_name(path.stem + ".optimized.pt")
    try:
        m = torch.jit.load(str(path)).eval()
        opt = torch.jit.optimize_for_inference(torch.jit.freeze(m))
        torch.jit.save(opt, str(opt_path))
        opt = torch.jit.load(str(opt_path)).eval()
    except Exception as e:
        notes.append(f"optimize: freeze/optimize_for_inference failed ({type(e).__name__}: {e}); kept the plain export")
        return path, notes
    opt_scores = score_rows(opt, data.features)
    bad, max_abs, _, _ = _compare(eager_scores.logits, opt_scores.logits, spec.export.atol, spec.export.rtol)
    x = torch.from_numpy(np.ascontiguousarray(data.features[:1]))
    plain_us, _ = _median_iqr(torch.jit.load(str(path)).eval(), x, spec.export.latency_repeats)
    opt_us, _ = _median_iqr(opt, x, spec.export.latency_repeats)
    if bad.any():
        notes.append(f"optimize: not used, max abs diff {max_abs:.3g} exceeds atol {spec.export.atol:g}")
        return path, notes
    if opt_us >= plain_us:
        notes.append(f"optimize: not used, batch-1 median {opt_us:.1f} us is not faster than {plain_us:.1f} us")
        return path, notes
    notes.append(f"optimize: used, batch-1 median {opt_us:.1f} us vs {plain_us:.1f} us, max abs diff {max_abs:.3g}")
    return opt_path, notes


def verify_export(spec: Spec, model: nn.Module, path: Path, data: Dataset, eager_scores: Scores
                  ) -> tuple[Scores, Consistency, Forward]:
    """Load an exported file back and compare it with the eager model on every row and on probes.

    Args:
        spec: the validated spec (tolerances, probe settings).
        model: the eager model, the reference.
        path: the exported TorchScript (.pt) or AOTInductor (.pt2) file.
        data: the labeled rows.
        eager_scores: the eager model's outputs on ``data``.

    Returns:
        The exported model's scores, the consistency report and the loaded model.

    Raises:
        ExportError: the file cannot be loaded or run on the dataset's tensors.
    """
    try:
        exported = load_exported(path)
        scores = score_rows(exported, data.features)
    except Exception as e:
        raise ExportError(
            f"the exported model {path} could not be loaded or run: {type(e).__name__}: {str(e)[:500]}"
        ) from e
    probes = _run_probes(spec, model, exported, data) if spec.export.probe else ()
    return scores, _consistency(spec, eager_scores, scores, data, probes), exported


def export_model(spec: Spec, model: nn.Module, data: Dataset, eager_scores: Scores, out_dir: Path) -> ExportResult:
    """Export the model, load the saved file back and check it against the eager model.

    Args:
        spec: the validated spec (``export.mode``: script, trace or export).
        model: the eager model in eval mode.
        data: the labeled rows; the first row is the tracing example.
        eager_scores: the baseline's outputs, the reference.
        out_dir: folder for the exported file.

    Returns:
        The artefact's path, hash and size; its scores on every row; consistency on the
        dataset and on probes; in-process latency against eager; captured warnings.

    Raises:
        ExportError: the model cannot be scripted, traced or exported, or the exported
            file cannot be loaded back or run on the dataset's tensors.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = spec.export.mode
    path = out_dir / (f"{spec.name}.pt2" if mode == "export" else f"{spec.name}.pt")
    example = torch.from_numpy(np.ascontiguousarray(data.features[:1]))
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        if mode == "export":
            # Batch 1 would be specialised to a constant (0/1 specialisation): trace with two rows.
            _aoti_package(spec, model, torch.from_numpy(np.ascontiguousarray(data.features[:2])), path)
        else:
            _script_or_trace(spec, model, example, path)
        log.info("export %s took %.1f s", mode, time.perf_counter() - t0)
        optimized = False
        if spec.export.optimize and mode != "export":
            new_path, notes = _try_optimize(spec, path, eager_scores, data)
            optimized = new_path != path
            path = new_path
        scores, consistency, exported = verify_export(spec, model, path, data, eager_scores)
        timings = _time_models(spec, model, exported, data)
    return ExportResult(
        mode=mode,
        path=path,
        sha256=file_sha256(path),
        size_bytes=path.stat().st_size,
        scores=scores,
        consistency=consistency,
        timings=timings,
        warnings=_capture(recorded),
        optimized=optimized,
        notes=tuple(notes),
    )
