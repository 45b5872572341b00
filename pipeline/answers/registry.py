"""The answer formats and envelopes: the only place that switches on ``answers.format``.

``codec_for`` builds an ``AnswerCodec``: the envelope (how a row travels), the decoder (how
its answer becomes a ``Prediction``) and what every answer must carry (``answers.top_k``).
With ``answers.format: auto`` a known handler fixes the format; for a handler file the first
answer does (``AnswerCodec.settle``), and the report names what was chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pipeline.answers import logits, mapping, package_validate, topk
from pipeline.answers.base import AnswerError, Carries, ClassMap, Prediction
from pipeline.answers.envelopes import ENVELOPES
from pipeline.spec import Spec

FORMATS = (package_validate.NAME, topk.NAME, logits.NAME, mapping.NAME)


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
    raise ValueError(f"unknown answer format {name!r}")


def sniff_format(doc: Any, num_classes: int, class_map: ClassMap) -> str | None:
    """The format an answer document looks like, or None."""
    if package_validate.looks_like(doc):
        return package_validate.NAME
    if logits.looks_like(doc, num_classes):
        return logits.NAME
    if topk.looks_like(doc, class_map):
        return topk.NAME
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
    """

    envelope: Any
    format: str
    decoder: Any
    required_classes: int
    required_words: str
    chosen_by: str
    spec: Spec
    class_map: ClassMap

    @property
    def carries(self) -> Carries | None:
        return self.decoder.carries if self.decoder is not None else None

    def request(self, body: bytes, content_type: str, view: Any) -> tuple[bytes, str]:
        """The bytes and Content-Type a client sends for one row."""
        return self.envelope.wrap(body, content_type, view)

    def settle(self, body: bytes) -> "AnswerCodec":
        """The codec as the first answer ``body`` fixes it: with format auto, the format that answer
        shows; with no ``answers.top_k`` and a format whose class count is open (top-k maps, custom
        mappings), as many classes as that answer carries. Else self."""
        if self.decoder is not None and (self.required_classes or self.spec.answers.top_k is not None):
            return self
        try:
            doc = self.envelope.unwrap(body)
        except AnswerError:
            return self
        name, decoder, chosen = self.format, self.decoder, self.chosen_by
        if decoder is None:
            name = sniff_format(doc, self.spec.model.num_classes, self.class_map)
            if name is None:
                return self
            decoder = decoder_for(name, self.spec, self.class_map)
            chosen = "the first answer's shape (answers.format: auto)"
        requirement = _requirement(self.spec, name)
        if not requirement["required_classes"] and self.spec.answers.top_k is None or (
                name == topk.NAME and self.decoder is None and self.spec.answers.top_k is None):
            try:
                carried = decoder.decode(doc).classes_carried
            except AnswerError:
                carried = 0
            requirement = {"required_classes": carried,
                           "required_words": f"the first answer's {carried} class(es) (answers.top_k unset)"}
        return replace(self, format=name, decoder=decoder, chosen_by=chosen, **requirement)

    def decode(self, body: bytes) -> Prediction:
        """One answer body -> Prediction; AnswerError says why it does not decode."""
        doc = self.envelope.unwrap(body)
        if self.decoder is None:
            raise AnswerError(
                "the answer's format is not recognised (answers.format: auto): expected this project's "
                "{prediction, probabilities} JSON, a {label: probability} object or a list of logits. Set "
                "answers.format (and answers.mapping for a custom answer)"
            )
        pred = self.decoder.decode(doc)
        if self.required_classes and pred.classes_carried < self.required_classes:
            raise AnswerError(
                f"the answer carries {pred.classes_carried} class(es) but {self.required_words} requires "
                f"{self.required_classes}"
            )
        return pred


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
    decoder = None if fmt == "auto" else decoder_for(fmt, spec, class_map)
    req = _requirement(spec, fmt, builtin_top_k) if fmt != "auto" else {
        "required_classes": 0, "required_words": "nothing yet"}
    return AnswerCodec(envelope=envelope, format=fmt, decoder=decoder, chosen_by=chosen_by, spec=spec,
                       class_map=class_map, **req)
