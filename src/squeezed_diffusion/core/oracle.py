"""The Gaussian oracle: the optimal predictor when every pixel's colour is Gaussian.

If x_0 ~ N(m, Sigma_0) per pixel (C x C, pixels independent), then
x_t ~ N(a m, a^2 Sigma_0 + sigma^2 S_t^2) and the optimal predictor of the squeezed noise is
``E[S_t eps | x_t] = sigma S_t^2 (a^2 Sigma_0 + sigma^2 S_t^2)^-1 (x_t - a m)`` (DESIGN.md part
2); every other prediction type follows linearly. Plugged into a sampler in place of a network,
an exact sampler must return samples with mean m and covariance Sigma_0, up to Monte-Carlo and
discretisation error: the measure of how exact a sampler is (README, benchmarks, demo). The test
suite checks the samplers against its own, independently built, dense oracle.
"""

from __future__ import annotations

import torch

from .basis import ChannelBasis
from .process import SqueezedDiffusion

Tensor = torch.Tensor
# A CIFAR-like colour covariance (channels strongly correlated) and mean, in [-1, 1] units.
CIFAR_LIKE_COV = torch.tensor(
    [[0.250, 0.228, 0.196], [0.228, 0.240, 0.214], [0.196, 0.214, 0.262]], dtype=torch.float64
)
CIFAR_LIKE_MEAN = torch.tensor([0.05, -0.02, -0.10], dtype=torch.float64)


def top_direction(cov: Tensor) -> Tensor:
    """The covariance's top eigenvector, sign fixed (largest entry positive)."""
    v = torch.linalg.eigh(cov)[1][:, -1]
    return v * torch.sign(v[v.abs().argmax()])


class GaussianOracle:
    """``model(x_t, t)`` returning the optimal prediction for ``proc.prediction_type``."""

    def __init__(self, proc: SqueezedDiffusion, mean: Tensor, cov: Tensor) -> None:
        if not isinstance(proc.basis, ChannelBasis):
            raise ValueError("the Gaussian oracle is per pixel: it needs a channel basis")
        self.proc, self.mean, self.cov = proc, mean.double().cpu(), cov.double().cpu()
        c = proc.basis.channels
        if self.mean.shape != (c,) or self.cov.shape != (c, c):
            raise ValueError(
                f"the basis has {c} channels: give a mean of {c} and a {c} x {c} covariance, got "
                f"{tuple(self.mean.shape)} and {tuple(self.cov.shape)}"
            )
        # a covariance (to float32 rounding: an empirical one of rank-deficient data may have
        # an eigenvalue of -1e-9), and not zero, against which errors are relative
        eig = torch.linalg.eigvalsh(self.cov)
        if not torch.allclose(self.cov, self.cov.T) or not eig[-1] > 0 or eig[0] < -1e-6 * eig[-1]:
            raise ValueError("the covariance must be symmetric positive semi-definite and not zero")
        v = proc.basis.direction.double().cpu()
        self._p = torch.outer(v, v)
        self._gains: dict[int, tuple[Tensor, Tensor]] = {}  # per t, reused across samplers

    def squeeze(self, t: int) -> Tensor:
        """``S_t`` as a C x C matrix."""
        group, rest = float(self.proc.c[t, 0]), float(self.proc.c_rest[t])
        return rest * torch.eye(len(self._p), dtype=torch.float64) + (group - rest) * self._p

    def _gain(self, t: int) -> tuple[Tensor, Tensor]:
        """(gain of the squeezed noise, S_t^-1) at t."""
        if t not in self._gains:
            abar = float(self.proc.alphas_cumprod[t])
            a, sig = abar**0.5, (1 - abar) ** 0.5
            s = self.squeeze(t)
            gain = sig * s @ s @ torch.linalg.inv(a**2 * self.cov + sig**2 * s @ s)
            self._gains[t] = gain, torch.linalg.inv(s)
        return self._gains[t]

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t).reshape(-1)
        if (t != t[0]).any():  # the gain is one t's: a mixed batch would be misread
            raise ValueError(f"the oracle takes one timestep per call, got {t.unique().tolist()}")
        ti = int(t[0])
        abar = float(self.proc.alphas_cumprod[ti])
        a, sig = abar**0.5, (1 - abar) ** 0.5
        gain, s_inv = self._gain(ti)
        centred = x.double() - a * self.mean.view(1, -1, 1, 1).to(x.device)
        noise = torch.einsum("ij,bjhw->bihw", gain.to(x.device), centred)  # E[S eps | x_t]
        x0 = (x.double() - sig * noise) / a
        out = {
            "epsilon": lambda: noise,
            "unit_epsilon": lambda: torch.einsum("ij,bjhw->bihw", s_inv.to(x.device), noise),
            "sample": lambda: x0,
            "v_prediction": lambda: a * noise - sig * x0,
        }[self.proc.prediction_type]()
        return out.to(x.dtype)


def oracle_errors(
    proc: SqueezedDiffusion,
    sampler: str,
    steps: int,
    *,
    mean: Tensor = CIFAR_LIKE_MEAN,
    cov: Tensor = CIFAR_LIKE_COV,
    pixels: int = 16384,
    seed: int = 1,
    oracle: GaussianOracle | None = None,
    **options,
) -> tuple[float, float]:
    """(relative Frobenius error of the sampled covariance, largest error of the mean) over
    ``pixels`` sampled pixel vectors; x_0 is not clipped (Gaussian data are unbounded).
    Pass the same ``oracle`` to grade several samplers of one process (it caches per t)."""
    side = 32
    shape = (max(1, pixels // side**2), len(mean), side, side)
    x = proc.sample(
        oracle or GaussianOracle(proc, mean, cov), shape, steps, sampler, clip=False, progress=False,
        generator=torch.Generator().manual_seed(seed), **options,
    )  # fmt: skip
    vecs = x.permute(0, 2, 3, 1).reshape(-1, len(mean)).double()
    err = torch.linalg.norm(torch.cov(vecs.T) - cov) / torch.linalg.norm(cov)
    return float(err), float((vecs.mean(0) - mean).abs().max())
