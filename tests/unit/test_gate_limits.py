"""Every gate check seen passing exactly at its limit and failing just beyond it.

The fixture's baseline is 90% accurate (not 100%), so "agrees with the baseline" and "is
correct" are different questions: the served candidate gets one more row wrong and fails one.
"""

from dataclasses import replace
import numpy as np
import pytest

from pipeline.evaluate.gate import GateInputs, StageFacts, evaluate_gate, metric_checks
from pipeline.spec import GATED_METRICS, GateSpec, MetricThreshold
from tests.unit._support import fast_bootstrap  # noqa: F401  (autouse)
from tests.unit._support import (LABELS, all_answered, check, comparison, gate, gate_plan, outputs,
                                 truth_and_baseline, with_test)

JUST = 1e-9  # "just beyond": far above the gate's 1e-12 rounding allowance, far below any real difference
ONLY_ACCURACY = {"accuracy": MetricThreshold(max_drop=0.5)}


def _served_pred() -> np.ndarray:
    y, base = truth_and_baseline()
    cand = base.copy()
    cand[10] = 2  # a row the baseline got right, now wrong
    cand[50] = -1  # a row without an answer
    return cand


def _cmp():
    y, base = truth_and_baseline()
    return comparison(y, [outputs("baseline", base), outputs("served", _served_pred())])


def _spec(**kw) -> GateSpec:
    kw.setdefault("metrics", ONLY_ACCURACY)
    return GateSpec(**kw)


def _run(spec, cmp=None, inputs=None, stage="served"):
    return gate(spec, gate_plan(stage), cmp if cmp is not None else _cmp(), inputs)


# --- metrics: min, max_drop, max_relative_drop of each -------------------------------------------------------------

@pytest.mark.parametrize("metric", GATED_METRICS)
@pytest.mark.parametrize("kind", ["min", "max_drop", "max_relative_drop"])
def test_metric_threshold_passes_at_its_limit_and_fails_just_beyond(metric, kind):
    cmp = _cmp()
    v, b = cmp.stages["served"].get(metric), cmp.stages["baseline"].get(metric)
    assert 0 < v < b, "the fixture's candidate is worse on every metric"
    at, beyond, name = {
        "min": (v, v + JUST, f"{metric} >= min"),
        "max_drop": (b - v, b - v - JUST, f"{metric} drop"),
        "max_relative_drop": ((b - v) / b, (b - v) / b - JUST, f"{metric} relative drop"),
    }[kind]
    for limit, ok in ((at, True), (beyond, False)):
        res = _run(GateSpec(metrics={metric: MetricThreshold(**{kind: limit})}))
        c = check(res, name, "served")
        assert c.passed is ok and c.is_gating and c.evaluated
        assert (c.value, c.baseline) == (v, b)
        assert res.passed is ok or res.failures != (c,)


def test_metric_limits_and_details_say_the_figures():
    spec = _spec(metrics={"accuracy": MetricThreshold(min=0.85, max_drop=0.02, max_relative_drop=0.05)})
    res = _run(spec)
    assert check(res, "accuracy >= min").limit == ">= 0.8500"
    assert check(res, "accuracy >= min").detail == ""
    drop = check(res, "accuracy drop")
    assert drop.limit == "drop <= 0.0200" and drop.detail == "drop +0.0200" and drop.passed
    rel = check(res, "accuracy relative drop")
    assert rel.limit == "relative drop <= 5.00%" and rel.detail == "relative drop +2.22%" and rel.passed


def test_a_drop_of_exactly_one_point_passes_the_seeds_one_point_limit():
    y, base = truth_and_baseline()
    cand = base.copy()
    cand[10] = 2  # 0.90 -> 0.89: 0.9 - 0.89 is 0.010000000000000009 in floating point
    cmp = comparison(y, [outputs("baseline", base), outputs("served", cand)])
    assert cmp.stages["baseline"].accuracy - cmp.stages["served"].accuracy > 0.01
    assert check(_run(_spec(metrics={"accuracy": MetricThreshold(max_drop=0.01)}), cmp), "accuracy drop").passed
    cand[11] = 2
    cmp = comparison(y, [outputs("baseline", base), outputs("served", cand)])
    assert not check(_run(_spec(metrics={"accuracy": MetricThreshold(max_drop=0.01)}), cmp), "accuracy drop").passed


