"""Stage 2, export: script, trace, torch.export, or ship eager; then prove it is the same model.

The saved artefact is loaded back from disk the way the handler will load it and compared
with the eager model on every dataset row (streamed through the reference preprocessing)
and on probe inputs that exercise what tracing misses: several batch sizes, zeros, the
edges of the input domain and random points inside it. Inputs keep the reference's
structure and dtypes (``pipeline.modelinput``): script, trace and torch.export get example
inputs of that structure, and integer inputs are probed within their range. ``export.mode: eager`` ships the
model's source file and its state_dict (TorchServe's ``--model-file``); the check then
proves that the file and the weights rebuild the same model.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.errors import ExportError
from pipeline.files import file_sha256
from pipeline.inputs.base import Reference, Rows
from pipeline.inputs.stream import StreamFacts, reference_chunks
from pipeline.model.forward import Forward, Scores, run_batched, score_chunks
from pipeline.model.loading import model_file_for_eager
from pipeline.modelinput import Structure, call_model, dynamic_dims, example_inputs, leaves, probe_rows, stack
from pipeline.spec import Spec
from pipeline.stages.baseline import BaselineResult, output_encoder
from pipeline.usercode import import_module_ref

log = logging.getLogger(__name__)

PROBE_BATCH_SIZES = (1, 2, 7, 64)
TIMING_BATCH_SIZES = (1, 32)
_AOTI_MAX_BATCH = 1024
_LARGE_INPUT = 4096  # elements per row above which random probes use fewer rows


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
    """How far the exported model's outputs are from the eager model's, with one tolerance."""

    rows: int
    max_abs_diff: float
    mean_abs_diff: float
    max_rel_diff: float
    agreement: float
    tolerance: float
    diverging_ids: tuple[str, ...]
    probes: tuple[ProbeResult, ...] = ()

    @property
    def failed_probes(self) -> tuple[ProbeResult, ...]:
        return tuple(p for p in self.probes if not p.is_ok)

    @property
    def is_consistent(self) -> bool:
        return not self.diverging_ids and not self.failed_probes


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
    """The artefact that goes into the .mar, and the proof that it is the eager model.

    Attributes:
        mode: script, trace, export or eager.
        path: the serialized file (TorchScript .pt, AOTInductor .pt2, or the state_dict).
        model_file: the model's source file (eager mode only: the archive's --model-file).
    """

    mode: str
    path: Path
    sha256: str
    size_bytes: int
    scores: Scores
    consistency: Consistency
    timings: tuple[Timing, ...]
    warnings: tuple[CapturedWarning, ...]
    model_file: Path | None = None
    optimized: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    untimed_reason: str = ""  # why ``timings`` is empty (eager mode: a file copy)


def _capture(recorded: list[warnings.WarningMessage]) -> tuple[CapturedWarning, ...]:
    counts = Counter((w.category.__name__, str(w.message).strip().splitlines()[0][:300]) for w in recorded
                     if str(w.message).strip())
    return tuple(CapturedWarning(c, m, n) for (c, m), n in counts.most_common())


def _script_or_trace(spec: Spec, model: nn.Module, example: Structure, out: Path) -> None:
    mode = spec.export.mode
    try:
        if mode == "script":
            exported = torch.jit.script(model)
        else:
            args, kwargs = example_inputs(example)
            exported = (torch.jit.trace(model, example_kwarg_inputs=kwargs, check_trace=False) if kwargs
                        else torch.jit.trace(model, args, check_trace=False))
    except Exception as e:
        first = str(e).strip().splitlines()
        hint = (
            "Try export.mode: trace (if forward has no data-dependent control flow), export or eager."
            if mode == "script"
            else "Try export.mode: script, export or eager."
        )
        raise ExportError(
            f"torch.jit.{mode} could not export {spec.model.factory}: {type(e).__name__}: "
            f"{' '.join(first[:6])[:800]}. {hint}"
        ) from e
    torch.jit.save(exported, str(out))


def _aoti_package(spec: Spec, model: nn.Module, examples: list[Structure], out: Path) -> None:
    """``examples``: one batch (one tensor: dim 0 is the batch), or two of one structure whose sizes differ
    where the inputs' do (the batch, a token length): those dims are exported dynamic."""
    example = examples[0]
    args, kwargs = example_inputs(example)
    if isinstance(example, torch.Tensor) and len(examples) == 1:
        dynamic = ({0: torch.export.Dim("batch", min=1, max=_AOTI_MAX_BATCH)},)
    else:
        dims = dynamic_dims(examples)
        # One tensor: its dims' spec is the first positional argument's (a dict there would read as kwargs).
        dynamic = (dims,) if isinstance(example, torch.Tensor) else dims
    try:
        ep = torch.export.export(model, args, kwargs or None, dynamic_shapes=dynamic, strict=False)
        torch._inductor.aoti_compile_and_package(ep, package_path=str(out))
    except Exception as e:
        first = " ".join(str(e).strip().splitlines()[:6])[:800]
        raise ExportError(
            f"torch.export could not export {spec.model.factory}: {type(e).__name__}: {first}. "
            "Try export.mode: script or eager."
        ) from e


