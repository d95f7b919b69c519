"""Samplers for the squeezed process: one step function per idea, one signature.

Every step function is ``step(proc, model_output, x, t, t_prev, *, generator, eta, clip,
noise, variance, state) -> StepOutput`` and moves a batch from training timestep ``t`` to
``t_prev`` (``-1`` means the data). Each is registered once, with its help text, its
time-step schedule and the options it honours, in
:data:`~squeezed_diffusion.core.registry.SAMPLERS`, which the process, the CLI, configs,
sweeps and the diffusers schedulers read. A step refuses an option it does not honour
rather than ignore it.

Because the process is diagonal in the basis, the exact samplers apply the isotropic
formulas direction by direction, with ``sigma_t,i = sqrt(1 - abar_t) c_i(t)`` (DESIGN.md
part 2):

- :func:`ddpm_step`: ancestral sampling from the exact posterior ``q(x_prev | x_t, x_0)``
  (``variance="fixed_large"``: the per-direction transition variance instead);
- :func:`ddim_step`: DDIM per direction, ``eta`` from deterministic (0) to the exact
  posterior (1);
- :func:`ddpm_paper_step`: the paper's reference heuristic (map with ``S_t^-1``, ordinary
  DDPM step, map back with ``S_t``), exact only when ``S_t`` does not depend on t;
- :func:`dpmpp_2m_step`: DPM-Solver++(2M) on the probability-flow ODE, which decouples
  per direction given the x_0 estimate: each direction has its own half-log-SNR
  ``lambda_i = log(a_t / sigma_t,i)`` and step ``h_i`` (monotone because the process is
  valid), so the multistep update is the isotropic one with per-direction coefficients;
- :func:`dpmpp_2m_sde_step`: its SDE form (diffusers' ``sde-dpmsolver++``), which adds
  fresh noise ``sigma_t,i sqrt(1 - exp(-2 h_i))`` per direction at every step, like
  ancestral sampling;
- :func:`dpmpp_3m_step`, :func:`dpmpp_3m_sde_step`: the third-order multistep forms
  (diffusers' ``solver_order=3``);
- :func:`heun_step`: EDM's second-order Heun method on the same per-direction ODE, written
  in each direction's own noise level ``sigma_t,i / a_t``.

At strength 0 each reduces to its diffusers scheduler's ``step`` (same noise draws from the
same generator). Every step turns the model output into ``x0hat`` and a noise estimate by
:func:`predict` (for the process' ``prediction_type``), applies the :class:`X0Rule`
(clipping or dynamic thresholding, as diffusers' ``clip_sample``/``thresholding``) and
combines its terms through one :meth:`~squeezed_diffusion.core.basis.Basis.scale_sum`.

Speed: a step's per-direction coefficients are computed once per process and step and kept
on the batch's device (in the process' one cache); coefficients equal in every direction
become plain scalar multiplies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .process import SqueezedDiffusion
from .registry import SAMPLERS
from .values import check_count, is_integer, is_number

Tensor = torch.Tensor
# callback(step index, t, x_prev, predicted x0) after every step of a sampling loop
Callback = Callable[[int, int, Tensor, Tensor], None]
# A per-direction coefficient: one number when it is the same in every direction, else a
# [K + 1] tensor (groups, then the rest) on the batch's device and dtype.
Coef = float | Tensor
VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large")


class StepOutput(NamedTuple):
    prev_sample: Tensor
    pred_original_sample: Tensor


@dataclass(frozen=True)
class X0Rule:
    """What happens to the predicted x_0 before a step uses it: diffusers' options.

    ``clip_range``: clip to ``[-r, r]`` (None: no clipping). ``threshold``: dynamic
    thresholding (Imagen) at this quantile of ``|x_0|`` per sample, clamped to
    ``[1, max_value]``; it replaces clipping, as in diffusers. ``reuse``: DDIM recomputes its
    noise estimate from the processed x_0 (diffusers' ``use_clipped_model_output``).
    ``anchor``: the DPM-Solver++ samplers step from ``x_t + a_t (x0_processed - x0hat)``, the
    network's own noise estimate around the processed x_0, which is what DDIM does by default;
    otherwise they step with the processed x_0 alone and x_t keeps the signal the network
    predicted beyond it. ``anchor_scaled``: the anchor's shift is multiplied by the share of
    x_0 the step's first-order update mixes in (``1 - exp(-h_i)``, the SDE's
    ``1 - exp(-2 h_i)``). The plain anchor adds one full shift per step however small the
    step, so more steps add more; scaled, a first-order ODE step uses
    ``(1 + e^-h) clip(x0hat) - e^-h x0hat`` as its x_0, which tends to the reflection
    ``2 clip(x0hat) - x0hat`` as the steps shrink: the solver then converges, to the ODE
    driven by that estimate (docs/results/few-step-samplers).
    ``True``/``False`` passed as ``clip`` mean ``X0Rule()`` and ``X0Rule(None)``.
    """

    clip_range: float | None = 1.0
    threshold: float | None = None
    max_value: float = 1.0
    reuse: bool = False
    anchor: bool = False
    anchor_scaled: bool = False

    def __post_init__(self) -> None:
        if self.anchor_scaled and not self.anchor:
            raise ValueError("anchor_scaled scales the anchor: pass anchor=True with it")
        for name in ("reuse", "anchor", "anchor_scaled"):  # "no" would read as True
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.clip_range is not None and not (
            is_number(self.clip_range) and math.isfinite(self.clip_range) and self.clip_range > 0
        ):
            raise ValueError(f"clip_range must be a number > 0 or None, got {self.clip_range!r}")
        if self.threshold is not None and not (
            is_number(self.threshold) and 0 < self.threshold <= 1  # a quantile
        ):
            raise ValueError(f"threshold must be in (0, 1] or None, got {self.threshold!r}")
        if not (is_number(self.max_value) and math.isfinite(self.max_value) and self.max_value > 0):
            raise ValueError(f"max_value must be a number > 0, got {self.max_value!r}")

    def __call__(self, x0: Tensor) -> Tensor:
        if self.threshold is not None:
            return _dynamic_threshold(x0, self.threshold, self.max_value)
        if self.clip_range is not None:
            return x0.clamp(-self.clip_range, self.clip_range)
        return x0


def _dynamic_threshold(x0: Tensor, ratio: float, max_value: float) -> Tensor:
    """diffusers' ``_threshold_sample``, operation for operation."""
    dtype, (batch, *rest) = x0.dtype, x0.shape
    flat = (
        x0.float().reshape(batch, -1)
        if dtype not in (torch.float32, torch.float64)
        else x0.reshape(batch, -1)
    )
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(batch, *rest).to(dtype)