def test_a_better_candidate_passes_the_drop_limits():
    y, base = truth_and_baseline()
    cmp = comparison(y, [outputs("baseline", base), outputs("served", y.copy())])
    spec = _spec(metrics={"accuracy": MetricThreshold(max_drop=0.0, max_relative_drop=0.0)}, flag_improvement=False)
    res = _run(spec, cmp)
    assert check(res, "accuracy drop").passed and check(res, "accuracy relative drop").passed
    assert check(res, "accuracy drop").detail == "drop -0.1000"


def test_relative_drop_against_a_zero_baseline_fails():
    cmp = _cmp()
    base = replace(cmp.stages["baseline"], accuracy=0.0)
    checks = metric_checks(_spec(metrics={"accuracy": MetricThreshold(max_relative_drop=1.0)}),
                           cmp.stages["served"], base, "served")
    assert [(c.name, c.passed, c.detail) for c in checks] == [("accuracy relative drop", False, "baseline is 0")]


def test_an_undefined_metric_is_not_evaluable_with_its_reason():
    cmp = _cmp()
    why = "class(es) ['c'] are absent from the eval rows: their recall is 0/0"
    cand = replace(cmp.stages["served"], recall_macro=float("nan"), undefined={"recall_macro": why})
    spec = _spec(metrics={"recall_macro": MetricThreshold(min=0.5)})
    [c] = metric_checks(spec, cand, cmp.stages["baseline"], "served")
    assert not c.passed and c.is_gating and not c.evaluated and c.detail == f"not evaluable: {why}"
    allowed = _spec(metrics=spec.metrics, allow_not_evaluable=("recall_macro >= min",))
    [w] = metric_checks(allowed, cand, cmp.stages["baseline"], "served")
    assert not w.passed and not w.is_gating
    # the baseline's reason counts too
    [b] = metric_checks(spec, cmp.stages["served"], cand, "served")
    assert b.detail == f"not evaluable: {why}"


def test_a_metric_that_could_not_be_measured_fails_gating():
    cmp = _cmp()
    cand = replace(cmp.stages["served"], accuracy=float("nan"))
    spec = _spec(metrics={"accuracy": MetricThreshold(min=0.0)}, allow_not_evaluable=("accuracy >= min",))
    [c] = metric_checks(spec, cand, cmp.stages["baseline"], "served")
    assert c.detail == "not evaluated: accuracy could not be measured" and c.is_gating and not c.passed
    [d] = metric_checks(spec, cmp.stages["served"], replace(cand, stage="baseline"), "served", not_run="gone")
    assert d.detail == "not evaluated: gone"


# --- agreement, confusion, positive class, improvement -----------------------------------------------------------

def test_prediction_agreement_passes_at_its_limit_and_fails_just_beyond():
    for limit, ok in ((0.98, True), (0.98 + JUST, False)):
        c = check(_run(_spec(min_prediction_agreement=limit)), "prediction agreement")
        assert c.passed is ok and c.value == 0.98 and c.baseline == 1.0
    c = check(_run(_spec()), "prediction agreement")
    assert c.limit == ">= 1.0000"
    assert c.detail == ("2 row(s) differ (r10, r50); McNemar exact p=0.5 (2 rows only baseline right, 0 only "
                        "served right)")


def test_confusion_identical_passes_only_when_identical():
    y, base = truth_and_baseline()
    same = comparison(y, [outputs("baseline", base), outputs("served", base.copy())])
    c = check(_run(_spec(), same), "confusion matrix identical")
    assert c.passed and c.value == "identical" and c.detail == ""
    moved = base.copy()
    moved[0] = 2  # a wrong answer becomes another wrong answer: same accuracy, another matrix
    cmp = comparison(y, [outputs("baseline", base), outputs("served", moved)])
    assert cmp.stages["served"].accuracy == cmp.stages["baseline"].accuracy
    c = check(_run(_spec(), cmp), "confusion matrix identical")
    assert not c.passed and c.value == "differs"
    assert ("served", "confusion matrix identical") not in _run(_spec(require_identical_confusion=False), cmp).names()


