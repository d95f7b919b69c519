"""Fitting a registered basis on a dataset, and the per-dataset basis cache of training runs.

``sqdm fit-basis`` and the trainer fit through :func:`fit_dataset_basis`, so a basis carries
the same metadata (dataset, content fingerprint, image shape) however it was made.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..core import Basis, fit_basis, load_basis
from ..core.basis import basis_options
from ..data import ImageDataset, cache_dir

BASIS_FIT_IMAGES = 50_000  # the paper fits on up to 50,000 training images


def fit_dataset_basis(
    dataset: ImageDataset,
    name: str,
    options: dict[str, Any] | None = None,
    max_images: int | None = BASIS_FIT_IMAGES,
    batch_size: int = 1000,
) -> Basis:
    """Fit basis ``name`` on ``dataset`` (in order, unflipped) and record where it came from."""
    basis = fit_basis(name, dataset.batches(batch_size), max_images, **(options or {}))
    basis.metadata.update(
        {
            "dataset": dataset.name,
            "fingerprint": dataset.fingerprint,
            "image_shape": list(dataset.shape),
        }
    )
    return basis


def cached_basis(dataset: ImageDataset, name: str, options: dict[str, Any]) -> Basis:
    """The basis of a training run: fitted once per dataset and option set, then cached."""
    options = basis_options(name, options)
    tag = "".join(
        f"-{k}{'_'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in options.items()
    )
    path = cache_dir() / "bases" / f"{name}{tag}-{dataset.fingerprint[:16]}.safetensors"
    if path.is_file():
        try:
            return load_basis(path)
        except ValueError as err:  # a cache: a damaged entry is fitted again, not an error
            warnings.warn(f"{err.args[0].split(';')[0]}; fitting the basis again", stacklevel=2)
    basis = fit_dataset_basis(dataset, name, options)
    basis.save(path)
    return basis


def check_basis(basis: Basis, dataset: ImageDataset, source: Path) -> None:
    """Refuse to resume a run on other data than its basis was fitted on."""
    meta = basis.metadata
    if meta.get("fingerprint") != dataset.fingerprint or list(meta.get("image_shape", [])) != list(
        dataset.shape
    ):
        raise ValueError(
            f"basis {source} was fitted on {meta.get('dataset')} {meta.get('image_shape')} "
            f"(fingerprint {str(meta.get('fingerprint'))[:8]}), not on this dataset "
            f"{list(dataset.shape)} ({dataset.fingerprint[:8]}): the run's data changed; pass "
            "--data-dir with the data it trained on, or train anew in another --out"
        )
