import numpy as np

from pipeline.evaluate.compare import StageOutputs, compare_stages
from pipeline.evaluate.gate import GateInputs, GatePlan, StageFacts, evaluate_gate
from pipeline.spec import GateSpec, MetricThreshold

LABELS = ("a", "b", "c")


def _stages(y, base_pred, cand_pred, c=3, name="served"):
    eye = np.eye(c)
    return [StageOutputs("baseline", base_pred, eye[base_pred], eye[base_pred], np.ones(len(y))),
            StageOutputs(name, cand_pred, np.where(cand_pred[:, None] >= 0, eye[np.maximum(cand_pred, 0)], np.nan),
                         None, np.ones(len(y)))]


def _ids(n):
    return tuple(f"r{i}" for i in range(n))


def _plan(stage="served", labels=LABELS, **kw):
    return GatePlan(candidates=(stage,), labels=labels, output_quantity={stage: "probabilities"}, **kw)


def _served(error_rate=0.0, errors=None, complete=True):
    return {"served": StageFacts(error_rate=error_rate, errors=errors or {}, complete=complete)}


def test_identical_predictions_pass_every_check():
    y = np.array([0, 1, 2] * 20)
    cmp = compare_stages(_ids(60), y, LABELS, _stages(y, y.copy(), y.copy()))
    res = evaluate_gate(GateSpec(), _plan(), cmp, GateInputs(answered=_served()))
    assert res.passed and not res.failures


def test_flipped_rows_fail_with_values_and_mcnemar():
    y = np.array([0, 1, 2] * 20)
    cand = y.copy()
    cand[:12] = (cand[:12] + 1) % 3
    cmp = compare_stages(_ids(60), y, LABELS, _stages(y, y.copy(), cand))
    res = evaluate_gate(GateSpec(), _plan(), cmp, GateInputs(answered=_served()))
    assert not res.passed
    assert [r.id for r in cmp.flipped] == [f"r{i}" for i in range(12)]
    assert cmp.tests["served"].mcnemar_p < 0.001 and cmp.tests["served"].reference_only_correct == 12
    acc = next(c for c in res.checks if c.name == "accuracy drop")
    assert not acc.passed and acc.value == 0.8 and acc.baseline == 1.0 and "0.0100" in acc.limit


def test_failed_rows_count_against_the_candidate_and_error_rate_gates():
    y = np.array([0, 1, 2] * 10)
    cand = y.copy()
    cand[3] = -1
    cmp = compare_stages(_ids(30), y, LABELS, _stages(y, y.copy(), cand))
    assert cmp.stages["served"].answered == 29 and cmp.stages["served"].failed_by_class == [1, 0, 0]
    res = evaluate_gate(GateSpec(), _plan(), cmp, GateInputs(answered=_served(1 / 30, {"handler_error": 1})))
    names = {c.name for c in res.failures}
    assert {"served error rate", "confusion matrix identical"} <= names


def test_nan_never_passes():
    y = np.array([0, 1, 2] * 5)
    cmp = compare_stages(_ids(15), y, LABELS, _stages(y, y.copy(), y.copy()))
    res = evaluate_gate(GateSpec(max_model_time_ratio=2.0), _plan(), cmp,
                        GateInputs(answered=_served(float("nan")), eager_p50_ms=None))
    failed = {c.name for c in res.failures}
    assert "served error rate" in failed and "served model time p50 / eager p50" in failed


def test_improvement_beyond_noise_is_suspicious():
    y = np.array([0, 1] * 30)
    base = y.copy()
    base[:20] = 1 - base[:20]
    cmp = compare_stages(_ids(60), y, ("a", "b"), _stages(y, base, y.copy(), c=2))
    res = evaluate_gate(GateSpec(), _plan(labels=("a", "b")), cmp, GateInputs(answered=_served()))
    check = next(c for c in res.checks if c.name == "no improvement beyond noise")
    assert not check.passed and "wrong data" in check.detail


def test_positive_class_recall_trap():
    y = np.array([0] * 90 + [1] * 10)
    pred = np.zeros(100, dtype=int)
    pred[90] = 1
    cmp = compare_stages(_ids(100), y, ("legit", "fraud"), _stages(y, pred.copy(), pred.copy(), c=2))
    assert cmp.stages["served"].accuracy == 0.91
    gate = GateSpec(positive_class=1, min_positive_recall=0.9,
                    metrics={"accuracy": MetricThreshold(min=0.9, max_drop=0.01)})
    res = evaluate_gate(gate, _plan(labels=("legit", "fraud")), cmp, GateInputs(answered=_served()))
    recall = next(c for c in res.failures if c.name == "recall of positive class 'fraud'")
    assert recall.value == 0.1


def test_leakage_and_prior_run():
    y = np.array([0, 1, 2] * 5)
    cmp = compare_stages(_ids(15), y, LABELS, _stages(y, y.copy(), y.copy()))
    plan = _plan(has_training_data=True, has_prior=True)
    res = evaluate_gate(GateSpec(), plan, cmp, GateInputs(answered=_served(), leaked_ids=("r1",),
                                                          prior_metrics={m: 1.0 for m in GateSpec().metrics}))
    assert [c.name for c in res.failures] == ["eval rows not in training data"]
    res2 = evaluate_gate(GateSpec(), plan, cmp, GateInputs(answered=_served(), leaked_ids=(),
                                                           prior_metrics={**{m: 1.0 for m in GateSpec().metrics},
                                                                          "accuracy": 1.05}))
    assert [c.name for c in res2.failures] == ["accuracy drop vs previous run"]


def test_size_and_export_latency_are_reported_and_gated_only_when_set():
    y = np.array([0, 1, 2] * 5)
    cmp = compare_stages(_ids(15), y, LABELS, _stages(y, y.copy(), y.copy(), name="exported"))
    plan = GatePlan(candidates=("exported",), labels=LABELS, output_quantity={"exported": "probabilities"})
    inputs = GateInputs(export_size_ratio=11.0, export_latency_ratio=1.3)
    res = evaluate_gate(GateSpec(), plan, cmp, inputs)
    size = next(c for c in res.checks if c.name.startswith("exported size"))
    assert not size.passed and not size.is_gating and res.passed
    res = evaluate_gate(GateSpec(max_size_ratio=2.0, max_export_latency_ratio=1.5), plan, cmp, inputs)
    assert [c.name for c in res.failures] == ["exported size / eager weights size"]


def test_a_planned_stage_without_results_fails_every_check_saying_why():
    y = np.array([0, 1, 2] * 5)
    cmp = compare_stages(_ids(15), y, LABELS, _stages(y, y.copy(), y.copy(), name="exported"))
    plan = GatePlan(candidates=("exported", "served"), labels=LABELS,
                    output_quantity={"exported": "logits", "served": "logits"})
    res = evaluate_gate(GateSpec(), plan, cmp, GateInputs(not_run={"served": "the server never started"}))
    served = [c for c in res.checks if c.stage == "served"]
    assert served and not any(c.passed for c in served) and not res.passed
    assert all("the server never started" in c.detail for c in served)


def test_an_empty_plan_never_passes():
    assert not evaluate_gate(GateSpec(), GatePlan(candidates=()), None, GateInputs()).passed