def test_a_row_without_an_answer_breaks_an_identical_confusion_matrix():
    y, base = truth_and_baseline()
    base = base.copy()
    base[50] = -1  # the same row missing on both sides: equal matrices, but a row is unanswered
    cmp = comparison(y, [outputs("baseline", base), outputs("served", base.copy())])
    assert cmp.stages["served"].confusion == cmp.stages["baseline"].confusion
    c = check(_run(_spec(), cmp), "confusion matrix identical")
    assert not c.passed and c.value == "differs" and c.detail == "1 row(s) without an answer"


@pytest.mark.parametrize("metric", ["recall", "precision"])
def test_positive_class_minimum_passes_at_its_limit_and_fails_just_beyond(metric):
    cmp = _cmp()
    v, b = cmp.stages["served"].per_class["b"][metric], cmp.stages["baseline"].per_class["b"][metric]
    assert v != b
    key = f"min_positive_{metric}"
    for limit, ok in ((v, True), (v + JUST, False)):
        c = check(_run(_spec(positive_class=1, **{key: limit})), f"{metric} of positive class 'b'")
        assert c.passed is ok and (c.value, c.baseline) == (v, b) and c.limit == f">= {limit:.4f}"


def test_positive_class_checks_exist_only_for_the_minimums_set():
    names = _run(_spec(positive_class=1, min_positive_recall=0.1)).names()
    assert ("served", "recall of positive class 'b'") in names
    assert ("served", "precision of positive class 'b'") not in names
    names = _run(_spec(positive_class=1, min_positive_precision=0.1)).names()
    assert ("served", "precision of positive class 'b'") in names
    assert ("served", "recall of positive class 'b'") not in names
    assert not any("positive" in n for _, n in _run(_spec()).names())


def test_positive_precision_of_a_class_never_predicted_is_not_evaluable():
    y, base = truth_and_baseline()
    cand = base.copy()
    cand[cand == 1] = 0
    cmp = comparison(y, [outputs("baseline", base), outputs("served", cand)])
    spec = _spec(positive_class=1, min_positive_precision=0.5)
    c = check(_run(spec, cmp), "precision of positive class 'b'", "served")
    assert c.passed is False and c.is_gating and c.evaluated is False and c.limit == ">= 0.5000"
    assert c.detail == "not evaluable: precision of 'b' is 0/0 in served"
    warn = check(_run(_spec(positive_class=1, min_positive_precision=0.5,
                            allow_not_evaluable=("precision of positive class 'b'",)), cmp),
                 "precision of positive class 'b'")
    assert not warn.is_gating


@pytest.mark.parametrize("cand_only, base_only, p, ok", [
    (5, 0, 0.05, True),  # better, but not beyond noise: at the limit
    (5, 0, 0.05 - JUST, False),  # better beyond noise: suspicious
    (5, 5, 0.001, True),  # as many rows gained as lost is no improvement
    (0, 5, 0.001, True),  # worse: the drop checks judge that
])
def test_no_improvement_beyond_noise_at_the_significance_limit(cand_only, base_only, p, ok):
    cmp = with_test(_cmp(), "served", candidate_only_correct=cand_only, reference_only_correct=base_only,
                    mcnemar_p=p)
    c = check(_run(_spec(), cmp), "no improvement beyond noise")
    assert c.passed is ok and c.limit == "McNemar p >= 0.05 when better"
    if not ok:
        assert c.detail == "metrics improved after packaging beyond noise: suspect the wrong data or model"
    else:
        assert c.detail.startswith("delta accuracy ")


def test_no_improvement_detail_gives_the_delta_and_its_interval():
    cmp = with_test(_cmp(), "served", delta_accuracy=-0.02, delta_accuracy_ci=(-0.05, 0.0))
    c = check(_run(_spec(), cmp), "no improvement beyond noise")
    assert c.detail == "delta accuracy -0.0200, 95% CI [-0.0500, +0.0000]" and c.value == -0.02 and c.baseline == 0.0
    assert ("served", "no improvement beyond noise") not in _run(_spec(flag_improvement=False)).names()


