"""``SqueezedDPMSolverMultistepScheduler``: diffusers' DPM-Solver++ multistep scheduler for the
squeezed process (the core's ``dpmpp-2m``, ``dpmpp-3m`` samplers and their SDE forms)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from ..core import SAMPLERS, Basis, SqueezedDiffusion
from ..core.samplers import X0Rule, trailing_timesteps
from ..core.values import check_count
from ._base import (
    DEFAULT_NUM_CHANNELS,
    FIXED_VARIANCES,
    SqueezedSchedulerMixin,
    require,
    step_count,
)

Tensor = torch.Tensor

# What the core's DPM-Solver++(2M) is not, and why each stock option outside it is refused.
_NOT_IN_CORE = "the core has DPM-Solver++ (data prediction, ODE or SDE) of orders 1 to 3 only"
_OFF_GRID = (
    "it puts the steps at noise levels between training timesteps, where the squeezed "
    "process (tabulated per training timestep) has no per-direction scales"
)
_REFUSED_FLAGS = {
    "use_karras_sigmas": _OFF_GRID,
    "use_exponential_sigmas": _OFF_GRID,
    "use_beta_sigmas": _OFF_GRID,
    "use_lu_lambdas": _OFF_GRID,
    "use_flow_sigmas": "flow matching is another process",
    "use_dynamic_shifting": "dynamic shifting belongs to flow sigmas, another process",
}


# variance_type is only "does the model output hold a variance too?" to DPM-Solver, which uses
# the mean: DDPM's fixed types say no (so a DDPM config swaps in as in stock), the learned
# ones say the output's second half of channels is the variance, which the step drops.
_NO_VARIANCE = (None, *FIXED_VARIANCES)
_LEARNED = ("learned", "learned_range")


def algorithm_types() -> tuple[str, ...]:
    """The ``algorithm_type`` values this scheduler runs: those the samplers registered with
    ``scheduler='dpmsolver'`` select it with (``scheduler_keys``)."""
    return tuple(
        dict.fromkeys(
            e.scheduler_keys["algorithm_type"]
            for e in SAMPLERS.values()
            if e.scheduler == "dpmsolver" and "algorithm_type" in e.scheduler_keys
        )
    )


def solver_timesteps(
    num_train_timesteps: int, num_steps: int, spacing: str, offset: int, last: int
) -> list[int]:
    """DPMSolverMultistepScheduler's own timesteps: ``num_steps + 1`` points up to ``last``
    (the training timesteps left by ``lambda_min_clipped``) without the last one, or, for
    "trailing", a ``T / num_steps`` stride down from ``last``. The core's ``ode_timesteps``
    is the "linspace" case with nothing clipped."""
    check_count(num_steps, "num_inference_steps")
    if spacing == "linspace":
        ts = np.linspace(0, last - 1, num_steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ts = (np.arange(0, num_steps + 1) * (last // (num_steps + 1)))[::-1][:-1] + offset
    else:
        ts = np.array(trailing_timesteps(num_train_timesteps, num_steps, last))
    if len(np.unique(ts)) < len(ts):  # stock steps h = 0 there and returns NaN
        raise ValueError(
            f"num_inference_steps={num_steps} repeats a timestep ({spacing} spacing over "
            f"{last} training timesteps); use fewer steps"
        )
    return ts.astype(np.int64).tolist()


class SqueezedDPMSolverMultistepScheduler(SqueezedSchedulerMixin, SchedulerMixin, ConfigMixin):
    """DPM-Solver++ (multistep, order 1 to 3) per basis direction, behind diffusers'
    ``DPMSolverMultistepScheduler`` interface.

    Each direction moves along its own half-log-SNR ``lambda_i = log(a_t / sigma_t,i)`` (the
    core's ``dpmpp_2m_step``, ``dpmpp_3m_step``; with ``algorithm_type="sde-dpmsolver++"``
    their SDE forms, which draw noise from the ``generator`` at every step as stock does).
    Honoured stock keys: the beta schedule, ``algorithm_type`` ('dpmsolver++',
    'sde-dpmsolver++') and ``solver_order`` (1, 2, 3), which pick the registered sampler
    (whose ``scheduler_config`` they equal; order 1 runs the order-2 one first order),
    ``solver_type``, ``lower_order_final``, ``euler_at_final``, ``final_sigmas_type``
    ('zero': the last step lands on the data; 'sigma_min': on timestep 0's per-direction
    noise level), ``lambda_min_clipped`` (drops the timesteps where any direction's lambda
    is below it), ``timestep_spacing``, ``steps_offset``, the prediction types,
    thresholding, ``rescale_betas_zero_snr`` and ``variance_type`` (the learned types: the
    step drops the output's variance half). ``clip_sample`` and ``clip_sample_range`` (off
    by default: stock DPM-Solver has no clipping) are the core's x_0 clipping, so that a
    clipping DDPM config keeps clipping here. ``anchor_x0`` and ``anchor_x0_scaled`` (not
    stock's; off by default) are the core's anchored x_0 rules, ``--x0 clip-anchor`` and
    ``clip-anchor-scaled``: each step starts from x_t moved by ``a_t`` times the clipped (or
    thresholded) x0hat minus x0hat (scaled: times the share of x_0 the step mixes in), which
    on weakly trained models decides what few steps give (docs/results/few-step-samplers).
    Everything else of the stock class is refused. At ``strength=0`` with the anchor off
    this is stock ``DPMSolverMultistepScheduler``, except in the third-order SDE step: there
    stock's second-difference coefficient has its 1/2 with the wrong sign (diffusers
    0.42.1), and this one is the ODE's weight under the SDE's kernel, as k-diffusion's
    ``dpmpp_3m_sde``.
    """

    _BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
    _KIND = "dpmsolver"
    _ISOTROPIC = ("sigmas", "alpha_t", "sigma_t", "lambda_t")  # stock's, one level per t

    def __getattr__(self, name: str) -> Any:
        """Stock's isotropic noise levels are absent, as for any unknown name (``hasattr``
        stays False), but the error says why and where the per-direction levels are."""
        if name in type(self)._ISOTROPIC:
            raise AttributeError(
                f"{type(self).__name__} has no {name}: stock's is one noise level per "
                "timestep, and the squeezed process has one per direction; read "
                "scheduler.process.sigma_table() (per-direction sigma_t,i), "
                "scheduler.process.alphas_cumprod and scheduler.process.log_snr_table()"
            )
        return super().__getattr__(name)

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -math.inf,
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        anchor_x0: bool = False,
        anchor_x0_scaled: bool = False,
        variant: str = "sdm",
        strength: float | list[float] = 0.0,
        profile: str = "beta",
        target: str | None = None,
        basis: str = "channel",
        basis_config: dict | None = None,
        direction: list[float] | None = None,
        num_channels: int = DEFAULT_NUM_CHANNELS,
        image_shape: list[int] | None = None,
        cutoffs: list[float] | None = None,
    ) -> None:
        """Stock's keys in stock's order (diffusers' register_to_config records each one, so
        the signature is long by design); :meth:`_check` refuses what the core cannot honour.
        What each key does here is in the class docstring and docs/diffusers.md."""
        self._setup()
        self._restart()

    def _check(self) -> None:
        """Refuse what the core cannot honour (the class docstring says what each key does)."""
        cfg = self.config
        require(
            "algorithm_type",
            cfg.algorithm_type,
            algorithm_types(),
            f"{_NOT_IN_CORE} (stock also maps 'deis' to 'dpmsolver++' silently)",
        )
        require("solver_order", cfg.solver_order, (1, 2, 3), _NOT_IN_CORE)
        require(
            "solver_type",
            cfg.solver_type,
            ("midpoint", "heun"),
            "stock maps 'logrho', 'bh1' and 'bh2' to 'midpoint' silently",
        )
        require("final_sigmas_type", cfg.final_sigmas_type, ("zero", "sigma_min"))
        require(
            "variance_type",
            cfg.variance_type,
            _NO_VARIANCE + _LEARNED,
            "use None or a fixed type for a model without a variance, 'learned' or "
            "'learned_range' for one whose output holds a variance after the mean",
        )
        for flag, why in _REFUSED_FLAGS.items():
            require(flag, cfg[flag], (False,), why)
        require("flow_shift", cfg.flow_shift, (1.0,), "it shifts flow sigmas, which are refused")
        require(
            "time_shift_type",
            cfg.time_shift_type,
            ("exponential",),
            "it shifts the sigmas of dynamic shifting, which is refused",
        )
        for flag in ("anchor_x0", "anchor_x0_scaled"):
            require(flag, cfg[flag], (False, True))
        if cfg.anchor_x0 and not (cfg.clip_sample or cfg.thresholding):
            raise ValueError(
                "anchor_x0=True re-anchors each step at the clipped x_0, but this config does "
                "not clip: set clip_sample=True (or thresholding=True)"
            )
        if cfg.anchor_x0_scaled and not cfg.anchor_x0:
            raise ValueError(
                "anchor_x0_scaled=True scales the anchor of anchor_x0: set anchor_x0=True too"
            )

    def _sampler_keys(self) -> dict[str, Any]:
        """``solver_order=1`` runs the order-2 sampler with every step first order (stock's
        rule, :meth:`step`), so it matches that sampler's ``solver_order``."""
        return {**self.config, "solver_order": max(2, self.config.solver_order)}

    def _rebuild(self, steps: int | None, timesteps: Tensor) -> None:
        """The shared rebuild; the solver keeps its history, with the new ``solver_type``."""
        super()._rebuild(steps, timesteps)
        self._state.update(self._solver_options())

    def _make_process(self, basis: Basis) -> SqueezedDiffusion:
        """The process, with stock DPM-Solver's terminal fix: a zero-terminal-SNR schedule's
        ``abar_T = 0`` becomes 2**-24, so that lambda stays finite (sampling and noising)."""
        proc = super()._make_process(basis)
        if self.config.rescale_betas_zero_snr:
            proc.alphas_cumprod[-1] = 2.0**-24
        return proc

    # -- timesteps --------------------------------------------------------------------
    def default_inference_steps(self) -> int:
        """The most steps that repeat no timestep: one fewer than the timesteps kept."""
        return max(1, self._last_timestep() - 1)

    def _last_timestep(self) -> int:
        """Training timesteps kept by ``lambda_min_clipped``: those where every direction's
        half-log-SNR is at least the threshold (the isotropic one at strength 0, as stock)."""
        lam = (0.5 * self._process.log_snr_table()).amin(dim=1)
        return self.config.num_train_timesteps - int((lam < self.config.lambda_min_clipped).sum())

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        mu: float | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """``num_inference_steps`` with ``timestep_spacing``, or custom ``timesteps``; resets
        the solver's history."""
        if mu is not None:
            raise ValueError(f"mu={mu} is dynamic shifting, which this scheduler refuses")
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps and timesteps")
        if timesteps is None:
            cfg = self.config
            timesteps = solver_timesteps(
                cfg.num_train_timesteps,
                step_count(num_inference_steps),
                cfg.timestep_spacing,
                cfg.steps_offset,
                self._last_timestep(),
            )
        self._use_timesteps([int(t) for t in timesteps], device)
        self.num_inference_steps = len(self.timesteps)
        self._restart()

    def _solver_options(self) -> dict[str, Any]:
        """The config keys the core's DPM-Solver++ step reads from its ``state``."""
        cfg = self.config
        return {
            "solver_type": cfg.solver_type,
            "max_order": cfg.solver_order,
            "lower_order_final": cfg.lower_order_final,
            "euler_at_final": cfg.euler_at_final,
        }

    def _restart(self) -> None:
        """Forget the solver's history and position, as stock does on set_timesteps."""
        self._state: dict = self._solver_options()
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @property
    def step_index(self) -> int | None:
        """Index of the next step in ``timesteps`` (None before the first step)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """Where the first step starts (set by a pipeline with :meth:`set_begin_index`)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int | None = 0) -> None:
        self._begin_index = begin_index

    def index_for_timestep(self, timestep: int | Tensor) -> int:
        """Stock's rule: the second match if ``timestep`` appears twice, the last step if
        it is not scheduled."""
        found = (self.timesteps == torch.as_tensor(timestep).to(self.timesteps.device)).nonzero()
        if len(found) == 0:
            return len(self.timesteps) - 1
        return int(found[1 if len(found) > 1 else 0])

    def previous_timestep(self, timestep: int | Tensor) -> int:
        """Where the step at ``timestep`` lands (see :meth:`_landing`)."""
        return self._landing(self.index_for_timestep(timestep))

    def _landing(self, index: int) -> int:
        """The next scheduled timestep; after the last, the data
        (``final_sigmas_type='zero'``) or timestep 0's noise level ('sigma_min')."""
        if index + 1 < len(self.timesteps):
            return int(self.timesteps[index + 1])
        return -1 if self.config.final_sigmas_type == "zero" else 0

    # -- stepping ---------------------------------------------------------------------
    def _mean_of(self, model_output: Tensor, sample: Tensor) -> Tensor:
        """The model output without its learned variance, if ``variance_type`` says it has
        one (stock takes the first 3 channels, which is this for images; its other prediction
        types then fail); a channel count that disagrees with ``variance_type`` raises."""
        channels, got = sample.shape[1], model_output.shape[1]
        learned = self.config.variance_type in _LEARNED
        if got == (2 if learned else 1) * channels:
            return model_output[:, :channels] if learned else model_output
        fix = (
            "set variance_type='learned_range' (or 'learned') for an output of mean then variance"
            if got == 2 * channels
            else f"a model without a variance needs variance_type=None (output: {channels})"
        )
        raise ValueError(
            f"the model output has {got} channels for a {channels}-channel sample under "
            f"variance_type={self.config.variance_type!r}; {fix}"
        )

    def _x0_rule(self, reuse: bool = False) -> X0Rule:
        """The shared rule plus the anchor keys."""
        cfg = self.config
        return dataclasses.replace(
            super()._x0_rule(reuse), anchor=cfg.anchor_x0, anchor_scaled=cfg.anchor_x0_scaled
        )

    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        generator: torch.Generator | None = None,
        variance_noise: Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor]:
        """One multistep update, as stock: the first call finds ``timestep`` in the schedule
        (or starts at ``begin_index``), later calls follow the schedule. The SDE form draws
        its noise from ``generator`` (or takes ``variance_noise``); the ODE form draws none,
        accepts ``generator`` unused, as stock, and refuses ``variance_noise`` (the
        registered sampler's step decides both)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before step(), as with stock DPM-Solver")
        model_output = self._mean_of(model_output, sample)  # before any state changes
        if self._step_index is None:
            self._step_index = (
                self.index_for_timestep(timestep)
                if self._begin_index is None
                else self._begin_index
            )
        index = self._step_index
        self._state.update(index=index, count=len(self.timesteps))  # for stock's order rule
        # In float32 at least, whatever the pipeline's dtype (stock upcasts the sample; here
        # the model output and the solver's x_0 history too, whose half-precision rounding
        # stock carries from step to step; float64 stays float64, which stock rounds to
        # float32), returned in the dtype stock returns.
        dtype = self._x0_dtype(sample, model_output)
        work = torch.promote_types(
            torch.promote_types(sample.dtype, model_output.dtype), torch.float32
        )
        out = self._sampler.step(
            self._on(sample.device),
            model_output.to(work),
            sample.to(work),
            int(self.timesteps[index]),
            self._landing(index),
            generator=generator,
            clip=self._x0_rule(),
            noise=None if variance_noise is None else variance_noise.to(work),
            state=self._state,
        )
        self._step_index += 1
        prev_sample = out.prev_sample.to(dtype)
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)