def _checked_step(
    proc: SqueezedDiffusion, model_output: Tensor, x: Tensor, t: int, t_prev: int, clip: Any
) -> X0Rule:
    """A step's x_0 rule, after its inputs: the step functions are public, and a float or
    out-of-range t would index the tables wrongly (or give NaN), a later t_prev step back."""
    for name, value in (("t", t), ("t_prev", t_prev)):
        if not is_integer(value):
            raise ValueError(f"{name} must be an integer timestep, got {value!r}")
    if not 0 <= t < proc.num_train_timesteps or t_prev > t:
        raise ValueError(
            f"a step goes from t in [0, {proc.num_train_timesteps}) to t_prev <= t (below 0: "
            f"the data), got t={t}, t_prev={t_prev}"
        )
    if model_output.shape != x.shape:
        raise ValueError(
            f"the model output has shape {tuple(model_output.shape)}, the sample {tuple(x.shape)}"
        )
    return as_rule(clip)


def _check_eta(sampler: str, eta: float) -> None:
    """Beyond 1, DDIM's noise would exceed the posterior's (NaN fails too)."""
    if not is_number(eta) or not 0 <= eta <= 1:  # True would read as 1
        raise ValueError(f"the {sampler} sampler takes eta in [0, 1], got {eta!r}")


def as_rule(clip: bool | X0Rule) -> X0Rule:
    """``clip`` as a rule: ``True`` clips to [-1, 1], ``False`` leaves x_0 alone."""
    if isinstance(clip, X0Rule):
        return clip
    if not isinstance(clip, bool):  # clip=2 would clip to [-1, 1], not [-2, 2]
        raise ValueError(f"clip must be True, False or an X0Rule, got {clip!r}")
    return X0Rule(1.0 if clip else None)


# Images per sampling loop where the caller names no batch: a paper-size evaluation (10,000)
# in one batch would not fit a GPU with the paper's UNet.
SAMPLE_BATCH = 256

# The x_0 rules a sampling run is named by (``sqdm sample/evaluate --x0``, sweeps' ``x0``):
# clipping decides how a weakly trained network's x_0 estimate at large t enters every step,
# so comparing samplers fairly needs each of these, by name.
X0_RULES: dict[str, X0Rule] = {
    "clip": X0Rule(),
    "none": X0Rule(None),
    "clip-reuse": X0Rule(reuse=True),
    "clip-anchor": X0Rule(anchor=True),
    "clip-anchor-scaled": X0Rule(anchor=True, anchor_scaled=True),
}
X0_HELP = (
    "clip: clip x_0 to [-1, 1] (default; diffusers' clip_sample); none: leave it; clip-reuse: "
    "clip, and DDIM re-derives its noise estimate from the clipped x_0 (diffusers' "
    "use_clipped_model_output), which makes DDIM with eta 0 DPM-Solver++(1) step for step; "
    "clip-anchor: clip, and DPM-Solver++ re-anchors x_t at the clipped x_0 with the network's "
    "own noise estimate, as DDIM does under clip (from the same t, dpmpp-2m's first step is "
    "DDIM's with eta 0, dpmpp-2m-sde's DDIM's with eta 1); clip-anchor-scaled: clip-anchor "
    "with each step's shift scaled by the share of x_0 its first-order update mixes in, so "
    "that more steps converge (to the ODE driven by 2 clip(x0hat) - x0hat) rather than add "
    "shifts"
)


def x0_rule(name: str) -> X0Rule:
    """The :data:`X0_RULES` entry ``name``, or a one-line error listing them."""
    if name not in X0_RULES:
        raise ValueError(f"unknown x0 rule {name!r}; choose one of: {', '.join(X0_RULES)}")
    return X0_RULES[name]


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
        clip: bool | X0Rule = True,
        noise: Tensor | None = None,
        variance: str = "fixed_small",
        state: dict[str, Any] | None = None,
    ) -> StepOutput: ...


def _refuse(sampler: str, **given: Any) -> None:
    """A step refuses the options it does not honour rather than ignore them."""
    defaults = {
        "eta": 0.0, "noise": None, "variance": "fixed_small", "reuse": False, "anchor": False
    }  # fmt: skip
    for name, value in given.items():
        if not (value is None if defaults[name] is None else value == defaults[name]):
            shown = "a noise tensor" if name == "noise" else repr(value)
            raise ValueError(f"the {sampler} sampler takes no {name} (got {shown})")


# -- per-direction levels and coefficients -------------------------------------------------
def _level(proc: SqueezedDiffusion, t: int) -> tuple[Tensor, Tensor]:
    """(float32 abar, float64 per-direction scale) of timestep ``t``; the data at ``t < 0``."""
    scales = torch.cat([proc.c, proc.c_rest[:, None]], dim=1)
    if t < 0:
        return torch.tensor(1.0), torch.ones(scales.shape[1], dtype=torch.float64)
    return proc.alphas_cumprod.float()[t], scales[t]


def _calibrated(
    fn: Callable[..., tuple[Tensor, ...]], *levels: tuple[Tensor, Tensor]
) -> list[Tensor]:
    """``fn(abar_1, c_1, abar_2, c_2, ...)`` per direction in float64, rescaled so that at
    c = 1 it equals diffusers' float32 arithmetic.

    Each coefficient is ``iso32 * exact64 / iso64``: the isotropic value exactly as
    diffusers computes it, times the exact per-direction ratio (1.0 at s = 0).
    """
    ones = torch.ones_like(levels[0][1])
    exact = fn(*(v for a, c in levels for v in (a.double(), c)))
    iso64 = fn(*(v for a, _ in levels for v in (a.double(), ones)))
    iso32 = fn(*(v for a, _ in levels for v in (a, ones.float())))
    return [
        torch.where(i64 != 0, i32.double() * (e / torch.where(i64 != 0, i64, 1.0)), e)
        for e, i64, i32 in zip(exact, iso64, iso32, strict=True)
    ]