def test_a_real_improvement_beyond_noise_fails():
    y, base = truth_and_baseline()
    cmp = comparison(y, [outputs("baseline", base), outputs("served", y.copy())])
    assert cmp.tests["served"].mcnemar_p < 0.05
    assert not check(_run(_spec(), cmp), "no improvement beyond noise").passed


# --- leakage --------------------------------------------------------------------------------------------------------

def _leak(leaked, **spec_kw):
    res = evaluate_gate(_spec(**spec_kw), gate_plan("served", has_training_data=True), _cmp(),
                        GateInputs(answered=all_answered("served"), leaked_ids=leaked))
    return check(res, "eval rows not in training data", "dataset")


def test_leakage_passes_at_zero_and_fails_at_one_leaked_row():
    ok = _leak(())
    assert ok.passed and ok.value == "0 leaked" and ok.is_gating
    bad = _leak(("r1", "r7"))
    assert not bad.passed and bad.value == "2 leaked" and bad.detail == "r1, r7" and bad.is_gating
    assert not _leak(("r1",), fail_on_leakage=False).is_gating
    missing = _leak(None)
    assert not missing.passed and not missing.evaluated and missing.is_gating
    assert missing.detail == "not evaluated: the training rows were not read"
    assert not _leak(None, fail_on_leakage=False).is_gating
    assert ("dataset", "eval rows not in training data") not in _run(_spec()).names()


def test_leaked_ids_listed_are_at_most_ten():
    bad = _leak(tuple(f"r{i}" for i in range(12)))
    assert bad.detail == ", ".join(f"r{i}" for i in range(10)) and bad.value == "12 leaked"


# --- rows answered by a handler: error rate, completeness ---------------------------------------------------------

@pytest.mark.parametrize("stage", ["handled", "handled@batch4", "served"])
def test_error_rate_passes_at_its_limit_and_fails_just_beyond(stage):
    y, base = truth_and_baseline()
    cmp = comparison(y, [outputs("baseline", base), outputs(stage, base)])
    for rate, ok in ((0.02, True), (0.02 + JUST, False), (float("nan"), False)):
        facts = {stage: StageFacts(rate, {"queue_full": 1, "handler_error": 1}, True)}
        res = _run(_spec(max_error_rate=0.02), cmp, GateInputs(answered=facts), stage=stage)
        c = check(res, f"{stage} error rate", stage)
        assert c.passed is ok and c.limit == "<= 0.0200" and c.value is rate and c.baseline is None
        assert c.detail == "handler_error: 1, queue_full: 1"
        assert check(res, f"{stage} complete", stage).passed


@pytest.mark.parametrize("stage", ["handled", "served"])
def test_an_incomplete_stage_fails_with_its_abort_reason(stage):
    y, base = truth_and_baseline()
    cmp = comparison(y, [outputs("baseline", base), outputs(stage, base)])
    facts = {stage: StageFacts(0.0, {}, False, "8 consecutive 'connection_error' failures")}
    c = check(_run(_spec(), cmp, GateInputs(answered=facts), stage=stage), f"{stage} complete", stage)
    assert not c.passed and c.value == "incomplete" and c.detail == "8 consecutive 'connection_error' failures"
    ok = check(_run(_spec(), cmp, GateInputs(answered=all_answered(stage)), stage=stage), f"{stage} complete")
    assert ok.passed and ok.value == "complete" and ok.detail == ""


def test_missing_row_accounting_fails_both_checks():
    res = _run(_spec(), inputs=GateInputs())
    for name in ("served error rate", "served complete"):
        c = check(res, name)
        assert not c.passed and c.is_gating and c.detail == "not evaluated: the served stage has no results"


# --- probes ----------------------------------------------------------------------------------------------------------

def _probes(inputs, **spec_kw):
    y, base = truth_and_baseline()
    cmp = comparison(y, [outputs("baseline", base), outputs("exported", base)])
    res = evaluate_gate(_spec(**spec_kw), gate_plan("exported", probes=("exported",)), cmp, inputs)
    return check(res, "probe inputs", "exported")


