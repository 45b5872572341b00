"""Run history in SQLite: recording, newest-first loading, the last passing run, trends, the CLI."""

import json
import logging
import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.errors import ReportError
from pipeline.history.store import HISTORY_FILE, last_passing, load_history, record_run, summarize_trend
from tests.helpers import make_project

EXIT = {"passed": 0, "failed": 1, "error": 3}


def _stage(acc: float, p50: float | None = None) -> dict:
    m = {"accuracy": acc, "precision_macro": acc - 0.01, "recall_macro": acc - 0.02, "f1_macro": acc - 0.03,
         "f1_weighted": acc}
    m["latency"] = None if p50 is None else {"count": 10, "p50": p50, "p99": p50 * 4}
    return m


def _report(root: Path, n: int, status: str, acc: float, *, model: str = "digits", with_report: bool = True) -> dict:
    run_dir = root / f"{model}-run{n}"
    run_dir.mkdir(parents=True)
    if with_report:
        (run_dir / "report.json").write_text("{}")
    return {
        "schema": "package-validate/report/v1", "status": status, "exit_code": EXIT[status],
        "complete": status != "error", "started_at": f"2026-11-2{n}T10:00:00+00:00", "model": model,
        "version": "1.0", "run_dir": str(run_dir), "spec_path": "examples/digits/spec.yaml",
        "metrics": {"baseline": _stage(0.98, 0.15), "served": _stage(acc, 1.0 + n)},
        "served_latency_split": {"server_prediction_time": {"count": 10, "p50": 0.3 + n / 10, "p99": 1.0}},
    }


@pytest.fixture(autouse=True)
def _restore_sigterm():
    old = signal.getsignal(signal.SIGTERM)  # main() installs its own handler
    yield
    signal.signal(signal.SIGTERM, old)


@pytest.fixture
def db(tmp_path) -> Path:
    db = tmp_path / "reports" / HISTORY_FILE
    record_run(db, _report(tmp_path, 1, "passed", 0.98))
    record_run(db, _report(tmp_path, 2, "failed", 0.90))
    record_run(db, _report(tmp_path, 3, "error", 0.95))
    return db


def test_three_runs_load_newest_first_with_their_figures(db, tmp_path):
    runs = load_history(db)
    assert [r.status for r in runs] == ["error", "failed", "passed"]
    assert [r.exit_code for r in runs] == [3, 1, 0]
    assert runs[0].run_dir == str(tmp_path / "digits-run3") and runs[0].spec_path == "examples/digits/spec.yaml"
    newest = runs[0].figures
    assert newest["served.accuracy"] == 0.95 and newest["served.f1_macro"] == pytest.approx(0.92)
    assert newest["served.latency_p50_ms"] == 4.0 and newest["served.latency_p99_ms"] == 16.0
    assert newest["served.server_p50_ms"] == pytest.approx(0.6) and newest["baseline.accuracy"] == 0.98
    assert [r.status for r in load_history(db, limit=2)] == ["error", "failed"]


def test_history_filters_by_model(db, tmp_path):
    record_run(db, _report(tmp_path, 4, "passed", 0.99, model="other"))
    assert [r.model for r in load_history(db, model="other")] == ["other"]
    assert len(load_history(db, model="digits")) == 3 and len(load_history(db)) == 4


def test_last_passing_skips_failed_runs_and_runs_without_a_report(db, tmp_path):
    assert last_passing(db, "digits").run_dir == str(tmp_path / "digits-run1")
    record_run(db, _report(tmp_path, 5, "passed", 0.97, with_report=False))  # its folder was cleaned up
    record_run(db, _report(tmp_path, 6, "failed", 0.97))
    assert last_passing(db, "digits").run_dir == str(tmp_path / "digits-run1")
    record_run(db, _report(tmp_path, 7, "passed", 0.97))
    assert last_passing(db, "digits").run_dir == str(tmp_path / "digits-run7")
    assert last_passing(db, "other") is None


def test_no_history_yet_is_empty_not_an_error(tmp_path):
    assert load_history(tmp_path / "none.sqlite") == []
    assert last_passing(tmp_path / "none.sqlite", "digits") is None
    assert not (tmp_path / "none.sqlite").exists()


def test_trend_runs_oldest_to_newest(db):
    t = summarize_trend(load_history(db))
    acc = t["served.accuracy"]
    assert (acc["first"], acc["last"], acc["min"], acc["max"], acc["runs"]) == (0.98, 0.95, 0.90, 0.98, 3)
    assert acc["change"] == pytest.approx(-0.03)
    assert t["served.latency_p50_ms"]["first"] == 2.0 and t["served.latency_p50_ms"]["last"] == 4.0


