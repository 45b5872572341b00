"""The answer formats and envelopes: the only place that switches on ``answers.format``.

``codec_for`` builds an ``AnswerCodec``: the envelope (how a row travels), the decoder (how
its answer becomes a ``Prediction``) and what every answer must carry (``answers.top_k``).
With ``answers.format: auto`` a known handler fixes the format; for a handler file the first
answer does (``AnswerCodec.settle``), and the report names what was chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pipeline.answers import bare, custom, label_scores, logits, mapping, package_validate, top1, topk
from pipeline.answers.base import AnswerError, Carries, ClassMap, NotJSON, Prediction
from pipeline.answers.envelopes import ENVELOPES
from pipeline.answers.naming import digit_label_note
from pipeline.spec import Spec

FORMATS = (package_validate.NAME, topk.NAME, logits.NAME, mapping.NAME, bare.INDEX, bare.LABEL, top1.NAME,
           label_scores.NAME, custom.NAME)
LABEL_READERS = (bare.LABEL, top1.NAME, label_scores.NAME, custom.NAME)  # formats whose answers name labels
BUILTIN_CHOICE = "the handler "  # how the plan words a format fixed by a built-in handler


def decoder_for(name: str, spec: Spec, class_map: ClassMap):
    c = spec.model.num_classes
    if name == package_validate.NAME:
        return package_validate.Decoder(c)
    if name == topk.NAME:
        return topk.Decoder(c, class_map)
    if name == logits.NAME:
        return logits.Decoder(c)
    if name == mapping.NAME:
        return mapping.Decoder(c, class_map, spec.answers.mapping)
    if name == bare.INDEX:
        return bare.IndexDecoder(c)
    if name == bare.LABEL:
        return bare.LabelDecoder(class_map)
    if name == top1.NAME:
        return top1.Decoder(c, class_map)
    if name == label_scores.NAME:
        return label_scores.Decoder(c, class_map)
    if name == custom.NAME:
        return custom.decoder_for(spec.answers.decode, c, class_map)
    raise ValueError(f"unknown answer format {name!r}")


def sniff_format(doc: Any, num_classes: int, class_map: ClassMap) -> str | None:
    """The format an answer document looks like, or None where no format reads it or two could."""
    if package_validate.looks_like(doc):
        return package_validate.NAME
    if logits.looks_like(doc, num_classes):
        return logits.NAME
    if topk.looks_like(doc, class_map):
        return topk.NAME
    if isinstance(doc, list) and label_scores.looks_like(doc, num_classes, class_map):
        return label_scores.NAME
    if top1.looks_like(doc, num_classes, class_map):
        return top1.NAME
    if bare.looks_like_index(doc, num_classes, class_map):
        return bare.INDEX
    if bare.looks_like_label(doc, class_map):
        return bare.LABEL
    return None


@dataclass(frozen=True)
class AnswerCodec:
    """How rows travel and how answers are read.

    Attributes:
        envelope: none, kserve_v1 or kserve_v2 (``answers.envelope``).
        format: the answer format's name; "auto" until the first answer settles it.
        decoder: the format's decoder (None while "auto").
        required_classes: classes every answer must carry (``answers.top_k``); 0 for none.
        required_words: how the requirement was set, for messages.
        chosen_by: why this format (the spec, the handler, or the first answer).
        notes: warnings for the report, once the first answer settled the codec (classes compared,
            an ambiguous label set).
        settled: the first decodable answer has been seen.
        outputs_by_name: the task reads a tensor answer's outputs by name (detection's boxes, labels,
            scores): the envelope hands it every output (``envelopes.KServeV2.unwrap_outputs``).
    """

    envelope: Any
    format: str
    decoder: Any
    required_classes: int
    required_words: str
    chosen_by: str
    spec: Spec
    class_map: ClassMap
    notes: tuple[str, ...] = ()
    settled: bool = False
    outputs_by_name: bool = False

    @property
    def carries(self) -> Carries | None:
        return self.decoder.carries if self.decoder is not None else None

    def request(self, body: bytes, content_type: str, view: Any) -> tuple[bytes, str]:
        """The bytes and Content-Type a client sends for one row."""
        return self.envelope.wrap(body, content_type, view)

    def document(self, body: bytes, text_ok: bool = True) -> Any:
        """The answer after the envelope: parsed JSON, or (``text_ok``, no envelope) the raw text, which
        is how TorchServe sends a handler's ``str`` answer."""
        try:
            return self.envelope.unwrap_outputs(body) if self.outputs_by_name else self.envelope.unwrap(body)
        except NotJSON as e:
            if text_ok and self.envelope.name == "none":
                return e.text
            raise

    def settle(self, body: bytes) -> "AnswerCodec":
        """The codec as the first answer ``body`` fixes it: with format auto, the format that answer
        shows; with no ``answers.top_k`` and a format whose class count is open (top-k maps, custom
        mappings, bare and top-1 answers), as many classes as that answer carries; and the notes that
        answer calls for. Else self."""
        if self.settled:
            return self
        try:
            doc = self.document(body)
        except AnswerError:
            return self
        name, decoder, chosen = self.format, self.decoder, self.chosen_by
        if decoder is None:
            name = sniff_format(doc, self.spec.model.num_classes, self.class_map)
            if name is None:
                return self
            decoder = decoder_for(name, self.spec, self.class_map)
            chosen = "the first answer's shape (answers.format: auto)"
        try:
            pred = decoder.decode(doc)
        except AnswerError:
            if self.decoder is not None:
                return self  # a format already fixed: the next answer that decodes settles it
            pred = None
        fixed = self.decoder is not None and (self.required_classes or self.spec.answers.top_k is not None)
        if fixed and self.required_classes >= self.spec.model.num_classes and name not in LABEL_READERS:
            return self  # every class required of every answer: nothing the first one could change or note
        if fixed:
            requirement = {"required_classes": self.required_classes, "required_words": self.required_words}
        else:
            requirement = _requirement(self.spec, name)
            if not requirement["required_classes"] and self.spec.answers.top_k is None or (
                    name == topk.NAME and self.decoder is None and self.spec.answers.top_k is None):
                carried = pred.classes_carried if pred is not None else 0
                requirement = {"required_classes": carried,
                               "required_words": f"the first answer's {carried} class(es) (answers.top_k unset)"}
        if pred is not None and name == custom.NAME:
            decoder = decoder.observed(pred)
        notes = _notes(self.spec, self.class_map, name, chosen, pred) if pred is not None else ()
        if fixed and not notes:
            return self
        return replace(self, format=name, decoder=decoder, chosen_by=chosen, notes=notes, settled=pred is not None,
                       **requirement)

    def decode(self, body: bytes) -> Prediction:
        """One answer body -> Prediction; AnswerError says why it does not decode."""
        if self.decoder is None:
            self.document(body)  # an envelope or encoding fault is said first
            raise AnswerError(
                "the answer's format is not recognised (answers.format: auto): expected this project's "
                "{prediction, probabilities} JSON, a {label: probability} object, a list of logits, a class "
                "index, a class label, a {label, confidence} object or a list of {label, score} objects. Set "
                "answers.format (answers.mapping or answers.decode: file.py:function for another answer)"
            )
        pred = self.decoder.decode(self.document(body, text_ok=getattr(self.decoder, "accepts_text", False)))
        if self.required_classes and pred.classes_carried < self.required_classes:
            raise AnswerError(
                f"the answer carries {pred.classes_carried} class(es) but {self.required_words} requires "
                f"{self.required_classes}"
            )
        return pred


