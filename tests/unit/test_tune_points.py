"""A tune point: its setting applied to the spec and the archive, its formed batches read, its answers checked."""

import json
import zipfile

import numpy as np
import yaml

from pipeline.evaluate.compare import StageOutputs
from pipeline.names import StageName
from pipeline.run.phases import Setting
from pipeline.stages.archive import ArchiveResult
from pipeline.tune.apply import point_archive
from pipeline.tune.session import AnswerCheck, formed_since, window_rows
from tests.unit._support import outputs

SETTING = Setting(workers=2, batch_size=4, max_batch_delay_ms=20, concurrency=8, threads=1)


def test_a_setting_is_a_stage_name_setting_and_applies_to_the_spec(tmp_path):
    assert SETTING.key == "w2-b4-d20-c8-t1" and str(StageName("served", setting=SETTING.key)) == "served@w2-b4-d20-c8-t1"
    from tests.unit._support import spec_for
    spec = spec_for()
    s = SETTING.apply(spec)
    assert (s.serving.workers, s.serving.batch_size, s.serving.max_batch_delay_ms, s.replay.concurrency) == (2, 4, 20, 8)
    assert s.serving.env["OMP_NUM_THREADS"] == "1" and Setting.of_spec(s) == SETTING
    assert "OMP_NUM_THREADS" not in spec.serving.env  # the user's spec is not changed