def _coef(values: Tensor, like: Tensor) -> Coef:
    values = values.reshape(-1)
    if bool((values == values[-1]).all()):
        return float(values[-1])
    return values.to(device=like.device, dtype=like.dtype)


def _cached(
    proc: SqueezedDiffusion, key: tuple, like: Tensor, make: Callable[[], Sequence[Tensor]]
) -> tuple[Coef, ...]:
    """``make()``'s coefficients for one step, computed once per process, step and device."""
    return proc.cached(key, like, lambda: tuple(_coef(values, like) for values in make()))


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


def _noise(
    x: Tensor,
    generator: torch.Generator | None,
    noise: Tensor | None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``noise``, or a fresh draw shaped like ``x``, drawn in ``dtype`` (default ``x``'s): the
    dtype a stock scheduler draws in decides which numbers a seeded generator gives."""
    if noise is not None:
        return noise
    return randn_tensor(x.shape, generator=generator, device=x.device, dtype=dtype or x.dtype).to(
        x.dtype
    )


# -- reading the model ----------------------------------------------------------------------
class Prediction(NamedTuple):
    x0: Tensor  # the predicted x_0, before any X0Rule
    noise: Tensor  # the predicted noise: S_t eps, or eps when ``unit``
    unit: bool


def predict(proc: SqueezedDiffusion, model_output: Tensor, x: Tensor, t: int) -> Prediction:
    """x0hat and the noise estimate from the model output, for the process' prediction type.

    In diffusers' operations and float32 roundings (``DDIMScheduler.step``), so that at
    strength 0 the samplers equal its schedulers.
    """

    sig, a = _noise_and_signal(proc, t, x)
    kind = proc.prediction_type
    if kind in ("epsilon", "unit_epsilon"):
        shaped = model_output if kind == "epsilon" else proc.squeeze(model_output, t)
        x0 = shaped * sig  # diffusers' operations and roundings, in one buffer
        return Prediction(torch.sub(x, x0, out=x0).div_(a), model_output, kind == "unit_epsilon")
    if kind == "sample":
        return Prediction(model_output, (x - a * model_output) / sig, False)
    return Prediction(a * x - sig * model_output, a * model_output + sig * x, False)


def _noise_and_signal(proc: SqueezedDiffusion, t: int, like: Tensor) -> tuple[Coef, ...]:
    """``(sqrt(1 - abar_t), sqrt(abar_t))`` from diffusers' float32 ``abar``."""

    def scalars() -> tuple[Tensor, Tensor]:
        abar_t = proc.alphas_cumprod.float()[t]
        return (1 - abar_t) ** 0.5, abar_t**0.5

    return _cached(proc, ("levels", t), like, scalars)


def _shaped_noise(proc: SqueezedDiffusion, x: Tensor, x0: Tensor, t: int) -> Tensor:
    """``S_t eps`` implied by ``x_t`` and an x_0 (diffusers' re-derived epsilon)."""
    sig, a = _noise_and_signal(proc, t, x)
    return (x - a * x0) / sig


# -- the samplers -----------------------------------------------------------------------------
def _posterior(
    abar_t: Tensor, c_t: Tensor, abar_prev: Tensor, c_prev: Tensor
) -> tuple[Tensor, ...]:
    """Per-direction ``(mean coef of x_t, mean coef of x0, posterior variance, transition
    variance)`` of the step from t to t_prev.

    With ``sigma_i = sqrt(1 - abar) c_i`` and ``r = c_prev^2 / c_t^2`` (DESIGN.md part 2):
    ``A = A_iso r``, ``B = B_iso + a_t A_iso (1 - r)``,
    ``var = var_iso c_prev^2 (1 + alpha (1 - abar_prev)(1 - r) / beta)`` and
    ``q = beta c_t^2 + alpha (1 - abar_prev)(c_t^2 - c_prev^2)``. Written so that at ``c = 1``
    it performs diffusers' DDPM expressions operation for operation, and free of the
    cancellation in ``sigma_t^2 - alpha sigma_prev^2``.
    """
    beta_prod_t, beta_prod_prev = 1 - abar_t, 1 - abar_prev
    alpha = abar_t / abar_prev
    beta = 1 - alpha
    r = c_prev**2 / c_t**2
    a_iso = alpha**0.5 * beta_prod_prev / beta_prod_t
    mean_x = a_iso * r
    mean_x0 = abar_prev**0.5 * beta / beta_prod_t + abar_t**0.5 * a_iso * (1 - r)
    extra = torch.where(beta > 0, alpha * beta_prod_prev * (1 - r) / beta, 0.0)  # t == t_prev: 0
    var = beta_prod_prev / beta_prod_t * beta * (c_prev**2 * (1 + extra))
    transition = beta * c_t**2 + alpha * beta_prod_prev * (c_t**2 - c_prev**2)
    return mean_x, mean_x0, var, transition


def _ancestral_std(var: Tensor, transition: Tensor, variance: str) -> Tensor:
    if variance not in VARIANCES:
        raise ValueError(
            f"unknown variance {variance!r}; choose one of: {', '.join(VARIANCES)} (the learned "
            "variances need a model that predicts them, and fixed_large_log a log-variance step)"
        )
    return (transition if variance == "fixed_large" else var.clamp_min(1e-20)).sqrt()


def ddpm_step(
    proc: SqueezedDiffusion,
    model_output: Tensor,
    x: Tensor,
    t: int,
    t_prev: int,
    *,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    clip: bool | X0Rule = True,
    noise: Tensor | None = None,
    variance: str = "fixed_small",
    state: dict[str, Any] | None = None,
) -> StepOutput:
    """Exact ancestral step: per direction, the mean and variance of q(x_prev | x_t, x0hat)
    (``variance="fixed_large"``: the per-direction transition variance q_t,i instead)."""
    rule = _checked_step(proc, model_output, x, t, t_prev, clip)
    _refuse("ddpm", eta=eta, reuse=rule.reuse, anchor=rule.anchor)

    def coefs() -> tuple[Tensor, ...]:
        mean_x, mean_x0, var, q = _calibrated(_posterior, _level(proc, t), _level(proc, t_prev))
        return mean_x, mean_x0, _ancestral_std(var, q, variance)

    mean_x, mean_x0, std = _cached(proc, ("ddpm", t, t_prev, variance), x, coefs)
    x0 = rule(predict(proc, model_output, x, t).x0)
    terms = [(x0, mean_x0), (x, mean_x)]
    if t > 0:
        terms.append((_noise(x, generator, noise), std))
    return StepOutput(_combine(proc, terms), x0)


def _ddim_coefs(abar_t, c_t, abar_prev, c_prev, eta: float, unit: bool) -> tuple[Tensor, Tensor]:
    """``(std, coefficient of the noise estimate)`` for DDIM; diffusers' expressions at c = 1."""
    std = eta * _posterior(abar_t, c_t, abar_prev, c_prev)[2] ** 0.5
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
    clip: bool | X0Rule = True,
    noise: Tensor | None = None,
    variance: str = "fixed_small",
    state: dict[str, Any] | None = None,
) -> StepOutput:
    """Exact DDIM per direction: ``a_prev x0hat + sqrt(sig_prev^2 - std^2) epshat + std z``.

    ``epshat`` is the unit noise estimate (``S_t^-1`` of the squeezed one, folded into the
    coefficient); ``std = eta * (posterior std)``. Like diffusers, a processed x0hat leaves
    epshat alone unless the rule says ``reuse``, and noise is drawn at every step when
    ``eta > 0``.
    """
    rule = _checked_step(proc, model_output, x, t, t_prev, clip)
    _check_eta("ddim", eta)
    _refuse("ddim", variance=variance, anchor=rule.anchor)
    pred = predict(proc, model_output, x, t)
    x0 = rule(pred.x0)
    eps, unit = pred.noise, pred.unit
    if rule.reuse:
        eps, unit = _shaped_noise(proc, x, x0, t), False

    def coefs() -> tuple[Tensor, ...]:
        lv = _level(proc, t), _level(proc, t_prev)
        std, out_coef = _calibrated(lambda *a: _ddim_coefs(*a, eta=eta, unit=unit), *lv)
        return lv[1][0] ** 0.5, out_coef, std

    signal, eps_coef, std = _cached(proc, ("ddim", t, t_prev, eta, unit), x, coefs)
    terms = [(x0, signal), (eps, eps_coef)]
    if eta > 0:
        terms.append((_noise(x, generator, noise), std))
    elif noise is not None:
        raise ValueError(
            "a noise tensor is used only with eta > 0 (the schedulers' variance_noise; stock "
            "DDIM ignores it at eta = 0): pass eta > 0 or leave the noise out"
        )
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
    clip: bool | X0Rule = True,
    noise: Tensor | None = None,
    variance: str = "fixed_small",
    state: dict[str, Any] | None = None,
) -> StepOutput:
    """The reference heuristic: ``x_prev = S_t DDPM(S_t^-1 x_t, S_t^-1 out)``.

    The inner step is diffusers' DDPM (x_0 clipped or thresholded in the unsqueezed
    coordinates, where the inner step sees it). Written in x coordinates it is
    ``A x_t + B S_t rule(S_t^-1 x0hat) + std S_t z``: the same t on both maps.
    """
    rule = _checked_step(proc, model_output, x, t, t_prev, clip)
    _refuse("ddpm-paper", eta=eta, reuse=rule.reuse, anchor=rule.anchor)

    def coefs() -> tuple[Tensor, ...]:
        (abar_t, c_t), (abar_prev, _) = _level(proc, t), _level(proc, t_prev)
        ones = torch.ones(1)
        mean_x, mean_x0, var, q = _posterior(abar_t, ones, abar_prev, ones)
        std = _ancestral_std(var.double(), q.double(), variance)
        return mean_x, mean_x0, std * c_t  # std * S_t

    mean_x, mean_x0, noise_coef = _cached(proc, ("ddpm-paper", t, t_prev, variance), x, coefs)
    x0 = predict(proc, model_output, x, t).x0
    if rule != X0Rule(None):
        x0 = proc.squeeze(rule(proc.unsqueeze(x0, t)), t)
    terms = [(x0, mean_x0), (x, mean_x)]
    if t > 0:
        terms.append((_noise(x, generator, noise), noise_coef))
    return StepOutput(_combine(proc, terms), x0)


