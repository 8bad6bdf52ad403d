"""The figures and feature cards, one module per analysis family (no torch here).

``style`` holds what every figure shares; ``registry`` maps each ``plot_<name>`` rule to its
reader and its drawing.
"""
