"""The config.properties parser and each lint rule, seen firing on a planted config and silent on a clean one."""

import json
import zipfile

import pytest

from pipeline.errors import ConfigError
from pipeline.lint import lint, lint_files, parse_properties, read_archive_facts
from pipeline.lint.properties import model_settings, models_setting
from pipeline.lint.rules import LintInput, failing, requirement_problems

MODELS = 'models={\\\n  "digits": {\\\n    "1.0": {"batchSize": 4, "maxBatchDelay": 50}\\\n  }\\\n}\n'


def test_parser_reads_java_properties_forms():
    p = parse_properties("# comment\n! also a comment\n  a=1\nb: two words \nc 3\nd\\:e = x\\ty\n"
                         "long = one \\\n     two\\\\\nu=\\u00e9t\\u00e9\nempty=\nb=last wins\n" + MODELS)
    assert p.values["a"] == "1"
    assert p.values["c"] == "3"
    assert p.values["d:e"] == "x\ty"
    assert p.values["long"] == "one two\\"
    assert p.values["u"] == "été"
    assert p.values["empty"] == ""
    assert p.values["b"] == "last wins"
    assert p.lines["b"] == 11 and p.lines["u"] == 9 and p.lines["a"] == 3
    assert "comment" not in " ".join(p.values)
    assert models_setting(p) == {"digits": {"1.0": {"batchSize": 4, "maxBatchDelay": 50}}}
    assert model_settings(p, "digits", "1.0") == ("1.0", {"batchSize": 4, "maxBatchDelay": 50})
    assert model_settings(p, "digits", "2.0") == (None, {})


def test_parser_refuses_bad_escape_and_bad_models_json():
    with pytest.raises(ConfigError, match="uXXXX"):
        parse_properties("a=\\u12g4\n")
    with pytest.raises(ConfigError, match="not valid JSON"):
        models_setting(parse_properties('models={"a": \n'))
    with pytest.raises(ConfigError, match="map each model name"):
        models_setting(parse_properties('models={"a": 1}\n'))


def ids(findings):
    return {f.id for f in findings}


def run(text, **kw):
    return lint(LintInput(props=parse_properties(text), **kw))


CLEAN = ("inference_address=http://127.0.0.1:8080\nmanagement_address=http://127.0.0.1:8081\n"
         "metrics_address=http://localhost:8082\nallowed_urls=file:///models/[a-z0-9_]+\\\\.mar\n"
         "job_queue_size=50\n")


def test_clean_config_has_no_findings():
    assert run(CLEAN) == ()


@pytest.mark.parametrize("line, rule, severity", [
    ("management_address=http://0.0.0.0:8081", "management-exposed", "high"),
    ("grpc_management_address=10.0.0.5", "management-exposed", "high"),
    ("metrics_address=http://0.0.0.0:8082", "metrics-exposed", "high"),
    ("enable_model_api=true\nallowed_urls=http(s)?://.*", "model-api-open-urls", "high"),
    ("disable_token_authorization=true", "token-auth-disabled", "high"),
    ("inference_address=http://0.0.0.0:8080", "inference-all-interfaces", "info"),
    ("max_batch_size=4", "unknown-key", "low"),
])
def test_each_config_rule_fires_on_its_plant(line, rule, severity):
    found = run(CLEAN + line + "\n")
    assert rule in ids(found)
    f = next(f for f in found if f.id == rule)
    assert f.severity == severity and f.reference and f.fix


def test_shelltorch_pair_names_the_cve_and_open_default():
    found = run("management_address=http://0.0.0.0:8081\nenable_model_api=true\n")
    refs = {f.id: f.reference for f in found}
    assert "CVE-2023-43654" in refs["management-exposed"] and "CVE-2023-43654" in refs["model-api-open-urls"]
    # the model API with allowed_urls restricted to one host is not "open"
    assert "model-api-open-urls" not in ids(run("enable_model_api=true\nallowed_urls=https://m\\\\.example\\\\.com/"
                                                 "[A-Za-z0-9_-]+\\\\.mar\n"))


def test_dotdot_patterns_are_found_and_closed_ones_pass():
    found = run("enable_model_api=true\nallowed_urls=file:///models/.*,https://m\\\\.example\\\\.com/[a-z]+\\\\.mar\n")
    dd = [f for f in found if f.id == "model-api-dotdot"]
    assert [f.value for f in dd] == ["file:///models/.*"]
    assert "CVE-2024-35198" in dd[0].reference
    assert "model-api-dotdot" not in ids(run("allowed_urls=file:///models/.*\n"))  # model API off: nothing to escape


