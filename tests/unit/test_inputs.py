"""Bad raw inputs are input errors (exit 2) that name the rows or the field and the fix, before any server."""

import io
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pipeline.errors import ConfigError, DatasetError, UserCodeError
from pipeline.inputs.registry import load_rows, resolve_reference
from pipeline.run.plan import plan_run
from pipeline.spec import load_spec
from pipeline.stages.baseline import score_baseline
from tests.helpers import in_process, make_project
from tests.imaging import make_image_project
from tests.texts import make_text_project


def _edit(spec_path, **sections):
    data = yaml.safe_load(spec_path.read_text())
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    spec_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return spec_path


def test_missing_image_files_are_listed_with_their_ids(tmp_path):
    spec = make_image_project(tmp_path)
    (tmp_path / "img" / "red-03.png").unlink()
    (tmp_path / "img" / "blue-01.png").unlink()
    with pytest.raises(DatasetError) as e:
        load_rows(load_spec(spec))
    assert "2 image file(s) do not exist" in str(e.value)
    assert "id red-03" in str(e.value) and "id blue-01" in str(e.value)


def test_unreadable_image_fails_the_baseline_naming_the_row(tmp_path):
    p = in_process(make_image_project(tmp_path))
    (tmp_path / "img" / "green-02.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(DatasetError) as e:
        score_baseline(p.spec, p.model, load_rows(p.spec), p.plan.reference)
    assert "failed on 1 of 24 rows" in str(e.value) and "id green-02" in str(e.value)
    assert "UnidentifiedImageError" in str(e.value)


def test_image_folder_classes_are_the_sorted_sub_folders(tmp_path):
    for cls in ("cat", "ant"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / cls / "a.png")
    spec = make_project(tmp_path / "p", spec_overrides={"dataset": {"kind": "image", "path": str(tmp_path / "imgs")},
                                                        "model": {"factory": "tiny_model.py:build",
                                                                  "weights": "weights.pt", "num_classes": 3}})
    rows = load_rows(load_spec(spec))
    assert rows.ids == ("ant/a.png", "cat/a.png") and rows.labels.tolist() == [0, 1]
    assert "sorted sub-folder names: ['ant', 'cat']" in rows.notes[0]


def test_text_that_is_not_utf8_names_the_rows(tmp_path):
    spec = make_text_project(tmp_path)
    csv = tmp_path / "texts.csv"
    raw = csv.read_bytes().splitlines()
    raw[3] = raw[3].replace(b"alpha", b"alph\xe9") if b"alpha" in raw[3] else raw[3] + b"\xe9"
    csv.write_bytes(b"\n".join(raw) + b"\n")
    with pytest.raises(DatasetError) as e:
        load_rows(load_spec(spec))
    assert "1 line(s) hold text that is not valid UTF-8" in str(e.value) and "line 4 (first field 't002')" in str(e.value)


def test_text_kind_needs_a_reference_preprocessing(tmp_path):
    spec = _edit(make_text_project(tmp_path), model={"preprocess": None})
    with pytest.raises(ConfigError, match="dataset.kind text needs model.preprocess"):
        resolve_reference(load_spec(spec))


def test_json_rows_that_do_not_parse_are_listed(tmp_path):
    spec = make_project(tmp_path)
    df = pd.read_csv(tmp_path / "data.csv")
    df["record"] = [json.dumps({"f0": v}) for v in df.f0]
    df.loc[4, "record"] = "{not json"
    df.to_csv(tmp_path / "records.csv", index=False)
    _edit(spec, dataset={"kind": "json", "path": "records.csv", "json_column": "record", "input_shape": [1]})
    with pytest.raises(DatasetError) as e:
        load_rows(load_spec(spec))
    assert "1 row(s) of column 'record' are not valid JSON" in str(e.value) and "id row-004" in str(e.value)


def test_records_from_named_columns_travel_as_json_objects(tmp_path):
    spec = _edit(make_project(tmp_path), dataset={"kind": "json", "feature_columns": ["f0", "f1", "f2", "f3"]})
    rows = load_rows(load_spec(spec))
    record = json.loads(rows.body(0))
    assert set(record) == {"f0", "f1", "f2", "f3"} and rows.content_type == "application/json"
    ref = resolve_reference(load_spec(spec))
    assert ref.name == "builtin:records" and list(ref.fn(record).shape) == [4]


@pytest.mark.parametrize("labels, words", [
    ([0.5, 1.7], "regression targets"), (["0,2", "1"], "multi-label"),
])
def test_tasks_that_are_not_single_label_classification_are_refused(tmp_path, labels, words):
    spec = make_project(tmp_path)
    df = pd.read_csv(tmp_path / "data.csv")
    df["label"] = df["label"].astype(object)
    df.loc[0, "label"], df.loc[1, "label"] = labels
    df.to_csv(tmp_path / "data.csv", index=False)
    with pytest.raises(DatasetError, match=words):
        load_rows(load_spec(spec))


def test_a_tuple_for_a_model_of_one_input_names_what_ran_and_how_to_fix_it(tmp_path):
    spec = make_project(tmp_path)
    (tmp_path / "pair.py").write_text("import torch\n\ndef pre(view):\n    x = torch.tensor(view['features'])\n"
                                      "    return (x, x)\n")
    _edit(spec, model={"preprocess": "pair.py:pre"})
    with pytest.raises(UserCodeError) as e:
        in_process(spec)
    assert "one row gave (float32 [4], float32 [4]), given a batch dimension" in str(e.value)
    assert "a tuple for forward(*x)" in str(e.value) and "model.collate" in str(e.value)


@pytest.mark.parametrize("handler, words", [
    ("no_such_handler", "neither a handler of this project"),
    # validated now, for their own task: a classification spec naming one is told which task to set
    ("object_detector", r"answers detection \(model.task: detection\), but model.task is 'classification'"),
    ("image_segmenter", r"answers segmentation \(model.task: segmentation\)"),
])
def test_unknown_or_unvalidated_handlers_are_refused(tmp_path, handler, words):
    spec = _edit(make_project(tmp_path), handler=handler)
    with pytest.raises(ConfigError, match=words):
        plan_run(load_spec(spec))


def test_label_map_that_disagrees_with_class_names_is_refused(tmp_path):
    spec = make_image_project(tmp_path)
    (tmp_path / "index_to_name.json").write_text(json.dumps({"0": "red", "1": "blue", "2": "green"}))
    _edit(spec, handler={"name": str(tmp_path / "handler.py"), "extra_files": ["index_to_name.json"]})
    with pytest.raises(ConfigError) as e:
        plan_run(load_spec(spec))
    assert "disagree on 2 class(es)" in str(e.value) and "class 1: index_to_name.json 'blue'" in str(e.value)


@pytest.mark.parametrize("change, words", [
    ({"export": {"mode": "export"}, "handler": "image_classifier"}, "cannot load an AOTInductor .pt2"),
    ({"answers": {"envelope": "kserve_v2"}, "serving": {"batch_size": 4}}, "KServe envelopes answer only the first"),
    ({"handler": "image_classifier"}, "returns its top 5 classes but the model has 3"),
])
def test_combinations_torchserve_cannot_serve_are_refused_when_the_spec_loads(tmp_path, change, words):
    spec = _edit(make_image_project(tmp_path), **change)
    with pytest.raises(ConfigError, match=words):
        plan_run(load_spec(spec))


def test_missing_handler_requirement_is_an_input_error_and_present_ones_are_listed(tmp_path):
    spec = make_project(tmp_path)
    (tmp_path / "requirements.txt").write_text("numpy>=1.0\nno-such-package-xyz==1.0\n")
    _edit(spec, handler={"name": "tensor_classifier", "requirements": "requirements.txt"})
    with pytest.raises(ConfigError) as e:
        plan_run(load_spec(spec))
    assert "no-such-package-xyz is not installed" in str(e.value) and "never installs" in str(e.value)
    (tmp_path / "requirements.txt").write_text("numpy>=1.0\n")
    assert any(n.startswith("numpy ") for n in plan_run(load_spec(spec)).notes)


def test_image_folder_classes_are_every_visible_sub_folder_sorted_for_the_loader_and_init(tmp_path):
    from pipeline import scaffold
    from pipeline.inputs.image import folder_classes

    for name in ("b_cat", "a_dog", "c_empty", ".cache"):
        (tmp_path / name).mkdir()
    (tmp_path / "a_dog" / "1.png").write_bytes(b"x")
    (tmp_path / "b_cat" / "2.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not a class")
    # an empty class folder still holds its place in the class order (torchvision's ImageFolder order)
    assert folder_classes(tmp_path) == ["a_dog", "b_cat", "c_empty"]
    assert scaffold._image_folder_classes(tmp_path) == folder_classes(tmp_path)
