"""Serving one point: the archive's model-config.yaml rewritten for it, then TorchServe restarted
("restart") or the model re-registered on a running server ("register").

TorchServe 0.12 takes batchSize, maxBatchDelay and the workers from the archive's
model-config.yaml over config.properties (serve #2365) and over the registration's query
parameters, so every point gets its own .mar whose one member differs (the model, handler and
extra files are copied byte for byte: no new build). "register" turns the model API on for
tune only, on loopback with token authorization, ``allowed_urls`` pinned to the run's store;
it unregisters the model and registers the point's .mar. The worker's threads are its
environment, so a point with other threads restarts the server in both modes.
"""

from __future__ import annotations

import logging
import shutil
import time
import zipfile
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import requests
import yaml

from pipeline.errors import ServerError
from pipeline.run.phases import Setting, serve_at
from pipeline.spec import Spec
from pipeline.stages.archive import ArchiveResult
from pipeline.stages.serve import ServerHandle, _check_described, _describe

log = logging.getLogger(__name__)

REGISTER_TIMEOUT_S = 120.0


def point_config(archive: ArchiveResult, setting: Setting) -> dict:
    """The archive's model config with the point's workers, batch size and delay."""
    return {**archive.model_config, "minWorkers": setting.workers, "maxWorkers": setting.workers,
            "batchSize": setting.batch_size, "maxBatchDelay": setting.max_batch_delay_ms}


def point_archive(archive: ArchiveResult, setting: Setting, store: Path, name: str) -> Path:
    """A copy of the .mar under ``store`` whose model-config.yaml serves ``setting`` (every other member as is)."""
    config_name = archive.manifest.get("model", {}).get("configFile")
    if not config_name:
        raise ServerError(f"archive {archive.mar_path} has no model-config.yaml member (manifest configFile); tune "
                          "sets each point there. Build the archive with package-validate.")
    store.mkdir(parents=True, exist_ok=True)
    dest = store / f"{name}.mar"
    tmp = dest.with_suffix(".part")
    with zipfile.ZipFile(archive.mar_path) as src, zipfile.ZipFile(tmp, "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == config_name:
                data = yaml.safe_dump(point_config(archive, setting), sort_keys=False, allow_unicode=True).encode()
            out.writestr(info, data)
    tmp.replace(dest)
    return dest


class PointServer:
    """Holds one TorchServe across points and brings it to each point's setting.

    ``apply(setting)`` returns the ready server and the seconds it took (the point's archive
    written, the server restarted or the model re-registered, its workers READY and its settings
    read back from the management API).
    """

    def __init__(self, spec: Spec, archive: ArchiveResult, work: Path, mode: str, envelope: str | None):
        if mode not in ("restart", "register"):
            raise ValueError(f"mode must be restart or register, got {mode!r}")
        self.spec, self.archive, self.work, self.mode, self.envelope = spec, archive, work, mode, envelope
        self.store = work / "store"
        self.stack: ExitStack | None = None
        self.server: ServerHandle | None = None
        self.threads: int | None | str = "unset"
        self.count = 0
        self.applied = 0
        self.last = ""  # how the last point was applied: restart or register
        self.current: Setting | None = None  # the setting the running server serves

    def __enter__(self) -> "PointServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.current = None
        if self.stack is not None:
            stack, self.stack, self.server = self.stack, None, None
            stack.close()

    def _start(self, setting: Setting, mar: Path) -> ServerHandle:
        self.stop()
        self.count += 1
        run_dir = self.work / f"server-{self.count:03d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        props = None
        if self.mode == "register":
            # the model API for tune only: loopback listeners, token authorization and allowed_urls pinned to the
            # run's store stay as config_properties writes them
            props = {"enable_model_api": "true"}
        stack = ExitStack()
        try:
            self.server = stack.enter_context(serve_at(self.spec, setting, mar, run_dir, envelope=self.envelope,
                                                       properties=props))
        except BaseException:
            stack.close()
            raise
        self.stack, self.threads, self.current = stack, setting.threads, setting
        return self.server

    def _register(self, setting: Setting, mar: Path) -> ServerHandle:
        s, name = self.server, self.spec.name
        headers = {"Authorization": f"Bearer {s.management_token}"} if s.management_token else {}
        r = requests.delete(f"{s.management_url}/models/{name}", headers=headers, timeout=REGISTER_TIMEOUT_S)
        if r.status_code != 200:
            raise ServerError(f"tune: unregistering {name} answered {r.status_code}: {r.text[:300]}")
        params = {"url": mar.name, "model_name": name, "initial_workers": setting.workers,
                  "batch_size": setting.batch_size, "max_batch_delay": setting.max_batch_delay_ms,
                  "response_timeout": self.spec.serving.response_timeout_s, "synchronous": "true"}
        r = requests.post(f"{s.management_url}/models", params=params, headers=headers, timeout=REGISTER_TIMEOUT_S)
        if r.status_code != 200:
            raise ServerError(f"tune: registering {mar.name} answered {r.status_code}: {r.text[:300]}")
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while True:
            described = _describe(s.management_url, name, s.management_token)
            ready = [w for w in (described or {}).get("workers", []) if w.get("status") == "READY"]
            if described and len(ready) >= setting.workers:
                break
            if time.monotonic() > deadline:
                raise ServerError(f"tune: {name} re-registered at {setting.key} has {len(ready)} READY worker(s) "
                                  f"of {setting.workers} after {REGISTER_TIMEOUT_S:g} s")
            time.sleep(0.1)
        _check_described(setting.apply(self.spec), described)
        self.server, self.current = replace(s, described=described), setting
        return self.server

    def apply(self, setting: Setting, fresh: bool = True) -> tuple[ServerHandle, float]:
        """Serve ``setting``: restarted or re-registered (``fresh``), or as it is when it already serves it."""
        if not fresh and self.server is not None and self.current == setting:
            self.last = "kept"
            return self.server, 0.0
        t0 = time.monotonic()
        self.applied += 1  # a new file per point: the registered one is never overwritten under the server
        mar = point_archive(self.archive, setting, self.store, f"{self.spec.name}-{self.applied:03d}")
        if self.mode == "register" and self.server is not None and self.threads == setting.threads:
            server, self.last = self._register(setting, mar), "register"
        else:
            server, self.last = self._start(setting, mar), "restart"
        return server, time.monotonic() - t0

    def reregister(self, setting: Setting) -> float:
        """Re-register the running server at ``setting`` (the figure ``auto`` compares with a restart)."""
        t0 = time.monotonic()
        self.applied += 1
        mar = point_archive(self.archive, setting, self.store, f"{self.spec.name}-{self.applied:03d}")
        self._register(setting, mar)
        return time.monotonic() - t0


def cleanup(work: Path) -> None:
    shutil.rmtree(work / "store", ignore_errors=True)
