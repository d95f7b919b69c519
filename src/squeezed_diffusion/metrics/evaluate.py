"""Scoring generated images against reference images with the metrics of ``table.py``.

Reference features are cached by torch-fidelity under ``cache_dir()/fidelity``, keyed by the
reference images' content hash and the weights file's hash.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from ..core.fileio import sha256
from ..core.values import check_count, is_integer
from ..data import ARRAY_SUFFIXES, ImageDataset, cache_dir, load_dataset
from .effnet import register_effnet
from .table import (
    DEFAULT_FEATURE_BATCH,
    METRICS,
    OFFLINE_METRICS,
    Metric,
    check_scoring,
    result_keys,
)
from .weights import EXTRACTORS, FeatureWeightsError, fetch_weights


class _Uint8Images(torch.utils.data.Dataset):
    """uint8 ``[N, C, H, W]`` served as torch-fidelity expects: 3-channel uint8 tensors."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        x = self.images[index]
        return x.expand(3, -1, -1) if x.shape[0] == 1 else x


def _as_images(images: torch.Tensor | ImageDataset, what: str) -> torch.Tensor:
    images = images.images if isinstance(images, ImageDataset) else torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"{what} must be uint8 [N, C, H, W] with C = 1 or 3, got {images.dtype} {tuple(images.shape)}"
        )
    if len(images) < 2:
        raise ValueError(f"{what} needs at least 2 images, got {len(images)}")
    return images


def check_reference(
    reference: torch.Tensor | ImageDataset,
    num_reference: int | None,
    shape: Sequence[int] | None = None,
) -> None:
    """What :func:`evaluate` would refuse about a reference, checked before samples are drawn:
    a subset larger than the reference, or images of another shape than the samples'."""
    if num_reference is not None and not is_integer(num_reference):
        raise ValueError(f"num_reference must be an integer or None, got {num_reference!r}")
    if num_reference is not None and num_reference < 2:  # a covariance needs two images
        raise ValueError(f"num_reference must be at least 2, got {num_reference}")
    if num_reference is not None and num_reference > len(reference):
        raise ValueError(
            f"a reference subset of {num_reference} images was asked for, but the reference "
            f"has {len(reference)}: ask for at most {len(reference)}"
        )
    have = tuple(reference.shape[1:] if isinstance(reference, torch.Tensor) else reference.shape)
    if shape is not None and tuple(shape) != have:
        fix = (
            "load the reference at the samples' resolution (--resolution)"
            if shape[0] == have[0]
            else f"score them against a reference of {shape[0]}-channel images"
        )
        raise ValueError(f"samples are {tuple(shape)} but the reference is {have}; {fix}")


def reference_subset(images: torch.Tensor, num: int | None, seed: int = 0) -> torch.Tensor:
    """``num`` images drawn without replacement by a seeded permutation (not the first
    ``num``: image folders sort by class), in their original order; all when ``num`` is None."""
    check_reference(images, num)
    if num is None or num == len(images):
        return images
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:num]
    return images[pick.sort().values]


def _fidelity_groups(metrics: Sequence[str], prc_extractor: str | None) -> dict[str, list[str]]:
    """torch-fidelity metrics per feature extractor (one torch-fidelity call each)."""
    groups: dict[str, list[str]] = {}
    for name in metrics:
        metric = METRICS.get(name)
        if metric.flag is not None:
            groups.setdefault(metric.feature_extractor(prc_extractor), []).append(name)
    return groups


