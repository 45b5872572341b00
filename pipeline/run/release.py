"""Closing a run: its record on disk, then (on a passing gate) the release; never a release without its record.

The order keeps "an archive is in the store only if a complete report on disk says it was
published", a full disk included:

1. every report file and the history row are written with the verdict and
   ``release.state: pending`` (each file fsync'd and renamed into place). A file that
   cannot be written ends the run with exit 3 (``RecordError``) and nothing is published;
2. the checked .mar is published (``publish.publish_archive``): the archive it replaces is
   kept aside;
3. report.md and report.json are rewritten with ``published`` and ``release.state:
   published``, and the history row is updated. If that fails, the previous archive is put
   back (``publish.restore_previous``) and the run ends with exit 3 naming the folder, the
   file and the free space.

Only a process killed between steps 2 and 3 leaves a report that says ``pending`` beside a
new archive: ``release.sha256`` names the archive that was being released, so it can be
checked. The history row is for trends: a history that cannot be written is a warning.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.errors import Interrupted, PipelineError, RecordError, ReportError
from pipeline.history.store import HISTORY_FILE, record_run, update_run
from pipeline.record import RunRecord
from pipeline.report.builder import build_report, build_rows
from pipeline.report.writer import write_reports, write_verdict
from pipeline.run.publish import confirm, publish_archive, restore_previous

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended, once its record is on disk."""

    status: str  # passed | failed | error | interrupted
    exit_code: int
    run_dir: Path | None
    report: dict | None
    error: BaseException | None = None
    record: RunRecord | None = None  # everything the run produced, the release included


def exit_code_of(status: str, error: BaseException | None) -> int:
    """0 passed, 1 failed gate, 130/143 interrupted, else the error's own code (3 for anything unexpected)."""
    if status == "passed":
        return 0
    if status == "failed":
        return 1
    if status == "interrupted":
        if isinstance(error, Interrupted) and error.signum == signal.SIGTERM:
            return 143
        return 130
    if isinstance(error, PipelineError):
        return error.exit_code
    return 3


def close_run(record: RunRecord, status: str, error: BaseException | None, *, publish: bool, store: Path,
              force: bool, reports_dir: Path) -> RunOutcome:
    """Write the run's record and, when the gate passed and publishing was asked, release the archive.

    Args:
        record: everything the run produced.
        status: passed | failed | error | interrupted, before the release.
        error: what ended the run early, or None.
        publish: whether a passing archive goes to the model store.
        store: the model store.
        force: whether an existing archive may be replaced.
        reports_dir: where the history lives.

    Returns:
        The final status, exit code, report and error (a ``RecordError`` or ``ArchiveError`` when
        the record or the release could not be written).
    """
    releasing = status == "passed" and publish and record.archive is not None
    if record.run_dir is None:  # the run stopped before it had a folder: nothing to record, nothing released
        return RunOutcome(status, exit_code_of(status, error), None, None, error, record)
    db = reports_dir / HISTORY_FILE
    rows = build_rows(record)
    pending = replace(record, release_state="pending") if releasing else record
    report = build_report(pending, status, exit_code_of(status, error), error)
    try:
        write_reports(record.run_dir, report, rows)
    except RecordError as e:
        return _record_failed(record, e, rows, db, None)
    run_id = _history(db, report)
    if not releasing:
        return RunOutcome(status, report["exit_code"], record.run_dir, report, error, record)
    try:
        published = publish_archive(record.archive.mar_path, record.spec.name, store, force)
    except PipelineError as e:
        return _record_failed(record, e, rows, db, run_id)
    done = replace(record, published=published.target, release_state="published")
    report = build_report(done, status, exit_code_of(status, error), error)
    try:
        write_verdict(record.run_dir, report)
    except RecordError as e:
        held = restore_previous(published)
        e = RecordError(f"{e.message} The release was undone: {held}.", details=e.details)
        return _record_failed(replace(record, release_state="rolled back"), e, rows, db, run_id)
    confirm(published)
    if run_id is not None:
        _history(db, report, run_id)
    return RunOutcome(status, report["exit_code"], record.run_dir, report, error, done)


def _record_failed(record: RunRecord, error: PipelineError, rows, db: Path, run_id: int | None) -> RunOutcome:
    """The run ends as an error; its report is written wherever it still can be (the whole set, else report.json)."""
    log.error("%s", error.message)
    report = build_report(record, "error", error.exit_code, error)
    try:
        write_reports(record.run_dir, report, rows)
    except RecordError:
        try:
            write_verdict(record.run_dir, report, markdown=False)
        except RecordError as again:
            log.error("no report could be written: %s", again.message)
    _history(db, report, run_id)
    return RunOutcome("error", error.exit_code, record.run_dir, report, error, record)


def _history(db: Path, report: dict, run_id: int | None = None) -> int | None:
    try:
        if run_id is None:
            return record_run(db, report)
        update_run(db, run_id, report)
        return run_id
    except ReportError as e:  # history is for trends; it must never break a run
        log.warning("could not record the run: %s", e)
        return run_id