# -- the ODE solvers --------------------------------------------------------------------------
def _nonzero(abar: Tensor) -> Tensor:
    """A zero terminal SNR (abar_T = 0) as diffusers' DPM-Solver treats it: 2^-24, so that
    the ODE's noise level stays finite; other values are untouched."""
    return torch.where(abar == 0, torch.full_like(abar, 2.0**-24), abar)


def _ode_level(abar: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """``(a, sigma_i)`` of a level as DPMSolverMultistepScheduler derives them (through the
    VE sigma ``sqrt((1 - abar) / abar)``); the data (abar = 1) has sigma 0."""
    abar = _nonzero(abar)
    sigma = ((1 - abar) / abar) ** 0.5
    alpha = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha, sigma * alpha * c


def _dpm_coefs(
    abar_t,
    c_t,
    abar_s0,
    c_s0,
    abar_s1=None,
    c_s1=None,
    abar_s2=None,
    c_s2=None,
    solver: str = "midpoint",
    sde: bool = False,
    scaled: bool = False,
):
    """``(coef of x, of m0, of m1, of m2, std of the fresh noise, coef of the anchor)`` of
    DPM-Solver++ (data prediction), per direction: first order without ``s1``, the 2M update
    with ``r0 = h_0 / h`` without ``s2``, else the 3M update (diffusers'
    ``multistep_dpm_solver_third_order_update``, its D1 and D2 expanded into m0, m1, m2);
    ``sde``: diffusers' ``sde-dpmsolver++`` (its terms in ``exp(-2h)``). The anchor
    ``m0 - x0hat`` enters as x does, times ``a_s`` (``X0Rule.anchor``), and ``scaled`` times
    the first-order share of m0, ``d0 / alpha_t`` (``anchor_scaled``)."""
    (alpha_t, sigma_t), (alpha_s0, sigma_s0) = _ode_level(abar_t, c_t), _ode_level(abar_s0, c_s0)
    lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
    lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
    h = lambda_t - lambda_s0
    if sde:
        decay = 1.0 - torch.exp(-2.0 * h)
        ratio, d0 = sigma_t / sigma_s0 * torch.exp(-h), alpha_t * decay
        std, e1 = sigma_t * torch.sqrt(decay), alpha_t * (decay / (-2.0 * h) + 1.0)
        # + 0.5: the ODE's weight (the integral of its kernel times (h - v)^2 / 2, over h^2)
        # under the SDE's kernel 2 e^(-2v), as k-diffusion's dpmpp_3m_sde; diffusers 0.42.1
        # has - 0.5, which adds a_t D2 at any step size
        e2 = alpha_t * ((decay - 2.0 * h) / (2.0 * h) ** 2 + 0.5)
    else:
        ratio, d0 = sigma_t / sigma_s0, -(alpha_t * (torch.exp(-h) - 1.0))
        std, e1 = torch.zeros_like(d0), alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)
        e2 = -(alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5))
    anchor = ratio * alpha_s0 * (d0 / alpha_t if scaled else 1.0)
    zero = torch.zeros_like(d0)
    if abar_s1 is None:
        return ratio, d0, zero, zero, std, anchor
    alpha_s1, sigma_s1 = _ode_level(abar_s1, c_s1)
    lambda_s1 = torch.log(alpha_s1) - torch.log(sigma_s1)
    r0 = (lambda_s0 - lambda_s1) / h
    if abar_s2 is None:
        # D1 = (m0 - m1) / r0 enters with d0 / 2 (midpoint) or with e1 (heun)
        d1 = (0.5 * d0 if solver == "midpoint" else e1) / r0
        return ratio, d0 + d1, -d1, zero, std, anchor
    alpha_s2, sigma_s2 = _ode_level(abar_s2, c_s2)
    r1 = (lambda_s1 - (torch.log(alpha_s2) - torch.log(sigma_s2))) / h
    # D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1; D1 = D1_0 + k (D1_0 - D1_1) with
    # k = r0 / (r0 + r1) enters with e1, D2 = (D1_0 - D1_1) / (r0 + r1) with e2
    k = r0 / (r0 + r1)
    on_d10 = e1 * (1.0 + k) + e2 / (r0 + r1)  # D1_0's coefficient
    on_d11 = -(e1 * k + e2 / (r0 + r1))  # D1_1's
    return ratio, d0 + on_d10 / r0, -on_d10 / r0 + on_d11 / r1, -on_d11 / r1, std, anchor


