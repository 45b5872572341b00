"""Faults during serving and replay: every row accounted for, the right exit code, nothing left running."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from tests.helpers import leftover_processes, make_project, write_handler
from tests.integration.conftest import ROOT, run_cli
from tests.integration.test_end_to_end import FLIPPING_HANDLER

pytestmark = pytest.mark.integration

FAULTY_HANDLER = '''
import json
import os
import time

import torch


class Faulty:
    """Raises on rows with f1 > 1.5, answers garbage for f2 > 1.5, sleeps past the timeout for f3 > SLOW
    when $PV_TEST_DELAY_ON is set (so only where the spec's serving.env sets it: in TorchServe's worker)."""

    def initialize(self, context):
        d = context.system_properties.get("model_dir")
        self.model = torch.jit.load(os.path.join(d, context.manifest["model"]["serializedFile"]))
        self.batch_mismatch = BATCH_MISMATCH

    def handle(self, data, context):
        out = []
        for req in data:
            body = req.get("body") or req.get("data")
            body = json.loads(body) if isinstance(body, (bytes, str)) else body
            f = body["features"]
            if f[1] > 1.5:
                raise RuntimeError(f"feature f1={f[1]:.3f} is out of range for this handler")
            if f[3] > SLOW and os.environ.get("PV_TEST_DELAY_ON"):
                time.sleep(5)
            logits = self.model(torch.tensor(f, dtype=torch.float32).reshape(1, -1))[0]
            if f[2] > 1.5:
                out.append("this is not json")
                continue
            out.append(json.dumps({"prediction": int(logits.argmax()),
                                   "probabilities": torch.softmax(logits.double(), 0).tolist(),
                                   "logits": logits.tolist()}))
        if self.batch_mismatch and len(out) > 1:
            return out[:-1]
        return out
'''


def _handler(tmp: Path, slow: float = 99.0, batch_mismatch: bool = False) -> Path:
    src = FAULTY_HANDLER.replace("> SLOW", f"> {slow!r}").replace("BATCH_MISMATCH", repr(batch_mismatch))
    return write_handler(tmp / "faulty_handler.py", src)


def _report(tmp: Path) -> dict:
    (path,) = list((tmp / "reports").glob("*/report.json"))
    return json.loads(path.read_text())


def _rows(tmp: Path) -> pd.DataFrame:
    return pd.read_csv(tmp / "proj" / "data.csv")


def test_handler_errors_and_malformed_answers_are_counted_and_fail_the_gate(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "proj", rows=80, spec_overrides={"handler": str(_handler(tmp))})
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"))
    assert res.returncode == 1, res.stdout + res.stderr
    rep = _report(tmp)
    df = _rows(tmp)
    raising = int((df.f1 > 1.5).sum())
    garbage = int(((df.f2 > 1.5) & (df.f1 <= 1.5)).sum())
    assert raising and garbage, "the fixture must exercise both faults"
    rp = rep["stages"]["replay"]
    assert rp["errors"] == {"handler_error": raising, "bad_response": garbage}
    assert rp["answered"] + rp["failed"] == 80 and rp["complete"] is True
    assert rep["stages"]["handled"]["batch1"]["errors"] == rp["errors"], "found in-process already"
    error_rate = next(c for c in rep["gate"]["checks"] if c["name"] == "served error rate")
    assert not error_rate["passed"] and "handler_error" in error_rate["detail"]
    # the handler's own exception, quoted from TorchServe's model log where the user looks
    assert "RuntimeError: feature f1=" in res.stdout and "out of range for this handler" in res.stdout
    assert any("RuntimeError: feature f1=" in line for exc in rep["server_failures"] for line in exc)
    rows = pd.read_parquet(Path(rep["run_dir"]) / "rows.parquet")
    assert len(rows) == 80
    failed = rows[rows.served_error_class == "bad_response"]
    assert len(failed) == garbage and failed.served_message.str.contains("not json").all()
    raised = rows[rows.served_error_class == "handler_error"]
    assert sorted(raised["id"]) == sorted(df.loc[df.f1 > 1.5, "id"])
    # Where the time goes: a handler overriding handle logs no HandlerTime; every row is accounted for and said.
    b = rep["served_latency_split"]["breakdown"]
    assert b["rows"] == {"joined": 0, "prediction_only": 80 - raising - garbage, "no_server_time": 0,
                         "no_request_id": 0, "failed": raising + garbage}
    assert any("no HandlerTime" in n for n in b["notes"]) and any("failed row(s)" in n for n in b["notes"])
    assert b["frontend_logged"] == 80 - raising  # the frontend logs every 200 answer, garbage ones too


def test_batch_with_wrong_number_of_results_is_classified(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "proj", rows=40, spec_overrides={
        "handler": str(_handler(tmp, batch_mismatch=True)),
        "serving": {"batch_size": 4, "max_batch_delay_ms": 200, "startup_timeout_s": 90},
        "replay": {"concurrency": 4, "warmup_requests": 0},
    })
    df = _rows(tmp)
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"))
    assert res.returncode == 1, res.stdout + res.stderr
    rep = _report(tmp)
    errors = rep["stages"]["replay"]["errors"]
    assert errors.get("batch_mismatch", 0) > 0, errors
    assert rep["stages"]["replay"]["answered"] + rep["stages"]["replay"]["failed"] == len(df)


def test_worker_slower_than_response_timeout_exits_3_with_cause(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "proj", rows=30, spec_overrides={
        "handler": str(_handler(tmp, slow=1.8)),
        "serving": {"response_timeout_s": 1, "startup_timeout_s": 90, "env": {"PV_TEST_DELAY_ON": "1"}},
    })
    df = _rows(tmp)
    assert (df.f3 > 1.8).any()
    t0 = time.monotonic()
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"))
    assert res.returncode == 3, res.stdout + res.stderr
    assert time.monotonic() - t0 < 240
    rep = _report(tmp)
    assert rep["error"]["type"] == "ReplayError" and "worker_died" in rep["error"]["message"]
    assert any("did not respond in given time" in d for d in rep["error"]["details"][:3]), rep["error"]
    assert rep["complete"] is False


def _start_cli(tmp: Path, spec: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(spec), "--reports-dir", str(tmp / "reports"),
                             "--model-store", str(tmp / "store"), *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_replay(tmp: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = list((tmp / "reports").glob("*/torchserve/logs/access_log.log"))
        if logs and logs[0].read_text(errors="replace").count("POST /predictions/") >= 30:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("replay never started")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_replay_writes_partial_report_and_leaves_nothing(no_leftovers, sig, code):
    tmp = no_leftovers
    spec = make_project(tmp / "proj", rows=1000)
    proc = _start_cli(tmp, spec, "--rate", "100")
    _wait_for_replay(tmp, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    left = leftover_processes(tmp)  # right after the CLI returned, no waiting
    assert proc.returncode == code, out + err
    assert not left, f"alive after the CLI returned: {left}"
    rep = _report(tmp)
    assert rep["status"] == "interrupted" and rep["complete"] is False and rep["verdict"] == "INTERRUPTED"


def test_torchserve_killed_mid_replay_marks_report_incomplete(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "proj", rows=1000)
    proc = _start_cli(tmp, spec, "--rate", "100")
    _wait_for_replay(tmp, proc)
    java = [p for p in psutil.process_iter(["pid", "name"]) if p.info["name"] == "java"
            and any(str(tmp) in part for part in p.cmdline())]
    assert len(java) == 1, java
    java[0].kill()  # the frontend this test's own run started
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, out + err
    rep = _report(tmp)
    assert rep["complete"] is False and rep["stages"]["replay"]["complete"] is False
    assert rep["stages"]["replay"]["errors"].get("not_sent", 0) > 0
    assert rep["stages"]["replay"]["answered"] + rep["stages"]["replay"]["failed"] == 1000


def _start_cli_in(tmp: Path, spec: Path, store: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(spec), "--reports-dir", str(tmp / "reports"),
                             "--model-store", str(store), *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_runs_into_two_stores_do_not_collide(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "proj")
    a = _start_cli_in(tmp, spec, tmp / "store-a", "--force")
    b = _start_cli_in(tmp, spec, tmp / "store-b", "--force")
    out_a, err_a = a.communicate(timeout=300)
    out_b, err_b = b.communicate(timeout=300)
    assert a.returncode == 0, out_a + err_a
    assert b.returncode == 0, out_b + err_b
    reports = [json.loads(p.read_text()) for p in (tmp / "reports").glob("*/report.json")]
    assert len(reports) == 2 and reports[0]["run_dir"] != reports[1]["run_dir"]
    urls = {r["stages"]["server"]["inference_url"] for r in reports}
    assert len(urls) == 2, "each run has its own ports"


def _lock_holder_started(store: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lock = store / ".tiny.mar.lock"
        if lock.is_file() and lock.read_text().strip():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("the first run never took the store lock")


def test_a_second_run_into_the_same_store_fails_naming_the_first_or_waits(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "proj", rows=200)
    store = tmp / "store"
    first = _start_cli_in(tmp, spec, store, "--force", "--rate", "40")
    _lock_holder_started(store, first)
    second = _start_cli_in(tmp, spec, store, "--force")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 3, out + err
    assert f"pid {first.pid}" in out and "another run is validating tiny" in out and "--wait" in out
    waiting = _start_cli_in(tmp, spec, store, "--force", "--wait")
    out_w, err_w = waiting.communicate(timeout=400)
    out_f, err_f = first.communicate(timeout=60)
    assert first.returncode == 0, out_f + err_f
    assert waiting.returncode == 0, out_w + err_w
    published = [json.loads(p.read_text()).get("published") for p in (tmp / "reports").glob("*/report.json")]
    assert sorted(p for p in published if p) == [str(store / "tiny.mar")] * 2
    assert not (store / ".tiny.mar.lock").read_text().strip(), "the lock is released"


def test_force_never_replaces_a_release_with_an_archive_that_failed_its_gate(no_leftovers):
    tmp = no_leftovers
    store = tmp / "store"
    spec = make_project(tmp / "proj")
    good = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(store))
    assert good.returncode == 0, good.stdout + good.stderr
    released = (store / "tiny.mar").read_bytes()
    handler = write_handler(tmp / "flip.py", FLIPPING_HANDLER)
    bad_spec = make_project(tmp / "proj2", spec_overrides={"handler": str(handler)})
    bad = run_cli("run", str(bad_spec), "--reports-dir", str(tmp / "reports2"), "--model-store", str(store), "--force")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert (store / "tiny.mar").read_bytes() == released
    assert "published" not in bad.stdout.split("report:")[0] or "published: no" in bad.stdout




def test_sigkill_of_the_run_stops_torchserve_and_its_workers_within_seconds(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "proj", rows=1000)
    proc = _start_cli(tmp, spec, "--rate", "100")
    _wait_for_replay(tmp, proc)
    assert leftover_processes(tmp), "TorchServe runs during the replay"
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 20
    while leftover_processes(tmp) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leftover_processes(tmp), "the guardian stops TorchServe when the run dies"


def _wait_for_stop(tmp: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the run has begun to stop its server: one process of TorchServe's group is gone (or all)."""
    before = set(leftover_processes(tmp))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None or before - set(leftover_processes(tmp)):
            return
        time.sleep(0.05)
    raise AssertionError("the run never began to stop its server")


