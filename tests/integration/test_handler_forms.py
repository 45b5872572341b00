"""TorchServe's handler forms and the handler's own model-config.yaml, run as TorchServe runs them.

A module-level function handler named as ``--handler file.py:function`` (docs/custom_service.md's
form, written here for a tiny tensor model): the correct one passes end to end with a real
TorchServe; one with a wrong normalisation fails in-process (``--until handled``) with the blame
on the handler. A handler that reads the ``handler:`` section of its model-config.yaml works with
``handler.config`` and, without it, fails at load with its KeyError quoted. A ``--mar`` run names
the archive's artefacts with their sha256, says the export stage does not apply, and blames an
archive whose weights are not the spec's on the archive.
"""

import hashlib
import json
import shutil
import zipfile

import pytest
import torch
import yaml

from tests.helpers import make_project, write_handler
from tests.imaging import report_of
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.integration

FUNCTION_HANDLER = '''
import json
import os

import torch

_model = None
SHIFT = {shift}  # the defect: a normalisation the model was not trained with


def entry(data, context):
    """TorchServe calls entry(None, context) once to load, then entry(batch, context) per batch."""
    global _model
    if data is None:
        props = context.system_properties
        serialized = context.manifest["model"]["serializedFile"]
        _model = torch.jit.load(os.path.join(props["model_dir"], serialized), map_location="cpu").eval()
        {init_extra}
        return None
    rows = []
    for req in data:
        body = req.get("body")
        if isinstance(body, (bytes, bytearray)):
            body = json.loads(body)
        rows.append(body["features"])
    x = (torch.tensor(rows, dtype=torch.float32) - SHIFT) * {scale}
    with torch.no_grad():
        logits = _model(x)
    return [row.tolist() for row in logits]
'''


def _function_handler(path, shift=0.0, scale="1.0", init_extra="pass"):
    return write_handler(path, FUNCTION_HANDLER.format(shift=shift, scale=scale, init_extra=init_extra))


def _project(tmp, handler_name, rows=16, **overrides):
    spec = {"handler": {"name": handler_name, "probes": False}, "answers": {"format": "logits"},
            "replay": {"warmup_requests": 2}, "export": {"latency_repeats": 10, "probe": False}}
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value}
    return make_project(tmp / "proj", rows=rows, spec_overrides=spec)


def _run(spec, tmp, *extra, reports="reports", timeout=180):
    return run_cli("run", str(spec), "--reports-dir", str(tmp / reports), "--no-publish", *extra, timeout=timeout)


def test_function_handler_through_file_function_passes_served_and_a_defect_is_blamed_on_it(no_leftovers):
    tmp = no_leftovers
    _function_handler(tmp / "fn_handler.py")
    spec = _project(tmp, f"{tmp / 'fn_handler.py'}:entry")
    res = _run(spec, tmp)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rep = report_of(tmp / "reports")
    assert rep["stages"]["archive"]["manifest"]["model"]["handler"] == "fn_handler:entry"
    assert rep["plan"]["stages"][-1] == "served" and rep["attribution"]["layer"] is None

    _function_handler(tmp / "fn_bad.py", shift=0.5)
    bad = _project(tmp / "bad", f"{tmp / 'fn_bad.py'}:entry")
    res = _run(bad, tmp, "--until", "handled", reports="reports_bad")
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    rep = report_of(tmp / "reports_bad")
    assert rep["attribution"]["layer"] == "handler problem", rep["attribution"]
    failed = {c["name"] for c in rep["gate"]["checks"] if c["stage"] == "handled" and not c["passed"]}
    assert "max abs output difference" in failed, failed


CONFIG_HANDLER_INIT = 'global SCALE; SCALE = context.model_yaml_config["handler"]["scale"]'


def test_handler_reading_its_model_config_gets_the_shipped_file_and_fails_usefully_without_it(no_leftovers):
    tmp = no_leftovers
    # The scale comes from the handler's own config: 1.0 in the shipped file.
    _function_handler(tmp / "cfg_handler.py", scale="SCALE", init_extra=CONFIG_HANDLER_INIT)
    (tmp / "model-config.yaml").write_text(yaml.safe_dump({"handler": {"scale": 1.0, "mode": "logits"}}))
    spec = _project(tmp, f"{tmp / 'cfg_handler.py'}:entry", handler={"config": "../model-config.yaml"})
    res = _run(spec, tmp, "--until", "handled")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rep = report_of(tmp / "reports")
    shipped = rep["stages"]["archive"]["model_config"]
    assert shipped["handler"] == {"scale": 1.0, "mode": "logits"} and shipped["batchSize"] == 1

    bare = _project(tmp / "bare", f"{tmp / 'cfg_handler.py'}:entry")
    res = _run(bare, tmp, "--until", "handled", reports="reports_bare")
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "cannot be loaded" in out and "KeyError: 'handler'" in out and "cfg_handler.py" in out, out
    rep = report_of(tmp / "reports_bare")
    assert "KeyError: 'handler'" in rep["error"]["message"], rep["error"]


def _archive_of(reports):
    (mar,) = list(reports.glob("*/archive/model_store/*.mar"))
    return mar


def _opaque_copy(mar, dest):
    """The archive with its serialized file renamed to .bin: a format only its handler reads (the handler
    opens whatever the manifest names), so the tool cannot load the model without the handler."""
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(dest, "w") as out:
        manifest = json.loads(src.read("MAR-INF/MANIFEST.json"))
        old = manifest["model"]["serializedFile"]
        manifest["model"]["serializedFile"] = old.replace(".pt", ".bin")
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "MAR-INF/MANIFEST.json":
                data = json.dumps(manifest).encode()
            out.writestr(manifest["model"]["serializedFile"] if item.filename == old else item.filename, data)
    return dest


