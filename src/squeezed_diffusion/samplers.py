"""Samplers for the squeezed process: one step function per idea, one signature.

Every step function is ``step(proc, model_output, x, t, t_prev, *, generator,
eta, clip) -> StepOutput`` and moves a batch from training timestep ``t`` to
``t_prev`` (``-1`` means the data). Because the process is diagonal in the
basis, the exact samplers apply the isotropic formulas direction by direction,
with ``sigma_t,i = sqrt(1 - abar_t) c_i(t)`` (DESIGN.md part 2):

- :func:`ddpm_step`: ancestral sampling from the exact posterior
  ``q(x_prev | x_t, x_0)``;
- :func:`ddim_step`: DDIM per direction, ``eta`` interpolating from
  deterministic (0) to the exact posterior (1);
- :func:`ddpm_paper_step`: the paper's reference heuristic (map with
  ``S_t^-1``, ordinary DDPM step, map back with ``S_t``), exact only when
  ``S_t`` does not depend on t.

At strength 0 each reduces to diffusers' ``DDPMScheduler.step`` /
``DDIMScheduler.step`` (same noise draws from the same generator).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from .process import SqueezedDiffusion

Tensor = torch.Tensor
Callback = Callable[[int, int, Tensor, Tensor], None]


class StepOutput(NamedTuple):
    prev_sample: Tensor
    pred_original_sample: Tensor


class StepFunction(Protocol):
    def __call__(
        self,
        proc: SqueezedDiffusion,
        model_output: Tensor,
        x: Tensor,
        t: int,
        t_prev: int,
        *,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        clip: bool = False,
    ) -> StepOutput: ...


# -- shared pieces ------------------------------------------------------------------
def _posterior(
    abar_t: Tensor, abar_prev: Tensor, c_t: Tensor, c_prev: Tensor
) -> tuple[Tensor, ...]:
    """Per-direction ``(mean coef of x_t, mean coef of x0, variance)`` of q(x_prev | x_t, x0).

    With ``sigma_i = sqrt(1 - abar) c_i`` and ``r = c_prev^2 / c_t^2`` (DESIGN.md part 2):
    ``A = A_iso r``, ``B = B_iso + a_t A_iso (1 - r)``,
    ``var = var_iso c_prev^2 (1 + alpha (1 - abar_prev)(1 - r) / beta)``.
    Written so that at ``c = 1`` it performs diffusers' DDPM expressions operation for
    operation, and free of the cancellation in ``sigma_t^2 - alpha sigma_prev^2``.
    """
    beta_prod_t, beta_prod_prev = 1 - abar_t, 1 - abar_prev
    alpha = abar_t / abar_prev
    beta = 1 - alpha
    r = c_prev**2 / c_t**2
    a_iso = alpha**0.5 * beta_prod_prev / beta_prod_t
    mean_x = a_iso * r
    mean_x0 = abar_prev**0.5 * beta / beta_prod_t + abar_t**0.5 * a_iso * (1 - r)
    var = (
        beta_prod_prev
        / beta_prod_t
        * beta
        * (c_prev**2 * (1 + alpha * beta_prod_prev * (1 - r) / beta))
    )
    return mean_x, mean_x0, var


class _Levels(NamedTuple):
    """One step's scalars: float32 ``abar`` as diffusers holds them, and per-direction scales."""

    abar_t: Tensor  # 0-dim float32
    abar_prev: Tensor  # 0-dim float32 (1 at t_prev = -1)
    c_t: Tensor  # [K + 1] float64
    c_prev: Tensor  # [K + 1] float64


def _levels(proc: SqueezedDiffusion, t: int, t_prev: int) -> _Levels:
    abar = proc.alphas_cumprod.float()
    scales = torch.cat([proc.c, proc.c_rest[:, None]], dim=1)
    if t_prev >= 0:
        return _Levels(abar[t], abar[t_prev], scales[t], scales[t_prev])
    return _Levels(abar[t], torch.tensor(1.0), scales[t], torch.ones_like(scales[t]))


