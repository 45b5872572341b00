"""Detection example model: a tiny CenterNet-style detector in plain torch, served by TorchServe's
built-in ``object_detector`` (its preprocessing is ToTensor only: RGB floats in [0, 1], any size).

torchvision's detection models and ops (``nms``, ``roi_align``) do not load beside the CPU torch
here, so this network decodes its own peaks: a 3x3 max-pool keeps the local maxima of each
class heatmap (the NMS of CenterNet), and each peak becomes one box from the regressed size and
sub-cell offset. In eval mode ``forward`` returns torchvision's detection output, one dict per
image with ``boxes`` [N, 4] (xyxy, float pixels of the input image), ``labels`` int64 (1-based,
0 is the background) and ``scores``, best first. TorchServe's ``--model-file`` loading imports
this file, needs exactly one class in it and builds it with no arguments: keep it that way.
"""

import torch
from torch import nn

STRIDE = 4          # output cell side, input pixels
NUM_CLASSES = 3     # foreground classes; labels 1..3
MAX_DETECTIONS = 20
MIN_SCORE = 0.05    # as torchvision's detectors' box_score_thresh: the handler's 0.5 comes after


class ShapesDetector(nn.Module):
    """Input: RGB float32 [N, 3, H, W] in [0, 1], H and W multiples of 4. Output (eval): detections."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=4, dilation=4), nn.ReLU(),
        )
        self.heat = nn.Conv2d(32, NUM_CLASSES, 1)
        self.size = nn.Conv2d(32, 2, 1)     # log(box side / STRIDE), width then height
        self.offset = nn.Conv2d(32, 2, 1)   # the centre within its cell, in cells
        nn.init.constant_(self.heat.bias, -2.19)  # CenterNet's prior: every cell starts at p = 0.1

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw heads: heatmap logits [N, K, h, w], log sizes [N, 2, h, w], offsets [N, 2, h, w]."""
        f = self.backbone(x)
        return self.heat(f), self.size(f), self.offset(f)

    def forward(self, x: torch.Tensor):
        heat, size, offset = self.heads(x)
        if self.training:
            return heat, size, offset
        height, width = x.shape[-2], x.shape[-1]
        prob = torch.sigmoid(heat)
        peaks = prob * (prob == nn.functional.max_pool2d(prob, 3, stride=1, padding=1)).to(prob.dtype)
        n, k, h, w = peaks.shape
        out = []
        for i in range(n):
            scores, flat = peaks[i].reshape(-1).topk(min(MAX_DETECTIONS, k * h * w))
            keep = scores > MIN_SCORE
            scores, flat = scores[keep], flat[keep]
            cls = torch.div(flat, h * w, rounding_mode="floor")
            cell = flat % (h * w)
            cy, cx = torch.div(cell, w, rounding_mode="floor"), cell % w
            ox, oy = offset[i, 0, cy, cx], offset[i, 1, cy, cx]
            bw, bh = torch.exp(size[i, 0, cy, cx]) * STRIDE, torch.exp(size[i, 1, cy, cx]) * STRIDE
            px, py = (cx.to(x.dtype) + ox) * STRIDE, (cy.to(x.dtype) + oy) * STRIDE
            boxes = torch.stack([(px - bw / 2).clamp(0, width), (py - bh / 2).clamp(0, height),
                                 (px + bw / 2).clamp(0, width), (py + bh / 2).clamp(0, height)], dim=1)
            out.append({"boxes": boxes, "labels": cls.to(torch.int64) + 1, "scores": scores})
        return out


def build_model() -> nn.Module:
    """A fresh, untrained ShapesDetector, in eval mode's output format once .eval() is called."""
    return ShapesDetector()
