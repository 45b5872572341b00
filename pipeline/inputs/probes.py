"""Handler input probes: variants of a dataset row that real clients send, and what a handler should do.

Each probe names what a correct handler does with it:

    same     the same content in another form (an RGBA copy of an RGB image, an extra JSON
             field): the answer must name the same class as the original row's (for detection
             and segmentation: the same objects, or nearly the same mask; ``stages.probing``)
    answer   valid but unusual (a tiny image, an empty text): any answer, or a clean refusal
             (HTTP 4xx with a reason); a crash fails
    refuse   not a valid input (a record missing a field, a body above max_request_size): a
             clean refusal; answering as if nothing were wrong fails

The kinds build their probes (``handler_probes`` of each kind module, through the registry).
"""

from __future__ import annotations

from dataclasses import dataclass

SAME, ANSWER, REFUSE = "same", "answer", "refuse"


@dataclass(frozen=True)
class HandlerProbe:
    """One probe: the body sent, what a correct handler does with it, and where it is sent."""

    name: str
    body: bytes
    content_type: str
    expect: str  # same | answer | refuse
    source_index: int  # the dataset row it was made from
    stages: tuple[str, ...] = ("handled", "served")
    note: str = ""
    # EXIF orientation the image's pixels are stored under (0: none). Tasks whose answers sit in the
    # image's frame (boxes, masks) are then compared in both frames (``stages.probing``).
    orientation: int = 0
    upright_size: tuple[int, int] | None = None  # (width, height) of the picture as a viewer shows it
