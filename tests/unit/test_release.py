"""No release without its record: report files first, then the archive, then the record confirmed, on any write failure."""

import errno
import json

import pytest

from pipeline.errors import RecordError
from pipeline.history.store import HISTORY_FILE, load_history
from pipeline.record import RunRecord
from pipeline.report import writer
from pipeline.run.release import close_run
from pipeline.stages.archive import ArchiveResult
from pipeline.stages.dataset import DatasetResult
from tests.helpers import in_process, make_project

NEW, OLD = b"the new archive", b"the previous release"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return in_process(make_project(tmp_path_factory.mktemp("release") / "p", rows=12))


@pytest.fixture
def record(project, tmp_path):
    (tmp_path / "run").mkdir()
    mar = tmp_path / "run" / "tiny.mar"
    mar.write_bytes(NEW)
    archive = ArchiveResult(mar_path=mar, sha256="ab" * 32, size_bytes=len(NEW), manifest={}, model_config={},
                            members=())
    return RunRecord(started_at="2026-12-01T10:00:00+00:00", spec=project.spec, plan=project.plan,
                     run_dir=tmp_path / "run", dataset=DatasetResult(project.rows, None, None),
                     baseline=project.base, archive=archive)


def _close(record, tmp_path, status="passed", publish=True):
    return close_run(record, status, None, publish=publish, store=tmp_path / "store", force=True,
                     reports_dir=tmp_path)


def _store(tmp_path, previous=True):
    (tmp_path / "store").mkdir()
    if previous:
        (tmp_path / "store" / "tiny.mar").write_bytes(OLD)
    return tmp_path / "store" / "tiny.mar"


def _full_disk(monkeypatch, name, after=0):
    """write_atomic fails with ENOSPC for ``name`` once it has been written ``after`` times."""
    real, seen = writer.write_atomic, []

    def write(path, data):
        if path.name == name:
            seen.append(path)
            if len(seen) > after:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(writer, "write_atomic", write)
    return seen


def test_a_passing_run_is_published_once_its_record_says_so(record, tmp_path):
    target = _store(tmp_path)
    closed = _close(record, tmp_path)
    assert (closed.status, closed.exit_code, target.read_bytes()) == ("passed", 0, NEW)
    on_disk = json.loads((record.run_dir / "report.json").read_text())
    assert on_disk["published"] == str(target) and on_disk["release"]["state"] == "published"
    assert "Published:" in (record.run_dir / "report.md").read_text()
    assert [p.name for p in target.parent.iterdir()] == ["tiny.mar"], "the replaced archive kept aside is dropped"
    assert load_history(tmp_path / HISTORY_FILE)[0].published == str(target)


def test_a_report_that_cannot_be_written_publishes_nothing_and_is_exit_3(record, tmp_path, monkeypatch):
    target = _store(tmp_path)
    _full_disk(monkeypatch, "report.md")
    closed = _close(record, tmp_path)
    assert (closed.status, closed.exit_code) == ("error", 3) and isinstance(closed.error, RecordError)
    msg = closed.error.message
    assert "report.md" in msg and str(record.run_dir) in msg and "MiB free" in msg and "--reports-dir" in msg
    assert target.read_bytes() == OLD, "the previous release stays"
    on_disk = json.loads((record.run_dir / "report.json").read_text())  # written wherever it still can be
    assert on_disk["status"] == "error" and on_disk["published"] is None
    assert load_history(tmp_path / HISTORY_FILE)[0].status == "error"


def test_rows_that_cannot_be_written_are_exit_3_not_a_failed_gate(record, tmp_path, monkeypatch):
    _full_disk(monkeypatch, "rows.parquet")
    closed = _close(record, tmp_path, status="failed", publish=False)
    assert closed.exit_code == 3 and "rows.parquet" in closed.error.message


def test_a_record_that_cannot_confirm_the_release_puts_the_previous_one_back(record, tmp_path, monkeypatch):
    target = _store(tmp_path)
    writes = _full_disk(monkeypatch, "report.json", after=1)  # the pending record is written, then the disk fills
    closed = _close(record, tmp_path)
    assert (closed.status, closed.exit_code) == ("error", 3)
    assert target.read_bytes() == OLD and "previous release again" in closed.error.message
    assert [p.name for p in target.parent.iterdir()] == ["tiny.mar"]
    assert len(writes) == 4  # pending, published (failed), the error report (failed), report.json alone (failed)
    pending = json.loads((record.run_dir / "report.json").read_text())
    assert pending["release"] == {"state": "pending", "archive_sha256": "ab" * 32, "target": None}
    assert pending["published"] is None
    assert "RecordError" in (record.run_dir / "report.md").read_text()  # the error report got that far


def test_without_a_previous_release_an_unconfirmed_one_is_removed(record, tmp_path, monkeypatch):
    target = _store(tmp_path, previous=False)
    _full_disk(monkeypatch, "report.json", after=1)
    closed = _close(record, tmp_path)
    assert closed.exit_code == 3 and not target.exists() and "was removed" in closed.error.message


def test_a_failed_gate_publishes_nothing(record, tmp_path):
    target = _store(tmp_path)
    closed = _close(record, tmp_path, status="failed")
    assert closed.exit_code == 1 and target.read_bytes() == OLD
    assert json.loads((record.run_dir / "report.json").read_text())["release"] is None


def test_the_console_says_when_no_report_could_be_written(record, tmp_path, monkeypatch):
    from pipeline.report.console import render_console

    _store(tmp_path)
    _full_disk(monkeypatch, "report.md")
    _full_disk(monkeypatch, "report.json")
    closed = _close(record, tmp_path)
    assert render_console(closed.report).splitlines()[-1] == (
        f"report: none could be written in {record.run_dir} (see the error above)")
    monkeypatch.undo()
    assert render_console(_close(record, tmp_path).report).endswith(f"report: {record.run_dir}/report.md")
