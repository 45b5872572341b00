"""The latency figures the gate and the reports read, tested where they are computed.

``evaluate.stats.summarize_latency`` turns a sample into percentiles; ``stages.outcomes.stage_outputs``
decides which rows' latencies enter a stage's sample (answered rows only: a refused or crashed
request's time is not the model's latency); ``compare.compare_stages`` summarizes each stage and splits
the served time into server and overhead.
"""

import numpy as np
import pytest

from pipeline.evaluate.compare import StageOutputs, compare_stages
from pipeline.evaluate.stats import summarize_latency
from pipeline.names import Stage
from pipeline.stages.outcomes import failed, interpret, stage_outputs
from tests.unit._support import codec, fast_bootstrap, pv_answer  # noqa: F401  (fast_bootstrap: autouse)


def test_percentiles_are_each_the_named_one_of_a_known_sample():
    # 1..100 ms, shuffled: numpy's linear percentiles are p50 50.5, p90 90.1, p95 95.05, p99 99.01.
    values = list(np.random.default_rng(3).permutation(np.arange(1.0, 101.0)))
    s = summarize_latency(values)
    assert (s.count, s.mean, s.max) == (100, 50.5, 100.0)
    assert s.p50 == pytest.approx(50.5) and s.p90 == pytest.approx(90.1)
    assert s.p95 == pytest.approx(95.05), "p95 is the 95th percentile"
    assert s.p99 == pytest.approx(99.01), "p99 is the 99th percentile"
    assert s.p50 < s.p90 < s.p95 < s.p99 < s.max
    assert s.to_dict()["p95"] == s.p95 and s.to_dict()["p99"] == s.p99


def test_missing_and_non_finite_latencies_are_left_out_and_an_empty_sample_is_none():
    s = summarize_latency([None, 4.0, float("nan"), 2.0, float("inf"), 6.0])
    assert (s.count, s.mean, s.p50, s.max) == (3, 4.0, 4.0, 6.0)
    assert summarize_latency([]) is None
    assert summarize_latency([None, float("nan")]) is None


def _outcomes():
    """Rows 0-3 answered in 10, 20, 30, 40 ms; row 4 crashed after 5000 ms; row 5 refused after 1 ms."""
    c = codec(2)
    ok = [interpret(i, f"r{i}", 200, pv_answer(i % 2, [0.5, 0.5]), c, latency=10.0 * (i + 1)) for i in range(4)]
    return (*ok,
            interpret(4, "r4", 503, b'{"message": "Prediction failed"}', c, latency=5000.0),
            failed(5, "r5", "bad_input", "no", status=400, latency=1.0))


def test_only_answered_rows_enter_a_stage_latency_sample():
    out = stage_outputs(Stage.SERVED, _outcomes(), 2)
    assert out.latencies_ms[:4].tolist() == [10.0, 20.0, 30.0, 40.0]
    assert np.isnan(out.latencies_ms[4:]).all(), "a failed row's time is not a latency of the model"
    assert out.predictions.tolist() == [0, 1, 0, 1, -1, -1]


def test_stage_latency_figures_are_those_of_the_answered_rows():
    served = stage_outputs(Stage.SERVED, _outcomes(), 2)
    y = np.array([0, 1, 1, 1, 0, 1])  # the baseline is not 100% accurate: row 2 is wrong
    base = StageOutputs(Stage.BASELINE, np.array([0, 1, 0, 1, 0, 1]), None, None, np.full(6, 2.0))
    server_ms = np.array([4.0, 8.0, 12.0, 16.0, 4000.0, 0.5])
    cmp = compare_stages(tuple(f"r{i}" for i in range(6)), y, ("a", "b"), [base, served], server_ms)
    lat = cmp.stages[Stage.SERVED].latency
    assert (lat.count, lat.mean, lat.max) == (4, 25.0, 40.0)
    assert lat.p99 == pytest.approx(39.7) and lat.p95 == pytest.approx(38.5)
    assert cmp.stages[Stage.BASELINE].latency.count == 6
    # The server/overhead split: answered rows only, overhead = client time - server time.
    assert cmp.served_server_latency.count == 4 and cmp.served_server_latency.max == 16.0
    assert cmp.served_overhead_latency.count == 4
    assert cmp.served_overhead_latency.mean == pytest.approx(np.mean([6.0, 12.0, 18.0, 24.0]))
    assert cmp.served_overhead_latency.max == 24.0


def test_stage_outputs_line_every_answered_row_up_by_index_and_leave_failed_rows_empty():
    c = codec(3)
    rows = (interpret(0, "r0", 200, pv_answer(2, [0.1, 0.2, 0.7], [0.0, 1.0, 3.0]), c, latency=5.0),
            failed(1, "r1", "timeout", "no answer", latency=9.0),
            interpret(2, "r2", 200, pv_answer(0, [0.6, 0.3, 0.1], [2.0, 1.0, 0.0]), c, latency=7.0))
    out = stage_outputs(Stage.HANDLED, tuple(reversed(rows)), 3)  # in any order: placed by row index
    assert out.name == Stage.HANDLED and out.predictions.dtype == np.int64
    assert out.predictions.tolist() == [2, -1, 0]
    np.testing.assert_array_equal(out.probabilities, [[0.1, 0.2, 0.7], [np.nan] * 3, [0.6, 0.3, 0.1]])
    np.testing.assert_array_equal(out.logits, [[0.0, 1.0, 3.0], [np.nan] * 3, [2.0, 1.0, 0.0]])
    np.testing.assert_array_equal(out.latencies_ms, [5.0, np.nan, 7.0])


def test_stage_outputs_carry_no_logits_or_probabilities_that_no_answer_had():
    c = codec(3)
    no_logits = stage_outputs(Stage.SERVED, (interpret(0, "r0", 200, pv_answer(1, [0.2, 0.5, 0.3]), c),), 3)
    assert no_logits.logits is None and no_logits.probabilities.tolist() == [[0.2, 0.5, 0.3]]
    none = stage_outputs(Stage.SERVED, (failed(0, "r0", "timeout", "x"), failed(1, "r1", "timeout", "x")), 3)
    assert none.logits is None and none.probabilities is None and none.predictions.tolist() == [-1, -1]
