"""guppy: a tiny fish language model whose training you can watch from the inside."""

__version__ = "0.1.0"
