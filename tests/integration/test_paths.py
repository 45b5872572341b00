"""Valid input always works: relative paths from any folder, spaces and non-ASCII under any locale."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import make_project
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration


def test_relative_paths_work_from_another_working_directory(no_leftovers):
    tmp = no_leftovers
    spec = make_project(tmp / "proj")
    work = tmp / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "pipeline", "run", os.path.relpath(spec, work), "--reports-dir",
                          "out/reports", "--model-store", "out/store"], cwd=work, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (report,) = (work / "out" / "reports").glob("*/report.json")
    assert json.loads(report.read_text())["status"] == "passed"
    assert (work / "out" / "store" / "tiny.mar").is_file()


def test_spaces_and_non_ascii_paths_under_the_c_locale(no_leftovers):
    tmp = no_leftovers
    root = tmp / "modèles de production" / "données ünï"
    spec = make_project(root / "projet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_") and k != "LANG"}
    env.update(LC_ALL="C", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "pipeline", "run", str(spec), "--reports-dir", str(root / "rapports"),
                          "--model-store", str(root / "dépôt")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (root / "dépôt" / "tiny.mar").is_file()
    (report,) = (root / "rapports").glob("*/report.json")
    assert json.loads(report.read_text(encoding="utf-8"))["stages"]["replay"]["answered"] == 60
