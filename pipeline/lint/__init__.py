"""A lint of a TorchServe config.properties and a .mar for the known exposures and silent overrides.

``lint_files`` is what ``package-validate lint FILE [--mar X]`` runs; a run lints its own
config (or ``--ts-config``'s) and its archive through ``lint``. This package imports only the
standard library and PyYAML, so the command answers in well under a second (no torch).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.lint.properties import Properties, load_properties, models_setting, parse_properties
from pipeline.lint.rules import DEFAULT_FAIL_ON, RULES, SEVERITIES, Finding, LintInput, check_severities, failing, \
    lint

__all__ = ["DEFAULT_FAIL_ON", "RULES", "SEVERITIES", "ArchiveFacts", "Finding", "LintInput", "Properties",
           "check_severities", "failing", "lint", "lint_files", "load_properties", "models_setting",
           "parse_properties", "read_archive_facts"]

MANIFEST = "MAR-INF/MANIFEST.json"


@dataclass(frozen=True)
class ArchiveFacts:
    """What the lint reads from a .mar: its model's name and version, model-config.yaml, requirements."""

    model_name: str | None
    model_version: str | None
    model_config: dict
    requirements: tuple[str, ...] | None
    requirements_name: str = "requirements.txt"


def read_archive_facts(path: Path) -> ArchiveFacts:
    """The manifest's model name and version, the model-config.yaml and the requirements file of a .mar.

    Raises:
        ConfigError: the file is missing, not a zip, has no manifest, or an unreadable model config.
    """
    import yaml

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if MANIFEST not in names:
                raise ConfigError(f"--mar {path}: no {MANIFEST}; not an archive torch-model-archiver made.")
            model = json.loads(zf.read(MANIFEST)).get("model", {})
            cfg_name, req_name = model.get("configFile"), model.get("requirementsFile")
            config = yaml.safe_load(zf.read(cfg_name)) if cfg_name in names else {}
            reqs = (tuple(zf.read(req_name).decode("utf-8", "replace").splitlines())
                    if req_name and req_name in names else None)
    except FileNotFoundError as e:
        raise ConfigError(f"--mar {path} does not exist.") from e
    except (zipfile.BadZipFile, OSError) as e:
        raise ConfigError(f"--mar {path}: not a readable .mar ({e}).") from e
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"--mar {path}: unreadable manifest or model config ({e}).") from e
    return ArchiveFacts(model.get("modelName"), model.get("modelVersion"),
                        config if isinstance(config, dict) else {}, reqs, req_name or "requirements.txt")


def lint_files(config: Path, mar: Path | None = None) -> tuple[Finding, ...]:
    """The lint of a config.properties, and of a .mar beside it when given.

    Raises:
        ConfigError: either file is unreadable, or models= is not valid JSON.
    """
    props = load_properties(config)
    facts = read_archive_facts(mar) if mar is not None else None
    models_setting(props)  # malformed models= is an input error, not a finding
    if facts is None:
        return lint(LintInput(props=props))
    return lint(LintInput(props=props, model_name=facts.model_name, model_version=facts.model_version,
                          model_config=facts.model_config, requirements=facts.requirements,
                          requirements_name=facts.requirements_name))


def render_finding(f: Finding) -> list[str]:
    """A finding as printed by ``package-validate lint``: severity, id, key and value, then why and the fix."""
    value = "" if f.value is None else f" = {f.value}"
    where = f" ({f.where})" if f.where else ""
    return [f"{f.severity.upper():6} {f.id}: {f.key}{value}{where}",
            f"       {f.message}",
            f"       reference: {f.reference}",
            f"       fix: {f.fix}"]
