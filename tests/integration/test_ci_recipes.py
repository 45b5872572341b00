"""The CI recipes in examples/ci run as written: their shell steps are read from the YAML and executed here.

GitHub Actions: every ``run:`` step of each job, in order, as the runner does (``bash -e`` on a script
file; a step after a failure only with ``if: always()``; lines appended to ``$GITHUB_PATH`` put on the
PATH of later steps; ``$GITHUB_STEP_SUMMARY`` a file). GitLab CI: each job's ``before_script`` and
``script`` lines in one ``bash`` with ``set -eo pipefail``, then ``after_script`` in a new shell, with
``extends`` and ``variables`` applied.

What cannot run here, and is not run: the ``uses:`` steps (checkout, setup-python, the cache restore
and save, the artifact upload, the junit report action; listed in NOT_RUN below), GitLab's image,
cache and artifacts, and the internet package indexes. The one substitution: ``PIP_NO_INDEX=1`` and
``PV_VENV`` pointing at this project's venv, so the recipes' install steps run as written, against an
environment that already holds everything, and must find nothing to download. The cache between two
nights is the recipe's own ``pv-history`` folder, left in place as the cache would bring it back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import leftover_processes, make_project
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration

RECIPES = ROOT / "examples" / "ci"
GITHUB = RECIPES / "github-actions.yml"
GITLAB = RECIPES / "gitlab-ci.yml"
NOT_RUN = {  # uses: steps: GitHub's own actions, which only a runner can execute
    "actions/checkout", "actions/setup-python", "actions/cache/restore", "actions/cache/save",
    "actions/upload-artifact", "mikepenz/action-junit-report",
}
STEP_TIMEOUT_S = 600
DEV_VENV = Path(sys.prefix)  # the venv running these tests: it has package-validate and everything it needs


def _adopter_repo(root: Path) -> Path:
    """A repo as an adopter has it: a model, its data, spec.yaml at the top, the tool's constraints vendored."""
    make_project(root)
    (root / "ci").mkdir()
    shutil.copy2(ROOT / "constraints.txt", root / "ci" / "package-validate-constraints.txt")
    return root