def test_mar_run_names_the_artefacts_with_sha256_and_blames_a_foreign_archive(no_leftovers):
    tmp = no_leftovers
    _function_handler(tmp / "fn_handler.py")
    spec = _project(tmp, f"{tmp / 'fn_handler.py'}:entry")
    # An archive built from other weights: the same project with its weights replaced.
    other = make_project(tmp / "other", rows=16, spec_overrides={
        "handler": {"name": f"{tmp / 'fn_handler.py'}:entry", "probes": False}, "answers": {"format": "logits"},
        "export": {"latency_repeats": 10, "probe": False}})
    torch.manual_seed(1)
    state = torch.load(tmp / "other" / "weights.pt")
    torch.save({k: torch.randn_like(v) for k, v in state.items()}, tmp / "other" / "weights.pt")
    assert _run(other, tmp, "--until", "handled", reports="reports_other").returncode in (0, 1)
    foreign = _archive_of(tmp / "reports_other")

    # TorchScript inside: the export stage checks the archive's own model, and blames it.
    res = _run(spec, tmp, "--mar", str(foreign), "--until", "handled")
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    rep = report_of(tmp / "reports")
    assert rep["plan"]["stages"] == ["baseline", "exported", "handled"]
    assert rep["stages"]["export"]["mode"] == "archive (TorchScript)"
    assert rep["attribution"]["layer"] == "archive problem", rep["attribution"]
    assert "--mar" in rep["attribution"]["summary"] and "weights" in rep["attribution"]["summary"]
    arts = {a["name"]: a for a in rep["stages"]["archive"]["artefacts"]}
    with zipfile.ZipFile(foreign) as zf:
        serialized = json.loads(zf.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"]
        assert arts[serialized]["sha256"] == hashlib.sha256(zf.read(serialized)).hexdigest()
        assert arts["fn_handler.py"]["sha256"] == hashlib.sha256(zf.read("fn_handler.py")).hexdigest()
    assert arts[serialized]["role"] == "serialized_file" and arts["fn_handler.py"]["role"] == "handler"

    # A format only the handler reads: no export stage, and the handled stage's difference is the archive's.
    opaque = _opaque_copy(foreign, tmp / "opaque.mar")
    res = _run(spec, tmp, "--mar", str(opaque), "--until", "handled", reports="reports_opaque")
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    rep = report_of(tmp / "reports_opaque")
    assert rep["plan"]["stages"] == ["baseline", "handled"]
    assert rep["stages"]["export"]["not_applicable"].startswith("not applicable: validated through the handled stage")
    assert rep["attribution"]["layer"] == "archive problem", rep["attribution"]
    assert {a["role"] for a in rep["stages"]["archive"]["artefacts"]} >= {"serialized_file", "handler", "config_file"}


MODULE_HANDLE = '''
import json
import os
import sys

import torch

_model = None


def handle(data, context):
    """A module-level handle(data, context), no class: it loads its own weights from extra files."""
    global _model
    if _model is None:
        model_dir = context.system_properties["model_dir"]
        sys.path.insert(0, model_dir)
        from tiny_model import Tiny

        _model = Tiny()
        _model.load_state_dict(torch.load(os.path.join(model_dir, "weights.pt"), weights_only=True))
        _model.eval()
    if data is None:
        return None
    rows = [json.loads(r["body"]) if isinstance(r["body"], (bytes, bytearray)) else r["body"] for r in data]
    with torch.no_grad():
        return [row.tolist() for row in _model(torch.tensor([r["features"] for r in rows]))]
'''

CLASS_HANDLE_ONLY = '''
import json
import os

import torch


class OnlyHandle:
    """A plain class that overrides nothing but handle; TorchServe calls initialize, so it has one."""

    def initialize(self, context):
        props = context.system_properties
        path = os.path.join(props["model_dir"], context.manifest["model"]["serializedFile"])
        self.model = torch.jit.load(path, map_location="cpu").eval()

    def handle(self, data, context):
        rows = [json.loads(r["body"]) if isinstance(r["body"], (bytes, bytearray)) else r["body"] for r in data]
        with torch.no_grad():
            return [row.tolist() for row in self.model(torch.tensor([r["features"] for r in rows]))]
'''


@pytest.mark.parametrize("form", ["module_handle", "class_handle_only"])
def test_the_other_handler_forms_are_archived_and_run_in_process(no_leftovers, form):
    tmp = no_leftovers
    handler = write_handler(tmp / f"{form}.py", MODULE_HANDLE if form == "module_handle" else CLASS_HANDLE_ONLY)
    # The module-level handle loads its own model from a folder of extra files (as a Hugging Face folder is).
    extra = {"extra_files": ["bundle"]} if form == "module_handle" else {}
    spec = _project(tmp, str(handler), handler=extra)
    (spec.parent / "bundle").mkdir()
    for name in ("tiny_model.py", "weights.pt"):
        shutil.copy(spec.parent / name, spec.parent / "bundle" / name)
    res = _run(spec, tmp, "--until", "handled")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rep = report_of(tmp / "reports")
    assert rep["stages"]["archive"]["manifest"]["model"]["handler"] == f"{form}.py"
    if form == "module_handle":
        arts = {a["name"]: a["role"] for a in rep["stages"]["archive"]["artefacts"]}
        assert arts["weights.pt"] == arts["tiny_model.py"] == "extra_file", arts
    assert rep["stages"]["handled"]["batch1"]["answered"] == 16 and rep["attribution"]["layer"] is None