def test_probes_pass_with_none_failed_and_fail_with_one():
    ok = _probes(GateInputs(probes_run=("exported",)))
    assert ok.passed and ok.value == "0 failed" and ok.is_gating
    lines = tuple(f"batch {i}: differs" for i in range(8))
    bad = _probes(GateInputs(probes_run=("exported",), failed_probes={"exported": lines[:1]}))
    fix = " (fix the handler, or set gate.probes: false to report probes without gating them)"
    assert bad.passed is False and bad.value == "1 failed" and bad.detail == "batch 0: differs" + fix
    many = _probes(GateInputs(probes_run=("exported",), failed_probes={"exported": lines}))
    assert many.detail == "; ".join(lines[:6]) + fix and many.value == "8 failed"
    warn = _probes(GateInputs(probes_run=("exported",), failed_probes={"exported": lines}), probes=False)
    assert not warn.is_gating and warn.passed is False and warn.detail == "; ".join(lines[:6])
    assert ok.limit == bad.limit == "none failed" and ok.detail == ""


def test_probes_that_did_not_run_fail():
    c = _probes(GateInputs(failed_probes={"exported": ()}))
    assert not c.passed and not c.evaluated and c.is_gating
    assert c.detail == "not evaluated: the exported probes did not run"
    assert not _probes(GateInputs(), probes=False).is_gating


def test_probe_warnings_are_a_warn_that_never_gates_and_absent_without_any():
    y, base = truth_and_baseline()
    cmp = comparison(y, [outputs("baseline", base), outputs("exported", base)])
    lines = tuple(f"EXIF {i}: ignores EXIF" for i in range(6))
    res = evaluate_gate(_spec(), gate_plan("exported", probes=("exported",)), cmp,
                        GateInputs(probes_run=("exported",), warned_probes={"exported": lines}))
    c = check(res, "probe warnings", "exported")
    assert (c.passed, c.is_gating, c.value, c.limit) == (False, False, "6 warning(s)", "none")
    assert c.detail == "; ".join(lines[:4]) and res.passed
    quiet = evaluate_gate(_spec(), gate_plan("exported", probes=("exported",)), cmp,
                          GateInputs(probes_run=("exported",), warned_probes={"exported": ()}))
    assert ("exported", "probe warnings") not in quiet.names()


def test_probes_are_checked_only_where_planned():
    y, base = truth_and_baseline()
    cmp = comparison(y, [outputs("baseline", base), outputs("exported", base)])
    res = evaluate_gate(_spec(), gate_plan("exported"), cmp, GateInputs(probes_run=("exported",)))
    assert ("exported", "probe inputs") not in res.names()


# --- served latency: p99, model time ratio -------------------------------------------------------------------------

def _latency_cmp(server_ms=None):
    y, base = truth_and_baseline()
    lat = np.linspace(1.0, 20.0, len(y))
    return comparison(y, [outputs("baseline", base), outputs("served", base, latencies=lat)], server_ms=server_ms)


def test_served_p99_passes_at_its_limit_and_fails_just_below():
    cmp = _latency_cmp()
    p99 = cmp.stages["served"].latency.p99
    for limit, ok in ((p99, True), (p99 - 1e-6, False)):
        c = check(_run(_spec(max_served_p99_ms=limit), cmp), "served latency p99 (ms)")
        assert c.passed is ok and c.value == p99 and c.detail == ""
    assert check(_run(_spec(max_served_p99_ms=30.0), cmp), "served latency p99 (ms)").limit == "<= 30"


def test_served_p99_without_latencies_fails():
    y, base = truth_and_baseline()
    cmp = comparison(y, [outputs("baseline", base), outputs("served", base, latencies=np.full(100, np.nan))])
    c = check(_run(_spec(max_served_p99_ms=1e9), cmp), "served latency p99 (ms)")
    assert not c.passed and c.value is None and c.detail == "not evaluated: no latency"


