"""What the squeezed schedulers share: config -> process, strict config loading, timesteps,
the x_0 rule, noising and the prior.

A scheduler is a thin, serialisable face on :class:`SqueezedDiffusion`: its config rebuilds
the process through the same factory as a run (``SqueezedDiffusion.from_fields``), and every
formula (noising, prior, the steps) is the core's. Any registered basis whose definition fits
in a JSON config (``Basis.to_config``) can be described here.

Config loading is strict (:meth:`SqueezedSchedulerMixin.extract_init_dict`): diffusers only
logs keys a class does not know and drops them, which would silently change what a saved
scheduler does. Here a key is either honoured or refused with a ``ValueError`` naming it.
"""

from __future__ import annotations

import copy
import inspect
import operator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import diffusers
import numpy as np
import torch
from diffusers.utils import BaseOutput

from ..core import BASES, Basis, ChannelBasis, SqueezedDiffusion, load_basis
from ..core.samplers import (
    SPACINGS,
    Sampler,
    X0Rule,
    sampler_for_scheduler,
    spaced_timesteps,
    x0_rule,
)
from ..core.values import check_count

Tensor = torch.Tensor
_S = TypeVar("_S", bound="SqueezedSchedulerMixin")

# The schedulers' default ``num_channels``: 0.1.0's luminance basis of RGB images.
DEFAULT_NUM_CHANNELS = 3
# DDPM's variance types that choose its ancestral noise and add no channel to the model output.
FIXED_VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")

# Every squeezed scheduler class, in definition order (filled by ``__init_subclass__``): their
# configs load into one another, like the stock schedulers named in ``_compatibles``.
SQUEEZED_SCHEDULERS: list[type[SqueezedSchedulerMixin]] = []


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
    built = cls.from_config(basis_config)
    channels = _channels(built)
    if legacy["num_channels"] not in (DEFAULT_NUM_CHANNELS, channels) and channels is not None:
        raise ValueError(
            f"num_channels={legacy['num_channels']} but the basis has {channels} channels; "
            f"pass num_channels={channels} or leave it out (the basis sets the channels)"
        )
    return built


def _channels(basis: Basis) -> int | None:
    """The image channels ``basis`` is built for: its ``channels`` (the channel basis), or the
    first entry of its ``image_shape`` (DCT, pixel PCA); None if it records neither."""
    if hasattr(basis, "channels"):
        return int(basis.channels)
    shape = getattr(basis, "image_shape", None)
    return None if shape is None else int(shape[0])


def config_defaults(cls: type) -> dict[str, Any]:
    """A scheduler class' config keys and their defaults: its ``__init__`` signature, which
    is what diffusers' ``register_to_config`` records."""
    params = inspect.signature(cls.__init__).parameters
    return {name: p.default for name, p in params.items() if name != "self"}


def require(key: str, value: Any, allowed: tuple[Any, ...], why: str = "") -> None:
    """Refuse a config value the scheduler cannot honour, naming the key and the reason."""
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        reason = f": {why}" if why else ""
        raise ValueError(f"{key}={value!r} is not supported{reason} (supported: {shown})")


def step_count(value: Any) -> Any:
    """A step count as stock takes it: a Python, numpy or 0-d tensor integer, as ``int``
    (None and anything else pass through, for the range checks to name)."""
    try:
        return operator.index(value)
    except TypeError:
        return value


