"""Squeezed Diffusion Models: diffusion with noise shaped along the data's principal directions.

Layout (each concept has one home; data flows down this list):

- ``core/``: the maths, importing nothing else from the package: bases (``basis.py``), the
  process (``process.py``: schedule, squeeze, noising, targets) and the samplers
  (``samplers.py``), each registered by name (``registry.py``).
- ``data.py`` (datasets), ``models.py`` (UNet presets).
- ``training/``: the config (``config.py``), the training loop (``trainer.py``) and atomic,
  verified checkpoints (``checkpoint.py``).
- ``run.py``: the run folder, and loading its config, basis, process and UNet for everyone.
- ``evaluation/``: sampling runs (``generate.py``), metrics (``metrics/``), sweeps
  (``sweep.py``) and reports (``report/``).
- ``pipelines/``: diffusers schedulers and the pipeline.
- ``cli.py`` (``sqdm``) and ``demo.py`` (``sqdm demo``).
"""

from importlib.metadata import PackageNotFoundError, version

from .core import *  # noqa: F403  (the public API is the maths' API)
from .core import __all__ as _core_api

try:
    __version__ = version("squeezed-diffusion")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = [*_core_api, "__version__"]