def test_ctrl_c_twice_while_serving_ends_130_with_a_report_and_nothing_published(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "proj", rows=1000)
    proc = _start_cli(tmp, spec, "--rate", "100")
    _wait_for_replay(tmp, proc)
    proc.send_signal(signal.SIGINT)
    _wait_for_stop(tmp, proc)
    proc.send_signal(signal.SIGINT)  # while TorchServe stops, or while the report is written
    out, err = proc.communicate(timeout=90)
    left = leftover_processes(tmp)
    assert proc.returncode == 130, out + err
    assert not left, f"alive after the CLI returned: {left}"
    rep = _report(tmp)
    assert rep["status"] == "interrupted" and rep["published"] is None
    assert not (tmp / "store" / "tiny.mar").exists()
    assert "Traceback" not in err


def test_the_run_deadline_ends_a_slow_replay_with_exit_3_and_a_partial_report(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "proj", rows=2400)  # 120 s of replay at 20 rows/s: far beyond the deadline
    t0 = time.monotonic()
    res = run_cli("run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"),
                  "--rate", "20", "--timeout", "30")
    left = leftover_processes(tmp)
    assert res.returncode == 3, res.stdout + res.stderr
    assert not left, f"alive after the CLI returned: {left}"
    assert time.monotonic() - t0 < 90  # the 30 s deadline, the server's stop and the report, on a busy machine
    rep = _report(tmp)
    assert rep["error"]["type"] == "DeadlineError" and "timeout_s" in rep["error"]["message"]
    assert rep["complete"] is False and rep["published"] is None


def test_a_killed_worker_is_a_server_failure_not_a_failed_model(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "proj", rows=1000)
    proc = _start_cli(tmp, spec, "--rate", "100")
    _wait_for_replay(tmp, proc)
    workers = [p for p in psutil.process_iter(["pid", "cmdline"]) if "model_service_worker" in " ".join(
        p.info["cmdline"] or []) and str(tmp) in p.environ().get("PACKAGE_VALIDATE_RUN", "")]
    assert len(workers) == 1, workers
    workers[0].kill()  # the worker this test's own run started
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 3, out + err
    rep = _report(tmp)
    assert rep["status"] == "error" and rep["error"]["type"] == "ReplayError"
    assert "the worker died 1 time(s) during the replay" in rep["error"]["message"]
    assert "VERDICT: ERROR (exit 3)" in out
