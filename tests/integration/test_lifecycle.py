"""Nothing outlives the prompt, and secrets stay with the tool.

When the CLI returns, on any exit path, no process of its run is alive: TorchServe's whole
group (guardian, launcher, Java, workers) and the handled stage's child with all it started.
Each test asserts it right after the CLI process exits, by the run marker every such process
inherits (``tests.helpers.leftover_processes``). The handlers here make the stop slow on
purpose (a worker or helper that ignores SIGTERM) so the second Ctrl-C lands in the stop.

Every child that runs user code gets the caller's environment minus its secrets; the handlers
here print ``os.environ`` where the run folder keeps it, and the tests grep the whole folder.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import leftover_processes, make_project, write_handler
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration

ENV_HANDLER = '''
import json
import os
import signal
import subprocess
import sys
import time

import torch


HELPER_CODE = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getppid()} {os.getpid()}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""


class EnvDumping:
    """Prints its whole environment at initialize (to the handled stage's handler.log, or TorchServe's
    model_log.log); options baked in by the test: ignore SIGTERM, start a helper, block in initialize."""

    def initialize(self, context):
        print("ENV-DUMP " + json.dumps(dict(os.environ), sort_keys=True), flush=True)
        if IGNORE_TERM:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if HELPER:  # a helper process that ignores SIGTERM, as a stuck helper would; it says when it does
            subprocess.Popen([sys.executable, "-c", HELPER_CODE, MARKER])
        if BLOCK:
            time.sleep(600)
        d = context.system_properties.get("model_dir")
        self.model = torch.jit.load(os.path.join(d, context.manifest["model"]["serializedFile"]))

    def handle(self, data, context):
        out = []
        for req in data:
            body = req.get("body") or req.get("data")
            body = json.loads(body) if isinstance(body, (bytes, str)) else body
            logits = self.model(torch.tensor(body["features"], dtype=torch.float32).reshape(1, -1))[0]
            out.append(json.dumps({"prediction": int(logits.argmax()),
                                   "probabilities": torch.softmax(logits.double(), 0).tolist(),
                                   "logits": logits.tolist()}))
        return out
'''


def _handler(tmp: Path, *, ignore_term=False, helper=False, block=False) -> Path:
    src = (ENV_HANDLER.replace("IGNORE_TERM", repr(ignore_term)).replace("HELPER", repr(helper))
           .replace("BLOCK", repr(block)).replace("MARKER", repr(str(tmp / "helper.pid"))))
    return write_handler(tmp / "env_handler.py", src)


SECRETS = {  # name -> a value that must appear in no file of the run folder
    "PACKAGE_VALIDATE_TOKEN": "pv-endpoint-7f3a9c",
    "PV_TEST_GITHUB_TOKEN": "ghp-test-51b2e8",
    "pv_test_db_password": "pw-test-c04d17",
    "PV_TEST_LISTED": "listed-test-9e6a20",  # withheld because the spec lists it in serving.secret_env
}
ASKED = ("PV_TEST_ASKED_TOKEN", "asked-value-3d81f5")  # in serving.env: TorchServe gets it, name or not


def _secret_spec(tmp: Path, rows: int = 40) -> Path:
    return make_project(tmp / "proj", rows=rows, spec_overrides={
        "handler": {"name": str(_handler(tmp)), "probes": False},  # it answers well-formed rows only
        "serving": {"startup_timeout_s": 90, "secret_env": ["PV_TEST_LISTED"], "env": {ASKED[0]: ASKED[1]}}})


def _assert_no_secret_in(run_dir: Path) -> None:
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) > 5, files
    for path in files:
        data = path.read_bytes()
        leaked = [n for n, v in SECRETS.items() if v.encode() in data]
        assert not leaked, f"{path} holds the value of {leaked}"


def _env_dumps(path: Path) -> list[dict]:
    text = path.read_text(errors="replace")
    return [json.loads(line.split("ENV-DUMP ", 1)[1].strip()) for line in text.splitlines() if "ENV-DUMP " in line]


def _cli(tmp: Path, spec: Path, *extra: str, env: dict | None = None, code: str | None = None) -> subprocess.Popen:
    """The real CLI in a subprocess (``code``: Python run before it, to inject a fault)."""
    args = ["run", str(spec), "--reports-dir", str(tmp / "reports"), "--model-store", str(tmp / "store"), *extra]
    prog = f"{code or ''}\nimport sys\nfrom pipeline.cli import main\nsys.exit(main({args!r}))"
    return subprocess.Popen([sys.executable, "-c", prog], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


@pytest.fixture
def started():
    """The CLI processes a test starts; one still running when the test ends (it failed) is killed,
    and its guardian then stops its TorchServe."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=30)


def _wait(what: str, ready, proc: subprocess.Popen, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = ready()
        if got:
            return got
        assert proc.poll() is None, (what, proc.communicate())
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:g} s")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _report(tmp: Path) -> dict:
    (path,) = list((tmp / "reports").glob("*/report.json"))
    return json.loads(path.read_text())


def test_secrets_never_reach_the_handled_child_and_the_report_names_them(tmp_path, monkeypatch):
    """In-process (``main``), ``--until handled``: the handler's environment dump lands in handler.log."""
    from pipeline.cli import main

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    old_term = signal.getsignal(signal.SIGTERM)  # main() installs its own
    try:
        code = main(["run", str(_secret_spec(tmp_path)), "--until", "handled", "--reports-dir",
                     str(tmp_path / "reports"), "--quiet"])
    finally:
        signal.signal(signal.SIGTERM, old_term)
    assert code == 0
    rep = _report(tmp_path)
    run_dir = Path(rep["run_dir"])
    (dump,) = _env_dumps(run_dir / "handled" / "handler.log")
    assert not set(SECRETS) & set(dump), "the handler saw a secret's name"
    assert dump["PATH"] == os.environ["PATH"] and "PACKAGE_VALIDATE_RUN" in dump, "the rest is inherited"
    _assert_no_secret_in(run_dir)
    assert set(SECRETS) <= set(rep["environment"]["withheld_env"])
    assert not set(SECRETS.values()) & set(rep["environment"]["withheld_env"]), "names, never values"


