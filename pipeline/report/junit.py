"""junit.xml: one test case per gate check, for CI dashboards.

Layout (the common JUnit XML dialect that Jenkins, GitLab and GitHub reporters read):

    <testsuites tests failures errors skipped>
      <testsuite name="package-validate.<model>" tests failures errors skipped timestamp time>
        <testcase classname="run" name="run complete">       <error> when the run did not finish
        <testcase classname="<stage>" name="<check name>">   <failure> gating check failed,
                                                              <skipped> non-gating check failed (a warning)
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from pipeline.files import write_atomic

MAX_MESSAGE_CHARS = 1000
# Characters XML 1.0 cannot hold at all (ANSI escapes from server logs, NUL, ...): ElementTree
# would write them and produce a file no JUnit reader can parse.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(v: object) -> str:
    return _NOT_XML.sub("?", str(v))


def _fmt(v: object) -> str:
    return "-" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))


def _check_message(c: dict) -> str:
    msg = f"value {_fmt(c['value'])}, baseline {_fmt(c['baseline'])}, limit {c['limit']}"
    return msg + (f" ({c['detail']})" if c.get("detail") else "")


def render_junit(report: dict) -> str:
    """JUnit XML for a report.

    A failing gating check is a ``<failure>`` whose message gives value, baseline and limit;
    a failing non-gating check is ``<skipped>`` with a warning; a passing check carries the
    same figures in ``<system-out>``. The extra case "run complete" is an ``<error>`` when
    the run ended in error or was interrupted, with the error's message and details.

    Args:
        report: the dict from ``report.build_report``.

    Returns:
        The XML document as text.
    """
    suite = ET.Element("testsuite", name=_text(f"package-validate.{report.get('model') or 'unknown'}"),
                       timestamp=_text(report.get("started_at") or ""))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    run_case = ET.SubElement(suite, "testcase", classname="run", name="run complete",
                             time=f"{sum((report.get('stage_seconds') or {}).values()):.3f}")
    counts["tests"] += 1
    if not report.get("complete"):
        err = report.get("error") or {}
        message = f"{report.get('verdict')} (status {report.get('status')}): {err.get('message', '')}"
        e = ET.SubElement(run_case, "error", message=_text(message)[:MAX_MESSAGE_CHARS],
                          type=_text(err.get("type", "Incomplete")))
        e.text = _text("\n".join([message, *map(str, err.get("details") or [])]))
        counts["errors"] += 1
    else:
        ET.SubElement(run_case, "system-out").text = _text(f"status {report.get('status')}, "
                                                           f"exit code {report.get('exit_code')}")
    for c in (report.get("gate") or {}).get("checks", []):
        case = ET.SubElement(suite, "testcase", classname=_text(c["stage"]), name=_text(c["name"]))
        counts["tests"] += 1
        msg = _text(_check_message(c))
        if not c["passed"] and c["is_gating"]:
            ET.SubElement(case, "failure", message=msg[:MAX_MESSAGE_CHARS], type="GateCheckFailed").text = msg
            counts["failures"] += 1
        elif not c["passed"]:
            ET.SubElement(case, "skipped", message=f"warning (not gated): {msg}"[:MAX_MESSAGE_CHARS])
            counts["skipped"] += 1
        else:
            ET.SubElement(case, "system-out").text = msg
    for k, v in counts.items():
        suite.set(k, str(v))
    suite.set("time", run_case.get("time"))
    root = ET.Element("testsuites", **{k: str(v) for k, v in counts.items()})
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: Path, report: dict) -> Path:
    """Write the report's JUnit XML (see ``render_junit``) atomically.

    Args:
        path: where to write, usually ``<run folder>/junit.xml``.
        report: the dict from ``report.build_report``.

    Returns:
        ``path``.

    Raises:
        OSError: the file could not be written.
    """
    return write_atomic(path, render_junit(report))
