"""Stage 3, archive: torch-model-archiver packs the exported model and the handler into a .mar.

The archive is built inside the run folder and checked (a zip, a manifest, the files it
names, the files the spec asked for); publishing it to the model store is a separate step
that happens only when the gate passes (``pipeline.run.publish``). torch-model-archiver
stages its files in ``$TMPDIR/<model name>`` and deletes that folder first, so it runs as a
subprocess with the run's own TMPDIR.
"""

from __future__ import annotations

import hashlib
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

from pipeline.errors import ArchiveError, ConfigError
from pipeline.files import file_sha256
from pipeline.spec import Spec
from pipeline.stages.export import ExportResult
from pipeline.torchserve.handlers import HandlerInfo

log = logging.getLogger(__name__)

META_FILE = "model_meta.json"
MANIFEST = "MAR-INF/MANIFEST.json"
ARCHIVER_TIMEOUT_S = 300
NOT_APPLICABLE_FROM_MAR = ("not applicable: validated through the handled stage (the archive's model is neither "
                           "TorchScript nor a --model-file with a state_dict, so only its handler can load it)")


@dataclass(frozen=True)
class ArchiveConfig:
    """Where the archive is built and what it must match."""

    work_dir: Path  # run-private: staging, TMPDIR, the store TorchServe serves from
    prebuilt_mar: Path | None = None  # validate this .mar instead of building one
    expected_sha256: str | None = None


@dataclass(frozen=True)
class Artefact:
    """One file inside the .mar, as the manifest names it (role) and as the zip holds it (sha256)."""

    role: str  # serialized_file, model_file, handler, config_file, requirements, extra_file
    name: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class ArchiveResult:
    mar_path: Path  # the run's copy, served by TorchServe
    sha256: str
    size_bytes: int
    manifest: dict
    model_config: dict
    members: tuple[str, ...]
    prebuilt: bool = False
    artefacts: tuple[Artefact, ...] = ()


# The keys of model-config.yaml this tool writes, and the spec field each comes from.
SERVING_KEYS = {
    "minWorkers": "serving.workers",
    "maxWorkers": "serving.workers",
    "batchSize": "serving.batch_size",
    "maxBatchDelay": "serving.max_batch_delay_ms",
    "responseTimeout": "serving.response_timeout_s",
    "startupTimeout": "serving.startup_timeout_s",
}


def _serving_config(spec: Spec) -> dict:
    s = spec.serving
    return {
        "minWorkers": s.workers,
        "maxWorkers": s.workers,
        "batchSize": s.batch_size,
        "maxBatchDelay": s.max_batch_delay_ms,
        "responseTimeout": s.response_timeout_s,
        "startupTimeout": int(s.startup_timeout_s),
    }


def read_handler_config(path: Path) -> dict:
    """The handler's own model-config.yaml (``handler.config``), read as TorchServe reads it.

    Raises:
        ConfigError: the file is missing, not YAML, or not a mapping at the top level.
    """
    if not path.is_file():
        raise ConfigError(f"handler.config: {path} does not exist. Fix the path (relative to the spec).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"handler.config: {path} is not valid YAML: {e}. TorchServe's worker would fail to read "
                          "it too.") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"handler.config: {path} holds a {type(data).__name__}; a model-config.yaml is a mapping "
                          "(minWorkers, batchSize, ..., and sections such as handler:).")
    return data


def model_config_for(spec: Spec) -> dict:
    """TorchServe's per-model settings (the .mar's model-config.yaml): the handler's own file
    (``handler.config``) with the serving keys this tool owns added from ``serving:``.

    The handler's sections (``handler:``, ``pt2:``, ...) and any other key pass through unchanged.

    Raises:
        ConfigError: the handler's file sets a key the tool writes (both named), or is unreadable.
    """
    own = read_handler_config(spec.handler.config) if spec.handler.config is not None else {}
    both = [k for k in SERVING_KEYS if k in own]
    if both:
        raise ConfigError(
            f"handler.config {spec.handler.config} sets {len(both)} key(s) that package-validate writes from the "
            "spec's serving section: the served value would depend on which one wins. Remove them from the file "
            "and set them in the spec.",
            details=[f"{k}: {own[k]!r} in {spec.handler.config}, and {SERVING_KEYS[k]} in "
                     f"{spec.spec_path or 'the spec'}" for k in both])
    return {**_serving_config(spec), **own}


