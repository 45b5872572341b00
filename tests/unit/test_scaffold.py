"""``package-validate init``: what it infers from a table, an image folder and a model, and what it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from pipeline.errors import ConfigError, DatasetError
from pipeline.scaffold import (InitConfig, fit_input_shape, guess_table, parse_shape, shape_candidates,
                               write_spec)
from pipeline.spec import load_spec
from tests.helpers import make_project

# ---------------------------------------------------------------- columns and kinds


def _frame(**cols) -> pd.DataFrame:
    return pd.DataFrame(cols)


def test_numeric_table_is_tensor_with_id_and_label_by_name():
    df = _frame(id=["a", "b", "c"], label=[0, 1, 0], f0=[1.0, 2.0, 3.0], f1=[4, 5, 6])
    g = guess_table(df, Path("."))
    assert (g.kind, g.id_column, g.label_column) == ("tensor", "id", "label")
    assert g.feature_columns == ("f0", "f1") and g.features_are_default
    assert any("label column 'label'" in r for r in g.reasons)


def test_label_named_target_and_the_only_unique_string_column_is_the_id():
    df = _frame(name=["x", "y", "z"], Target=[1, 0, 1], a=[0.1, 0.2, 0.3])
    g = guess_table(df, Path("."))
    assert (g.kind, g.id_column, g.label_column) == ("tensor", "name", "Target")
    assert any("only non-numeric column" in r for r in g.reasons)


def test_non_numeric_columns_are_left_out_of_the_features_and_said_so():
    df = _frame(id=[1, 2, 3], label=[0, 1, 1], split=["a", "b", "a"], note=["p", "q", "r"], f=[1.0, 2.0, 3.0])
    g = guess_table(df, Path("."))
    assert g.kind == "tensor" and g.feature_columns == ("f",) and not g.features_are_default
    assert {line.split(":")[0] for line in g.ignored} == {"split", "note"}


def test_a_long_text_column_without_numeric_features_is_text():
    df = _frame(id=["1", "2"], label=["spam", "ham"], title=["hi", "yo"],
                body=["a much longer message about things", "another long text with many words"])
    g = guess_table(df, Path("."))
    assert (g.kind, g.text_column) == ("text", "body")
    assert any("title" in line for line in g.ignored)


def test_a_column_of_existing_image_paths_is_an_image_manifest(tmp_path):
    from PIL import Image

    for n in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / n)
    df = _frame(file=["a.png", "b.png"], label=["cat", "dog"])
    g = guess_table(df, tmp_path)
    assert (g.kind, g.path_column, g.id_column) == ("image", "file", None)


def test_no_label_column_names_the_flag():
    with pytest.raises(DatasetError, match="--label-column"):
        guess_table(_frame(id=[1, 2], y_true=[0, 1], f=[1.0, 2.0]), Path("."))


def test_no_unique_id_column_says_how_to_add_one():
    with pytest.raises(DatasetError, match="--id-column"):
        guess_table(_frame(id=[1, 1], label=[0, 1], f=[1.0, 2.0]), Path("."))


def test_given_columns_must_exist():
    with pytest.raises(DatasetError, match="'lbl' is not a column"):
        guess_table(_frame(id=[1, 2], label=[0, 1]), Path("."), label_column="lbl")


# ---------------------------------------------------------------- input shapes


def test_shape_candidates_flat_first_then_images():
    c = shape_candidates(64)
    assert c[:2] == [(64,), (1, 64)]
    assert (1, 8, 8) in c and c.index((1, 8, 8)) < c.index((1, 4, 16))
    assert (8, 8) in c and (1, 2, 32) in c
    assert shape_candidates(7) == [(7,), (1, 7)]
    assert (3, 4, 4) in shape_candidates(48)


class _Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


def test_fit_picks_the_image_shape_a_conv_net_runs_on():
    torch.manual_seed(0)
    model = _Conv().eval()
    x = np.random.default_rng(0).normal(size=(20, 16)).astype(np.float32)
    with torch.no_grad():
        labels = model(torch.from_numpy(x).reshape(20, 1, 4, 4)).argmax(1).numpy()
    best, trials = fit_input_shape(model, x, labels)
    assert best.shape == (1, 4, 4) and best.width == 3 and best.accuracy == 1.0
    assert {t.shape for t in trials if not t.fits} >= {(16,), (1, 16)}


def test_fit_rejects_an_output_that_is_not_batch_by_classes():
    model = nn.Linear(6, 2).eval()  # [1, 6] would give [1, 1, 2]: not [batch, classes]
    best, trials = fit_input_shape(model, np.zeros((4, 6), np.float32))
    assert best.shape == (6,)
    assert "expected [batch, classes]" in next(t.error for t in trials if t.shape == (1, 6))


def test_no_fitting_shape_lists_every_candidate_with_its_error():
    model = nn.Linear(5, 2).eval()
    with pytest.raises(ConfigError, match="none of the 7 input shape") as e:
        fit_input_shape(model, np.zeros((3, 12), np.float32), what="the tiny model")
    text = str(e.value)
    assert "--input-shape" in text
    for shape in ("[12]: ", "[1, 12]: ", "[3, 2, 2]: ", "[1, 3, 4]: "):
        assert shape in text


def test_parse_shape():
    assert parse_shape("1,8,8") == parse_shape("[1, 8, 8]") == parse_shape("1x8x8") == (1, 8, 8)
    with pytest.raises(ConfigError, match="--input-shape"):
        parse_shape("1,0")


# ---------------------------------------------------------------- whole specs


def _init(tmp_path: Path, **kw) -> tuple:
    cfg = InitConfig(base_dir=tmp_path, **kw)
    result = write_spec(cfg)
    return result, result.spec_path.read_text()


def test_tensor_project_gives_a_spec_the_run_reads(tmp_path):
    make_project(tmp_path / "p")
    (tmp_path / "p" / "spec.yaml").unlink()
    result, text = _init(tmp_path / "p", factory="tiny_model.py:build", weights=Path("weights.pt"),
                         data=Path("data.csv"))
    spec = load_spec(result.spec_path)
    assert spec.dataset.kind == "tensor" and spec.dataset.input_shape == (4,) and spec.model.num_classes == 3
    assert spec.handler.name == "tensor_classifier" and spec.export.mode == "script"
    assert spec.name == "tiny_model" and spec.dataset.train_path is None
    assert "factory: tiny_model.py:build" in text and "path: data.csv" in text  # relative beside the spec
    assert "# feature_columns: every other column, 4 numeric: f0 .. f3" in text
    assert "accuracy 1.0000" in text and "positive_class" not in text  # 3 classes: no binary TODO
    assert any(d.startswith("checked: the spec parses, 60 rows load") for d in result.decisions)


def test_existing_spec_is_never_overwritten_without_force(tmp_path):
    make_project(tmp_path / "p")
    spec = tmp_path / "p" / "spec.yaml"
    before = spec.read_text()
    kw = dict(factory="tiny_model.py:build", weights=Path("weights.pt"), data=Path("data.csv"))
    with pytest.raises(ConfigError, match="--force"):
        _init(tmp_path / "p", **kw)
    assert spec.read_text() == before
    _init(tmp_path / "p", force=True, **kw)
    assert spec.read_text() != before and load_spec(spec).dataset.input_shape == (4,)


def test_binary_labels_as_names_give_class_names_and_a_positive_class_todo(tmp_path):
    make_project(tmp_path / "p")
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    torch.save(model.state_dict(), tmp_path / "p" / "w2.pt")
    (tmp_path / "p" / "lin.py").write_text("from torch import nn\n\ndef build():\n    return nn.Linear(4, 2)\n")
    df = pd.read_csv(tmp_path / "p" / "data.csv")
    with torch.no_grad():
        pred = model(torch.tensor(df[["f0", "f1", "f2", "f3"]].to_numpy(np.float32))).argmax(1).numpy()
    df["label"] = np.where(pred == 1, "yes", "no")
    df.to_csv(tmp_path / "p" / "test.csv", index=False)
    df.to_csv(tmp_path / "p" / "train.csv", index=False)
    result, text = _init(tmp_path / "p", factory="lin.py:build", weights=Path("w2.pt"), data=Path("test.csv"),
                         out=Path("out/spec.yaml"), name="yesno")
    spec = result.spec
    assert spec.model.class_names == ("no", "yes") and spec.name == "yesno"
    assert spec.dataset.train_path == (tmp_path / "p" / "train.csv").resolve()
    assert "# positive_class: 1" in text and any("binary model" in t for t in result.todos)
    assert any("appear in" in t and "leakage" in t for t in result.todos)  # the same rows in train and test


def test_text_needs_the_models_preprocessing(tmp_path):
    (tmp_path / "m.py").write_text("from torch import nn\n\ndef build():\n    return nn.Linear(8, 2)\n")
    torch.save(nn.Linear(8, 2).state_dict(), tmp_path / "w.pt")
    pd.DataFrame({"id": ["1", "2"], "label": [0, 1], "text": ["hello there", "good bye now"]}).to_csv(
        tmp_path / "t.csv", index=False)
    with pytest.raises(ConfigError, match="--preprocess"):
        _init(tmp_path, factory="m.py:build", weights=Path("w.pt"), data=Path("t.csv"))
    (tmp_path / "pre.py").write_text(
        "import torch\n\ndef pre(text):\n"
        "    codes = [float(ord(c)) for c in text[:8]]\n"
        "    return torch.tensor(codes + [0.0] * (8 - len(codes)))\n")
    result, text = _init(tmp_path, factory="m.py:build", weights=Path("w.pt"), data=Path("t.csv"),
                         preprocess="pre.py:pre", handler="text_classifier")
    assert result.spec.dataset.kind == "text" and result.spec.dataset.text_column == "text"
    assert "preprocess: pre.py:pre" in text


def _image_project(root: Path, classes: list[str]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / "images" / "test" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                root / "images" / "test" / c / f"{c}{i}.png")
    (root / "net.py").write_text(
        "from torch import nn\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.pool = nn.AdaptiveAvgPool2d(1)\n"
        f"        self.fc = nn.Linear(3, {len(classes)})\n\n"
        "    def forward(self, x):\n        return self.fc(self.pool(x).flatten(1))\n\n\n"
        "def build():\n    return Net()\n")
    ns: dict = {}
    exec((root / "net.py").read_text(), ns)
    torch.save(ns["build"]().state_dict(), root / "net.pt")


def test_image_folder_classes_from_sorted_folders_and_a_label_map_for_the_builtin(tmp_path):
    _image_project(tmp_path, ["zebra", "ant", "cat", "dog", "emu"])
    result, text = _init(tmp_path, factory="net.py:build", weights=Path("net.pt"), data=Path("images/test"))
    spec = result.spec
    assert spec.dataset.kind == "image" and spec.handler.name == "image_classifier"
    assert spec.model.class_names == ("ant", "cat", "dog", "emu", "zebra") and spec.model.num_classes == 5
    label_map = tmp_path / "index_to_name.json"
    assert label_map in result.written and json.loads(label_map.read_text())["4"] == "zebra"
    assert spec.handler.extra_files == (label_map,)
    assert "[1, 3, 224, 224] through builtin:image_classifier" in text
    assert yaml.safe_load(text)["gate"]["probes"] is False


def test_image_model_with_fewer_than_five_classes_gets_a_topk_todo(tmp_path):
    _image_project(tmp_path, ["a", "b", "c"])
    result, _ = _init(tmp_path, factory="net.py:build", weights=Path("net.pt"), data=Path("images/test"))
    assert any("topk = 3" in t for t in result.todos)


def test_shapes_that_run_equally_well_leave_a_todo(tmp_path):
    make_project(tmp_path / "p")
    (tmp_path / "p" / "flat.py").write_text(
        "import torch\nfrom torch import nn\n\ndef build():\n"
        "    torch.manual_seed(0)\n    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))\n")
    ns: dict = {}
    exec((tmp_path / "p" / "flat.py").read_text(), ns)
    torch.save(ns["build"]().state_dict(), tmp_path / "p" / "flat.pt")
    result, _ = _init(tmp_path / "p", factory="flat.py:build", weights=Path("flat.pt"), data=Path("data.csv"),
                      out=Path("flat.yaml"))
    assert result.spec.dataset.input_shape == (4,)  # the first candidate wins a tie
    assert any(t.startswith("input_shape: [1, 4]") for t in result.todos), result.todos


def test_an_index_pandas_wrote_is_the_id_or_ignored_never_a_feature():
    df = pd.DataFrame({"label": [0, 1, 1], "a": [1.0, 2.0, 3.0]}).reset_index().rename(columns={"index": "Unnamed: 0"})
    g = guess_table(df, Path("."))
    assert g.id_column == "Unnamed: 0" and g.feature_columns == ("a",)
    g = guess_table(df.assign(id=["x", "y", "z"]), Path("."))
    assert g.id_column == "id" and g.feature_columns == ("a",) and not g.features_are_default


# ---------------------------------------------------------------- the task, from the labels


def test_init_infers_the_task_from_the_label_column():
    from pipeline.scaffold import label_task

    assert label_task(pd.Series([0, 1, 2, 1]))[0] == "classification"
    assert label_task(pd.Series([1.0, 2.0]))[0] == "classification", "integers stay classes unless the spec says"
    assert label_task(pd.Series(["cat", "dog"]))[0] == "classification"
    assert label_task(pd.Series([151.5, 75.0, 200.25]))[0] == "regression"
    assert label_task(pd.Series(["[0, 2]", "[1]", "[]"]))[0] == "multilabel"
    assert label_task(pd.Series(["cat;dog", "dog", "bird;cat"]))[0] == "multilabel"


def test_init_writes_task_regression_for_a_table_of_fractional_targets(tmp_path):
    root = tmp_path / "p"
    make_project(root)
    (root / "spec.yaml").unlink()
    (root / "reg_model.py").write_text("import torch\n\ndef build():\n    torch.manual_seed(0)\n"
                                       "    return torch.nn.Linear(4, 1)\n")
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(4, 1).state_dict(), root / "reg.pt")
    df = pd.read_csv(root / "data.csv")
    df["label"] = df["f0"] * 2.5 + 0.25  # fractional targets
    df.to_csv(root / "data.csv", index=False)
    result, text = _init(root, factory="reg_model.py:build", weights=Path("reg.pt"), data=Path("data.csv"))
    spec = load_spec(result.spec_path)
    assert spec.model.task == "regression" and spec.model.num_classes == 1
    assert "task: regression" in text and "accuracy" not in text.split("gate:")[1]
    assert set(spec.gate.metrics) == {"mae", "rmse", "r2"}
    assert any("model.task regression" in d for d in result.decisions)
    assert any("your own handler" in t for t in result.todos)
