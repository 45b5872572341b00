"""Regression example model: an MLP on scikit-learn's 10 diabetes features -> disease progression a year on.

The standardisation of the inputs and the de-normalisation of the output (the target's training
mean and standard deviation) are buffers inside the model, so the model answers in the target's
own units (about 25..346) and the handler only reads and writes JSON.
"""

import torch
from torch import nn

NUM_FEATURES = 10


class DiabetesMLP(nn.Module):
    """Input: raw features float32 [N, 10] in features.json order. Output: progression float32 [N, 1]."""

    mean: torch.Tensor
    std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        # Training-set statistics, set by train.py and saved in the state_dict.
        self.register_buffer("mean", torch.zeros(NUM_FEATURES))
        self.register_buffer("std", torch.ones(NUM_FEATURES))
        self.register_buffer("y_mean", torch.zeros(1))
        self.register_buffer("y_std", torch.ones(1))
        self.net = nn.Sequential(nn.Linear(NUM_FEATURES, 16), nn.ReLU(), nn.Linear(16, 1))

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output before de-normalisation (what training fits)."""
        return self.net((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalised(x) * self.y_std + self.y_mean


def build_model() -> nn.Module:
    """A fresh, untrained DiabetesMLP: raw features [N, 10] in, progression [N, 1] out."""
    return DiabetesMLP()