def _dpm_order(state: dict[str, Any], order: int) -> int:
    """``order`` lowered as diffusers' DPMSolverMultistepScheduler lowers it near the end, by
    ``state``'s step ``index`` of ``count`` (the sampling loop's): with fewer than 15 steps
    (and ``lower_order_final``, default True) the last step is first order and the one
    before at most second; ``euler_at_final`` makes the last step first order always."""
    index, count = state.get("index"), state.get("count")
    if index is None or count is None:
        return order
    short = state.get("lower_order_final", True) and count < 15
    if index == count - 1 and (short or state.get("euler_at_final", False)):
        return 1
    return min(order, 2) if index == count - 2 and short else order


def _dpmpp(
    name: str,
    order: int,
    sde: bool,
    proc: SqueezedDiffusion,
    model_output: Tensor,
    x: Tensor,
    t: int,
    t_prev: int,
    generator: torch.Generator | None,
    eta: float,
    clip: bool | X0Rule,
    noise: Tensor | None,
    variance: str,
    state: dict[str, Any] | None,
) -> StepOutput:
    """DPM-Solver++ multistep, ODE or SDE (a fresh draw of ``noise``'s kind per step), of
    ``order`` where the history of x0hat and :func:`_dpm_order` allow.

    With ``rule.anchor`` it steps from ``x + a_t (m0 - x0hat)`` instead of ``x``: the same
    update, fused into one sum. Without it, whatever the network predicted beyond the clipped
    x_0 stays in x_t and the next prediction starts from there; anchored, each step starts
    from ``a_t clip(x0hat) + sigma_t epshat``, as DDIM's does under its stock rule."""
    rule = _checked_step(proc, model_output, x, t, t_prev, clip)
    if sde:
        _refuse(name, eta=eta, variance=variance, reuse=rule.reuse)
        noise = _noise(x, generator, noise, torch.float32)  # stock: float32 for any sample
    else:
        _refuse(name, eta=eta, noise=noise, variance=variance, reuse=rule.reuse)
    state = {} if state is None else state
    raw = predict(proc, model_output, x, t).x0
    x0 = rule(raw)
    history = state.get("history", [])  # (t, x0hat) of the last steps, newest first
    order = _dpm_order(state, min(state.get("max_order", order), order, len(history) + 1))
    if t_prev < 0:  # to the data: first order, as diffusers' final_sigmas_type="zero"
        order = 1
    earlier = history[: order - 1]
    solver = state.get("solver_type", "midpoint")
    levels = [_level(proc, t_prev), _level(proc, t)] + [_level(proc, s) for s, _ in earlier]

    def coefs() -> list[Tensor]:
        fn = partial(_dpm_coefs, solver=solver, sde=sde, scaled=rule.anchor_scaled)
        return _calibrated(fn, *levels)

    key = ("dpmpp", sde, t, t_prev, *(s for s, _ in earlier), solver, rule.anchor_scaled)
    ratio, c0, c1, c2, std, anchor = _cached(proc, key, x, coefs)
    terms = [(x, ratio), (x0, c0)] + [
        (m, c) for (_, m), c in zip(earlier, (c1, c2)[: len(earlier)], strict=True)
    ]
    if rule.anchor:
        terms.append((x0 - raw, anchor))
    if sde:
        terms.append((noise, std))
    state["history"] = [(t, x0), *history[:1]]
    return StepOutput(_combine(proc, terms), x0)


def _dpmpp_step(name: str, order: int, sde: bool, doc: str) -> StepFunction:
    """The registered step ``name``: :func:`_dpmpp` of ``order``, ODE or SDE, behind the
    samplers' shared signature (one definition for the four DPM-Solver++ steps)."""

    def step(
        proc: SqueezedDiffusion,
        model_output: Tensor,
        x: Tensor,
        t: int,
        t_prev: int,
        *,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        clip: bool | X0Rule = True,
        noise: Tensor | None = None,
        variance: str = "fixed_small",
        state: dict[str, Any] | None = None,
    ) -> StepOutput:
        args = (proc, model_output, x, t, t_prev, generator, eta, clip, noise, variance, state)
        return _dpmpp(name, order, sde, *args)

    step.__name__ = step.__qualname__ = f"{name.replace('-', '_')}_step"
    step.__doc__ = doc
    return step


