"""Writing a run's files, each atomically; report.json last, so its presence means the run's files are complete.

A file that cannot be written (a full disk, a folder that stopped being writable) is a
``RecordError`` (exit 3) naming the file, its folder and the free space there, never a
traceback: the runner then publishes nothing (see ``pipeline.run.release``).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import RecordError
from pipeline.files import write_atomic
from pipeline.report.markdown import render_markdown
from pipeline.report.schema import jsonable

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def write_reports(run_dir: Path, rep: dict, rows: "pd.DataFrame | None" = None) -> dict[str, Path]:
    """Write rows.parquet, junit.xml, report.html, report.md and report.json, each atomically.

    rows.parquet and report.html are conveniences: if one cannot be produced it is left out
    with a warning, and the verdict files are still written. report.json comes last.

    Args:
        run_dir: the run folder.
        rep: the report from ``builder.build_report``.
        rows: per-row results from ``builder.build_rows``, or None (no rows.parquet, no latency plots).

    Returns:
        The path of each file written, by kind: rows, junit, html, md, json.

    Raises:
        RecordError: a file could not be written into ``run_dir``.
    """
    from pipeline.report.html import render_html
    from pipeline.report.junit import write_junit

    t0 = time.perf_counter()
    paths = {}
    if rows is not None:
        buf = io.BytesIO()
        try:
            rows.to_parquet(buf, index=False)
        except Exception as e:  # pyarrow raises its own types; the verdict must still be written
            log.warning("rows.parquet could not be serialized: %s", e)
        else:
            paths["rows"] = _write(run_dir / "rows.parquet", buf.getvalue())
    paths["junit"] = _guarded(run_dir / "junit.xml", lambda: write_junit(run_dir / "junit.xml", rep))
    try:
        page = render_html(rep, rows)
    except Exception as e:  # plots are a convenience; the verdict must still be written
        log.warning("report.html could not be rendered: %s", e)
    else:
        paths["html"] = _write(run_dir / "report.html", page)
    rep.setdefault("stage_seconds", {})["report"] = round(time.perf_counter() - t0, 3)
    return {**paths, **write_verdict(run_dir, rep)}


def write_verdict(run_dir: Path, rep: dict, markdown: bool = True) -> dict[str, Path]:
    """Write only report.md (unless ``markdown`` is False), then report.json, each atomically: the files that
    say what was released.

    Raises:
        RecordError: either could not be written.
    """
    md = {"md": _write(run_dir / "report.md", render_markdown(rep))} if markdown else {}
    return {**md, "json": _write(run_dir / "report.json", json.dumps(jsonable(rep), indent=2, allow_nan=False))}


def free_space(folder: Path) -> str:
    """The free space on ``folder``'s file system, for messages ("12.3 MiB free"), or why it is unknown."""
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
    except OSError as e:
        return f"free space unknown: {e.strerror or e}"


def _write(path: Path, data: str | bytes) -> Path:
    return _guarded(path, lambda: write_atomic(path, data))


def _guarded(path: Path, write):
    try:
        return write()
    except OSError as e:
        raise RecordError(
            f"could not write {path.name} in {path.parent}: {e.strerror or e} ({free_space(path.parent)} on that "
            "file system). Free space there or choose another --reports-dir, then re-run; nothing was published."
        ) from e
