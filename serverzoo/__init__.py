"""serverzoo: compare and study concurrent server models in Python."""

__version__ = "0.1.0"
