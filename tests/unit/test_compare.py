"""compare: metrics that are NaN (with a reason) when undefined, failed rows against the candidate, output
differences on what both stages carry, paired tests; attribution: the first differing step is blamed."""

import math

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import precision_recall_fscore_support

from pipeline.evaluate import compare
from pipeline.evaluate.attribution import attribute, step_differs
from pipeline.evaluate.compare import (OutputDiff, PairedTest, StageOutputs, _f1_macro, compare_stages, output_diff,
                                       paired_test, score_predictions)
from tests.unit._support import fast_bootstrap  # noqa: F401  (autouse)
from tests.unit._support import LABELS, ids, outputs, truth_and_baseline

AVERAGES = ("macro", "weighted")


# --- score_predictions ----------------------------------------------------------------------------------------------

def test_metrics_match_sklearn_when_every_figure_is_defined():
    y, base = truth_and_baseline()
    m = score_predictions("baseline", y, base, LABELS, np.arange(100.0))
    assert m.rows == 100 and m.answered == 100 and m.accuracy == 0.9 and m.undefined == {}
    for avg in AVERAGES:
        p, r, f, _ = precision_recall_fscore_support(y, base, average=avg, zero_division=np.nan)
        assert m.get(f"precision_{avg}") == pytest.approx(p, abs=1e-12)
        assert m.get(f"recall_{avg}") == pytest.approx(r, abs=1e-12)
        assert m.get(f"f1_{avg}") == pytest.approx(f, abs=1e-12)
    p, r, f, s = precision_recall_fscore_support(y, base, zero_division=np.nan)
    for k, label in enumerate(LABELS):
        assert m.per_class[label] == pytest.approx({"precision": p[k], "recall": r[k], "f1": f[k], "support": s[k]})
    assert m.confusion == [[36, 4, 0], [0, 32, 3], [3, 0, 22]]
    assert all(type(v) is int for row in m.confusion for v in row), "counts, as JSON integers"
    assert m.failed_by_class == [0, 0, 0]
    assert m.latency.count == 100 and m.latency.max == 99.0
    assert score_predictions("x", y, base, LABELS).latency is None


def test_with_metric_classes_all_a_class_absent_from_the_eval_rows_makes_recall_undefined_not_zero():
    y = np.array([0, 0, 1, 1, 0, 1])
    pred = np.array([0, 2, 1, 1, 0, 0])  # class c is predicted once, but never present
    m = score_predictions("served", y, pred, LABELS, metric_classes="all")
    why = ("1 class(es) ['c'] are absent from the eval rows: their recall is 0/0 (gate.metric_classes: all "
           "averages over every class; 'present' over those with rows)")
    for avg in AVERAGES:
        assert math.isnan(m.get(f"recall_{avg}")) and math.isnan(m.get(f"f1_{avg}"))
        assert m.undefined[f"recall_{avg}"] == why
        assert m.undefined[f"f1_{avg}"] == m.undefined[f"recall_{avg}"]
        assert not math.isnan(m.get(f"precision_{avg}")) and f"precision_{avg}" not in m.undefined
    assert math.isnan(m.per_class["c"]["recall"]) and m.per_class["c"]["precision"] == 0.0
    assert m.per_class["c"]["support"] == 0 and math.isnan(m.per_class["c"]["f1"])
    assert m.accuracy == pytest.approx(4 / 6)
    assert (m.metric_classes, m.classes_averaged, m.classes_total) == ("all", 3, 3)


def test_by_default_macro_and_weighted_average_over_the_classes_present_as_sklearn_labels_does():
    # class c has no row but is predicted once: an error of class a (its recall drops), no precision term of c
    y = np.array([0, 0, 1, 1, 0, 1])
    pred = np.array([0, 2, 1, 1, 0, 0])
    m = score_predictions("served", y, pred, LABELS)
    assert m.undefined == {} and (m.metric_classes, m.classes_averaged, m.classes_total) == ("present", 2, 3)
    for avg in AVERAGES:
        p, r, f, _ = precision_recall_fscore_support(y, pred, labels=[0, 1], average=avg, zero_division=np.nan)
        assert m.get(f"precision_{avg}") == pytest.approx(p, abs=1e-12)
        assert m.get(f"recall_{avg}") == pytest.approx(r, abs=1e-12)
        assert m.get(f"f1_{avg}") == pytest.approx(f, abs=1e-12)
    assert m.recall_macro == pytest.approx(2 / 3)  # a: 2 of 3 (one row predicted c), b: 2 of 3
    assert m.per_class["c"]["support"] == 0 and math.isnan(m.per_class["c"]["recall"])  # still listed, per class


