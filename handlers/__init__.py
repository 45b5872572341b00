"""TorchServe handlers that package-validate ships inside each .mar (installed beside ``pipeline``)."""
