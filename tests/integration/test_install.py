"""Installable: the wheel, installed into a fresh virtual environment outside the repo, validates a model
from any folder with nothing from the source tree, and its ``init`` writes a spec that passes as written.

By default the fresh venv gets only the wheel (``--no-deps --no-index``) and sees the dependencies
of this project's venv through a path file: what is under test is the wheel (its packages, the
handlers, the workers' sitecustomize, defaults relative to the working directory), in seconds and
without a download. ``PACKAGE_VALIDATE_FULL_INSTALL=1`` installs every dependency into the fresh venv
instead, offline (``--no-index``) from a local wheelhouse, ``$PACKAGE_VALIDATE_WHEELHOUSE`` (default
``~/.cache/package-validate/wheelhouse``), filled once with ``pip download`` from the configured
indexes when it lacks something (431 MB; the install then took 22-32 s, the whole module 3-4 min
here); ``PACKAGE_VALIDATE_OFFLINE=1`` skips instead of downloading.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.helpers import leftover_processes
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration

WHEELHOUSE = Path(os.environ.get("PACKAGE_VALIDATE_WHEELHOUSE",
                                 Path.home() / ".cache" / "package-validate" / "wheelhouse"))
EXAMPLE = ROOT / "examples" / "breast_cancer"
EXAMPLE_FILES = ("model.py", "weights.pt", "test.csv", "train.csv")  # weights and CSVs: `make examples`
SOURCE = ("pyproject.toml", "README.md", "pipeline", "handlers")  # what a wheel is built from
IN_WHEEL = ("handlers/__init__.py", "handlers/tensor_classifier.py", "pipeline/cli.py",
            "pipeline/torchserve/worker_site/sitecustomize.py")


def _timed(cmd: list[str], *, timeout: float = 600, **kw) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    return res, time.monotonic() - t0


def _clean_env(venv: Path) -> dict[str, str]:
    """The environment of a user of the installed tool: its venv first, nothing pointing into the repo."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(ROOT))]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    env["VIRTUAL_ENV"] = str(venv)
    return env


