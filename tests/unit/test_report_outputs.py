"""report.json/md, junit.xml, report.html and rows.parquet from a run state built without a server."""

import json
import xml.etree.ElementTree as ET

import dataclasses

import pandas as pd
import pytest

from pipeline.record import RunRecord
from pipeline.report.builder import build_report, build_rows
from pipeline.report.html import render_html
from pipeline.report.junit import render_junit
from pipeline.report.writer import write_reports
from pipeline.run.runner import compare_and_gate
from pipeline.stages.dataset import DatasetResult
from pipeline.stages.export import export_model
from pipeline.stages.outcomes import RowOutcome, interpret
from pipeline.stages.replay import ReplayResult
from tests.helpers import in_process, make_project


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rep")
    p = in_process(make_project(tmp / "p", rows=30))
    data, base = p.rows, p.base
    ex = export_model(p.spec, p.model, data, base, tmp / "export")
    rows = []
    for i, rid in enumerate(data.ids):
        k = int(base.scores.predictions[i])
        if i == 4:
            rows.append(RowOutcome(i, rid, False, 503, None, 2.0, "req-4", None, "handler_error",
                                   "Prediction failed", 1))
        else:
            body = json.dumps({"prediction": k, "probabilities": base.scores.probabilities[i].tolist(),
                               "logits": base.scores.logits[i].tolist()}).encode()
            rows.append(dataclasses.replace(interpret(i, rid, 200, body, p.plan.codec, latency=1.5,
                                                      request_id=f"req-{i}"), server_ms=0.4))
    replay = ReplayResult(tuple(rows), 1.0, 1, None, 0, True, None)
    (tmp / "run").mkdir()
    record = RunRecord(started_at="2026-11-22T10:00:00+00:00", spec=p.spec, plan=p.plan, run_dir=tmp / "run",
                       dataset=DatasetResult(data, None, None), baseline=base, exported=ex, replay=replay)
    return compare_and_gate(record)


@pytest.fixture(scope="module")
def written(state):
    rep = build_report(state, "failed", 1, None)
    return rep, write_reports(state.run_dir, rep, build_rows(state))


def test_report_json_is_versioned_and_strict_json(written):
    rep, paths = written
    data = json.loads(paths["json"].read_text())
    assert data["schema"] == "package-validate/report/v3" and data["verdict"] == "FAIL"
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
    err = next(c for c in cases if c.get("name") == "served error rate").find("failure")
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
    assert len(df) == len(state.rows) and list(df["id"]) == list(state.rows.ids)
    failed = df[df.served_error_class.notna()]
    assert list(failed["id"]) == [state.rows.ids[4]] and failed.served_message.iloc[0] == "Prediction failed"
    assert pd.isna(failed.served_pred.iloc[0]) and (df.baseline_pred == df.exported_pred).all()


def _junit(rep: dict) -> ET.Element:
    return ET.fromstring(render_junit(rep)).find("testsuite")


def test_junit_run_that_did_not_complete_is_an_error_with_its_message(written):
    rep, _ = written
    broken = {**rep, "status": "error", "verdict": "ERROR", "complete": False, "exit_code": 3,
              "error": {"type": "ReplayError", "message": "replay incomplete: server \x1b[31mgone\x00",
                        "details": ["Worker died."]}}
    suite = _junit(broken)
    run_case = next(c for c in suite.findall("testcase") if c.get("name") == "run complete")
    err = run_case.find("error")
    assert err is not None and err.get("type") == "ReplayError"
    assert "replay incomplete: server" in err.get("message") and "Worker died." in err.text
    assert int(suite.get("errors")) == 1
    assert int(suite.get("tests")) == len(rep["gate"]["checks"]) + 1


def test_junit_complete_run_has_no_error_and_warnings_are_skipped(written):
    rep, _ = written
    warn = {"name": "size ratio", "stage": "exported", "value": 1.2, "baseline": 1.0, "limit": "<= 1 (not gated)",
            "passed": False, "detail": "", "is_gating": False}
    suite = _junit({**rep, "gate": {"passed": True, "checks": [*rep["gate"]["checks"], warn]}})
    assert int(suite.get("errors")) == 0
    case = next(c for c in suite.findall("testcase") if c.get("name") == "size ratio")
    assert case.get("classname") == "exported" and case.find("failure") is None
    assert "value 1.2, baseline 1, limit <= 1 (not gated)" in case.find("skipped").get("message")
    assert int(suite.get("skipped")) == 1 + sum(1 for c in rep["gate"]["checks"] if not c["is_gating"]
                                                and not c["passed"])


def test_html_escapes_text_and_leaves_out_latency_plots_without_rows(written):
    rep, _ = written
    page = render_html({**rep, "model": "<script>alert(1)</script>"}, None)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<img ") == 2  # confusion matrices and per-class F1; latency needs per-row data


def test_rows_of_an_interrupted_replay_mark_unsent_rows(state):
    rows = list(state.replay.rows)
    rows[-3:] = [RowOutcome(r.index, r.id, False, None, None, None, None, None, "not_sent",
                            "replay stopped", 0) for r in rows[-3:]]
    cut = dataclasses.replace(state, replay=dataclasses.replace(state.replay, rows=tuple(rows), is_complete=False))
    df = build_rows(cut)
    assert len(df) == len(state.rows)
    assert list(df.served_error_class.iloc[-3:]) == ["not_sent"] * 3 and df.served_pred.iloc[-3:].isna().all()
    assert df.served_prob.notna().sum() == len(state.rows) - 4  # row 4 failed too


def test_rows_left_out_when_the_replay_does_not_line_up(state):
    short = dataclasses.replace(state, replay=dataclasses.replace(state.replay, rows=state.replay.rows[:-1]))
    assert build_rows(short) is None


def test_reports_still_written_when_rows_cannot_be_serialized(written, tmp_path):
    rep, _ = written
    paths = write_reports(tmp_path, dict(rep), pd.DataFrame({"x": [object()]}))
    assert "rows" not in paths and not (tmp_path / "rows.parquet").exists()
    assert json.loads(paths["json"].read_text())["verdict"] == "FAIL" and paths["junit"].is_file()


def test_a_run_that_failed_before_any_stage_still_renders(tmp_path):
    rep = {"schema": "package-validate/report/v3", "status": "error", "verdict": "ERROR", "complete": False,
           "exit_code": 2, "model": "tiny", "error": {"type": "DatasetError", "message": "data.csv: no rows",
                                                      "details": []}}
    paths = write_reports(tmp_path, rep, None)
    suite = ET.parse(paths["junit"]).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("1", "1", "0")
    page = paths["html"].read_text()
    assert "ERROR: tiny" in page and "data.csv: no rows" in page and "<img " not in page


def test_report_json_keys_are_the_schemas_snapshot(written):
    from pipeline.report.schema import REPORT_KEYS

    rep, paths = written
    data = json.loads(paths["json"].read_text())
    assert tuple(data) == REPORT_KEYS, "a change of report.json's top level is a change of schema v2: update both"
    assert set(data["stages"]) == {"baseline", "export", "replay"}
    assert set(data["metrics"]) == {"baseline", "exported", "served"}
    assert {s["stage"] for s in data["attribution"]["steps"]} == {"exported", "served"}