def test_the_point_archive_differs_from_the_archive_only_in_its_model_config(tmp_path):
    mar = tmp_path / "m.mar"
    manifest = {"model": {"configFile": "model-config.yaml", "serializedFile": "w.pt"}}
    with zipfile.ZipFile(mar, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        z.writestr("model-config.yaml", "minWorkers: 1\nbatchSize: 1\nhandler:\n  k: v\n")
        z.writestr("w.pt", b"\x00weights")
    arch = ArchiveResult(mar, "", 0, manifest, {"minWorkers": 1, "batchSize": 1, "handler": {"k": "v"}}, ())
    out = point_archive(arch, SETTING, tmp_path / "store", "m-001")
    with zipfile.ZipFile(out) as z:
        config = yaml.safe_load(z.read("model-config.yaml"))
        assert z.read("w.pt") == b"\x00weights" and sorted(z.namelist()) == sorted(zipfile.ZipFile(mar).namelist())
    assert config == {"minWorkers": 2, "maxWorkers": 2, "batchSize": 4, "maxBatchDelay": 20, "handler": {"k": "v"}}


def test_formed_batches_are_the_request_ids_of_each_prediction_time_line_after_the_offset(tmp_path):
    log = tmp_path / "model_metrics.log"
    line = ("2026-01-01T00:00:00,000 - PredictionTime.ms:{ms}|#ModelName:m,Level:Model|#type:GAUGE|"
            "#hostname:h,1,requestID:{ids},timestamp:1\n")
    log.write_text(line.format(ms=1, ids="a,b,c,d"))
    offset = log.stat().st_size
    with log.open("a") as f:
        f.write(line.format(ms=2, ids="e,f"))
        f.write(line.format(ms=2, ids="g"))
        f.write("2026 - HandlerTime.ms:1|#x|#requestID:h,i,timestamp:1\n")
    assert formed_since(log, 0) == {4: 1, 2: 1, 1: 1}
    assert formed_since(log, offset) == {2: 1, 1: 1} and formed_since(tmp_path / "none.log", 0) == {}


def test_every_answer_is_checked_against_the_baseline_with_the_gates_tolerance():
    base = outputs("baseline", np.array([0, 1, 2]), logits=np.eye(3))
    same = AnswerCheck()
    same.add(base, outputs("served", np.array([0, 1, 2]), logits=np.eye(3) + 1e-7))
    assert same.verdict(1e-5)[0] == "same"
    moved = AnswerCheck()
    moved.add(base, outputs("served", np.array([0, 1, 2]), logits=np.eye(3)))
    moved.add(base, outputs("served", np.array([0, 1, 2]), logits=np.eye(3) + np.eye(3) * 1e-3))
    assert moved.verdict(1e-5)[0] == "differ" and "difference 0.001" in moved.verdict(1e-5)[1]
    flipped = AnswerCheck()
    flipped.add(base, outputs("served", np.array([0, 2, 2]), logits=np.eye(3)))
    assert flipped.verdict(1.0) == ("differ", "3 answers: 1 with another class, 0 failed, max logits difference 0")
    failed = AnswerCheck()
    failed.add(base, outputs("served", np.array([0, -1, 2]), logits=np.eye(3)))
    assert failed.verdict(1.0)[0] == "failed"


def test_a_window_repeats_every_row_equally_often():
    from tests.unit._support import tensor_rows
    rows = tensor_rows(3)
    win = window_rows(rows, 7)
    assert len(win) == 9 and win.ids[:4] == ("r0#0", "r1#0", "r2#0", "r0#1")
    assert win.body(4) == rows.body(1) and len(window_rows(rows, 1)) == 3


def test_the_open_loop_search_keeps_the_highest_rate_that_holds_the_objective():
    from types import SimpleNamespace

    from pipeline.tune.search import Measurement
    from pipeline.tune.session import _rate_search

    rec = Measurement(SETTING, 100.0, 5.0, 10.0, True, "same")
    rates = []

    def measure(setting, phase, rate=None, fresh=True):
        rates.append(rate)
        return Measurement(setting, rate, 5.0, 10.0 if rate <= 90 else 80.0, True, "same")
    out = _rate_search(SimpleNamespace(measure=measure), rec, p99_ms=50.0)
    assert out["highest_rate"] == 90.0 and rates == [50.0, 75.0, 90.0, 100.0]
    assert [t["holds"] for t in out["tried"]] == [True, True, True, False]
    no_objective = _rate_search(SimpleNamespace(measure=measure), rec, p99_ms=None)
    assert no_objective["objective_p99_ms"] == 20.0 and no_objective["highest_rate"] == 90.0


def test_tune_refuses_a_task_whose_answers_it_cannot_compare_and_says_why():
    import pytest

    from pipeline.errors import ConfigError
    from pipeline.tune.session import _refuse_other_tasks
    from tests.unit._support import spec_for

    with pytest.raises(ConfigError, match="model.task is 'regression'.*package-validate run") as e:
        _refuse_other_tasks(spec_for(1, model={"task": "regression"}))
    assert e.value.exit_code == 2
    _refuse_other_tasks(spec_for(3))  # classification: tuned


def test_a_point_already_served_is_kept_when_not_asked_fresh(tmp_path):
    from pipeline.tune.apply import PointServer
    from tests.unit._support import spec_for

    server = PointServer(spec_for(3), None, tmp_path, "register", None)
    server.server, server.current = "running", SETTING  # as after applying SETTING
    assert server.apply(SETTING, fresh=False) == ("running", 0.0) and server.last == "kept"
    server.stop()
    assert server.current is None  # a stopped server serves nothing: the next point is applied


def test_an_interrupted_tune_exits_130_or_143_saying_nothing_was_recommended(monkeypatch, capsys, tmp_path):
    import signal

    import pytest

    from pipeline.cli import main
    from pipeline.errors import Interrupted
    from pipeline.tune import session

    for raised, code in ((KeyboardInterrupt(), 130), (Interrupted(signal.SIGTERM), 143),
                         (Interrupted(signal.SIGINT), 130)):
        def stopped(opts, raised=raised):
            raise raised
        monkeypatch.setattr(session, "run_tune", stopped)
        try:
            got = main(["tune", str(tmp_path / "spec.yaml")])
        except KeyboardInterrupt:  # escaping would end the whole pytest session, not fail this test
            pytest.fail(f"{raised!r} escaped package-validate tune: a traceback, not exit {code}")
        assert got == code
        err = capsys.readouterr().err
        assert err.startswith("interrupted: tune stopped before its report, nothing recommended") and "Traceback" \
            not in err