def _build_wheel(tmp: Path) -> tuple[Path, float]:
    # Built from a copy of the sources: an in-tree build would leave build/ and *.egg-info in the repo,
    # and a stale build/lib could slip deleted modules into the wheel.
    src = tmp / "src"
    src.mkdir()
    for name in SOURCE:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(p, src / name)
    # --no-build-isolation: setuptools from this venv; isolation would fetch it from an index.
    res, secs = _timed([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp / "dist"), str(src)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    wheels = sorted((tmp / "dist").glob("package_validate-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0], secs


def _fill_wheelhouse(wheel: Path) -> float:
    if os.environ.get("PACKAGE_VALIDATE_OFFLINE") == "1":
        pytest.skip(f"the wheelhouse {WHEELHOUSE} lacks dependencies and PACKAGE_VALIDATE_OFFLINE=1: fill it with "
                    f"pip download -c constraints.txt -d {WHEELHOUSE} <the wheel>")
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    res, secs = _timed([sys.executable, "-m", "pip", "download", "-q", "-c", str(ROOT / "constraints.txt"),
                        "-d", str(WHEELHOUSE), str(wheel)], timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for own in WHEELHOUSE.glob("package_validate-*.whl"):  # pip download saves the wheel asked for, too
        own.unlink()
    return secs


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> SimpleNamespace:
    """package-validate's wheel installed offline into a fresh venv outside the repo; timings printed."""
    tmp = tmp_path_factory.mktemp("install")
    wheel, t_wheel = _build_wheel(tmp)
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in IN_WHEEL if n not in names]
    assert not missing, f"{wheel.name} lacks {missing}"
    assert not [n for n in names if n.startswith(("tests/", "examples/"))], "tests or examples in the wheel"
    venv = tmp / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    full = os.environ.get("PACKAGE_VALIDATE_FULL_INSTALL") == "1"
    # Without full installs the venv needs no pip of its own: this project's, seen through the path
    # file, installs the wheel into it (and its bundled setuptools would shadow the newer one torch needs).
    res, t_venv = _timed([base_python, "-m", "venv", *(() if full else ("--without-pip",)), str(venv)])
    assert res.returncode == 0, res.stderr
    py = str(venv / "bin" / "python")
    env = _clean_env(venv)
    if not full:
        t_install = _install_wheel_only(py, venv, wheel, env)
        _check_installed(py, venv, tmp, env)
        print(f"\ninstall timings: wheel build {t_wheel:.1f} s, venv {t_venv:.1f} s, wheel-only install "
              f"{t_install:.1f} s (dependencies from {sysconfig.get_paths()['purelib']})")
        return SimpleNamespace(venv=venv, exe=venv / "bin" / "package-validate", env=env)
    # --no-index: nothing from the internet. --no-compile: byte-compiling the 1.7 GB environment takes
    # about 90 s here and proves nothing about the wheel; modules compile when first imported.
    install = [py, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(WHEELHOUSE), "--no-compile",
               "-c", str(ROOT / "constraints.txt"), str(wheel)]
    t_fill = 0.0
    dry, _ = _timed([*install, "--dry-run"], env=env)
    if dry.returncode != 0:
        t_fill = _fill_wheelhouse(wheel)
    res, t_install = _timed(install, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    _check_installed(py, venv, tmp, env)
    print(f"\ninstall timings: wheel build {t_wheel:.1f} s, venv {t_venv:.1f} s, "
          f"wheelhouse fill {t_fill:.1f} s, offline install {t_install:.1f} s")
    return SimpleNamespace(venv=venv, exe=venv / "bin" / "package-validate", env=env)


def _install_wheel_only(py: str, venv: Path, wheel: Path, env: dict[str, str]) -> float:
    """The wheel alone into the fresh venv; the dependencies are this project's venv's, seen through a path
    file (its own .pth files, the editable install of the source tree among them, are not processed)."""
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, env=env, check=True).stdout.strip())
    (site / "_package_validate_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res, secs = _timed([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile", str(wheel)],
                       env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return secs


def _check_installed(py: str, venv: Path, tmp: Path, env: dict[str, str]) -> None:
    check = subprocess.run([py, "-m", "pip", "check"], capture_output=True, text=True, env=env, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    where = subprocess.run([py, "-c", "import pipeline, handlers, pipeline.compat as c; print(pipeline.__file__); "
                                      "print(handlers.__file__); print(c.worker_site_dir())"],
                           capture_output=True, text=True, env=env, cwd=tmp, timeout=120)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(venv)) for line in where.stdout.split()), where.stdout
    assert (Path(where.stdout.split()[2]) / "sitecustomize.py").is_file()


def _example_copy(dest: Path, *, with_spec: bool) -> Path:
    missing = [n for n in EXAMPLE_FILES if not (EXAMPLE / n).is_file()]
    assert not missing, f"{EXAMPLE} lacks {missing}: run make examples"
    dest.mkdir(parents=True)
    for name in EXAMPLE_FILES + (("spec.yaml",) if with_spec else ()):
        shutil.copy2(EXAMPLE / name, dest / name)
    return dest


def _assert_run_passed(res: subprocess.CompletedProcess, proj: Path, model: str) -> dict:
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    runs = sorted((proj / "reports").glob("*/report.json"))
    assert len(runs) == 1, runs
    assert (proj / "reports" / "history.sqlite").is_file()
    mar = proj / "model_store" / f"{model}.mar"
    assert mar.is_file()
    assert "tensor_classifier.py" in zipfile.ZipFile(mar).namelist()  # the handler travelled in the wheel
    return json.loads(runs[0].read_text())


def test_installed_tool_validates_an_example_from_its_own_folder(installed, no_leftovers):
    proj = _example_copy(no_leftovers / "proj", with_spec=True)
    res, secs = _timed([str(installed.exe), "run", "spec.yaml"], cwd=proj, env=installed.env)
    print(f"\nrun of the example spec with the installed tool: {secs:.1f} s")
    rep = _assert_run_passed(res, proj, "breast_cancer_mlp")
    assert rep["status"] == "passed" and rep["run_dir"].startswith(str(proj / "reports"))
    assert not leftover_processes(no_leftovers)


def test_init_writes_a_spec_that_passes_unchanged(installed, no_leftovers):
    proj = _example_copy(no_leftovers / "proj", with_spec=False)
    init = [str(installed.exe), "init", "--factory", "model.py:build_model", "--weights", "weights.pt",
            "--data", "test.csv"]
    res, secs = _timed(init, cwd=proj, env=installed.env)
    assert res.returncode == 0, res.stdout + res.stderr
    spec = (proj / "spec.yaml").read_text()
    for line in ("kind: tensor", "path: test.csv", "train_path: train.csv", "input_shape: [30]",
                 "num_classes: 2", "handler: tensor_classifier", "# positive_class: 1"):
        assert line in spec, f"{line!r} not in the spec:\n{spec}"
    again, _ = _timed(init, cwd=proj, env=installed.env)
    assert again.returncode == 2 and "--force" in again.stderr
    assert (proj / "spec.yaml").read_text() == spec
    name = yaml.safe_load(spec)["name"]
    assert name == "proj"  # the factory's file is model.py, so the name comes from its folder
    res, run_secs = _timed([str(installed.exe), "run", "spec.yaml"], cwd=proj, env=installed.env)
    print(f"\ninit {secs:.1f} s, run of its spec {run_secs:.1f} s")
    _assert_run_passed(res, proj, name)
    assert not leftover_processes(no_leftovers)