def test_present_classes_of_a_thousand_class_model_on_five_classes_and_the_reason_names_ten_at_most():
    labels = tuple(f"n{k}" for k in range(1000))
    y = np.repeat([3, 17, 134, 517, 999], 4)
    m = score_predictions("served", y, y.copy(), labels)
    assert m.undefined == {} and m.f1_macro == 1.0 and m.f1_weighted == 1.0 and m.classes_averaged == 5
    wrong = y.copy()
    wrong[0] = 5  # a prediction of a class without rows: an error, and no precision term for class 5
    m = score_predictions("served", y, wrong, labels)
    assert m.recall_macro == pytest.approx((3 / 4 + 4) / 5) and m.precision_macro == 1.0
    every = score_predictions("served", y, y.copy(), labels, metric_classes="all")
    why = every.undefined["recall_macro"]
    assert math.isnan(every.f1_macro) and why.startswith("995 class(es) ['n0', 'n1', 'n2', 'n4', 'n5', ")
    assert "... 985 more]" in why and "'n20'" not in why


def test_metric_classes_must_be_present_or_all():
    with pytest.raises(ValueError, match="metric_classes"):
        score_predictions("served", np.array([0]), np.array([0]), LABELS, metric_classes="some")


def test_a_class_never_predicted_makes_precision_undefined_not_zero():
    y, base = truth_and_baseline()
    pred = base.copy()
    pred[pred == 2] = 1
    m = score_predictions("served", y, pred, LABELS)
    for avg in AVERAGES:
        assert math.isnan(m.get(f"precision_{avg}")) and math.isnan(m.get(f"f1_{avg}"))
        assert m.undefined[f"precision_{avg}"] == "served never predicts class(es) ['c']: their precision is 0/0"
        assert m.undefined[f"f1_{avg}"] == m.undefined[f"precision_{avg}"]
        assert not math.isnan(m.get(f"recall_{avg}"))
    assert m.per_class["c"]["recall"] == 0.0 and math.isnan(m.per_class["c"]["precision"])


def test_both_reasons_are_joined_for_f1():
    y = np.array([0, 0, 1])
    pred = np.array([0, 0, 0])
    m = score_predictions("served", y, pred, LABELS, metric_classes="all")
    assert m.undefined["f1_macro"] == ("1 class(es) ['c'] are absent from the eval rows: their recall is 0/0 "
                                       "(gate.metric_classes: all averages over every class; 'present' over those "
                                       "with rows); served never predicts class(es) ['b', 'c']: their precision is 0/0")
    # over the classes present, c is not averaged: only b's precision is 0/0
    present = score_predictions("served", y, pred, LABELS)
    assert present.undefined["f1_macro"] == "served never predicts class(es) ['b']: their precision is 0/0"


