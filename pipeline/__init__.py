"""package-validate: prove a PyTorch model behaves the same after packaging for TorchServe."""

__version__ = "0.1.0"
