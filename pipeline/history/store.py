"""Run history for nightly jobs: every run recorded in ``<reports dir>/history.sqlite``.

One table, ``runs``: one row per run with its outcome and a JSON blob of the figures a
trend is drawn from (per stage: accuracy, macro precision/recall/F1, latency p50/p99; the
served model's server-side p50). Several runs may record at once: SQLite locks the file
and each writer waits up to ``LOCK_TIMEOUT_S``.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.errors import ReportError
from pipeline.tasks.registry import task_name_of_report, task_of_report

log = logging.getLogger(__name__)

HISTORY_FILE = "history.sqlite"
LOCK_TIMEOUT_S = 30.0
_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at TEXT NOT NULL,
        model TEXT,
        version TEXT,
        status TEXT NOT NULL,
        exit_code INTEGER NOT NULL,
        run_dir TEXT,
        spec_path TEXT,
        figures TEXT NOT NULL,
        published TEXT,
        task TEXT NOT NULL DEFAULT 'classification'
    )
    """,
    "CREATE INDEX IF NOT EXISTS runs_by_model ON runs (model, id)",
)
_COLUMNS = "id, started_at, model, version, status, exit_code, run_dir, spec_path, figures, published, task"


@dataclass(frozen=True)
class HistoryRun:
    """One recorded run: its outcome and the figures a trend is drawn from."""

    id: int
    started_at: str
    model: str | None
    version: str | None
    status: str
    exit_code: int
    run_dir: str | None
    spec_path: str | None
    figures: dict[str, float | None]
    published: str | None = None  # the published .mar, "pending" while the release is not confirmed, or None
    task: str = "classification"  # model.task of the run (its figures are that task's)