def _notes(spec: Spec, class_map: ClassMap, fmt: str, chosen_by: str, pred: Prediction) -> tuple[str, ...]:
    """Warnings the first answer calls for: a handler file's answers carrying fewer classes than the
    model with no answers.top_k declared (the classes compared), and an ambiguous label set."""
    out = []
    c = spec.model.num_classes
    carried = pred.classes_carried
    if spec.answers.top_k is None and carried < c and not chosen_by.startswith(BUILTIN_CHOICE):
        if carried == 0:
            compared = ("only the predicted class: the agreement and metric checks compare classes; no output "
                        "difference is measured at the served stage")
        else:
            compared = (f"the output difference compares the probabilities of those {carried} class(es) with the "
                        "baseline's")
        out.append(f"answers ({fmt} format): the first answer carries {carried} of the model's {c} classes and "
                   f"answers.top_k is not set, so {compared}. Set answers.top_k to require more of every answer")
    if fmt in LABEL_READERS:
        note = digit_label_note(class_map, fmt)
        if note:
            out.append(note)
    return tuple(out)


def _requirement(spec: Spec, fmt: str, builtin_top_k: int | None = None) -> dict:
    c = spec.model.num_classes
    k = spec.answers.top_k
    if k == "all":
        return {"required_classes": c, "required_words": "answers.top_k: all"}
    if isinstance(k, int):
        return {"required_classes": k, "required_words": f"answers.top_k: {k}"}
    if fmt == topk.NAME:
        default = min(builtin_top_k or 5, c)
        return {"required_classes": default, "required_words": f"the handler's top-{default} (answers.top_k default)"}
    if fmt in (package_validate.NAME, logits.NAME):
        return {"required_classes": c, "required_words": f"the {fmt} format (every class)"}
    return {"required_classes": 0, "required_words": "nothing (answers.top_k unset)"}


def codec_for(spec: Spec, class_map: ClassMap, fmt: str, chosen_by: str,
              builtin_top_k: int | None = None) -> AnswerCodec:
    """The codec for a format already chosen (``fmt`` may be "auto" for a handler file)."""
    envelope = ENVELOPES[spec.answers.envelope]
    if spec.model.task != "classification":  # the task reads its own answers (tasks/<task>.py decoder)
        from pipeline.tasks.registry import task_of

        task = task_of(spec)
        return AnswerCodec(envelope=envelope, format=spec.model.task, decoder=task.decoder(spec),
                           chosen_by=f"model.task: {spec.model.task}", spec=spec, class_map=class_map,
                           required_classes=0, required_words="nothing (a task's own answers)", settled=True,
                           outputs_by_name=bool(getattr(task, "outputs_by_name", False)))
    decoder = None if fmt == "auto" else decoder_for(fmt, spec, class_map)
    req = _requirement(spec, fmt, builtin_top_k) if fmt != "auto" else {
        "required_classes": 0, "required_words": "nothing yet"}
    return AnswerCodec(envelope=envelope, format=fmt, decoder=decoder, chosen_by=chosen_by, spec=spec,
                       class_map=class_map, **req)