def test_model_time_ratio_passes_at_its_limit_and_fails_just_beyond():
    cmp = _latency_cmp(server_ms=np.full(100, 3.0))
    assert cmp.served_server_latency.p50 == 3.0
    for limit, ok in ((1.5, True), (1.5 - JUST, False)):
        c = check(_run(_spec(max_model_time_ratio=limit), cmp, GateInputs(answered=all_answered("served"),
                                                                          eager_p50_ms=2.0)),
                  "served model time p50 / eager p50")
        assert c.passed is ok and c.value == 1.5 and c.baseline == 1.0 and c.detail == ""


@pytest.mark.parametrize("server_ms, eager", [(None, 2.0), (np.full(100, 3.0), None), (np.full(100, 3.0), 0.0)])
def test_model_time_ratio_without_both_times_fails(server_ms, eager):
    cmp = _latency_cmp(server_ms=server_ms)
    c = check(_run(_spec(max_model_time_ratio=100.0), cmp, GateInputs(answered=all_answered("served"),
                                                                      eager_p50_ms=eager)),
              "served model time p50 / eager p50")
    assert not c.passed and c.value is None
    assert c.detail == "not evaluated: no server-side time or eager latency"


def test_served_latency_checks_need_a_served_comparison():
    res = evaluate_gate(_spec(max_served_p99_ms=1.0, max_model_time_ratio=1.0), gate_plan("served"), None,
                        GateInputs(eager_p50_ms=1.0))
    assert not check(res, "served latency p99 (ms)").passed
    assert not check(res, "served model time p50 / eager p50").passed


# --- export size and latency ratios -------------------------------------------------------------------------------

SIZE, SPEED = "exported size / eager weights size", "exported / eager latency, batch 1"


def _export_checks(spec, **inputs):
    y, base = truth_and_baseline()
    cmp = comparison(y, [outputs("baseline", base), outputs("exported", base)])
    res = evaluate_gate(spec, gate_plan("exported"), cmp, GateInputs(**inputs))
    return res, check(res, SIZE, "exported"), check(res, SPEED, "exported")


def test_gated_size_and_latency_ratios_pass_at_their_limits_and_fail_just_beyond():
    spec = _spec(max_size_ratio=2.0, max_export_latency_ratio=1.5)
    res, size, speed = _export_checks(spec, export_size_ratio=2.0, export_latency_ratio=1.5)
    assert size.passed and speed.passed and size.is_gating and speed.is_gating and res.passed
    assert (size.limit, speed.limit) == ("<= 2", "<= 1.5") and size.baseline == 1.0
    res, size, speed = _export_checks(spec, export_size_ratio=2.0 + JUST, export_latency_ratio=1.5 + JUST)
    assert not size.passed and not speed.passed and not res.passed


def test_ungated_ratios_are_judged_against_the_seeds_and_never_fail_the_run():
    res, size, speed = _export_checks(_spec(), export_size_ratio=1.0, export_latency_ratio=0.8)
    assert size.passed and speed.passed and not size.is_gating and not speed.is_gating
    assert size.limit == "<= 1 (seeds: same or smaller; not gated)"
    assert speed.limit == "<= 0.8 (seeds: 20% faster is good; not gated)"
    res, size, speed = _export_checks(_spec(), export_size_ratio=1.0 + JUST, export_latency_ratio=0.8 + JUST)
    assert not size.passed and not speed.passed and res.passed
    assert size.value == 1.0 + JUST


def test_missing_ratios_fail_only_where_gated():
    res, size, speed = _export_checks(_spec())
    assert not size.passed and not size.is_gating and not size.evaluated and res.passed
    assert size.detail == "not evaluated: no export result"
    res, size, speed = _export_checks(_spec(max_size_ratio=2.0, max_export_latency_ratio=2.0))
    assert size.is_gating and speed.is_gating and not res.passed


def test_ratios_are_checked_on_the_exported_stage_only():
    assert not any(n in (SIZE, SPEED) for _, n in _run(_spec(max_size_ratio=2.0)).names())


# --- an earlier run as a second baseline --------------------------------------------------------------------------

