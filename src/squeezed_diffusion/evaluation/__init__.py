"""Evaluation: sampling runs (``generate.py``), metrics (``metrics/``), grids of runs
(``sweep.py``) and reports (``report/``)."""
