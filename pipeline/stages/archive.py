"""Stage 3, archive: torch-model-archiver packs the exported model and the handler into a .mar.

The archive is built inside the run folder, checked (a zip, a manifest, the files it names)
and only then published to ``model_store/<name>.mar``, so two runs never share a half-built
file. torch-model-archiver stages its files in ``$TMPDIR/<model name>`` and deletes that
folder first, so it runs as a subprocess with the run's own TMPDIR.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.spec import Spec
from pipeline.errors import ArchiveError
from pipeline.files import file_sha256

log = logging.getLogger(__name__)

META_FILE = "model_meta.json"
MANIFEST = "MAR-INF/MANIFEST.json"
ARCHIVER_TIMEOUT_S = 300


@dataclass(frozen=True)
class ArchiveConfig:
    """Where the archive goes and what it must match."""

    work_dir: Path  # run-private: staging, TMPDIR, the store TorchServe serves from
    model_store: Path  # where the checked .mar is published
    force: bool = False
    prebuilt_mar: Path | None = None  # validate this .mar instead of building one
    expected_sha256: str | None = None


@dataclass(frozen=True)
class ArchiveResult:
    mar_path: Path  # the run's copy, served by TorchServe
    published_path: Path | None  # model_store/<name>.mar, None for a prebuilt archive
    sha256: str
    size_bytes: int
    manifest: dict
    model_config: dict


def model_config_for(spec: Spec) -> dict:
    """TorchServe's per-model settings (the .mar's model-config.yaml) from the spec."""
    s = spec.serving
    return {
        "minWorkers": s.workers,
        "maxWorkers": s.workers,
        "batchSize": s.batch_size,
        "maxBatchDelay": s.max_batch_delay_ms,
        "responseTimeout": s.response_timeout_s,
        "startupTimeout": int(s.startup_timeout_s),
    }


def inspect_archive(path: Path, expected_sha256: str | None = None) -> tuple[dict, dict]:
    """Check that a .mar is a complete archive TorchServe can load.

    Args:
        path: the .mar file.
        expected_sha256: refuse the file unless its sha256 is this.

    Returns:
        The manifest and the model config found inside (empty when absent).

    Raises:
        ArchiveError: missing, truncated or not a zip, no manifest, a file the manifest
            names is absent, or a sha256 mismatch.
    """
    if not path.is_file():
        raise ArchiveError(f"archive {path} does not exist.")
    if expected_sha256 is not None:
        got = file_sha256(path)
        if got.lower() != expected_sha256.lower():
            raise ArchiveError(
                f"archive {path} has sha256 {got}, expected {expected_sha256}. "
                "The file changed since it was recorded: rebuild it or update the expected hash."
            )
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            names = set(zf.namelist())
            if bad is not None:
                raise ArchiveError(f"archive {path} is corrupt: member {bad} fails its CRC check. Rebuild the archive.")
            if MANIFEST not in names:
                raise ArchiveError(
                    f"archive {path} has no {MANIFEST}; it was not made by torch-model-archiver. "
                    "Rebuild it with package-validate run (or torch-model-archiver)."
                )
            manifest = json.loads(zf.read(MANIFEST))
            model = manifest.get("model", {})
            wanted = [model.get(k) for k in ("serializedFile", "handler", "configFile") if model.get(k)]
            missing = [w for w in wanted if w not in names]
            if missing:
                raise ArchiveError(f"archive {path}: the manifest names {missing} but the archive lacks them.")
            config = yaml.safe_load(zf.read(model["configFile"])) if model.get("configFile") else {}
    except zipfile.BadZipFile as e:
        raise ArchiveError(
            f"archive {path} ({path.stat().st_size} bytes) is not a valid zip: {e}. "
            "It is probably truncated: rebuild it."
        ) from e
    except (KeyError, ValueError, yaml.YAMLError) as e:
        raise ArchiveError(f"archive {path}: unreadable manifest or model config: {e}") from e
    return manifest, config or {}


def check_publish_target(spec: Spec, cfg: ArchiveConfig) -> None:
    """Fail early, before any work, when the published .mar exists and --force is not given."""
    target = cfg.model_store / f"{spec.name}.mar"
    if cfg.prebuilt_mar is None and target.exists() and not cfg.force:
        raise ArchiveError(f"{target} already exists. Re-run with --force to overwrite.")


def _run_archiver(spec: Spec, serialized: Path, cfg: ArchiveConfig, store: Path) -> None:
    staging = cfg.work_dir / "staging"
    tmp = cfg.work_dir / "tmp"
    for d in (staging, tmp, store):
        d.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": spec.name,
        "input_shape": list(spec.dataset.input_shape),
        "num_classes": spec.model.num_classes,
        "class_names": list(spec.class_labels),
        "export_mode": spec.export.mode,
    }
    (staging / META_FILE).write_text(json.dumps(meta, indent=2))
    (staging / "model-config.yaml").write_text(yaml.safe_dump(model_config_for(spec), sort_keys=False))
    handler = spec.handler_path
    if not handler.is_file():
        raise ArchiveError(f"handler {handler} does not exist. Set handler to a file in handlers/ or a path.")
    cmd = [
        sys.executable, "-m", "model_archiver.model_packaging",
        "--model-name", spec.name,
        "--version", spec.version,
        "--serialized-file", str(serialized),
        "--handler", str(handler),
        "--extra-files", str(staging / META_FILE),
        "--config-file", str(staging / "model-config.yaml"),
        "--export-path", str(store),
        "--archive-format", "default",
        "--force",
    ]
    env = {**os.environ, "TMPDIR": str(tmp)}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=ARCHIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise ArchiveError(f"torch-model-archiver did not finish within {ARCHIVER_TIMEOUT_S} s.") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ArchiveError(f"torch-model-archiver failed with exit code {proc.returncode}.", details=tail)


def build_archive(spec: Spec, cfg: ArchiveConfig, serialized: Path) -> ArchiveResult:
    """Pack (or take the prebuilt) .mar, check it, and publish it to the model store.

    Args:
        spec: the validated spec (name, version, handler, serving settings).
        cfg: where to build and publish, --force, a prebuilt .mar and its expected sha256.
        serialized: the exported model file.

    Returns:
        The run's .mar, the published copy, sha256, size, manifest and model config.

    Raises:
        ArchiveError: the target exists without --force, the archiver fails, or the .mar
            is truncated, lacks a manifest or does not match the expected sha256.
    """
    store = cfg.work_dir / "model_store"
    if cfg.prebuilt_mar is not None:
        manifest, model_config = inspect_archive(cfg.prebuilt_mar, cfg.expected_sha256)
        store.mkdir(parents=True, exist_ok=True)
        mar = store / f"{spec.name}.mar"
        shutil.copyfile(cfg.prebuilt_mar, mar)
        published = None
    else:
        check_publish_target(spec, cfg)
        _run_archiver(spec, serialized, cfg, store)
        mar = store / f"{spec.name}.mar"
        manifest, model_config = inspect_archive(mar, cfg.expected_sha256)
        cfg.model_store.mkdir(parents=True, exist_ok=True)
        published = cfg.model_store / f"{spec.name}.mar"
        tmp = published.with_name(f".{published.name}.{os.getpid()}.tmp")
        shutil.copyfile(mar, tmp)
        os.replace(tmp, published)
    return ArchiveResult(
        mar_path=mar,
        published_path=published,
        sha256=file_sha256(mar),
        size_bytes=mar.stat().st_size,
        manifest=manifest,
        model_config=model_config,
    )
