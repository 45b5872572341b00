"""``package-validate init`` with the handlers TorchServe users write: every row counted, ``--kind``,
eager by the ``--model-file`` rule, the handler's own transforms, the files beside it, its answer.

The in-process run of the handler (``check_answer``) is replaced here by a stand-in that returns
what a handler answered; tests/integration/test_init_handlers.py runs the real one.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

import pipeline.scaffold as scaffold
from pipeline.errors import ConfigError, DatasetError
from pipeline.scaffold import InitConfig, guess_table, write_spec
from pipeline.scaffold.answer_check import AnswerCheck
from pipeline.scaffold.handler_file import files_beside, read_handler_file, reference_source
from pipeline.spec import load_spec
from pipeline.spec.schema import HandlerSpec
from tests.helpers import make_project
from tests.imaging import MODEL, _image

CLASSES = ["red", "green", "blue"]


def _colour_folder(root: Path, per_class: int = 3, classes=CLASSES) -> None:
    (root / "model.py").write_text(MODEL)
    ns: dict = {}
    exec(MODEL, ns)
    torch.save(ns["build"]().state_dict(), root / "weights.pt")
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        (root / "images" / c).mkdir(parents=True)
        for i in range(per_class):
            (root / "images" / c / f"{i}.png").write_bytes(_image(rng, k % 3))


IMAGE_HANDLER = '''
import torch
from torchvision import transforms
from ts.torch_handler.image_classifier import ImageClassifier

MEAN = [0.45, 0.40, 0.35]
STD = [0.20, 0.25, 0.30]
UNUSED = "not copied"


def halve(x):
    return x * 0.5


class ColourClassifier(ImageClassifier):
    topk = 3
    image_processing = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD), halve])
'''


@pytest.fixture
def answered(monkeypatch):
    """The handler's in-process answer, as the test sets it; the calls made are recorded."""
    calls = []
    state = {"check": AnswerCheck("r0", answer='{"red": 0.9, "green": 0.05, "blue": 0.05}', format="topk")}

    def fake(spec, plan, model, rows, example, input_shape):
        calls.append((spec, rows.ids[0], tuple(example.shape), input_shape))
        return AnswerCheck(rows.ids[0], state["check"].answer, state["check"].format, state["check"].failure)

    monkeypatch.setattr(scaffold, "check_answer", fake)
    return state, calls


def _init(root: Path, **kw):
    result = write_spec(InitConfig(base_dir=root, **kw))
    return result, result.spec_path.read_text()


# ---------------------------------------------------------------- every row counted


def test_classes_are_counted_over_every_image_not_the_models_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(scaffold, "IMAGE_ROWS", 2)  # the model runs on 2 images, of ant and bee: cat is not among them
    _colour_folder(tmp_path, per_class=3, classes=["ant", "bee", "cat"])
    (tmp_path / "model.py").write_text(MODEL)
    result, text = _init(tmp_path, factory="model.py:build", weights=Path("weights.pt"), data=Path("images"))
    assert result.spec.model.class_names == ("ant", "bee", "cat")
    assert not any("names" in t and "classes" in t for t in result.todos), result.todos
    assert "3 classes over all 9 rows" in text
    assert any("2 of the 9 images" in d for d in result.decisions)


def test_a_manifests_class_names_come_from_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(scaffold, "IMAGE_ROWS", 2)
    _colour_folder(tmp_path, per_class=2, classes=["ant", "bee", "cat"])
    rows = [{"path": f"images/{c}/{i}.png", "label": c} for c in ("ant", "bee", "cat") for i in range(2)]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    result, _ = _init(tmp_path, factory="model.py:build", weights=Path("weights.pt"), data=Path("manifest.csv"))
    assert result.spec.model.class_names == ("ant", "bee", "cat")


# ---------------------------------------------------------------- --kind


def test_kind_json_reads_the_numeric_columns_as_each_records_fields():
    df = pd.DataFrame({"id": ["a", "b"], "label": [0, 1], "x": [1.0, 2.0], "y": [3, 4], "note": ["p", "q"]})
    g = guess_table(df, Path("."), kind="json")
    assert (g.kind, g.feature_columns, g.json_column) == ("json", ("x", "y"), None)
    assert not g.features_are_default and any("note" in line for line in g.ignored)
    assert guess_table(df, Path(".")).kind == "tensor"  # without --kind: what the columns look like