def test_a_class_predicted_but_never_right_has_f1_zero_not_nan():
    y = np.array([0, 1, 2, 2])
    pred = np.array([1, 0, 2, 2])
    m = score_predictions("served", y, pred, LABELS)
    assert m.per_class["a"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m.f1_macro == pytest.approx(1 / 3) and m.undefined == {}


def test_failed_rows_count_against_the_candidate():
    y, base = truth_and_baseline()
    cand = base.copy()
    cand[[50, 51, 90]] = -1  # two class-1 rows and one class-2 row unanswered, all right in the baseline
    m = score_predictions("served", y, cand, LABELS)
    b = score_predictions("baseline", y, base, LABELS)
    assert m.answered == 97 and m.rows == 100
    assert m.accuracy == pytest.approx(0.87)
    assert m.failed_by_class == [0, 2, 1]
    assert m.per_class["b"]["recall"] == pytest.approx(30 / 35)
    assert m.per_class["b"]["precision"] == pytest.approx(30 / 34), "an unanswered row predicts nothing"
    assert sum(map(sum, m.confusion)) == 97
    assert m.confusion[1][1] == b.confusion[1][1] - 2 and m.confusion[2][2] == b.confusion[2][2] - 1
    for metric in ("accuracy", "recall_macro", "recall_weighted", "f1_macro", "f1_weighted"):
        assert m.get(metric) < b.get(metric), metric


def test_a_stage_with_no_answer_at_all_is_undefined_and_zero_accurate():
    y = np.array([0, 1, 2])
    m = score_predictions("served", y, np.full(3, -1), LABELS)
    assert m.accuracy == 0.0 and m.answered == 0 and math.isnan(m.precision_macro)
    assert m.failed_by_class == [1, 1, 1] and m.confusion == [[0] * 3] * 3


def test_no_rows_at_all_is_nan_everywhere():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = score_predictions("served", np.array([], dtype=int), np.array([], dtype=int), LABELS)
    assert math.isnan(m.accuracy) and math.isnan(m.recall_weighted) and math.isnan(m.precision_weighted)
    assert m.rows == 0


def test_f1_for_intervals_counts_zero_for_zero_over_zero():
    y = np.array([0, 0, 1, 2])
    assert _f1_macro(y, np.array([0, 0, 1, 2]), 3) == 1.0
    assert _f1_macro(y, np.array([0, 0, 1, -1]), 3) == pytest.approx((1 + 1 + 0) / 3)
    # class a: p 1, r 1/2 -> 2/3; class b: p 1/3, r 1 -> 1/2; class c never predicted: 0
    assert _f1_macro(y, np.array([0, 1, 1, 1]), 3) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    # precision and recall of 1/2 each (their sum is 1): F1 1/2, for the intervals and the report alike
    half_y, half_p = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    assert _f1_macro(half_y, half_p, 2) == 0.5
    assert score_predictions("s", half_y, half_p, ("a", "b")).per_class["a"]["f1"] == 0.5


def test_paired_f1_delta_averages_over_the_same_classes_as_the_metrics():
    # 3 classes, rows of 2: the delta of the figures the report shows, not one diluted by the absent class
    y = np.array([0, 0, 0, 1, 1, 1] * 5)
    base = y.copy()
    cand = y.copy()
    cand[[0, 3]] = [1, 2]
    t = paired_test(y, outputs("baseline", base), outputs("served", cand), 3)
    a, b = score_predictions("served", y, cand, LABELS), score_predictions("baseline", y, base, LABELS)
    assert t.delta_f1_macro == pytest.approx(a.f1_macro - b.f1_macro, abs=1e-12)
    every = paired_test(y, outputs("baseline", base), outputs("served", cand), 3, metric_classes="all")
    assert every.delta_f1_macro == pytest.approx(t.delta_f1_macro * 2 / 3 + 0.0, abs=1e-12)  # c scores 0, 0


def test_f1_for_intervals_raises_no_floating_point_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _f1_macro(np.array([0, 0]), np.array([1, -1]), 3) == 0.0


# --- output_diff --------------------------------------------------------------------------------------------------

def test_output_diff_compares_logits_when_both_carry_them():
    pred = np.array([0, 1, 2])
    ref_l = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    cand_l = ref_l + np.array([[0, 0.25, 0], [0, 0, 0], [-0.5, 0, 0]])
    ref = StageOutputs("baseline", pred, np.eye(3)[pred], ref_l, None)
    cand = StageOutputs("exported", pred, np.eye(3)[pred] + 0.125, cand_l.astype(np.float32), None)
    d, per_row, a, b = output_diff(ref, cand)
    assert d == OutputDiff("logits", 0.5, 3)
    assert per_row.tolist() == [0.25, 0.0, 0.5]
    assert a.dtype == np.float64 and b.dtype == np.float64


def test_output_diff_falls_back_to_probabilities_on_carried_classes_only():
    pred = np.array([0, 1, 2, 1])
    ref = StageOutputs("baseline", pred, np.full((4, 3), 0.3), np.zeros((4, 3)), None)
    cand_p = np.full((4, 3), np.nan)  # top-1 carried only; the other classes would differ by 0.3
    cand_p[np.arange(4), pred] = [0.3, 0.35, 0.3, np.nan]
    cand = StageOutputs("served", pred, cand_p, None, None)
    d, per_row, _, _ = output_diff(ref, cand)
    assert d.quantity == "probabilities" and d.max_abs == pytest.approx(0.05) and d.rows_compared == 3
    assert per_row[:3] == pytest.approx([0.0, 0.05, 0.0]) and math.isnan(per_row[3])


def test_output_diff_skips_rows_either_stage_failed():
    ref = StageOutputs("baseline", np.array([0, -1, 1]), None, np.array([[0.0, 0], [5, 5], [0, 0]]), None)
    cand = StageOutputs("served", np.array([-1, 0, 1]), None, np.array([[9.0, 9], [0, 0], [0, 0.5]]), None)
    d, per_row, _, _ = output_diff(ref, cand)
    assert d == OutputDiff("logits", 0.5, 1)
    assert math.isnan(per_row[0]) and math.isnan(per_row[1]) and per_row[2] == 0.5


def test_output_diff_without_a_common_row_or_without_outputs_says_why():
    ref = StageOutputs("baseline", np.array([0, 1]), np.eye(2), None, None)
    dead = StageOutputs("served", np.array([-1, -1]), np.full((2, 2), np.nan), None, None)
    d, per_row, a, b = output_diff(ref, dead)
    assert d == OutputDiff("probabilities", None, 0, "no row answered by both baseline and served")
    assert np.isnan(per_row).all() and a is not None
    bare = StageOutputs("served", np.array([0, 1]), None, None, None)
    d, per_row, a, b = output_diff(ref, bare)
    assert d == OutputDiff(None, None, 0, "the served answers carry no logits or probabilities")
    assert np.isnan(per_row).all() and a is None and b is None
    only_logits = StageOutputs("served", np.array([0, 1]), None, np.eye(2), None)
    assert output_diff(ref, only_logits)[0].quantity is None, "logits on one side only cannot be compared"


# --- paired_test ------------------------------------------------------------------------------------------------------

def test_paired_test_counts_and_mcnemar(monkeypatch):
    monkeypatch.setattr(compare, "BOOTSTRAP_RESAMPLES", 200)
    y, base = truth_and_baseline()
    cand = base.copy()
    cand[[0, 1, 2]] = 0  # three rows the baseline got wrong, now right
    cand[[10]] = 1  # one the baseline got right, now wrong
    cand[[41]] = 0  # wrong before, wrong now (another class)
    t = paired_test(y, outputs("baseline", base), outputs("served", cand), 3)
    assert (t.candidate, t.reference) == ("served", "baseline")
    assert t.reference_only_correct == 1 and t.candidate_only_correct == 3
    assert t.disagreeing == 5 and t.agreement == 0.95
    assert t.mcnemar_p == pytest.approx(binomtest(1, 4, 0.5).pvalue) and t.mcnemar_p == 0.625
    assert t.delta_accuracy == pytest.approx(0.02)
    assert t.delta_accuracy_ci[0] <= t.delta_accuracy <= t.delta_accuracy_ci[1]
    assert t.delta_accuracy_ci[0] < t.delta_accuracy_ci[1]
    assert t.delta_f1_macro == pytest.approx(_f1_macro(y, cand, 3) - _f1_macro(y, base, 3))
    assert t.delta_f1_macro_ci[0] <= t.delta_f1_macro <= t.delta_f1_macro_ci[1]
    assert t.output.quantity == "probabilities"


def test_paired_test_without_discordant_rows_has_p_one():
    y, base = truth_and_baseline()
    t = paired_test(y, outputs("baseline", base), outputs("served", base.copy()), 3)
    assert t.mcnemar_p == 1.0 and t.disagreeing == 0 and t.agreement == 1.0 and t.delta_accuracy == 0.0
    assert t.delta_accuracy_ci == (0.0, 0.0) and t.delta_f1_macro == 0.0


def test_paired_test_mcnemar_takes_the_smaller_count():
    y = np.zeros(12, dtype=int)
    base = np.zeros(12, dtype=int)
    cand = np.zeros(12, dtype=int)
    cand[:9] = 1
    base[9:] = 1
    t = paired_test(y, outputs("baseline", base, 2), outputs("served", cand, 2), 2)
    assert (t.reference_only_correct, t.candidate_only_correct) == (9, 3)
    assert t.mcnemar_p == pytest.approx(binomtest(3, 12, 0.5).pvalue)


def test_paired_test_bootstrap_is_seeded_and_resamples(monkeypatch):
    monkeypatch.setattr(compare, "BOOTSTRAP_RESAMPLES", 25)
    y, base = truth_and_baseline()
    cand = base.copy()
    cand[10:20] = (cand[10:20] + 1) % 3
    one = paired_test(y, outputs("baseline", base), outputs("served", cand), 3)
    two = paired_test(y, outputs("baseline", base), outputs("served", cand), 3)
    other = paired_test(y, outputs("baseline", base), outputs("served", cand), 3, seed=1)
    assert one.delta_accuracy_ci == two.delta_accuracy_ci and one.delta_f1_macro_ci == two.delta_f1_macro_ci
    assert one.delta_accuracy_ci != other.delta_accuracy_ci
    assert one.delta_accuracy_ci[0] < -0.1 < one.delta_accuracy_ci[1] < 0
    monkeypatch.setattr(compare, "BOOTSTRAP_RESAMPLES", 400)
    wide = paired_test(y, outputs("baseline", base), outputs("served", cand), 3)
    lo, hi = wide.delta_accuracy_ci
    assert -0.18 < lo < -0.12 and -0.08 < hi < -0.03, "a 95% interval of the paired accuracy delta (-0.10)"


def test_paired_test_on_no_rows_is_nan():
    import warnings

    empty = np.array([], dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = paired_test(empty, outputs("baseline", empty), outputs("served", empty), 3)
    assert math.isnan(t.agreement) and math.isnan(t.delta_accuracy) and t.mcnemar_p == 1.0
    assert len(t.delta_accuracy_ci) == len(t.delta_f1_macro_ci) == 2
    assert all(math.isnan(v) for v in t.delta_accuracy_ci + t.delta_f1_macro_ci)


def test_the_interval_is_the_2_5th_to_97_5th_percentile_of_seeded_paired_resamples(monkeypatch):
    monkeypatch.setattr(compare, "BOOTSTRAP_RESAMPLES", 40)
    y = np.zeros(40, dtype=int)
    base = np.zeros(40, dtype=int)
    cand = base.copy()
    cand[:6] = 1  # six rows lost by the candidate ...
    base[6:9] = 1  # ... three gained
    t = paired_test(y, outputs("baseline", base, 2), outputs("served", cand, 2), 2, seed=1)
    rng = np.random.default_rng(1)
    deltas = []
    for _ in range(40):
        idx = rng.integers(0, 40, 40)
        deltas.append((cand[idx] == y[idx]).mean() - (base[idx] == y[idx]).mean())
    assert t.delta_accuracy_ci == (float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5)))
    assert np.percentile(deltas, 3.5) != t.delta_accuracy_ci[0] and np.percentile(deltas, 98.5) != t.delta_accuracy_ci[1]