def _plain(value: Any) -> Any:
    """Tensors, arrays and tuples as lists and numpy scalars as Python's, so that the config
    survives a JSON round trip."""
    if isinstance(value, Tensor | np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


def _stock_table(name: str) -> property:
    """Stock's table ``name``, which stock code may reassign: to the same values (moved to
    a device or cast to another float dtype, say) it is kept; to others it is refused, since
    the process, not the attribute, holds the noise levels the scheduler samples with."""

    def get(self: Any) -> Tensor:
        return self._tables[name]

    def set_(self: Any, value: Tensor) -> None:
        built = self._built_tables[name]  # float32, as constructed
        same = (
            isinstance(value, Tensor)
            and value.is_floating_point()
            and value.shape == built.shape
            and torch.equal(value.detach().cpu(), built.to(value.dtype))
        )
        if not same:
            raise AttributeError(
                f"{name} set to other values would not change the sampling (the process "
                "holds the noise levels); configure them instead: trained_betas=..., "
                "rescale_betas_zero_snr=True or beta_schedule=... in from_config(...)"
            )
        self._tables[name] = value

    return property(get, set_, doc=f"Stock's ``{name}`` table (float32 as built).")


class SqueezedSchedulerMixin:
    """Config -> :class:`SqueezedDiffusion`, strict loading, timesteps, noising and the prior.

    Config fields shared by all squeezed schedulers (defaults are diffusers', so
    ``strength=0`` is the stock scheduler):

    - the stock beta schedule, ``prediction_type``, ``timestep_spacing``, ``steps_offset``,
      ``rescale_betas_zero_snr``, and the x_0 rule (``clip_sample``, ``clip_sample_range``,
      ``thresholding``, ``dynamic_thresholding_ratio``, ``sample_max_value``);
    - ``variant`` ('sdm', 'hdm', 'isotropic'), ``strength`` (a number, or one per basis
      group) and ``profile`` ('beta', 'constant', 'linear'): the process;
      ``prediction_type`` adds 'unit_epsilon' (the model predicts ``eps`` before squeezing);
      0.1.0's ``target`` ('squeezed', 'unit') still loads and wins over
      ``prediction_type='epsilon'`` (the default); any other ``prediction_type`` that
      contradicts it raises;
    - ``basis`` (a registered basis name) and ``basis_config`` (its JSON description,
      ``Basis.to_config()``; ``from_basis`` fills both). 0.1.0's shorthands still work:
      ``direction`` (None: the luminance direction of ``num_channels`` channels) for
      'channel', ``image_shape`` [C, H, W] and ``cutoffs`` for 'dct'.

    Subclasses also derive from diffusers' ``SchedulerMixin, ConfigMixin`` (in their own
    module, where diffusers' pipeline loader looks for them), declare the config in a
    ``@register_to_config`` ``__init__`` that calls :meth:`_setup`, and implement
    ``set_timesteps``, ``step`` and ``previous_timestep``. Until ``set_timesteps`` is called
    the schedule is all training timesteps, as in diffusers.
    """

    order = 1
    init_noise_sigma = 1.0
    # The stock schedulers whose configs load into a squeezed one (diffusers' ``compatibles``).
    _compatibles: ClassVar[list[str]] = [
        "DDPMScheduler",
        "DDIMScheduler",
        "DPMSolverMultistepScheduler",
        "PNDMScheduler",  # Stable Diffusion 1.x's; diffusers' training scripts load it as DDPM
    ]
    _SEQUENCE_FIELDS = ("strength", "direction", "image_shape", "cutoffs", "trained_betas")
    _LEGACY_BASIS_FIELDS = ("direction", "num_channels", "image_shape", "cutoffs")
    # Beta schedules the stock counterpart accepts (None: every one the core accepts).
    _BETA_SCHEDULES: ClassVar[tuple[str, ...] | None] = None
    # The ``scheduler`` that registered samplers name to be run by this class (core/samplers.py).
    _KIND: ClassVar[str]
    # Non-default values of another scheduler's keys that ask nothing of this class, so that
    # loading a config drops them as it drops defaults (``extract_init_dict``).
    _ASK_NOTHING: ClassVar[dict[str, tuple[Any, ...]]] = {"skip_prk_steps": (True,)}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SQUEEZED_SCHEDULERS.append(cls)

    # -- config loading ---------------------------------------------------------------
    @classmethod
    def _get_compatibles(cls) -> list[type]:
        """The stock classes of ``_compatibles`` and every squeezed scheduler."""
        return [getattr(diffusers, name) for name in cls._compatibles] + SQUEEZED_SCHEDULERS

    @classmethod
    def extract_init_dict(
        cls, config_dict: dict[str, Any], **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """diffusers' config -> ``__init__`` arguments, without silently dropping anything.

        As in diffusers, keys a config left at their default (``_use_default_values``) are
        skipped and ``kwargs`` override the config. Then: this class' own keys are passed on
        (``__init__`` refuses the values it cannot honour); a key of another compatible
        scheduler (another algorithm's setting, such as DDPM's ``variance_type`` in a DDIM
        config) is dropped at that scheduler's default or a value in ``_ASK_NOTHING``, and
        kept aside for a round trip back, as diffusers does; at any other value it raises; a
        key no compatible scheduler has raises. "That scheduler" is the one a saved config
        names (``_class_name``); for a config that names none, the key must be at the default
        of every scheduler that has it (DDIM's and PNDM's ``set_alpha_to_one`` differ). A
        squeezed scheduler's config holds such keys as kept aside by an earlier load, at the
        default of some scheduler that has it; a ``kwargs`` override never counts as kept.
        """
        defaults = set(config_dict.get("_use_default_values", []))
        original = {
            k: v for k, v in config_dict.items() if k not in defaults and k != "_use_default_values"
        }
        given = {k: v for k, v in original.items() if not k.startswith("_")} | kwargs
        own = config_defaults(cls)
        others = {c.__name__: config_defaults(c) for c in cls._get_compatibles() if c is not cls}
        source = config_dict.get("_class_name")
        # a squeezed scheduler's config holds another's keys only as kept aside when loaded
        kept_aside = source in {c.__name__ for c in SQUEEZED_SCHEDULERS}
        for key, value in given.items():
            if key in own:
                continue
            owners = {name: keys[key] for name, keys in others.items() if key in keys}
            if not owners:
                raise ValueError(
                    f"unknown config key {key!r} for {cls.__name__} (a config of a scheduler "
                    f"that is not one of {', '.join(others)}?); remove it"
                )
            asks_nothing = value in cls._ASK_NOTHING.get(key, ())
            # kept aside at the default of the scheduler it came from, which the saved config
            # no longer names: any owner's default will do; another value was put there
            # since, and an override is checked as any other
            from_saved = kept_aside and source not in owners and key not in kwargs
            if from_saved and (asks_nothing or any(value == d for d in owners.values())):
                continue
            defaults = [owners[source]] if source in owners else list(owners.values())
            if any(value != d for d in defaults) and not asks_nothing:
                agreed = all(d == defaults[0] for d in defaults)
                raise ValueError(
                    f"{key}={value!r} is a setting of {' / '.join(owners)} that {cls.__name__} "
                    "cannot honour; remove it from the config"
                    + (f" (at its default, {defaults[0]!r}, it is dropped)" if agreed else "")
                )
        init = {k: v for k, v in given.items() if k in own}
        hidden = {k: v for k, v in original.items() if k not in init}
        return init, {}, hidden

    # -- construction -----------------------------------------------------------------
    def _check(self) -> None:
        """Refuse the config values this class cannot honour (the shared ones: :meth:`_setup`)."""

    def _setup(self) -> None:
        """Check and normalise the config, build the basis and the process, pick the
        registered sampler the config asks for, reset the schedule."""
        self._built = False  # register_to_config below is part of the build
        self._check()
        switches = [k for k, v in config_defaults(type(self)).items() if isinstance(v, bool)]
        plain = (*self._SEQUENCE_FIELDS, *switches)  # numpy's bools taken, as stock takes them
        self.register_to_config(**{k: _plain(self.config[k]) for k in plain})
        cfg = self.config
        for key in switches:  # "no" would read as True
            if not isinstance(cfg[key], bool):
                raise ValueError(f"{key} must be True or False, got {cfg[key]!r}")
        self._x0_rule()  # its numbers checked now, not at the first step
        if self._BETA_SCHEDULES is not None:
            require(
                "beta_schedule",
                cfg.beta_schedule,
                self._BETA_SCHEDULES,
                f"the stock {type(self).__name__.replace('Squeezed', '')} refuses it",
            )
        require("timestep_spacing", cfg.timestep_spacing, SPACINGS)
        check_count(cfg.steps_offset, "steps_offset", 0)
        betas = cfg.trained_betas
        big_t = cfg.num_train_timesteps
        if betas is not None and len(betas) != big_t:  # stock: IndexError in step, or unused
            fix = f"trained_betas[:{big_t}] (all stock uses) or " if len(betas) > big_t else ""
            raise ValueError(
                f"trained_betas has {len(betas)} entries but num_train_timesteps is {big_t}; "
                f"pass {fix}num_train_timesteps={len(betas)}"
            )
        legacy = {k: cfg[k] for k in self._LEGACY_BASIS_FIELDS}
        basis = build_basis(cfg.basis, cfg.basis_config, legacy)
        self.register_to_config(basis=basis.name)  # the canonical name ('pixel_pca' -> 'pca')
        self._process = self._make_process(basis)
        self._sampler: Sampler = sampler_for_scheduler(self._KIND, self._sampler_keys())
        # diffusers' float32 tables, for code that reads them (e.g. SNR loss weighting).
        betas = self._process.betas.float()
        self._built_tables = {"betas": betas, "alphas": 1.0 - betas,
                              "alphas_cumprod": self._process.alphas_cumprod.float()}  # fmt: skip
        self._tables = dict(self._built_tables)
        self.num_inference_steps: int | None = None
        self._use_timesteps(list(range(cfg.num_train_timesteps - 1, -1, -1)))
        self._built = True

    def register_to_config(self, **kwargs: Any) -> None:
        """diffusers' ``register_to_config``; a change of this class' keys after construction
        (diffusers' training scripts set ``prediction_type`` so) rebuilds the scheduler, with
        the same checks, so that it does what ``.config`` says, as stock schedulers, which
        read their config at each step. A value it refuses leaves the config as it was. A
        changed key leaves ``_use_default_values``, so that ``from_config(scheduler.config)``
        keeps the change (stock's drops it there, while a save and load keeps it). Other keys
        pass the checks of config loading (:meth:`extract_init_dict`): another scheduler's
        setting at its default is kept aside, anything else raises."""
        if not getattr(self, "_built", False):  # diffusers' own call, before __init__'s body
            super().register_to_config(**kwargs)  # type: ignore[misc]
            return
        type(self).extract_init_dict(kwargs)  # raises on a key this class would not load
        if not kwargs.keys() & config_defaults(type(self)):
            super().register_to_config(**kwargs)  # type: ignore[misc]  # kept aside, as loading
            return
        before, schedule = self._internal_dict, (self.num_inference_steps, self.timesteps)
        if "_use_default_values" in self.config:
            defaults = [k for k in self.config["_use_default_values"] if k not in kwargs]
            kwargs = {**kwargs, "_use_default_values": defaults}
        super().register_to_config(**kwargs)  # type: ignore[misc]
        try:
            self._rebuild(*schedule)
        except Exception:
            self._internal_dict = before
            self._rebuild(*schedule)
            raise

    def _rebuild(self, steps: int | None, timesteps: Tensor) -> None:
        """:meth:`_setup` again, keeping the schedule ``set_timesteps`` made (``steps`` of
        ``timesteps``), as stock does until the next ``set_timesteps``."""
        self._setup()
        if steps is not None:
            self._use_timesteps(timesteps.tolist(), timesteps.device)
            self.num_inference_steps = steps

    def _make_process(self, basis: Basis) -> SqueezedDiffusion:
        return SqueezedDiffusion.from_fields(basis, self.config)

    @classmethod
    def from_basis(cls: type[_S], basis: Basis | str | Path, **config: Any) -> _S:
        """A scheduler for a fitted basis (object or ``sqdm fit-basis`` file) plus other config."""
        if not isinstance(basis, Basis):
            basis = load_basis(basis)
        return cls(**basis_fields(basis), **config)

    betas = _stock_table("betas")
    alphas = _stock_table("alphas")
    alphas_cumprod = _stock_table("alphas_cumprod")

    @property
    def process(self) -> SqueezedDiffusion:
        """The core process every formula comes from."""
        return self._process

    def _on(self, device: torch.device | str) -> SqueezedDiffusion:
        """The process with its basis on ``device``: the scheduler follows the data, as diffusers' do."""
        return self._process.to(device)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # -- timesteps --------------------------------------------------------------------
    def default_inference_steps(self) -> int:
        """Steps a pipeline takes when given none: every training timestep (stock
        DDPMPipeline's 1000)."""
        return self.config.num_train_timesteps

    def _spaced_timesteps(self, num_inference_steps: int) -> list[int]:
        """DDPM's and DDIM's schedule: ``timestep_spacing``, with ``steps_offset`` added to
        "leading" timesteps only (stock ignores it for the other spacings, and so does this)."""
        cfg = self.config
        return spaced_timesteps(
            cfg.num_train_timesteps, num_inference_steps, cfg.timestep_spacing, cfg.steps_offset
        )

    def _use_timesteps(
        self, timesteps: list[int], device: str | torch.device | None = None
    ) -> None:
        """Make ``timesteps`` the schedule, after checking each is a training timestep."""
        big_t = self.config.num_train_timesteps
        if any(not 0 <= t < big_t for t in timesteps):
            raise ValueError(f"timesteps {timesteps} leave the training range [0, {big_t - 1}]")
        self.timesteps = torch.tensor(timesteps, dtype=torch.long, device=device)
        if device is not None:
            self._on(device)

    def previous_timestep(self, timestep: int | Tensor) -> int:
        """The timestep a step from ``timestep`` lands on (-1: the data)."""
        raise NotImplementedError

    def scale_model_input(self, sample: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """Identity: the model sees x_t unscaled (here for diffusers' interface)."""
        return sample

    # -- noising and the prior ------------------------------------------------------------
    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``x_t = a_t x_0 + sqrt(1 - abar_t) S_t noise`` (the noisy sample only, like diffusers)."""
        return self._on(original_samples.device).add_noise(original_samples, noise, timesteps)[0]

    def training_target(
        self, noise: Tensor, timesteps: Tensor, clean: Tensor | None = None
    ) -> Tensor:
        """What the model learns to predict for ``prediction_type``: exactly the target
        ``SqueezedDiffusion.add_noise`` returns (``S_t noise`` for 'epsilon', ``noise`` for
        'unit_epsilon'; 'sample' and 'v_prediction' need the ``clean`` samples)."""
        proc = self._on(noise.device)
        if clean is not None:
            return proc.add_noise(clean, noise, timesteps)[1]
        if proc.prediction_type not in ("epsilon", "unit_epsilon"):
            raise ValueError(
                f"training_target needs the clean samples for prediction_type="
                f"{proc.prediction_type!r}: pass clean=..."
            )
        return proc.squeeze(noise, timesteps) if proc.prediction_type == "epsilon" else noise

    def get_velocity(self, sample: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The process' v target ``a_t S_t noise - sigma_t sample`` (``SqueezedDiffusion.add_noise``'s,
        whatever this scheduler's ``prediction_type``): stock's ``get_velocity``, which
        diffusers' v-prediction training scripts call, for the squeezed noise."""
        proc = copy.copy(self._on(sample.device))  # shares the tables; only the target differs
        proc.prediction_type = "v_prediction"
        return proc.add_noise(sample, noise, timesteps)[1]

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

    # -- stepping ---------------------------------------------------------------------
    @classmethod
    def x0_config(cls, name: str) -> dict[str, Any]:
        """The config keys that make this scheduler apply the named x_0 rule (``sqdm sample
        --x0``, ``X0_RULES``): clipping, and for DPM-Solver++ the anchor. A rule this class
        cannot hold in its config raises: ``clip-reuse`` is a step argument (DDIM's
        ``use_clipped_model_output``), the anchored rules need the DPM-Solver++ scheduler."""
        rule = x0_rule(name)
        if rule.reuse:
            raise ValueError(
                f"x0 rule {name} is DDIM's use_clipped_model_output, an argument of step() "
                "and of the pipeline call, not a config key: configure clip and pass "
                "use_clipped_model_output=True"
            )
        # thresholding would replace the rule's clipping, so the named rule turns it off
        config: dict[str, Any] = {"clip_sample": rule.clip_range is not None, "thresholding": False}
        if rule.clip_range is not None:
            config["clip_sample_range"] = rule.clip_range
        anchors = {"anchor_x0": rule.anchor, "anchor_x0_scaled": rule.anchor_scaled}
        own = config_defaults(cls)
        if any(on and key not in own for key, on in anchors.items()):
            raise ValueError(
                f"x0 rule {name} re-anchors DPM-Solver++ steps (SqueezedDPMSolverMultistep"
                f"Scheduler's anchor_x0), which {cls.__name__} does not take: use clip"
            )
        return config | {key: on for key, on in anchors.items() if key in own}

    def _x0_rule(self, reuse: bool = False) -> X0Rule:
        """The config's x_0 rule: dynamic thresholding replaces clipping, as in diffusers."""
        cfg = self.config
        return X0Rule(
            clip_range=cfg.clip_sample_range if cfg.clip_sample else None,
            threshold=cfg.dynamic_thresholding_ratio if cfg.thresholding else None,
            max_value=cfg.sample_max_value,
            reuse=reuse,
        )

    def _step(
        self,
        output_cls: type[BaseOutput],
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        return_dict: bool,
        *,
        reuse: bool = False,
        **options: Any,
    ) -> BaseOutput | tuple[Tensor, Tensor]:
        """One step of the registered sampler from ``timestep`` to :meth:`previous_timestep`,
        in diffusers' format and the dtypes stock's arithmetic gives: computed in the two
        inputs' promoted dtype, x_0 in :meth:`_x0_dtype`. (Where the model output has the
        lower precision, stock draws its noise in that and a seed gives other numbers.)"""
        t = int(timestep)
        dtype = torch.promote_types(sample.dtype, model_output.dtype)
        out = self._sampler.step(
            self._on(sample.device),
            model_output.to(dtype),
            sample.to(dtype),
            t,
            self.previous_timestep(t),
            clip=self._x0_rule(reuse),
            **options,
        )
        out = out._replace(
            pred_original_sample=out.pred_original_sample.to(self._x0_dtype(sample, model_output))
        )
        return output_cls(**out._asdict()) if return_dict else tuple(out)

    def _sampler_keys(self) -> dict[str, Any]:
        """The config items a registered sampler's ``scheduler_config`` is matched against."""
        return dict(self.config)

    def _x0_dtype(self, sample: Tensor, model_output: Tensor) -> torch.dtype:
        """The dtype of stock's x_0 prediction: the model output's for ``sample`` prediction,
        else the inputs' promoted (DPM-Solver returns its step in it)."""
        if self.config.prediction_type == "sample":
            return model_output.dtype
        return torch.promote_types(sample.dtype, model_output.dtype)
