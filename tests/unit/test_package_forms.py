"""The package as shipped: the handler's own model-config.yaml, TorchServe's handler forms, the archive's
artefacts, and the traps of the built-in text_classifier, all decided before any stage runs."""

import collections
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.errors import ArchiveError, ConfigError
from pipeline.run.plan import check_text_vocabulary, plan_run
from pipeline.spec import parse_spec
from pipeline.stages.archive import archive_artefacts, extra_file_names, inspect_archive, model_config_for
from pipeline.torchserve.handlers import resolve_handler
from tests.helpers import tiny_spec

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path, doc) -> Path:
    path = tmp_path / "model-config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# --- handler.config ---------------------------------------------------------------------------------------


def test_handler_config_passes_through_with_the_serving_keys_added(tmp_path):
    cfg = _config(tmp_path, {"handler": {"model_name": "tiny", "save_mode": "pretrained", "max_length": 32},
                             "pt2": {"compile": False}, "deviceType": "cpu"})
    spec = tiny_spec(3, handler={"config": str(cfg)}, serving={"batch_size": 4, "workers": 2})
    merged = model_config_for(spec)
    assert merged["handler"] == {"model_name": "tiny", "save_mode": "pretrained", "max_length": 32}
    assert merged["pt2"] == {"compile": False} and merged["deviceType"] == "cpu"
    assert merged["batchSize"] == 4 and merged["minWorkers"] == merged["maxWorkers"] == 2
    assert "handler" not in model_config_for(tiny_spec(3)), "without handler.config only the serving keys"


def test_handler_config_is_resolved_against_the_spec_folder(tmp_path):
    (tmp_path / "cfg").mkdir()
    _config(tmp_path / "cfg", {"handler": {"k": 1}})
    data = {"name": "m", "model": {"factory": "m.py:build", "weights": "w.pt", "num_classes": 3},
            "dataset": {"path": "d.csv", "input_shape": [2]}, "handler": {"config": "cfg/model-config.yaml"}}
    spec = parse_spec(data, base_dir=tmp_path)
    assert spec.handler.config == tmp_path / "cfg" / "model-config.yaml"
    assert model_config_for(spec)["handler"] == {"k": 1}


def test_a_serving_key_set_in_the_handler_config_too_is_exit_2_naming_both_places(tmp_path):
    cfg = _config(tmp_path, {"batchSize": 8, "responseTimeout": 60, "handler": {"k": 1}})
    spec = tiny_spec(3, handler={"config": str(cfg)})
    with pytest.raises(ConfigError) as e:
        plan_run(spec)
    assert e.value.exit_code == 2
    text = str(e.value) + " ".join(e.value.details)
    assert "batchSize: 8 in " + str(cfg) in text and "serving.batch_size" in text
    assert "responseTimeout: 60" in text and "serving.response_timeout_s" in text
    assert "handler" not in " ".join(e.value.details), "only the keys the tool owns are named"


@pytest.mark.parametrize("content, match", [(None, "does not exist"), ("a: [1,\n", "not valid YAML"),
                                            ("- 1\n- 2\n", "holds a list")])
def test_an_unreadable_handler_config_is_a_config_error(tmp_path, content, match):
    path = tmp_path / "model-config.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        plan_run(tiny_spec(3, handler={"config": str(path)}))


# --- handler forms ----------------------------------------------------------------------------------------


def test_file_function_form_is_parsed_resolved_and_given_to_the_archiver_without_py(tmp_path):
    (tmp_path / "h.py").write_text("def entry(data, context):\n    return data\n")
    data = {"name": "m", "model": {"factory": "m.py:build", "weights": "w.pt", "num_classes": 3},
            "dataset": {"path": "d.csv", "input_shape": [2]}, "handler": "h.py:entry"}
    spec = parse_spec(data, base_dir=tmp_path)
    assert spec.handler.name == f"{tmp_path / 'h.py'}:entry"
    assert spec.handler.is_file and spec.handler.file == str(tmp_path / "h.py") and spec.handler.function == "entry"
    info = resolve_handler(spec)
    assert info.origin == "file" and info.path == tmp_path / "h.py" and info.function == "entry"
    # torch-model-archiver copies a --handler holding ".py" as a file path: "h.py:entry" would not exist
    assert info.archiver_ref == f"{tmp_path / 'h'}:entry"
    assert "entry point entry()" in info.display


def test_plain_file_and_builtin_forms_are_unchanged(tmp_path):
    (tmp_path / "h.py").write_text("def handle(data, context):\n    return data\n")
    info = resolve_handler(tiny_spec(3, handler=str(tmp_path / "h.py")))
    assert info.function is None and info.archiver_ref == str(tmp_path / "h.py")
    spec = tiny_spec(3, handler="image_classifier")
    assert spec.handler.function is None and not spec.handler.is_file


