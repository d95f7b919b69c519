"""The squeezed diffusion process: schedule, squeeze operator, forward noising.

Per direction i of the basis, ``x_t,i = a_t x_0,i + sigma_t,i eps_i`` with
``a_t = sqrt(abar_t)`` and ``sigma_t,i = sqrt(1 - abar_t) c_i(t)``. The squeeze
operator ``S_t`` multiplies direction i by ``c_i(t)``:

- SDM: ``c_group = exp(-s_t)``, ``c_rest = 1``;
- HDM: ``c_group = exp(-s_t)``, ``c_rest = exp(sum_k d_k s_t,k / d_rest)`` so
  that ``det S_t = 1`` (for the channel basis: ``exp(s_t / (C - 1))``).

``s_t = strength * u(t)`` with the time profile ``u`` (``beta``: beta_t / max
beta, the paper; ``constant``; ``linear``). Positive strength squeezes (less
noise along the basis groups), negative antisqueezes.

What the network predicts (:data:`PREDICTION_TYPES`, diffusers' ``prediction_type``
vocabulary): ``epsilon``, the noise actually added, ``S_t eps`` (the paper's target; at
strength 0 diffusers' epsilon); ``unit_epsilon``, ``eps`` before squeezing; ``sample``,
``x_0``; ``v_prediction``, ``v = a_t S_t eps - sigma_t x_0`` with ``sigma_t = sqrt(1 - abar_t)``,
so that ``x_0 = a_t x_t - sigma_t v`` and ``S_t eps = sigma_t x_t + a_t v`` hold exactly
(``a_t^2 + sigma_t^2 = 1``). Each is a linear function of ``x_t`` and of every other.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from .basis import Basis, ChannelBasis
from .registry import SAMPLERS
from .values import check_count, is_integer, is_number

Tensor = torch.Tensor

VARIANTS = ("isotropic", "sdm", "hdm")
PROFILES = ("beta", "constant", "linear")
PREDICTION_TYPES = {
    "epsilon": "the noise added, S_t eps (the paper's target; diffusers' epsilon at s = 0)",
    "unit_epsilon": "eps before squeezing",
    "sample": "x_0",
    "v_prediction": "a_t S_t eps - sigma_t x_0",
}
TARGETS = tuple(PREDICTION_TYPES)
_LEGACY_TARGETS = {"squeezed": "epsilon", "unit": "unit_epsilon"}  # 0.1.0's names
BETA_SCHEDULES = (
    "linear",
    "scaled_linear",
    "squaredcos_cap_v2",
    "sigmoid",
    "laplace",
)  # DDPMScheduler's


def canonical_prediction_type(name: str) -> str:
    """The canonical prediction type for ``name`` (0.1.0's 'squeezed' and 'unit' included)."""
    return _choice("prediction_type", _LEGACY_TARGETS.get(name, name), TARGETS)


def merge_target(
    prediction_type: str | None, target: str | None, unset: str | None = None
) -> str | None:
    """The canonical prediction type given diffusers' ``prediction_type`` and 0.1.0's
    ``target`` (the process, the CLI and saved configs accept both): either one alone, or
    both when they agree. ``unset`` is the ``prediction_type`` that means "not given" (a
    constructor's default); ``None`` when neither is given."""
    given = None if prediction_type in (None, unset) else canonical_prediction_type(prediction_type)
    if target is None:
        return canonical_prediction_type(prediction_type) if prediction_type else None
    legacy = canonical_prediction_type(target)
    if given is not None and given != legacy:
        raise ValueError(
            f"target {target!r} (0.1.0's name) contradicts prediction_type {prediction_type!r}; "
            "give only prediction_type"
        )
    return legacy


def _choice(name: str, value: str, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(options)}")
    return value


def time_profile(profile: str, betas: Tensor) -> Tensor:
    """``u(t)`` in [0, 1] for t = 0..T-1 (float64): how much of the strength applies at t."""
    num = betas.numel()
    if profile == "beta":
        return betas / betas.max()
    if profile == "constant":
        return torch.ones(num, dtype=torch.float64)
    if profile == "linear":
        return torch.arange(1, num + 1, dtype=torch.float64) / num
    raise ValueError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")


class SqueezedDiffusion:
    """Diffusion with noise ``sqrt(1 - abar_t) S_t eps``; the network predicts ``prediction_type``.

    All tables are per training timestep t = 0..T-1 (diffusers' indexing: t = 0
    is the first noising step). Group scales ``c`` are ``[T, K]`` and the rest's
    scale ``c_rest`` is ``[T]``; per-direction noise levels are :meth:`sigma`.
    """

    def __init__(
        self,
        basis: Basis | None = None,
        variant: str = "sdm",
        strength: float | Sequence[float] | Tensor = 0.0,
        profile: str = "beta",
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        prediction_type: str = "epsilon",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        trained_betas: Sequence[float] | None = None,
        rescale_betas_zero_snr: bool = False,
        target: str | None = None,
    ) -> None:
        """``target`` is 0.1.0's name of ``prediction_type`` ('squeezed', 'unit'); the beta
        schedule's arguments are diffusers' (``trained_betas`` overrides the others)."""
        self.prediction_type = merge_target(prediction_type, target, unset="epsilon")
        if self.prediction_type is None:  # add_noise and the samplers would read it as v
            raise ValueError(
                f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got None"
            )
        if not isinstance(rescale_betas_zero_snr, bool):
            raise ValueError(
                f"rescale_betas_zero_snr must be True or False, got {rescale_betas_zero_snr!r}"
            )
        self.variant = _choice("variant", variant, VARIANTS)
        self.profile = _choice("profile", profile, PROFILES)
        self.beta_schedule = _choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        self.num_train_timesteps = check_count(num_train_timesteps, "num_train_timesteps")
        for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not is_number(value):  # else a raw torch error; the range: the betas' check
                raise ValueError(f"{name} must be a number, got {value!r}")
        if basis is not None and not isinstance(basis, Basis):
            raise ValueError(
                f"basis must be a Basis (e.g. ChannelBasis.luminance(3), or fit_basis(...)), "
                f"got {basis!r}"
            )
        self.basis = basis if basis is not None else ChannelBasis.luminance(3)
        self.strength = self._check_strength(strength)

        # diffusers' own float32 schedule, so that s = 0 reproduces its schedulers exactly.
        ref = DDPMScheduler(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )  # fmt: skip
        self.betas = ref.betas.double()
        self.alphas_cumprod = ref.alphas_cumprod.double()
        if len(self.betas) != num_train_timesteps:  # diffusers takes trained_betas' length
            raise ValueError(
                f"trained_betas has {len(self.betas)} entries but num_train_timesteps is "
                f"{num_train_timesteps}; give as many"
            )
        if not ((self.betas >= 0) & (self.betas <= 1)).all():  # NaN fails both
            raise ValueError(
                "the betas must be finite numbers in [0, 1]; check beta_start, beta_end and "
                "trained_betas"
            )

        s_t = time_profile(self.profile, self.betas)[:, None] * self.strength[None, :]  # [T, K]
        self.log_c, self.log_c_rest = self._log_scales(s_t)
        self.c = self.log_c.exp()
        self.c_rest = self.log_c_rest.exp()
        # Decided once, not per call: squeeze and add_noise run at every training step.
        self._unit_rest = bool((self.log_c_rest == 0).all())  # SDM: the basis skips rest * x
        self._isotropic = self._unit_rest and bool((self.log_c == 0).all())
        self._validate()
        # The one cache of this process' device tensors: the per-timestep table below and the
        # samplers' per-step coefficients (see :meth:`cached`).
        self._cache: dict[tuple, Any] = {}

    @classmethod
    def from_fields(cls, basis: Basis, fields: Mapping[str, Any]) -> SqueezedDiffusion:
        """The process described by ``fields``: any mapping that holds this constructor's
        arguments by name (a training config, a scheduler config), other keys ignored.

        The one factory shared by runs and schedulers, so both build the same process.
        """
        names = list(inspect.signature(cls.__init__).parameters)[2:]  # after self, basis
        return cls(basis, **{k: fields[k] for k in names if k in fields})

    # -- construction helpers -----------------------------------------------------
    def _check_strength(self, strength: float | Sequence[float] | Tensor) -> Tensor:
        k = self.basis.num_groups
        flat = strength if isinstance(strength, (list, tuple)) else [strength]
        if any(isinstance(v, bool) for v in flat):  # True would read as 1
            raise ValueError(f"strength must be a number or a list of numbers, got {strength!r}")
        try:
            s = torch.as_tensor(strength, dtype=torch.float64).flatten()
        except (TypeError, ValueError):
            raise ValueError(
                f"strength must be a number or a list of numbers, got {strength!r}"
            ) from None
        if s.numel() == 1:
            s = s.expand(k).clone()
        if s.numel() != k:
            raise ValueError(f"strength has {s.numel()} values but the basis has {k} groups")
        if not torch.isfinite(s).all():
            raise ValueError(f"strength must be finite, got {s.tolist()}")
        if self.variant == "isotropic" and (s != 0).any():  # would be dropped without a word
            raise ValueError(
                f"strength {s.tolist()} with variant isotropic, whose noise has no squeezing: "
                "give strength 0 or choose variant sdm/hdm"
            )
        return s

    def _log_scales(self, s_t: Tensor) -> tuple[Tensor, Tensor]:
        log_c = -s_t
        log_rest = torch.zeros(s_t.shape[0], dtype=torch.float64)
        if self.variant == "hdm" and self.strength.abs().sum() > 0:
            rest_dim = self.basis.rest_dim
            if rest_dim <= 0:
                raise ValueError(
                    f"HDM needs directions outside the squeezed groups to compensate, but "
                    f"{type(self.basis).__name__} leaves none (for a channel basis: C >= 2 channels); "
                    "use variant 'sdm'"
                )
            dims = torch.tensor(self.basis.group_dims, dtype=torch.float64)
            log_rest = (s_t * dims).sum(1) / rest_dim
        return log_c, log_rest

    def _validate(self) -> None:
        """Every direction's transition variance ``q_t,i`` must be >= 0 (SNR falls with t),
        and every noise variance must fit in float32, what training and sampling compute in
        (a strength far below 0 grows it as exp(2 |s|))."""
        sig2 = self.sigma_table() ** 2  # [T, K + 1]
        alphas = (1.0 - self.betas)[1:, None]
        q = sig2[1:] - alphas * sig2[:-1]
        bad = q < -1e-12 * sig2[1:]  # False where an overflow made q NaN: caught below
        if bad.any():
            t, i = (int(v) for v in bad.nonzero()[0])
            problem = f"transition variance q_t = {float(q[t, i]):.3g} < 0"
            self._refuse(f"an invalid {self.variant.upper()} process: {problem}", t + 1, i,
                         "; use a smaller |strength| or a smoother profile")  # fmt: skip
        too_big = ~(sig2 <= torch.finfo(torch.float32).max)  # inf and NaN too
        if too_big.any():
            t, i = (int(v) for v in too_big.nonzero()[0])
            std = f"{self.variant.upper()} noise std of {float(sig2[t, i].sqrt()):.3g}"
            self._refuse(f"a {std}", t, i, ", whose square overflows float32; use a strength "
                         "closer to 0")  # fmt: skip

    def _refuse(self, problem: str, t: int, direction: int, fix: str) -> NoReturn:
        """The one-line error of an invalid strength: what fails, where, and the fix."""
        raise ValueError(
            f"strength {self._strength_repr()} with the {self.profile!r} profile gives "
            f"{problem} at t={t} along the {self.basis.group_names()[direction]}{fix}"
        )

    def _strength_repr(self) -> str:
        s = self.strength.tolist()
        return f"{s[0]:g}" if len(set(s)) == 1 else str([round(v, 6) for v in s])

    # -- tables -------------------------------------------------------------------
    @property
    def is_isotropic(self) -> bool:
        return self._isotropic

    def sigma_table(self) -> Tensor:
        """Per-direction noise std ``[T, K + 1]`` (groups, then the rest), float64."""
        scales = torch.cat([self.c, self.c_rest[:, None]], dim=1)
        return (1.0 - self.alphas_cumprod).sqrt()[:, None] * scales

    def sigma(self, t: int | Tensor) -> Tensor:
        """Per-direction noise std at timestep(s) ``t``: ``[..., K + 1]``."""
        self._check_timesteps(t)
        return self.sigma_table()[torch.as_tensor(t, dtype=torch.long)]

    def _check_timesteps(self, t: int | Tensor, batch: int | None = None) -> None:
        """``t`` is an integer timestep (in range: free to check on the host) or an integer
        tensor with one per sample (its range would cost a device sync at every step, so
        indexing checks it): a float would be truncated, a bool read as 0/1, a wrong length
        broadcast."""
        big_t = self.num_train_timesteps
        if isinstance(t, Tensor):
            if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
                raise ValueError(f"timesteps must be integers, got a {t.dtype} tensor")
            if batch is not None and t.numel() not in (1, batch):
                raise ValueError(
                    f"{t.numel()} timesteps for a batch of {batch}: give one, or one per sample"
                )
        elif not is_integer(t) or not 0 <= t < big_t:
            raise ValueError(f"a timestep must be an integer in [0, {big_t}), got {t!r}")

    def log_snr_table(self) -> Tensor:
        """Per-direction log signal-to-noise ratio ``[T, K + 1]`` (what a strength does)."""
        return (self.alphas_cumprod[:, None] / self.sigma_table() ** 2).log()

    def cached(self, key: tuple, like: Tensor, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per ``key`` and ``like``'s device and dtype.

        Every training step gathers from the same table and every batch of a sampling run
        repeats the same steps; their float64 maths on tiny tensors costs more than the
        step's own tensor work at small batches, and would otherwise cross from host to
        device at every step.
        """
        full = (*key, like.device, like.dtype)
        if full not in self._cache:
            self._cache[full] = make()
        return self._cache[full]

    def _table(self, like: Tensor) -> Tensor:
        """``[T, 3 + K]`` on ``like``'s device: sqrt abar, sqrt(1 - abar), c, c_rest.

        One row per timestep, so a batch's factors are a single gather.
        """

        def make() -> Tensor:
            levels = torch.stack(
                [self.alphas_cumprod.sqrt(), (1.0 - self.alphas_cumprod).sqrt()], 1
            )
            table = torch.cat([levels, self.c, self.c_rest[:, None]], dim=1)
            return table.to(device=like.device, dtype=like.dtype)

        return self.cached(("table",), like, make)

    def to(self, device: torch.device | str) -> SqueezedDiffusion:
        """Move the basis to ``device`` (tables follow lazily); returns ``self``."""
        self.basis.to(device)
        return self

    # -- the squeeze operator -----------------------------------------------------
    def _rows(self, t: int | Tensor, x: Tensor) -> tuple[Tensor, ...]:
        """Per-sample ``[a_t, s_t, c_t (K columns), c_rest_t]`` of timestep(s) ``t`` for ``x``.

        ``t`` is an int or one timestep per sample; one gather, then views.
        """
        self.basis.check_shape(tuple(x.shape))
        self._check_timesteps(t, x.shape[0])
        t = torch.as_tensor(t, device=x.device, dtype=torch.long)
        rows = self._table(x).index_select(0, t.reshape(-1))
        return rows.split([1, 1, self.basis.num_groups, 1], dim=1)

    def _scale(self, x: Tensor, group: Tensor, rest: Tensor, inverse: bool) -> Tensor:
        """``S_t x``, or ``S_t^{-1} x``: the squeeze is diagonal, so its inverse is ``1 / c``."""
        if inverse:
            group, rest = group.reciprocal(), rest.reciprocal()
        return self.basis.scale(x, group, 1.0 if self._unit_rest else rest)

    def squeeze(self, x: Tensor, t: int | Tensor) -> Tensor:
        """``S_t x`` for a batch; ``t`` is an int or one timestep per sample."""
        return x if self.is_isotropic else self._scale(x, *self._rows(t, x)[2:], inverse=False)

    def unsqueeze(self, x: Tensor, t: int | Tensor) -> Tensor:
        """``S_t^{-1} x``: the squeeze is diagonal, so its inverse is ``1 / c``."""
        return x if self.is_isotropic else self._scale(x, *self._rows(t, x)[2:], inverse=True)

    def add_noise(self, x0: Tensor, noise: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor]:
        """Noisy sample ``a_t x0 + sqrt(1 - abar_t) S_t noise`` and the training target
        (what the model learns to predict: see the module docstring).

        Besides the squeeze, two passes over the batch (``a_t x0``, then the noise added in
        place) and one gather of the per-sample factors.
        """
        if noise.shape != x0.shape:  # broadcasting would change the target's shape
            raise ValueError(f"noise has shape {tuple(noise.shape)}, x0 {tuple(x0.shape)}")
        a, s, group, rest = self._rows(t, x0)
        shaped = noise if self.is_isotropic else self._scale(noise, group, rest, inverse=False)
        view = (-1,) + (1,) * (x0.ndim - 1)
        a, s = a.view(view), s.view(view)
        x_t = (a * x0).addcmul_(s, shaped)
        kind = self.prediction_type
        if kind == "epsilon":
            return x_t, shaped
        if kind == "unit_epsilon":
            return x_t, noise
        if kind == "sample":
            return x_t, x0
        return x_t, (a * shaped).sub_(s * x0)  # v_prediction

    def prior(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``x_T = S_T eps``: the squeezed prior every sampler starts from."""
        self.basis.check_shape(tuple(shape))
        eps = randn_tensor(
            tuple(shape), generator=generator, device=torch.device(device or "cpu"), dtype=dtype
        )
        return self.squeeze(eps, self.num_train_timesteps - 1)

    # -- sampling -----------------------------------------------------------------
    def sample(
        self,
        model: Callable[[Tensor, Tensor], Tensor],
        shape: Sequence[int],
        num_steps: int = 50,
        sampler: str = "ddpm",
        **options: Any,
    ) -> Tensor:
        """Draw samples; ``model(x_t, t_batch)`` returns the predicted target.

        ``sampler`` names a registered sampler (``squeezed_diffusion.SAMPLERS``: ``ddpm``
        exact ancestral, ``ddim`` exact with ``eta``, ``ddpm-paper`` the reference
        heuristic, ...); ``options`` (``generator``, ``eta``, ``clip``, ``progress``,
        ``device``, ``callback``) are those of :func:`squeezed_diffusion.core.samplers.sample`.
        """
        return SAMPLERS.get(sampler).sample(self, model, shape, num_steps, **options)

    def __repr__(self) -> str:
        return (
            f"SqueezedDiffusion(variant={self.variant!r}, strength={self._strength_repr()}, "
            f"profile={self.profile!r}, prediction_type={self.prediction_type!r}, basis={self.basis!r}, "
            f"T={self.num_train_timesteps})"
        )
