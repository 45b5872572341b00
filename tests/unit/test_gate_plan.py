"""The gate's checks come from the plan, not from what happened to run: the exact set, and no pass on nothing."""

import numpy as np
import pytest

from pipeline.evaluate.gate import Check, GateInputs, GatePlan, GateResult, StageFacts, evaluate_gate
from pipeline.spec import GATED_METRICS, GateSpec
from tests.unit._support import fast_bootstrap  # noqa: F401  (autouse)
from tests.unit._support import LABELS, all_answered, check, comparison, gate_plan, outputs, truth_and_baseline

TYPICAL = ("exported", "handled", "served")
WITH_BATCH = ("exported", "handled", "handled@batch4", "served")


def _typical_plan(candidates=TYPICAL, **kw) -> GatePlan:
    """What ``plan_run`` plans for the project's own handler (logits everywhere, export probes on)."""
    return GatePlan(candidates=candidates, labels=LABELS, output_quantity={s: "logits" for s in candidates},
                    probes=("exported",), **kw)


def _per_candidate(stage: str) -> set[tuple[str, str]]:
    names = {"prediction agreement", "confusion matrix identical", "no improvement beyond noise",
             "max abs output difference"} | {f"{m} drop" for m in GATED_METRICS}
    return {(stage, n) for n in names}


def _expected(candidates, *, positive=False, prior=False, training=False) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for stage in candidates:
        out |= _per_candidate(stage)
        if positive:
            out |= {(stage, "recall of positive class 'b'"), (stage, "precision of positive class 'b'")}
    out |= {("exported", "probe inputs"), ("exported", "exported size / eager weights size"),
            ("exported", "exported / eager latency, batch 1")}
    for stage in candidates:
        if stage != "exported":
            out |= {(stage, f"{stage} error rate"), (stage, f"{stage} complete")}
    if prior:
        out |= {("served", f"{m} drop vs previous run") for m in GATED_METRICS}
    if training:
        out.add(("dataset", "eval rows not in training data"))
    return out


def _full_comparison(candidates):
    y, base = truth_and_baseline()
    stages = [outputs("baseline", base)] + [outputs(s, base) for s in candidates]
    return comparison(y, stages)


def _facts_inputs(candidates, **kw) -> GateInputs:
    return GateInputs(answered=all_answered(*[s for s in candidates if s != "exported"]), probes_run=("exported",),
                      export_size_ratio=0.9, export_latency_ratio=0.5, **kw)


@pytest.mark.parametrize("candidates", [TYPICAL, WITH_BATCH], ids=["batch1", "batch4"])
@pytest.mark.parametrize("positive", [False, True], ids=["no-positive", "positive"])
@pytest.mark.parametrize("prior", [False, True], ids=["no-prior", "prior"])
@pytest.mark.parametrize("training", [False, True], ids=["no-train", "train"])
def test_the_exact_checks_of_a_typical_plan(candidates, positive, prior, training):
    spec = GateSpec(positive_class=1, min_positive_recall=0.5, min_positive_precision=0.5) if positive else GateSpec()
    plan = _typical_plan(candidates, has_prior=prior, has_training_data=training)
    expected = _expected(candidates, positive=positive, prior=prior, training=training)
    inputs = _facts_inputs(candidates, leaked_ids=() if training else None,
                           prior_metrics=dict.fromkeys(GATED_METRICS, 0.5) if prior else None)
    ran = evaluate_gate(spec, plan, _full_comparison(candidates), inputs)
    assert ran.names() == expected
    assert len(ran.checks) == len(expected), "no check appears twice"
    assert ran.passed, [(c.stage, c.name, c.detail) for c in ran.failures]
    nothing = evaluate_gate(spec, plan, None, GateInputs())
    assert nothing.names() == expected | {("run", "rows answered")}
    assert not nothing.passed
    gating = [c for c in nothing.checks if c.is_gating]
    assert gating and not any(c.passed for c in gating)


def test_optional_served_latency_checks_are_planned_only_when_set():
    plan = _typical_plan()
    spec = GateSpec(max_served_p99_ms=50.0, max_model_time_ratio=3.0)
    res = evaluate_gate(spec, plan, None, GateInputs())
    extra = res.names() - _expected(TYPICAL) - {("run", "rows answered")}
    assert extra == {("served", "served latency p99 (ms)"), ("served", "served model time p50 / eager p50")}
    assert not check(res, "served latency p99 (ms)").passed
    assert not check(res, "served model time p50 / eager p50").passed


