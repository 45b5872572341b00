"""Build the eager model from the spec's factory and load its weights strictly.

Also checks what TorchServe's ``--model-file`` loading needs (``export.mode: eager``): the
factory's file defines exactly one class, built with no arguments, whose state_dict is the
weights file, because ``BaseHandler._load_pickled_model`` does exactly that.
"""

from __future__ import annotations

import inspect
import logging
import re
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import ModelError, UserCodeError
from pipeline.spec import Spec
from pipeline.usercode import import_callable, import_module_ref, plain, user_frame

log = logging.getLogger(__name__)


def _state_dict_mismatch(model: nn.Module, state: dict) -> list[str]:
    own = model.state_dict()
    problems = []
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing:
        problems.append(f"missing in the weights file: {missing[:10]}")
    if unexpected:
        problems.append(f"not in the model: {unexpected[:10]}")
    for k in sorted(set(own) & set(state)):
        a, b = own[k], state[k]
        if hasattr(b, "shape") and tuple(a.shape) != tuple(b.shape):
            problems.append(f"{k}: model has shape {list(a.shape)}, weights file has {list(b.shape)}")
    return problems


def read_state_dict(weights: Path) -> dict:
    """The state_dict in a weights file; ModelError when it is missing or not a state_dict."""
    if not weights.is_file():
        raise ModelError(
            f"weights file {weights} does not exist. Train the model first "
            "(for the examples: make examples) or fix model.weights in the spec."
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:
        module = _pickled_module(weights)
        if module:
            raise ModelError(
                f"weights file {weights} holds a pickled model object ({module}), not a state_dict: it was "
                f"written with torch.save(model). Save the weights instead: torch.save(model.state_dict(), "
                f"{weights.name!r}) (they load without running pickled code, and TorchServe loads a state_dict)."
            ) from e
        text = plain(str(e))
        unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", plain(str(e), limit=10**6))
        raise ModelError(
            f"weights file {weights} ({weights.stat().st_size} bytes) could not be loaded: {type(e).__name__}: "
            f"{unsupported.group(0) + '.' if unsupported else text} It may be truncated or not a torch.save'd "
            "state_dict; save one with torch.save(model.state_dict(), path)."
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"weights file {weights} holds a {type(state).__name__}, expected a state_dict. "
                         "Save one with torch.save(model.state_dict(), path).")
    return state


def _pickled_module(weights: Path) -> str | None:
    """The class of the object a torch.save file pickles when it is a whole nn.Module, read from the
    pickle's opcodes without unpickling (which would run the file's code), or None.

    A state_dict pickles only tensors (``torch._utils``), storages and an OrderedDict; ``torch.save(model)``
    names the model's class and ``torch.nn.modules`` classes.
    """
    import pickletools
    import zipfile

    try:
        with zipfile.ZipFile(weights) as z:
            name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            if name is None:
                return None
            data = z.read(name)
        names, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # not a zip, a torn pickle: the caller reports torch's own error
        return None
    if not any(n.startswith("torch.nn.modules.") for n in names):
        return None
    own = [n for n in names if not n.startswith(("torch.", "collections.", "builtins.", "__builtin__."))]
    return (own or [n for n in names if n.startswith("torch.nn.modules.")])[0]


def load_model(spec: Spec) -> nn.Module:
    """Build the eager model from the spec's factory and load its weights strictly.

    Args:
        spec: the validated spec.

    Returns:
        The model in eval mode, on the CPU.

    Raises:
        UserCodeError: the factory cannot be imported, or raised.
        ModelError: the factory returns no nn.Module, the weights file is missing or
            unreadable, or its keys or shapes differ from the model's (all listed).
    """
    factory = import_callable(spec.model.factory, "model.factory")
    try:
        model = factory()
    except Exception as e:
        raise UserCodeError(f"model.factory {spec.model.factory} raised {type(e).__name__}: {e}{user_frame(e)}") from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.factory {spec.model.factory} returned {type(model).__name__}, not a torch.nn.Module.")
    state = read_state_dict(spec.model.weights)
    problems = _state_dict_mismatch(model, state)
    if problems:
        raise ModelError(
            f"weights file {spec.model.weights} does not match the architecture built by {spec.model.factory}.",
            details=problems,
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def model_file_for_eager(spec: Spec) -> Path:
    """The model file TorchServe's ``--model-file`` loading needs, checked as the worker will use it.

    Returns:
        The factory's .py file.

    Raises:
        ModelError: the factory is not a .py file, the file defines no or several classes,
            its class needs constructor arguments, or its state_dict does not match the weights.
    """
    module_ref = spec.model.factory.rpartition(":")[0]
    if not module_ref.endswith(".py"):
        raise ModelError(
            f"export.mode eager ships the model's source file, but model.factory {spec.model.factory} is a "
            "module path. Use 'file.py:function', with the file defining exactly one class."
        )
    module = import_module_ref(module_ref, "model.factory")
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    fix = ("TorchServe's BaseHandler imports this file, requires exactly one class defined in it, and builds it "
           "with no arguments. Move helper classes to another module, or use export.mode script.")
    if len(classes) != 1:
        raise ModelError(f"export.mode eager: {module_ref} defines {len(classes)} classes "
                         f"{[c.__name__ for c in classes]}. {fix}")
    cls = classes[0]
    try:
        model = cls()
    except Exception as e:
        raise ModelError(f"export.mode eager: {cls.__name__}() without arguments raised {type(e).__name__}: {e}. "
                         f"{fix}") from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"export.mode eager: {cls.__name__} in {module_ref} is not a torch.nn.Module. {fix}")
    problems = _state_dict_mismatch(model, read_state_dict(spec.model.weights))
    if problems:
        raise ModelError(f"export.mode eager: {cls.__name__}() does not take the weights file's state_dict "
                         "(the worker calls load_state_dict on it).", details=problems)
    return Path(module_ref)
