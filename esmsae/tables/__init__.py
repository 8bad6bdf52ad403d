"""The tables made from the analyses' outputs, one module per analysis family (no torch here)."""
