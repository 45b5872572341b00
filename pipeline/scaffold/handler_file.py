"""What ``init`` reads in a handler file without running it: its transforms and the files beside it.

TorchServe's vision handlers preprocess a request by opening its bytes with PIL and applying
the class attribute ``image_processing`` (``VisionHandler.preprocess``); the ImageClassifier
subclasses users write (``examples/image_classifier/mnist``) only set that attribute. When a
handler file sets it (in a class or at module level), init copies that expression, with the
imports and constants it names, into a ``reference.py`` beside the spec: the run's reference
preprocessing then applies the same transforms. A handler that overrides ``preprocess``
instead gets a reference that calls that method on one row, as the worker would.

Label maps, vocabularies and configs beside the handler (``index_to_name.json``,
``source_vocab.pt``, ``*.json``, ``*.txt``, ``*.yaml``) are what ``torch-model-archiver
--extra-files`` ships in TorchServe's examples: init proposes them as ``handler.extra_files``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError

TRANSFORMS_NAME = "image_processing"  # VisionHandler.preprocess applies self.image_processing
CONFIG_FILE = "model-config.yaml"  # torch-model-archiver --config-file: the handler's own config
REQUIREMENTS_FILE = "requirements.txt"
EXTRA_SUFFIXES = (".json", ".txt", ".yaml", ".yml")
VOCAB_SUFFIXES = (".pt", ".pth", ".pkl", ".model", ".vocab")  # shipped only when the name says vocabulary
MAX_EXTRA_FILES = 20


@dataclass(frozen=True)
class HandlerFile:
    """A handler file as init reads it.

    Attributes:
        path: the file.
        transforms: the ``image_processing = ...`` expression's source, or None.
        transforms_owner: the class that sets it (None: module level, or no transforms).
        preprocess_owner: the class whose ``preprocess`` method the handler overrides, or None.
        loads_torchscript: the file calls ``torch.jit.load``: its serialized file must be TorchScript.
        needed: source of the imports and constants the transforms name, in file order.
        vision_preprocess: a class derives from TorchServe's ImageClassifier or VisionHandler and keeps
            its ``preprocess`` (which never converts to RGB nor applies the EXIF orientation).
    """

    path: Path
    transforms: str | None = None
    transforms_owner: str | None = None
    preprocess_owner: str | None = None
    loads_torchscript: bool = False
    needed: tuple[str, ...] = ()
    vision_preprocess: bool = False


VISION_BASES = ("ImageClassifier", "VisionHandler")
# A reference that imports torchvision runs in package-validate's process, beside a CPU torch whose
# torchvision ops may not load: the tool's own workaround first (pipeline/compat.py says why).
_TORCHVISION_PREAMBLE = (
    "try:  # package-validate runs this file: torchvision beside a CPU torch (see pipeline/compat.py)\n"
    "    from pipeline.compat import prepare_torchvision\n"
    "except ImportError:\n    pass\nelse:\n    prepare_torchvision()\n"
)


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _bound(stmt: ast.stmt) -> set[str]:
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    if isinstance(stmt, ast.Assign):
        return {n.id for t in stmt.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return {stmt.target.id}
    if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
        return {stmt.name}
    return set()


def _needed(source: str, candidates: list[ast.stmt], expr: ast.AST) -> tuple[str, ...]:
    """The imports and assignments among ``candidates`` that ``expr`` names, directly or through each other."""
    want, keep = _names(expr), set()
    changed = True
    while changed:
        changed = False
        for i, stmt in enumerate(candidates):
            if i not in keep and _bound(stmt) & want:
                keep.add(i)
                if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    want |= _names(stmt)
                changed = True
    return tuple(ast.get_source_segment(source, candidates[i]) for i in sorted(keep))


def _assigned(body: list[ast.stmt], name: str) -> ast.expr | None:
    for stmt in body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
            return stmt.value
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name:
            return stmt.value
    return None


def read_handler_file(path: Path) -> HandlerFile:
    """Read a handler file's transforms, its ``preprocess`` override and how it loads the model.

    Args:
        path: the handler's .py file.

    Returns:
        What the file defines; fields are None where it defines nothing of the kind.

    Raises:
        ConfigError: the file cannot be read or is not Python (the worker could not import it either).
    """
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError) as e:
        raise ConfigError(f"--handler {path}: cannot be read as Python ({type(e).__name__}: {e}). "
                          "TorchServe's worker would fail to import it too: fix the file.") from e
    loads_ts = any(isinstance(n, ast.Attribute) and n.attr == "load" and isinstance(n.value, ast.Attribute)
                   and n.value.attr == "jit" for n in ast.walk(tree))
    classes = [s for s in tree.body if isinstance(s, ast.ClassDef)]
    # What the transforms may name: imports, constants, helper functions and classes (only those named are kept).
    top = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign,
                                                  ast.FunctionDef, ast.ClassDef))]
    preprocess_owner = next((c.name for c in classes for s in c.body
                             if isinstance(s, ast.FunctionDef) and s.name == "preprocess"), None)
    vision = preprocess_owner is None and any(
        (b.id if isinstance(b, ast.Name) else getattr(b, "attr", None)) in VISION_BASES
        for c in classes for b in c.bases)
    for cls in classes:
        expr = _assigned(cls.body, TRANSFORMS_NAME)
        if expr is not None:
            local = [s for s in cls.body if isinstance(s, (ast.Assign, ast.AnnAssign)) and s.value is not expr]
            return HandlerFile(path, ast.get_source_segment(source, expr), cls.name, preprocess_owner, loads_ts,
                               _needed(source, top + local, expr), vision)
    expr = _assigned(tree.body, TRANSFORMS_NAME)
    if expr is not None:
        rest = [s for s in top if getattr(s, "value", None) is not expr]
        return HandlerFile(path, ast.get_source_segment(source, expr), None, preprocess_owner, loads_ts,
                           _needed(source, rest, expr), vision)
    return HandlerFile(path, preprocess_owner=preprocess_owner, loads_torchscript=loads_ts, vision_preprocess=vision)


def reference_source(hf: HandlerFile, spec_dir: Path) -> str | None:
    """The text of a ``reference.py`` that applies the handler's own preprocessing to one row, or None.

    With ``image_processing``: a copy of that expression (and what it names), applied to the
    PIL image of the row's bytes, as ``VisionHandler.preprocess`` does. With only a
    ``preprocess`` override: that method, imported from the handler file and called on a
    one-row batch shaped as the worker sends it; its first row is the model input.
    """
    if hf.transforms is not None:
        owner = f"class {hf.transforms_owner}" if hf.transforms_owner else "module level"
        needed = "\n".join(hf.needed)
        if "torchvision" in needed:
            needed = _TORCHVISION_PREAMBLE + "\n" + needed
        return (
            f'"""Reference preprocessing written by `package-validate init`: the image_processing of\n'
            f"{hf.path.name} ({owner}), copied, and applied to one request body as TorchServe's\n"
            "VisionHandler.preprocess applies it. The run compares the handler with this copy: if your model\n"
            'was trained with other transforms, write those here instead."""\n\n'
            "import io\n\nfrom PIL import Image\n"
            + (f"\n{needed}\n" if needed else "")
            + f"\nimage_processing = {hf.transforms}\n\n\n"
            "def preprocess(body):\n"
            "    return image_processing(Image.open(io.BytesIO(body)))\n"
        )
    if hf.preprocess_owner is not None:
        try:
            where = hf.path.resolve().relative_to(spec_dir.resolve()).as_posix()
            place = f"Path(__file__).resolve().parent / {where!r}"
        except ValueError:
            place = f"Path({str(hf.path.resolve())!r})"
        return (
            f'"""Reference preprocessing written by `package-validate init`: {hf.preprocess_owner}.preprocess of\n'
            f"{hf.path.name}, called on a one-row batch as TorchServe's worker calls it (without initialize,\n"
            "so it must not need the model). The run compares the handler with its own preprocessing: if your\n"
            'model was trained with other preprocessing, write that here instead."""\n\n'
            "import importlib.util\nfrom pathlib import Path\n\nimport torch\n\n" + _TORCHVISION_PREAMBLE + "\n"
            f"_FILE = {place}\n"
            '_SPEC = importlib.util.spec_from_file_location("_pv_handler_" + _FILE.stem, _FILE)\n'
            "_MODULE = importlib.util.module_from_spec(_SPEC)\n_SPEC.loader.exec_module(_MODULE)\n"
            f"_CLASS = _MODULE.{hf.preprocess_owner}\n\n\n"
            "def preprocess(view):\n"
            "    handler = _CLASS.__new__(_CLASS)\n"
            '    handler.device = torch.device("cpu")\n'
            '    return _CLASS.preprocess(handler, [{"body": view, "data": view}])[0]\n'
        )
    return None


