"""Default example model: a small CNN for scikit-learn's 8x8 digits."""

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Input: raw pixels 0..16 as float32 [N, 1, 8, 8]. Output: logits [N, 10]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / 16.0  # raw pixels 0..16 -> [0, 1]
        return self.head(self.features(x))


def build_model() -> nn.Module:
    """A fresh, untrained DigitsCNN: raw pixels 0..16 float32 [N, 1, 8, 8] in, logits [N, 10] out."""
    return DigitsCNN()
