"""Bad data is an input error (exit 2) naming the row and the cause; messages name the cause and the fix."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.cli import main
from pipeline.errors import DatasetError, ModelError, UserCodeError
from pipeline.inputs.registry import load_rows
from pipeline.model.loading import load_model
from pipeline.spec import load_spec
from pipeline.stages.baseline import score_baseline
from pipeline.stages.dataset import load_dataset
from tests.helpers import in_process, make_project
from tests.imaging import make_image_project

FEATURES = ["f0", "f1", "f2", "f3"]


def _json_spec(tmp_path, lines: list[str]):
    spec = make_project(tmp_path / "p", spec_overrides={"dataset": {"kind": "json", "path": "data.jsonl",
                                                                     "feature_columns": FEATURES}})
    (tmp_path / "p" / "data.jsonl").write_text("\n".join(lines) + "\n")
    return load_spec(spec)


def _record(i: int, **extra) -> str:
    return json.dumps({"id": f"r{i}", "label": i % 3, **{f: 0.5 for f in FEATURES}, **extra})


def test_a_deeply_nested_record_is_an_input_error_naming_its_line(tmp_path):
    deep = '{"id": "r1", "label": 0, "f0": ' + "[" * 10_000 + "]" * 10_000 + "}"
    spec = _json_spec(tmp_path, [_record(0), deep, _record(2)])
    with pytest.raises(DatasetError) as e:
        load_dataset(spec)
    assert "line 2" in str(e.value) and "nested" in str(e.value) and e.value.exit_code == 2


def test_a_record_with_nan_is_an_input_error_naming_its_line(tmp_path):
    """json.loads reads NaN, but no JSON body can carry it: before, the encoder's ValueError was a tool bug."""
    spec = _json_spec(tmp_path, [_record(0), "", _record(1).replace("0.5", "NaN", 1)])
    with pytest.raises(DatasetError) as e:
        load_dataset(spec)
    assert "id r1 (line 3)" in str(e.value) and "NaN" in str(e.value)


def test_a_deeply_nested_json_cell_is_an_input_error_naming_its_row(tmp_path):
    spec = make_project(tmp_path / "p", spec_overrides={"dataset": {"kind": "json", "json_column": "doc"}})
    df = pd.DataFrame({"id": ["a", "b"], "label": [0, 1],
                       "doc": ['{"f0": 1}', "[" * 10_000 + "]" * 10_000]})
    df.to_csv(tmp_path / "p" / "data.csv", index=False)
    with pytest.raises(DatasetError) as e:
        load_dataset(load_spec(spec))
    assert "id b" in str(e.value) and "nested" in str(e.value)


def test_a_body_above_max_request_size_is_named_before_any_server(tmp_path, capsys):
    spec = make_project(tmp_path / "p", spec_overrides={
        "dataset": {"kind": "text", "path": "texts.csv", "text_column": "text", "input_shape": None},
        "model": {"preprocess": "tiny_model.py:build"},
        "handler": {"name": "text_classifier", "extra_files": ["source_vocab.pt"]},
        "serving": {"max_request_size": 1024}})
    torch.save({"hi": 0}, tmp_path / "p" / "source_vocab.pt")  # the plan checks text_classifier's vocabulary first
    pd.DataFrame({"id": ["short", "long"], "label": [0, 1], "text": ["hi", "x" * 5000]}).to_csv(
        tmp_path / "p" / "texts.csv", index=False)
    with pytest.raises(DatasetError) as e:
        load_dataset(load_spec(spec))
    msg = str(e.value)
    assert "id long" in msg and "5000 bytes" in msg and "1024" in msg
    assert "raise serving.max_request_size" in msg.lower() and "short" not in msg.split("\n", 1)[1]
    code = main(["run", str(spec), "--reports-dir", str(tmp_path / "r"), "--model-store", str(tmp_path / "s")])
    out = capsys.readouterr()
    assert code == 2 and "max_request_size" in out.out + out.err
    (report,) = (tmp_path / "r").glob("*/report.json")
    report = json.loads(report.read_text())
    assert report["error"]["type"] == "DatasetError" and "server" not in report["stages"]


def test_a_class_with_no_evaluation_rows_is_said(tmp_path):
    spec = make_project(tmp_path / "p")
    df = pd.read_csv(tmp_path / "p" / "data.csv")
    df[df.label != 2].to_csv(tmp_path / "p" / "data.csv", index=False)
    rows = load_dataset(load_spec(spec)).rows
    assert any("class 2" in n and "no evaluation rows" in n for n in rows.notes)


def test_a_semicolon_separated_csv_is_named(tmp_path):
    spec = make_project(tmp_path / "p")
    df = pd.read_csv(tmp_path / "p" / "data.csv")
    df.to_csv(tmp_path / "p" / "data.csv", index=False, sep=";")
    with pytest.raises(DatasetError) as e:
        load_dataset(load_spec(spec))
    assert "looks ';'-separated" in str(e.value)


