"""Every metric, declared once: its result keys, its feature space, how it is computed.

``sqdm evaluate --metrics``, sweeps, the report (column order, which direction is better,
precision-recall plots, the intro text) and evaluation during training all read
:data:`METRICS`; a new metric is one :class:`Metric` entry here.

The torch-fidelity metrics are computed by torch-fidelity (>= 0.4, one call per feature
extractor, the generated images as ``input1``); the others by their ``compute`` function.
Every number is named for the feature space it was computed in: FID means InceptionV3
pool3, and a Frechet distance in another space has another name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ..core.registry import Registry
from ..core.values import check_count
from .frechet import fd_pixels


@dataclass(frozen=True)
class Metric:
    name: str
    summary: str
    # result key -> True when higher is better
    keys: Mapping[str, bool]
    # torch-fidelity: the feature extractor ("prc" follows the prc_extractor option), the
    # metric flag and its output keys -> ours
    extractor: str | None = None
    flag: str | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    layer: str | None = None  # a feature layer other than the extractor's default
    # or computed here: (generated, reference) uint8 images -> {key: value}
    compute: Callable[[torch.Tensor, torch.Tensor], dict[str, float]] | None = None
    space: str = ""  # how the result's feature space is described when not torch-fidelity's
    pr_pair: bool = False  # keys are (precision, recall): plotted against each other

    def __post_init__(self) -> None:
        """A metric is computed one way and reports exactly its keys: evaluate() reads the
        torch-fidelity outputs by ``outputs`` and the report reads results by ``keys``."""
        if (self.flag is None) == (self.compute is None):
            raise ValueError(f"metric {self.name!r}: give either flag (torch-fidelity) or compute")
        if self.flag is not None and sorted(self.outputs.values()) != sorted(self.keys):
            raise ValueError(
                f"metric {self.name!r}: outputs name {sorted(self.outputs.values())} but keys are "
                f"{sorted(self.keys)}; map each torch-fidelity output to one of its keys"
            )

    def feature_extractor(self, prc_extractor: str | None) -> str | None:
        """Its extractor; prc's is ``prc_extractor`` (None: ``DEFAULT_PRC_EXTRACTOR``)."""
        if self.extractor != "prc":
            return self.extractor
        return DEFAULT_PRC_EXTRACTOR if prc_extractor is None else prc_extractor


class _MetricRegistry(Registry[Metric]):
    def register(self, name: str, entry: Metric, aliases: tuple[str, ...] = ()) -> Metric:
        """As any registry, and refusing result keys another metric has: results are one
        mapping by key, so a clash would overwrite one metric's number with the other's."""
        others = [m for n, m in self.items() if n != name]  # a taken name: the base says so
        taken = sorted(set(entry.keys) & {key for m in others for key in m.keys})
        if taken:
            raise ValueError(
                f"metric {name!r}: result key(s) {', '.join(taken)} belong to another metric; "
                "name them otherwise"
            )
        return super().register(name, entry, aliases)


METRICS: Registry[Metric] = _MetricRegistry("metric")
OFFLINE_METRICS = ("fd_effnet", "prc_effnet")
PRC_EXTRACTORS = ("vgg16", "inception")  # the first is the default (torch-fidelity's)
DEFAULT_PRC_EXTRACTOR = PRC_EXTRACTORS[0]
DEFAULT_FEATURE_BATCH = 64  # images per feature-extraction batch, when none is given

