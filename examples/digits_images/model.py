"""Image example model: a small CNN for digits rendered as RGB images, served by TorchServe's
built-in ``image_classifier`` (Resize(256), CenterCrop(224), ToTensor, ImageNet Normalize).

The first layer is a fixed average pool (no parameters) from [3, 224, 224] down to [3, 8, 8],
so the network is as cheap as the 8x8 digits CNN while taking what the built-in handler feeds
it. TorchServe's ``--model-file`` loading (``export.mode: eager``) imports this file, needs
exactly one class in it and builds it with no arguments: keep it that way.
"""

import torch
from torch import nn

POOL = 28  # 224 / 28 = 8: one cell per original digit pixel, roughly


class DigitsImageCNN(nn.Module):
    """Input: ImageNet-normalised RGB float32 [N, 3, 224, 224]. Output: logits [N, 10]."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(POOL)  # fixed: [N, 3, 224, 224] -> [N, 3, 8, 8]
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.pool(x))


def build_model() -> nn.Module:
    """A fresh, untrained DigitsImageCNN: normalised RGB [N, 3, 224, 224] in, logits [N, 10] out."""
    return DigitsImageCNN()
