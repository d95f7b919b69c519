"""Evaluation of trained runs: sampling (``generate.py``), grids of runs (``sweep.py``) and
reports (``report/``); the metrics they score with live in ``metrics/``, which training's
evaluation during training uses too."""
