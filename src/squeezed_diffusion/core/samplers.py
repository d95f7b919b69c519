"""Samplers for the squeezed process: one step function per idea, one signature.

Every step function is ``step(proc, model_output, x, t, t_prev, *, generator,
eta, clip) -> StepOutput`` and moves a batch from training timestep ``t`` to
``t_prev`` (``-1`` means the data); each is registered once, with its help text, in
:data:`~squeezed_diffusion.core.registry.SAMPLERS`, which the process, the CLI, configs,
sweeps and the diffusers schedulers read. Because the process is diagonal in the
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

Speed: a step's per-direction coefficients are computed once per process and
``(t, t_prev)`` and kept on the batch's device (in the process' one cache), so a step does no host work or
transfers after the first batch; its terms (x_t, x0hat, noise) go through one
:meth:`~squeezed_diffusion.basis.Basis.scale_sum`, i.e. one projection onto the
basis, and coefficients equal in every direction become plain scalar multiplies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .process import SqueezedDiffusion
from .registry import SAMPLERS

Tensor = torch.Tensor
# callback(step index, t, x_prev, predicted x0) after every step of a sampling loop
Callback = Callable[[int, int, Tensor, Tensor], None]
# A per-direction coefficient: one number when it is the same in every direction, else a
# [K + 1] tensor (groups, then the rest) on the batch's device and dtype.
Coef = float | Tensor


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
        clip: bool = True,
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


def _cached(
    proc: SqueezedDiffusion, key: tuple, like: Tensor, make: Callable[[], Sequence[Tensor]]
) -> tuple[Coef, ...]:
    """``make()``'s coefficients for one step, computed once per process, step and device."""
    return proc.cached(key, like, lambda: tuple(_coef(values, like) for values in make()))


def _coef(values: Tensor, like: Tensor) -> Coef:
    values = values.reshape(-1)
    if bool((values == values[-1]).all()):
        return float(values[-1])
    return values.to(device=like.device, dtype=like.dtype)


def _combine(proc: SqueezedDiffusion, terms: Sequence[tuple[Tensor, Coef]]) -> Tensor:
    """``sum_j D_j x_j`` with ``D_j`` multiplying direction group i by ``coef_j[i]``.

    The per-direction terms share one :meth:`Basis.scale_sum` (one projection); the
    uniform ones are then added in place, as scalar multiples.
    """
    shaped = [(x, c[None, :-1], c[-1:]) for x, c in terms if isinstance(c, Tensor)]
    out = proc.basis.scale_sum(shaped) if shaped else None
    for x, c in terms:
        if isinstance(c, Tensor):
            continue
        if out is None:
            out = x * c
        else:
            out.add_(x, alpha=c)
    assert out is not None  # every step has at least one term
    return out


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def predict_x0(proc: SqueezedDiffusion, model_output: Tensor, x: Tensor, t: int) -> Tensor:
    """``x0hat = (x_t - sqrt(1 - abar_t) S_t epshat) / a_t`` from the model's target."""

    def scalars() -> tuple[Tensor, Tensor]:
        abar_t = proc.alphas_cumprod.float()[t]  # diffusers' float32 values
        return (1 - abar_t) ** 0.5, abar_t**0.5

    noise_level, signal = _cached(proc, ("x0", t), x, scalars)
    shaped = model_output if proc.target == "squeezed" else proc.squeeze(model_output, t)
    x0 = shaped * noise_level  # diffusers' operations and roundings, in one buffer
    return torch.sub(x, x0, out=x0).div_(signal)


def _clip_x0(x0: Tensor, clip: bool) -> Tensor:
    return x0.clamp(-1.0, 1.0) if clip else x0


