"""Publishing the checked .mar to the model store: a release act, done only when the gate passes.

A run that will publish holds a lock on its store entry (``.<name>.mar.lock``, an ``flock``
the kernel releases if the process dies) from before the first stage to the end, so two runs
of one model into one store never replace each other's archive: the second fails naming the
first run's pid and folder, or with ``--wait`` queues behind it. The archive is copied
beside its target, fsync'd and renamed over it (atomic on one file system); the archive it
replaces is kept aside (a hard link) until the run's record confirms the release, so a
record that cannot be written puts the previous release back (``restore_previous``).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ArchiveError, LockError


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


@dataclass(frozen=True)
class Published:
    """An archive renamed into the store, with the one it replaced kept aside until the release is confirmed."""

    target: Path
    previous: Path | None  # the replaced archive's hard link beside the target; None: there was none


def publish_archive(mar: Path, name: str, store: Path, force: bool) -> Published:
    """Copy ``mar`` to ``store/<name>.mar`` atomically, keeping the archive it replaces aside.

    Call ``confirm`` once the run's record says it was published, or ``restore_previous`` if it cannot.

    Raises:
        ArchiveError: the target exists without --force, or the copy fails (the store is left as it was).
    """
    check_publish_target(name, store, force)
    target = target_of(name, store)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    previous = target.with_name(f".{target.name}.{os.getpid()}.previous")
    try:
        store.mkdir(parents=True, exist_ok=True)
        previous.unlink(missing_ok=True)
        if target.exists():
            os.link(target, previous)
        with open(mar, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, target)
        _sync_dir(store)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        previous.unlink(missing_ok=True)
        raise ArchiveError(f"could not publish {mar} to {target}: {e.strerror or e}; the store is unchanged.") from e
    return Published(target, previous if previous.exists() else None)


def confirm(published: Published) -> None:
    """The release is on record: drop the replaced archive kept aside."""
    if published.previous is not None:
        published.previous.unlink(missing_ok=True)


def restore_previous(published: Published) -> str:
    """Undo a publish whose record could not be written; returns what the store holds now, for the message."""
    try:
        if published.previous is not None:
            os.replace(published.previous, published.target)
            held = f"{published.target} is the previous release again"
        else:
            published.target.unlink(missing_ok=True)
            held = f"{published.target} was removed (there was no previous release)"
        _sync_dir(published.target.parent)
    except OSError as e:  # a store that breaks between two renames
        return f"restoring {published.target} failed too ({e.strerror or e}): check it by hand"
    return held


def _sync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: fsync the directory)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StoreLock:
    """The exclusive lock on one model's entry in a model store, held for a whole run."""

    def __init__(self, name: str, store: Path, run_dir: Path | None) -> None:
        self.path = store / f".{name}.mar.lock"
        self.run_dir = run_dir
        self.fd: int | None = None

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        return f"pid {info.get('pid', '?')}, run folder {info.get('run_dir', '?')}"

    def acquire(self, wait: bool, deadline: float | None = None) -> "StoreLock":
        """Take the lock, or raise LockError naming the run that holds it (``wait``: until ``deadline``)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ArchiveError(f"cannot lock {self.path}: {e.strerror or e}. Choose a writable --model-store.") from e
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait or (deadline is not None and time.monotonic() >= deadline):
                    holder = self._holder()
                    os.close(fd)
                    hint = "re-run with --wait to queue behind it" if not wait else "the run's deadline passed"
                    raise LockError(f"another run is validating {self.path.name[1:-5]} into {self.path.parent} "
                                    f"({holder}); {hint}, or use another --model-store.") from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "run_dir": str(self.run_dir)}).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None
