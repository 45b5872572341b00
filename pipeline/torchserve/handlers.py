"""Which handler the .mar ships, and what TorchServe 0.12 does with it.

``handler.name`` is one of this project's handlers (a file in ``handlers/``, shipped inside
the distribution), one of TorchServe's built-in handler names (resolved by the worker as
``ts.torch_handler.<name>``; the archiver copies no file for them), or a path to the
user's own handler file. A file may be named as TorchServe's ``--handler file.py:function``:
the module-level function is then the entry point (``ts/model_loader.py`` calls
``function(None, context)`` once to initialise, then ``function(data, context)`` per batch).
Without ``:function`` the worker uses the module's own ``handle`` function if it has one,
else its one class (a BaseHandler subclass, or any class with ``handle``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.spec import Spec

PROJECT_HANDLERS_DIR = Path(__file__).resolve().parents[2] / "handlers"


@dataclass(frozen=True)
class HandlerInfo:
    """A resolved handler and the facts that decide how it is archived and read.

    Attributes:
        name: as given in the spec.
        origin: "project", "builtin" or "file".
        archiver_ref: what goes to torch-model-archiver's --handler (a file path or a built-in name).
        path: the handler file shipped in the .mar (None for a built-in).
        answer_format: the format its answers have ("auto": find out from the first answer).
        top_k: how many classes its answers carry by design (None: all or unknown).
        input_kinds: dataset kinds it reads (None: any).
        default_reference: the reference preprocessing that matches it (None: the kind's default).
        loads_pt2: whether it can load an AOTInductor .pt2 package.
        first_request_only: answers only the first request of a server-side batch.
        needs_torchvision: imports torchvision (and captum) in the worker.
        function: the module-level entry point of ``file.py:function`` (None: TorchServe's default).
    """

    name: str
    origin: str
    archiver_ref: str
    path: Path | None
    answer_format: str
    top_k: int | None = None
    input_kinds: tuple[str, ...] | None = None
    default_reference: str | None = None
    loads_pt2: bool = True
    first_request_only: bool = False
    needs_torchvision: bool = False
    function: str | None = None

    @property
    def display(self) -> str:
        entry = f", entry point {self.function}()" if self.function else ""
        return {"project": f"{self.name} (package-validate's handlers/{self.name}.py)",
                "builtin": f"{self.name} (TorchServe built-in ts.torch_handler.{self.name})",
                "file": f"{self.path} (your handler{entry})"}[self.origin]


PROJECT_HANDLERS = {
    "tensor_classifier": dict(answer_format="package_validate", input_kinds=("tensor",)),
}
# TorchServe 0.12's built-ins that classify one input per request.
BUILTIN_HANDLERS = {
    "image_classifier": dict(answer_format="topk", top_k=5, input_kinds=("image",),
                             default_reference="builtin:image_classifier", loads_pt2=False, needs_torchvision=True),
    "text_classifier": dict(answer_format="topk", input_kinds=("text",), loads_pt2=False,
                            first_request_only=True, needs_torchvision=True),
    # model.task detection / segmentation (pipeline/tasks/): the task decodes their answers
    "object_detector": dict(answer_format="object_detector", input_kinds=("image",),
                            default_reference="builtin:object_detector", loads_pt2=False, needs_torchvision=True),
    "image_segmenter": dict(answer_format="image_segmenter", input_kinds=("image",),
                            default_reference="builtin:image_segmenter", loads_pt2=False, needs_torchvision=True),
}
# the task each of these built-ins answers for (a spec naming one with another model.task is refused)
BUILTIN_TASKS = {"object_detector": "detection", "image_segmenter": "segmentation"}
# Built-ins this tool does not validate, and why.
REFUSED_BUILTINS = {
    "base_handler": "its preprocess is torch.as_tensor on the list of request dicts, so it serves no "
                    "request as is; subclass it in a handler file and name that file",
    "vision_handler": "it is an abstract base class; name image_classifier or your subclass's file",
    "text_handler": "it is an abstract base class; name text_classifier or your subclass's file",
}


def archiver_handler_ref(path: Path, function: str | None) -> str:
    """torch-model-archiver's --handler for a file: the path, or ``path-without-.py:function``.

    The archiver copies ``--handler`` as a file path unless it lacks ".py", in which case it
    cuts the ``:function`` and adds ".py" (model_packaging_utils.copy_artifacts): so
    ``dir/h.py:fn`` would be copied as a file named "h.py:fn" and fail, while ``dir/h:fn``
    packs ``h.py`` and records ``h:fn`` in the manifest, which the worker's loader reads.
    """
    return str(path) if function is None else f"{path.with_suffix('')}:{function}"


def resolve_handler(spec: Spec) -> HandlerInfo:
    """The handler the spec names.

    Raises:
        ConfigError: a name that is neither this project's, a built-in nor a file; a
            built-in this tool does not validate; a handler file that does not exist.
    """
    name = spec.handler.name
    if spec.handler.is_file:
        path, function = Path(spec.handler.file), spec.handler.function
        if not path.is_file():
            raise ConfigError(f"handler: file {path} does not exist. Fix handler.name (a path relative to the spec).")
        if path.suffix != ".py":
            raise ConfigError(f"handler: {path} is not a .py file. A handler file is Python source.")
        return HandlerInfo(name=name, origin="file", archiver_ref=archiver_handler_ref(path, function), path=path,
                           answer_format="auto", function=function)
    if name in PROJECT_HANDLERS:
        path = PROJECT_HANDLERS_DIR / f"{name}.py"
        return HandlerInfo(name=name, origin="project", archiver_ref=str(path), path=path, **PROJECT_HANDLERS[name])
    if name in BUILTIN_HANDLERS:
        task = BUILTIN_TASKS.get(name)
        if task is not None and spec.model.task != task:
            raise ConfigError(f"handler {name!r} answers {task} (model.task: {task}), but model.task is "
                              f"{spec.model.task!r}. Set model.task: {task}, or name a handler for {spec.model.task}.")
        return HandlerInfo(name=name, origin="builtin", archiver_ref=name, path=None, **BUILTIN_HANDLERS[name])
    if name in REFUSED_BUILTINS:
        raise ConfigError(f"handler {name!r}: not validated here: {REFUSED_BUILTINS[name]}.")
    raise ConfigError(
        f"handler {name!r} is neither a handler of this project ({sorted(PROJECT_HANDLERS)}), a TorchServe "
        f"built-in ({sorted(BUILTIN_HANDLERS)}) nor a file. Give a path ending in .py for your own handler."
    )
