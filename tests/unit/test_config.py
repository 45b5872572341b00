from pathlib import Path

import pytest
import yaml

from pipeline.spec import load_spec
from pipeline.errors import ConfigError
from tests.helpers import make_project


def _write(tmp_path: Path, data) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def _valid() -> dict:
    return {
        "name": "m",
        "model": {"factory": "model.py:build", "weights": "w.pt", "num_classes": 3},
        "dataset": {"path": "d.csv", "input_shape": [4]},
    }


def test_valid_spec_resolves_paths_against_its_folder(tmp_path):
    spec = load_spec(_write(tmp_path, _valid()))
    assert spec.model.weights == (tmp_path / "w.pt").resolve()
    assert spec.dataset.path == (tmp_path / "d.csv").resolve()
    assert spec.model.factory == f"{(tmp_path / 'model.py').resolve()}:build"
    assert spec.export.mode == "script"
    assert spec.gate.metrics["accuracy"].max_drop == 0.01
    assert spec.handler.name == "tensor_classifier" and spec.dataset.kind == "tensor"


def test_moved_tolerance_field_says_where_it_went(tmp_path):
    data = _valid()
    data["export"] = {"atol": 1e-4}
    with pytest.raises(ConfigError) as e:
        load_spec(_write(tmp_path, data))
    assert "export.atol: moved to gate.max_output_diff" in str(e.value)
    assert "unknown field" not in str(e.value)


def test_missing_spec_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_unknown_field_is_named_with_its_path(tmp_path):
    data = _valid()
    data["serving"] = {"wrokers": 2}
    with pytest.raises(ConfigError) as e:
        load_spec(_write(tmp_path, data))
    assert "serving.wrokers: unknown field" in str(e.value)


def test_wrong_type_names_field_value_and_allowed(tmp_path):
    data = _valid()
    data["gate"] = {"metrics": {"recall_macro": {"min": "high"}}}
    with pytest.raises(ConfigError) as e:
        load_spec(_write(tmp_path, data))
    msg = str(e.value)
    assert "gate.metrics.recall_macro.min" in msg and "'high'" in msg and "number" in msg


def test_every_invalid_field_is_listed_at_once(tmp_path):
    data = _valid()
    data["export"] = {"mode": "onnx"}
    data["replay"] = {"concurrency": 0}
    with pytest.raises(ConfigError) as e:
        load_spec(_write(tmp_path, data))
    assert "export.mode" in str(e.value) and "replay.concurrency" in str(e.value)
    assert "2 invalid field(s)" in str(e.value)


def test_bad_factory_and_positive_class_out_of_range(tmp_path):
    data = _valid()
    data["model"]["factory"] = "no_colon_here"
    data["gate"] = {"positive_class": 5}
    with pytest.raises(ConfigError, match="model.factory"):
        load_spec(_write(tmp_path, data))
    data["model"]["factory"] = "model.py:build"
    with pytest.raises(ConfigError, match="positive_class is 5 but the model has 3 classes"):
        load_spec(_write(tmp_path, data))


def test_not_yaml_and_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(_write(tmp_path, "name: [unclosed"))
    with pytest.raises(ConfigError, match="mapping"):
        load_spec(_write(tmp_path, "- a\n- b\n"))


def test_fixture_project_spec_loads(tmp_path):
    spec = load_spec(make_project(tmp_path))
    assert spec.name == "tiny" and spec.dataset.input_shape == (4,)
