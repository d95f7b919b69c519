"""Training: the config (``config.py``), the loop (``trainer.py``) and its parts (``bases.py``,
``batches.py``, ``state.py``, ``step.py``, ``monitor.py``), atomic, verified checkpoints
(``checkpoint.py``) and the run folder all of it writes (``run.py``), which evaluation, the
pipeline and the CLI read.

Nothing is imported here, so that importing ``training.run`` (configs and checkpoints) does not
pull in the trainer (accelerate, trackers).
"""