def test_unpinned_requirements_only_when_installed_per_model():
    reqs = ("numpy==1.26.4 --hash=sha256:abc", "requests>=2", "pillow==10.0.0", "", "# c")
    on = run("install_py_dep_per_model=true\n", requirements=reqs)
    lines = [f.message for f in on if f.id == "unpinned-requirements"]
    assert len(lines) == 2 and "requests>=2" in lines[0] and "not pinned" in lines[0]
    assert "pillow" in lines[1] and "no --hash" in lines[1] and "not pinned" not in lines[1]
    assert "unpinned-requirements" not in ids(run("install_py_dep_per_model=false\n", requirements=reqs))
    assert requirement_problems(("-e git+https://x",))[0][2].startswith("a pip option")


def test_kserve_with_batching_from_models_or_archive():
    found = run("service_envelope=kserve\n" + MODELS, model_name="digits", model_version="1.0",
                model_config={"batchSize": 1})
    k = [f for f in found if f.id == "kserve-batching"]
    assert len(k) == 1 and "#2158" in k[0].reference and "models= batchSize 4" in k[0].message
    assert "kserve-batching" in ids(run("service_envelope=kservev2\n", model_name="m", model_config={"batchSize": 2}))
    assert "kserve-batching" not in ids(run("service_envelope=kserve\n", model_name="m", model_config={"batchSize": 1}))
    assert "kserve-batching" in ids(run("service_envelope=kserve\n" + MODELS))  # config alone: any model


def test_max_request_size_against_largest_body():
    found = run("max_request_size=100\n", largest_body=640, largest_body_id="r7")
    f = next(f for f in found if f.id == "max-request-size")
    assert f.severity == "high" and "640" in f.message and "r7" in f.message
    assert "max-request-size" not in ids(run("max_request_size=640\n", largest_body=640))
    assert "max-request-size" in ids(run("", largest_body=6_553_501))  # TorchServe's default limit


def test_archive_wins_and_models_for_other_names_or_versions():
    found = run(MODELS, model_name="digits", model_version="1.0", model_config={"batchSize": 1, "maxBatchDelay": 50})
    over = [f for f in found if f.id == "archive-overrides-models"]
    assert [f.key for f in over] == ["models.batchSize"] and "#2365" in over[0].reference
    assert "models-not-applied" in ids(run(MODELS, model_name="other", model_config={}))
    assert "models-not-applied" in ids(run(MODELS, model_name="digits", model_version="2.0", model_config={}))
    assert "batch-delay-zero" in ids(run("", model_name="m", model_config={"batchSize": 4, "maxBatchDelay": 0}))


def test_failing_selects_severities():
    found = run("disable_token_authorization=true\ninference_address=http://0.0.0.0:1\n")
    assert [f.id for f in failing(found, ("high",))] == ["token-auth-disabled"]
    assert {f.id for f in failing(found, ("high", "info"))} == {"token-auth-disabled", "inference-all-interfaces",
                                                               "allowed-urls-unset"}
    assert failing(found, ("low",)) == ()


def _mar(path, config: str, reqs: str | None):
    manifest = {"model": {"modelName": "digits", "modelVersion": "1.0", "configFile": "model-config.yaml",
                          **({"requirementsFile": "requirements.txt"} if reqs is not None else {})}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        zf.writestr("model-config.yaml", config)
        if reqs is not None:
            zf.writestr("requirements.txt", reqs)
    return path


def test_lint_files_reads_the_archive(tmp_path):
    cfg = tmp_path / "config.properties"
    cfg.write_text("install_py_dep_per_model=true\n" + MODELS, encoding="latin-1")
    mar = _mar(tmp_path / "digits.mar", "batchSize: 1\nmaxBatchDelay: 50\n", "torch>=2\n")
    facts = read_archive_facts(mar)
    assert facts.model_config == {"batchSize": 1, "maxBatchDelay": 50} and facts.requirements == ("torch>=2",)
    found = ids(lint_files(cfg, mar))
    assert {"unpinned-requirements", "archive-overrides-models"} <= found
    assert "archive-overrides-models" not in ids(lint_files(cfg))
    with pytest.raises(ConfigError, match="does not exist"):
        read_archive_facts(tmp_path / "none.mar")
    with pytest.raises(ConfigError, match="cannot be read"):
        lint_files(tmp_path / "missing.properties")
