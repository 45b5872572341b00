import numpy as np

from pipeline.evaluate.compare import StageOutputs, compare_stages
from pipeline.spec import GateSpec, MetricThreshold
from pipeline.evaluate.gate import GateInputs, evaluate_gate


def _stages(y, base_pred, cand_pred, c=3):
    eye = np.eye(c)
    return [StageOutputs("baseline", base_pred, eye[base_pred], eye[base_pred], np.ones(len(y))),
            StageOutputs("served", cand_pred, np.where(cand_pred[:, None] >= 0, eye[np.maximum(cand_pred, 0)], np.nan),
                         None, np.ones(len(y)))]


def _ids(n):
    return tuple(f"r{i}" for i in range(n))


def test_identical_predictions_pass_every_check():
    y = np.array([0, 1, 2] * 20)
    cmp = compare_stages(_ids(60), y, ("a", "b", "c"), _stages(y, y.copy(), y.copy()))
    res = evaluate_gate(GateSpec(), cmp, GateInputs(replay_error_rate=0.0))
    assert res.passed and not res.failures


def test_flipped_rows_fail_with_values_and_mcnemar():
    y = np.array([0, 1, 2] * 20)
    cand = y.copy()
    cand[:12] = (cand[:12] + 1) % 3
    cmp = compare_stages(_ids(60), y, ("a", "b", "c"), _stages(y, y.copy(), cand))
    res = evaluate_gate(GateSpec(), cmp, GateInputs(replay_error_rate=0.0))
    assert not res.passed
    assert [r.id for r in cmp.flipped] == [f"r{i}" for i in range(12)]
    assert cmp.tests["served"].mcnemar_p < 0.001 and cmp.tests["served"].baseline_only_correct == 12
    acc = next(c for c in res.checks if c.name == "accuracy drop")
    assert not acc.passed and acc.value == 0.8 and acc.baseline == 1.0 and "0.0100" in acc.limit


def test_failed_rows_count_against_the_candidate_and_error_rate_gates():
    y = np.array([0, 1, 2] * 10)
    cand = y.copy()
    cand[3] = -1
    cmp = compare_stages(_ids(30), y, ("a", "b", "c"), _stages(y, y.copy(), cand))
    assert cmp.stages["served"].answered == 29 and cmp.stages["served"].failed_by_class == [1, 0, 0]
    res = evaluate_gate(GateSpec(), cmp, GateInputs(replay_error_rate=1 / 30, replay_errors={"handler_error": 1}))
    names = {c.name for c in res.failures}
    assert {"replay error rate", "confusion matrix identical"} <= names


def test_nan_never_passes():
    y = np.array([0, 1, 2] * 5)
    cmp = compare_stages(_ids(15), y, ("a", "b", "c"), _stages(y, y.copy(), y.copy()))
    res = evaluate_gate(GateSpec(max_model_time_ratio=2.0), cmp,
                        GateInputs(replay_error_rate=float("nan"), eager_p50_ms=None))
    failed = {c.name for c in res.failures}
    assert "replay error rate" in failed and "served model time p50 / eager p50" in failed


def test_improvement_beyond_noise_is_suspicious():
    y = np.array([0, 1] * 30)
    base = y.copy()
    base[:20] = 1 - base[:20]
    cmp = compare_stages(_ids(60), y, ("a", "b"), _stages(y, base, y.copy(), c=2))
    res = evaluate_gate(GateSpec(), cmp, GateInputs(replay_error_rate=0.0))
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
    res = evaluate_gate(gate, cmp, GateInputs(replay_error_rate=0.0))
    recall = next(c for c in res.failures if c.name == "recall of positive class 'fraud'")
    assert recall.value == 0.1


def test_leakage_and_prior_run():
    y = np.array([0, 1, 2] * 5)
    cmp = compare_stages(_ids(15), y, ("a", "b", "c"), _stages(y, y.copy(), y.copy()))
    res = evaluate_gate(GateSpec(), cmp, GateInputs(replay_error_rate=0.0, leaked_ids=("r1",),
                                                     prior_metrics={"accuracy": 1.0, "f1_macro": 1.0}))
    assert [c.name for c in res.failures] == ["eval rows not in training data"]
    res2 = evaluate_gate(GateSpec(), cmp, GateInputs(replay_error_rate=0.0, prior_metrics={"accuracy": 1.05}))
    assert any(c.name.startswith("accuracy drop vs") for c in res2.failures)


def test_size_and_export_latency_are_reported_and_gated_only_when_set():
    y = np.array([0, 1, 2] * 5)
    stages = _stages(y, y.copy(), y.copy())
    stages[1] = StageOutputs("exported", *[getattr(stages[1], f) for f in ("predictions", "probabilities", "logits",
                                                                             "latencies_ms")])
    cmp = compare_stages(_ids(15), y, ("a", "b", "c"), stages)
    inputs = GateInputs(export_max_abs_diff=0.0, export_size_ratio=11.0, export_latency_ratio=1.3)
    res = evaluate_gate(GateSpec(), cmp, inputs)
    size = next(c for c in res.checks if c.name.startswith("exported size"))
    assert not size.passed and not size.is_gating and res.passed
    res = evaluate_gate(GateSpec(max_size_ratio=2.0, max_export_latency_ratio=1.5), cmp, inputs)
    assert [c.name for c in res.failures] == ["exported size / eager weights size"]