def _calibrated(fn: Callable[..., tuple[Tensor, ...]], lv: _Levels) -> list[Tensor]:
    """``fn`` per direction in float64, rescaled so that at c = 1 it equals diffusers' float32.

    Each coefficient is ``iso32 * exact64 / iso64``: the isotropic value exactly as
    diffusers computes it, times the exact per-direction ratio (1.0 at s = 0).
    """
    ones = torch.ones_like(lv.c_t)
    exact = fn(lv.abar_t.double(), lv.abar_prev.double(), lv.c_t, lv.c_prev)
    iso64 = fn(lv.abar_t.double(), lv.abar_prev.double(), ones, ones)
    iso32 = fn(lv.abar_t, lv.abar_prev, ones.float(), ones.float())
    return [
        torch.where(i64 != 0, i32.double() * (e / torch.where(i64 != 0, i64, 1.0)), e)
        for e, i64, i32 in zip(exact, iso64, iso32, strict=True)
    ]


def _diag(proc: SqueezedDiffusion, x: Tensor, coef: Tensor) -> Tensor:
    """Multiply ``x`` by ``coef[i]`` along direction group i (last entry: the rest)."""
    if bool((coef == coef[-1]).all()):
        return x * float(coef[-1])
    coef = coef.to(device=x.device, dtype=x.dtype)
    return proc.basis.scale(x, coef[None, :-1], coef[-1:])


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def predict_x0(proc: SqueezedDiffusion, model_output: Tensor, x: Tensor, t: int) -> Tensor:
    """``x0hat = (x_t - sqrt(1 - abar_t) S_t epshat) / a_t`` from the model's target."""
    abar_t = proc.alphas_cumprod.float()[t]
    shaped = model_output if proc.target == "squeezed" else proc.squeeze(model_output, t)
    return (x - float((1 - abar_t) ** 0.5) * shaped) / float(abar_t**0.5)


def _clip_x0(x0: Tensor, clip: bool) -> Tensor:
    return x0.clamp(-1.0, 1.0) if clip else x0


# -- the samplers -------------------------------------------------------------------
def ddpm_step(
    proc: SqueezedDiffusion,
    model_output: Tensor,
    x: Tensor,
    t: int,
    t_prev: int,
    *,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    clip: bool = False,
) -> StepOutput:
    """Exact ancestral step: per direction, the mean and variance of q(x_prev | x_t, x0hat)."""
    mean_x, mean_x0, var = _calibrated(_posterior, _levels(proc, t, t_prev))
    x0 = _clip_x0(predict_x0(proc, model_output, x, t), clip)
    prev = _diag(proc, x0, mean_x0) + _diag(proc, x, mean_x)
    if t > 0:
        prev = prev + _diag(proc, _noise(x, generator), var.clamp_min(1e-20).sqrt())
    return StepOutput(prev, x0)


def _ddim_coefs(
    abar_t: Tensor, abar_prev: Tensor, c_t: Tensor, c_prev: Tensor, eta: float, unit: bool
):
    """``(std, coefficient of the model output)`` for DDIM; diffusers' expressions at c = 1."""
    std = eta * _posterior(abar_t, abar_prev, c_t, c_prev)[2] ** 0.5
    direction = ((1 - abar_prev) * c_prev**2 - std**2).clamp_min(0) ** 0.5
    return std, (direction if unit else direction / c_t)