def test_thresholds_decide_which_metric_checks_exist():
    from pipeline.spec import MetricThreshold

    spec = GateSpec(metrics={"accuracy": MetricThreshold(min=0.5, max_drop=0.1, max_relative_drop=0.2),
                             "f1_macro": MetricThreshold(min=0.5)},
                    require_identical_confusion=False, flag_improvement=False)
    res = evaluate_gate(spec, gate_plan("served"), None, GateInputs())
    assert res.names() == {("served", n) for n in (
        "prediction agreement", "accuracy >= min", "accuracy drop", "accuracy relative drop", "f1_macro >= min",
        "max abs output difference", "served error rate", "served complete")} | {("run", "rows answered")}


def test_a_run_with_no_candidate_stage_never_passes():
    res = evaluate_gate(GateSpec(), GatePlan(candidates=()), None, GateInputs())
    assert not res.passed
    only = check(res, "a candidate stage to gate", "run")
    assert only.is_gating and not only.passed and "nothing to vouch for" in only.detail
    assert [(c.stage, c.name) for c in res.failures] == [("run", "a candidate stage to gate")]


def test_a_run_whose_candidates_answered_no_row_never_passes():
    y, base = truth_and_baseline()
    dead = np.full(len(y), -1)
    cmp = comparison(y, [outputs("baseline", base), outputs("served", dead)])
    res = evaluate_gate(GateSpec(), gate_plan("served"), cmp,
                        GateInputs(answered={"served": StageFacts(1.0, {"worker_died": 100}, True)}))
    assert not res.passed
    rows = check(res, "rows answered", "run")
    assert not rows.passed and rows.value == 0 and "no candidate stage answered" in rows.detail


def test_one_answering_candidate_is_enough_for_rows_answered():
    y, base = truth_and_baseline()
    cmp = comparison(y, [outputs("baseline", base), outputs("exported", base), outputs("served", np.full(100, -1))])
    res = evaluate_gate(GateSpec(), gate_plan("exported", "served"), cmp, GateInputs())
    assert ("run", "rows answered") not in res.names()


def test_a_gate_without_a_gating_check_never_passes():
    warn = Check("x", "served", 1.0, None, "<= 1", True, is_gating=False)
    assert not GateResult(checks=()).passed
    assert not GateResult(checks=(warn,)).passed
    assert GateResult(checks=(warn, Check("y", "served", 1.0, None, "<= 1", True))).passed
    failing = Check("z", "served", 2.0, None, "<= 1", False)
    both = GateResult(checks=(warn, failing, Check("y", "served", 1.0, None, "<= 1", True)))
    assert not both.passed and both.failures == (failing,)
    assert GateResult(checks=(Check("w", "s", None, None, "", False, is_gating=False),)).failures == ()


def test_only_allowed_not_evaluable_checks_become_warnings():
    plan = GatePlan(candidates=("handled", "served"), labels=LABELS,
                    output_quantity={"handled": "not evaluable: the answers carry only the predicted class",
                                     "served": "not evaluable: the answers carry only the predicted class"})
    y, base = truth_and_baseline()
    cmp = comparison(y, [outputs("baseline", base), outputs("handled", base), outputs("served", base)])
    inputs = GateInputs(answered=all_answered("handled", "served"))
    strict = evaluate_gate(GateSpec(), plan, cmp, inputs)
    out = check(strict, "max abs output difference", "served")
    assert out.is_gating and out.passed is False and out.evaluated is False and out.limit == "<= 1e-05"
    assert out.detail == "not evaluable: the answers carry only the predicted class"
    assert not strict.passed
    by_name = evaluate_gate(GateSpec(allow_not_evaluable=("max abs output difference",)), plan, cmp, inputs)
    assert by_name.passed and not check(by_name, "max abs output difference", "served").is_gating
    by_stage = evaluate_gate(GateSpec(allow_not_evaluable=("served: max abs output difference",)), plan, cmp, inputs)
    assert not check(by_stage, "max abs output difference", "served").is_gating
    assert check(by_stage, "max abs output difference", "handled").is_gating
    assert not by_stage.passed


def test_an_allowance_never_excuses_a_check_that_was_not_run():
    spec = GateSpec(allow_not_evaluable=("max abs output difference", "served: max abs output difference"))
    res = evaluate_gate(spec, gate_plan("served"), None, GateInputs(not_run={"served": "the server never started"}))
    out = check(res, "max abs output difference", "served")
    assert out.is_gating and out.detail == "not evaluated: the server never started"
    assert all(c.is_gating for c in res.checks if c.stage == "served" and c.name != "probe inputs")


