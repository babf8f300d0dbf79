"""Ferry: lossless IoT edge stack. This package holds the `ferry` CLI and what all parts share."""

__version__ = "0.1.0"