def test_kind_json_takes_a_column_of_json_objects_as_the_records():
    df = pd.DataFrame({"id": ["a", "b"], "label": [0, 1], "doc": ['{"x": 1}', '{"x": 2}'], "w": [0.5, 0.7]})
    g = guess_table(df, Path("."), kind="json")
    assert (g.kind, g.json_column, g.feature_columns) == ("json", "doc", ())


def test_kind_text_overrides_numeric_columns_and_kind_image_needs_paths():
    df = pd.DataFrame({"id": ["1", "2"], "label": [0, 1], "score": [0.1, 0.2], "body": ["some text", "more"]})
    assert guess_table(df, Path("."), kind="text").text_column == "body"
    with pytest.raises(DatasetError, match="--kind image"):
        guess_table(df, Path("."), kind="image")
    with pytest.raises(ConfigError, match="--kind 'audio'"):
        guess_table(df, Path("."), kind="audio")


def test_init_kind_json_writes_a_json_spec_and_needs_a_handler(tmp_path, answered):
    make_project(tmp_path)
    (tmp_path / "spec.yaml").unlink()
    (tmp_path / "records.py").write_text("from ts.torch_handler.base_handler import BaseHandler\n\n\n"
                                         "class Records(BaseHandler):\n    pass\n")
    kw = dict(factory="tiny_model.py:build", weights=Path("weights.pt"), data=Path("data.csv"), kind="json")
    with pytest.raises(ConfigError, match="--handler"):
        _init(tmp_path, **kw)
    result, text = _init(tmp_path, handler="records.py", **kw)
    spec = load_spec(result.spec_path)
    assert spec.dataset.kind == "json" and spec.dataset.feature_columns == ("f0", "f1", "f2", "f3")
    assert spec.dataset.input_shape == (4,) and spec.handler.name.endswith("records.py")
    assert "application/json" in text


def test_kind_other_than_image_for_a_folder_is_refused(tmp_path):
    _colour_folder(tmp_path)
    with pytest.raises(ConfigError, match="--kind tensor"):
        _init(tmp_path, factory="model.py:build", weights=Path("weights.pt"), data=Path("images"), kind="tensor")


# ---------------------------------------------------------------- export mode


def test_eager_is_proposed_when_the_model_file_defines_one_module_class(tmp_path):
    _colour_folder(tmp_path)
    result, text = _init(tmp_path, factory="model.py:build", weights=Path("weights.pt"), data=Path("images"))
    assert result.spec.export.mode == "eager"
    assert "--model-file" in text


def test_script_stays_when_the_model_file_defines_two_classes(tmp_path):
    make_project(tmp_path)  # tiny_model.py defines Tiny and Branchy
    (tmp_path / "spec.yaml").unlink()
    result, _ = _init(tmp_path, factory="tiny_model.py:build", weights=Path("weights.pt"), data=Path("data.csv"))
    assert result.spec.export.mode == "script"
    assert any("not eager" in d and "2 classes" in d for d in result.decisions)


def test_a_handler_that_loads_torchscript_keeps_script(tmp_path, answered):
    _colour_folder(tmp_path)
    (tmp_path / "h.py").write_text("import torch\n\n\nclass H:\n    def initialize(self, ctx):\n"
                                   "        self.model = torch.jit.load('m.pt')\n")
    (tmp_path / "ref.py").write_text("import io\nimport numpy as np\nimport torch\nfrom PIL import Image\n\n\n"
                                     "def pre(body):\n    im = Image.open(io.BytesIO(body)).convert('RGB')\n"
                                     "    return torch.from_numpy(np.array(im, np.float32)).permute(2, 0, 1) / 255\n")
    result, _ = _init(tmp_path, factory="model.py:build", weights=Path("weights.pt"), data=Path("images"),
                      handler="h.py", preprocess="ref.py:pre")
    assert result.spec.export.mode == "script"
    assert any("torch.jit.load" in d for d in result.decisions)


# ---------------------------------------------------------------- the handler's own transforms