def test_not_run_reason_is_every_missing_checks_detail():
    spec = GateSpec(positive_class=1, min_positive_recall=0.5)
    res = evaluate_gate(spec, _typical_plan(has_prior=True), None,
                        GateInputs(not_run={"served": "the server never started"}))
    served = [c for c in res.checks if c.stage == "served" and "previous run" not in c.name]
    assert served and all(c.detail == "not evaluated: the server never started" for c in served)
    assert all(not c.passed and not c.evaluated and c.value is None for c in served)
    handled = [c for c in res.checks if c.stage == "handled"]
    assert all(c.detail == "not evaluated: the handled stage has no results" for c in handled)
    prior = check(res, "accuracy drop vs previous run")
    assert prior.detail == "not evaluated: the served metric or the earlier run's is missing" and prior.is_gating


def _everything_planned():
    spec = GateSpec(positive_class=1, min_positive_recall=0.5, min_positive_precision=0.5, max_served_p99_ms=1e6,
                    max_model_time_ratio=1e6)
    plan = _typical_plan(WITH_BATCH, has_prior=True, has_training_data=True)
    y, base = truth_and_baseline()
    stages = [outputs("baseline", base)] + [outputs(s, base) for s in WITH_BATCH]
    cmp = comparison(y, stages, server_ms=np.full(100, 0.5))
    full = evaluate_gate(spec, plan, cmp, _facts_inputs(WITH_BATCH, leaked_ids=(), eager_p50_ms=1.0,
                                                        prior_metrics=dict.fromkeys(GATED_METRICS, 0.5)))
    nothing = evaluate_gate(spec, plan, None, GateInputs(not_run={"served": "the server never started"}))
    return full, nothing


UNGATED_BY_DEFAULT = {"exported size / eager weights size", "exported / eager latency, batch 1"}
CONSTANT_BASELINES = {"exported size / eager weights size": 1.0, "exported / eager latency, batch 1": 1.0,
                      "served model time p50 / eager p50": 1.0}


def test_a_check_without_results_keeps_its_limit_and_fails_unevaluated():
    full, nothing = _everything_planned()
    assert full.passed, [(c.stage, c.name, c.detail) for c in full.failures]
    assert all(c.passed is True and c.evaluated is True for c in full.checks)
    by_name = {(c.stage, c.name): c for c in full.checks}
    for c in nothing.checks:
        if (c.stage, c.name) == ("run", "rows answered"):
            continue
        ran = by_name[(c.stage, c.name)]
        assert c.limit == ran.limit and c.limit, (c.stage, c.name)
        assert c.passed is False and c.evaluated is False and c.value is None, (c.stage, c.name)
        assert c.baseline == CONSTANT_BASELINES.get(c.name), (c.stage, c.name)
        assert c.detail.startswith("not evaluated: "), (c.stage, c.name)
        assert c.is_gating is (c.name not in UNGATED_BY_DEFAULT), (c.stage, c.name)


def test_the_reason_each_check_without_results_gives():
    _, nothing = _everything_planned()
    details = {(c.stage, c.name): c.detail for c in nothing.checks}
    assert details.pop(("run", "rows answered")) == "no candidate stage answered any row"
    assert details.pop(("dataset", "eval rows not in training data")) == (
        "not evaluated: the training rows were not read")
    assert details.pop(("exported", "probe inputs")) == "not evaluated: the exported probes did not run"
    for name in ("exported size / eager weights size", "exported / eager latency, batch 1"):
        assert details.pop(("exported", name)) == "not evaluated: no export result"
    assert details.pop(("served", "served latency p99 (ms)")) == "not evaluated: no latency"
    assert details.pop(("served", "served model time p50 / eager p50")) == (
        "not evaluated: no server-side time or eager latency")
    for m in GATED_METRICS:
        assert details.pop(("served", f"{m} drop vs previous run")) == (
            "not evaluated: the served metric or the earlier run's is missing")
    for (stage, name), detail in details.items():
        why = "the server never started" if stage == "served" else f"the {stage} stage has no results"
        assert detail == f"not evaluated: {why}", (stage, name)
    rows = check(nothing, "rows answered", "run")
    assert (rows.value, rows.limit, rows.passed, rows.is_gating) == (0, ">= 1", False, True)