def load_exported(path: Path, model_file: Path | None = None) -> Forward:
    """Load an artefact the way TorchServe's handlers do: TorchScript .pt, AOTInductor .pt2, or
    (eager) the one class of ``model_file`` built with no arguments plus the state_dict."""
    if model_file is not None:
        import inspect

        module = import_module_ref(str(model_file), "model.factory")
        (cls,) = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
        m = cls()
        m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return m.eval()
    if path.suffix == ".pt2":
        runner = torch._inductor.aoti_load_package(str(path))
        return lambda *args, **kwargs: runner(*args, **kwargs)
    m = torch.jit.load(str(path), map_location="cpu")
    m.eval()
    return m


def _compare(ref: np.ndarray, got: np.ndarray, tolerance: float) -> tuple[np.ndarray, float, float, float]:
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    row_max = np.nan_to_num(diff, nan=np.inf).max(axis=1) if diff.size else np.zeros(len(ref))
    rel = diff / np.maximum(np.abs(ref), 1e-12)
    finite = diff[np.isfinite(diff)]
    return (row_max > tolerance, float(finite.max()) if finite.size else float("nan"),
            float(finite.mean()) if finite.size else float("nan"),
            float(np.nanmax(rel)) if rel.size else float("nan"))


def _probe_inputs(spec: Spec, base: BaselineResult) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    sample = base.sample.astype(np.float32)
    flat = sample.reshape(len(sample), -1)
    width = flat.shape[1]
    if spec.export.probe_value_range is not None:
        lo = np.full(width, spec.export.probe_value_range[0], np.float32)
        hi = np.full(width, spec.export.probe_value_range[1], np.float32)
    else:
        lo, hi = base.input_low.reshape(-1).astype(np.float32), base.input_high.reshape(-1).astype(np.float32)
    shape = (-1, *base.input_shape)
    n = 64 if width <= _LARGE_INPUT else 8
    uniform = rng.uniform(lo, hi, size=(n, width)).astype(np.float32)
    corners = np.where(rng.random((n, width)) < 0.5, lo, hi).astype(np.float32)
    mixed = np.stack([flat[rng.integers(0, len(flat), width), np.arange(width)] for _ in range(n)])
    return [
        ("zeros", np.zeros((4, width), np.float32).reshape(shape)),
        ("domain minimum", np.tile(lo, (4, 1)).reshape(shape)),
        ("domain maximum", np.tile(hi, (4, 1)).reshape(shape)),
        ("random corners of the domain", corners.reshape(shape)),
        ("uniform in the domain", uniform.reshape(shape)),
        ("features mixed across rows", mixed.astype(np.float32).reshape(shape)),
        ("negated rows", (-flat[:n]).reshape(shape)),
        ("rows scaled x2", (2 * flat[:n]).reshape(shape)),
    ]


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def _probe_families(spec: Spec, base: BaselineResult) -> list[tuple[str, list]]:
    """Per-row probe inputs: one float tensor per row keeps today's numeric families; integer, bool and
    structured inputs probe within their range (``modelinput.probe_rows``)."""
    inputs = base.inputs
    if inputs.is_single_float or not inputs.rows:
        dtype = getattr(np, base.input_dtype, np.float32) if base.input_dtype else np.float32
        return [(name, list(torch.from_numpy(np.ascontiguousarray(x.astype(dtype)))))
                for name, x in _probe_inputs(spec, base)]
    width = sum(t.numel() for t in leaves(inputs.rows[0]))
    return probe_rows(inputs, 64 if width <= _LARGE_INPUT else 8, spec.export.probe_value_range)


