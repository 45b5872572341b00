"""The plan: a spec and the run options turned into what will run and what will be checked.

Everything that can be known before a stage runs is decided and checked here, so a bad
combination is an input error (exit 2) before any work: the handler and what it answers,
the reference preprocessing, the class map, the answer codec, the stages and the gate's
checks, the handler's requirements, and the traps TorchServe 0.12 is known for.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.answers.base import ClassMap
from pipeline.answers.classes import class_map_for
from pipeline.answers.registry import AnswerCodec, codec_for
from pipeline.compat import install_import_hook
from pipeline.errors import ConfigError
from pipeline.evaluate.gate import GatePlan
from pipeline.inputs.base import Reference
from pipeline.inputs.registry import resolve_reference
from pipeline.names import Stage, StageName, handled_at_batch
from pipeline.spec import Spec
from pipeline.stages.archive import NOT_APPLICABLE_FROM_MAR, archived_model_kind, inspect_archive, model_config_for
from pipeline.torchserve.handlers import HandlerInfo, resolve_handler


@dataclass(frozen=True)
class Plan:
    """What the run will do.

    Attributes:
        spec: the spec, with the run options applied.
        handler: the handler the .mar ships, and what TorchServe does with it.
        reference: the reference preprocessing of the baseline.
        class_map: how answers name the classes.
        codec: how rows travel and answers are read.
        stages: the candidate stages, in order (``handled@batchN`` when the served batch size N > 1).
        gate: the checks the gate must contain.
        notes: decisions a reader of the report should know.
        archive_model: with --mar, how the archive's own model loads without its handler
            ("script", "eager"), or None: then there is no exported stage.
    """

    spec: Spec
    handler: HandlerInfo
    reference: Reference
    class_map: ClassMap
    codec: AnswerCodec
    stages: tuple[StageName, ...]
    gate: GatePlan
    notes: tuple[str, ...] = field(default_factory=tuple)
    archive_model: str | None = None  # --mar: "script" or "eager" when the tool can load the archive's model

    @property
    def batched_stage(self) -> StageName | None:
        return next((s for s in self.stages if s.stage == Stage.HANDLED and s.batch is not None), None)


def check_requirements(path: Path | None) -> list[str]:
    """The handler's requirements, each checked against the installed packages (never installed).

    Returns:
        One line per requirement, as found.

    Raises:
        ConfigError: the file is missing or unreadable, a line is not a requirement, or a
            requirement is not installed or not at an allowed version (all listed).
    """
    if path is None:
        return []
    from packaging.requirements import InvalidRequirement, Requirement

    if not path.is_file():
        raise ConfigError(f"handler.requirements: {path} does not exist.")
    problems, found = [], []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            problems.append(f"line {n}: {line!r}: pip options are not packages; TorchServe would run pip with them")
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            problems.append(f"line {n}: {line!r} is not a requirement: {e}")
            continue
        if req.marker is not None and not req.marker.evaluate():
            found.append(f"{req}: not for this platform")
            continue
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{req.name} is not installed (line {n}: {line!r})")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name} {installed} is installed but line {n} asks for {req.specifier}")
            continue
        found.append(f"{req.name} {installed} satisfies {line!r}")
    if problems:
        raise ConfigError(
            f"{path}: {len(problems)} requirement(s) of the handler are not met by the installed packages. "
            "package-validate never installs packages at run time (TorchServe runs with "
            "install_py_dep_per_model=false): install them into this environment, or fix the file.",
            details=problems,
        )
    return found


def _check_combination(spec: Spec, handler: HandlerInfo) -> None:
    s, kind = spec.serving, spec.dataset.kind
    problems = []
    if handler.input_kinds is not None and kind not in handler.input_kinds:
        problems.append(f"handler {handler.name} reads {'/'.join(handler.input_kinds)} inputs but dataset.kind is "
                        f"{kind}: name a handler for {kind} rows (or a handler file of your own)")
    if spec.export.mode == "export" and not handler.loads_pt2:
        problems.append(f"handler {handler.name} cannot load an AOTInductor .pt2 package (TorchServe 0.12's "
                        "BaseHandler loads .pt, .onnx, an AOTInductor .so, or --model-file): use export.mode "
                        "script, trace or eager")
    if handler.first_request_only and s.batch_size > 1:
        problems.append(f"handler {handler.name} answers only the first request of a batch (its preprocess reads "
                        f"data[0] and returns one answer): serving.batch_size {s.batch_size} would fail every "
                        "batch of several requests ('number of batch response mismatched'); use batch_size 1, or "
                        "subclass it in a handler file that handles every request")
    if spec.answers.envelope != "none" and s.batch_size > 1:
        problems.append(f"answers.envelope {spec.answers.envelope}: TorchServe's KServe envelopes answer only the "
                        f"first request of a server-side batch (serve issues #2158, #1302); serving.batch_size "
                        f"{s.batch_size} would answer one row per batch: use batch_size 1")
    c = spec.model.num_classes
    if handler.top_k is not None and c < handler.top_k:
        problems.append(f"handler {handler.name} returns its top {handler.top_k} classes but the model has {c}: "
                        "torch.topk raises on every request (serve issue #411). Subclass it in a handler file "
                        f"with topk = {c}")
    k = spec.answers.top_k
    want = c if k == "all" else k
    if handler.top_k is not None and want is not None and want > handler.top_k:
        problems.append(f"answers.top_k {k} asks for {want} classes per answer but handler {handler.name} answers "
                        f"its top {handler.top_k}: lower answers.top_k or subclass the handler with a larger topk")
    if problems:
        raise ConfigError(f"{spec.spec_path or 'spec'}: {len(problems)} combination(s) TorchServe 0.12 cannot serve "
                          "as asked.", details=problems)


VOCAB_FILE = "source_vocab.pt"  # the name ts/torch_handler/text_handler.py looks for in the model folder


def check_text_vocabulary(spec: Spec, handler: HandlerInfo) -> str | None:
    """The built-in text_classifier's vocabulary, loaded as its ``initialize`` will load it.

    TorchServe 0.12's text_handler calls ``torch.load(source_vocab.pt)`` with no arguments; from
    torch 2.6 on that means ``weights_only=True``, which refuses a pickled vocabulary object
    (a torchtext Vocab, a defaultdict with a factory, any class), and the worker dies in
    ``initialize``. Checked here, before any stage.

    Returns:
        A note when the vocabulary is a plain dict: text_classifier looks every token up with
        ``vocab[token]``, so a token the dict lacks raises KeyError (a torchtext Vocab answered its
        default index); the handler probes' unusual texts show it, and real clients' words will.

    Raises:
        ConfigError: no source_vocab.pt among handler.extra_files, or it is not weights_only-loadable.
    """
    if handler.origin != "builtin" or handler.name != "text_classifier":
        return None
    import torch

    vocab = next((p for p in spec.handler.extra_files if p.name == VOCAB_FILE and p.is_file()), None)
    if vocab is None:
        raise ConfigError(f"handler text_classifier loads {VOCAB_FILE} from the archive (text_handler.py "
                          f"get_source_vocab_path), and handler.extra_files has none: add the vocabulary, saved as "
                          f"{VOCAB_FILE}, to handler.extra_files.")
    try:
        loaded = torch.load(vocab, map_location="cpu", weights_only=True)
    except Exception as e:
        from pipeline.usercode import plain

        raise ConfigError(
            f"handler text_classifier: {vocab} does not load with torch.load(weights_only=True), the default of "
            f"torch {torch.__version__.split('+')[0]} that TorchServe's text_handler uses (it passes no "
            f"weights_only), so the worker would fail in initialize: {type(e).__name__}: {plain(str(e), 200)} "
            f"Save the vocabulary as plain data, e.g. torch.save(dict(vocab.get_stoi()), '{VOCAB_FILE}') "
            "(a dict of token to index; the handler looks tokens up with vocab[token], so a token the dict "
            "lacks then raises KeyError), or subclass text_classifier in a handler file whose initialize loads "
            "it as you need, with an index for unknown tokens.") from e
    if isinstance(loaded, dict):
        return (f"{vocab.name} is a plain dict: text_classifier looks every token up with vocab[token], so a word "
                "(or bigram) it lacks raises KeyError and the request fails; a torchtext Vocab answered its "
                "default index. The handler probes' unusual texts show it; to serve any text, subclass "
                "text_classifier with a lookup that has an unknown-token index")
    return None


def _check_torchvision(handler: HandlerInfo, spec: Spec) -> None:
    needs = handler.needs_torchvision or spec.model.preprocess == "builtin:image_classifier" or (
        spec.dataset.kind == "image" and spec.model.preprocess is None)
    if not needs:
        return
    missing = [m for m in ("torchvision", "captum", "PIL") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"{handler.name} and the image reference preprocessing need {missing}, which are not "
                          "installed. Run make venv (or pip install -c constraints.txt torchvision captum pillow).")


def _reference(spec: Spec, handler: HandlerInfo) -> Reference:
    if spec.model.preprocess is None and spec.dataset.kind == "image" and handler.default_reference is None:
        raise ConfigError(
            f"dataset.kind image with handler {handler.name}: name the preprocessing your model was trained with "
            "in model.preprocess (file.py:function, given the image's bytes, returning the input tensor), or "
            "model.preprocess: builtin:image_classifier for TorchServe's ImageNet transforms."
        )
    if spec.model.preprocess is None and handler.default_reference is not None:
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"preprocess": handler.default_reference})})
    return resolve_reference(spec)


def _output_quantity(codec: AnswerCodec) -> str:
    carries = codec.carries
    if carries is None:
        return "from the first answer"
    if carries.logits:
        return "logits"
    if carries.probabilities != "none":
        return "probabilities"
    return (f"not evaluable: the {codec.format} answers carry only the predicted class (no logits or "
            "probabilities); add them to answers.mapping, or list 'max abs output difference' in "
            "gate.allow_not_evaluable")


UNTIL = ("export", "handled", "served")


def _check_extra_files(spec: Spec) -> None:
    missing = [str(p) for p in spec.handler.extra_files if not (p.is_file() or p.is_dir())]
    if missing:
        raise ConfigError(f"handler.extra_files: {len(missing)} file(s) or folder(s) do not exist. Fix the paths "
                          "(relative to the spec).", details=missing)


def plan_run(spec: Spec, *, prior: bool = False, until: str | None = None, prebuilt: Path | None = None) -> Plan:
    """Decide and check everything that can be known before a stage runs.

    Args:
        spec: the spec with the run options applied.
        prior: a second baseline (an earlier run) is given.
        until: the last stage to run ("export", "handled" or "served", the default).
        prebuilt: a .mar validated as shipped (--mar): its own model is the exported stage where
            the tool can load it without the handler (TorchScript, or --model-file + state_dict);
            else there is no exported stage and the handled stage faces the baseline directly.

    Returns:
        The plan.

    Raises:
        ConfigError: an unknown handler, a combination TorchServe 0.12 cannot serve, a label
            map that disagrees with model.class_names, unmet handler requirements, missing
            extra files, or no reference preprocessing for the input kind.
        UserCodeError: the reference preprocessing cannot be imported.
    """
    install_import_hook()  # before the first user module (the reference, the factory) is imported, any kind
    handler = resolve_handler(spec)
    _check_combination(spec, handler)
    _check_extra_files(spec)
    if not prebuilt:
        model_config_for(spec)  # the handler's config and the serving keys, merged as the archive will be
    vocab_note = check_text_vocabulary(spec, handler) if not prebuilt else None
    notes = check_requirements(spec.handler.requirements) + ([vocab_note] if vocab_note else [])
    if (handler.origin == "file" and spec.handler.config is None and prebuilt is None
            and "model_yaml_config" in handler.path.read_text(encoding="utf-8", errors="replace")):
        notes.append(f"the handler {handler.path.name} reads context.model_yaml_config, and handler.config is not "
                     "set: it gets only the serving keys the tool writes (minWorkers, batchSize, ...); name its "
                     "model-config.yaml in handler.config if it reads a section of its own")
    archive_model = None
    if prebuilt is not None:
        manifest, _, _ = inspect_archive(prebuilt)
        if spec.handler.config is not None:
            notes.append(f"handler.config {spec.handler.config} is not used: --mar {prebuilt.name} ships its own "
                         f"{manifest['model'].get('configFile') or 'model config (none)'}")
        archive_model = archived_model_kind(prebuilt, manifest)
        notes.append(f"export: {NOT_APPLICABLE_FROM_MAR}" if archive_model is None else
                     f"export: the archive's own {archive_model} model ({manifest['model'].get('serializedFile')}), "
                     "loaded without its handler and compared with the spec's model")
    _check_torchvision(handler, spec)
    class_map = class_map_for(spec)
    reference = _reference(spec, handler)
    if spec.answers.format != "auto":
        fmt, chosen = spec.answers.format, "answers.format in the spec"
    elif handler.answer_format != "auto":
        fmt, chosen = handler.answer_format, f"the handler {handler.name}"
    else:
        fmt, chosen = "auto", "the first answer's shape (answers.format: auto)"
    codec = codec_for(spec, class_map, fmt, chosen, handler.top_k)
    if prebuilt is not None and archive_model is None and until == "export":
        raise ConfigError(f"--mar {prebuilt} with --until export: the archive's model loads only through its "
                          "handler, so there is no export stage to stop after; use --until handled.")
    stages = [] if prebuilt is not None and archive_model is None else [StageName(Stage.EXPORTED)]
    if until in (None, "handled", "served"):
        stages.append(StageName(Stage.HANDLED))
        if spec.serving.batch_size > 1:
            stages.append(handled_at_batch(spec.serving.batch_size))
    if until in (None, "served"):
        stages.append(StageName(Stage.SERVED))
    quantity = {s: "logits" if s == Stage.EXPORTED else _output_quantity(codec) for s in stages}
    gate = GatePlan(
        candidates=tuple(stages), labels=class_map.labels,
        output_quantity=quantity, has_training_data=spec.dataset.train_path is not None, has_prior=prior,
        probes=tuple(s for s in ((Stage.EXPORTED,) if spec.export.probe else ()) + (
            (Stage.HANDLED, Stage.SERVED) if spec.handler.probes else ()) if s in stages),
        warmup=spec.replay.warmup_requests > 0 and Stage.SERVED in stages,
        # answers of only a class compare classes, unless the spec demands probabilities (gate.py)
        classes_only=tuple(stages[1:]) if spec.answers.top_k is None else (),
        task=spec.model.task,
    )
    return Plan(spec=spec, handler=handler, reference=reference, class_map=class_map, codec=codec,
                stages=tuple(stages), gate=gate, notes=tuple(notes), archive_model=archive_model)
