"""The Frechet distance between Gaussian feature statistics, and the network-free pixel space."""

from __future__ import annotations

import numpy as np
import torch


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