def _dataset_rows(base: BaselineResult) -> list:
    inputs = base.inputs
    if inputs.rows:
        return list(inputs.rows[: max(PROBE_BATCH_SIZES) * 2])
    return list(torch.from_numpy(np.ascontiguousarray(base.sample[: max(PROBE_BATCH_SIZES) * 2])))


def _run_probes(spec: Spec, eager: Forward, exported: Forward, base: BaselineResult) -> tuple[ProbeResult, ...]:
    tol = spec.gate.max_output_diff
    results = []
    collate = base.inputs.collate
    can_batch = base.inputs.can_batch or not base.inputs.rows

    def check(name: str, x: list, batch: int) -> None:
        if batch > 1 and not can_batch:
            results.append(ProbeResult(name, len(x), batch, float("nan"), float("nan"), True,
                                       "skipped: rows vary in shape and the spec names no model.collate, so "
                                       "rows are fed one at a time"))
            return
        try:
            ref = run_batched(eager, x, batch, collate, output_encoder(spec))
        except Exception as e:  # the eager model itself rejects this input: nothing to compare
            results.append(ProbeResult(name, len(x), batch, float("nan"), float("nan"), True,
                                       f"skipped, the eager model fails too: {type(e).__name__}"))
            return
        try:
            got = run_batched(exported, x, batch, collate, output_encoder(spec))
        except Exception as e:
            results.append(ProbeResult(name, len(x), batch, float("nan"), float("nan"), False, _first_line(e)))
            return
        if ref.shape != got.shape:
            results.append(ProbeResult(name, len(x), batch, float("nan"), 0.0, False,
                                       f"output shape {got.shape} differs from eager {ref.shape}"))
            return
        # Where the eager model itself gives NaN (a fully masked row), the export matches it by giving NaN too.
        both_nan = np.isnan(ref) & np.isnan(got)
        ref, got = np.where(both_nan, 0, ref), np.where(both_nan, 0, got)
        bad, max_abs, _, _ = _compare(ref, got, tol)
        agree = float((ref.argmax(1) == got.argmax(1)).mean())
        results.append(ProbeResult(name, len(x), batch, max_abs, agree, not bad.any()))

    rows = _dataset_rows(base)
    for b in PROBE_BATCH_SIZES:
        check(f"dataset rows at batch {b}", rows, b)
    for name, x in _probe_families(spec, base):
        check(name, x, 1)
        check(name, x, len(x))
    return tuple(results)