def test_an_internal_error_while_serving_leaves_nothing_running_and_no_secret_in_the_run_folder(no_leftovers, started):
    """One served run: the worker's environment dump (model_log.log) has serving.env, not the caller's
    secrets; an internal error injected after the server is up ends the run with exit 3 and no process."""
    tmp = no_leftovers
    spec = _secret_spec(tmp)
    inject = ("import pipeline.run.runner as r\n"
              "def broken(*a, **k):\n    raise RuntimeError('injected: a bug of the tool mid-run')\n"
              "r.replay_dataset = broken")
    proc = _cli(tmp, spec, env=SECRETS, code=inject)
    started.append(proc)
    out, err = proc.communicate(timeout=300)
    left = leftover_processes(tmp)  # right after the CLI exited: no waiting
    assert proc.returncode == 3, out + err
    assert not left, f"alive after the CLI returned: {left}"
    rep = _report(tmp)
    assert rep["error"]["type"] == "InternalError" and "injected" in rep["error"]["message"]
    run_dir = Path(rep["run_dir"])
    worker_dumps = _env_dumps(run_dir / "torchserve" / "logs" / "model_log.log")
    assert worker_dumps and all(d.get(ASKED[0]) == ASKED[1] for d in worker_dumps), "serving.env arrives"
    assert all(not set(SECRETS) & set(d) for d in worker_dumps)
    (handled_dump,) = _env_dumps(run_dir / "handled" / "handler.log")
    assert not set(SECRETS) & set(handled_dump)
    _assert_no_secret_in(run_dir)
    assert set(SECRETS) <= set(rep["environment"]["withheld_env"])


def test_ctrl_c_twice_while_the_handled_child_stops_leaves_neither_it_nor_its_helper(no_leftovers, started):
    """The handler starts a helper that ignores SIGTERM and blocks in initialize; the second Ctrl-C
    arrives once the child is gone and the helper is still in its grace period."""
    tmp = no_leftovers
    spec = make_project(tmp / "proj", rows=20, spec_overrides={"handler": str(_handler(tmp, helper=True, block=True))})
    proc = _cli(tmp, spec, "--until", "handled")
    started.append(proc)
    marker = tmp / "helper.pid"
    _wait("the handler's helper started", marker.is_file, proc)
    child_pid, helper_pid = map(int, marker.read_text().split())
    try:
        proc.send_signal(signal.SIGINT)
        _wait("the handled child stopped", lambda: _gone(child_pid), proc, timeout=30)
        proc.send_signal(signal.SIGINT)  # the helper ignores SIGTERM: the stop is still waiting on it
        out, err = proc.communicate(timeout=60)
        left = leftover_processes(tmp)
        assert proc.returncode == 130, out + err
        assert not left and _gone(helper_pid), f"alive after the CLI returned: {left}"
    finally:  # a helper left behind by a failing run ignores SIGTERM: this test's own, by pid
        if not _gone(helper_pid):
            os.kill(helper_pid, signal.SIGKILL)
    assert _report(tmp)["status"] == "interrupted"


def test_ctrl_c_twice_while_torchserve_stops_leaves_no_worker(no_leftovers, started):
    """The worker ignores SIGTERM, so the stop waits its grace period and SIGKILLs; the second Ctrl-C
    arrives after TorchServe's launcher is gone, in that wait."""
    tmp = no_leftovers
    spec = make_project(tmp / "proj", rows=1000, spec_overrides={"handler": str(_handler(tmp, ignore_term=True))})
    # A real run has threads besides the main one (torch's pool, the event loop's executor); one that
    # takes a process-directed Ctrl-C is what a signal mask on the main thread alone does not cover.
    other_thread = ("import threading, time\ndef tick():\n    while True:\n        time.sleep(0.01)\n"
                    "threading.Thread(target=tick, daemon=True).start()")
    proc = _cli(tmp, spec, "--rate", "100", code=other_thread)
    started.append(proc)

    def replaying():
        logs = list((tmp / "reports").glob("*/torchserve/logs/access_log.log"))
        return logs and logs[0].read_text(errors="replace").count("POST /predictions/") >= 20

    def launcher():  # TorchServe's Python launcher (the guardian's command line names it too)
        cmds = {p.pid: " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])
                if str(tmp) in _marker(p)}
        return [pid for pid, cmd in cmds.items() if "ts.model_server" in cmd and "pipeline.torchserve.guardian" not in cmd]

    _wait("the replay started", replaying, proc)
    (launcher_pid,) = launcher()
    proc.send_signal(signal.SIGINT)
    _wait("TorchServe's launcher stopped", lambda: _gone(launcher_pid), proc, timeout=60)
    assert leftover_processes(tmp), "the worker ignores SIGTERM: the stop is still waiting"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=90)
    left = leftover_processes(tmp)
    assert proc.returncode == 130, out + err
    assert not left, f"alive after the CLI returned: {left}"
    rep = _report(tmp)
    assert rep["status"] == "interrupted" and rep["published"] is None and "Traceback" not in err


def _marker(p: psutil.Process) -> str:
    try:
        return p.environ().get("PACKAGE_VALIDATE_RUN", "")
    except (psutil.Error, OSError):
        return ""
