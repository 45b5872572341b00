"""The export figures, tested where they are computed in ``stages.export``: the consistency with eager
(``_compare``, ``_consistency``: a NaN or infinite output is never equal to eager), the latency ratio
(``Timing.ratio``: exported / eager, what the gate's "exported / eager latency, batch 1" limit reads)
and the choice of the optimized TorchScript (``_try_optimize``: only when consistent and faster).

No model is exported here: ``_try_optimize``'s TorchScript calls and timings are replaced by stubs,
so each case is a known pair of outputs and timings.
"""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.inputs.base import MemoryBodies, Rows
from pipeline.model.forward import Scores
from pipeline.stages import export
from pipeline.stages.export import ProbeResult, Timing, _compare, _consistency, _try_optimize
from pipeline.evaluate.compare import StageOutputs
from pipeline.evaluate.gate import GateInputs
from pipeline.names import Stage
from tests.unit._support import check, comparison, fast_bootstrap, gate, gate_plan, spec_for, truth_and_baseline  # noqa: F401

# NaN and infinity in, on purpose: numpy says so.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:All-NaN slice encountered:RuntimeWarning")

TOL = 1e-5
REF = np.array([[1.0, -1.0], [0.5, 0.25], [2.0, 3.0], [-4.0, 4.0]], np.float32)


def _got(**rows):
    got = REF.copy()
    for i, value in rows.items():
        got[int(i[1:])] = value
    return got


def test_equal_outputs_are_consistent_and_a_move_beyond_the_tolerance_is_not():
    bad, max_abs, mean_abs, max_rel = _compare(REF, REF.copy(), TOL)
    assert not bad.any() and (max_abs, mean_abs, max_rel) == (0.0, 0.0, 0.0)
    got = _got(r1=[0.5 + 2e-5, 0.25], r3=[-4.0, 4.0 + 1e-6])
    bad, max_abs, mean_abs, max_rel = _compare(REF, got, TOL)
    assert bad.tolist() == [False, True, False, False], "only the row beyond the tolerance diverges"
    assert max_abs == pytest.approx(2e-5, rel=1e-2) and mean_abs == pytest.approx((2e-5 + 1e-6) / 8, rel=1e-2)
    assert max_rel == pytest.approx(2e-5 / 0.5, rel=1e-2)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_exported_output_is_never_equal_to_eager(value):
    bad, max_abs, _, _ = _compare(REF, _got(r2=[2.0, value]), TOL)
    assert bad.tolist() == [False, False, True, False]
    assert np.isfinite(max_abs) and max_abs == 0.0, "the finite rows' largest difference"


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_outputs_on_both_sides_are_not_equal_either(value):
    ref = REF.copy()
    ref[0] = value
    bad, _, _, _ = _compare(ref, _got(r0=[value, value]), TOL)
    assert bad.tolist() == [True, False, False, False], "NaN == NaN and inf - inf are not 'the same output'"


def test_all_outputs_non_finite_gives_no_finite_figure():
    bad, max_abs, mean_abs, _ = _compare(REF, np.full_like(REF, np.nan), TOL)
    assert bad.all() and np.isnan(max_abs) and np.isnan(mean_abs)


def _rows(n: int) -> Rows:
    return Rows(kind="tensor", source=Path("mem"), ids=tuple(f"r{i}" for i in range(n)), labels=np.zeros(n, np.int64),
                content_type="application/json", bodies=MemoryBodies((b"",) * n))


def _scores(logits) -> Scores:
    return Scores(logits=np.asarray(logits, np.float32), latencies_ms=np.ones(len(logits)))


def test_consistency_names_nan_rows_as_diverging_and_is_never_a_pass():
    spec = spec_for(2, gate={"max_output_diff": TOL})
    c = _consistency(spec, _scores(REF), _scores(_got(r1=[np.nan, np.nan])), _rows(4), ())
    assert c.diverging_ids == ("r1",) and not c.is_consistent
    assert c.agreement == 0.75, "a NaN row has no prediction (-1), so it does not agree"
    assert (c.rows, c.tolerance, c.max_abs_diff) == (4, TOL, 0.0)
    same = _consistency(spec, _scores(REF), _scores(REF.copy()), _rows(4), ())
    assert same.is_consistent and same.agreement == 1.0 and same.diverging_ids == ()


