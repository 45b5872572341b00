"""Records example model: an MLP on the 30 named breast-cancer features (class 1 = malignant).

The same network as ``examples/breast_cancer/model.py``; here each row reaches TorchServe as
a JSON record and this example's own ``handler.py`` builds the tensor, in the order
``features.json`` lists.
"""

import torch
from torch import nn

NUM_FEATURES = 30


class BreastCancerRecordsMLP(nn.Module):
    """Input: raw features float32 [N, 30] in features.json order; standardisation is inside. Output: logits [N, 2]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        # Training-set statistics, set by train.py and saved in the state_dict.
        self.register_buffer("mean", torch.zeros(NUM_FEATURES))
        self.register_buffer("std", torch.ones(NUM_FEATURES))
        self.net = nn.Sequential(nn.Linear(NUM_FEATURES, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def build_model() -> nn.Module:
    """A fresh, untrained BreastCancerRecordsMLP: raw features [N, 30] in, logits [N, 2] out (1 = malignant)."""
    return BreastCancerRecordsMLP()
