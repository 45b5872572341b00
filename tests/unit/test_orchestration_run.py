"""The run around its stages: the store lock, the publish target re-checked after --wait, publishing only a pass.

No stage runs: ``_prepare`` is driven for real on a tiny project (spec, plan, run folder,
lock), and ``run_validation`` with its stage and gate steps replaced by stand-ins that
record whether the store lock is held while they run. The other run that holds the lock
is played by a second ``StoreLock`` in this process (flock locks exclude each other
across open files, also within one process), and the waiting run's poll sleep is where
that other run publishes and lets go, so nothing here waits on a clock.
"""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.errors import ArchiveError, LockError
from pipeline.evaluate.gate import Check, GateResult
from pipeline.run import publish, release, runner
from pipeline.run.options import RunOptions
from pipeline.run.publish import StoreLock, target_of
from pipeline.stages.archive import ArchiveResult
from pipeline.stages.outcomes import failed
from pipeline.stages.replay import ReplayResult
from tests.helpers import make_project

NAME = "tiny"  # make_project's model name


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("orch") / "p", rows=6)


@pytest.fixture(autouse=True)
def no_java_needed(monkeypatch):
    """The server's preconditions are not what these tests judge (and a host may have no JDK)."""
    monkeypatch.setattr(runner, "find_java", lambda: None)


@pytest.fixture(autouse=True)
def _restore_signals():
    """run_validation arms SIGALRM for the run's deadline; leave none armed behind."""
    old = {s: signal.getsignal(s) for s in (signal.SIGALRM, signal.SIGINT)}
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    for s, h in old.items():
        signal.signal(s, h)


def _opts(project: Path, tmp_path: Path, **kw) -> RunOptions:
    return RunOptions(spec_path=project, reports_dir=tmp_path / "reports", model_store=tmp_path / "store", **kw)


def _is_locked(store: Path) -> bool:
    try:
        StoreLock(NAME, store, None).acquire(wait=False).release()
    except LockError:
        return True
    return False


class OtherRun:
    """Another run holding the lock; when the waiting run first polls, it (optionally) publishes and lets go."""

    def __init__(self, store: Path, publishes: bool) -> None:
        self.store = store
        self.publishes = publishes
        self.lock = StoreLock(NAME, store, store / "other-run").acquire(wait=False)
        self.polls = 0

    def sleep(self, seconds: float) -> None:  # the waiting run's poll between flock attempts
        self.polls += 1
        if self.lock.fd is not None:
            if self.publishes:
                target_of(NAME, self.store).write_bytes(b"the other run's archive")
            self.lock.release()


def _prepare_while_other_run_holds(monkeypatch, opts: RunOptions, publishes: bool):
    other = OtherRun(opts.model_store, publishes)
    monkeypatch.setattr(publish, "time", SimpleNamespace(monotonic=publish.time.monotonic, sleep=other.sleep))
    run = runner._Run(opts, None)
    try:
        runner._prepare(run)
        return run, other, None
    except ArchiveError as e:
        return run, other, e
    finally:
        runner._disarm()
        other.lock.release()


def test_a_run_that_waited_fails_when_the_run_it_waited_for_published_the_target(project, tmp_path, monkeypatch):
    run, other, err = _prepare_while_other_run_holds(monkeypatch, _opts(project, tmp_path, wait_for_lock=True),
                                                     publishes=True)
    try:
        assert other.polls >= 1  # it did wait behind the other run
        assert err is not None and "already exists" in err.message and "--force" in err.message
        assert target_of(NAME, tmp_path / "store").read_bytes() == b"the other run's archive"
    finally:
        if run.lock is not None:
            run.lock.release()


@pytest.mark.parametrize("publishes, force", [(False, False), (True, True)])
def test_a_run_that_waited_goes_on_holding_the_lock_when_it_may_publish(project, tmp_path, monkeypatch,
                                                                       publishes, force):
    run, other, err = _prepare_while_other_run_holds(
        monkeypatch, _opts(project, tmp_path, wait_for_lock=True, force=force), publishes=publishes)
    try:
        assert err is None and other.polls >= 1 and run.record.plan is not None
        assert run.lock is not None and run.lock.fd is not None and _is_locked(tmp_path / "store")
    finally:
        if run.lock is not None:
            run.lock.release()


def test_without_wait_a_held_lock_fails_at_once_naming_the_holder(project, tmp_path, monkeypatch):
    other = OtherRun(tmp_path / "store", publishes=False)
    run = runner._Run(_opts(project, tmp_path), None)
    try:
        with pytest.raises(LockError, match="other-run"):
            runner._prepare(run)
    finally:
        runner._disarm()
        other.lock.release()
    assert other.polls == 0


