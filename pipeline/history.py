"""Run history for nightly jobs: every run recorded in ``reports/history.sqlite``."""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HISTORY_FILE = "history.sqlite"
TRACKED = ("accuracy", "precision_macro", "recall_macro", "f1_macro")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    model TEXT,
    version TEXT,
    status TEXT NOT NULL,
    exit_code INTEGER NOT NULL,
    run_dir TEXT,
    spec_path TEXT,
    figures TEXT NOT NULL
)
"""


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
    figures: dict[str, float | None]


def _figures(report: dict) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for stage, m in (report.get("metrics") or {}).items():
        for k in TRACKED:
            out[f"{stage}.{k}"] = m.get(k)
        lat = m.get("latency") or {}
        out[f"{stage}.latency_p50_ms"] = lat.get("p50")
        out[f"{stage}.latency_p99_ms"] = lat.get("p99")
    server = (report.get("served_latency_split") or {}).get("server_prediction_time") or {}
    out["served.server_p50_ms"] = server.get("p50")
    return out


def _connect(db_path: Path) -> sqlite3.Connection:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path, timeout=30)
    conn.execute(_SCHEMA)
    return conn


def record_run(db_path: Path, report: dict) -> int:
    """Append one run to the history.

    Args:
        db_path: the SQLite file (created if missing).
        report: the dict from ``report.build_report``.

    Returns:
        The new row's id.
    """
    with _connect(db_path) as conn:
        cur = conn.execute(
            "INSERT INTO runs (started_at, model, version, status, exit_code, run_dir, spec_path, figures) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (report.get("started_at") or "", report.get("model"), report.get("version"), report["status"],
             report["exit_code"], report.get("run_dir"), report.get("spec_path"), json.dumps(_figures(report))),
        )
        return int(cur.lastrowid)


def load_history(db_path: Path, model: str | None = None, limit: int = 20) -> list[HistoryRun]:
    """The most recent runs, newest first; empty when there is no history yet."""
    if not db_path.is_file():
        return []
    with _connect(db_path) as conn:
        q = "SELECT id, started_at, model, version, status, exit_code, run_dir, figures FROM runs"
        args: tuple = ()
        if model:
            q += " WHERE model = ?"
            args = (model,)
        rows = conn.execute(q + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    return [HistoryRun(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7])) for r in rows]


def last_passing(db_path: Path, model: str) -> HistoryRun | None:
    """The newest passing run of ``model`` whose report still exists, or None."""
    for run in load_history(db_path, model, limit=1000):
        if run.status == "passed" and run.run_dir and (Path(run.run_dir) / "report.json").is_file():
            return run
    return None


def trend(runs: list[HistoryRun]) -> dict[str, dict[str, float | None]]:
    """Per tracked figure over ``runs`` (newest first): first, last, min, max and the change."""
    out: dict[str, dict[str, float | None]] = {}
    keys = sorted({k for r in runs for k in r.figures})
    for k in keys:
        vals = [r.figures.get(k) for r in reversed(runs) if r.figures.get(k) is not None]
        if not vals:
            continue
        out[k] = {"first": vals[0], "last": vals[-1], "min": min(vals), "max": max(vals),
                  "change": vals[-1] - vals[0], "runs": len(vals)}
    return out