def _base_env(recipe_env: dict, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({k: str(v) for k, v in recipe_env.items()})
    env.update({"PIP_NO_INDEX": "1", "PV_VENV": str(DEV_VENV), "CI": "true"})
    return env


def _no_downloads(output: str) -> None:
    assert "Downloading" not in output and "Collecting" not in output, output[-3000:]


# ---------------------------------------------------------------- GitHub Actions


def _github() -> dict:
    doc = yaml.safe_load(GITHUB.read_text())
    on = doc.get("on", doc.get(True))  # PyYAML reads the bare key `on` as True (YAML 1.1)
    assert {"schedule", "push", "pull_request"} <= set(on), on
    return doc


def _run_github_job(name: str, cwd: Path, tmp: Path) -> dict:
    """Run the job's run: steps as the runner would; return outputs, the summary and what was not run."""
    doc = _github()
    job = doc["jobs"][name]
    env = _base_env({**doc.get("env", {}), **job.get("env", {})}, tmp)
    github_path, summary = tmp / f"{name}.path", tmp / f"{name}.summary.md"
    github_path.write_text("")
    summary.write_text("")
    env.update({"GITHUB_PATH": str(github_path), "GITHUB_STEP_SUMMARY": str(summary),
                "GITHUB_WORKSPACE": str(cwd), "RUNNER_TEMP": str(tmp)})
    failed, skipped, outputs = False, [], []
    for i, step in enumerate(job["steps"]):
        if "uses" in step:
            skipped.append(step["uses"].split("@")[0])
            continue
        script = step["run"]
        assert "${{" not in script, f"step {step.get('name', i)}: an expression a local shell cannot evaluate"
        if failed and "always()" not in str(step.get("if", "")):
            continue
        path_entries = [p for p in github_path.read_text().splitlines() if p]
        step_env = {**env, **{k: str(v) for k, v in step.get("env", {}).items()},
                    "PATH": os.pathsep.join([*reversed(path_entries), env["PATH"]])}
        file = tmp / f"{name}-step{i}.sh"
        file.write_text(script)
        res = subprocess.run(["bash", "-e", str(file)], cwd=cwd, env=step_env, capture_output=True, text=True,
                             timeout=STEP_TIMEOUT_S)
        outputs.append((step.get("name", f"step {i}"), res))
        failed = failed or res.returncode != 0
    return {"outputs": outputs, "summary": summary.read_text(), "skipped": set(skipped), "failed": failed}


def _assert_all_passed(outputs) -> None:
    bad = [(n, r.returncode, r.stdout[-2000:] + r.stderr[-3000:]) for n, r in outputs if r.returncode != 0]
    assert not bad, bad


def _reports(cwd: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((cwd / "reports").glob("*/report.json"))]


def test_github_release_check_runs_as_written(no_leftovers):
    tmp = no_leftovers
    repo = _adopter_repo(tmp / "repo")
    job = _run_github_job("release-check", repo, tmp)
    _assert_all_passed(job["outputs"])
    assert job["skipped"] <= NOT_RUN and "actions/upload-artifact" in job["skipped"], job["skipped"]
    install = job["outputs"][0][1]
    _no_downloads(install.stdout + install.stderr)
    assert job["summary"].startswith("# PASS: tiny"), job["summary"][:500]
    (rep,) = _reports(repo)
    assert rep["status"] == "passed" and (Path(rep["run_dir"]) / "junit.xml").is_file()
    assert (repo / "model_store" / "tiny.mar").is_file()
    assert not leftover_processes(tmp)


def test_github_nightly_keeps_history_between_nights(no_leftovers):
    tmp = no_leftovers
    repo = _adopter_repo(tmp / "repo")
    first = _run_github_job("nightly", repo, tmp)
    _assert_all_passed(first["outputs"])
    assert {"actions/cache/restore", "actions/cache/save"} <= first["skipped"] <= NOT_RUN
    (night1,) = _reports(repo)
    assert not [c for c in night1["gate"]["checks"] if " vs run of " in c["name"]]  # the first night has no prior
    kept = repo / "pv-history"
    assert (kept / "history.sqlite").is_file() and len(list(kept.glob("*/report.json"))) == 1
    # The next night: a fresh checkout (no reports/), the cache brings pv-history/ back.
    shutil.rmtree(repo / "reports")
    second = _run_github_job("nightly", repo, tmp)
    _assert_all_passed(second["outputs"])
    runs = _reports(repo)
    assert len(runs) == 2 and all(r["status"] == "passed" for r in runs)
    newest = max(runs, key=lambda r: r["started_at"])
    prior_checks = [c for c in newest["gate"]["checks"] if " vs run of " in c["name"]]
    assert prior_checks and all(c["passed"] for c in prior_checks), newest["gate"]["checks"][:3]
    assert "## History" in second["summary"] and second["summary"].count(" passed ") >= 2, second["summary"][-1500:]
    assert len(list(kept.glob("*/report.json"))) == 2
    assert not (repo / "model_store" / "tiny.mar").exists()  # nightly never publishes
    assert not leftover_processes(tmp)


# ---------------------------------------------------------------- GitLab CI


def _flat(lines) -> list[str]:
    out = []
    for line in lines or []:
        out.extend(_flat(line) if isinstance(line, list) else [str(line)])
    return out


def _gitlab_job(doc: dict, name: str) -> dict:
    job = dict(doc[name])
    parent = job.pop("extends", None)
    if parent is not None:
        job = {**_gitlab_job(doc, parent), **job}  # GitLab merges hashes and replaces arrays; one level is enough here
    return job


def _run_gitlab_job(name: str, cwd: Path, tmp: Path) -> dict:
    doc = yaml.safe_load(GITLAB.read_text())
    job = _gitlab_job(doc, name)
    env = _base_env({**doc.get("variables", {}), **job.get("variables", {})}, tmp)
    env.update({"CI_PROJECT_DIR": str(cwd), "CI_JOB_NAME": name})
    main = ["set -eo pipefail", *_flat(job.get("before_script")), *_flat(job["script"])]
    res = subprocess.run(["bash", "-c", "\n".join(main)], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=STEP_TIMEOUT_S)
    after = subprocess.run(["bash", "-c", "\n".join(["set -eo pipefail", *_flat(job.get("after_script"))])],
                           cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    return {"job": job, "main": res, "after": after}


@pytest.mark.parametrize("name", ["release-check", "nightly"])
def test_gitlab_jobs_run_as_written(name, no_leftovers):
    tmp = no_leftovers
    repo = _adopter_repo(tmp / "repo")
    run = _run_gitlab_job(name, repo, tmp)
    res, after = run["main"], run["after"]
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert after.returncode == 0 and after.stdout.startswith("# PASS: tiny"), after.stdout[:500] + after.stderr
    _no_downloads(res.stdout + res.stderr)
    (rep,) = _reports(repo)
    assert rep["status"] == "passed"
    junit = run["job"]["artifacts"]["reports"]["junit"]
    assert list(repo.glob(junit)), f"no file matches the junit artifact {junit}"
    assert all(list(repo.glob(p.rstrip("/"))) for p in run["job"]["artifacts"]["paths"])
    if name == "nightly":
        assert run["job"]["cache"]["paths"] == ["pv-history/"]
        assert (repo / "pv-history" / "history.sqlite").is_file()
        assert len(list((repo / "pv-history").glob("*/report.json"))) == 1
    assert not leftover_processes(tmp)
