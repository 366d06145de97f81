"""Figures of the reproduction notebooks, one module per stage (the core draws the
evaluation and identification figures: `evaluate/figures.py`, `identify/figures.py`)."""
