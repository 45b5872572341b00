"""The torchvision workaround: torchvision 0.28.0+cu130 imports beside the CPU torch, here and in workers."""

import os
import subprocess
import sys
from pathlib import Path

from pipeline.compat import worker_site_dir

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_torchvision_imports_after_prepare():
    res = _python("from pipeline.compat import prepare_torchvision as p; s = p(); import torchvision.transforms; "
                  "print(s)")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[-1] in ("patched", "native")


def test_torchserve_workers_load_the_builtin_image_handler_through_sitecustomize():
    res = _python("import ts.torch_handler.image_classifier as ic, pipeline.compat as c; "
                  "print(c.torchvision_state(), ic.ImageClassifier.topk)",
                  PYTHONPATH=f"{worker_site_dir()}{os.pathsep}{ROOT}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[-2:] in (["patched", "5"], ["native", "5"])


def test_it_does_nothing_where_the_compiled_ops_load():
    code = ("import torch; torch.ops.load_library = lambda path: None\n"
            "from pipeline.compat import prepare_torchvision\n"
            "print(prepare_torchvision())\n"
            "import torch.library\n"
            "try:\n    torch.library.Library('torchvision', 'FRAGMENT').define("
            "'nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor'); print('free')\n"
            "except RuntimeError:\n    print('taken')\n")
    res = _python(code)
    assert res.returncode == 0, res.stderr[-2000:]
    state, schema = res.stdout.split()
    assert state == "native" and schema == "free", "no schema is defined when the ops load themselves"
