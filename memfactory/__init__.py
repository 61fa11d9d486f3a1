"""MemFactory: a workbench for training and comparing memory agents."""

__version__ = "0.1.0"
