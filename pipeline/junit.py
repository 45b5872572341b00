"""junit.xml: one test case per gate check, for CI dashboards."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from pipeline.files import write_atomic


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))


def render_junit(report: dict) -> str:
    """JUnit XML for a report: a failing gating check is a <failure>, a non-gating one a
    <skipped> warning, and a run that did not complete an <error> on "run complete".

    Args:
        report: the dict from ``report.build_report``.

    Returns:
        The XML document as text.
    """
    suite = ET.Element("testsuite", name=f"package-validate.{report.get('model') or 'unknown'}",
                       timestamp=report.get("started_at") or "")
    tests = failures = errors = skipped = 0
    run_case = ET.SubElement(suite, "testcase", classname="run", name="run complete",
                             time=f"{sum((report.get('stage_seconds') or {}).values()):.3f}")
    tests += 1
    if not report.get("complete"):
        err = report.get("error") or {}
        e = ET.SubElement(run_case, "error", message=f"{report.get('verdict')}: {err.get('message', '')}"[:1000],
                          type=err.get("type", "Incomplete"))
        e.text = "\n".join(err.get("details", []))
        errors += 1
    for c in (report.get("gate") or {}).get("checks", []):
        case = ET.SubElement(suite, "testcase", classname=c["stage"], name=c["name"])
        tests += 1
        msg = f"value {_fmt(c['value'])}, baseline {_fmt(c['baseline'])}, limit {c['limit']}"
        if c["detail"]:
            msg += f" ({c['detail']})"
        if not c["passed"] and c["is_gating"]:
            ET.SubElement(case, "failure", message=msg[:1000], type="GateCheckFailed").text = msg
            failures += 1
        elif not c["passed"]:
            ET.SubElement(case, "skipped", message=f"warning (not gated): {msg}"[:1000])
            skipped += 1
        else:
            ET.SubElement(case, "system-out").text = msg
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", str(skipped))
    root = ET.Element("testsuites", tests=str(tests), failures=str(failures), errors=str(errors))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: Path, report: dict) -> Path:
    """Write ``render_junit(report)`` atomically."""
    return write_atomic(path, render_junit(report))