def test_unmeasured_figures_are_recorded_as_null_and_left_out_of_the_trend(tmp_path):
    db = tmp_path / HISTORY_FILE
    rep = _report(tmp_path, 1, "error", 0.9)
    rep["metrics"]["served"]["accuracy"] = float("nan")
    del rep["served_latency_split"]
    record_run(db, rep)
    (run,) = load_history(db)
    assert run.figures["served.accuracy"] is None and "served.server_p50_ms" not in run.figures
    assert "served.accuracy" not in summarize_trend([run])


def test_a_damaged_history_file_raises_report_error_naming_the_fix(tmp_path):
    db = tmp_path / HISTORY_FILE
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ReportError, match="move it away"):
        record_run(db, _report(tmp_path, 1, "passed", 0.98))
    with pytest.raises(ReportError, match=str(db)):
        load_history(db)


def test_history_command_prints_runs_and_trend(db, capsys):
    assert main(["history", "--reports-dir", str(db.parent), "--model", "digits"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "served acc" in lines[0] and "p99 ms" in lines[0]
    assert [line.split()[2] for line in lines[1:4]] == ["error", "failed", "passed"]
    assert "0.9500" in lines[1] and "4.00" in lines[1] and "16.00" in lines[1]
    trend_line = next(line for line in lines if line.strip().startswith("served.accuracy"))
    assert "0.9800 -> 0.9500" in trend_line and "min 0.9000" in trend_line and "max 0.9800" in trend_line


def test_history_command_without_history_and_with_a_bad_limit(tmp_path, capsys):
    assert main(["history", "--reports-dir", str(tmp_path)]) == 0
    assert "no runs recorded" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["history", "--reports-dir", str(tmp_path), "--limit", "0"])
    assert e.value.code == 2 and "whole number >= 1" in capsys.readouterr().err


def test_history_command_on_a_damaged_file_exits_2(tmp_path, capsys):
    (tmp_path / HISTORY_FILE).write_bytes(b"garbage" * 200)
    assert main(["history", "--reports-dir", str(tmp_path)]) == 2
    assert "move it away" in capsys.readouterr().err


def test_a_damaged_history_never_breaks_a_run(tmp_path, caplog, capsys):
    spec = make_project(tmp_path / "p")
    (tmp_path / "p" / "data.csv").write_text("id,label,f0,f1,f2,f3\n")  # a dataset error: exit 2, no server
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / HISTORY_FILE).write_bytes(b"garbage" * 200)
    with caplog.at_level(logging.WARNING, logger="pipeline.run.runner"):
        code = main(["run", str(spec), "--reports-dir", str(reports), "--model-store", str(tmp_path / "store")])
    assert code == 2
    (report,) = reports.glob("*/report.json")
    assert json.loads(report.read_text())["status"] == "error"
    assert any("could not record the run" in r.getMessage() for r in caplog.records)


def test_a_finished_run_is_recorded(tmp_path, capsys):
    spec = make_project(tmp_path / "p")
    (tmp_path / "p" / "data.csv").write_text("id,label,f0,f1,f2,f3\n")
    reports = tmp_path / "reports"
    main(["run", str(spec), "--reports-dir", str(reports), "--model-store", str(tmp_path / "store")])
    (run,) = load_history(reports / HISTORY_FILE)
    assert (run.model, run.status, run.exit_code) == ("tiny", "error", 2)
    assert (Path(run.run_dir) / "report.json").is_file()
    with closing(sqlite3.connect(reports / HISTORY_FILE)) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)


def test_a_history_moved_with_its_run_folders_still_finds_the_last_pass(tmp_path):
    import shutil

    reports = tmp_path / "ws1" / "reports"
    run_dir = reports / "tiny-1"
    run_dir.mkdir(parents=True)
    (run_dir / "report.json").write_text("{}")
    record_run(reports / HISTORY_FILE, {"started_at": "t", "model": "tiny", "status": "passed", "exit_code": 0,
                                        "run_dir": str(run_dir)})
    moved = tmp_path / "ws2" / "reports"
    shutil.copytree(reports, moved)
    shutil.rmtree(tmp_path / "ws1")
    last = last_passing(moved / HISTORY_FILE, "tiny")
    assert last is not None and Path(last.run_dir) == moved / "tiny-1"


def test_a_history_written_before_releases_were_recorded_is_migrated(tmp_path):
    import sqlite3

    db = tmp_path / HISTORY_FILE
    with sqlite3.connect(db) as conn:  # the table as it was before the published column
        conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL, model TEXT, "
                     "version TEXT, status TEXT NOT NULL, exit_code INTEGER NOT NULL, run_dir TEXT, spec_path TEXT, "
                     "figures TEXT NOT NULL)")
        conn.execute("INSERT INTO runs (started_at, model, status, exit_code, figures) VALUES ('t', 'tiny', 'passed', 0, '{}')")
    conn.close()
    record_run(db, {"started_at": "u", "model": "tiny", "status": "passed", "exit_code": 0,
                    "published": "/store/tiny.mar"})
    old, new = load_history(db)[::-1]
    assert (old.published, new.published) == (None, "/store/tiny.mar")
