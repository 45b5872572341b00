"""package-validate tune on the tiny image project: a point whose batches change answers is never
recommended, and a handler whose batching is faster gets a batch above 1.

Tiny ranges, a tiny budget, windows of 48 requests: each point is a re-registration on one server
(the model API on for tune only) or a restart, a second or a few.
"""

import json
import os

import pytest
import torch

from tests.imaging import image_handler, make_image_project
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.integration

TUNE = {"window_requests": 24, "warmup_requests": 8, "max_windows": 3, "stability_tolerance": 0.5,
        "apply": "register", "head_to_head_rounds": 1}
RANGES = ["--workers", "1", "--batch-sizes", "1,4", "--delays-ms", "20", "--concurrency", "1,4"]


def _tune(tmp, defect, handle_extra, tune=None, args=()):
    handler = image_handler(tmp / "handler.py", defect, handle_extra=handle_extra)
    spec = make_image_project(tmp / "proj", handler=handler, spec_overrides={"tune": {**TUNE, **(tune or {})}})
    res = run_cli("tune", str(spec), "--reports-dir", str(tmp / "reports"), "--budget-s", "40", *RANGES, *args,
                  timeout=240)
    (path,) = list((tmp / "reports").glob("*/tune.json"))
    return res, json.loads(path.read_text()), path.parent


def test_a_handler_that_mixes_rows_in_a_batch_is_marked_at_every_batched_point_and_batch_1_is_recommended(
        no_leftovers):
    res, doc, run_dir = _tune(no_leftovers, "mixes_rows_in_batches", "import time; time.sleep(0.01)", args=("--rate",))
    assert res.returncode == 0, res.stdout + res.stderr
    batched = [p for p in doc["guided"] if max(map(int, p["formed_batches"]), default=1) > 1]
    assert batched, doc["guided"]  # batches of more than one formed somewhere
    assert all(p["answers"] == "differ" for p in batched), batched
    assert all(p["answers"] == "same" for p in doc["guided"] if p not in batched), doc["guided"]
    assert doc["model_config"]["batchSize"] == 1 and doc["spec_fragment"]["serving"]["batch_size"] == 1
    assert doc["confirmed"]["answers"] == "same" and doc["confirmed"]["setting"] == doc["summary"]["recommended"][
        "setting"]
    assert "<td class='bad'>differ</td>" in (run_dir / "report.html").read_text()
    # open loop at the recommendation on the real server: at half its throughput the server keeps up, so the
    # measured throughput is the rate sent (a closed loop would run at about twice it)
    first = doc["rate"]["tried"][0]
    assert 0.7 * first["rate"] <= first["throughput_rps"] <= 1.15 * first["rate"], doc["rate"]
    assert all(t["answers"] == "same" for t in doc["rate"]["tried"]), doc["rate"]


def test_a_correct_handler_whose_batching_is_faster_gets_a_batch_above_1_and_threads_reach_the_worker(no_leftovers):
    # a fixed cost per handle() call: a batch of 4 pays it once for 4 rows; each call also writes the worker's
    # OMP_NUM_THREADS and torch's thread count, so the threads a point sets are seen where torch runs
    default = torch.get_num_threads()  # what a worker gets from the environment alone
    threads = 1 if default > 1 else 2
    seen = no_leftovers / "threads.txt"
    extra = ("import time, os, torch; time.sleep(0.03); "
             f"open({str(seen)!r}, 'a')"
             ".write(f\"{os.environ.get('OMP_NUM_THREADS')} {torch.get_num_threads()}\\n\")")
    res, doc, run_dir = _tune(no_leftovers, None, extra, tune={"p99_ms": 2000}, args=("--threads", str(threads)))
    assert res.returncode == 0, res.stdout + res.stderr
    pairs = {tuple(line.split()) for line in seen.read_text().splitlines()}
    own = os.environ.get("OMP_NUM_THREADS", "None")
    assert pairs == {(own, str(default)), (str(threads), str(threads))}, pairs  # set, and torch obeyed it
    assert any(p["threads"] == threads and p["phase"] == "workers/threads" for p in doc["guided"]), doc["guided"]
    # the in-process limit: one handle() call sleeps 30 ms, so batch 1 cannot pass 1/0.03 rows/s and batch 4 is ~4x it
    limit = doc["summary"]["in_process_limit_rows_per_s"]
    assert limit["1"] <= 1 / 0.03 and limit["4"] > 2.5 * limit["1"], limit
    default_point = doc["guided"][0]
    assert default_point["of_limit"] == pytest.approx(default_point["throughput_rps"] / limit["1"], rel=0.01)
    rec = doc["summary"]["recommended"]
    assert doc["model_config"]["batchSize"] == 4, doc["guided"]
    formed = next(p for p in doc["guided"] if p["setting"] == rec["setting"])["formed_batches"]
    assert max(map(int, formed)) > 1, formed  # batches formed, not only configured
    assert all(p["answers"] == "same" for p in doc["guided"]), doc["guided"]
    assert doc["summary"]["recommended_vs_default"] > 1.5, doc["summary"]
    assert (run_dir / "model-config.yaml").is_file() and (run_dir / "spec-fragment.yaml").is_file()
    assert "register" in doc["apply"] and doc["apply_figures"]["register_count"] >= 1