def test_the_transforms_are_copied_with_what_they_name_and_nothing_else(tmp_path):
    (tmp_path / "h.py").write_text(IMAGE_HANDLER)
    hf = read_handler_file(tmp_path / "h.py")
    assert hf.transforms_owner == "ColourClassifier" and hf.vision_preprocess and hf.preprocess_owner is None
    text = reference_source(hf, tmp_path)
    assert "MEAN = [0.45" in text and "def halve" in text and "from torchvision import transforms" in text
    assert "UNUSED" not in text and "ImageClassifier" not in text  # only what the expression names
    (tmp_path / "reference.py").write_text(text)
    ns: dict = {}
    exec(compile(text, str(tmp_path / "reference.py"), "exec"), ns)
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), 255, np.uint8)).save(buf, "PNG")
    x = ns["preprocess"](buf.getvalue())
    expected = (torch.ones(3) - torch.tensor([0.45, 0.40, 0.35])) / torch.tensor([0.20, 0.25, 0.30]) * 0.5
    assert x.shape == (3, 4, 4) and torch.allclose(x[:, 0, 0], expected)


def test_module_level_transforms_and_a_preprocess_method(tmp_path):
    (tmp_path / "m.py").write_text("SCALE = 2.0\nimage_processing = lambda im: SCALE\n")
    hf = read_handler_file(tmp_path / "m.py")
    assert hf.transforms_owner is None and "SCALE = 2.0" in reference_source(hf, tmp_path)
    (tmp_path / "p.py").write_text("import torch\n\n\nclass P:\n    def preprocess(self, data):\n"
                                   "        return torch.tensor([[float(len(r['body']))] for r in data])\n")
    hf = read_handler_file(tmp_path / "p.py")
    assert hf.transforms is None and hf.preprocess_owner == "P" and not hf.vision_preprocess
    text = reference_source(hf, tmp_path)
    ns: dict = {"__file__": str(tmp_path / "reference.py")}
    exec(compile(text, str(tmp_path / "reference.py"), "exec"), ns)
    assert ns["preprocess"]("abc").tolist() == [3.0]  # one row of the handler's own batch
    (tmp_path / "n.py").write_text("class N:\n    def handle(self, data, context):\n        return data\n")
    assert reference_source(read_handler_file(tmp_path / "n.py"), tmp_path) is None


def test_a_handler_file_that_is_not_python_is_refused(tmp_path):
    (tmp_path / "bad.py").write_text("def (:\n")
    with pytest.raises(ConfigError, match="cannot be read as Python"):
        read_handler_file(tmp_path / "bad.py")


def test_init_uses_the_handlers_transforms_as_the_reference(tmp_path, answered):
    _colour_folder(tmp_path)
    (tmp_path / "serve").mkdir()
    (tmp_path / "serve" / "handler.py").write_text(IMAGE_HANDLER)
    result, text = _init(tmp_path, factory="model.py:build", weights=Path("weights.pt"), data=Path("images"),
                         handler="serve/handler.py")
    ref = tmp_path / "reference.py"
    assert ref in result.written and "image_processing = transforms.Compose" in ref.read_text()
    assert result.spec.model.preprocess == f"{ref}:preprocess"
    assert "preprocess: reference.py:preprocess" in text and "the handler's own preprocessing" in text
    assert any("a defect in it is not caught" in t for t in result.todos)
    assert yaml.safe_load(text)["gate"]["probes"] is False  # VisionHandler.preprocess never converts to RGB
    assert "keeps TorchServe 0.12's VisionHandler.preprocess" in text
    # --preprocess wins over the handler's transforms
    (tmp_path / "mine.py").write_text((tmp_path / "reference.py").read_text())
    result, _ = _init(tmp_path, factory="model.py:build", weights=Path("weights.pt"), data=Path("images"),
                      handler="serve/handler.py", preprocess="mine.py:preprocess", force=True)
    assert result.spec.model.preprocess.endswith("mine.py:preprocess")


