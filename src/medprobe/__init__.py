"""medprobe: which pretrained backbone, frozen or fine-tuned, classifies your medical images best."""

__version__ = "0.1.0"