def test_a_resample_can_draw_the_first_row(monkeypatch):
    monkeypatch.setattr(compare, "BOOTSTRAP_RESAMPLES", 40)
    y = np.zeros(10, dtype=int)
    cand = y.copy()
    cand[0] = 1  # only the first row differs: a resample that never draws it sees no difference
    t = paired_test(y, outputs("baseline", y.copy(), 2), outputs("served", cand, 2), 2, seed=3)
    assert t.delta_accuracy_ci[0] < 0


# --- compare_stages -----------------------------------------------------------------------------------------------

def _four_stages():
    y, base = truth_and_baseline()
    exported = base.copy()
    handled = base.copy()
    handled[10] = 2
    served = handled.copy()
    served[50] = -1
    return y, [outputs("baseline", base), outputs("exported", exported), outputs("handled", handled),
               outputs("served", served)]


def test_compare_stages_tests_against_the_baseline_and_steps_against_the_previous_stage():
    y, stages = _four_stages()
    cmp = compare_stages(ids(100), y, LABELS, stages)
    assert list(cmp.stages) == ["baseline", "exported", "handled", "served"]
    assert list(cmp.tests) == ["exported", "handled", "served"] == list(cmp.steps)
    assert cmp.tests["served"].disagreeing == 2 and cmp.steps["served"].disagreeing == 1
    assert cmp.steps["served"].reference == "handled" and cmp.tests["served"].reference == "baseline"
    assert cmp.steps["handled"].reference == "exported" and cmp.steps["exported"].reference == "baseline"
    assert cmp.labels == LABELS