def _prior(prior_metrics, **spec_kw):
    res = evaluate_gate(_spec(**spec_kw), gate_plan("served", has_prior=True), _cmp(),
                        GateInputs(answered=all_answered("served"), prior_metrics=prior_metrics,
                                   prior_label="run 41"))
    return res


def test_prior_run_drop_passes_at_its_limit_and_fails_just_beyond():
    served = _cmp().stages["served"].accuracy
    spec_kw = {"metrics": {"accuracy": MetricThreshold(max_drop=0.05)}}
    ok = check(_prior({"accuracy": served + 0.05}, **spec_kw), "accuracy drop vs run 41", "served")
    assert ok.passed and ok.baseline == served + 0.05 and ok.value == served and ok.limit == "drop <= 0.0500"
    assert ok.detail == "drop +0.0500"
    bad = check(_prior({"accuracy": served + 0.05 + JUST}, **spec_kw), "accuracy drop vs run 41")
    assert not bad.passed


def test_prior_run_checks_only_metrics_with_a_drop_limit():
    names = _prior({"accuracy": 0.0}, metrics={"accuracy": MetricThreshold(min=0.1),
                                              "f1_macro": MetricThreshold(max_drop=0.1)}).names()
    assert ("served", "f1_macro drop vs run 41") in names and ("served", "accuracy drop vs run 41") not in names
    missing = check(_prior({"accuracy": 0.0}, metrics={"f1_macro": MetricThreshold(max_drop=0.1)}),
                    "f1_macro drop vs run 41")
    assert not missing.passed and missing.is_gating
    assert not check(_prior(None), "accuracy drop vs run 41").passed


# --- output difference on every stage, logits and carried probabilities -------------------------------------------

CANDIDATES = ("exported", "handled", "handled@batch4", "served")


def _logits(n, c=3):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, c))


@pytest.mark.parametrize("stage", CANDIDATES)
@pytest.mark.parametrize("quantity", ["logits", "probabilities"])
def test_output_difference_passes_at_its_limit_and_fails_just_beyond(stage, quantity):
    y, base = truth_and_baseline()
    n = len(y)
    delta = 3e-5
    if quantity == "logits":
        ref_l = _logits(n)
        cand_l = ref_l.copy()
        cand_l[7, 2] += delta
        cand_l[9, 1] -= delta / 2
        ref = outputs("baseline", base, logits=ref_l)
        cand = outputs(stage, base, logits=cand_l)
    else:
        ref_p = np.full((n, 3), 1 / 3)
        cand_p = np.full((n, 3), np.nan)  # only the predicted class is carried ...
        cand_p[np.arange(n), base] = 1 / 3
        cand_p[7, base[7]] += delta
        ref = outputs("baseline", base, probabilities=ref_p)
        cand = outputs(stage, base, probabilities=cand_p)
    d = abs(ref.logits[7, 2] - cand.logits[7, 2]) if quantity == "logits" else abs(cand_p[7, base[7]] - 1 / 3)
    for limit, ok in ((d, True), (d - JUST, False)):
        cmp = comparison(y, [ref, cand], tolerance=limit)
        plan = gate_plan(stage, quantity=quantity)
        c = check(gate(_spec(max_output_diff=limit), plan, cmp), "max abs output difference", stage)
        assert c.passed is ok and c.value == d and c.baseline == 0.0
        assert c.detail.startswith(f"{quantity}, 100 row(s) compared")
        assert ("largest beyond the tolerance: r7" in c.detail) is not ok


def test_output_difference_counts_only_rows_both_answered():
    y, base = truth_and_baseline()
    ref_l = _logits(100)
    cand_l = ref_l.copy()
    cand_l[50] += 5.0  # the served row 50 has no answer: its outputs are not compared
    cand = base.copy()
    cand[50] = -1
    cmp = comparison(y, [outputs("baseline", base, logits=ref_l), outputs("served", cand, logits=cand_l)])
    c = check(_run(_spec(), cmp), "max abs output difference")
    assert c.passed and c.value == 0.0 and c.detail == "logits, 99 row(s) compared"
    assert c.limit == "<= 1e-05"


