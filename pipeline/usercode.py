"""Importing and calling the user's own code: model factories, preprocessing functions.

A reference is ``package.module:function`` or ``/abs/path/file.py:function`` (the spec
resolves relative file paths). Files are imported under a name derived from their path, so
two files with the same name never share a module. An exception raised inside the user's
code is the user's input error (exit 2), quoted with the innermost frame of their file.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from pipeline.errors import UserCodeError


def import_module_ref(module_ref: str, field: str):
    """Import ``package.module`` or a ``.py`` file; UserCodeError names the field and the cause."""
    try:
        if module_ref.endswith(".py"):
            path = Path(module_ref)
            if not path.is_file():
                raise UserCodeError(f"{field}: file {path} does not exist. Fix the path in the spec.")
            mod_name = f"_pv_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
            if mod_name in sys.modules:
                return sys.modules[mod_name]
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            # The file's own folder first, so it can import its siblings as it would in training.
            folder = str(path.parent)
            added = folder not in sys.path
            if added:
                sys.path.insert(0, folder)
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(mod_name, None)
                raise
            finally:
                if added and folder in sys.path:
                    sys.path.remove(folder)
            return module
        return importlib.import_module(module_ref)
    except UserCodeError:
        raise
    except Exception as e:
        raise UserCodeError(
            f"{field}: cannot import {module_ref!r}: {type(e).__name__}: {e}{user_frame(e)}. "
            "Check the import path and that the module imports on its own."
        ) from e


def import_callable(ref: str, field: str) -> Callable[..., Any]:
    """The function named by ``module:function``.

    Args:
        ref: ``package.module:function`` or ``/path/file.py:function``.
        field: the spec field, for messages (e.g. ``model.preprocess``).

    Returns:
        The callable.

    Raises:
        UserCodeError: the module cannot be imported or has no such callable.
    """
    module_ref, _, func_name = ref.rpartition(":")
    try:
        module = import_module_ref(module_ref, field)
    except UserCodeError as e:
        missing = e.__cause__
        if (isinstance(missing, ModuleNotFoundError) and not module_ref.endswith(".py")
                and missing.name == module_ref.split(".")[0]):
            # 'model:build_model' for a model.py beside the spec: the ref is read as an installed module
            guess = f"{module_ref.replace('.', '/')}.py:{func_name}"
            raise UserCodeError(
                f"{field}: cannot import {module_ref!r}: ModuleNotFoundError: {missing}: {ref!r} is read as an "
                f"installed module. If it is a file beside the spec, did you mean {guess!r}? A file is named by "
                "its path with the .py suffix, relative to the spec's folder.") from missing
        raise
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise UserCodeError(f"{field}: {module_ref!r} has no callable {func_name!r}. Fix {field} in the spec.")
    return fn


def user_frame(e: BaseException) -> str:
    """' (at file.py:12 in fn)' for the innermost frame outside the installed packages, or ''."""
    frames = traceback.extract_tb(e.__traceback__)
    for f in reversed(frames):
        if f.filename.startswith("<frozen "):  # importlib's own frames: not the user's
            continue
        if "site-packages" not in f.filename and "/pipeline/" not in f.filename.replace("\\", "/"):
            return f" (at {Path(f.filename).name}:{f.lineno} in {f.name})"
    return ""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def plain(text: str, limit: int = 300) -> str:
    """Quoted library text for a message: ANSI escapes (torch bolds parts of its errors) removed,
    whitespace collapsed, cut at a sentence end within ``limit`` characters rather than mid-sentence."""
    text = " ".join(_ANSI.sub("", text).split())
    if len(text) <= limit:
        return text
    cut = max(text.rfind(". ", 0, limit), text.rfind("; ", 0, limit))
    return text[: cut + 1] if cut > 0 else text[: limit - 3] + "..."