def test_compare_stages_lists_flipped_rows_with_each_stages_answer():
    y, stages = _four_stages()
    cmp = compare_stages(ids(100), y, LABELS, stages)
    assert cmp.flipped_total == 2
    assert [r.id for r in cmp.flipped] == ["r10", "r50"]
    r10, r50 = cmp.flipped
    assert r10.label == 0
    assert r10.predictions == {"baseline": (0, 1.0), "exported": (0, 1.0), "handled": (2, 1.0), "served": (2, 1.0)}
    assert r50.predictions["served"] == (None, None) and r50.predictions["handled"] == (1, 1.0)


def test_flipped_rows_without_a_carried_probability_show_none():
    y, base = truth_and_baseline()
    cand = base.copy()
    cand[5] = 2
    probs = np.full((100, 3), np.nan)
    cmp = compare_stages(ids(100), y, LABELS, [outputs("baseline", base, probabilities=None),
                                               outputs("served", cand, probabilities=probs)])
    assert cmp.flipped[0].predictions == {"baseline": (0, None), "served": (2, None)}


def test_flipped_rows_listed_are_capped_but_all_counted():
    y = np.zeros(80, dtype=int)
    base = np.zeros(80, dtype=int)
    cand = np.ones(80, dtype=int)
    cmp = compare_stages(ids(80), y, ("a", "b"), [outputs("baseline", base, 2), outputs("served", cand, 2)])
    assert cmp.flipped_total == 80 and len(cmp.flipped) == compare.MAX_FLIPPED_LISTED == 50
    assert cmp.flipped[-1].id == "r49"