# --- run_validation with its stages replaced: the lock over the whole run, publishing only a pass -------------------

class Stand:
    """Stand-ins for the stages and the gate; each notes whether the store lock is held while it runs."""

    def __init__(self, store: Path, mar: Path, gate_passes: bool, replay=None) -> None:
        self.store, self.mar, self.gate_passes, self.replay = store, mar, gate_passes, replay
        self.locked: dict[str, bool] = {}

    def stages(self, run, stack) -> None:
        self.locked["stages"] = _is_locked(self.store)
        run.update(archive=ArchiveResult(self.mar, "0" * 64, self.mar.stat().st_size, {}, {}, ()), replay=self.replay)

    def compare_and_gate(self, run) -> None:
        self.locked["gate"] = _is_locked(self.store)
        check = Check("accuracy drop", "served", 0.0, None, "<= 0.01", self.gate_passes)
        run.record = replace(run.record, gate=GateResult((check,)))

    def publish_archive(self, *args, **kwargs):
        self.locked["publish"] = _is_locked(self.store)
        return self.real_publish(*args, **kwargs)


@pytest.fixture
def stand(monkeypatch, tmp_path):
    def make(gate_passes: bool, replay=None) -> Stand:
        mar = tmp_path / "checked.mar"
        mar.write_bytes(b"the checked archive")
        s = Stand(tmp_path / "store", mar, gate_passes, replay)
        s.real_publish = release.publish_archive
        monkeypatch.setattr(runner, "_stages", s.stages)
        monkeypatch.setattr(runner, "_compare_and_gate", s.compare_and_gate)
        monkeypatch.setattr(release, "publish_archive", s.publish_archive)
        return s
    return make


def test_a_failed_gate_publishes_nothing_and_the_lock_is_held_until_the_end(project, tmp_path, stand):
    s = stand(gate_passes=False)
    out = runner.run_validation(_opts(project, tmp_path))
    assert (out.status, out.exit_code) == ("failed", 1)
    assert s.locked == {"stages": True, "gate": True}  # publish never reached
    assert not target_of(NAME, tmp_path / "store").exists() and out.report["complete"] is True
    assert not _is_locked(tmp_path / "store")  # released once the run is over


def test_a_passing_gate_publishes_the_checked_archive_under_the_lock(project, tmp_path, stand):
    s = stand(gate_passes=True)
    out = runner.run_validation(_opts(project, tmp_path))
    assert (out.status, out.exit_code) == ("passed", 0)
    assert s.locked == {"stages": True, "gate": True, "publish": True}
    assert target_of(NAME, tmp_path / "store").read_bytes() == b"the checked archive"
    assert not _is_locked(tmp_path / "store")


def test_a_passing_gate_with_server_timeouts_is_a_server_failure_exit_3_and_publishes_nothing(project, tmp_path,
                                                                                              stand):
    rows = (failed(0, "row-000", "timeout", "no answer within replay.request_timeout_s=1 s"),)
    s = stand(gate_passes=True, replay=ReplayResult(rows, 1.0, 1, None, 0, True, None))
    out = runner.run_validation(_opts(project, tmp_path))
    assert (out.status, out.exit_code) == ("error", 3) and "timeout: 1" in out.error.message
    assert "publish" not in s.locked and not target_of(NAME, tmp_path / "store").exists()
    assert not _is_locked(tmp_path / "store")


def test_a_run_without_publishing_takes_no_lock(project, tmp_path, stand):
    s = stand(gate_passes=True)
    out = runner.run_validation(_opts(project, tmp_path, publish=False))
    assert out.status == "passed" and s.locked == {"stages": False, "gate": False}
    assert not target_of(NAME, tmp_path / "store").exists()


def test_a_stage_whose_write_the_disk_refuses_is_exit_3_naming_the_file_not_a_tool_bug(project, tmp_path, stand,
                                                                                          monkeypatch):
    import errno

    s = stand(gate_passes=True)

    def full(run, stack):
        raise OSError(errno.ENOSPC, "No space left on device", str(run.record.run_dir / "export" / "model.pt"))

    monkeypatch.setattr(runner, "_stages", full)
    out = runner.run_validation(_opts(project, tmp_path))
    assert (out.status, out.exit_code, type(out.error).__name__) == ("error", 3, "RecordError")
    assert "export/model.pt: No space left on device" in out.error.message and "MiB free" in out.error.message
    assert "bug" not in out.error.message and not target_of(NAME, tmp_path / "store").exists()
    assert s.locked == {}
