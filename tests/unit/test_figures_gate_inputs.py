"""The facts the runner hands the gate, tested where they are built (``run.runner``, read, not edited, here):
each stage's error rate from that stage's own outcomes (``_answered_facts`` through ``_gate_inputs``),
the export size and latency ratios, and the warm-up comparison (``warmup_differences``).

The record is a stand-in holding only what ``_gate_inputs`` reads; no stage runs.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.names import Stage
from pipeline.run.runner import _answered_facts, _gate_inputs, warmup_differences
from pipeline.stages.export import Consistency, ProbeResult, Timing
from pipeline.stages.outcomes import failed, interpret
from pipeline.stages.probing import ProbeOutcome
from tests.unit._support import codec, pv_answer, spec_for

C = codec(3)
BATCHED = "handled@batch4"


def _ok(i: int, pred: int = 0, logits=(0.0, 1.0, 2.0), probs=(0.2, 0.3, 0.5)):
    return interpret(i, f"r{i}", 200, pv_answer(pred, list(probs), list(logits) if logits is not None else None), C)


def _crash(i: int):
    return interpret(i, f"r{i}", 503, b'{"message": "Prediction failed"}', C)


def _record(*, batch1, batched=None, replay=None, timings=(), size=300, weights=200, probe=True,
            handled_probes=(), served_probes=(), export_probes=(), untimed=""):
    spec = spec_for(3, export={"probe": probe})
    stages = (Stage.BASELINE, Stage.EXPORTED, Stage.HANDLED, *((BATCHED,) if batched is not None else ()), Stage.SERVED)
    plan = SimpleNamespace(spec=spec, stages=stages, batched_stage=BATCHED if batched is not None else None)
    consistency = Consistency(4, 0.0, 0.0, 0.0, 1.0, 1e-5, (), export_probes)
    return SimpleNamespace(
        plan=plan, exported=SimpleNamespace(size_bytes=size, timings=timings, consistency=consistency,
                                            untimed_reason=untimed),
        baseline=SimpleNamespace(weights_size_bytes=weights, scores=SimpleNamespace(latencies_ms=np.array([1.0, 3.0, 2.0]))),
        handled=SimpleNamespace(batch1=batch1, batched=batched, probes=handled_probes),
        served_probes=served_probes, replay=replay, dataset=SimpleNamespace(leaked_ids=("r1",)), prior=None)


def test_the_batched_error_rate_is_read_from_the_batched_outcomes():
    batch1 = tuple(_ok(i) for i in range(4))
    batched = (_ok(0), _crash(1), _crash(2), _ok(3))
    g = _gate_inputs(_record(batch1=batch1, batched=batched))
    assert g.answered[Stage.HANDLED].error_rate == 0.0 and g.answered[Stage.HANDLED].errors == {}
    assert g.answered[BATCHED].error_rate == 0.5 and g.answered[BATCHED].errors == {"handler_error": 2}
    assert g.answered[BATCHED].complete is True and g.answered[BATCHED].abort_reason is None
    # And the other way round: batch 1 failing, batched answering.
    g = _gate_inputs(_record(batch1=batched, batched=batch1))
    assert g.answered[Stage.HANDLED].error_rate == 0.5 and g.answered[BATCHED].error_rate == 0.0


def test_no_batched_variant_means_no_batched_facts():
    g = _gate_inputs(_record(batch1=(_ok(0), _crash(1))))
    assert set(g.answered) == {Stage.HANDLED} and g.answered[Stage.HANDLED].error_rate == 0.5
    assert g.answered[Stage.HANDLED].complete is True


def test_served_facts_come_from_the_replay_rows_with_its_completeness():
    rows = (_ok(0), failed(1, "r1", "timeout", "no answer"), _ok(2), _ok(3))
    replay = SimpleNamespace(rows=rows, is_complete=False, abort_reason="8 fatal errors in a row", warmup_answers=())
    g = _gate_inputs(_record(batch1=tuple(_ok(i) for i in range(4)), replay=replay))
    s = g.answered[Stage.SERVED]
    assert (s.error_rate, s.errors, s.complete, s.abort_reason) == (0.25, {"timeout": 1}, False, "8 fatal errors in a row")
    assert _answered_facts((), True, None).error_rate is None


def test_export_ratios_are_exported_over_eager_at_batch_1():
    timings = (Timing(32, 1000.0, 0.0, 4000.0, 0.0), Timing(1, 200.0, 0.0, 50.0, 0.0))
    g = _gate_inputs(_record(batch1=(_ok(0),), timings=timings, size=300, weights=200))
    assert g.export_latency_ratio == 0.25, "batch 1's exported/eager, not batch 32's"
    assert g.export_size_ratio == 1.5, "exported file / eager weights file"
    assert g.eager_p50_ms == 2.0 and g.leaked_ids == ("r1",)
    assert _gate_inputs(_record(batch1=(_ok(0),), weights=0)).export_size_ratio is None


def test_why_the_export_was_not_timed_reaches_the_gate():
    g = _gate_inputs(_record(batch1=(_ok(0),), untimed="not timed: the archive holds the eager model file"))
    assert g.export_latency_untimed == "not timed: the archive holds the eager model file"
    assert g.export_latency_ratio is None
    assert _gate_inputs(_record(batch1=(_ok(0),))).export_latency_untimed == ""
    r = _record(batch1=(_ok(0),), untimed="x")
    r.exported = None
    assert _gate_inputs(r).export_latency_untimed == ""


def test_failed_probes_of_each_stage_are_handed_over_and_passed_ones_are_not():
    bad = ProbeOutcome("CMYK JPEG", "same", "handled", "crashed", 503, None, 1, "handler_error: boom", False)
    good = ProbeOutcome("RGBA PNG", "same", "handled", "same", 200, 1, 1, "", True)
    ex = (ProbeResult("zeros", 4, 1, 0.0, 1.0, True), ProbeResult("domain maximum", 4, 2, 0.5, 0.5, False))
    g = _gate_inputs(_record(batch1=(_ok(0),), handled_probes=(bad, good), served_probes=(good,), export_probes=ex))
    assert set(g.probes_run) == {Stage.EXPORTED, Stage.HANDLED, Stage.SERVED}
    assert g.failed_probes[Stage.HANDLED] == ("CMYK JPEG: expected same, got crashed: handler_error: boom",)
    assert g.failed_probes[Stage.SERVED] == ()
    assert g.failed_probes[Stage.EXPORTED] == ("domain maximum @ batch 2: max diff 0.5",)
    assert Stage.EXPORTED not in _gate_inputs(_record(batch1=(_ok(0),), probe=False)).probes_run


def test_warnings_of_passed_probes_are_handed_over_and_those_of_failed_ones_are_not():
    warned = ProbeOutcome("EXIF", "same", "served", "stored frame", 200, 0, 0, "ignores EXIF", True, "ignores EXIF")
    failed_too = ProbeOutcome("RGBA", "same", "served", "different", 200, 0, 0, "moved", False, "moved")
    good = ProbeOutcome("RGBA PNG", "same", "handled", "same", 200, 1, 1, "", True)
    g = _gate_inputs(_record(batch1=(_ok(0),), handled_probes=(good,), served_probes=(warned, failed_too)))
    assert g.warned_probes == {Stage.HANDLED: (), Stage.SERVED: ("EXIF: ignores EXIF",)}


# --- warm-up ------------------------------------------------------------------------------------------

STEADY = (_ok(0, 2, (0.0, 1.0, 2.0)), _ok(1, 0, (5.0, 1.0, 2.0)), _ok(2, 1, (0.0, 3.0, 2.0)), _ok(3, 2, (0.0, 0.0, 9.0)))
TOL = 1e-5


def _replay(*warm):
    return SimpleNamespace(rows=STEADY, warmup_answers=warm, is_complete=True, abort_reason=None)


def test_each_warm_up_answer_is_compared_with_the_steady_answer_of_the_same_row():
    # Rows 2 and 0 warmed, in that order, each answered exactly as in the steady state.
    checked, differing = warmup_differences(_replay(_ok(2, 1, (0.0, 3.0, 2.0)), _ok(0, 2, (0.0, 1.0, 2.0))), TOL)
    assert (checked, differing) == (2, ())


def test_a_warm_up_answer_of_the_same_class_but_other_outputs_is_flagged():
    warm = _ok(3, 2, (0.0, 0.0, 8.5))
    checked, differing = warmup_differences(_replay(_ok(1, 0, (5.0, 1.0, 2.0)), warm), TOL)
    assert checked == 2 and differing == ("r3: warm-up class 2, steady class 2, max output diff 0.5",)


def test_a_warm_up_answer_of_another_class_is_flagged():
    checked, differing = warmup_differences(_replay(_ok(1, 2, (5.0, 1.0, 2.0))), TOL)
    assert checked == 1 and differing == ("r1: warm-up class 2, steady class 0, max output diff 0",)


def test_outputs_within_the_tolerance_are_the_same_and_probabilities_count_without_logits():
    assert warmup_differences(_replay(_ok(3, 2, (0.0, 0.0, 9.0 + 1e-6))), TOL) == (1, ())
    steady = SimpleNamespace(rows=(_ok(0, 2, None, (0.2, 0.3, 0.5)),), warmup_answers=(_ok(0, 2, None, (0.1, 0.3, 0.6)),))
    checked, differing = warmup_differences(steady, TOL)
    assert checked == 1 and differing == ("r0: warm-up class 2, steady class 2, max output diff 0.1",)


def test_rows_that_failed_in_the_warm_up_or_the_replay_are_not_compared():
    rows = (_ok(0), _crash(1))
    replay = SimpleNamespace(rows=rows, warmup_answers=(_crash(0), _ok(1, 2, (9.0, 9.0, 9.0))))
    assert warmup_differences(replay, TOL) == (0, ())


@pytest.mark.parametrize("tol, flagged", [(0.49, True), (0.5, False)])
def test_the_tolerance_is_the_limit_itself(tol, flagged):
    _, differing = warmup_differences(_replay(_ok(3, 2, (0.0, 0.0, 8.5))), tol)
    assert bool(differing) == flagged


def test_the_rest_of_the_gate_inputs_are_handed_over_as_recorded():
    warm = _ok(1, 0, (5.0, 1.0, 2.5))  # differs from the steady answer of row 1 by 0.5
    replay = SimpleNamespace(rows=STEADY, warmup_answers=(warm,), is_complete=True, abort_reason=None)
    prior = SimpleNamespace(metrics={"served.accuracy": 0.9}, started_at="2026-11-30T10:00:00Z")
    ex = (ProbeResult("zeros", 4, 1, float("nan"), float("nan"), False, "RuntimeError: boom"),)
    record = _record(batch1=(_ok(0),), replay=replay, export_probes=ex)
    record.prior = prior
    g = _gate_inputs(record)
    assert g.not_run == {s: "the run stopped before this stage finished" for s in record.plan.stages}
    assert g.warmup_checked == 1 and g.warmup_differing == ("r1: warm-up class 0, steady class 0, max output diff 0.5",)
    assert g.prior_metrics == {"served.accuracy": 0.9} and g.prior_label == "run of 2026-11-30T10:00:00Z"
    assert g.failed_probes[Stage.EXPORTED] == ("zeros @ batch 1: max diff nan (RuntimeError: boom)",)
    assert g.answered[Stage.HANDLED].complete is True and g.answered[Stage.SERVED].complete is True


def test_stages_that_did_not_run_give_no_facts():
    record = _record(batch1=(_ok(0),), batched=(_ok(0),))
    record.plan.batched_stage = None  # a batched result the plan does not compare is not read
    record.handled, record.dataset, record.exported = None, None, None
    g = _gate_inputs(record)
    assert g.answered == {} and g.leaked_ids is None and g.prior_metrics is None and g.prior_label == "previous run"
    assert g.warmup_checked is None and g.warmup_differing == ()
    assert g.export_size_ratio is None and g.export_latency_ratio is None and g.probes_run == ()
    record = _record(batch1=(_ok(0),), batched=(_crash(0),))
    record.plan.batched_stage = None
    assert set(_gate_inputs(record).answered) == {Stage.HANDLED}


def test_an_answer_without_an_error_class_is_counted_as_unknown():
    facts = _answered_facts((_ok(0), failed(1, "r1", None, "?"), failed(2, "r2", None, "?")), True, None)
    assert facts.errors == {"unknown": 2} and facts.error_rate == 2 / 3


def test_every_warm_up_answer_is_read_after_one_that_failed():
    checked, differing = warmup_differences(_replay(_crash(0), _ok(1, 2, (5.0, 1.0, 2.0))), TOL)
    assert checked == 1 and len(differing) == 1 and differing[0].startswith("r1: warm-up class 2, steady class 0")


def test_outputs_only_one_side_carries_are_not_compared_and_no_outputs_at_all_compare_classes():
    from pipeline.answers.base import Prediction
    from pipeline.stages.outcomes import RowOutcome

    def bare(i, pred, logits=None, probs=None):
        return RowOutcome(i, f"r{i}", True, 200, Prediction(pred, probs, logits), None, None, None, None, None, 1)

    # The warm-up carries logits, the steady answer only probabilities: the probabilities are compared.
    steady = (bare(0, 1, None, np.array([0.2, 0.8])),)
    replay = SimpleNamespace(rows=steady, warmup_answers=(bare(0, 1, np.array([0.0, 9.0]), np.array([0.2, 0.8])),))
    assert warmup_differences(replay, TOL) == (1, ())
    # Neither carries any output: the classes decide, and the same class is no difference.
    replay = SimpleNamespace(rows=(bare(0, 1),), warmup_answers=(bare(0, 1),))
    assert warmup_differences(replay, TOL) == (1, ())
    replay = SimpleNamespace(rows=(bare(0, 1),), warmup_answers=(bare(0, 0),))
    assert warmup_differences(replay, TOL) == (1, ("r0: warm-up class 0, steady class 1, max output diff 0",))