def evaluate(
    samples: torch.Tensor | ImageDataset,
    reference: torch.Tensor | ImageDataset,
    metrics: Sequence[str] = OFFLINE_METRICS,
    *,
    num_reference: int | None = None,
    feature_weights: Mapping[str, str | Path] | None = None,
    prc_extractor: str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    verbose: bool = False,
) -> dict[str, Any]:
    """Score generated uint8 images against reference images.

    Returns the float metrics under their result keys (``table.result_keys()`` order), plus
    ``feature_extractor`` (result key -> extractor, layer and weights file), ``num_samples``
    and ``num_reference``. ``feature_weights`` maps ``inception`` / ``vgg16`` / ``effnet`` to
    weights files; ``num_reference`` evaluates against a random subset of the reference drawn
    with seed 0 (the same subset whatever ``seed``, so that evaluations of one run compare);
    ``prc_extractor`` (prc only) defaults to ``DEFAULT_PRC_EXTRACTOR``, ``batch_size`` (the
    feature extractors') to ``DEFAULT_FEATURE_BATCH``; ``seed`` seeds torch-fidelity's own
    draws (KID's subsets, the Inception Score's splits).
    """
    metrics = check_scoring(metrics, prc_extractor, feature_weights, batch_size)
    check_count(seed, "seed", 0)
    if not isinstance(verbose, bool):  # "no" would log
        raise ValueError(f"verbose must be True or False, got {verbose!r}")
    samples = _as_images(samples, "samples")
    reference = _as_images(reference, "reference")
    check_reference(reference, num_reference, samples.shape[1:])
    reference = reference_subset(reference, num_reference)
    groups = _fidelity_groups(metrics, prc_extractor)
    weights = fetch_weights(list(groups), feature_weights)
    reference_id = ImageDataset(reference, "reference").fingerprint
    results: dict[str, float] = {}
    spaces: dict[str, str] = {}
    for extractor, names in groups.items():
        raw = _torch_fidelity(
            extractor, [METRICS.get(n) for n in names], samples, reference, weights[extractor],
            cache_name=f"ref-{reference_id}-w{sha256(weights[extractor])[:12]}",
            batch_size=batch_size or DEFAULT_FEATURE_BATCH, seed=seed, verbose=verbose,
        )  # fmt: skip
        info = EXTRACTORS[extractor]
        for metric in map(METRICS.get, names):
            for key, ours in metric.outputs.items():
                results[ours] = float(raw[key])
                layer = metric.layer or info.layer
                spaces[ours] = f"{info.fidelity_name}:{layer} ({weights[extractor].name})"
    for metric in (METRICS.get(m) for m in metrics):
        if metric.compute is not None:
            for key, value in metric.compute(samples, reference).items():
                results[key], spaces[key] = value, metric.space
    ordered = {k: results[k] for k in result_keys() if k in results}
    return {
        **ordered,
        "feature_extractor": {k: spaces[k] for k in ordered},
        "num_samples": len(samples),
        "num_reference": len(reference),
    }


# How torch-fidelity's verbose summary names its outputs ("LABEL: value" lines on stderr):
# "Frechet Inception Distance" whatever the features, so they are renamed to our result keys.
_FIDELITY_LABELS = {
    "frechet_inception_distance": "Frechet Inception Distance",
    "kernel_inception_distance_mean": "Kernel Inception Distance",
    "inception_score_mean": "Inception Score",
    "precision": "Precision",
    "recall": "Recall",
}


class _Relabelled:
    """``stream`` with each write that starts with a torch-fidelity label renamed (``names``:
    label -> result key); everything else, progress bars included, passes unchanged."""

    def __init__(self, stream: TextIO, names: Mapping[str, str]) -> None:
        self.stream, self.names = stream, names

    def write(self, text: str) -> int:
        for label, ours in self.names.items():
            if text.startswith(f"{label}: "):
                text = f"{ours}{text[len(label) :]}"
                break
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, encoding, ... of the stream
        return getattr(self.stream, name)


def _torch_fidelity(
    extractor: str,
    metrics: list[Metric],
    samples: torch.Tensor,
    reference: torch.Tensor,
    weights: Path,
    *,
    cache_name: str,
    batch_size: int,
    seed: int,
    verbose: bool,
) -> dict[str, float]:
    """torch-fidelity's ``metrics`` in the ``extractor``'s features, its verbose summary named
    by our result keys."""
    import torch_fidelity

    if extractor == "effnet":
        register_effnet()
    name = EXTRACTORS[extractor].fidelity_name
    flags = [metric.flag for metric in metrics]
    labels = {
        _FIDELITY_LABELS[raw]: ours
        for metric in metrics
        for raw, ours in metric.outputs.items()
        if raw in _FIDELITY_LABELS
    }
    if "prc" in flags:  # printed beside precision and recall, which we keep; say whose it is
        labels["F-score"] = f"F-score ({extractor} features)"
    try:
        with contextlib.redirect_stderr(_Relabelled(sys.stderr, labels)):
            return torch_fidelity.calculate_metrics(
                input1=_Uint8Images(samples),  # torch-fidelity >= 0.4: input1 is the generated set
                input2=_Uint8Images(reference),
                input2_cache_name=cache_name,
                cache_root=str(cache_dir() / "fidelity"),
                feature_extractor=name,
                feature_extractor_weights_path=str(weights),
                cuda=torch.cuda.is_available(),
                batch_size=batch_size,
                rng_seed=seed,
                verbose=verbose,
                save_cpu_ram=True,  # no DataLoader workers for in-memory tensors; blockwise distances
                isc_splits=min(10, len(samples)),
                kid_subset_size=min(1000, len(samples), len(reference)),
                **dict.fromkeys(flags, True),
            )
    except RuntimeError as err:
        if "state_dict" not in str(err):
            raise
        raise FeatureWeightsError(
            f"{weights} does not fit the {name} network "
            f"({str(err).splitlines()[0]}); replace it with its original weights file"
        ) from None


def load_samples(path: str | Path) -> torch.Tensor:
    """Samples written by ``sqdm sample``: a folder of images or an .npz/.npy array."""
    path = Path(path)
    kind = "array" if path.suffix.lower() in ARRAY_SUFFIXES else "imagefolder"
    return load_dataset(kind, path).images
