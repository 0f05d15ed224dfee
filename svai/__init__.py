"""svai: simulate the outcome of facial plastic surgery with image-to-image models."""

__version__ = "0.1.0"