for _metric in (
    Metric(
        "fid", "FID: Frechet distance in InceptionV3 pool3 features (2048-d, TF-port weights)",
        {"fid": False}, "inception", "fid", {"frechet_inception_distance": "fid"},
    ),
    Metric(
        "isc", "Inception Score from InceptionV3 logits (10 splits)",
        {"isc_mean": True, "isc_std": False}, "inception", "isc",
        {"inception_score_mean": "isc_mean", "inception_score_std": "isc_std"},
        layer="logits_unbiased",
    ),
    Metric(
        "kid", "KID in InceptionV3 pool3 features", {"kid_mean": False, "kid_std": False},
        "inception", "kid",
        {"kernel_inception_distance_mean": "kid_mean", "kernel_inception_distance_std": "kid_std"},
    ),
    Metric(
        "prc", "precision and recall (Kynkaanniemi et al., k = 3) in VGG16 fc2 or InceptionV3 pool3",
        {"precision": True, "recall": True}, "prc", "prc",
        {"precision": "precision", "recall": "recall"}, pr_pair=True,
    ),
    Metric(
        "fd_effnet", "Frechet distance in EfficientNet-Lite0 ImageNet features (offline; not FID)",
        {"fd_effnet": False}, "effnet", "fid", {"frechet_inception_distance": "fd_effnet"},
    ),
    Metric(
        "prc_effnet", "precision and recall (k = 3) in EfficientNet-Lite0 features (offline)",
        {"precision_effnet": True, "recall_effnet": True}, "effnet", "prc",
        {"precision": "precision_effnet", "recall": "recall_effnet"}, pr_pair=True,
    ),
    Metric(
        "fd_pixels8", "Frechet distance of 8x8 average-pooled pixels (no network; not FID)",
        {"fd_pixels8": False}, compute=lambda gen, ref: {"fd_pixels8": fd_pixels(gen, ref)},
        space="pixels:8x8 average-pooled",
    ),
):  # fmt: skip
    METRICS.register(_metric.name, _metric)


def result_keys() -> list[str]:
    """Every result key, in the registry's (and the report's) order."""
    return [key for _, metric in METRICS.items() for key in metric.keys]


def higher_is_better(key: str) -> bool | None:
    return next((m.keys[key] for _, m in METRICS.items() if key in m.keys), None)


def pr_pairs() -> list[tuple[str, str]]:
    """(precision key, recall key) of every precision/recall metric."""
    return [tuple(m.keys) for _, m in METRICS.items() if m.pr_pair]


def check_metrics(
    metrics: list[str] | tuple[str, ...], prc_extractor: str | None = None
) -> tuple[str, ...]:
    """Validate metric names (and the prc extractor; None: the default) before any expensive
    work."""
    if isinstance(metrics, str):  # would be read letter by letter
        raise ValueError(f"metrics must be a list of names; pass [{metrics!r}]")
    metrics = tuple(dict.fromkeys(metrics))
    if not metrics:
        raise ValueError(f"no metric given; choose from: {', '.join(METRICS)}")
    for name in metrics:
        METRICS.canonical(name)
    if prc_extractor is not None and prc_extractor not in PRC_EXTRACTORS:
        raise ValueError(
            f"prc_extractor must be one of {', '.join(PRC_EXTRACTORS)}, got {prc_extractor!r}"
        )
    return metrics


def extractors_for(
    metrics: list[str] | tuple[str, ...], prc_extractor: str | None = None
) -> list[str]:
    """The feature extractors (``weights.EXTRACTORS`` names) that ``metrics`` need."""
    names = [
        METRICS.get(m).feature_extractor(prc_extractor)
        for m in check_metrics(metrics, prc_extractor)
    ]
    return list(dict.fromkeys(n for n in names if n is not None))


def check_scoring(
    metrics: list[str] | tuple[str, ...],
    prc_extractor: str | None = None,
    feature_weights: Mapping[str, object] | None = None,
    batch_size: int | None = None,
    *,
    spell: Callable[[str], str] = str,
) -> tuple[str, ...]:
    """Everything scoring refuses about its options, checked before any sample is drawn (a
    run's sampling can take hours). None means not given; ``spell`` names an option the way
    the caller's user wrote it (``--batch-size``, ``eval.batch_size``). Returns the metrics,
    each once."""
    metrics = check_metrics(metrics, prc_extractor)
    if prc_extractor is not None and "prc" not in metrics:
        raise ValueError(
            f"{spell('prc_extractor')} applies to the prc metric only; add prc or drop it"
        )
    used = extractors_for(metrics, prc_extractor)
    unused = sorted(set(feature_weights or {}) - set(used))
    if unused:
        raise ValueError(
            f"{spell('feature_weights')} for {', '.join(unused)}, which no metric uses; drop it"
        )
    if batch_size is not None:
        check_count(batch_size, spell("batch_size"))
        if not used:
            raise ValueError(
                f"{spell('batch_size')} is the feature extractors' batch, and "
                f"{', '.join(metrics)} extract no features: drop it"
            )
    return metrics
