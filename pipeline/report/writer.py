"""Writing a run's files, each atomically; report.json last, so its presence means the run's files are complete."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

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
        OSError: a file could not be written into ``run_dir``.
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
            paths["rows"] = write_atomic(run_dir / "rows.parquet", buf.getvalue())
    paths["junit"] = write_junit(run_dir / "junit.xml", rep)
    try:
        page = render_html(rep, rows)
    except Exception as e:  # plots are a convenience; the verdict must still be written
        log.warning("report.html could not be rendered: %s", e)
    else:
        paths["html"] = write_atomic(run_dir / "report.html", page)
    rep.setdefault("stage_seconds", {})["report"] = round(time.perf_counter() - t0, 3)
    paths["md"] = write_atomic(run_dir / "report.md", render_markdown(rep))
    paths["json"] = write_atomic(run_dir / "report.json", json.dumps(jsonable(rep), indent=2, allow_nan=False))
    return paths
