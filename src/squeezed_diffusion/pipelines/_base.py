"""What the squeezed DDPM and DDIM schedulers share: config -> process, timesteps, noising.

A scheduler is a thin, serialisable face on :class:`SqueezedDiffusion`: its
config rebuilds the process through the same factory as a run
(``SqueezedDiffusion.from_fields``), and every formula (noising, prior, the steps)
is the core's. Any registered basis whose definition fits in a JSON config
(``Basis.to_config``) can be described here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers.utils import BaseOutput

from ..core import BASES, Basis, ChannelBasis, SqueezedDiffusion, load_basis
from ..core.samplers import StepFunction
from ..core.samplers import timesteps as leading_timesteps

Tensor = torch.Tensor
_S = TypeVar("_S", bound="SqueezedSchedulerMixin")


def basis_fields(basis: Basis) -> dict[str, Any]:
    """The scheduler config fields that rebuild ``basis``: its registry name and JSON config
    (a one-line error for bases too big for a config file, such as pixel PCA)."""
    return {"basis": basis.name, "basis_config": basis.to_config()}


def build_basis(
    basis: str,
    basis_config: dict[str, Any] | None,
    legacy: dict[str, Any],
) -> Basis:
    """The basis a scheduler config describes.

    ``legacy`` holds 0.1.0's spellings (``direction``, ``num_channels`` for the channel
    basis; ``image_shape``, ``cutoffs`` for DCT), accepted as a shorthand for
    ``basis_config``; without either, the channel basis is the luminance direction of
    ``num_channels`` channels.
    """
    cls = BASES.get(basis)
    given = {k: v for k, v in legacy.items() if v is not None and k != "num_channels"}
    if basis_config is not None and given:
        raise ValueError(f"give basis_config or {', '.join(given)}, not both")
    if basis_config is None and cls is ChannelBasis:
        direction = given.pop("direction", None)
        if given:
            raise ValueError(f"{', '.join(given)} belong to basis='dct', not 'channel'")
        if direction is None:
            return ChannelBasis.luminance(legacy["num_channels"])
        if len(direction) != legacy["num_channels"]:
            raise ValueError(
                f"direction has {len(direction)} entries but num_channels is {legacy['num_channels']}; "
                "pass num_channels=len(direction) (from_basis does this for you)"
            )
        basis_config = {"direction": direction}
    elif basis_config is None:
        if "direction" in given:
            raise ValueError(f"direction belongs to basis='channel', not {basis!r}")
        basis_config = given
    return cls.from_config(basis_config)


def _plain(value: Any) -> Any:
    """Tensors and tuples as lists, so that the config survives a JSON round trip unchanged."""
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


class SqueezedSchedulerMixin:
    """Config -> :class:`SqueezedDiffusion`, leading timesteps, noising and the prior.

    Config fields shared by both schedulers (defaults are diffusers' DDPM ones,
    so ``strength=0`` is the stock scheduler):

    - ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``:
      the beta schedule, as in diffusers;
    - ``variant`` ('sdm', 'hdm', 'isotropic'), ``strength`` (a number, or one
      per basis group), ``profile`` ('beta', 'constant', 'linear'), ``target``
      ('squeezed': the model predicts ``S_t eps``; 'unit': ``eps``): the process;
    - ``basis`` (a registered basis name) and ``basis_config`` (its JSON description,
      ``Basis.to_config()``; ``from_basis`` fills both). 0.1.0's shorthands still work:
      ``direction`` (None: the luminance direction of ``num_channels`` channels) for
      'channel', ``image_shape`` [C, H, W] and ``cutoffs`` for 'dct';
    - ``clip_sample``: clip the predicted x_0 to [-1, 1] (on, as in diffusers;
      ``SqueezedDiffusion.sample`` leaves it off for the exact samplers).

    Subclasses also derive from diffusers' ``SchedulerMixin, ConfigMixin`` (in their
    own module, where diffusers' pipeline loader looks for them), declare the config
    in a ``@register_to_config`` ``__init__``, call :meth:`_setup`, and wrap
    :meth:`_step` in diffusers' ``step`` signature.
    Until :meth:`set_timesteps` is called the schedule is all training timesteps,
    as in diffusers. Only "leading" spacing and the "fixed_small" posterior
    variance exist, which are diffusers' defaults.
    """

    order = 1
    init_noise_sigma = 1.0
    _SEQUENCE_FIELDS = ("strength", "direction", "image_shape", "cutoffs")
    _LEGACY_BASIS_FIELDS = ("direction", "num_channels", "image_shape", "cutoffs")

    def _setup(self) -> None:
        self.register_to_config(**{k: _plain(self.config[k]) for k in self._SEQUENCE_FIELDS})
        cfg = self.config
        legacy = {k: cfg[k] for k in self._LEGACY_BASIS_FIELDS}
        basis = build_basis(cfg.basis, cfg.basis_config, legacy)
        self.register_to_config(basis=basis.name)  # the canonical name ('pixel_pca' -> 'pca')
        self._process = SqueezedDiffusion.from_fields(basis, cfg)
        # diffusers' float32 tables, for code that reads them (e.g. SNR loss weighting).
        self.betas = self._process.betas.float()
        self.alphas_cumprod = self._process.alphas_cumprod.float()
        self.set_timesteps(cfg.num_train_timesteps)

    @classmethod
    def from_basis(cls: type[_S], basis: Basis | str | Path, **config: Any) -> _S:
        """A scheduler for a fitted basis (object or ``sqdm fit-basis`` file) plus other config."""
        if not isinstance(basis, Basis):
            basis = load_basis(basis)
        return cls(**basis_fields(basis), **config)

    @property
    def process(self) -> SqueezedDiffusion:
        """The core process every formula comes from."""
        return self._process

    def _on(self, device: torch.device | str) -> SqueezedDiffusion:
        """The process with its basis on ``device``: the scheduler follows the data, as diffusers' do."""
        return self._process.to(device)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        """Use ``num_inference_steps`` steps with diffusers' "leading" spacing."""
        pairs = leading_timesteps(self.config.num_train_timesteps, num_inference_steps)
        self.num_inference_steps = num_inference_steps
        self._previous = dict(pairs)
        self.timesteps = torch.tensor([t for t, _ in pairs], dtype=torch.long, device=device)
        if device is not None:
            self._on(device)

    def previous_timestep(self, timestep: int | Tensor) -> int:
        """The timestep a step from ``timestep`` lands on (negative: the data)."""
        t = int(timestep)
        if t not in self._previous:
            raise ValueError(
                f"timestep {t} is not in the schedule of {self.num_inference_steps} steps; "
                "step with the values of scheduler.timesteps after set_timesteps()"
            )
        return self._previous[t]

    def scale_model_input(self, sample: Tensor, timestep: int | Tensor | None = None) -> Tensor:
        """Identity: the model sees x_t unscaled (here for diffusers' interface)."""
        return sample

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``x_t = a_t x_0 + sqrt(1 - abar_t) S_t noise`` (the noisy sample only, like diffusers)."""
        return self._on(original_samples.device).add_noise(original_samples, noise, timesteps)[0]

    def training_target(self, noise: Tensor, timesteps: Tensor) -> Tensor:
        """What the model learns to predict: ``S_t noise`` (target 'squeezed') or ``noise`` ('unit')."""
        proc = self._on(noise.device)
        if proc.prediction_type not in ("epsilon", "unit_epsilon"):
            raise ValueError("training_target needs the clean samples for sample and v_prediction")
        return proc.squeeze(noise, timesteps) if proc.prediction_type == "epsilon" else noise

    def draw_prior(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | list[torch.Generator] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``x_T = S_T eps``: where sampling starts (isotropic noise would be the wrong prior)."""
        device = torch.device(device or "cpu")
        return self._on(device).prior(shape, generator=generator, device=device, dtype=dtype)

    def _step(
        self,
        step_fn: StepFunction,
        output_cls: type[BaseOutput],
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        *,
        generator: torch.Generator | list[torch.Generator] | None,
        eta: float,
        return_dict: bool,
    ) -> BaseOutput | tuple[Tensor, Tensor]:
        """One core step from ``timestep`` to its predecessor, in diffusers' output format."""
        out = step_fn(
            self._on(sample.device),
            model_output,
            sample,
            int(timestep),
            self.previous_timestep(timestep),
            generator=generator,
            eta=eta,
            clip=self.config.clip_sample,
        )
        return output_cls(**out._asdict()) if return_dict else tuple(out)
