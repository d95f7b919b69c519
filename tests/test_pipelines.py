"""diffusers integration: schedulers and pipeline against the core and against stock diffusers."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from squeezed_diffusion import ChannelBasis, DCTBasis, PixelPCABasis, SqueezedDiffusion
from squeezed_diffusion.pipelines import (
    SqueezedDDIMScheduler,
    SqueezedDDPMPipeline,
    SqueezedDDPMScheduler,
    scheduler_from_process,
)

DIRECTION = [0.62, 0.55, 0.56]
SHAPE = (2, 3, 8, 8)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: a second thread only adds hand-off cost, many times the work on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return model.eval()


def _step_pairs(ours, theirs, num_steps: int, **step_kwargs):
    """Step both schedulers along ``theirs``' trajectory with the same inputs and noise.

    Yields both outputs and the magnitude of ``x_t / sqrt(abar_t)``, from which x0 is
    computed: float32 rounding of x0 is relative to it (hundreds near t = T).
    """
    ours.set_timesteps(num_steps)
    theirs.set_timesteps(num_steps)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    data = _gen(1234)
    x = torch.randn(SHAPE, generator=data)
    for t in theirs.timesteps:
        model_output = torch.randn(SHAPE, generator=data)
        a = ours.step(model_output, t, x, generator=_gen(int(t)), **step_kwargs)
        b = theirs.step(model_output, t, x, generator=_gen(int(t)), **step_kwargs)
        yield a, b, (x.abs().max() + model_output.abs().max()) / theirs.alphas_cumprod[t].sqrt()
        x = b.prev_sample.clamp(-3, 3)


def _assert_steps_close(ours, theirs, num_steps: int, **step_kwargs) -> None:
    for a, b, scale in _step_pairs(ours, theirs, num_steps, **step_kwargs):
        assert (a.prev_sample - b.prev_sample).abs().max() < 1e-5
        assert (a.pred_original_sample - b.pred_original_sample).abs().max() < 1e-6 * scale


def _public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


# -- (1) save_pretrained / from_pretrained -----------------------------------------------
@pytest.mark.parametrize(
    ("cls", "config", "step_kwargs"),
    [
        (SqueezedDDPMScheduler, {"direction": DIRECTION, "strength": -0.6}, {}),
        (
            SqueezedDDPMScheduler,
            {"direction": DIRECTION, "strength": 0.5, "sampler": "ddpm-paper", "variant": "hdm"},
            {},
        ),
        (
            SqueezedDDIMScheduler,
            {"direction": DIRECTION, "strength": -0.6, "clip_sample": False, "target": "unit"},
            {"eta": 0.5},
        ),
        (
            SqueezedDDIMScheduler,
            {"basis": "dct", "image_shape": [3, 8, 8], "cutoffs": [0.3], "strength": -0.5},
            {"eta": 1.0},
        ),
    ],
)
def test_save_and_load_reproduce_config_and_steps(tmp_path, cls, config, step_kwargs) -> None:
    scheduler = cls(**config, profile="linear")
    scheduler.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    assert _public(loaded.config) == _public(scheduler.config)
    for key, value in config.items():
        assert loaded.config[key] == value
    for a, b, _ in _step_pairs(scheduler, loaded, 10, **step_kwargs):
        assert torch.equal(a.prev_sample, b.prev_sample)
        assert torch.equal(a.pred_original_sample, b.pred_original_sample)


# -- (2) the pipeline is SqueezedDiffusion.sample ----------------------------------------
@pytest.mark.parametrize(
    ("sampler", "eta", "clip"),
    [
        ("ddpm", 0.0, False),
        ("ddpm", 0.0, True),
        ("ddpm-paper", 0.0, True),
        ("ddim", 0.0, False),
        ("ddim", 1.0, True),
    ],
)
def test_pipeline_equals_core_sampling(unet, sampler: str, eta: float, clip: bool) -> None:
    proc = SqueezedDiffusion(ChannelBasis(DIRECTION), "sdm", -0.8)
    if sampler == "ddim":
        scheduler = SqueezedDDIMScheduler(direction=DIRECTION, strength=-0.8, clip_sample=clip)
    else:
        scheduler = SqueezedDDPMScheduler(
            direction=DIRECTION, strength=-0.8, clip_sample=clip, sampler=sampler
        )
    pipe = SqueezedDDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    ours = pipe(
        batch_size=2, generator=_gen(3), num_inference_steps=10, output_type="latent", eta=eta
    ).images
    core = proc.sample(
        lambda x, t: unet(x, t).sample,
        SHAPE,
        10,
        sampler,
        generator=_gen(3),
        eta=eta,
        clip=clip,
        progress=False,
    )
    assert ours.shape == SHAPE
    assert (ours - core).abs().max() < 1e-5


def test_pipeline_output_types(unet) -> None:
    pipe = SqueezedDDPMPipeline(unet=unet, scheduler=SqueezedDDPMScheduler(strength=-0.4))
    pipe.set_progress_bar_config(disable=True)
    run = {"batch_size": 2, "num_inference_steps": 3}
    raw = pipe(generator=_gen(0), output_type="latent", **run).images
    pt = pipe(generator=_gen(0), output_type="pt", **run).images
    (np_images,) = pipe(generator=_gen(0), output_type="np", return_dict=False, **run)
    pil = pipe(generator=_gen(0), **run).images
    assert torch.equal(pt, (raw / 2 + 0.5).clamp(0, 1))
    assert np_images.shape == (2, 8, 8, 3)
    assert abs(np_images - pt.permute(0, 2, 3, 1).numpy()).max() == 0
    assert len(pil) == 2 and pil[0].size == (8, 8)
    with pytest.raises(ValueError, match="unknown output_type 'tensor'"):
        pipe(output_type="tensor", **run)
    with pytest.raises(ValueError, match=r"eta=1\.0 applies to DDIM"):
        pipe(eta=1.0, **run)


def test_pipeline_save_and_load(tmp_path, unet) -> None:
    scheduler = SqueezedDDIMScheduler(direction=DIRECTION, strength=-0.4)
    pipe = SqueezedDDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.save_pretrained(tmp_path)
    loaded = SqueezedDDPMPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.scheduler, SqueezedDDIMScheduler)
    assert _public(loaded.scheduler.config) == _public(scheduler.config)
    for p in (pipe, loaded):
        p.set_progress_bar_config(disable=True)
    run = {"batch_size": 2, "num_inference_steps": 4, "output_type": "latent", "eta": 1.0}
    assert torch.equal(
        pipe(generator=_gen(5), **run).images, loaded(generator=_gen(5), **run).images
    )


# -- (3) strength 0 is stock diffusers ---------------------------------------------------
@pytest.mark.parametrize(
    ("num_steps", "clip", "sampler"),
    [(n, c, "ddpm") for n in (1000, 50) for c in (False, True)]
    + [(50, False, "ddpm-paper"), (50, True, "ddpm-paper")],
)
def test_ddpm_scheduler_at_zero_strength_equals_diffusers(num_steps, clip, sampler) -> None:
    ours = SqueezedDDPMScheduler(direction=DIRECTION, clip_sample=clip, sampler=sampler)
    _assert_steps_close(ours, DDPMScheduler(clip_sample=clip), num_steps)


@pytest.mark.parametrize(
    ("num_steps", "clip", "eta"),
    [(1000, False, 0.0), (1000, True, 1.0)]
    + [(50, c, e) for c in (False, True) for e in (0.0, 1.0)],
)
def test_ddim_scheduler_at_zero_strength_equals_diffusers(num_steps, clip, eta) -> None:
    ours = SqueezedDDIMScheduler(direction=DIRECTION, clip_sample=clip)
    _assert_steps_close(ours, DDIMScheduler(clip_sample=clip), num_steps, eta=eta)


def test_add_noise_and_target_at_zero_strength_equal_diffusers() -> None:
    ours, theirs = SqueezedDDPMScheduler(direction=DIRECTION), DDPMScheduler()
    x0, noise = torch.rand(6, 3, 8, 8) * 2 - 1, torch.randn(6, 3, 8, 8)
    t = torch.tensor([0, 1, 100, 500, 998, 999])
    assert (ours.add_noise(x0, noise, t) - theirs.add_noise(x0, noise, t)).abs().max() < 1e-6
    assert torch.equal(ours.training_target(noise, t), noise)


@pytest.mark.parametrize("cls", [SqueezedDDPMScheduler, SqueezedDDIMScheduler])
def test_pipeline_at_zero_strength_equals_stock_pipeline(unet, cls) -> None:
    stock_cls, stock_scheduler = (
        (DDPMPipeline, DDPMScheduler())
        if cls is SqueezedDDPMScheduler
        else (DDIMPipeline, DDIMScheduler())
    )
    stock = stock_cls(unet=unet, scheduler=stock_scheduler)
    ours = SqueezedDDPMPipeline(unet=unet, scheduler=cls(direction=DIRECTION))
    eta = {} if cls is SqueezedDDPMScheduler else {"eta": 1.0}
    images = []
    for pipe in (stock, ours):
        pipe.set_progress_bar_config(disable=True)
        images.append(
            pipe(
                batch_size=2, generator=_gen(9), num_inference_steps=20, output_type="np", **eta
            ).images
        )
    assert abs(images[0] - images[1]).max() < 1e-5


# -- (4) defaults -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "stock_cls"),
    [(SqueezedDDPMScheduler, DDPMScheduler), (SqueezedDDIMScheduler, DDIMScheduler)],
)
def test_defaults_are_diffusers_defaults(cls, stock_cls) -> None:
    ours, stock = cls(strength=0.0), stock_cls()
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample"):
        assert ours.config[key] == stock.config[key], key
    assert torch.equal(ours.alphas_cumprod, stock.alphas_cumprod)
    assert torch.equal(ours.betas, stock.betas)
    assert torch.equal(ours.timesteps, stock.timesteps)
    assert len(ours) == 1000 and ours.init_noise_sigma == 1.0
    assert ours.process.is_isotropic
    assert torch.allclose(ours.process.basis.direction, torch.full((3,), 3**-0.5))


# -- building schedulers from bases and processes ---------------------------------------
@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
@pytest.mark.parametrize(
    "proc",
    [
        SqueezedDiffusion(ChannelBasis(DIRECTION), "hdm", -0.7, "linear", target="unit"),
        SqueezedDiffusion(DCTBasis((3, 8, 8), (0.2, 0.5)), "sdm", [-0.5, 0.3], "constant"),
    ],
    ids=["channel", "dct"],
)
def test_scheduler_from_process_rebuilds_the_process(kind: str, proc: SqueezedDiffusion) -> None:
    scheduler = scheduler_from_process(proc, kind, clip_sample=False)
    rebuilt = scheduler.process
    assert (rebuilt.variant, rebuilt.profile, rebuilt.prediction_type) == (
        proc.variant,
        proc.profile,
        proc.prediction_type,
    )
    assert torch.equal(rebuilt.strength, proc.strength)
    assert torch.equal(rebuilt.sigma_table(), proc.sigma_table())
    noise, t = torch.randn(SHAPE), torch.tensor([3, 900])
    assert (rebuilt.squeeze(noise, t) - proc.squeeze(noise, t)).abs().max() < 1e-6
    x0 = torch.rand(SHAPE) * 2 - 1
    x_t, target = proc.add_noise(x0, noise, t)
    assert (scheduler.add_noise(x0, noise, t) - x_t).abs().max() < 1e-6
    assert (scheduler.training_target(noise, t) - target).abs().max() < 1e-6


def test_scheduler_from_process_errors() -> None:
    big = PixelPCABasis(torch.eye(3 * 32 * 32)[:16], (3, 32, 32))  # 49,152 numbers
    with pytest.raises(ValueError, match=r"SqueezedDiffusion\.sample directly"):
        scheduler_from_process(SqueezedDiffusion(big, "sdm", -0.4))
    small = SqueezedDiffusion(PixelPCABasis(torch.eye(192)[:2], (3, 8, 8)), "sdm", -0.4)
    rebuilt = scheduler_from_process(small).process  # a small basis fits in the JSON config
    assert torch.equal(rebuilt.basis.components, small.basis.components)
    other_betas = SqueezedDiffusion(strength=-0.4, beta_end=0.03)
    with pytest.raises(ValueError, match=r"beta_start=\.\.\., beta_end="):
        scheduler_from_process(other_betas)
    assert scheduler_from_process(other_betas, beta_end=0.03).config.beta_end == 0.03
    with pytest.raises(ValueError, match="unknown scheduler kind 'euler'"):
        scheduler_from_process(other_betas, "euler")


def test_from_basis_file(tmp_path) -> None:
    basis = ChannelBasis([0.3, 0.8, 0.5])
    path = basis.save(tmp_path / "basis.safetensors")
    scheduler = SqueezedDDPMScheduler.from_basis(path, strength=-0.4)
    assert scheduler.config.basis_config == {"direction": basis.direction.tolist()}
    assert torch.allclose(scheduler.process.basis.direction, basis.direction)
    dct = SqueezedDDIMScheduler.from_basis(DCTBasis((1, 8, 8), (0.3,)), strength=0.2)
    assert (dct.config.basis, dct.config.basis_config) == (
        "dct",
        {"image_shape": [1, 8, 8], "cutoffs": [0.3]},
    )


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown DDPM sampler 'ddim'"):
        SqueezedDDPMScheduler(sampler="ddim")
    with pytest.raises(ValueError, match="num_channels is 3"):
        SqueezedDDPMScheduler(direction=[1.0, 0.0])
    with pytest.raises(ValueError, match=r"bad pca basis config"):
        SqueezedDDIMScheduler(basis="pixel_pca")
    with pytest.raises(ValueError, match=r"bad dct basis config .*image_shape"):
        SqueezedDDIMScheduler(basis="dct")
    with pytest.raises(ValueError, match="invalid SDM process"):
        SqueezedDDPMScheduler(strength=50.0, profile="linear")
    scheduler = SqueezedDDIMScheduler()
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep 5 is not in the schedule of 10 steps"):
        scheduler.step(torch.zeros(SHAPE), 5, torch.zeros(SHAPE))


def test_prior_is_squeezed() -> None:
    scheduler = SqueezedDDPMScheduler(direction=DIRECTION, strength=-0.8, profile="constant")
    x = scheduler.draw_prior((64, 3, 16, 16), generator=_gen(0))
    along = (x * scheduler.process.basis.direction.view(1, 3, 1, 1)).sum(1)
    assert float(along.std()) == pytest.approx(torch.tensor(0.8).exp().item(), rel=0.02)
