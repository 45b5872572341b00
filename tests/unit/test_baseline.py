import pytest
import torch

from pipeline.errors import ModelError, UserCodeError
from pipeline.model.loading import load_model
from pipeline.spec import load_spec
from tests.helpers import in_process, make_project


def test_loads_and_scores(tmp_path):
    p = in_process(make_project(tmp_path))
    res = p.base
    assert res.scores.logits.shape == (60, 3)
    assert (res.scores.predictions == p.rows.labels).all()
    assert len(res.weights_sha256) == 64 and (res.scores.latencies_ms > 0).all()
    assert res.input_shape == (4,) and res.reference.name == "builtin:tensor"


def test_missing_weights(tmp_path):
    spec = load_spec(make_project(tmp_path))
    (tmp_path / "weights.pt").unlink()
    with pytest.raises(ModelError, match="weights.pt does not exist"):
        load_model(spec)


def test_truncated_weights(tmp_path):
    spec = load_spec(make_project(tmp_path))
    w = tmp_path / "weights.pt"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ModelError, match="could not be loaded.*truncated"):
        load_model(spec)


def test_wrong_architecture_lists_keys_and_shapes(tmp_path):
    spec = load_spec(make_project(tmp_path))
    state = torch.load(tmp_path / "weights.pt")
    state["fc2.weight"] = torch.zeros(5, 16)
    state["extra.bias"] = torch.zeros(2)
    del state["fc1.bias"]
    torch.save(state, tmp_path / "weights.pt")
    with pytest.raises(ModelError) as e:
        load_model(spec)
    msg = str(e.value)
    assert "fc1.bias" in msg and "extra.bias" in msg and "fc2.weight: model has shape [3, 16], weights file has [5, 16]" in msg


def test_unknown_factory_import_path(tmp_path):
    spec_path = make_project(tmp_path, spec_overrides={"model": {"factory": "no_such_pkg.models:build",
                                                                 "weights": "weights.pt", "num_classes": 3}})
    with pytest.raises(UserCodeError, match="cannot import 'no_such_pkg.models'"):
        load_model(load_spec(spec_path))


def test_factory_function_missing(tmp_path):
    spec_path = make_project(tmp_path, spec_overrides={"model": {"factory": "tiny_model.py:nope",
                                                                 "weights": "weights.pt", "num_classes": 3}})
    with pytest.raises(UserCodeError, match="no callable 'nope'"):
        load_model(load_spec(spec_path))
