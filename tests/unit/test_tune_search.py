"""The tune's pure parts on fake measurements: stability windows, the guided search, the grid, the choice."""

from dataclasses import replace

import pytest

from pipeline.run.phases import Setting
from pipeline.tune.search import Budget, Measurement, Ranges, choose, grid_search, guided_search
from pipeline.tune.windows import Window, agree, formed_batches, measure_windows, stable, summary

DEFAULT = Setting(workers=1, batch_size=1, max_batch_delay_ms=5, concurrency=1)


def w(rps, p99, formed=None, failed=0):
    return Window(rps, p99 / 2, p99, 100, failed, formed or {})


# --- stability windows ---------------------------------------------------------------------------------------------

def test_agree_is_relative_to_the_larger_and_refuses_nan():
    assert agree(100, 109, 0.1) and not agree(100, 112, 0.1) and not agree(float("nan"), 1, 0.5)


def test_the_warmup_window_never_counts_towards_stability():
    assert not stable([w(100, 10), w(100, 10)], 0.1)  # one counted window only
    assert stable([w(10, 99), w(100, 10), w(105, 10.5)], 0.1)
    assert not stable([w(100, 10), w(100, 10), w(100, 20)], 0.1)  # p99 must agree too


def test_windows_run_until_two_agree_and_the_figures_exclude_the_warmup():
    script = iter([w(10, 500), w(80, 20), w(100, 12), w(104, 12.5), w(1, 1)])
    windows, ok = measure_windows(lambda i: next(script), 0.1, max_windows=6)
    assert ok and len(windows) == 4
    rps, _, p99 = summary(windows)
    assert rps == pytest.approx(102) and p99 == pytest.approx(12.25)


def test_a_point_that_never_settles_is_reported_unstable_after_max_windows():
    script = iter([w(10 * (i + 1), 10 * (i + 1)) for i in range(10)])
    windows, ok = measure_windows(lambda i: next(script), 0.05, max_windows=5)
    assert not ok and len(windows) == 5


def test_the_budget_stops_the_windows_after_the_least_that_can_count():
    script = iter([w(10 * (i + 1), 10) for i in range(10)])
    windows, ok = measure_windows(lambda i: next(script), 0.05, max_windows=8, keep_going=lambda: False)
    assert len(windows) == 3 and not ok


def test_formed_batches_count_over_the_counted_windows():
    assert formed_batches([w(1, 1, {1: 50}), w(1, 1, {4: 3, 1: 1}), w(1, 1, {4: 2})]) == {1: 1, 4: 5}


# --- search ----------------------------------------------------------------------------------------------------------

def fake(perf, answers=lambda s: "same"):
    """A measure() whose throughput and p99 come from ``perf(setting)``; records what was measured."""
    seen = []

    def measure(s: Setting, phase: str) -> Measurement:
        seen.append(s)
        rps, p99 = perf(s)
        formed = {min(s.batch_size, s.concurrency): 10}
        return Measurement(s, rps, p99 / 2, p99, True, answers(s), formed, seconds=1.0)
    return measure, seen


def batching_helps(s: Setting):
    """A server whose throughput grows with concurrency up to 4 (the knee), and with the batch that forms."""
    formed = min(s.batch_size, s.concurrency)
    rps = 100 * min(s.concurrency, 4) ** 0.3 * formed ** 0.8 / max(1, s.workers - 1)
    return rps, 5.0 * s.concurrency / formed + s.max_batch_delay_ms / 10


RANGES = Ranges(workers=(1, 2), batch_sizes=(1, 2, 4, 8), delays_ms=(5, 20), concurrency=(1, 2, 4, 8, 16))


def test_guided_finds_the_grids_best_in_fewer_points():
    measure, seen = fake(batching_helps)
    guided, short = guided_search(DEFAULT, RANGES, measure, Budget(1e9), p99_ms=None)
    grid = grid_search(RANGES, fake(batching_helps)[0], DEFAULT)
    best_grid = max(m.throughput_rps for m in grid)
    best_guided = max(m.throughput_rps for m in guided)
    assert not short and best_guided >= 0.95 * best_grid
    assert len(guided) <= len(grid) / 4, [m.setting.key for m in guided]
    assert guided[0].setting == DEFAULT and guided[0].phase == "default"