@dataclass(frozen=True)
class BesideFiles:
    """Files beside a handler file that the archive should ship, and those it handles otherwise."""

    extra_files: tuple[Path, ...] = ()
    config: Path | None = None
    requirements: Path | None = None
    left_out: tuple[str, ...] = ()


def is_validation_spec(path: Path) -> bool:
    """A YAML file with this tool's ``model`` and ``dataset`` sections: a spec (init's own output, or one
    written before it), which no handler reads and no archive should ship."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("model"), dict) and isinstance(doc.get("dataset"), dict)


def files_beside(handler: Path, skip: set[Path]) -> BesideFiles:
    """Label maps, vocabularies and configs in the handler's folder (not in sub-folders).

    Args:
        handler: the handler file.
        skip: files the spec names otherwise (the spec itself, data, weights, ...), resolved.

    Returns:
        The extra files (sorted by name), the model-config.yaml, the requirements.txt, and
        files left out with why.
    """
    extra, left, config, reqs = [], [], None, None
    for p in sorted(handler.resolve().parent.iterdir()):
        if not p.is_file() or p.resolve() in skip:
            continue
        name = p.name.lower()
        if name == CONFIG_FILE:
            config = p.resolve()
        elif name == REQUIREMENTS_FILE:
            reqs = p.resolve()
        elif name.endswith((".yaml", ".yml")) and is_validation_spec(p):
            left.append(f"{p.name}: a package-validate spec, not a file the handler reads")
        elif name.endswith(EXTRA_SUFFIXES) or ("vocab" in name and name.endswith(VOCAB_SUFFIXES)):
            extra.append(p.resolve())
    if len(extra) > MAX_EXTRA_FILES:
        left += [f"{p.name}: more than {MAX_EXTRA_FILES} files beside the handler; list the ones it reads yourself"
                for p in extra[MAX_EXTRA_FILES:]]
        extra = extra[:MAX_EXTRA_FILES]
    return BesideFiles(tuple(extra), config, reqs, tuple(left))
