"""--ts-config: what the run keeps and replaces in the user's config.properties, the serving defaults it takes
from it, what the server applied beside what was asked, the lint in the gate, and `package-validate lint`."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.evaluate.gate import GateInputs, lint_check
from pipeline.lint import parse_properties
from pipeline.lint.rules import SEVERITIES
from pipeline.spec import GateSpec, load_spec
from pipeline.torchserve.config import OWNED, applied_settings, check_envelope, config_properties, lint_run, \
    merge_user_config, with_file_defaults, write_config
from pipeline.torchserve.process import Ports

ROOT = Path(__file__).resolve().parents[2]
PORTS = Ports(10001, 10002, 10003, 10004, 10005)
USER = """# production
inference_address=https://0.0.0.0:8443
management_address=http://0.0.0.0:8081
disable_token_authorization=true
enable_model_api=true
install_py_dep_per_model=true
number_of_netty_threads=4
netty_client_threads=2
default_response_timeout=60
job_queue_size=37
default_workers_per_model=2
service_envelope=kserve
vmargs=-Xmx2g -Dlog4j.configurationFile=/etc/ts/log4j2.xml
blacklist_env_vars=A\\nB
models={"mnist": {"1.0": {"batchSize": 4, "maxBatchDelay": 50}}}
"""


def _spec(tmp_path: Path, serving: dict | None = None, answers: dict | None = None):
    data = {"name": "digits", "model": {"factory": "model.py:build", "weights": "w.pt", "num_classes": 3},
            "dataset": {"path": "d.csv", "input_shape": [4]}, "serving": serving or {}, "answers": answers or {}}
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_spec(p)


def test_ts_config_path_is_relative_to_the_spec(tmp_path):
    spec = _spec(tmp_path, {"ts_config": "conf/config.properties"})
    assert spec.serving.ts_config == (tmp_path / "conf" / "config.properties").resolve()
    assert spec.gate.lint == ("high",)


def test_merge_replaces_only_the_owned_keys_and_lists_each(tmp_path):
    spec = _spec(tmp_path)
    tool = config_properties(spec, PORTS, tmp_path / "store", "digits.mar", "kserve")
    props, overrides = merge_user_config(parse_properties(USER), tool, "digits", "kserve")
    for key in OWNED:  # every owned key takes the tool's value, whatever the file says
        assert props[key] == str(tool.get(key, "false")), key
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "false"
    assert props["install_py_dep_per_model"] == "false"
    assert props["inference_address"] == "http://127.0.0.1:10001"
    for key in ("number_of_netty_threads", "netty_client_threads", "default_response_timeout", "job_queue_size",
                "default_workers_per_model", "service_envelope"):
        assert props[key] == parse_properties(USER).values[key], key  # kept as the file says
    assert json.loads(props["models"]) == {"digits": {"1.0": {"batchSize": 4, "maxBatchDelay": 50}}}
    assert props["vmargs"] == "-Xmx2g"
    by_key = {o.key: o for o in overrides}
    assert by_key["inference_address"].user_value == "https://0.0.0.0:8443"
    assert by_key["disable_token_authorization"].user_value == "true" and by_key["disable_token_authorization"].why
    assert by_key["model_store"].user_value is None  # unset in the file, still listed
    assert "mnist" in by_key["models"].user_value and "vmargs" in by_key
    assert "number_of_netty_threads" not in by_key and "service_envelope" not in by_key
    # what is written reads back the same through Java's rules
    write_config(tmp_path / "c.properties", props)
    assert parse_properties((tmp_path / "c.properties").read_text()).values == {k: str(v) for k, v in props.items()}


def test_file_defaults_fill_only_what_the_spec_leaves_unset(tmp_path):
    spec = _spec(tmp_path, {"workers": 1})
    got, notes = with_file_defaults(spec, parse_properties(USER))
    assert got.serving.workers == 1  # set in the spec: stays
    assert got.serving.response_timeout_s == 60 and got.serving.job_queue_size == 37
    assert len(notes) == 2 and any("default_response_timeout" in n for n in notes)
    with pytest.raises(ConfigError, match="not a whole number"):
        with_file_defaults(spec, parse_properties("job_queue_size=lots\n"))
    assert with_file_defaults(spec, parse_properties("job_queue_size=0\n"))[0].serving.job_queue_size == 100
    # a larger max_request_size is taken (images production accepts pass the dataset check); a smaller one stays
    # the spec's, served as the file says and found by the lint
    assert with_file_defaults(spec, parse_properties("max_request_size=20000000\n"))[0].serving.max_request_size \
        == 20_000_000
    assert with_file_defaults(spec, parse_properties("max_request_size=64\n"))[0].serving.max_request_size == 6_553_500


def test_the_envelope_must_agree_with_the_file(tmp_path):
    check_envelope(_spec(tmp_path, answers={"envelope": "kserve_v1"}), parse_properties("service_envelope=kserve\n"))
    with pytest.raises(ConfigError, match="answers.envelope to kserve_v1"):
        check_envelope(_spec(tmp_path), parse_properties("service_envelope=kserve\n"))
    with pytest.raises(ConfigError, match="service_envelope is unset"):
        check_envelope(_spec(tmp_path, answers={"envelope": "kserve_v2"}), parse_properties(""))


DESCRIBED = {"modelName": "digits", "batchSize": 1, "maxBatchDelay": 5, "minWorkers": 1, "maxWorkers": 1,
             "responseTimeout": 60, "startupTimeout": 120, "jobQueueStatus": {"remainingCapacity": 36,
                                                                            "pendingRequests": 1}}


def test_applied_settings_say_what_the_archive_overrode_and_why():
    props = {"models": json.dumps({"digits": {"1.0": {"batchSize": 4, "maxBatchDelay": 5}}}),
             "default_response_timeout": "60", "job_queue_size": "37", "default_workers_per_model": "1"}
    rows = {a.key: a for a in applied_settings(DESCRIBED, props, {"batchSize": 1, "maxBatchDelay": 5,
                                                                   "responseTimeout": 60}, "digits", "1.0")}
    b = rows["batchSize"]
    assert (b.file_value, b.file_source, b.archive_value, b.served, b.applied) == (4, "models=", 1, 1, False)
    assert "#2365" in b.cause and "model-config.yaml" in b.cause
    assert rows["maxBatchDelay"].applied and rows["maxBatchDelay"].cause == ""
    r = rows["responseTimeout"]
    assert (r.file_value, r.file_source, r.served, r.applied) == (60, "default_response_timeout", 60, True)
    q = rows["jobQueueSize"]
    assert (q.file_value, q.served, q.applied) == (37, 37, True)  # remaining capacity + pending
    odd = applied_settings({**DESCRIBED, "responseTimeout": 7}, props, {}, "digits", "1.0")
    t = next(a for a in odd if a.key == "responseTimeout")
    assert not t.applied and "ts_log.log" in t.cause
    # models= of another version is not asked of this one
    assert next(a for a in applied_settings(DESCRIBED, props, {}, "digits", "2.0") if a.key == "batchSize").applied


def test_the_tools_own_config_lints_clean_of_failing_findings(tmp_path):
    spec = _spec(tmp_path)
    found = lint_run(SimpleNamespace(spec=spec, ts_config=None), None, (120, "r1"), None)
    assert [f for f in found if f.severity in ("high", "medium")] == [], found
    # and the same run under the planted file finds them
    bad = lint_run(SimpleNamespace(spec=spec, ts_config=parse_properties(USER)), None, (120, "r1"), "kserve")
    assert {"management-exposed", "token-auth-disabled", "kserve-batching"} <= {f.id for f in bad}
    assert "unpinned-requirements" not in {f.id for f in bad}  # no archive, no requirements to read


def _finding(sev):
    return SimpleNamespace(id=f"rule-{sev}", severity=sev, key="k", reference="ref", fix="fix")


def test_lint_check_fails_on_the_severities_named():
    found = (_finding("high"), _finding("info"))
    c = lint_check(GateSpec(), GateInputs(lint_findings=found))
    assert not c.passed and c.is_gating and "rule-high" in c.detail and "ref" in c.detail
    assert "rule-info" not in c.detail
    assert lint_check(GateSpec(), GateInputs(lint_findings=(_finding("info"),))).passed
    assert not lint_check(GateSpec(lint=["info"]), GateInputs(lint_findings=(_finding("info"),))).passed
    off = lint_check(GateSpec(lint=[]), GateInputs(lint_findings=found))
    assert off.passed and not off.is_gating
    missing = lint_check(GateSpec(), GateInputs())
    assert not missing.passed and not missing.evaluated


def _cli(*args):
    code = ("import sys, runpy; sys.argv = ['package-validate', *sys.argv[1:]]\n"
            "from pipeline.cli import main\nrc = main(sys.argv[1:])\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\nsys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_lint_command_exit_codes_and_no_torch(tmp_path):
    bad = tmp_path / "bad.properties"
    bad.write_text("management_address=http://0.0.0.0:8081\ninference_address=http://0.0.0.0:8080\n")
    res = _cli("lint", str(bad))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "HIGH   management-exposed" in res.stdout and "CVE-2023-43654" in res.stdout and "FAIL" in res.stdout
    assert res.stderr.strip().endswith("NO-TORCH")
    info = tmp_path / "info.properties"
    info.write_text("inference_address=http://0.0.0.0:8080\nallowed_urls=file:///m/[a-z]+\\\\.mar\n")
    ok = _cli("lint", str(info))
    assert ok.returncode == 0 and "inference-all-interfaces" in ok.stdout, ok.stdout + ok.stderr
    assert _cli("lint", str(info), "--fail-on", "high,info").returncode == 1
    assert _cli("lint", str(tmp_path / "none.properties")).returncode == 2
    assert _cli("lint", str(info), "--fail-on", "severe").returncode == 2
    assert set(SEVERITIES) == {"high", "medium", "low", "info"}
