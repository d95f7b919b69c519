"""Sample-quality metrics: one table of metrics (``table.py``), the Frechet maths
(``frechet.py``), the offline EfficientNet-Lite0 feature space (``effnet.py``), feature
weights (``weights.py``) and scoring (``evaluate.py``).
"""

from .evaluate import check_reference, evaluate, load_samples, reference_subset
from .frechet import fd_pixels, frechet_distance
from .table import (
    DEFAULT_FEATURE_BATCH,
    DEFAULT_PRC_EXTRACTOR,
    METRICS,
    OFFLINE_METRICS,
    PRC_EXTRACTORS,
    Metric,
    check_metrics,
    check_scoring,
    extractors_for,
    result_keys,
)
from .weights import (
    EXTRACTORS,
    FeatureWeightsError,
    fetch_weights,
    parse_feature_weights,
    resolve_weights,
)

__all__ = [
    "DEFAULT_FEATURE_BATCH",
    "DEFAULT_PRC_EXTRACTOR",
    "EXTRACTORS",
    "METRICS",
    "OFFLINE_METRICS",
    "PRC_EXTRACTORS",
    "FeatureWeightsError",
    "Metric",
    "check_metrics",
    "check_reference",
    "check_scoring",
    "evaluate",
    "extractors_for",
    "fd_pixels",
    "fetch_weights",
    "frechet_distance",
    "load_samples",
    "parse_feature_weights",
    "reference_subset",
    "resolve_weights",
    "result_keys",
]
