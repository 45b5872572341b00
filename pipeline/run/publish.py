"""Publishing the checked .mar to the model store: a release act, done only when the gate passes.

The archive is copied beside its target and renamed over it (atomic on one file system).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.errors import ArchiveError


def target_of(name: str, store: Path) -> Path:
    return store / f"{name}.mar"


def check_publish_target(name: str, store: Path, force: bool) -> None:
    """Fail before any work when the store is unusable, or the .mar exists and --force is not given.

    Raises:
        ArchiveError: the store is a file or not writable, or the target exists without --force.
    """
    if store.exists() and not store.is_dir():
        raise ArchiveError(f"--model-store {store} is a file, not a folder. Point --model-store at a folder "
                           "(it is created if missing).")
    probe_dir = store if store.is_dir() else next((p for p in store.parents if p.exists()), None)
    if probe_dir is not None and not os.access(probe_dir, os.W_OK | os.X_OK):
        raise ArchiveError(f"--model-store {store} is not writable ({probe_dir} denies it). Choose a writable "
                           "folder with --model-store or fix its permissions.")
    target = target_of(name, store)
    if target.exists() and not force:
        raise ArchiveError(f"{target} already exists. Re-run with --force to overwrite it when the gate passes.")


def publish_archive(mar: Path, name: str, store: Path, force: bool) -> Path:
    """Copy ``mar`` to ``store/<name>.mar`` atomically; returns the published path.

    Raises:
        ArchiveError: the target exists without --force, or the copy fails.
    """
    check_publish_target(name, store, force)
    target = target_of(name, store)
    try:
        store.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(mar, tmp)
        os.replace(tmp, target)
    except OSError as e:
        raise ArchiveError(f"could not publish {mar} to {target}: {e.strerror or e}.") from e
    return target