def second_worker_needs_its_own_batch(s: Setting):
    """A second worker adds 30%, but only when each worker's batch fills: concurrency / workers in flight each."""
    formed = max(1, min(s.batch_size, s.concurrency // s.workers))
    rps = min(100 * formed ** 0.8 * (1.3 if s.workers == 2 else 1.0), 100 * s.concurrency)
    return rps, 5.0 * s.concurrency / formed + s.max_batch_delay_ms / 10


def test_more_workers_are_measured_with_the_clients_to_fill_each_workers_batch():
    measure, seen = fake(second_worker_needs_its_own_batch)
    guided, _ = guided_search(DEFAULT, RANGES, measure, Budget(1e9), p99_ms=None)
    grid = grid_search(RANGES, fake(second_worker_needs_its_own_batch)[0], DEFAULT)
    best_grid = max(grid, key=lambda m: m.throughput_rps)
    assert best_grid.setting.key == "w2-b8-d5-c16-tenv"
    assert max(m.throughput_rps for m in guided) == best_grid.throughput_rps, [m.setting.key for m in guided]
    assert all(s.concurrency >= min(16, s.workers * s.batch_size) for s in seen[1:] if s.batch_size > 1)
    assert len(guided) <= len(grid) / 4


def test_hill_climbing_moves_to_a_neighbour_that_beats_the_walks_best():
    """At one worker batch 4 beats 8, at two workers 8 beats 4: only a step after the workers' finds it."""
    def perf(s):
        formed = max(1, min(s.batch_size, s.concurrency // s.workers))
        rps = {1: 100, 2: 150, 4: 200, 8: 190 if s.workers == 1 else 300}[formed] * (1.2 if s.workers == 2 else 1)
        return min(rps, 60 * s.concurrency), 10.0
    measure, seen = fake(perf)
    guided, _ = guided_search(DEFAULT, RANGES, measure, Budget(1e9), p99_ms=None)
    refined = [m.setting for m in guided if m.phase == "refine"]
    best = max(guided, key=lambda m: m.throughput_rps).setting
    assert (best.workers, best.batch_size, best.concurrency) == (2, 8, 16) and best in refined


def test_concurrency_stops_past_the_knee():
    measure, seen = fake(batching_helps)
    guided_search(DEFAULT, replace(RANGES, batch_sizes=(1,), workers=(1,)), measure, Budget(1e9), None)
    assert [s.concurrency for s in seen] == [1, 2, 4, 8]  # 8 adds nothing over 4: 16 is not tried


def test_a_batch_that_changes_answers_is_never_chosen_and_larger_ones_are_not_tried():
    measure, seen = fake(batching_helps, answers=lambda s: "differ" if min(s.batch_size, s.concurrency) > 1 else
                         "same")
    guided, _ = guided_search(DEFAULT, RANGES, measure, Budget(1e9), None)
    rec, how = choose(guided, None, guided[0])
    assert rec.setting.batch_size == 1 and rec.keeps_answers
    assert 4 not in {s.batch_size for s in seen} and 8 not in {s.batch_size for s in seen}
    assert sum(s.batch_size > 1 for s in seen) == 1  # nor batch 2 again, at other workers, when hill climbing


def test_the_budget_cuts_the_search_short_and_says_so():
    clock = iter(range(0, 10_000, 10))
    measure, seen = fake(batching_helps)
    guided, short = guided_search(DEFAULT, RANGES, measure, Budget(35, clock=lambda: next(clock)), None)
    assert short and 1 <= len(guided) <= 3


def test_grid_measures_every_point_and_the_default_outside_the_ranges():
    measure, seen = fake(batching_helps)
    grid_search(replace(RANGES, delays_ms=(20,)), measure, DEFAULT)
    assert len(seen) == 2 * 4 * 1 * 5 + 1 and seen[0] == DEFAULT


# --- the choice ------------------------------------------------------------------------------------------------------

def m(key_c, rps, p99, answers="same", b=1):
    return Measurement(replace(DEFAULT, concurrency=key_c, batch_size=b), rps, p99 / 2, p99, True, answers)


def test_with_an_objective_the_highest_throughput_under_it():
    pts = [m(1, 100, 10), m(2, 180, 40), m(4, 200, 90), m(8, 400, 20, answers="differ")]
    rec, how = choose(pts, 50, pts[0])
    assert rec.throughput_rps == 180 and "tune.p99_ms = 50" in how


def test_without_an_objective_the_knee_of_the_frontier_said_as_such():
    pts = [m(1, 100, 10), m(2, 190, 20), m(4, 200, 90)]
    rec, how = choose(pts, None, pts[0])
    assert rec.throughput_rps == 190 and how.startswith("the knee of the frontier")


def test_none_when_no_point_keeps_its_answers():
    rec, how = choose([m(1, 100, 10, answers="differ"), m(2, 100, 10, answers="failed")], None)
    assert rec is None and "no measured point keeps every answer" in how


def test_never_below_the_defaults_throughput():
    pts = [m(1, 100, 10), m(2, 95, 5)]  # the knee (lowest p99 within 90%) is slower than the default
    rec, how = choose(pts, None, pts[0])
    assert rec is pts[0] and how.endswith("the default, as no other point beats its throughput")


# --- the head-to-head ------------------------------------------------------------------------------------------------

def test_the_head_to_head_interleaves_rounds_rotating_the_order_and_quotes_medians():
    from pipeline.tune.versus import head_to_head

    rec, best = replace(DEFAULT, concurrency=4), replace(DEFAULT, batch_size=4, concurrency=4)
    rps = {DEFAULT: iter([100, 300, 110]), rec: iter([200, 210, 190]), best: iter([220, 200, 260])}
    measure, seen = fake(lambda s: (next(rps[s]), 10.0))
    h = head_to_head([("default", DEFAULT), ("recommended", rec), ("grid best", best)], measure, rounds=3)
    assert seen == [DEFAULT, rec, best, rec, best, DEFAULT, best, DEFAULT, rec]
    assert h.of("default").throughput_rps == 110 and h.of("recommended").throughput_rps == 200
    assert h.ratio("recommended", "default") == (pytest.approx(200 / 110), "medians over 3 interleaved rounds")
    assert h.ratio("recommended", "grid best")[0] == pytest.approx(200 / 220)


def test_the_same_setting_named_twice_is_one_contender_and_its_ratio_is_said_to_be_noise_free():
    from pipeline.tune.versus import head_to_head

    rec = replace(DEFAULT, concurrency=4)
    measure, seen = fake(lambda s: (100.0 * s.concurrency, 10.0),
                         answers=lambda s: "differ" if len(seen) == 3 else "same")  # rec, round 2
    h = head_to_head([("default", DEFAULT), ("recommended", rec), ("grid best", rec)], measure, rounds=2)
    assert len(seen) == 4 and h.of("recommended") is h.of("grid best")
    assert h.of("grid best").names == ("recommended", "grid best")
    ratio, note = h.ratio("recommended", "grid best")
    assert ratio == 1.0 and "the same setting" in note and "by construction" in note
    assert h.of("recommended").answers == "differ"  # the worst round is the contender's verdict
    assert h.of("default").answers == "same"


# --- the shortlist, settled by the head-to-head ----------------------------------------------------------------------

def test_the_shortlist_is_the_searchs_choice_then_its_fastest_other_qualifying_points():
    from pipeline.tune.search import shortlist

    pts = [m(1, 100, 10), m(2, 300, 40), m(4, 500, 90), m(8, 450, 20), m(16, 900, 5, answers="differ")]
    assert [p.setting.concurrency for p in shortlist(pts, pts[1], 50.0)] == [2, 8, 1]  # 4: p99 over, 16: differs
    assert [p.setting.concurrency for p in shortlist(pts, pts[3], None, k=2)] == [8, 4]  # the choice once
    assert [p.setting.concurrency for p in shortlist(pts, None, None, k=5)] == [4, 8, 2, 1]
    assert shortlist([pts[4]], None, None) == []


class _Tuner:
    """A tuner whose head-to-head rounds answer from a table: setting -> throughput per round (and answers)."""

    def __init__(self, rounds: dict, answers=lambda s: "same"):
        self.rounds, self.answers, self.seen = {s: iter(v) for s, v in rounds.items()}, answers, []

    def measure(self, s, phase, max_windows=None):
        self.seen.append(s)
        return Measurement(s, float(next(self.rounds[s])), 5.0, 10.0, True, self.answers(s), {1: 1}, phase=phase,
                           seconds=2.0)


def _tune_result(guided, rec, grid=None, p99_ms=None):
    from pipeline.tune.session import TuneResult
    from tests.unit._support import spec_for

    res = TuneResult(spec_for(3), None, p99_ms, "none set", Ranges(), "register", {}, guided, 30.0, False, rec,
                     "the knee")
    if grid is not None:
        res.grid, res.grid_s = grid, 120.0
        res.grid_best = choose(grid, p99_ms, grid[0])[0]
    return res


def test_the_head_to_head_settles_the_recommendation_among_each_searchs_shortlist():
    from pipeline.tune.session import _head_to_head

    a, b, c = (replace(DEFAULT, batch_size=x, concurrency=8) for x in (8, 4, 2))
    guided = [m(1, 100, 5), replace(m(8, 500, 10, b=8), setting=a), replace(m(8, 450, 10, b=4), setting=b)]
    guided[0] = replace(guided[0], setting=DEFAULT)
    grid = [replace(guided[0], phase="grid"), replace(m(8, 480, 10), setting=c), replace(m(8, 470, 10), setting=b)]
    res = _tune_result(guided, guided[1], grid, p99_ms=50.0)
    assert res.recommended.setting == a and res.grid_best.setting == c  # the single search figures
    tuner = _Tuner({DEFAULT: [100, 90, 110], a: [300, 280, 320], b: [400, 420, 380], c: [350, 330, 360]})
    _head_to_head(tuner, res, DEFAULT, rounds=3)
    assert len(tuner.seen) == 4 * 3  # default, a, b, c: b is in both shortlists, measured once per round
    assert res.recommended.setting == b and res.grid_best.setting == b  # the medians decide: 400 > 350 > 300
    assert res.recommended.throughput_rps == 450  # the search's own figures kept beside the medians
    assert "settled by the head-to-head medians among the search's 3 best point(s)" in res.how
    assert f"the search's own pick was {a.key}" in res.how
    assert res.versus.of("recommended") is res.versus.of("grid best")
    assert res.versus.ratio("recommended", "grid best")[0] == 1.0
    assert res.versus.ratio("recommended", "default")[0] == pytest.approx(400 / 100)
    assert res.guided_settle_s == 3 * 3 * 2.0  # default, a, b: 3 rounds of 2 s
    assert res.grid_settle_s == 3 * 3 * 2.0  # default, c, b
    assert res.confirmed.throughput_rps == 400 and res.confirmed.phase == "head-to-head"


def test_a_shortlisted_point_that_changes_answers_in_the_head_to_head_is_never_recommended_and_is_named():
    from pipeline.tune.session import _head_to_head

    a, b = replace(DEFAULT, batch_size=8, concurrency=8), replace(DEFAULT, batch_size=4, concurrency=8)
    guided = [replace(m(1, 100, 5), setting=DEFAULT), replace(m(8, 500, 10), setting=a),
              replace(m(8, 450, 10), setting=b)]
    res = _tune_result(guided, guided[1])
    tuner = _Tuner({DEFAULT: [100] * 3, a: [900] * 3, b: [300] * 3}, answers=lambda s: "differ" if s == a else "same")
    _head_to_head(tuner, res, DEFAULT, rounds=3)
    assert res.recommended.setting == b and res.grid_best is None and res.grid_settle_s is None
    assert any(n.startswith(f"guided #1 {a.key} changed answers") and "never recommended" in n for n in res.notes)
    # every shortlisted point changing answers: the default stays, as it keeps them
    res = _tune_result(guided, guided[1])
    _head_to_head(_Tuner({DEFAULT: [100] * 3, a: [900] * 3, b: [300] * 3},
                         answers=lambda s: "same" if s == DEFAULT else "differ"), res, DEFAULT, rounds=3)
    assert res.recommended.setting == DEFAULT
    # nothing keeps its answers: withdrawn, said so
    res = _tune_result(guided, guided[1])
    _head_to_head(_Tuner({DEFAULT: [100] * 3, a: [900] * 3, b: [300] * 3}, answers=lambda s: "differ"), res,
                  DEFAULT, rounds=3)
    assert res.recommended is None and res.how.startswith("withdrawn: no measured point keeps every answer")