def test_file_function_form_names_the_missing_file_and_refuses_a_bad_function_name(tmp_path):
    with pytest.raises(ConfigError, match=r"file .*nowhere\.py does not exist") as e:
        resolve_handler(tiny_spec(3, handler=str(tmp_path / "nowhere.py:entry")))
    assert ":entry" not in str(e.value).split("does not exist")[0]
    with pytest.raises(ConfigError, match="file.py:function"):
        tiny_spec(3, handler="h.py:not-a-name")


# --- extra files, artefacts -------------------------------------------------------------------------------


def test_an_extra_files_folder_is_packed_as_its_contents(tmp_path):
    hf = tmp_path / "hf_model"
    hf.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        (hf / name).write_text("x")
    (tmp_path / "index_to_name.json").write_text("{}")
    assert extra_file_names((hf, tmp_path / "index_to_name.json")) == [
        "config.json", "model.safetensors", "vocab.txt", "index_to_name.json"]
    plan_run(tiny_spec(3, handler={"extra_files": [str(hf)]}))  # a folder is accepted
    with pytest.raises(ConfigError, match="do not exist"):
        plan_run(tiny_spec(3, handler={"extra_files": [str(tmp_path / "missing")]}))


def _mar(path: Path, handler="h:entry", **members) -> Path:
    manifest = {"model": {"modelName": "m", "serializedFile": "model.safetensors", "handler": handler,
                          "configFile": "model-config.yaml"}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        for name, content in members.items():
            zf.writestr(name.replace("__", "."), content)
    return path


def test_the_archive_artefacts_carry_their_role_and_sha256(tmp_path):
    mar = _mar(tmp_path / "m.mar", model__safetensors=b"weights", h__py=b"def entry(d, c): pass\n",
               **{"model-config__yaml": b"batchSize: 1\n", "vocab__txt": b"a\nb\n"})
    manifest, _, _ = inspect_archive(mar)
    arts = {a.name: a for a in archive_artefacts(mar, manifest)}
    assert set(arts) == {"model.safetensors", "h.py", "model-config.yaml", "vocab.txt"}, "MAR-INF is not an artefact"
    assert arts["model.safetensors"].role == "serialized_file"
    assert arts["h.py"].role == "handler" and arts["vocab.txt"].role == "extra_file"
    assert arts["model-config.yaml"].role == "config_file"
    assert arts["model.safetensors"].sha256 == hashlib.sha256(b"weights").hexdigest()
    assert arts["vocab.txt"].size_bytes == 4
    assert [a.role for a in archive_artefacts(mar, manifest)][0] == "serialized_file"


def test_a_function_handler_missing_from_the_archive_is_refused(tmp_path):
    mar = _mar(tmp_path / "m.mar", model__safetensors=b"w", **{"model-config__yaml": b"{}\n"})
    with pytest.raises(ArchiveError, match=r"\['h.py'\]"):
        inspect_archive(mar)


def _saved(tmp_path, obj, name) -> bytes:
    path = tmp_path / name
    if isinstance(obj, torch.nn.Module):
        torch.jit.save(torch.jit.script(obj), path)
    else:
        torch.save(obj, path)
    return path.read_bytes()


def _prebuilt(tmp_path, name, serialized, content, model_file=None) -> Path:
    manifest = {"model": {"modelName": "m", "serializedFile": serialized, "handler": "h.py"}}
    if model_file:
        manifest["model"]["modelFile"] = model_file
    with zipfile.ZipFile(tmp_path / name, "w") as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        zf.writestr(serialized, content)
        zf.writestr("h.py", "def handle(d, c): pass\n")
        if model_file:
            zf.writestr(model_file, "import torch\n")
    return tmp_path / name


def test_prebuilt_archive_checks_its_own_model_where_it_loads_without_the_handler(tmp_path):
    lin = torch.nn.Linear(2, 3)
    script = _prebuilt(tmp_path, "s.mar", "m.pt", _saved(tmp_path, lin, "s.pt"))
    eager = _prebuilt(tmp_path, "e.mar", "m.pt", _saved(tmp_path, lin.state_dict(), "e.pt"), model_file="model.py")
    opaque = _prebuilt(tmp_path, "o.mar", "model.safetensors", b"not torch")
    state_only = _prebuilt(tmp_path, "d.mar", "m.pt", _saved(tmp_path, lin.state_dict(), "d.pt"))
    assert plan_run(tiny_spec(3), prebuilt=script).archive_model == "script"
    assert plan_run(tiny_spec(3), prebuilt=eager).archive_model == "eager"
    for mar in (opaque, state_only):  # a state_dict without a model file: only the handler knows the class
        plan = plan_run(tiny_spec(3), prebuilt=mar)
        assert plan.archive_model is None and plan.stages == ("handled", "served"), mar
        assert "exported" not in plan.gate.candidates
        assert any("not applicable: validated through the handled stage" in n for n in plan.notes)
    assert plan_run(tiny_spec(3), prebuilt=script).stages == ("exported", "handled", "served")
    with pytest.raises(ConfigError, match="--until handled"):
        plan_run(tiny_spec(3), prebuilt=opaque, until="export")
    assert plan_run(tiny_spec(3), prebuilt=script, until="export").stages == ("exported",)


# --- text_classifier --------------------------------------------------------------------------------------


def _text_spec(tmp_path, vocab=None, **serving):
    extra = []
    if vocab is not None:
        torch.save(vocab, tmp_path / "source_vocab.pt")
        extra = [str(tmp_path / "source_vocab.pt")]
    return tiny_spec(3, dataset={"kind": "text"}, handler={"name": "text_classifier", "extra_files": extra},
                     serving=serving)


def test_text_classifier_with_batching_is_refused_saying_why(tmp_path):
    with pytest.raises(ConfigError) as e:
        plan_run(_text_spec(tmp_path, {"a": 0}, batch_size=4))
    detail = " ".join(e.value.details)
    assert "only the first request of a batch" in detail and "data[0]" in detail and "batch_size 1" in detail


def test_text_classifier_vocabulary_must_load_weights_only(tmp_path):
    from pipeline.torchserve.handlers import resolve_handler as resolve

    spec = _text_spec(tmp_path, collections.defaultdict(int, {"a": 0}))
    with pytest.raises(ConfigError) as e:
        check_text_vocabulary(spec, resolve(spec))
    assert "weights_only=True" in str(e.value) and "get_stoi" in str(e.value) and "initialize" in str(e.value)
    ok = _text_spec(tmp_path, {"a": 0, "b": 1})
    note = check_text_vocabulary(ok, resolve(ok))
    # loads, but a plain dict has no index for unknown words: each raises KeyError in the handler
    assert note.startswith("source_vocab.pt is a plain dict") and "raises KeyError" in note, note
    assert "KeyError" in str(e.value)
    none = _text_spec(tmp_path)
    with pytest.raises(ConfigError, match="handler.extra_files has none: add the vocabulary"):
        check_text_vocabulary(none, resolve(none))


# --- torchvision before any user module -------------------------------------------------------------------


def test_a_records_run_whose_user_code_imports_torchvision_plans_and_imports(tmp_path):
    """A tensor-kind spec whose factory imports torchvision: the plan's hook prepares it first."""
    (tmp_path / "m.py").write_text("import torchvision\nfrom torch import nn\n\ndef build():\n"
                                   "    return nn.Linear(2, 3)\n")
    code = ("import sys\nfrom pathlib import Path\nfrom pipeline.spec import parse_spec\n"
            "from pipeline.run.plan import plan_run\nfrom pipeline.usercode import import_callable\n"
            f"d = {{'name': 'm', 'model': {{'factory': 'm.py:build', 'weights': 'w.pt', 'num_classes': 3}},"
            " 'dataset': {'path': 'd.csv', 'input_shape': [2]}}\n"
            f"spec = parse_spec(d, base_dir=Path({str(tmp_path)!r}))\n"
            "plan_run(spec)\nimport_callable(spec.model.factory, 'model.factory')()\n"
            "import pipeline.compat as c; print('ok', c.torchvision_state())\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-1500:]
    assert res.stdout.split()[-2] == "ok" and res.stdout.split()[-1] in ("patched", "native")


def test_the_cli_installs_the_hook_before_any_command(tmp_path, monkeypatch):
    import pipeline.cli as cli
    import pipeline.compat as compat

    seen = []
    monkeypatch.setattr(cli, "install_import_hook", lambda: seen.append("hook"))
    monkeypatch.setattr(cli, "_print_history", lambda *a: seen.append("history") or 0)
    cli.main(["history", "--reports-dir", str(tmp_path)])
    assert seen == ["hook", "history"]
    assert callable(compat.install_import_hook)


def test_a_model_config_among_the_extra_files_is_pointed_to_handler_config(tmp_path):
    from pipeline.stages.archive import ArchiveConfig, build_archive

    cfg = _config(tmp_path, {"handler": {"k": 1}})
    spec = tiny_spec(3, handler={"extra_files": [str(cfg)]})
    with pytest.raises(ArchiveError, match="name your file in handler.config"):
        build_archive(spec, ArchiveConfig(work_dir=tmp_path / "w"), resolve_handler(spec), object(), (2,))


def test_a_handler_reading_model_yaml_config_without_handler_config_is_noted(tmp_path):
    (tmp_path / "h.py").write_text("def handle(data, context):\n    return context.model_yaml_config['handler']\n")
    plan = plan_run(tiny_spec(3, handler=str(tmp_path / "h.py")))
    assert any("reads context.model_yaml_config" in n and "handler.config" in n for n in plan.notes), plan.notes
    cfg = _config(tmp_path, {"handler": {"k": 1}})
    plan = plan_run(tiny_spec(3, handler={"name": str(tmp_path / "h.py"), "config": str(cfg)}))
    assert not any("model_yaml_config" in n for n in plan.notes)
