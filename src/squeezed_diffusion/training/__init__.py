"""Training: the config (``config.py``), the loop (``trainer.py``) and its parts (``bases.py``,
``batches.py``, ``state.py``, ``step.py``), and atomic, verified checkpoints (``checkpoint.py``).

Nothing is imported here, so that ``run.py`` (which reads configs and checkpoints) and the
trainer (which writes run folders) import modules, never a half-initialised package.
"""