dpmpp_2m_step = _dpmpp_step(
    "dpmpp-2m",
    2,
    False,
    """DPM-Solver++(2M) per direction: ``x_t = (sigma_t,i / sigma_s,i) x_s + ...`` with each
    direction's own ``h_i``. ``state`` carries the last x0hat and timesteps between steps
    (pass the same dict along a run) and the options of diffusers' scheduler:
    ``max_order`` (1 makes every step first order), the loop's step ``index`` and ``count``
    with ``lower_order_final`` and ``euler_at_final`` (its lower-order final steps,
    :func:`_dpm_order`), ``solver_type`` 'midpoint' (default) or 'heun'. The step to the
    data (``t_prev < 0``) is first order, as diffusers' with ``final_sigmas_type="zero"``:
    it returns x0hat. ``clip`` with ``anchor`` (``clip-anchor``) makes its first step DDIM's
    (eta 0) under diffusers' default rule.""",
)
dpmpp_2m_sde_step = _dpmpp_step(
    "dpmpp-2m-sde",
    2,
    True,
    """DPM-Solver++(2M) SDE per direction (diffusers' ``sde-dpmsolver++``): the 2M update
    with ``exp(-2 h_i)`` terms plus fresh noise of std ``sigma_t,i sqrt(1 - exp(-2 h_i))``,
    drawn at every step (the last included, as diffusers) unless ``noise`` is given. The
    fresh noise lets it correct a model's errors as ancestral sampling does, where the ODE
    carries them to the end. ``state`` as for :func:`dpmpp_2m_step`.""",
)
dpmpp_3m_step = _dpmpp_step(
    "dpmpp-3m",
    3,
    False,
    """DPM-Solver++(3M) per direction (diffusers' ``solver_order=3``): from the third step
    on, the update also extrapolates from the x0hat two steps back, with each direction's
    own step ratios ``r0_i, r1_i``; the first steps are first and second order. ``state``
    as for :func:`dpmpp_2m_step`.""",
)
dpmpp_3m_sde_step = _dpmpp_step(
    "dpmpp-3m-sde",
    3,
    True,
    """DPM-Solver++(3M) SDE per direction (diffusers' ``sde-dpmsolver++`` with
    ``solver_order=3``): the 3M update in ``exp(-2 h_i)`` terms, its second difference
    weighted as the ODE's under the SDE's kernel (stock's weight has the sign of its 1/2
    flipped), plus the fresh noise of :func:`dpmpp_2m_sde_step`.""",
)