def test_no_candidate_check_says_what_was_expected():
    res = evaluate_gate(GateSpec(), GatePlan(candidates=()), None, GateInputs())
    only = check(res, "a candidate stage to gate", "run")
    assert (only.value, only.baseline, only.limit, only.passed) == (None, None, ">= 1 planned", False)
    assert only.detail == "nothing was planned after the baseline: there is nothing to vouch for"
    assert len(res.checks) == 1


def test_check_functions_called_with_a_missing_side_report_every_check_missing():
    from pipeline.evaluate.gate import agreement_checks, metric_checks, output_check

    full, _ = _everything_planned()
    y, base = truth_and_baseline()
    cmp = comparison(y, [outputs("baseline", base), outputs("served", base)])
    cand, ref, t = cmp.stages["served"], cmp.stages["baseline"], cmp.tests["served"]
    spec = GateSpec(metrics={"accuracy": GateSpec().metrics["accuracy"]})
    for c_, b_ in ((cand, None), (None, ref)):
        [m] = metric_checks(spec, c_, b_, "served")
        assert m.passed is False and m.detail == "not evaluated: accuracy could not be measured"
    for t_, c_, b_ in ((t, cand, None), (t, None, ref), (None, cand, ref)):
        got = agreement_checks(spec, t_, c_, b_, "served", LABELS)
        assert [g.name for g in got] == ["prediction agreement", "confusion matrix identical",
                                         "no improvement beyond noise"]
        assert all(g.passed is False and g.detail == "not evaluated: " for g in got)
        assert [g.limit for g in got] == [">= 1.0000", "identical", "McNemar p >= 0.05 when better"]
    out = output_check(spec, gate_plan("served"), None, "served")
    assert out.detail == "not evaluated: the served stage has no results" and out.limit == "<= 1e-05"
    unplanned = output_check(spec, GatePlan(candidates=("served",)), t, "served")
    assert unplanned.passed and unplanned.detail == "probabilities, 100 row(s) compared"


def test_a_limited_list_of_flipped_rows_names_each_candidates_own():
    y, base = truth_and_baseline()
    probs = np.full((100, 3), 0.2)
    probs[np.arange(100), base] = 0.6
    handled = base.copy()
    handled[10] = 2
    served = handled.copy()
    served[[50, 60, 61, 62, 63, 64, 65, 66, 67]] = 0
    stages = [outputs("baseline", base, probabilities=probs), outputs("handled", handled, probabilities=probs),
              outputs("served", served, probabilities=probs)]
    res = evaluate_gate(GateSpec(), gate_plan("handled", "served"), comparison(y, stages),
                        GateInputs(answered=all_answered("handled", "served")))
    assert check(res, "prediction agreement", "handled").detail.startswith("1 row(s) differ (r10); McNemar")
    assert check(res, "prediction agreement", "served").detail.startswith(
        "10 row(s) differ (r10, r50, r60, r61, r62, r63, r64, r65, ...); McNemar")
    nine = served.copy()
    nine[67] = base[67]
    stages_nine = [stages[0], outputs("served", nine, probabilities=probs)]
    res = evaluate_gate(GateSpec(), gate_plan("served"), comparison(y, stages_nine),
                        GateInputs(answered=all_answered("served")))
    assert check(res, "prediction agreement").detail.startswith(
        "9 row(s) differ (r10, r50, r60, r61, r62, r63, r64, r65, ...); McNemar")
    eight = served.copy()
    eight[[66, 67]] = base[[66, 67]]
    stages[2] = outputs("served", eight, probabilities=probs)
    res = evaluate_gate(GateSpec(), gate_plan("served"), comparison(y, [stages[0], stages[2]]),
                        GateInputs(answered=all_answered("served")))
    assert check(res, "prediction agreement").detail.startswith(
        "8 row(s) differ (r10, r50, r60, r61, r62, r63, r64, r65); McNemar")
    same = comparison(y, [stages[0], outputs("served", base, probabilities=probs)])
    assert check(evaluate_gate(GateSpec(), gate_plan("served"), same, GateInputs(answered=all_answered("served"))),
                 "prediction agreement").detail.startswith("0 row(s) differ; McNemar")


def test_a_not_evaluable_reason_keeps_its_own_colons():
    plan = GatePlan(candidates=("served",), labels=LABELS,
                    output_quantity={"served": "not evaluable: answers.format: mapping names only the class"})
    res = evaluate_gate(GateSpec(), plan, None, GateInputs())
    assert check(res, "max abs output difference", "served").detail == (
        "not evaluable: answers.format: mapping names only the class")