def ddim_step(
    proc: SqueezedDiffusion,
    model_output: Tensor,
    x: Tensor,
    t: int,
    t_prev: int,
    *,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    clip: bool = False,
) -> StepOutput:
    """Exact DDIM per direction: ``a_prev x0hat + sqrt(sig_prev^2 - std^2) epshat + std z``.

    ``epshat`` is the unit noise estimate (for the squeezed target, ``S_t^-1`` of
    the output, folded into the coefficient); ``std = eta * (posterior std)``.
    Like diffusers, a clipped x0hat leaves epshat alone, and noise is drawn at
    every step when ``eta > 0``.
    """
    lv = _levels(proc, t, t_prev)
    unit = proc.target == "unit"
    std, out_coef = _calibrated(lambda *a: _ddim_coefs(*a, eta=eta, unit=unit), lv)
    x0 = _clip_x0(predict_x0(proc, model_output, x, t), clip)
    prev = float(lv.abar_prev**0.5) * x0 + _diag(proc, model_output, out_coef)
    if eta > 0:
        prev = prev + _diag(proc, _noise(x, generator), std)
    return StepOutput(prev, x0)


def ddpm_paper_step(
    proc: SqueezedDiffusion,
    model_output: Tensor,
    x: Tensor,
    t: int,
    t_prev: int,
    *,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    clip: bool = True,
) -> StepOutput:
    """The reference heuristic: ``x_prev = S_t DDPM(S_t^-1 x_t, S_t^-1 out)``.

    The inner step is diffusers' DDPM with its defaults (fixed_small variance,
    x_0 clipped in the unsqueezed coordinates). Written in x coordinates it is
    ``A x_t + B S_t clip(S_t^-1 x0hat) + std S_t z``: the same t on both maps.
    """
    lv = _levels(proc, t, t_prev)
    ones = torch.ones(1)
    mean_x, mean_x0, var = (float(v) for v in _posterior(lv.abar_t, lv.abar_prev, ones, ones))
    x0 = predict_x0(proc, model_output, x, t)
    if clip:
        x0 = proc.squeeze(proc.unsqueeze(x0, t).clamp(-1.0, 1.0), t)
    prev = mean_x0 * x0 + mean_x * x
    if t > 0:
        prev = prev + max(var, 1e-20) ** 0.5 * proc.squeeze(_noise(x, generator), t)
    return StepOutput(prev, x0)


SAMPLERS: dict[str, StepFunction] = {
    "ddpm": ddpm_step,
    "ddim": ddim_step,
    "ddpm-paper": ddpm_paper_step,
}
DEFAULT_CLIP = {"ddpm": False, "ddim": False, "ddpm-paper": True}


def get_sampler(name: str) -> StepFunction:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def timesteps(num_train_timesteps: int, num_steps: int) -> list[tuple[int, int]]:
    """Pairs ``(t, t_prev)`` with diffusers' "leading" spacing (its DDPM/DDIM default)."""
    if not isinstance(num_steps, int) or not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(
            f"num_steps must be an integer in [1, {num_train_timesteps}], got {num_steps!r}"
        )
    ratio = num_train_timesteps // num_steps
    ts = [i * ratio for i in reversed(range(num_steps))]
    return [(t, t - ratio) for t in ts]


def sample(
    proc: SqueezedDiffusion,
    model: Callable[[Tensor, Tensor], Tensor],
    shape: Sequence[int],
    num_steps: int,
    sampler: str = "ddpm",
    *,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    progress: bool = True,
    clip: bool | None = None,
    device: torch.device | str | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Run a sampler from the squeezed prior down to t = 0.

    Noise is drawn in diffusers' order (prior first, then one draw per step
    that adds noise), so a seeded generator gives the same images as the
    diffusers pipeline would. ``callback(i, t, x_prev, pred_x0)`` sees every
    step (for trajectory strips).
    """
    step = get_sampler(sampler)
    schedule = timesteps(proc.num_train_timesteps, num_steps)
    clip = DEFAULT_CLIP[sampler] if clip is None else clip
    x = proc.prior(shape, generator=generator, device=device)
    for i, (t, t_prev) in enumerate(
        tqdm(schedule, desc=f"sampling ({sampler})", disable=not progress)
    ):
        with torch.no_grad():
            out = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        x, x0 = step(proc, out, x, t, t_prev, generator=generator, eta=eta, clip=clip)
        if callback is not None:
            callback(i, t, x, x0)
    return x