def _heun_levels(abar: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """``(a, sigma~_i)``: the signal and each direction's noise level of ``x / a``."""
    abar = _nonzero(abar)
    return abar**0.5, ((1 - abar) / abar) ** 0.5 * c


def _heun_euler(abar_t, c_t, abar_n, c_n):
    """Predictor ``x' = a_n (r x / a + (1 - r) x0)`` with ``r = sigma~_n / sigma~``."""
    (a, sig), (a_n, sig_n) = _heun_levels(abar_t, c_t), _heun_levels(abar_n, c_n)
    r = sig_n / sig
    return a_n * r / a, a_n * (1 - r)


def _heun_correct(abar_t, c_t, abar_n, c_n):
    """Corrector ``x_n = a_n (x / a + d/2 ((x / a - x0) / sig + (x' / a_n - x0') / sig_n))``
    with ``d = sig_n - sig``: coefficients of x, x0, x' and x0'."""
    (a, sig), (a_n, sig_n) = _heun_levels(abar_t, c_t), _heun_levels(abar_n, c_n)
    half = (sig_n - sig) / 2
    return a_n / a * (1 + half / sig), -a_n * half / sig, half / sig_n, -a_n * half / sig_n


def heun_step(
    proc: SqueezedDiffusion,
    model_output: Tensor,
    x: Tensor,
    t: int,
    t_prev: int,
    *,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    clip: bool | X0Rule = True,
    noise: Tensor | None = None,
    variance: str = "fixed_small",
    state: dict[str, Any] | None = None,
) -> StepOutput:
    """EDM's Heun step per direction, in two calls: ``(t, t_prev)`` makes the Euler
    prediction at ``t_prev`` (and remembers where it started in ``state``), then
    ``(t_prev, t_prev)`` with the model evaluated there corrects it. Each direction moves
    along its own noise level ``sigma_t,i / a_t``; the step to the data is Euler alone."""
    rule = _checked_step(proc, model_output, x, t, t_prev, clip)
    _refuse("heun", eta=eta, noise=noise, variance=variance, reuse=rule.reuse, anchor=rule.anchor)
    if state is None:
        raise ValueError("the heun sampler needs a state dict carried from step to step")
    x0 = rule(predict(proc, model_output, x, t).x0)
    if t_prev == t:  # the correction of the pending prediction
        if "pending" not in state:
            raise ValueError(
                f"heun step ({t}, {t}) corrects a prediction made at {t}: call it after a step "
                f"to {t}, with the same state dict"
            )
        t0, x_start, x0_start = state.pop("pending")
        key = ("heun-correct", t0, t)
        cx, cx0, cxp, cx0p = _cached(
            proc, key, x, lambda: _calibrated(_heun_correct, _level(proc, t0), _level(proc, t))
        )
        return StepOutput(
            _combine(proc, [(x_start, cx), (x0_start, cx0), (x, cxp), (x0, cx0p)]), x0
        )
    if t_prev < 0:
        return StepOutput(x0.clone(), x0)
    state["pending"] = (t, x, x0)
    cx, cx0 = _cached(
        proc,
        ("heun-euler", t, t_prev),
        x,
        lambda: _calibrated(_heun_euler, _level(proc, t), _level(proc, t_prev)),
    )
    return StepOutput(_combine(proc, [(x, cx), (x0, cx0)]), x0)


# -- schedules and the sampling loop --------------------------------------------------------
SPACINGS = ("leading", "linspace", "trailing")


def _step_count(num_steps: int, most: int, why: str = "") -> int:
    """``num_steps`` as a Python int, once it is a whole number in [1, most] (``True`` is not)."""
    if not is_integer(num_steps) or not 1 <= num_steps <= most:
        raise ValueError(f"num_steps must be an integer in [1, {most}]{why}, got {num_steps!r}")
    return int(num_steps)


def spaced_timesteps(
    num_train_timesteps: int, num_steps: int, spacing: str = "leading", steps_offset: int = 0
) -> list[int]:
    """``num_steps`` descending training timesteps with diffusers' DDPM/DDIM spacings;
    ``steps_offset`` shifts "leading" only, as in diffusers."""
    big_t = check_count(num_train_timesteps, "num_train_timesteps")  # a float T: float steps
    num_steps = _step_count(num_steps, big_t)
    if spacing == "leading":
        ratio = big_t // num_steps
        top = (num_steps - 1) * ratio
        if not is_integer(steps_offset) or not 0 <= steps_offset <= big_t - 1 - top:
            raise ValueError(
                f"steps_offset must be an integer in [0, {big_t - 1 - top}] for {num_steps} "
                f"leading steps of T = {big_t} (else a timestep leaves [0, {big_t})), got "
                f"{steps_offset!r}"
            )
        return [i * ratio + int(steps_offset) for i in reversed(range(num_steps))]
    if spacing == "linspace":
        return np.linspace(0, big_t - 1, num_steps).round()[::-1].astype(np.int64).tolist()
    if spacing == "trailing":
        return trailing_timesteps(big_t, num_steps)
    raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of: {', '.join(SPACINGS)}")


def trailing_timesteps(
    num_train_timesteps: int, num_steps: int, start: int | None = None
) -> list[int]:
    """diffusers' "trailing" spacing: a ``T / num_steps`` stride down from ``start`` (T), minus 1.

    From a lower ``start`` (DPM-Solver's ``lambda_min_clipped``) that gives fewer points, as
    in stock. At some step counts (61 and 103 of T = 1000, ...) the float stride leaves a
    point that rounds to -1, from which stock steps outside the training range (its samples
    are garbage there); refused, naming the nearest counts that work.
    """
    big_t = num_train_timesteps

    def points(n: int) -> np.ndarray:
        return (
            np.round(np.arange(big_t if start is None else start, 0, -big_t / n)).astype(np.int64)
            - 1
        )

    ts = points(num_steps)
    if ts.min() < 0:
        near = [
            n for n in (num_steps - 1, num_steps + 1) if 1 <= n <= big_t and points(n).min() >= 0
        ]
        raise ValueError(
            f"trailing spacing over {big_t} timesteps gives {num_steps} steps an extra timestep, "
            f"-1, outside the training range (diffusers' float stride; stock samples garbage "
            f"there): use {' or '.join(map(str, near)) or 'another number of'} steps"
        )
    return ts.tolist()


def timesteps(num_train_timesteps: int, num_steps: int) -> list[tuple[int, int]]:
    """Pairs ``(t, t_prev)`` with diffusers' "leading" spacing (its DDPM/DDIM default)."""
    ts = spaced_timesteps(num_train_timesteps, num_steps)
    ratio = num_train_timesteps // num_steps
    return [(t, t - ratio) for t in ts]


def ode_timesteps(num_train_timesteps: int, num_steps: int) -> list[tuple[int, int]]:
    """``num_steps`` steps down to the data, at DPMSolverMultistepScheduler's default
    "linspace" timesteps (``linspace(0, T - 1, n + 1)``, rounded, without 0) and a final
    step to noise level 0. At most ``T - 1`` steps: more would repeat a time point (a zero
    step, where DPM-Solver++ divides by zero)."""
    num_train_timesteps = check_count(num_train_timesteps, "num_train_timesteps")
    why = " for the ODE solvers (T - 1: more would repeat a time point)"
    num_steps = _step_count(num_steps, max(1, num_train_timesteps - 1), why)
    ts = np.linspace(0, num_train_timesteps - 1, num_steps + 1).round()[::-1][:-1].astype(np.int64)
    return ode_steps(ts.tolist())


def ode_steps(points: Sequence[int]) -> list[tuple[int, int]]:
    """Steps ``(t, t_prev)`` through descending time ``points``, then to the data (-1): an
    ODE solver's schedule on any choice of time points."""
    return list(zip(points, [*points[1:], -1], strict=True))


def with_corrections(steps: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Heun's schedule from an ODE schedule: each step but the last (to the data) followed
    by its correction ``(t_prev, t_prev)``, ``2 n - 1`` model evaluations for ``n`` steps."""
    out = []
    for t, t_prev in steps:
        out += [(t, t_prev)] + ([(t_prev, t_prev)] if t_prev >= 0 else [])
    return out


def heun_timesteps(num_train_timesteps: int, num_steps: int) -> list[tuple[int, int]]:
    """Heun on the ODE time points (:func:`ode_timesteps`)."""
    return with_corrections(ode_timesteps(num_train_timesteps, num_steps))


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
    clip: bool | X0Rule | str = True,
    device: torch.device | str | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Run a registered sampler from the squeezed prior down to the data.

    Noise is drawn in diffusers' order (prior first, then one draw per step
    that adds noise), so a seeded generator gives the same images as the
    diffusers pipeline would. ``callback(i, t, x_prev, pred_x0)`` sees every
    model evaluation (for trajectory strips). ``clip`` clips the predicted x_0 to the data
    range [-1, 1] (on, as in diffusers: an undertrained network's x_0 at large t is amplified
    by 1 / sqrt(abar_t), and unclipped it saturates most pixels); the Gaussian oracle,
    whose data are unbounded, turns it off; an :class:`X0Rule` or a name of
    :data:`X0_RULES` chooses another rule. ``num_steps`` counts time steps; a sampler's
    model evaluations are ``SAMPLERS[name].nfe(num_steps)``. ``device``: where to sample; the
    process' basis moves there too (``proc.to(device)``), as every step uses it.
    """
    clip = x0_rule(clip) if isinstance(clip, str) else as_rule(clip)
    entry = checked_sampler(sampler, eta, clip)  # before any work
    if not isinstance(progress, bool):  # "no" would show the bar
        raise ValueError(f"progress must be True or False, got {progress!r}")
    if device is not None:
        proc.to(device)
    schedule = entry.schedule(proc.num_train_timesteps, num_steps)
    x = proc.prior(shape, generator=generator, device=device)
    state: dict[str, Any] = {}
    for i, (t, t_prev) in enumerate(
        tqdm(schedule, desc=f"sampling ({sampler})", disable=not progress)
    ):
        with torch.no_grad():
            out = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        if not isinstance(out, Tensor):  # its shape: the step checks it
            raise ValueError(
                f"the model returned {type(out).__name__}, not a tensor (a diffusers UNet: pass "
                "lambda x, t: unet(x, t).sample)"
            )
        state.update(index=i, count=len(schedule))  # for steps whose order depends on it
        step_eta = {"eta": eta} if entry.uses_eta else {}
        x, x0 = entry.step(
            proc, out, x, t, t_prev, generator=generator, clip=clip, state=state, **step_eta
        )
        if callback is not None:
            callback(i, t, x, x0)
    return x


def checked_sampler(sampler: str, eta: float = 0.0, x0: str | X0Rule = "clip") -> Sampler:
    """The registered sampler ``sampler``, refusing an ``eta`` it does not take or one outside
    [0, 1] (where DDIM's noise would exceed the posterior's), and an x_0 rule it cannot honour."""
    entry = SAMPLERS.get(sampler)
    if not entry.uses_eta:
        _refuse(sampler, eta=eta)
    else:
        _check_eta(sampler, eta)
    rule = x0 if isinstance(x0, X0Rule) else x0_rule(x0)
    if isinstance(x0, X0Rule):  # named in the messages as --x0 names it, where it has a name
        x0 = next((name for name, known in X0_RULES.items() if known == rule), repr(rule))
    if rule.reuse and not entry.reuses_x0:
        takes = ", ".join(name for name, s in SAMPLERS.items() if s.reuses_x0)
        raise ValueError(
            f"x0 rule {x0} applies to samplers with a noise estimate to re-derive ({takes}); "
            f"the {sampler} sampler uses the clipped x_0 throughout: use clip"
        )
    if rule.anchor and not entry.anchors_x0:
        takes = ", ".join(name for name, s in SAMPLERS.items() if s.anchors_x0)
        why = (
            "keeps the network's noise estimate under clip already"
            if entry.reuses_x0
            else "does not implement it"
        )
        raise ValueError(
            f"x0 rule {x0} applies to the DPM-Solver++ samplers ({takes}); the {sampler} "
            f"sampler {why}: use clip"
        )
    return entry


@dataclass(frozen=True)
class Sampler:
    """A registered sampler: its step function, one line of help, its time-step schedule,
    whether it takes ``eta``, and the diffusers scheduler that runs it (``pipelines/``) with
    the config keys that make that scheduler run this sampler. ``reuses_x0``: it honours the
    x_0 rule's ``reuse`` (it has a noise estimate apart from its x_0 estimate);
    ``anchors_x0``: it honours the rule's ``anchor``."""

    name: str
    step: StepFunction
    summary: str
    uses_eta: bool = False
    scheduler: str = "ddpm"
    schedule: Callable[[int, int], list[tuple[int, int]]] = timesteps
    scheduler_config: Mapping[str, Any] = field(default_factory=dict)
    reuses_x0: bool = False
    anchors_x0: bool = False

    @property
    def scheduler_keys(self) -> dict[str, Any]:
        """The scheduler config items that make :attr:`scheduler` run this sampler: those
        declared, or ``{"sampler": name}`` for the DDPM scheduler, which runs several told
        apart by that key (derived from the name, so a renamed copy selects itself)."""
        if self.scheduler == "ddpm" and not self.scheduler_config:
            return {"sampler": self.name}
        return dict(self.scheduler_config)

    def nfe(self, num_steps: int) -> int:
        """Model evaluations of ``num_steps`` steps (the length of the schedule)."""
        return len(self.schedule(max(1000, num_steps), num_steps))

    def sample(self, proc: SqueezedDiffusion, *args, **kwargs) -> Tensor:
        """:func:`sample` with this sampler (what ``SqueezedDiffusion.sample`` calls)."""
        return sample(proc, *args, sampler=self.name, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> StepOutput:
        """:attr:`step`: 0.1.0's ``SAMPLERS`` held the step functions themselves, so user
        code calls ``SAMPLERS["ddpm"](proc, out, x, t, t_prev, ...)``."""
        return self.step(*args, **kwargs)


def sampler_for_scheduler(kind: str, config: Mapping[str, Any]) -> Sampler:
    """The one registered sampler that the ``kind`` scheduler runs with ``config``: the one
    whose ``scheduler`` is ``kind`` and whose ``scheduler_config`` items all equal
    ``config``'s.

    What every scheduler steps with, so that a sampler is declared once; none or several
    matches raise (a sampler registered for a scheduler without the config key that singles
    it out is ambiguous, never silently another).
    """
    found = [
        entry
        for entry in SAMPLERS.values()
        if entry.scheduler == kind
        and all(k in config and config[k] == v for k, v in entry.scheduler_keys.items())
    ]
    if len(found) != 1:
        what = f"several samplers ({', '.join(e.name for e in found)})" if found else "no sampler"
        candidates = ", ".join(
            f"{e.name} {e.scheduler_keys}" for e in SAMPLERS.values() if e.scheduler == kind
        )
        raise ValueError(
            f"{what} registered for the {kind} scheduler match its config; candidates (name, "
            f"scheduler_config): {candidates}; each needs a scheduler_config that singles it out"
        )
    return found[0]


for _sampler in (
    Sampler("ddpm", ddpm_step, "exact ancestral sampling from the per-direction posterior"),
    Sampler(
        "ddim", ddim_step, "exact per-direction DDIM, eta from 0 to 1", True, "ddim",
        reuses_x0=True,
    ),
    Sampler("ddpm-paper", ddpm_paper_step, "the paper's heuristic: S_t^-1, DDPM step, S_t"),
    *(
        Sampler(
            f"dpmpp-{order}m{'-sde' * sde}", step,
            f"DPM-Solver++({order}M){' SDE' * sde} per direction: few-step, "
            + ("fresh noise each step" if sde else "deterministic"),
            scheduler="dpmsolver", schedule=ode_timesteps, anchors_x0=True,
            scheduler_config={
                "algorithm_type": "sde-dpmsolver++" if sde else "dpmsolver++",
                "solver_order": order,
            },
        )
        for order, sde, step in (
            (2, False, dpmpp_2m_step), (2, True, dpmpp_2m_sde_step),
            (3, False, dpmpp_3m_step), (3, True, dpmpp_3m_sde_step),
        )
    ),
    Sampler(
        "heun", heun_step, "EDM's 2nd-order Heun per direction (2 steps - 1 evaluations)",
        scheduler="", schedule=heun_timesteps,
    ),
):  # fmt: skip
    SAMPLERS.register(_sampler.name, _sampler)
