"""Segmentation example model: a tiny fully convolutional segmenter, served by TorchServe's
built-in ``image_segmenter`` (Resize(256), CenterCrop(224), ToTensor, Normalize(ImageNet); it
reads ``model(x)["out"]`` and answers each pixel's top class and its softmax probability).

A fixed 4x4 average pool first (no parameters) brings [3, 224, 224] down to [3, 56, 56], a few
3x3 convolutions classify each cell, and the logits are upsampled back to 224 x 224 (bilinear
on logits, as torchvision's FCN does). Forward returns ``{"out": logits [N, 4, 224, 224]}``, the
shape of torchvision's segmentation models. TorchServe's ``--model-file`` loading imports this
file, needs exactly one class in it and builds it with no arguments: keep it that way.
"""

import torch
from torch import nn

POOL = 4
NUM_CLASSES = 4  # background, red_box, green_disc, blue_box


class ShapesSegmenter(nn.Module):
    """Input: ImageNet-normalised RGB float32 [N, 3, H, W]. Output: {"out": logits [N, 4, H, W]}."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(POOL)
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=4, dilation=4), nn.ReLU(),
            nn.Conv2d(16, NUM_CLASSES, 1),
        )

    def cells(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits at the pooled resolution: [N, 4, H/4, W/4]."""
        return self.body(pooled)

    def forward(self, x: torch.Tensor) -> dict:
        logits = self.cells(self.pool(x))
        return {"out": nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def build_model() -> nn.Module:
    """A fresh, untrained ShapesSegmenter."""
    return ShapesSegmenter()