def test_one_failed_probe_makes_the_export_inconsistent():
    spec = spec_for(2, gate={"max_output_diff": TOL})
    probes = (ProbeResult("zeros", 4, 1, 0.0, 1.0, True), ProbeResult("domain maximum", 4, 4, np.nan, np.nan, False))
    c = _consistency(spec, _scores(REF), _scores(REF.copy()), _rows(4), probes)
    assert not c.is_consistent and [p.name for p in c.failed_probes] == ["domain maximum"]


def test_latency_ratio_is_exported_over_eager():
    # 200 us eager, 50 us exported: the export is 4x faster, and the gate's "exported / eager" reads 0.25.
    assert Timing(1, 200.0, 3.0, 50.0, 1.0).ratio == 0.25
    assert Timing(1, 100.0, 0.0, 300.0, 0.0).ratio == 3.0
    assert np.isnan(Timing(1, 0.0, 0.0, 5.0, 0.0).ratio)


# --- the optimize choice --------------------------------------------------------------------------


class _Script:
    def __init__(self, name: str):
        self.name = name

    def eval(self):
        return self


@pytest.fixture
def optimize(monkeypatch, tmp_path):
    """_try_optimize with TorchScript stubbed: ``run(opt_logits, plain_us, opt_us)`` returns its path and notes."""
    plain = tmp_path / "m.pt"
    plain.write_bytes(b"plain")
    jit = export.torch.jit

    calls = []

    def load(path):
        assert isinstance(path, str) and path in (str(plain), str(plain.with_name("m.optimized.pt")))
        return _Script("optimized" if path.endswith(".optimized.pt") else "plain")

    def freeze(m):
        assert m.name == "plain", "the plain export is frozen"
        return _Script("frozen")

    def optimize_for_inference(m):
        assert m.name == "frozen"
        return _Script("optimized")

    def save(m, path):
        assert m.name == "optimized" and path == str(plain.with_name("m.optimized.pt"))
        Path(path).write_bytes(b"optimized")

    monkeypatch.setattr(jit, "load", load)
    monkeypatch.setattr(jit, "freeze", freeze)
    monkeypatch.setattr(jit, "optimize_for_inference", optimize_for_inference)
    monkeypatch.setattr(jit, "save", save)
    spec = spec_for(2, gate={"max_output_diff": TOL}, export={"latency_repeats": 40})
    base = SimpleNamespace(sample=np.arange(6, dtype=np.float32).reshape(3, 2), reference=object())
    rows = _rows(4)

    def run(opt_logits, plain_us: float, opt_us: float):
        def score(s, fwd, r, ref):
            assert (s, fwd.name, r, ref) == (spec, "optimized", rows, base.reference), "the optimized model, every row"
            return _scores(opt_logits)

        def median(fn, x, repeats, budget_s):
            assert x.shape == (1, 2) and x.tolist() == [[0.0, 1.0]] and repeats == 40, "batch 1, the spec's repeats"
            assert budget_s == spec.export.latency_budget_s / 2, "the two models share the spec's budget"
            calls.append(fn.name)
            return {"plain": plain_us, "optimized": opt_us}[fn.name], 0.0

        monkeypatch.setattr(export, "score_exported", score)
        monkeypatch.setattr(export, "_median_iqr", median)
        return _try_optimize(spec, plain, _scores(REF), rows, base)

    run.plain, run.calls = plain, calls
    return run


def test_the_optimized_export_is_used_when_consistent_and_faster(optimize):
    path, notes = optimize(REF.copy(), plain_us=100.0, opt_us=60.0)
    assert sorted(optimize.calls) == ["optimized", "plain"]
    assert path.read_bytes() == b"optimized"
    assert path == optimize.plain.with_name("m.optimized.pt")
    assert notes == ["optimize: used, batch-1 median 60.0 us vs 100.0 us, max abs diff 0"]


