"""``SqueezedDDPMPipeline``: unconditional sampling from the squeezed prior with a diffusers UNet.

diffusers' own ``DDPMPipeline`` starts from isotropic noise, which is the wrong
prior once the noise is squeezed; this pipeline starts from ``S_T eps`` and
otherwise runs the same loop, drawing random numbers in the same order as
:meth:`SqueezedDiffusion.sample`, so that a seeded generator gives the same images.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel

from ..core import SqueezedDiffusion
from ..core.samplers import checked_sampler
from ..core.values import check_count
from ._base import basis_fields
from .scheduling_squeezed_ddim import SqueezedDDIMScheduler
from .scheduling_squeezed_ddpm import SqueezedDDPMScheduler
from .scheduling_squeezed_dpmsolver_multistep import SqueezedDPMSolverMultistepScheduler

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
SqueezedScheduler = (
    SqueezedDDPMScheduler | SqueezedDDIMScheduler | SqueezedDPMSolverMultistepScheduler
)
# By the names samplers give in ``Sampler.scheduler`` (core/samplers.py).
SCHEDULER_KINDS: dict[str, type[SqueezedScheduler]] = {
    cls._KIND: cls
    for cls in (SqueezedDDPMScheduler, SqueezedDDIMScheduler, SqueezedDPMSolverMultistepScheduler)
}

_SQUEEZED_NAMES = tuple(cls.__name__ for cls in SCHEDULER_KINDS.values())


def scheduler_from_process(
    process: SqueezedDiffusion, kind: str = "ddpm", **overrides: Any
) -> SqueezedScheduler:
    """A scheduler of ``kind`` ('ddpm', 'ddim', 'dpmsolver') whose config rebuilds ``process``
    (a basis that fits in a JSON config).

    ``overrides`` are further config fields (``sampler``, ``clip_sample``, ...).
    The process does not record ``beta_start``/``beta_end`` (nor ``trained_betas``,
    ``rescale_betas_zero_snr``), so the rebuilt betas are checked against the process' and
    a mismatch asks for them.
    """
    if kind not in SCHEDULER_KINDS:
        raise ValueError(
            f"unknown scheduler kind {kind!r}; choose one of: {', '.join(SCHEDULER_KINDS)}"
        )
    strength = process.strength.tolist()
    config = {
        **basis_fields(process.basis),
        "num_train_timesteps": process.num_train_timesteps,
        "beta_schedule": process.beta_schedule,
        "variant": process.variant,
        "strength": strength[0] if len(set(strength)) == 1 else strength,
        "profile": process.profile,
        "prediction_type": process.prediction_type,
        **overrides,
    }
    scheduler = SCHEDULER_KINDS[kind](**config)
    if not torch.equal(scheduler.process.betas, process.betas):
        raise ValueError(
            "the process' beta schedule differs from the scheduler's "
            f"(beta_start={scheduler.config.beta_start}, beta_end={scheduler.config.beta_end}); "
            "pass the process' beta_start=..., beta_end=... (or trained_betas=..., "
            "rescale_betas_zero_snr=...) as overrides"
        )
    return scheduler


class SqueezedDDPMPipeline(DiffusionPipeline):
    """Unconditional image generation: squeezed prior, then ``unet`` -> ``scheduler.step``.

    ``scheduler`` is a :class:`SqueezedDDPMScheduler`, :class:`SqueezedDDIMScheduler` or
    :class:`SqueezedDPMSolverMultistepScheduler`.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: SqueezedScheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def __setattr__(self, name: str, value: Any) -> None:
        """A stock scheduler (loaded from a stock pipeline's folder, or assigned) is refused
        here, where the fix is known, rather than failing at the call on a missing method."""
        squeezed = (type(None), *SCHEDULER_KINDS.values())  # None: diffusers' "left out"
        if name == "scheduler" and not isinstance(value, squeezed):
            kind = type(value).__name__
            names = sorted(_SQUEEZED_NAMES, key=lambda n: n != f"Squeezed{kind}")
            raise ValueError(
                f"SqueezedDDPMPipeline needs a squeezed scheduler, got {kind}: pass "
                f"scheduler={names[0]}.from_config(scheduler.config) (or {names[1]}, "
                f"{names[2]}; at strength 0 each samples as its stock one)"
            )
        super().__setattr__(name, value)

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        ema: bool = True,
        sampler: str = "ddpm",
        clip_sample: bool | None = None,
        x0: str | None = None,
    ) -> SqueezedDDPMPipeline:
        """The pipeline of a ``sqdm train`` run: its (EMA) UNet and a scheduler for its process.

        ``sampler`` is a registered sampler; its ``scheduler`` names the class ('ddpm',
        'ddpm-paper': :class:`SqueezedDDPMScheduler`; 'ddim'; the 'dpmpp-' samplers:
        :class:`SqueezedDPMSolverMultistepScheduler`, configured by the sampler's
        ``scheduler_keys``). ``x0`` names the x_0 rule as ``sqdm sample --x0`` does (default
        'clip'; the scheduler's :meth:`x0_config`; 'clip-reuse' is the call's
        ``use_clipped_model_output``); 0.1.0's ``clip_sample`` (True: 'clip', False: 'none')
        still works, not with ``x0``. With the same rule the pipeline draws what
        ``SqueezedDiffusion.sample`` draws.
        """
        # Imported here: loading runs is the training side's business, not the schedulers'.
        from ..training.run import Run

        if isinstance(clip_sample, str):  # an x_0 rule given by position, which would clip
            raise TypeError(
                f"clip_sample is 0.1.0's True/False, got {clip_sample!r}: pass an x_0 rule "
                f"by keyword, x0={clip_sample!r}"
            )
        legacy = "clip" if clip_sample is None or clip_sample else "none"
        if clip_sample is not None and x0 is not None:
            raise ValueError(
                f"pass x0 or 0.1.0's clip_sample, not both (clip_sample={clip_sample} is "
                f"x0={legacy!r})"
            )
        rule = x0 if x0 is not None else legacy
        # an unknown name, or a rule the sampler cannot take, fails before loading anything
        entry = checked_sampler(sampler, x0=rule)
        kind = entry.scheduler
        if not kind:
            raise ValueError(
                f"sampler {sampler!r} has no diffusers scheduler; sample the run with "
                f"SqueezedDiffusion.sample(..., sampler={sampler!r}) (Run(run_dir).load() "
                "gives the UNet and the process)"
            )
        config = SCHEDULER_KINDS[kind].x0_config(rule)
        unet, process = Run(run_dir).load(ema=ema)
        scheduler = scheduler_from_process(process, kind, **config, **entry.scheduler_keys)
        return cls(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        eta: float = 0.0,
        use_clipped_model_output: bool | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate ``batch_size`` images.

        ``output_type``: 'pil', 'np' (NHWC in [0, 1]), 'pt' (NCHW in [0, 1]) or
        'latent' (the raw final sample in [-1, 1], unclamped: what
        ``SqueezedDiffusion.sample`` returns). ``eta`` and ``use_clipped_model_output`` (the
        ``clip-reuse`` rule) are DDIM's, as in stock ``DDIMPipeline``, and need the DDIM
        scheduler.
        ``num_inference_steps`` defaults to the scheduler's full schedule (every training
        timestep, as stock DDPMPipeline; one fewer with DPM-Solver, which would repeat one).
        """
        if self.scheduler is None:  # loaded with scheduler=None
            raise ValueError(
                "the pipeline has no scheduler: set pipe.scheduler to a SqueezedDDPMScheduler, "
                f"{_SQUEEZED_NAMES[1]} or {_SQUEEZED_NAMES[2]}"
            )
        check_count(batch_size, "batch_size")  # else a reshape error, later
        if output_type not in OUTPUT_TYPES:
            raise ValueError(
                f"unknown output_type {output_type!r}; choose one of: {', '.join(OUTPUT_TYPES)}"
            )
        takes = inspect.signature(self.scheduler.step).parameters
        given = {"eta": eta, "use_clipped_model_output": use_clipped_model_output}
        for name, value in given.items():
            if value and name not in takes:
                raise ValueError(
                    f"{name}={value} applies to DDIM; {type(self.scheduler).__name__} has no "
                    f"{name} (use SqueezedDDIMScheduler)"
                )
        cfg = self.scheduler.config
        if use_clipped_model_output and not (cfg.clip_sample or cfg.thresholding):
            raise ValueError(
                "use_clipped_model_output=True re-derives the noise from the clipped x_0, but "
                "the scheduler does not clip: configure clip_sample=True (or thresholding=True)"
            )
        step_kwargs = {k: v for k, v in given.items() if k in takes and v is not None}
        size = self.unet.config.sample_size
        spatial = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, *spatial)
        device = self._execution_device

        image = self.scheduler.draw_prior(
            shape, generator=generator, device=device, dtype=self.unet.dtype
        )
        if num_inference_steps is None:
            num_inference_steps = self.scheduler.default_inference_steps()
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_output = self.unet(image, t).sample
            image = self.scheduler.step(
                model_output, t, image, generator=generator, **step_kwargs
            ).prev_sample
        self.maybe_free_model_hooks()

        if output_type != "latent":
            image = (image / 2 + 0.5).clamp(0, 1)
            if output_type != "pt":
                if image.dtype == torch.bfloat16:  # numpy has none (stock fails there)
                    image = image.float()
                image = image.cpu().permute(0, 2, 3, 1).numpy()
                if output_type == "pil":
                    image = self.numpy_to_pil(image)
        return ImagePipelineOutput(images=image) if return_dict else (image,)