def test_served_latency_is_split_into_server_time_and_overhead():
    y, base = truth_and_baseline()
    client = np.linspace(2.0, 21.8, 100)
    server = np.full(100, 1.5)
    server[:10] = np.nan  # rows without a PredictionTime line
    cmp = compare_stages(ids(100), y, LABELS, [outputs("baseline", base), outputs("served", base, latencies=client)],
                         server_ms=server)
    assert cmp.served_server_latency.count == 90 and cmp.served_server_latency.p50 == 1.5
    assert cmp.served_overhead_latency.count == 90
    assert cmp.served_overhead_latency.max == pytest.approx(21.8 - 1.5)
    assert cmp.served_overhead_latency.p50 == pytest.approx(np.median(client[10:]) - 1.5)


def test_no_latency_split_without_a_served_stage_or_server_times():
    y, base = truth_and_baseline()
    plain = compare_stages(ids(100), y, LABELS, [outputs("baseline", base), outputs("served", base)])
    assert plain.served_server_latency is None and plain.served_overhead_latency is None
    handled = compare_stages(ids(100), y, LABELS, [outputs("baseline", base), outputs("handled", base)],
                             server_ms=np.ones(100))
    assert handled.served_server_latency is None
    unknown = compare_stages(ids(100), y, LABELS, [outputs("baseline", base), outputs("served", base)],
                             server_ms=np.full(100, np.nan))
    assert unknown.served_server_latency is None and unknown.served_overhead_latency is None


def test_diverging_rows_are_those_beyond_the_tolerance_largest_first():
    y, base = truth_and_baseline()
    ref_l = np.zeros((100, 3))
    cand_l = ref_l.copy()
    cand_l[np.arange(12), 1] = np.arange(1, 13) * 1e-3  # rows 0..11 move by 1e-3 .. 1.2e-2
    cmp = compare_stages(ids(100), y, LABELS, [outputs("baseline", base, logits=ref_l),
                                               outputs("exported", base, logits=cand_l)], tolerance=2e-3)
    assert [r.id for r in cmp.diverging] == [f"r{i}" for i in range(11, 1, -1)][:compare.MAX_DIVERGING_LISTED]
    top = cmp.diverging[0]
    assert (top.stage, top.reference, top.quantity) == ("exported", "baseline", "logits")
    assert top.max_abs_diff == pytest.approx(1.2e-2)
    assert top.reference_values == (0.0, 0.0, 0.0) and top.candidate_values == pytest.approx((0.0, 1.2e-2, 0.0))
    at_limit = compare_stages(ids(100), y, LABELS, [outputs("baseline", base, logits=ref_l),
                                                    outputs("exported", base, logits=cand_l)], tolerance=1.2e-2)
    assert at_limit.diverging == ()
    bare = compare_stages(ids(100), y, LABELS, [outputs("baseline", base, probabilities=None),
                                                outputs("served", base, probabilities=None)])
    assert bare.diverging == ()


# --- attribution ----------------------------------------------------------------------------------------------------

def _pipeline(change: dict[str, tuple[int, int]] | None = None, moved: dict[str, float] | None = None):
    """Five stages equal to the baseline, but where ``change`` flips (row, class) from a stage on,
    and ``moved`` shifts one logit from a stage on."""
    y, base = truth_and_baseline()
    names = ["baseline", "exported", "handled", "handled@batch4", "served"]
    pred, logits = base.copy(), np.eye(3)[base].astype(np.float64)
    stages = []
    for name in names:
        if change and name in change:
            row, cls = change[name]
            pred = pred.copy()
            pred[row] = cls
            logits = logits.copy()
            logits[row] = np.eye(3)[cls]
        if moved and name in moved:
            logits = logits.copy()
            logits[3, 0] += moved[name]
        stages.append(outputs(name, pred, logits=logits.copy()))
    return compare_stages(ids(100), y, LABELS, stages)


