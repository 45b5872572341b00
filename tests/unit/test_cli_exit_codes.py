"""Bad input exits 2 and server preconditions exit 3, all before any server starts."""

import json
import signal
import socket
from pathlib import Path

import pytest

from pipeline.cli import main
from tests.helpers import leftover_processes, make_project


@pytest.fixture(autouse=True)
def _restore_sigterm():
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


def _run(tmp_path, *args):
    return main(["run", *args, "--reports-dir", str(tmp_path / "reports"), "--model-store", str(tmp_path / "store")])


def _report(tmp_path) -> dict:
    (path,) = list((tmp_path / "reports").glob("*/report.json"))
    return json.loads(path.read_text())


def test_missing_spec_exits_2(tmp_path, capsys):
    assert _run(tmp_path, str(tmp_path / "missing.yaml")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_dataset_error_exits_2_with_report(tmp_path, capsys):
    spec = make_project(tmp_path / "p")
    (tmp_path / "p" / "data.csv").write_text("id,label,f0,f1,f2,f3\n")
    assert _run(tmp_path, str(spec)) == 2
    out = capsys.readouterr().out
    assert "DatasetError" in out and "no rows" in out
    rep = _report(tmp_path)
    assert rep["complete"] is False and rep["verdict"] == "ERROR" and "server" not in rep["stages"]


def test_unwritable_reports_folder_exits_2_before_the_run(tmp_path, capsys):
    spec = make_project(tmp_path / "p")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code = main(["run", str(spec), "--reports-dir", str(blocker / "reports")])
    assert code == 2
    assert "cannot write reports under" in capsys.readouterr().err


def test_truncated_prebuilt_mar_exits_2(tmp_path, capsys):
    spec = make_project(tmp_path / "p")
    mar = tmp_path / "tiny.mar"
    mar.write_bytes(b"PK\x03\x04 truncated")
    assert _run(tmp_path, str(spec), "--mar", str(mar)) == 2
    assert "not a valid zip" in capsys.readouterr().out


def test_sha256_mismatch_exits_2(tmp_path, capsys):
    spec = make_project(tmp_path / "p")
    mar = tmp_path / "tiny.mar"
    import zipfile

    with zipfile.ZipFile(mar, "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", '{"model": {}}')
    assert _run(tmp_path, str(spec), "--mar", str(mar), "--expect-sha256", "ab" * 32) == 2
    assert "expected " + "ab" * 32 in capsys.readouterr().out


@pytest.mark.parametrize("content, msg", [(None, "does not exist"), ('{"schema": "other/v9"}', "has schema 'other/v9'")])
def test_baseline_report_missing_or_other_schema_exits_2(tmp_path, capsys, content, msg):
    spec = make_project(tmp_path / "p")
    prior = tmp_path / "prior.json"
    if content is not None:
        prior.write_text(content)
    assert _run(tmp_path, str(spec), "--baseline-report", str(prior)) == 2
    captured = capsys.readouterr()
    assert msg in captured.out + captured.err
    assert _report(tmp_path)["error"]["type"] == "ReportError"


def test_java_missing_exits_3_and_names_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PACKAGE_VALIDATE_JAVA_HOME", str(tmp_path / "no-jdk"))
    spec = make_project(tmp_path / "p")
    assert _run(tmp_path, str(spec)) == 3
    out = capsys.readouterr().out
    assert "Java 17+ not found" in out and "no bin/java" in out
    assert _report(tmp_path)["error"]["type"] == "ServerError"


def test_port_in_use_exits_3_naming_the_port(tmp_path, capsys):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        ports = {"inference": busy, "management": busy + 1, "metrics": busy + 2, "grpc_inference": busy + 3,
                 "grpc_management": busy + 4}
        spec = make_project(tmp_path / "p", spec_overrides={"serving": {"ports": ports}})
        assert _run(tmp_path, str(spec)) == 3
    out = capsys.readouterr().out
    assert f"inference port {busy} on 127.0.0.1 is in use" in out
    assert not leftover_processes(tmp_path)


def test_model_store_that_is_a_file_exits_2_before_any_stage_with_a_report(tmp_path, capsys):
    spec = make_project(tmp_path / "p")
    store = tmp_path / "store-file"
    store.write_text("not a folder")
    assert main(["run", str(spec), "--reports-dir", str(tmp_path / "reports"), "--model-store", str(store)]) == 2
    rep = _report(tmp_path)
    assert rep["error"]["type"] == "ArchiveError" and "is a file, not a folder" in rep["error"]["message"]
    assert "dataset" not in rep["stage_seconds"], "refused before any stage"


def test_a_bug_in_the_tool_is_an_internal_error_exit_3_with_the_traceback(tmp_path, capsys, monkeypatch):
    import pipeline.run.runner as runner

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug in the comparison")

    monkeypatch.setattr(runner, "compare_stages", broken)
    spec = make_project(tmp_path / "p")
    assert _run(tmp_path, str(spec), "--until", "export") == 3
    rep = _report(tmp_path)
    assert rep["error"]["type"] == "InternalError" and rep["status"] == "error" and rep["complete"] is False
    assert "not a verdict on the model" in rep["error"]["message"]
    assert any("simulated bug in the comparison" in d for d in rep["error"]["details"])
    assert any("runner.py" in d for d in rep["error"]["details"]), "the traceback's tail names where"


def test_user_factory_that_raises_is_the_users_input_error(tmp_path, capsys):
    spec = make_project(tmp_path / "p")
    (tmp_path / "p" / "tiny_model.py").write_text("def build():\n    raise ValueError('no such layer size')\n")
    assert _run(tmp_path, str(spec), "--until", "export") == 2
    rep = _report(tmp_path)
    assert rep["error"]["type"] == "UserCodeError" and "no such layer size" in rep["error"]["message"]
    assert "tiny_model.py:2" in rep["error"]["message"]
