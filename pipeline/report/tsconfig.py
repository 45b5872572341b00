"""The report's ``serving_config`` section: the config.properties served, what the run replaced in it,
what the server applied beside what the file and the archive asked, and the lint's findings.

Its own module so that the builder and the renderers each call one function (``serving_config_block``,
``markdown_section``, ``html_section``).
"""

from __future__ import annotations

from typing import Any, Callable

from pipeline.report.schema import jsonable
from pipeline.report.text import table
from pipeline.torchserve.config import applied_settings

OWN = "the tool's own config.properties"


def serving_config_block(record) -> dict | None:
    """The section's data from a run's record (None before the spec is read)."""
    spec = record.spec
    plan = record.plan
    if spec is None:
        return None
    source = (plan.spec if plan is not None else spec).serving.ts_config
    server = record.server
    applied = None
    if server is not None and server.started_by_pipeline and server.described and server.config is not None:
        archive = record.archive
        version = (archive.manifest.get("model", {}).get("modelVersion") if archive is not None else None) or spec.version
        applied = jsonable(applied_settings(server.described, server.config,
                                            archive.model_config if archive is not None else {}, spec.name, version))
    fail_on = list(spec.gate.lint)
    findings = jsonable(list(record.lint)) if record.lint is not None else None
    return {
        "source": str(source) if source is not None else None,
        "linted": str(source) if source is not None else OWN,
        "served_config": str(server.log_dir.parent / "config.properties")
        if server is not None and server.log_dir is not None and server.started_by_pipeline else None,
        "overrides": jsonable(list(server.overrides)) if server is not None else [],
        "applied": applied,
        # the management API's describe-model answer the applied values were read from (TorchServe 0.12)
        "described": jsonable(server.described) if applied is not None else None,
        "not_applied": [a for a in applied or [] if not a["applied"]],
        "lint": {"fails_on": fail_on, "findings": findings,
                 "failing": None if findings is None else sum(f["severity"] in fail_on for f in findings)},
    }


def _v(x) -> str:
    return "-" if x is None else str(x)


def markdown_section(rep: dict) -> list[str]:
    sc = rep.get("serving_config")
    if not sc:
        return []
    lines = ["## TorchServe config", "",
             f"Served: {sc['source'] or OWN}"
             + (f" (as written: `{sc['served_config']}`)" if sc.get("served_config") else ""), ""]
    if sc.get("overrides"):
        lines += ["What the run replaced (a local validation owns these):", ""]
        lines += table(["key", "your value", "value used", "why"],
                       [[o["key"], _v(o["user_value"]), o["used"], o["why"]] for o in sc["overrides"]]) + [""]
    if sc.get("applied"):
        lines += ["What the server applied (management API, describe model):", ""]
        lines += table(["setting", "file asked", "archive asked", "served", "applied", "cause"],
                       [[a["key"], f"{_v(a['file_value'])}" + (f" ({a['file_source']})" if a["file_source"] else ""),
                         _v(a["archive_value"]), _v(a["served"]), "yes" if a["applied"] else "**no**", a["cause"]]
                        for a in sc["applied"]]) + [""]
    lint = sc.get("lint") or {}
    findings = lint.get("findings")
    if findings is None:
        lines += ["Lint: not run (the run stopped before it).", ""]
    else:
        fails = "/".join(lint["fails_on"]) or "nothing"
        lines += [f"Lint of {sc['linted']} and the archive: {len(findings)} finding(s), {lint['failing']} failing "
                  f"(gate.lint fails on {fails}).", ""]
        if findings:
            lines += table(["severity", "rule", "key", "value", "finding", "reference", "fix"],
                           [[f["severity"], f["id"], f["key"], _v(f["value"]), f["message"], f["reference"], f["fix"]]
                            for f in findings]) + [""]
    return lines


def html_section(rep: dict, e: Callable[[Any], str], html_table: Callable[[list[str], list[list[str]]], str]) -> str:
    sc = rep.get("serving_config")
    if not sc:
        return ""
    parts = ["<h2>TorchServe config</h2>", f"<p>Served: {e(sc['source'] or OWN)}</p>"]
    if sc.get("overrides"):
        parts.append("<p>What the run replaced:</p>" + html_table(
            ["key", "your value", "value used", "why"],
            [[e(o["key"]), e(_v(o["user_value"])), e(o["used"]), e(o["why"])] for o in sc["overrides"]]))
    if sc.get("applied"):
        parts.append("<p>What the server applied (management API):</p>" + html_table(
            ["setting", "file asked", "archive asked", "served", "applied", "cause"],
            [[e(a["key"]), e(_v(a["file_value"]) + (f" ({a['file_source']})" if a["file_source"] else "")),
              e(_v(a["archive_value"])), e(_v(a["served"])),
              "<span class='ok'>yes</span>" if a["applied"] else "<span class='bad'>no</span>", e(a["cause"])]
             for a in sc["applied"]]))
    findings = (sc.get("lint") or {}).get("findings")
    if findings:
        fail_on = sc["lint"]["fails_on"]
        parts.append(f"<p>Lint of {e(sc['linted'])} and the archive:</p>" + html_table(
            ["severity", "rule", "key", "value", "finding", "reference", "fix"],
            [[f"<span class='{'bad' if f['severity'] in fail_on else 'ok'}'>{e(f['severity'])}</span>", e(f["id"]),
              e(f["key"]), e(_v(f["value"])), e(f["message"]), e(f["reference"]), e(f["fix"])] for f in findings]))
    return "\n".join(parts)