@pytest.mark.parametrize("stage, layer", [
    ("exported", "export problem"),
    ("handled", "handler problem"),
    ("handled@batch4", "handler problem that depends on the batch"),
    ("served", "serving problem"),
])
def test_each_layer_is_blamed_for_its_own_difference(stage, layer):
    res = attribute(_pipeline(change={stage: (10, 2)}), 1e-5)
    assert res.layer == layer
    blamed = [s for s in res.steps if s.differs]
    assert [s.stage for s in blamed] == [stage]
    assert blamed[0].disagreeing == 1 and blamed[0].quantity == "logits" and blamed[0].max_output_diff == 1.0
    assert res.summary.startswith(f"{layer}: ")
    assert "row(s) with another prediction, max logits difference 1" in res.summary
    assert "also differs" not in res.summary


def test_the_first_differing_step_wins_and_later_ones_are_listed():
    res = attribute(_pipeline(change={"handled": (10, 2), "served": (20, 1)}), 1e-5)
    assert res.layer == "handler problem"
    assert res.summary == (
        "handler problem: the handler's pre/post-processing changes the answers of the same artefact (handled vs "
        "exported: 1 row(s) with another prediction, max logits difference 1); also differs: served vs "
        "handled@batch4")
    assert [s.differs for s in res.steps] == [False, True, False, True]
    assert [s.reference for s in res.steps] == ["baseline", "exported", "handled", "handled@batch4"]


def test_an_output_that_moves_beyond_the_tolerance_is_a_difference_without_a_flip():
    cmp = _pipeline(moved={"exported": 1e-3})
    res = attribute(cmp, 1e-4)
    assert res.layer == "export problem" and res.steps[0].disagreeing == 0
    assert "(exported vs baseline: 0 row(s) with another prediction, max logits difference 0.001)" in res.summary
    assert attribute(cmp, 1e-3).layer is None, "a move exactly at the tolerance is within it"


def test_nothing_differs_means_no_layer_is_blamed():
    res = attribute(_pipeline(), 1e-5)
    assert res.layer is None and res.summary == "served matches the baseline at every step"
    assert len(res.steps) == 4 and not any(s.differs for s in res.steps)
    empty = attribute(compare_stages(ids(3), np.arange(3), LABELS, [outputs("baseline", np.arange(3))]), 1e-5)
    assert empty.layer is None and empty.steps == ()
    # not "baseline matches the baseline"
    assert empty.summary == "nothing to attribute: no stage after the baseline has results"


def test_a_stage_of_no_known_layer_and_a_step_without_outputs():
    y, base = truth_and_baseline()
    cand = base.copy()
    cand[0] = 0
    cmp = compare_stages(ids(100), y, LABELS, [outputs("baseline", base, probabilities=None),
                                               outputs("other", cand, probabilities=None)])
    res = attribute(cmp, 1e-5)
    assert res.layer == "unknown layer"
    assert res.summary == "unknown layer:  (other vs baseline: 1 row(s) with another prediction)"


def test_step_differs_on_flips_or_outputs_beyond_the_tolerance():
    def t(disagreeing, max_abs):
        return PairedTest("s", "r", 1.0, disagreeing, 0, 0, 1.0, 0.0, (0.0, 0.0), 0.0, (0.0, 0.0),
                          OutputDiff("logits" if max_abs is not None else None, max_abs, 1))

    assert not step_differs(t(0, None), 1e-5) and not step_differs(t(0, 1e-5), 1e-5)
    assert step_differs(t(0, 1.1e-5), 1e-5) and step_differs(t(1, None), 1e-5) and step_differs(t(1, 0.0), 1e-5)


def test_stage_outputs_from_in_process_scores():
    from types import SimpleNamespace

    scores = SimpleNamespace(predictions=np.array([1]), probabilities=np.array([[0.2, 0.8]]),
                             logits=np.array([[0.0, 1.0]]), latencies_ms=np.array([2.0]))
    s = StageOutputs.from_scores("exported", scores)
    assert s.name == "exported" and s.predictions is scores.predictions and s.probabilities is scores.probabilities
    assert s.logits is scores.logits and s.latencies_ms is scores.latencies_ms