def _median_iqr(fn: Forward, x: Structure, repeats: int, budget_s: float | None = None) -> tuple[float, float]:
    """Median and IQR (us) of ``fn`` on ``x``: warm-up, then at most ``repeats`` timed calls, stopping early
    once ``budget_s`` seconds (warm-up included) are spent; at least two timed calls."""
    samples = []
    deadline = None if budget_s is None else time.perf_counter() + budget_s
    with torch.inference_mode():
        for _ in range(max(5, repeats // 10)):
            call_model(fn, x)
            if deadline is not None and time.perf_counter() > deadline:
                break
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            call_model(fn, x)
            samples.append((time.perf_counter_ns() - t0) / 1e3)
            if deadline is not None and len(samples) >= 2 and time.perf_counter() > deadline:
                break
    q = statistics.quantiles(samples, n=4)
    return statistics.median(samples), q[2] - q[0]


NOT_TIMED_EAGER = "not timed: the archive holds the eager model file (export.mode eager), the exported model is the eager model"


def _timing_batches(base: BaselineResult) -> list[tuple[int, Structure]]:
    inputs = base.inputs
    if not inputs.rows:
        sample = base.sample
        return [(b, torch.from_numpy(np.ascontiguousarray(sample[np.arange(b) % len(sample)])))
                for b in TIMING_BATCH_SIZES]
    return [(b, inputs.batch(range(b))) for b in TIMING_BATCH_SIZES if b == 1 or inputs.can_batch]


def _time_models(spec: Spec, eager: Forward, exported: Forward, base: BaselineResult) -> tuple[Timing, ...]:
    """Eager against exported at each batch size, within ``export.latency_budget_s`` per model."""
    out = []
    batches = _timing_batches(base)
    # Each model's budget is shared by the batch sizes and the two interleaved halves.
    share = spec.export.latency_budget_s / max(1, len(batches)) / 2
    half = spec.export.latency_repeats // 2
    for b, x in batches:
        # Interleave the two so that machine noise hits both alike.
        e1, ei1 = _median_iqr(eager, x, half, share)
        x1, xi1 = _median_iqr(exported, x, half, share)
        e2, ei2 = _median_iqr(eager, x, half, share)
        x2, xi2 = _median_iqr(exported, x, half, share)
        out.append(Timing(b, (e1 + e2) / 2, (ei1 + ei2) / 2, (x1 + x2) / 2, (xi1 + xi2) / 2))
    return tuple(out)


def _consistency(spec: Spec, ref: Scores, got: Scores, rows: Rows, probes: tuple[ProbeResult, ...]) -> Consistency:
    tol = spec.gate.max_output_diff
    bad, max_abs, mean_abs, max_rel = _compare(ref.logits, got.logits, tol)
    return Consistency(
        rows=len(rows), max_abs_diff=max_abs, mean_abs_diff=mean_abs, max_rel_diff=max_rel,
        agreement=float((ref.predictions == got.predictions).mean()), tolerance=tol,
        diverging_ids=tuple(np.asarray(rows.ids)[bad].tolist()), probes=probes,
    )


def score_exported(spec: Spec, forward: Forward, rows: Rows, reference: Reference, collate=None) -> Scores:
    """The artefact's outputs on every row, streamed through the reference preprocessing again."""
    facts = StreamFacts()
    return score_chunks(forward, reference_chunks(rows, reference, spec.dataset.chunk_rows, facts,
                                                  keep_range=False, collate=collate), len(rows),
                        encode=output_encoder(spec))


def _try_optimize(spec: Spec, path: Path, eager_scores: Scores, rows: Rows, base: BaselineResult
                  ) -> tuple[Path, list[str]]:
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
    opt_scores = score_exported(spec, opt, rows, base.reference, *_collate_arg(base))
    bad, max_abs, _, _ = _compare(eager_scores.logits, opt_scores.logits, spec.gate.max_output_diff)
    x = _example(base, 1)
    budget = spec.export.latency_budget_s / 2
    plain_us, _ = _median_iqr(torch.jit.load(str(path)).eval(), x, spec.export.latency_repeats, budget)
    opt_us, _ = _median_iqr(opt, x, spec.export.latency_repeats, budget)
    if bad.any():
        notes.append(f"optimize: not used, max abs diff {max_abs:.3g} exceeds {spec.gate.max_output_diff:g}")
        return path, notes
    if opt_us >= plain_us:
        notes.append(f"optimize: not used, batch-1 median {opt_us:.1f} us is not faster than {plain_us:.1f} us")
        return path, notes
    notes.append(f"optimize: used, batch-1 median {opt_us:.1f} us vs {plain_us:.1f} us, max abs diff {max_abs:.3g}")
    return opt_path, notes


def _collate_arg(base: BaselineResult) -> tuple:
    inputs = getattr(base, "inputs", None)
    return (inputs.collate,) if inputs is not None and inputs.collate is not None else ()


def _example(base: BaselineResult, n: int) -> Structure:
    """The model's input for the first ``n`` sample rows, structure and dtype kept."""
    inputs = getattr(base, "inputs", None)
    if inputs is None or not inputs.rows:
        return torch.from_numpy(np.ascontiguousarray(base.sample[:n]))
    return inputs.batch(range(n))


def _export_examples(base: BaselineResult) -> list[Structure]:
    """torch.export's example batches. One tensor per row of one shape: two rows (batch 1 would be specialised
    to a constant, torch's 0/1 specialisation), dim 0 dynamic. Any other input: two batches whose sizes
    differ wherever the inputs' do, so those dims are exported dynamic."""
    inputs = base.inputs
    if not inputs.rows or (isinstance(inputs.rows[0], torch.Tensor) and inputs.collate is None and inputs.is_fixed):
        sample = torch.from_numpy(np.ascontiguousarray(base.sample)) if not inputs.rows else stack(inputs.rows[:2])
        return [sample[:2] if len(sample) >= 2 else torch.cat([sample[:1], sample[:1]])]
    if inputs.can_batch and len(inputs.rows) >= 3:
        return [inputs.batch(range(2)), inputs.batch(range(2, min(len(inputs.rows), 5)))]
    return [inputs.batch([i]) for i in range(min(2, len(inputs.rows)))]


def verify_export(spec: Spec, model: nn.Module, path: Path, rows: Rows, base: BaselineResult,
                  model_file: Path | None = None) -> tuple[Scores, Consistency, Forward]:
    """Load an exported file back and compare it with the eager model on every row and on probes.

    Args:
        spec: the validated spec (tolerance, probe settings).
        model: the eager model, the reference.
        path: the exported TorchScript (.pt) or AOTInductor (.pt2) file, or the state_dict (eager).
        rows: the labeled rows.
        base: the baseline (eager outputs, input sample and range, reference preprocessing).
        model_file: eager mode: the model's source file.

    Returns:
        The exported model's scores, the consistency report and the loaded model.

    Raises:
        ExportError: the file cannot be loaded or run on the dataset's inputs.
    """
    try:
        exported = load_exported(path, model_file)
        scores = score_exported(spec, exported, rows, base.reference, *_collate_arg(base))
    except Exception as e:
        raise ExportError(
            f"the exported model {path} could not be loaded or run: {type(e).__name__}: {str(e)[:500]}"
        ) from e
    probes = _run_probes(spec, model, exported, base) if spec.export.probe else ()
    return scores, _consistency(spec, base.scores, scores, rows, probes), exported


def export_model(spec: Spec, model: nn.Module, rows: Rows, base: BaselineResult, out_dir: Path) -> ExportResult:
    """Export the model, load the saved file back and check it against the eager model.

    Args:
        spec: the validated spec (``export.mode``: script, trace, export or eager).
        model: the eager model in eval mode.
        rows: the labeled rows.
        base: the baseline's outputs (the reference) and its input sample (the tracing example).
        out_dir: folder for the exported file.

    Returns:
        The artefact's path, hash and size; its scores on every row; consistency on the
        dataset and on probes; in-process latency against eager; captured warnings.

    Raises:
        ExportError: the model cannot be scripted, traced or exported, or the exported
            file cannot be loaded back or run on the dataset's inputs.
        ModelError: eager mode, and the model file is not what TorchServe's --model-file needs.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = spec.export.mode
    model_file = None
    if mode == "export":
        path = out_dir / f"{spec.name}.pt2"
    elif mode == "eager":
        path = out_dir / f"{spec.name}_state_dict.pt"
    else:
        path = out_dir / f"{spec.name}.pt"
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        if mode == "export":
            _aoti_package(spec, model, _export_examples(base), path)
        elif mode == "eager":
            model_file = model_file_for_eager(spec)
            shutil.copyfile(spec.model.weights, path)
        else:
            _script_or_trace(spec, model, _example(base, 1), path)
        log.info("export %s took %.1f s", mode, time.perf_counter() - t0)
        optimized = False
        if spec.export.optimize and mode in ("script", "trace"):
            new_path, notes = _try_optimize(spec, path, base.scores, rows, base)
            optimized = new_path != path
            path = new_path
        scores, consistency, exported = verify_export(spec, model, path, rows, base, model_file)
        if mode == "eager":
            # A file copy: timing the model against itself spends the budget to measure noise.
            timings = ()
            notes.append(f"latency: {NOT_TIMED_EAGER}")
        else:
            timings = _time_models(spec, model, exported, base)
            if len(timings) < len(TIMING_BATCH_SIZES):
                notes.append("latency: timed at batch 1 only: rows vary in shape and the spec names no "
                             "model.collate to batch them")
    return ExportResult(
        mode=mode, path=path, sha256=file_sha256(path), size_bytes=path.stat().st_size, scores=scores,
        consistency=consistency, timings=timings, warnings=_capture(recorded), model_file=model_file,
        optimized=optimized, notes=tuple(notes), untimed_reason=NOT_TIMED_EAGER if mode == "eager" else "",
    )


def verify_archived(spec: Spec, model: nn.Module, rows: Rows, base: BaselineResult, path: Path,
                    model_file: Path | None) -> ExportResult:
    """``--mar``: the archive's own model (its TorchScript file, or its model file and state_dict),
    loaded without its handler and checked against the eager model like an export.

    Raises:
        ExportError: the archive's model cannot be loaded or run on the dataset's inputs.
    """
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        scores, consistency, _ = verify_export(spec, model, path, rows, base, model_file)
    return ExportResult(
        mode="archive (eager)" if model_file is not None else "archive (TorchScript)", path=path,
        sha256=file_sha256(path), size_bytes=path.stat().st_size, scores=scores, consistency=consistency,
        timings=(), warnings=_capture(recorded), model_file=model_file,
        notes=("the archive's own serialized file (--mar), loaded without its handler",))
