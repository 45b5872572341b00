"""Reading TorchServe 0.12's metrics logs, on lines copied from real runs (tests/unit/data/README.md)."""

import os
import shutil
from pathlib import Path

import pytest

from pipeline.torchserve import logs

DATA = Path(__file__).parent / "data"
BATCH_A = ("fb8a5b96-99c4-4d72-a108-ecba3ed071ad", "19ac8748-d1d4-4067-ab56-17c35194650a",
           "41b3afe5-578a-4e33-955c-b714ac8d09ea", "ec6d7628-43ec-472d-9d0c-64ed32e00a24")
BATCH_C = ("87f07c4e-df10-46fc-a5d6-4f15f91bd1b8", "f9709525-a66e-460e-b5fb-17f89b17d276")
OWN_HANDLE = "6e4d43b2-f00c-4d0d-8f21-bae864b21bbd"  # a handler overriding handle: PredictionTime only


def test_parse_metric_reads_name_value_and_every_id_of_a_batch():
    first = (DATA / "model_metrics.log").read_text().splitlines()[0]
    assert logs.parse_metric(first) == ("HandlerTime", 179.03, BATCH_A)
    frontend = [ln for ln in (DATA / "ts_metrics.log").read_text().splitlines()
                if "ts_inference_latency_microseconds" in ln][0]
    assert logs.parse_metric(frontend) == ("ts_inference_latency_microseconds", 198462.661, ())
    assert logs.parse_metric("2026-12-02T03:05:31,924 [INFO ] W-9000 some log line") is None


def test_request_times_join_each_id_of_a_batch_to_its_batch_times():
    times = logs.read_request_times(DATA / "model_metrics.log")
    assert len(times) == 4 + 4 + 2 + 1
    for rid in BATCH_A:
        assert times[rid] == logs.RequestTime(prediction_ms=182.65, handler_ms=179.03, batch=4)
    for rid in BATCH_C:
        assert times[rid] == logs.RequestTime(prediction_ms=6.89, handler_ms=6.79, batch=2)
    assert times[OWN_HANDLE] == logs.RequestTime(prediction_ms=100.45, handler_ms=None, batch=1)
    # The older reader keeps its answer: PredictionTime per id.
    assert logs.read_server_times(DATA / "model_metrics.log")[BATCH_C[1]] == 6.89


def test_frontend_times_per_answered_request_after_the_warmup():
    every = logs.read_frontend_times(DATA / "ts_metrics.log")
    assert [len(every[k]) for k in ("frontend_ms", "queue_ms", "queue_gauge_ms")] == [8, 8, 8]
    assert every["frontend_ms"][0] == pytest.approx(198.462661)
    assert every["queue_ms"][4] == pytest.approx(209.688035)
    assert every["queue_gauge_ms"][4] == 209.0
    # The worker's load (WorkerThreadTime 10 ms, before any request) is not a request's.
    assert every["worker_thread_ms"] == [13.0, 20.0]
    after = logs.read_frontend_times(DATA / "ts_metrics.log", skip=4)
    assert after["frontend_ms"] == pytest.approx([254.303702, 253.913295, 257.941227, 256.059069])
    assert after["queue_gauge_ms"] == [209.0, 208.0, 207.0, 205.0]
    assert after["worker_thread_ms"] == [20.0]


def test_frontend_times_from_a_byte_offset(tmp_path):
    log = tmp_path / "ts_metrics.log"
    shutil.copy(DATA / "ts_metrics.log", log)
    since = logs.metrics_offset(log)
    with open(log, "a") as f:
        f.write((DATA / "ts_metrics.log").read_text().splitlines(keepends=True)[14])  # one more request's line
    got = logs.read_frontend_times(log, since=since)
    assert len(got["frontend_ms"]) == 1 and got["queue_ms"] == []
    assert logs.read_frontend_times(None)["frontend_ms"] == [] and logs.metrics_offset(None) == 0


def test_await_frontend_times_gives_up_after_its_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(logs, "FRONTEND_WAIT_S", 0.3)
    log = tmp_path / "ts_metrics.log"
    shutil.copy(DATA / "ts_metrics.log", log)
    assert len(logs.await_frontend_times(log, 0, 0, 100)["frontend_ms"]) == 8  # never 100: waited, then returned
    monkeypatch.setattr(logs, "FRONTEND_WAIT_S", 60.0)
    import time

    t0 = time.monotonic()
    assert len(logs.await_frontend_times(log, 0, 4, 4)["frontend_ms"]) == 4
    assert time.monotonic() - t0 < 30, "no wait when every request is there"


def test_await_request_times_waits_for_a_missing_prediction_time(tmp_path, monkeypatch):
    monkeypatch.setattr(logs, "METRICS_WAIT_S", 0.2)
    log = tmp_path / "model_metrics.log"
    lines = (DATA / "model_metrics.log").read_text().splitlines(keepends=True)
    log.write_text(lines[0])  # HandlerTime of batch A, its PredictionTime not yet written
    assert logs.await_request_times(log, {BATCH_A[0]})[BATCH_A[0]].prediction_ms is None
    log.write_text("".join(lines[:2]))
    assert logs.await_request_times(log, {BATCH_A[0]})[BATCH_A[0]].prediction_ms == 182.65
    assert logs.await_request_times(None, {"a"}) == {}


@pytest.mark.skipif(not hasattr(os, "SEEK_DATA"), reason="no SEEK_DATA")
def test_frontend_times_skip_lines_a_log_cap_punched_out(tmp_path):
    """Lines on both sides of a hole (what logcap punches) are read, the hole is skipped."""
    log = tmp_path / "ts_metrics.log"
    text = (DATA / "ts_metrics.log").read_bytes()
    with open(log, "wb") as f:
        f.write(text)
        f.seek(len(text) + (1 << 16))  # a sparse gap, as a punched hole reads
        f.write(text)
    got = logs.read_frontend_times(log)
    assert len(got["frontend_ms"]) == 16 and got["frontend_ms"][8] == pytest.approx(198.462661)
