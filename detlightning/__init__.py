"""detlightning: detectron2's model API and model-zoo compatibility on PyTorch Lightning + Hydra."""

__version__ = "0.1.0"
