"""Loaded by TorchServe's workers (PYTHONPATH set by package-validate): torchvision imports.

Only an import hook is installed here: nothing heavy runs at interpreter start. The first
``import torchvision`` first calls ``pipeline.compat.prepare_torchvision``. An existing
``sitecustomize`` further down the path still runs.
"""

import importlib.abc
import importlib.machinery
import os
import sys


class _PrepareTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            from pipeline.compat import prepare_torchvision

            prepare_torchvision()
        except Exception as e:  # never break the worker's imports over this
            sys.stderr.write(f"package-validate: torchvision preparation skipped: {e}\n")
        return None  # let the normal finders import it


sys.meta_path.insert(0, _PrepareTorchvision())


def _chain_next_sitecustomize():
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == here:
            continue
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [entry])
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return


import importlib.util  # noqa: E402

_chain_next_sitecustomize()
