"""torchvision beside the CPU build of torch: make ``import torchvision`` work, or do nothing.

torchvision 0.28.0 (the release for torch 2.13.0) is on the package index only as a CUDA 13
build. Beside the CPU torch its compiled ops (``_C.so``, linked against libtorch_cuda) cannot
load, and ``import torchvision`` then dies in ``_meta_registrations.py`` at
``register_fake("torchvision::nms")`` with "operator torchvision::nms does not exist"
(upstream fix: https://github.com/pytorch/vision/pull/9086). Defining the two operator
schemas it registers fakes for, before torchvision is imported, lets it import; the
transforms on PIL images are pure Python and unaffected. Where the compiled ops do load,
this changes nothing.

TorchServe's workers get the same treatment through ``worker_site/sitecustomize.py``, and
this process through ``install_import_hook``, installed by every command (``cli.main``) and
every run (``plan_run``) before it imports a user module: a text or records model whose
factory imports torchvision needs it as much as an image one.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

log = logging.getLogger(__name__)

# Schemas from torchvision's csrc/ops/nms.cpp and csrc/ops/quantized/cpu/qnms_kernel.cpp.
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # kept alive: a torch.library.Library drops its definitions when collected
_state: str | None = None


def torchvision_state() -> str:
    """'native' (ops load), 'patched' (schemas defined here), 'absent' or 'not checked'."""
    return _state or "not checked"


def prepare_torchvision() -> str:
    """Before ``import torchvision``: define the ops' schemas if its compiled ops cannot load.

    Idempotent, and a no-op when torchvision is already imported, not installed, or its
    ops load.

    Returns:
        'native', 'patched', 'absent' or 'already imported'.
    """
    global _library, _state
    if _state is not None:
        return _state
    if "torchvision" in sys.modules:
        _state = "already imported"
        return _state
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        _state = "absent"
        return _state
    import torch

    folder = list(spec.submodule_search_locations)[0]
    lib = next((os.path.join(folder, f) for f in sorted(os.listdir(folder))
                if f.startswith("_C") and f.endswith((".so", ".pyd"))), None)
    if lib is not None:
        try:
            torch.ops.load_library(lib)
            _state = "native"
            return _state
        except (OSError, RuntimeError) as e:
            log.info("torchvision's compiled ops do not load beside this torch (%s); defining their schemas",
                     str(e).splitlines()[0][:200])
    try:
        _library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS:
            _library.define(schema)
    except RuntimeError as e:  # defined already (another copy of this module): nothing left to do
        log.info("torchvision schemas not defined here: %s", str(e).splitlines()[0][:200])
    _state = "patched"
    return _state


class _PrepareBeforeImport:
    """A meta path finder: the first ``import torchvision`` (by anyone: a user's model file, captum,
    a handler) first runs ``prepare_torchvision``; then it steps aside for the normal finders."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        remove_import_hook()
        try:
            prepare_torchvision()
        except Exception as e:  # never break an import over this: torchvision's own error follows
            log.info("torchvision preparation skipped: %s", e)
        return None


_hook = _PrepareBeforeImport()


def install_import_hook() -> None:
    """Prepare torchvision lazily, before whichever module imports it first (every command calls this
    before it imports any user module; TorchServe's workers get the same from ``worker_site``).

    Nothing is imported now: commands that never touch torchvision pay nothing. captum needs no
    preparation of its own: ``captum.attr`` does not import torchvision, and the parts that do go
    through this hook. Idempotent.
    """
    if _state is None and "torchvision" not in sys.modules and _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)


def remove_import_hook() -> None:
    if _hook in sys.meta_path:
        sys.meta_path.remove(_hook)


def import_torchvision():
    """``import torchvision`` after ``prepare_torchvision``; ImportError says how to install it."""
    prepare_torchvision()
    try:
        import torchvision
    except ImportError as e:
        raise ImportError(
            f"torchvision is needed for images ({e}). Install the pinned version: make venv "
            "(or pip install -c constraints.txt torchvision)."
        ) from e
    return torchvision


def worker_site_dir() -> str:
    """The folder to put on TorchServe workers' PYTHONPATH so they import torchvision the same way."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchserve", "worker_site")
