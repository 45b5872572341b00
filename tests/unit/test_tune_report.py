"""The tune report from a fake result: closing figures from the head-to-head, fractions of the in-process limit,
a readable summary (no JSON dump, no 'None ms'), and the plot's curves."""

from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.run.phases import HandlerLimit, Setting
from pipeline.tune.report import render, summary, summary_lines, write_tune_report
from pipeline.tune.search import Measurement, Ranges
from pipeline.tune.session import TuneResult
from pipeline.tune.versus import head_to_head
from tests.unit._support import spec_for

DEFAULT = Setting(1, 1, 5, 1)
REC = Setting(1, 4, 5, 8)


def _m(s, rps, p99=10.0, phase="", answers="same"):
    return Measurement(s, rps, p99 / 2, p99, True, answers, {min(s.batch_size, s.concurrency): 3}, phase=phase)


def _result(tmp_path: Path, grid_best: Setting | None, p99_ms=None) -> TuneResult:
    guided = [_m(DEFAULT, 100, phase="default"), _m(replace(DEFAULT, concurrency=8), 150, 30, "concurrency"),
              _m(REC, 400, 20, "batch")]
    res = TuneResult(spec_for(3), tmp_path, p99_ms, "tune.p99_ms" if p99_ms else "none set",
                     Ranges(workers=(1,), batch_sizes=(1, 4), delays_ms=(5,), concurrency=(1, 8)), "register", {},
                     guided, 12.0, False, guided[2], "the highest throughput")
    if grid_best is not None:
        res.grid = [_m(grid_best, 450, phase="grid")]
        res.grid_s, res.grid_best = 60.0, res.grid[0]
    res.limit = HandlerLimit({1: 200.0, 4: 800.0}, {1: 5.0, 4: 5.0}, {1: 10, 4: 10}, 3.0)
    rounds = {DEFAULT: iter([90, 110, 100]), REC: iter([300, 360, 330]), Setting(1, 4, 5, 16): iter([340, 320, 310])}
    res.versus = head_to_head([("default", DEFAULT), ("recommended", REC)]
                              + ([("grid best", grid_best)] if grid_best else []),
                              lambda s, phase: _m(s, next(rounds[s]), phase=phase), rounds=3)
    return res


def test_the_closing_figures_are_the_head_to_head_medians_and_the_search_figures_are_kept(tmp_path):
    s = summary(_result(tmp_path, Setting(1, 4, 5, 16)))
    assert s["recommended"]["throughput_rps"] == 330 and s["recommended"]["search"]["throughput_rps"] == 400
    assert s["default"]["throughput_rps"] == 100 and s["recommended"]["from"] == "head-to-head median"
    assert s["recommended_vs_default"] == 3.3 and s["search_recommended_vs_default"] == 4.0
    assert s["guided_over_grid_best"] == pytest.approx(330 / 320, abs=1e-3)
    assert s["recommended"]["of_limit"] == pytest.approx(330 / 800, abs=1e-3)  # its batch size's limit
    assert s["default"]["of_limit"] == 0.5 and s["recommended"]["rounds_rps"] == [300, 360, 330]
    assert "in_process_limit_note" not in s


def test_a_one_worker_point_above_the_limit_says_the_limit_was_measured_under_more_load(tmp_path):
    res = _result(tmp_path, None)
    res.limit = replace(res.limit, rows_per_s={1: 50.0, 4: 800.0})  # batch 1 at 90-150 req/s: 5 points over it
    note = summary(res)["in_process_limit_note"]
    assert note.startswith("5 one-worker measurement(s) above the limit (up to 300%)") and "machine load" in note
    assert "more workers" not in note


def test_a_point_with_more_workers_above_the_one_handler_limit_is_explained_not_blamed_on_load(tmp_path):
    res = _result(tmp_path, None)
    res.grid = [_m(Setting(2, 4, 5, 16), 450, phase="grid")]  # 2 workers at 450 req/s, batch 4's limit 800
    assert "in_process_limit_note" not in summary(res)
    res.limit = replace(res.limit, rows_per_s={1: 200.0, 4: 420.0})  # one-worker batch-4 points: 300-400 req/s
    note = summary(res)["in_process_limit_note"]
    assert note == ("a point with more workers runs that many handlers at once, so its fraction of the one-handler "
                    "limit can pass 100%")


def test_a_grid_best_that_is_the_recommendation_is_said_so(tmp_path):
    res = _result(tmp_path, REC)
    s = summary(res)
    assert s["guided_over_grid_best"] == 1.0
    assert "the same setting" in s["head_to_head"]["ratio_notes"]["guided_over_grid_best"]
    assert any("recommended / grid best: 1.000 (the recommended is the grid best" in line
               for line in summary_lines(res, s))


def test_the_report_is_readable_without_an_objective(tmp_path):
    res = _result(tmp_path, Setting(1, 4, 5, 16))
    doc = write_tune_report(res)
    page = (tmp_path / "report.html").read_text()
    assert "None ms" not in page and "objective: none (none set): the knee of the frontier" in page
    assert "<pre>{" not in page and "<th>of the in-process limit</th>" in page
    assert "round 1: default" in page and doc["guided"][2]["of_limit"] == 0.5
    with_objective = render(_result(tmp_path, None, p99_ms=50.0), doc)
    assert "objective: p99 &lt;= 50 ms (tune.p99_ms)" in with_objective


def test_stability_counts_the_unstable_points_by_what_disagreed():
    from pipeline.tune.report import stability

    ok = replace(_m(DEFAULT, 100), window_figures=((50, 90), (100, 10), (101, 10.5)))
    on_p99 = replace(ok, stable=False, window_figures=((50, 90), (100, 10), (101, 30)))
    on_both = replace(ok, stable=False, window_figures=((50, 90), (100, 10), (150, 30)))
    assert stability([ok, on_p99, on_both], 0.15) == {"points": 3, "unstable": 2, "on_throughput": 1, "on_p99": 2}


def test_a_curve_joins_points_that_differ_in_concurrency_only():
    from pipeline.tune.report import curves

    pts = [_m(Setting(w, b, 5, c, t), 100.0 * c) for w in (1, 2) for b in (1, 8) for c in (16, 1, 4) for t in (1, 2)]
    got = curves(pts)
    assert len(got) == 8 and got[0][0] == "batch 1, 1 worker, threads 1" and got[-1][0] == "batch 8, 2 workers, threads 2"
    for label, line in got:
        assert [m.setting.concurrency for m in line] == [1, 4, 16], label
        assert len({(m.setting.workers, m.setting.batch_size, m.setting.threads) for m in line}) == 1, label
    one_thread = curves([m for m in pts if m.setting.threads == 1])
    assert [label for label, _ in one_thread][:2] == ["batch 1, 1 worker", "batch 1, 2 workers"]
    delays = curves([_m(Setting(1, 4, d, c), 1.0) for d in (5, 20) for c in (4, 8)])
    assert [label for label, _ in delays] == ["batch 4, 1 worker, delay 5 ms", "batch 4, 1 worker, delay 20 ms"]