def _no_eta(name: str, eta: float) -> None:
    """Samplers without an ``eta`` refuse one rather than ignore it."""
    if eta:
        raise ValueError(f"eta={eta} applies to the ddim sampler only, not to {name}; drop eta")


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
    clip: bool = True,
) -> StepOutput:
    """Exact ancestral step: per direction, the mean and variance of q(x_prev | x_t, x0hat)."""
    _no_eta("ddpm", eta)

    def coefs() -> tuple[Tensor, ...]:
        mean_x, mean_x0, var = _calibrated(_posterior, _levels(proc, t, t_prev))
        return mean_x, mean_x0, var.clamp_min(1e-20).sqrt()

    mean_x, mean_x0, std = _cached(proc, ("ddpm", t, t_prev), x, coefs)
    x0 = _clip_x0(predict_x0(proc, model_output, x, t), clip)
    terms = [(x0, mean_x0), (x, mean_x)]
    if t > 0:
        terms.append((_noise(x, generator), std))
    return StepOutput(_combine(proc, terms), x0)


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
    clip: bool = True,
) -> StepOutput:
    """Exact DDIM per direction: ``a_prev x0hat + sqrt(sig_prev^2 - std^2) epshat + std z``.

    ``epshat`` is the unit noise estimate (for the squeezed target, ``S_t^-1`` of
    the output, folded into the coefficient); ``std = eta * (posterior std)``.
    Like diffusers, a clipped x0hat leaves epshat alone, and noise is drawn at
    every step when ``eta > 0``.
    """

    def coefs() -> tuple[Tensor, ...]:
        lv = _levels(proc, t, t_prev)
        unit = proc.target == "unit"
        std, out_coef = _calibrated(lambda *a: _ddim_coefs(*a, eta=eta, unit=unit), lv)
        return lv.abar_prev**0.5, out_coef, std

    signal, out_coef, std = _cached(proc, ("ddim", t, t_prev, eta), x, coefs)
    x0 = _clip_x0(predict_x0(proc, model_output, x, t), clip)
    terms = [(x0, signal), (model_output, out_coef)]
    if eta > 0:
        terms.append((_noise(x, generator), std))
    return StepOutput(_combine(proc, terms), x0)


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
    _no_eta("ddpm-paper", eta)

    def coefs() -> tuple[Tensor, ...]:
        lv = _levels(proc, t, t_prev)
        ones = torch.ones(1)
        mean_x, mean_x0, var = _posterior(lv.abar_t, lv.abar_prev, ones, ones)
        return mean_x, mean_x0, var.double().clamp_min(1e-20).sqrt() * lv.c_t  # std * S_t

    mean_x, mean_x0, noise_coef = _cached(proc, ("ddpm-paper", t, t_prev), x, coefs)
    x0 = predict_x0(proc, model_output, x, t)
    if clip:
        x0 = proc.squeeze(proc.unsqueeze(x0, t).clamp(-1.0, 1.0), t)
    terms = [(x0, mean_x0), (x, mean_x)]
    if t > 0:
        terms.append((_noise(x, generator), noise_coef))
    return StepOutput(_combine(proc, terms), x0)


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
    clip: bool = True,
    device: torch.device | str | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Run a registered sampler from the squeezed prior down to t = 0.

    Noise is drawn in diffusers' order (prior first, then one draw per step
    that adds noise), so a seeded generator gives the same images as the
    diffusers pipeline would. ``callback(i, t, x_prev, pred_x0)`` sees every
    step (for trajectory strips). ``clip`` clips the predicted x_0 to the data range
    [-1, 1] (on, as in diffusers: an undertrained network's x_0 at large t is amplified
    by 1 / sqrt(abar_t), and unclipped it saturates most pixels); the Gaussian oracle,
    whose data are unbounded, turns it off.
    """
    entry = SAMPLERS.get(sampler)
    if not entry.uses_eta:
        _no_eta(sampler, eta)  # before any work
    step = entry.step
    schedule = timesteps(proc.num_train_timesteps, num_steps)
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


@dataclass(frozen=True)
class Sampler:
    """A registered sampler: its step function, one line of help, whether it takes ``eta``,
    and the diffusers scheduler that runs it (``pipelines/``: 'ddpm' or 'ddim')."""

    name: str
    step: StepFunction
    summary: str
    uses_eta: bool = False
    scheduler: str = "ddpm"

    def sample(self, proc: SqueezedDiffusion, *args, **kwargs) -> Tensor:
        """:func:`sample` with this sampler (what ``SqueezedDiffusion.sample`` calls)."""
        return sample(proc, *args, sampler=self.name, **kwargs)


for _sampler in (
    Sampler("ddpm", ddpm_step, "exact ancestral sampling from the per-direction posterior"),
    Sampler("ddim", ddim_step, "exact per-direction DDIM, eta from 0 to 1", True, "ddim"),
    Sampler("ddpm-paper", ddpm_paper_step, "the paper's heuristic: S_t^-1, DDPM step, S_t"),
):
    SAMPLERS.register(_sampler.name, _sampler)
