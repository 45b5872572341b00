"""Binary example model: an MLP on the 30 raw breast-cancer features (class 1 = malignant)."""

import torch
from torch import nn


class BreastCancerMLP(nn.Module):
    """Input: raw features float32 [N, 30]; standardisation is inside. Output: logits [N, 2]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        # Training-set statistics, set by train.py and saved in the state_dict.
        self.register_buffer("mean", torch.zeros(30))
        self.register_buffer("std", torch.ones(30))
        self.net = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def build_model() -> nn.Module:
    """A fresh, untrained BreastCancerMLP: raw features float32 [N, 30] in, logits [N, 2] out (1 = malignant)."""
    return BreastCancerMLP()