def test_output_difference_without_outputs_is_not_evaluable():
    y, base = truth_and_baseline()
    cmp = comparison(y, [outputs("baseline", base), outputs("served", base, probabilities=None)])
    c = check(_run(_spec(), cmp), "max abs output difference", "served")
    assert c.passed is False and c.is_gating and c.evaluated is False and c.limit == "<= 1e-05"
    assert c.detail == "not evaluable: the served answers carry no logits or probabilities"
    allowed = _spec(allow_not_evaluable=("max abs output difference",))
    assert not check(_run(allowed, cmp), "max abs output difference").is_gating


def test_output_difference_without_a_common_row_fails_gating():
    y, base = truth_and_baseline()
    cmp = comparison(y, [outputs("baseline", base), outputs("served", np.full(100, -1))])
    c = check(_run(_spec(allow_not_evaluable=("max abs output difference",)), cmp), "max abs output difference")
    assert not c.passed and c.is_gating
    assert c.detail == "not evaluated: no row answered by both baseline and served"


# --- warm-up answers against steady-state answers ------------------------------------------------------------------

WARM = "warm-up answers equal steady-state answers"


def _warm(**inputs):
    res = evaluate_gate(_spec(), gate_plan("served", warmup=True), _cmp(),
                        GateInputs(answered=all_answered("served"), **inputs))
    return check(res, WARM, "served")


def test_warmup_answers_pass_when_none_differs_and_fail_at_one():
    ok = _warm(warmup_checked=20)
    assert (ok.passed, ok.value, ok.limit, ok.detail, ok.is_gating) == (True, "0 of 20 differ", "0 rows differ", "",
                                                                         True)
    rows = tuple(f"r{i}: warm-up 1, replay 0" for i in range(7))
    bad = _warm(warmup_checked=20, warmup_differing=rows[:1])
    assert bad.passed is False and bad.value == "1 of 20 differ" and bad.detail == "r0: warm-up 1, replay 0"
    many = _warm(warmup_checked=20, warmup_differing=rows)
    assert many.value == "7 of 20 differ" and many.detail == "; ".join(rows[:5])


@pytest.mark.parametrize("checked", [None, 0])
def test_warmup_without_a_row_answered_twice_fails_unevaluated(checked):
    c = _warm(warmup_checked=checked)
    assert (c.passed, c.evaluated, c.value, c.baseline, c.limit, c.is_gating) == (False, False, None, None,
                                                                                  "0 rows differ", True)
    assert c.detail == "not evaluated: no row was answered both during the warm-up and the replay"


def test_warmup_is_checked_only_where_planned():
    assert ("served", WARM) not in _run(_spec(), inputs=GateInputs(warmup_checked=3)).names()


def test_the_rounding_allowance_is_inclusive():
    from pipeline.evaluate.gate import EPS, at_least, at_most

    assert at_most(1.0 + EPS, 1.0) and not at_most(1.0 + 3 * EPS, 1.0)
    assert at_least(1.0 - EPS, 1.0) and not at_least(1.0 - 3 * EPS, 1.0)
    for bad in (None, float("nan"), float("inf"), -float("inf")):
        assert not at_most(bad, 1e9) and not at_least(bad, -1e9)


def test_every_row_beyond_the_tolerance_is_named():
    y, base = truth_and_baseline()
    ref_l = np.zeros((100, 3))
    cand_l = ref_l.copy()
    cand_l[[3, 8], 0] = [1e-3, 2e-3]
    cmp = comparison(y, [outputs("baseline", base, logits=ref_l), outputs("exported", base, logits=cand_l)])
    c = check(gate(_spec(), gate_plan("exported", quantity="logits"), cmp), "max abs output difference")
    assert c.detail == "logits, 100 row(s) compared; largest beyond the tolerance: r8, r3"


def test_an_output_difference_without_a_reason_says_nothing_to_compare():
    from pipeline.evaluate.compare import OutputDiff

    cmp = with_test(_cmp(), "served", output=OutputDiff("logits", None, 0))
    c = check(_run(_spec(), cmp), "max abs output difference")
    assert c.detail == "not evaluated: nothing to compare" and c.is_gating and c.passed is False