def _handler_file(handler: str) -> str | None:
    """The archive member of a manifest's handler: ``h.py`` for "h.py" and "h:function"; None for a built-in."""
    if handler.endswith(".py"):
        return handler
    module, sep, _ = handler.partition(":")
    return f"{module}.py" if sep else None


def inspect_archive(path: Path, expected_sha256: str | None = None) -> tuple[dict, dict, tuple[str, ...]]:
    """Check that a .mar is a complete archive TorchServe can load.

    Args:
        path: the .mar file.
        expected_sha256: refuse the file unless its sha256 is this.

    Returns:
        The manifest, the model config found inside (empty when absent) and the member names.

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
            handler = model.get("handler", "")
            wanted = [model.get(k) for k in ("serializedFile", "configFile", "modelFile") if model.get(k)]
            if _handler_file(handler):
                wanted.append(_handler_file(handler))
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
    return manifest, config or {}, tuple(sorted(names))


def archive_artefacts(path: Path, manifest: dict) -> tuple[Artefact, ...]:
    """Every file of the .mar with the role the manifest gives it (else ``extra_file``) and its sha256."""
    model = manifest.get("model", {})
    handler_file = _handler_file(model.get("handler", ""))
    roles = {model.get("serializedFile"): "serialized_file", model.get("modelFile"): "model_file",
             model.get("configFile"): "config_file", model.get("requirementsFile"): "requirements",
             handler_file: "handler"}
    out = []
    with zipfile.ZipFile(path) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir() or info.filename.startswith("MAR-INF/"):
                continue
            h = hashlib.sha256()
            with zf.open(info) as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out.append(Artefact(roles.get(info.filename, "extra_file"), info.filename, h.hexdigest(), info.file_size))
    order = ("serialized_file", "model_file", "handler", "config_file", "requirements", "extra_file")
    return tuple(sorted(out, key=lambda a: (order.index(a.role), a.name)))


def archived_model_kind(path: Path, manifest: dict) -> str | None:
    """How the tool can load the archive's model without its handler, as BaseHandler would:
    "script" (a TorchScript serialized file and no model file), "eager" (a --model-file and a
    state_dict), or None (anything else: .safetensors, a folder of files, a format only the
    handler knows). Read from the zip without loading anything.

    A TorchScript file is a zip whose entries include ``<name>/code/``; a torch.save'd state_dict
    is a zip without them.
    """
    model = manifest.get("model", {})
    serialized, model_file = model.get("serializedFile"), model.get("modelFile")
    if not serialized or not serialized.endswith((".pt", ".pth")):
        return None
    try:
        with zipfile.ZipFile(path) as zf, zf.open(serialized) as f, zipfile.ZipFile(f) as inner:
            names = inner.namelist()
    except (KeyError, zipfile.BadZipFile, OSError):
        return None  # a legacy pickle, or not a torch file: only the handler knows how to load it
    is_script = any("/code/" in n for n in names)
    if model_file:
        return None if is_script else "eager"
    return "script" if is_script else None


def extract_archived_model(path: Path, manifest: dict, dest: Path) -> tuple[Path, Path | None]:
    """The archive's serialized file and model file (or None), extracted under ``dest``."""
    model = manifest["model"]
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path) as zf:
        out = [Path(zf.extract(model[k], dest)) if model.get(k) else None for k in ("serializedFile", "modelFile")]
    return out[0], out[1]


def extra_file_names(paths: tuple[Path, ...]) -> list[str]:
    """The names the extra files take inside the .mar: a file its name; a folder each of its entries
    (torch-model-archiver copies a folder's contents to the archive's top level)."""
    names = []
    for p in paths:
        names += sorted(c.name for c in p.iterdir()) if p.is_dir() else [p.name]
    return names


def _meta(spec: Spec, base_input_shape: tuple[int, ...]) -> dict:
    return {
        "name": spec.name,
        "input_shape": list(spec.dataset.input_shape or base_input_shape),
        "num_classes": spec.model.num_classes,
        "class_names": list(spec.class_labels),
        "export_mode": spec.export.mode,
    }


