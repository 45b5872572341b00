"""Reading TorchServe's logs: why a worker died, what a handler raised, each request's server time."""

from __future__ import annotations

import re
import time
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_ERROR_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Exit|Interrupt)\b:?")
_PREFIX = re.compile(r"^\S+ \[\w+ *\] \S+ \S+ - ")
_FRONTEND = re.compile(r"(ERROR|Address already in use|BindException|java not found|responseTimeout|"
                       r"Worker died|Backend worker)")
_PREDICTION_TIME = re.compile(r"PredictionTime\.ms:([0-9.]+)\|.*?requestID:(.*?),timestamp:")
METRICS_WAIT_S = 3.0


def clean(line: str) -> str:
    """A log line without ANSI escapes, TorchServe's timestamp prefix or trailing blanks."""
    return _PREFIX.sub("", ANSI.sub("", line)).rstrip()


def tail(path: Path, n: int = 400) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def _tracebacks(lines: list[str]) -> list[list[str]]:
    """Each traceback block in ``lines``: from its header to its exception line."""
    blocks = []
    for i, ln in enumerate(lines):
        if "Traceback (most recent call last)" in ln:
            block = lines[i : i + 80]
            stop = next((j for j, b in enumerate(block[1:], 1) if _ERROR_LINE.match(b.strip())), len(block) - 1)
            blocks.append(block[: stop + 1])
    return blocks


def _summarize(block: list[str]) -> list[str]:
    """The exception line of a traceback, then its innermost frames (file, line, code)."""
    out = [block[-1].strip()]
    frames = [i for i, ln in enumerate(block) if ln.strip().startswith("File ")]
    for i in frames[-3:][::-1]:
        code = block[i + 1].strip() if i + 1 < len(block) and not block[i + 1].strip().startswith("File ") else ""
        out.append(f"at {block[i].strip()}" + (f": {code}" if code else ""))
    return out


def explain_failure(log_dir: Path, focus: str | None = None) -> list[str]:
    """The log lines that explain a failure: lines matching ``focus`` first, then the worker's
    exception lines, the innermost frames of its first traceback, and the frontend's errors."""
    model_log = [clean(ln) for ln in tail(log_dir / "model_log.log")]
    lines = [ln.strip() for ln in model_log if _ERROR_LINE.match(ln.strip())]
    blocks = _tracebacks(model_log)
    if blocks:
        lines += _summarize(blocks[0])[1:]
    for src in (log_dir / "ts_log.log", log_dir / "torchserve.out"):
        for ln in tail(src, 3000):
            if _FRONTEND.search(ln):
                lines.append(clean(ln).strip())
    if focus:
        lines.sort(key=lambda ln: 0 if re.search(focus, ln) else 1)
    seen, out = set(), []
    for ln in lines:
        if ln and ln not in seen:
            seen.add(ln)
            out.append(ln)
    return out[:20]


def handler_exceptions(log_dir: Path, limit: int = 5) -> list[list[str]]:
    """The distinct exceptions handlers raised while serving (from ``model_log.log``), newest last.

    Each is the exception line followed by its innermost frames, quoted whole.
    """
    model_log = [clean(ln) for ln in tail(log_dir / "model_log.log", 4000)]
    seen, out = set(), []
    for block in _tracebacks(model_log):
        summary = _summarize(block)
        if summary[0] not in seen:
            seen.add(summary[0])
            out.append(summary)
    return out[-limit:]


_RECOVERY = re.compile(r"Auto recovery start timestamp: (\d+)")


def log_offset(log_dir: Path | None) -> int:
    """The current end of ts_log.log, to read only what is logged after it."""
    try:
        return (log_dir / "ts_log.log").stat().st_size if log_dir is not None else 0
    except OSError:
        return 0


def worker_recoveries(log_dir: Path | None, since: int = 0) -> int:
    """Worker restarts TorchServe logged after byte ``since`` of ts_log.log (each 'Auto recovery start' once)."""
    if log_dir is None:
        return 0
    try:
        with open(log_dir / "ts_log.log", "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return 0
    return len({m.group(1) for m in _RECOVERY.finditer(text)})


def read_server_times(metrics_log: Path | None) -> dict[str, float]:
    """requestID -> PredictionTime (ms) from TorchServe's model_metrics.log.

    A batch logs one PredictionTime for all its request ids; each id gets the batch's time.
    """
    out: dict[str, float] = {}
    if not metrics_log or not metrics_log.is_file():
        return out
    for line in metrics_log.read_text(errors="replace").splitlines():
        m = _PREDICTION_TIME.search(line)
        if m:
            for rid in m.group(2).split(","):
                out[rid.strip()] = float(m.group(1))
    return out


def await_server_times(metrics_log: Path | None, wanted: set[str]) -> dict[str, float]:
    """Server times once every answered request's line is in the log: TorchServe writes a
    request's PredictionTime a moment after its response is sent (bounded wait)."""
    if metrics_log is None:
        return {}
    deadline = time.monotonic() + METRICS_WAIT_S
    server = read_server_times(metrics_log)
    while wanted - server.keys() and time.monotonic() < deadline:
        time.sleep(0.05)
        server = read_server_times(metrics_log)
    return server
