"""report.json/md, junit.xml, report.html and rows.parquet from a run state built without a server."""

import json
import xml.etree.ElementTree as ET

import pandas as pd
import pytest

from pipeline.baseline import load_model, score_baseline
from pipeline.config import load_spec
from pipeline.dataset import load_dataset
from pipeline.export import export_model
from pipeline.history import last_passing, load_history, record_run, trend
from pipeline.replay import ReplayResult, RowOutcome
from pipeline.report import build_report, build_rows, write_reports
from pipeline.run import RunState, _compare_and_gate
from tests.helpers import make_project


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rep")
    spec = load_spec(make_project(tmp / "p", rows=30))
    data = load_dataset(spec)
    model = load_model(spec)
    base = score_baseline(spec, model, data)
    ex = export_model(spec, model, data, base.scores, tmp / "export")
    rows = []
    for i, rid in enumerate(data.ids):
        k = int(base.scores.predictions[i])
        if i == 4:
            rows.append(RowOutcome(i, rid, False, 503, None, None, None, 2.0, "req-4", None, "handler_error",
                                   "Prediction failed", 1))
        else:
            rows.append(RowOutcome(i, rid, True, 200, k, tuple(base.scores.probabilities[i]),
                                   tuple(map(float, base.scores.logits[i])), 1.5, f"req-{i}", 0.4, None, None, 1))
    replay = ReplayResult(tuple(rows), 1.0, 1, None, 0, True, None)
    st = RunState(spec=spec, run_dir=tmp / "run", data=data, baseline=base, exported=ex, replay=replay,
                  started_at="2026-11-22T10:00:00+00:00")
    st.run_dir.mkdir()
    _compare_and_gate(st)
    return st


@pytest.fixture(scope="module")
def written(state):
    rep = build_report(state, "failed", 1, None)
    return rep, write_reports(state.run_dir, rep, build_rows(state))


def test_report_json_is_versioned_and_strict_json(written):
    rep, paths = written
    data = json.loads(paths["json"].read_text())
    assert data["schema"] == "package-validate/report/v1" and data["verdict"] == "FAIL"
    assert data["stages"]["replay"]["errors"] == {"handler_error": 1}
    assert "NaN" not in paths["json"].read_text()


def test_junit_has_one_case_per_check_and_failures_with_values(written):
    rep, paths = written
    root = ET.parse(paths["junit"]).getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(rep["gate"]["checks"]) + 1
    failed = [c for c in rep["gate"]["checks"] if c["is_gating"] and not c["passed"]]
    assert int(suite.get("failures")) == len(failed) > 0
    err = next(c for c in cases if c.get("name") == "replay error rate").find("failure")
    assert err is not None and "value 0.0333333" in err.get("message") and "limit <= 0.0000" in err.get("message")


def test_html_is_self_contained_with_every_plot(written):
    rep, paths = written
    page = paths["html"].read_text()
    assert "FAIL" in page.split("</div>")[0]
    assert page.count("<img ") == 4 and page.count("src='data:image/png;base64,") == 4
    assert "http://" not in page and "https://" not in page


def test_rows_parquet_has_every_row_and_failures_keep_their_class(written, state):
    _, paths = written
    df = pd.read_parquet(paths["rows"])
    assert len(df) == len(state.data) and list(df["id"]) == list(state.data.ids)
    failed = df[df.served_error_class.notna()]
    assert list(failed["id"]) == [state.data.ids[4]] and failed.served_message.iloc[0] == "Prediction failed"
    assert pd.isna(failed.served_pred.iloc[0]) and (df.baseline_pred == df.exported_pred).all()


def test_history_records_runs_newest_first_and_finds_last_pass(tmp_path, written):
    rep, _ = written
    db = tmp_path / "history.sqlite"
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "report.json").write_text("{}")
    record_run(db, {**rep, "status": "passed", "exit_code": 0, "run_dir": str(tmp_path / "ok")})
    record_run(db, {**rep, "status": "failed", "exit_code": 1})
    record_run(db, {**rep, "status": "error", "exit_code": 3, "metrics": {}})
    runs = load_history(db)
    assert [r.status for r in runs] == ["error", "failed", "passed"]
    assert last_passing(db, rep["model"]).run_dir == str(tmp_path / "ok")
    t = trend(runs)
    assert t["served.accuracy"]["runs"] == 2 and t["served.accuracy"]["last"] == rep["metrics"]["served"]["accuracy"]
    assert load_history(tmp_path / "none.sqlite") == []