def test_extra_feature_columns_are_named(tmp_path):
    spec = make_project(tmp_path / "p")
    df = pd.read_csv(tmp_path / "p" / "data.csv")
    df.insert(2, "split", 1)  # not the last columns: the extras are told by their names
    df.assign(fold=2).to_csv(tmp_path / "p" / "data.csv", index=False)
    with pytest.raises(DatasetError) as e:
        load_dataset(load_spec(spec))
    assert "['split', 'fold']" in str(e.value) and "dataset.feature_columns" in str(e.value)


@pytest.mark.parametrize("names", [None, ["x", "y", "z"]])
def test_an_empty_label_cell_names_the_row_not_a_class_nan(tmp_path, names):
    spec = make_project(tmp_path / "p", spec_overrides={"model": {"class_names": names}})
    df = pd.read_csv(tmp_path / "p" / "data.csv")
    if names:
        df["label"] = ["xyz"[v] for v in df.label]
    df["label"] = df["label"].astype(object)
    df.loc[5, "label"] = None
    df.to_csv(tmp_path / "p" / "data.csv", index=False)
    with pytest.raises(DatasetError) as e:
        load_dataset(load_spec(spec))
    msg = str(e.value)
    assert "row-005" in msg and "line 7" in msg and "empty" in msg and "nan" not in msg.lower()


def test_a_pickled_model_instead_of_a_state_dict_says_to_save_the_state_dict(tmp_path):
    spec_path = make_project(tmp_path / "p")
    spec = load_spec(spec_path)
    torch.save(load_model(spec), tmp_path / "p" / "weights.pt")
    with pytest.raises(ModelError) as e:
        load_model(spec)
    msg = str(e.value)
    assert "torch.save(model)" in msg and "pickled model object" in msg and "model.state_dict()" in msg
    assert "\x1b[" not in msg


def test_a_module_path_that_is_a_file_points_at_the_file(tmp_path, monkeypatch):
    spec_path = make_project(tmp_path / "p", spec_overrides={"model": {"factory": "tiny_model:build"}})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserCodeError) as e:
        load_model(load_spec(spec_path))
    assert "did you mean 'tiny_model.py:build'" in str(e.value)


def test_an_unreadable_image_outside_the_manifest_folder_names_the_resolved_path(tmp_path):
    p = in_process(make_image_project(tmp_path / "proj"))
    outside = tmp_path / "elsewhere" / "bad.png"
    outside.parent.mkdir()
    outside.write_bytes(b"not an image")
    df = pd.read_csv(tmp_path / "proj" / "manifest.csv")
    df.loc[0, "path"] = "../elsewhere/bad.png"
    df.to_csv(tmp_path / "proj" / "manifest.csv", index=False)
    with pytest.raises(DatasetError) as e:
        score_baseline(p.spec, p.model, load_rows(p.spec), p.plan.reference)
    assert str(outside) in str(e.value) and "BytesIO" not in str(e.value)


def test_a_grayscale_image_with_the_builtin_image_classifier_names_the_trap(tmp_path):
    spec_path = make_image_project(tmp_path, per_class=2,
                                   spec_overrides={"model": {"preprocess": "builtin:image_classifier"}})
    Image.fromarray(np.full((12, 12), 90, np.uint8), "L").save(tmp_path / "img" / "red-01.png")
    with pytest.raises(DatasetError) as e:
        in_process(spec_path)
    msg = str(e.value)
    assert "id red-01" in msg and "mode L" in msg and "#65" in msg and 'convert("RGB")' in msg


def test_a_non_rgb_image_for_the_builtin_handler_is_said_at_the_dataset_stage(tmp_path):
    """The reference converts to RGB (the baseline passes), the built-in handler would not: said before any stage."""
    spec_path = make_image_project(tmp_path, per_class=2, spec_overrides={"handler": {"name": "image_classifier"}})
    Image.new("RGBA", (12, 12)).save(tmp_path / "img" / "green-00.png")
    with pytest.raises(DatasetError) as e:
        load_dataset(load_spec(spec_path))
    msg = str(e.value)
    assert "id green-00: mode RGBA" in msg and "#65" in msg and "id red-00" not in msg


class _NotAModule:
    pass


def test_torch_text_in_a_weights_error_has_no_ansi_escapes(tmp_path):
    spec_path = make_project(tmp_path / "p")
    torch.save({"w": _NotAModule()}, tmp_path / "p" / "weights.pt")
    with pytest.raises(ModelError) as e:
        load_model(load_spec(spec_path))
    msg = str(e.value)
    assert "Unsupported global" in msg and "_NotAModule" in msg and "\x1b[" not in msg


def test_quoted_library_text_loses_ansi_escapes_and_is_cut_at_a_sentence_end():
    from pipeline.usercode import plain

    text = "Weights only load failed. \x1b[1mdo those steps only if you trust it\x1b[0m.\n\t(1) " + "x" * 400
    assert plain(text) == "Weights only load failed. do those steps only if you trust it."
