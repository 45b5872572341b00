"""The served model behind token auth, and validation against a server the pipeline did not start."""

import json

import pytest
import requests

from pipeline.run.options import RunOptions
from pipeline.run.runner import run_validation
from pipeline.stages.archive import ArchiveConfig, build_archive
from pipeline.stages.export import export_model
from pipeline.stages.serve import ServeConfig, serve_model
from tests.helpers import in_process, make_project

pytestmark = pytest.mark.integration


def test_token_auth_on_and_endpoint_mode(no_leftovers):
    tmp = no_leftovers
    spec_path = make_project(tmp / "proj", spec_overrides={"serving": {
        "workers": 2, "batch_size": 3, "max_batch_delay_ms": 7, "response_timeout_s": 11, "startup_timeout_s": 90}})
    p = in_process(spec_path)
    spec, data = p.spec, p.rows
    exported = export_model(spec, p.model, data, p.base, tmp / "run" / "export")
    archive = build_archive(spec, ArchiveConfig(work_dir=tmp / "run" / "archive"), p.plan.handler, exported,
                            p.base.input_shape)
    with serve_model(spec, ServeConfig(run_dir=tmp / "run", mar_path=archive.mar_path,
                                       startup_timeout_s=90)) as server:
        config = (tmp / "run" / "torchserve" / "config.properties").read_text()
        assert "disable_token_authorization" not in config and "enable_model_api=false" in config
        assert all(f"=http://127.0.0.1:" in line for line in config.splitlines() if line.split("=")[0].endswith("_address")
                   and not line.startswith("grpc"))
        described = requests.get(f"{server.management_url}/models/tiny", timeout=10,
                                 headers={"Authorization": f"Bearer {server.management_token}"}).json()[0]
        assert (described["batchSize"], described["maxBatchDelay"], described["responseTimeout"]) == (3, 7, 11)
        assert [w["status"] for w in described["workers"]] == ["READY", "READY"]
        body = {"features": data.features[0].tolist()}
        predict_url = f"{server.inference_url}/predictions/tiny"
        refused = requests.post(predict_url, json=body, timeout=10)
        assert refused.status_code == 400 and "Token Authorization failed" in refused.text
        ok = requests.post(predict_url, json=body, timeout=10,
                           headers={"Authorization": f"Bearer {server.inference_token}"})
        assert ok.status_code == 200 and ok.headers.get("x-request-id")
        outcome = run_validation(RunOptions(spec_path=spec_path, reports_dir=tmp / "reports",
                                            model_store=tmp / "store2", endpoint=server.inference_url, publish=False,
                                            endpoint_token=server.inference_token))
        assert outcome.exit_code == 0, outcome.report.get("error")
        assert outcome.report["stages"]["server"]["started_by_pipeline"] is False
        assert outcome.report["stages"]["replay"]["answered"] == len(data)
        # the pipeline never stops a server it did not start
        assert requests.post(predict_url, json=body, timeout=10,
                             headers={"Authorization": f"Bearer {server.inference_token}"}).status_code == 200
