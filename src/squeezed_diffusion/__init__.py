"""Squeezed Diffusion Models: diffusion with noise shaped along the data's principal directions.

Layout (each concept has one home; a folder imports only from folders above it):

- ``core/``: the maths, importing nothing else from the package: bases (``basis.py``), the
  process (``process.py``: schedule, squeeze, noising, targets) and the samplers
  (``samplers.py``), each registered by name (``registry.py``).
- ``data.py`` (datasets), ``models.py`` (UNet presets).
- ``metrics/``: one table of sample-quality metrics and how each is computed.
- ``training/``: the config (``config.py``), the training loop (``trainer.py``), atomic,
  verified checkpoints (``checkpoint.py``) and the run folder they write (``run.py``: its
  layout, and loading its config, basis, process and UNet for everyone).
- ``evaluation/``: sampling runs (``generate.py``), sweeps (``sweep.py``) and reports
  (``report/``).
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