def test_every_later_differing_step_is_listed():
    res = attribute(_pipeline(change={"exported": (10, 2), "handled@batch4": (20, 1), "served": (30, 1)}), 1e-5)
    assert res.layer == "export problem"
    assert res.summary.endswith("; also differs: handled@batch4 vs handled, served vs handled@batch4")


def test_a_row_flipped_early_and_restored_later_is_still_listed():
    y, base = truth_and_baseline()
    exported = base.copy()
    exported[10] = 2
    cmp = compare_stages(ids(100), y, LABELS, [outputs("baseline", base), outputs("exported", exported),
                                               outputs("served", base.copy())])
    assert cmp.flipped_total == 1 and [r.id for r in cmp.flipped] == ["r10"]
    assert cmp.flipped[0].predictions["served"] == (0, 1.0)


def test_metrics_carry_their_stage_name():
    y, stages = _four_stages()
    cmp = compare_stages(ids(100), y, LABELS, stages)
    assert [m.stage for m in cmp.stages.values()] == ["baseline", "exported", "handled", "served"]


def test_the_default_tolerance_is_the_seeds_1e_5():
    y, base = truth_and_baseline()
    ref_l = np.zeros((100, 3))
    cand_l = ref_l.copy()
    cand_l[4, 0] = 2e-5
    cmp = compare_stages(ids(100), y, LABELS, [outputs("baseline", base, logits=ref_l),
                                               outputs("exported", base, logits=cand_l)])
    assert [r.id for r in cmp.diverging] == ["r4"]


def test_undefined_metrics_raise_no_floating_point_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = score_predictions("served", np.array([0, 0, 1]), np.array([1, 1, -1]), LABELS)
    assert math.isnan(m.precision_macro) and math.isnan(m.per_class["a"]["f1"])  # a never predicted: 0/0
    assert m.per_class["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # f1 of 0 and 0


def test_steps_carry_counts_but_no_bootstrap_interval_and_tests_do(monkeypatch):
    # Steps are read for blame, never gated: resampling them would only cost time (a stage more each).
    monkeypatch.setattr(compare, "BOOTSTRAP_RESAMPLES", 20)
    y, base = truth_and_baseline()
    cand = base.copy()
    cand[10:20] = (cand[10:20] + 1) % 3
    cmp = compare_stages(ids(len(y)), y, LABELS, [outputs("baseline", base), outputs("exported", base),
                                                   outputs("served", cand)])
    assert set(cmp.steps) == set(cmp.tests) == {"exported", "served"}
    step, test = cmp.steps["served"], cmp.tests["served"]
    assert step.reference == "exported" and step.disagreeing == test.disagreeing == 10
    assert all(math.isnan(v) for v in (*step.delta_accuracy_ci, *step.delta_f1_macro_ci))
    assert all(math.isfinite(v) for v in (*test.delta_accuracy_ci, *test.delta_f1_macro_ci))


def _mar_cmp(*names_and_first):
    y = np.array([0, 1, 2, 0])
    eye = np.eye(3)
    stages = [StageOutputs("baseline", y, eye[y], eye[y], None)]
    for name, first in names_and_first:
        p = y.copy()
        p[0] = first
        stages.append(StageOutputs(name, p, eye[p], eye[p], None))
    return compare_stages(("a", "b", "c", "d"), y, ("0", "1", "2"), stages)


def test_a_prebuilt_archive_that_differs_is_blamed_on_the_archive_not_the_handler():
    handled_only = _mar_cmp(("handled", 1))  # --mar, a model only its handler loads: no exported stage
    assert attribute(handled_only, 1e-5, from_mar=True).layer == "archive problem"
    assert "--mar" in attribute(handled_only, 1e-5, from_mar=True).summary
    assert attribute(handled_only, 1e-5).layer == "handler problem"
    model_differs = _mar_cmp(("exported", 1), ("handled", 1))  # the archive's own model, loaded alone
    att = attribute(model_differs, 1e-5, from_mar=True)
    assert att.layer == "archive problem" and "weights" in att.summary
    assert attribute(model_differs, 1e-5).layer == "export problem"
    handler_differs = _mar_cmp(("exported", 0), ("handled", 2))
    assert attribute(handler_differs, 1e-5, from_mar=True).layer == "handler problem", \
        "against the archive's own model, the handler is to blame"