def _number(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _figures(report: dict) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    tracked = task_of_report(report).tracked  # each task's figures (tasks/<task>.py TRACKED)
    for stage, m in (report.get("metrics") or {}).items():
        for k in tracked:
            out[f"{stage}.{k}"] = _number(m.get(k))
        lat = m.get("latency") or {}
        out[f"{stage}.latency_p50_ms"] = _number(lat.get("p50"))
        out[f"{stage}.latency_p99_ms"] = _number(lat.get("p99"))
    server = (report.get("served_latency_split") or {}).get("server_prediction_time") or {}
    if server:
        out["served.server_p50_ms"] = _number(server.get("p50"))
    return out


@contextmanager
def _open(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A connection inside one transaction, closed afterwards; SQLite and file errors become ReportError."""
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(db_path, timeout=LOCK_TIMEOUT_S)) as conn, conn:
            for stmt in _SCHEMA:
                conn.execute(stmt)
            if "published" not in {r[1] for r in conn.execute("PRAGMA table_info(runs)")}:
                conn.execute("ALTER TABLE runs ADD COLUMN published TEXT")  # histories written before it
            if "task" not in {r[1] for r in conn.execute("PRAGMA table_info(runs)")}:
                # histories written before the task seam: every run in them was a classifier's
                conn.execute("ALTER TABLE runs ADD COLUMN task TEXT NOT NULL DEFAULT 'classification'")
            yield conn
    except (sqlite3.Error, OSError) as e:
        raise ReportError(
            f"run history {db_path}: {e}. If the file is damaged or not a package-validate history, "
            "move it away (a new one is created on the next run); if it is locked, wait for the other run."
        ) from e


def _run(row: tuple, db_path: Path) -> HistoryRun:
    run_dir = row[6]
    if run_dir and not Path(run_dir).is_absolute():
        run_dir = str(db_path.parent / run_dir)
    return HistoryRun(row[0], row[1], row[2], row[3], row[4], row[5], run_dir, row[7], json.loads(row[8]), row[9], row[10])


def _stored_run_dir(run_dir: str | None, db_path: Path) -> str | None:
    """A run folder under the history's own folder is stored relative to it, so a history copied or
    cached with its run folders (a nightly CI job's) still finds them from another workspace path."""
    if not run_dir:
        return run_dir
    try:
        return str(Path(run_dir).resolve().relative_to(db_path.parent.resolve()))
    except ValueError:
        return run_dir


def record_run(db_path: Path, report: dict) -> int:
    """Append one run to the history.

    Args:
        db_path: the SQLite file (created, with its folder, if missing).
        report: the dict from ``report.build_report``.

    Returns:
        The new row's id.

    Raises:
        ReportError: the file cannot be created, is locked past ``LOCK_TIMEOUT_S`` or is not a history.
    """
    with _open(db_path) as conn:
        cur = conn.execute(
            f"INSERT INTO runs ({_COLUMNS.split(', ', 1)[1]}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (report.get("started_at") or "", report.get("model"), report.get("version"), report["status"],
             report["exit_code"], _stored_run_dir(report.get("run_dir"), db_path), report.get("spec_path"),
             json.dumps(_figures(report), allow_nan=False), _published(report), task_name_of_report(report)),
        )
        return int(cur.lastrowid)


def update_run(db_path: Path, run_id: int, report: dict) -> None:
    """Rewrite run ``run_id``'s outcome from its final report (the release confirmed, or the run's error).

    Raises:
        ReportError: as ``record_run``.
    """
    with _open(db_path) as conn:
        conn.execute("UPDATE runs SET status = ?, exit_code = ?, figures = ?, published = ? WHERE id = ?",
                     (report["status"], report["exit_code"], json.dumps(_figures(report), allow_nan=False),
                      _published(report), run_id))


def _published(report: dict) -> str | None:
    release = report.get("release") or {}
    return report.get("published") or ("pending" if release.get("state") == "pending" else None)


def load_history(db_path: Path, model: str | None = None, limit: int = 20) -> list[HistoryRun]:
    """The most recently recorded runs, newest first.

    Args:
        db_path: the SQLite file.
        model: only runs of this model; None for every model.
        limit: at most this many runs.

    Returns:
        The runs, newest first; empty when the file does not exist yet.

    Raises:
        ReportError: the file is unreadable, locked past ``LOCK_TIMEOUT_S`` or not a history.
    """
    if not db_path.is_file():
        return []
    where, args = ("WHERE model = ? ", (model,)) if model else ("", ())
    with _open(db_path) as conn:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM runs {where}ORDER BY id DESC LIMIT ?",
                            (*args, max(0, limit))).fetchall()
    return [_run(r, db_path) for r in rows]


def last_passing(db_path: Path, model: str, task: str | None = None) -> HistoryRun | None:
    """The newest passing run of ``model`` (of ``task``, when given: a model whose task changed compares
    only with runs of its new task, whose figures mean the same) whose report.json still exists.

    Args:
        db_path: the SQLite file.
        model: the model's name in the spec.

    Returns:
        That run, or None when no recorded passing run of the model still has its report.

    Raises:
        ReportError: the file is unreadable, locked past ``LOCK_TIMEOUT_S`` or not a history.
    """
    if not db_path.is_file():
        return None
    with _open(db_path) as conn:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM runs WHERE model = ? AND status = 'passed' "
                            + ("AND task = ? " if task else "") + "ORDER BY id DESC",
                            (model, task) if task else (model,)).fetchall()
    for row in rows:
        run = _run(row, db_path)
        if run.run_dir and (Path(run.run_dir) / "report.json").is_file():
            return run
        log.info("history: passing run %s has no report.json any more; trying an older one", run.run_dir)
    return None


def summarize_trend(runs: list[HistoryRun]) -> dict[str, dict[str, float]]:
    """Per recorded figure over ``runs`` (newest first, as ``load_history`` returns them).

    Args:
        runs: the runs to summarize.

    Returns:
        Figure name -> first (oldest), last (newest), min, max, change (last - first) and
        runs (how many runs measured it); figures no run measured are left out.
    """
    out: dict[str, dict[str, float]] = {}
    keys = sorted({k for r in runs for k in r.figures})
    for k in keys:
        vals = [r.figures[k] for r in reversed(runs) if r.figures.get(k) is not None]
        if not vals:
            continue
        out[k] = {"first": vals[0], "last": vals[-1], "min": min(vals), "max": max(vals),
                  "change": vals[-1] - vals[0], "runs": len(vals)}
    return out