def _run_archiver(spec: Spec, handler: HandlerInfo, exported: ExportResult, input_shape: tuple[int, ...],
                  cfg: ArchiveConfig, store: Path) -> None:
    staging = cfg.work_dir / "staging"
    tmp = cfg.work_dir / "tmp"
    for d in (staging, tmp, store):
        d.mkdir(parents=True, exist_ok=True)
    extra = list(spec.handler.extra_files)
    if handler.origin == "project":
        (staging / META_FILE).write_text(json.dumps(_meta(spec, input_shape), indent=2))
        extra.append(staging / META_FILE)
    config_name = spec.handler.config.name if spec.handler.config is not None else "model-config.yaml"
    names = extra_file_names(tuple(extra)) + [config_name]
    clash = sorted({n for n in names if names.count(n) > 1})
    if config_name in clash:
        raise ArchiveError(f"handler.extra_files ships a {config_name}, the name of the archive's model config, "
                           "which the tool writes (serving keys included): name your file in handler.config instead "
                           "of extra_files, and it is merged, not replaced.")
    if clash:
        raise ArchiveError(f"handler.extra_files: two files are named {clash}; the .mar keeps one folder, so "
                           "one would replace the other (a folder's entries land at the top level). "
                           "Rename one of them.")
    # The handler's own file keeps its name: a handler may also open it from its model_dir.
    config_file = staging / config_name
    config_file.write_text(yaml.safe_dump(model_config_for(spec), sort_keys=False, allow_unicode=True),
                           encoding="utf-8")
    cmd = [
        sys.executable, "-m", "model_archiver.model_packaging",
        "--model-name", spec.name,
        "--version", spec.version,
        "--serialized-file", str(exported.path),
        "--handler", handler.archiver_ref,
        "--config-file", str(config_file),
        "--export-path", str(store),
        "--archive-format", "default",
        "--force",
    ]
    if extra:
        cmd += ["--extra-files", ",".join(str(p) for p in extra)]
    if exported.model_file is not None:
        cmd += ["--model-file", str(exported.model_file)]
    if spec.handler.requirements is not None:
        cmd += ["--requirements-file", str(spec.handler.requirements)]
    env = {**os.environ, "TMPDIR": str(tmp)}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=ARCHIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise ArchiveError(f"torch-model-archiver did not finish within {ARCHIVER_TIMEOUT_S} s.") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ArchiveError(f"torch-model-archiver failed with exit code {proc.returncode}.", details=tail)


def _check_contents(spec: Spec, members: tuple[str, ...], path: Path) -> None:
    wanted = extra_file_names(spec.handler.extra_files)
    if spec.handler.requirements is not None:
        wanted.append(spec.handler.requirements.name)
    tops = {m.split("/", 1)[0] for m in members}  # a folder an extra-files folder held is packed whole
    missing = [w for w in wanted if w not in tops]
    if missing:
        raise ArchiveError(f"archive {path} lacks {missing}, which the spec's handler section ships. "
                           f"Members: {list(members)[:20]}.")


def build_archive(spec: Spec, cfg: ArchiveConfig, handler: HandlerInfo, exported: ExportResult | None,
                  input_shape: tuple[int, ...]) -> ArchiveResult:
    """Pack (or take the prebuilt) .mar into the run folder and check it.

    Args:
        spec: the validated spec (name, version, handler files, serving settings).
        cfg: where to build, a prebuilt .mar and its expected sha256.
        handler: the resolved handler.
        exported: the export stage's artefact (and model file, in eager mode); None with a prebuilt .mar.
        input_shape: one row's model input shape, for the project handler's metadata.

    Returns:
        The run's .mar, sha256, size, manifest, model config, member names, and each file's role and sha256.

    Raises:
        ArchiveError: the archiver fails, or the .mar is truncated, lacks a manifest or a
            file the spec ships, or does not match the expected sha256.
    """
    store = cfg.work_dir / "model_store"
    mar = store / f"{spec.name}.mar"
    if cfg.prebuilt_mar is not None:
        manifest, model_config, members = inspect_archive(cfg.prebuilt_mar, cfg.expected_sha256)
        store.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cfg.prebuilt_mar, mar)
    else:
        if exported is None:
            raise ArchiveError("no exported model to archive: run the export stage, or give --mar.")
        _run_archiver(spec, handler, exported, input_shape, cfg, store)
        manifest, model_config, members = inspect_archive(mar, cfg.expected_sha256)
        _check_contents(spec, members, mar)
    return ArchiveResult(mar_path=mar, sha256=file_sha256(mar), size_bytes=mar.stat().st_size, manifest=manifest,
                         model_config=model_config, members=members, prebuilt=cfg.prebuilt_mar is not None,
                         artefacts=archive_artefacts(mar, manifest))