def test_an_existing_reference_with_other_content_needs_force(tmp_path, answered):
    _colour_folder(tmp_path)
    (tmp_path / "handler.py").write_text(IMAGE_HANDLER)
    (tmp_path / "reference.py").write_text("# mine\n")
    kw = dict(factory="model.py:build", weights=Path("weights.pt"), data=Path("images"), handler="handler.py")
    with pytest.raises(ConfigError, match="reference.py already exists"):
        _init(tmp_path, **kw)
    assert (tmp_path / "reference.py").read_text() == "# mine\n" and not (tmp_path / "spec.yaml").exists()


def test_a_failed_init_removes_the_reference_it_created(tmp_path, answered):
    _colour_folder(tmp_path)
    (tmp_path / "handler.py").write_text(IMAGE_HANDLER.replace("halve]", "halve, lambda x: x[:2]]"))
    with pytest.raises(ConfigError, match="did not run"):  # two channels: the model cannot run on them
        _init(tmp_path, factory="model.py:build", weights=Path("weights.pt"), data=Path("images"),
              handler="handler.py")
    assert not (tmp_path / "reference.py").exists()


# ---------------------------------------------------------------- files beside the handler


def test_files_beside_the_handler(tmp_path):
    for name in ("index_to_name.json", "source_vocab.pt", "notes.txt", "extra.yaml", "model-config.yaml",
                 "requirements.txt", "spec.yaml", "weights.pt", "data.csv", "helper.py"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.json").write_text("{}")
    (tmp_path / "handler.py").write_text("")
    found = files_beside(tmp_path / "handler.py", {(tmp_path / "spec.yaml").resolve()})
    assert [p.name for p in found.extra_files] == ["extra.yaml", "index_to_name.json", "notes.txt",
                                                   "source_vocab.pt"]
    assert found.config.name == "model-config.yaml" and found.requirements.name == "requirements.txt"


def test_init_packs_the_label_map_vocabulary_and_config_beside_the_handler(tmp_path, answered):
    _colour_folder(tmp_path)
    serve = tmp_path / "serve"
    serve.mkdir()
    (serve / "handler.py").write_text(IMAGE_HANDLER)
    (serve / "index_to_name.json").write_text(json.dumps({"0": "red", "1": "green", "2": "blue"}))
    (serve / "source_vocab.pt").write_bytes(b"vocab")
    (serve / "model-config.yaml").write_text("handler:\n  mode: fast\n")
    result, text = _init(tmp_path, factory="model.py:build", weights=Path("weights.pt"), data=Path("images"),
                         handler="serve/handler.py")
    spec = result.spec
    assert {p.name for p in spec.handler.extra_files} == {"index_to_name.json", "source_vocab.pt"}
    assert spec.model.class_names == ("red", "green", "blue")  # the order the handler's label map gives
    assert not (tmp_path / "index_to_name.json").exists()  # the handler's own map is shipped, none written
    if "config" in HandlerSpec.model_fields:
        assert spec.handler.config == (serve / "model-config.yaml").resolve()
    else:
        assert "# config: serve/model-config.yaml" in text and any("model-config.yaml" in t for t in result.todos)


# ---------------------------------------------------------------- the handler's answer


def test_the_answer_format_seen_is_written_with_the_answer_quoted(tmp_path, answered):
    state, calls = answered
    _colour_folder(tmp_path)
    (tmp_path / "handler.py").write_text(IMAGE_HANDLER)
    result, text = _init(tmp_path, factory="model.py:build", weights=Path("weights.pt"), data=Path("images"),
                         handler="handler.py")
    assert result.spec.answers.format == "topk"
    assert "it answered: {\"red\": 0.9" in text
    assert calls and calls[0][1] == "blue/0.png" and calls[0][2] == (1, 3, 12, 12) and calls[0][3] == (3, 12, 12)


def test_a_handler_of_the_tool_is_not_run_by_init(tmp_path, answered):
    _, calls = answered  # its answer format is known: tensor_classifier answers package_validate
    make_project(tmp_path)
    (tmp_path / "spec.yaml").unlink()
    result, _ = _init(tmp_path, factory="tiny_model.py:build", weights=Path("weights.pt"), data=Path("data.csv"))
    assert result.spec.handler.name == "tensor_classifier" and not result.todos
    assert not calls and result.spec.answers.format == "auto"


def test_a_failing_handler_still_gets_a_spec_that_quotes_the_failure(tmp_path, answered):
    state, _ = answered
    state["check"] = AnswerCheck("r0", failure="status 503: Prediction failed; the handler's log: KeyError: 'f9'")
    _colour_folder(tmp_path)
    (tmp_path / "handler.py").write_text(IMAGE_HANDLER)
    result, text = _init(tmp_path, factory="model.py:build", weights=Path("weights.pt"), data=Path("images"),
                         handler="handler.py")
    assert result.spec_path.is_file() and result.spec.answers.format == "auto"
    assert "FAILED: status 503: Prediction failed; the handler's log: KeyError: 'f9'" in text.replace("\n  # ", " ")
    assert any("failed on row" in t and "KeyError" in t for t in result.todos)


def test_an_answer_no_format_reads_leaves_a_todo(tmp_path, answered):
    state, _ = answered
    state["check"] = AnswerCheck("r0", answer='"business"', format=None)
    _colour_folder(tmp_path)
    (tmp_path / "handler.py").write_text(IMAGE_HANDLER)
    result, text = _init(tmp_path, factory="model.py:build", weights=Path("weights.pt"), data=Path("images"),
                         handler="handler.py")
    assert result.spec.answers.format == "auto" and "# TODO: no answers.format reads that answer" in text
    assert any("'\"business\"'" in t for t in result.todos)


def test_a_text_handlers_preprocess_method_becomes_the_reference(tmp_path, answered):
    (tmp_path / "m.py").write_text("from torch import nn\n\n\nclass M(nn.Linear):\n    def __init__(self):\n"
                                   "        super().__init__(8, 2)\n\n\ndef build():\n    return M()\n")
    torch.save(nn_linear_state(), tmp_path / "w.pt")
    pd.DataFrame({"id": ["1", "2", "3"], "label": [0, 1, 0], "text": ["hello there", "good bye now", "hi"]}).to_csv(
        tmp_path / "t.csv", index=False)
    (tmp_path / "h.py").write_text(
        "import torch\n\n\nclass TextHandler:\n    def preprocess(self, data):\n"
        "        rows = []\n        for r in data:\n            codes = [float(ord(c)) for c in r['body'][:8]]\n"
        "            rows.append(codes + [0.0] * (8 - len(codes)))\n        return torch.tensor(rows)\n")
    result, text = _init(tmp_path, factory="m.py:build", weights=Path("w.pt"), data=Path("t.csv"), handler="h.py")
    assert result.spec.dataset.kind == "text" and "preprocess: reference.py:preprocess" in text
    assert "TextHandler.preprocess" in (tmp_path / "reference.py").read_text()
    assert any("its TextHandler.preprocess method" in d for d in result.decisions)
    assert "from reference.py:preprocess" in text


def nn_linear_state():
    torch.manual_seed(0)
    return torch.nn.Linear(8, 2).state_dict()


def test_answers_and_failures_are_quoted_on_one_line_and_cut():
    from pipeline.scaffold.answer_check import quote

    assert quote(b'{"a":\n  1}') == '{"a": 1}'
    long = quote("x" * 500, 40)
    assert len(long) == 40 and long.endswith("...")


def test_the_handler_logs_last_exception_is_quoted(tmp_path):
    from pipeline.scaffold.answer_check import _log_errors

    log = tmp_path / "handler.log"
    log.write_text("loading\nTraceback (most recent call last):\n  File \"h.py\", line 3\n"
                   "KeyError: 'f0'\nok\nNameError: name 'LABELS' is not defined\n")
    assert _log_errors(log) == "NameError: name 'LABELS' is not defined"
    assert _log_errors(tmp_path / "missing.log") == ""


# ---------------------------------------------------------------- inputs of several tensors, handler forms

BAG_MODEL = '''
import torch
from torch import nn


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(20, 4, mode="mean")
        self.fc = nn.Linear(4, 2)

    def forward(self, text, offsets):
        return self.fc(self.bag(text, offsets))


def build():
    torch.manual_seed(0)
    return Bag()


def preprocess(text):
    ids = torch.tensor([ord(c) % 20 for c in text], dtype=torch.int64)
    return ids, torch.tensor([0])


def collate(rows):
    ids = torch.cat([r[0] for r in rows])
    offsets = torch.tensor([0] + [len(r[0]) for r in rows[:-1]]).cumsum(0)
    return ids, offsets
'''


def _bag_project(root: Path) -> None:
    (root / "bag.py").write_text(BAG_MODEL)
    ns: dict = {}
    exec(BAG_MODEL, ns)
    torch.save(ns["build"]().state_dict(), root / "w.pt")
    pd.DataFrame({"id": ["1", "2", "3", "4"], "label": [0, 1, 0, 1],
                  "text": ["hi", "a longer text", "mid", "xyzzy"]}).to_csv(root / "t.csv", index=False)
    torch.save({"hi": 0}, root / "source_vocab.pt")


def test_rows_of_several_tensors_and_lengths_run_through_the_collate_and_it_is_written(tmp_path, answered):
    _bag_project(tmp_path)
    result, text = _init(tmp_path, factory="bag.py:build", weights=Path("w.pt"), data=Path("t.csv"),
                         handler="text_classifier", preprocess="bag.py:preprocess", collate="bag.py:collate")
    assert result.spec.model.collate.endswith("bag.py:collate") and "collate: bag.py:collate" in text
    assert "(int64 [2], int64 [1])" in text  # the first row's input, described
    # TorchServe's text_classifier loads source_vocab.pt from its archive: the one beside the model is packed
    assert [p.name for p in result.spec.handler.extra_files] == ["source_vocab.pt"]
    assert any("packed source_vocab.pt" in d for d in result.decisions)


def test_rows_an_embedding_bag_cannot_take_stacked_say_to_pass_a_collate(tmp_path, answered):
    _bag_project(tmp_path)
    with pytest.raises(ConfigError, match=r"one row became \(int64 \[2\], int64 \[1\]\).*pass --collate file.py"):
        _init(tmp_path, factory="bag.py:build", weights=Path("w.pt"), data=Path("t.csv"),
              handler="text_classifier", preprocess="bag.py:preprocess")


def test_no_vocabulary_for_the_builtin_text_classifier_is_a_todo(tmp_path, answered):
    _bag_project(tmp_path)
    (tmp_path / "source_vocab.pt").unlink()
    result, _ = _init(tmp_path, factory="bag.py:build", weights=Path("w.pt"), data=Path("t.csv"),
                      handler="text_classifier", preprocess="bag.py:preprocess", collate="bag.py:collate")
    assert result.spec.handler.extra_files == ()
    assert any("source_vocab.pt from the archive" in t for t in result.todos), result.todos


def test_a_handler_named_as_file_function_is_written_so(tmp_path, answered):
    spec = make_project(tmp_path / "p", rows=6)
    (tmp_path / "p" / "fh.py").write_text("def entry(data, context):\n    return [0 for _ in data or []]\n")
    (tmp_path / "p" / "spec.yaml").rename(tmp_path / "p" / "old-spec.yaml")
    result, text = _init(tmp_path / "p", factory="tiny_model.py:build", weights=Path("weights.pt"),
                         data=Path("data.csv"), handler="fh.py:entry")
    assert result.spec.handler.name.endswith("fh.py:entry") and "handler: fh.py:entry" in text
    # a package-validate spec beside the handler is not a file the handler reads: not packed
    assert result.spec.handler.extra_files == ()
    assert any("old-spec.yaml: a package-validate spec" in d for d in result.decisions), result.decisions
    assert spec.name == "spec.yaml"


def test_an_image_classifier_subclass_without_transforms_of_its_own_gets_the_builtins(tmp_path, answered):
    _colour_folder(tmp_path)
    (tmp_path / "h.py").write_text("from ts.torch_handler.image_classifier import ImageClassifier\n\n\n"
                                   "class Mine(ImageClassifier):\n    topk = 3\n")
    result, text = _init(tmp_path, factory="model.py:build", weights=Path("weights.pt"), data=Path("images"),
                         handler="h.py")
    assert result.spec.model.preprocess == "builtin:image_classifier", text
    assert any("inherits from TorchServe's ImageClassifier" in d for d in result.decisions)