@pytest.mark.parametrize("logits", [_got(r3=[-4.0, 4.1]), _got(r0=[np.nan, 1.0])], ids=["beyond tolerance", "NaN"])
def test_an_optimized_export_inconsistent_with_eager_is_not_used_however_fast(optimize, logits):
    path, notes = optimize(logits, plain_us=100.0, opt_us=10.0)
    assert path == optimize.plain
    assert len(notes) == 1 and notes[0].startswith("optimize: not used, max abs diff")


@pytest.mark.parametrize("opt_us", [100.0, 140.0])
def test_an_optimized_export_that_is_not_faster_is_not_used(optimize, opt_us):
    path, notes = optimize(REF.copy(), plain_us=100.0, opt_us=opt_us)
    assert path == optimize.plain
    assert notes == [f"optimize: not used, batch-1 median {opt_us:.1f} us is not faster than 100.0 us"]


def test_a_model_that_cannot_be_optimized_keeps_the_plain_export(optimize, monkeypatch):
    def fail(m):
        raise RuntimeError("cannot freeze")

    monkeypatch.setattr(export.torch.jit, "freeze", fail)
    path, notes = optimize(REF.copy(), plain_us=100.0, opt_us=10.0)
    assert path == optimize.plain and notes[0].startswith("optimize: freeze/optimize_for_inference failed (RuntimeError")


def test_an_exported_nan_row_fails_the_gate_even_though_every_other_row_is_equal():
    # The baseline is 90% accurate (not every row right); the export equals it except one NaN row.
    y, base_pred = truth_and_baseline()
    logits = np.eye(3, dtype=np.float32)[base_pred] * 4.0
    got = logits.copy()
    got[50] = np.nan
    base, exported = _scores(logits), _scores(got)
    assert exported.predictions[50] == -1, "a NaN row has no prediction"
    stages = [StageOutputs.from_scores(Stage.BASELINE, base), StageOutputs.from_scores(Stage.EXPORTED, exported)]
    cmp = comparison(y, stages)
    assert cmp.tests[Stage.EXPORTED].agreement == 0.99
    result = gate(spec_for(3).gate, gate_plan(Stage.EXPORTED, quantity="logits"), cmp, GateInputs())
    assert not result.passed
    assert not check(result, "prediction agreement", Stage.EXPORTED).passed


def test_a_difference_at_the_tolerance_itself_is_within_it_and_no_rows_give_no_figures():
    tol = 2.0 ** -10  # exactly representable: |0.5 + tol - 0.5| == tol
    bad, max_abs, _, _ = _compare(np.array([[0.5, 1.0]]), np.array([[0.5 + tol, 1.0]]), tol)
    assert not bad.any() and max_abs == tol
    bad, max_abs, mean_abs, max_rel = _compare(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), TOL)
    assert bad.shape == (0,) and np.isnan(max_abs) and np.isnan(mean_abs) and np.isnan(max_rel)
    # Rows but no outputs (every row's input failed: Scores of width 0): nothing diverges, no figure.
    bad, max_abs, _, _ = _compare(np.zeros((3, 0), np.float32), np.zeros((3, 0), np.float32), TOL)
    assert bad.tolist() == [False] * 3 and np.isnan(max_abs)


def test_consistency_carries_each_figure_of_the_comparison():
    spec = spec_for(2, gate={"max_output_diff": TOL})
    got = _got(r1=[0.5 + 2e-5, 0.25])
    c = _consistency(spec, _scores(REF), _scores(got), _rows(4), ())
    _, max_abs, mean_abs, max_rel = _compare(REF, got, TOL)
    assert (c.max_abs_diff, c.mean_abs_diff, c.max_rel_diff) == (max_abs, mean_abs, max_rel)
    assert c.diverging_ids == ("r1",) and c.agreement == 1.0
