"""Shared helpers: independent dense constructions of the paper's operators."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

# A CIFAR-like colour covariance (channels strongly correlated) and mean, in [-1, 1] units.
SIGMA0 = np.array([[0.250, 0.228, 0.196], [0.228, 0.240, 0.214], [0.196, 0.214, 0.262]])
MEAN0 = np.array([0.05, -0.02, -0.10])


def paper_strength_t(strength: float, profile: str, num_steps: int = 1000) -> np.ndarray:
    """s_t from DESIGN.md, built from scratch with numpy (linear betas 1e-4 .. 0.02)."""
    betas = np.linspace(1e-4, 0.02, num_steps, dtype=np.float32).astype(np.float64)
    if profile == "beta":
        return strength * betas / betas.max()
    if profile == "constant":
        return np.full(num_steps, strength)
    return strength * np.arange(1, num_steps + 1) / num_steps


def dense_squeeze(v: np.ndarray, s_t: float, variant: str) -> np.ndarray:
    """S_t as a dense C x C matrix: exp(-s) P + f (I - P), f = 1 (SDM) or exp(s / (C - 1)) (HDM)."""
    v = v / np.linalg.norm(v)
    p = np.outer(v, v)
    rest = 1.0 if variant == "sdm" else np.exp(s_t / (len(v) - 1))
    return np.exp(-s_t) * p + rest * (np.eye(len(v)) - p)


def top_direction(cov: np.ndarray) -> np.ndarray:
    _, evecs = np.linalg.eigh(cov)
    v = evecs[:, -1]
    return v * np.sign(v[np.argmax(np.abs(v))])


def dense_projectors(basis, shape: tuple[int, int, int]) -> list[torch.Tensor]:
    """The D x D orthogonal projector onto each group of ``basis``, built from each basis'
    definition (not from its ``scale`` code): channel direction per pixel, PCA components,
    DCT bands of a 2-D DCT-II."""
    from squeezed_diffusion import ChannelBasis, PixelPCABasis
    from squeezed_diffusion.core.basis import dct_matrix

    c, h, w = shape
    if isinstance(basis, ChannelBasis):
        v = basis.direction.double()
        return [torch.kron(torch.outer(v, v), torch.eye(h * w, dtype=torch.float64))]
    if isinstance(basis, PixelPCABasis):
        return [torch.outer(u, u) for u in basis.components.double()]
    m = torch.kron(dct_matrix(h), dct_matrix(w))  # 2-D DCT on a flattened H x W plane
    u, v = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    radius = torch.sqrt((u / h) ** 2 + (v / w) ** 2).flatten()
    edges = (0.0, *basis.cutoffs)
    planes = [
        m.T @ torch.diag(((radius >= lo) & (radius < hi)).double()) @ m
        for lo, hi in itertools.pairwise(edges)
    ]
    return [torch.kron(torch.eye(c, dtype=torch.float64), p) for p in planes]


def dense_operator(basis, group, rest: float, shape: tuple[int, int, int]) -> torch.Tensor:
    """``S = rest I + sum_k (group_k - rest) P_k`` as a dense D x D matrix."""
    projectors = dense_projectors(basis, shape)
    op = rest * torch.eye(projectors[0].shape[0], dtype=torch.float64)
    for k, p in enumerate(projectors):
        op = op + (float(group[k]) - rest) * p
    return op


CIFAR_TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-train.tar.gz"


@pytest.fixture
def cifar_tar() -> Path:
    """The shared CIFAR-10 JPEG tar (decoded once per session into the shared cache)."""
    if not CIFAR_TAR.is_file():
        pytest.skip(f"{CIFAR_TAR} not present (the shared CIFAR-10 JPEG tar)")
    return CIFAR_TAR


@pytest.fixture
def shared_cache(tmp_path_factory) -> Path:
    """The session's dataset/basis cache: tests that decode the same data share it."""
    return tmp_path_factory.getbasetemp() / "sqdm-cache"


@pytest.fixture(autouse=True)
def _seed_and_cache(shared_cache, monkeypatch) -> None:
    """Seed torch and keep dataset/basis caches out of the user's home."""
    torch.manual_seed(0)
    monkeypatch.setenv("SQDM_CACHE", str(shared_cache))
