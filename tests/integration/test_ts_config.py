"""--ts-config on a real TorchServe: a planted production file is served with the run's overrides, linted with
each finding's reference, and what the server applied is read back from the management API."""

import json
from pathlib import Path

import pytest

from tests.helpers import make_project
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.integration

PLANTED = """# every finding that can be planted while the server still runs on this machine
inference_address=http://0.0.0.0:8080
management_address=http://0.0.0.0:8081
metrics_address=http://0.0.0.0:8082
enable_model_api=true
allowed_urls=file:///srv/models/.*,https://.*
disable_token_authorization=true
install_py_dep_per_model=true
service_envelope=kserve
max_request_size=64
number_of_netty_threads=2
models={\\
  "tiny": {"1.0": {"batchSize": 4, "maxBatchDelay": 50}}\\
}
"""

PRODUCTION = """# a clean production file: timeouts and queue of its own
inference_address=http://0.0.0.0:8080
management_address=http://127.0.0.1:8081
metrics_address=http://127.0.0.1:8082
allowed_urls=https://models\\\\.example\\\\.com/[A-Za-z0-9_-]+\\\\.mar
number_of_netty_threads=2
netty_client_threads=1
default_response_timeout=45
job_queue_size=37
"""


def _run(tmp: Path, spec: Path, config: str):
    cfg = tmp / "config.properties"
    cfg.write_text(config, encoding="latin-1")
    res = run_cli("run", str(spec), "--ts-config", str(cfg), "--reports-dir", str(tmp / "reports"), "--no-publish")
    runs = sorted((tmp / "reports").glob("*/report.json"))
    assert len(runs) == 1, res.stdout + res.stderr
    return res, json.loads(runs[0].read_text()), runs[0].parent


def test_planted_config_is_linted_with_references_and_the_archive_batch_size_wins(no_leftovers):
    tmp = no_leftovers
    (tmp / "requirements.txt").write_text("numpy>=1\n")
    spec = make_project(tmp / "proj", rows=12, spec_overrides={
        "answers": {"envelope": "kserve_v1"}, "handler": {"requirements": str(tmp / "requirements.txt")},
        "serving": {"startup_timeout_s": 90, "batch_size": 1}})
    res, rep, run_dir = _run(tmp, spec, PLANTED)
    assert res.returncode == 1, res.stdout + res.stderr  # the gate fails (on the highs), the run completes
    sc = rep["serving_config"]
    refs = {f["id"]: f["reference"] for f in sc["lint"]["findings"]}
    assert "CVE-2023-43654" in refs["management-exposed"] and "CVE-2023-43654" in refs["model-api-open-urls"]
    assert "CVE-2024-35198" in refs["model-api-dotdot"]
    assert "#3163" in refs["token-auth-disabled"]
    assert "#2158" in refs["kserve-batching"]
    assert "unpinned-requirements" in refs and "max-request-size" in refs and "#2365" in refs["archive-overrides-models"]
    lint = next(c for c in rep["gate"]["checks"] if c["name"] == "config lint")
    assert not lint["passed"] and lint["is_gating"] and "token-auth-disabled" in lint["detail"]
    assert "config lint" in res.stdout
    # the server ran on loopback with token authorization on and the model API off, whatever the file says
    served = (run_dir / "torchserve" / "config.properties").read_text()
    assert "enable_model_api=false" in served and "disable_token_authorization=false" in served
    assert "install_py_dep_per_model=false" in served and "0.0.0.0" not in served
    assert "number_of_netty_threads=2" in served and "service_envelope=kserve" in served
    assert rep["stages"]["server"]["token_auth"] is True
    over = {o["key"]: o for o in sc["overrides"]}
    assert over["management_address"]["user_value"] == "http://0.0.0.0:8081"
    assert over["disable_token_authorization"]["used"] == "false" and over["enable_model_api"]["why"]
    # the small max_request_size is real: the server refused the rows, as production would
    assert rep["stages"]["replay"]["errors"].get("too_large", 0) > 0
    # models= asked batch 4; the archive's model-config.yaml (batch 1) is what the server applied
    batch = next(a for a in sc["applied"] if a["key"] == "batchSize")
    assert (batch["file_value"], batch["archive_value"], batch["served"], batch["applied"]) == (4, 1, 1, False)
    assert "#2365" in batch["cause"] and batch in sc["not_applied"]
    md = (run_dir / "report.md").read_text()
    assert "## TorchServe config" in md and "CVE-2024-35198" in md and "| batchSize | 4 (models=) | 1 | 1 | **no**" in md
    assert "CVE-2023-43654" in (run_dir / "report.html").read_text()


def test_production_timeout_and_queue_size_are_read_back_as_applied(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "proj", rows=12)  # serving.response_timeout_s and job_queue_size left unset
    res, rep, run_dir = _run(tmp, spec, PRODUCTION)
    assert res.returncode == 0, res.stdout + res.stderr
    sc = rep["serving_config"]
    applied = {a["key"]: a for a in sc["applied"]}
    t, q = applied["responseTimeout"], applied["jobQueueSize"]
    assert (t["file_value"], t["file_source"], t["served"], t["applied"]) == (45, "default_response_timeout", 45, True)
    assert (q["file_value"], q["file_source"], q["served"], q["applied"]) == (37, "job_queue_size", 37, True)
    assert sc["described"]["responseTimeout"] == 45 and sc["described"]["jobQueueStatus"]["remainingCapacity"] == 37
    assert sc["not_applied"] == []
    assert {f["id"] for f in sc["lint"]["findings"]} == {"inference-all-interfaces"}  # info: not failing
    assert next(c for c in rep["gate"]["checks"] if c["name"] == "config lint")["passed"]
    assert any("default_response_timeout" in n for n in rep["plan"]["notes"])
    served = (run_dir / "torchserve" / "config.properties").read_text()
    assert "netty_client_threads=1" in served and "job_queue_size=37" in served
