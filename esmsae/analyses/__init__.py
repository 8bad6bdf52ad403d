"""What runs the model: scoring, SAE quality, and one module per analysis on the one-analysis API.

``api`` is the API, ``job`` the job that runs an analysis, ``arrays`` the analyses' npz files
(light: the table rules read them without torch).
"""
