"""Samplers: exact agreement with diffusers at s = 0, and the Gaussian oracle (DESIGN.md part 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import MEAN0, SIGMA0, dense_squeeze, paper_strength_t, top_direction
from diffusers import DDIMScheduler, DDPMScheduler

from squeezed_diffusion import ChannelBasis, SqueezedDiffusion, ddim_step, ddpm_step, timesteps
from squeezed_diffusion.core.samplers import ddpm_paper_step


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _zero_strength() -> SqueezedDiffusion:
    return SqueezedDiffusion(ChannelBasis([0.6, 0.55, 0.58]), "sdm", 0.0)


@pytest.mark.parametrize("num_steps", [1000, 50])
@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_step_equals_diffusers(num_steps: int, clip: bool) -> None:
    proc, ref = _zero_strength(), DDPMScheduler(clip_sample=clip)
    ref.set_timesteps(num_steps)
    pairs = timesteps(1000, num_steps)
    assert [t for t, _ in pairs] == ref.timesteps.tolist()
    x = torch.randn(2, 3, 8, 8)
    for t, t_prev in pairs:
        out = torch.randn(2, 3, 8, 8)
        ours = ddpm_step(proc, out, x, t, t_prev, generator=_gen(t), clip=clip)
        theirs = ref.step(out, t, x, generator=_gen(t))
        assert (ours.prev_sample - theirs.prev_sample).abs().max() < 1e-5, t
        # x0 is (x - sqrt(1 - abar) out) / sqrt(abar): hundreds near t = T, so compare relatively.
        assert torch.allclose(
            ours.pred_original_sample, theirs.pred_original_sample, rtol=1e-6, atol=1e-5
        )
        x = theirs.prev_sample.clamp(-3, 3)  # walk a realistic trajectory


@pytest.mark.parametrize("num_steps", [1000, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_equals_diffusers(num_steps: int, eta: float) -> None:
    proc, ref = _zero_strength(), DDIMScheduler(clip_sample=False)
    ref.set_timesteps(num_steps)
    pairs = timesteps(1000, num_steps)
    assert [t for t, _ in pairs] == ref.timesteps.tolist()
    x = torch.randn(2, 3, 8, 8)
    for t, t_prev in pairs:
        out = torch.randn(2, 3, 8, 8)
        ours = ddim_step(proc, out, x, t, t_prev, generator=_gen(t), eta=eta, clip=False)
        theirs = ref.step(out, t, x, eta=eta, generator=_gen(t))
        assert (ours.prev_sample - theirs.prev_sample).abs().max() < 1e-5, t
        x = theirs.prev_sample.clamp(-3, 3)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_full_sampling_loop_equals_diffusers_loop(sampler: str) -> None:
    """Same generator, same draws: the whole trajectory matches a hand-rolled diffusers loop."""
    proc = _zero_strength()
    ref = (
        DDPMScheduler(clip_sample=False) if sampler == "ddpm" else DDIMScheduler(clip_sample=False)
    )
    ref.set_timesteps(20)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.9 * x + 0.001 * t.float().view(-1, 1, 1, 1)

    eta = {"eta": 1.0} if sampler == "ddim" else {}
    ours = proc.sample(
        model, (2, 3, 8, 8), 20, sampler, generator=_gen(7), clip=False, progress=False, **eta
    )
    gen = _gen(7)
    x = torch.randn((2, 3, 8, 8), generator=gen)
    for t in ref.timesteps:
        x = ref.step(model(x, t.repeat(2)), t, x, generator=gen, **eta).prev_sample
    assert (ours - x).abs().max() < 1e-5


# -- Gaussian oracle -------------------------------------------------------------------
def oracle(proc: SqueezedDiffusion, variant: str, strength: float, profile: str):
    """Closed-form E[target | x_t] for x0 ~ N(MEAN0, SIGMA0) per pixel, built densely."""
    v = proc.basis.direction.double().numpy()
    s_t = paper_strength_t(strength, profile)
    abar = proc.alphas_cumprod.numpy()
    mean = torch.tensor(MEAN0).view(1, 3, 1, 1)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ti = int(t[0])
        a, sig = np.sqrt(abar[ti]), np.sqrt(1 - abar[ti])
        s = dense_squeeze(v, s_t[ti], variant) if variant != "isotropic" else np.eye(3)
        gain = sig * s @ s @ np.linalg.inv(a**2 * SIGMA0 + sig**2 * s @ s)
        if proc.target == "unit":
            gain = np.linalg.inv(s) @ gain
        out = torch.einsum("ij,bjhw->bihw", torch.tensor(gain), x.double() - a * mean)
        return out.float()

    return model


def oracle_errors(variant: str, strength: float, profile: str, sampler: str, steps: int, **kw):
    """Relative Frobenius covariance error and max mean error over 16,384 sampled pixel vectors."""
    direction = top_direction(SIGMA0)
    proc = SqueezedDiffusion(
        ChannelBasis(direction), variant, strength, profile, target=kw.pop("target", "squeezed")
    )
    model = oracle(proc, variant, strength, profile)
    kw.setdefault("clip", False)  # Gaussian data are not bounded to [-1, 1]
    x = proc.sample(model, (16, 3, 32, 32), steps, sampler, generator=_gen(1), progress=False, **kw)
    vecs = x.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    cov_err = np.linalg.norm(np.cov(vecs.T) - SIGMA0) / np.linalg.norm(SIGMA0)
    return float(cov_err), float(np.abs(vecs.mean(0) - MEAN0).max()), x


CASES = [(v, s, "beta") for v in ("sdm", "hdm") for s in (-0.8, -0.4, 0.4)] + [
    ("sdm", -0.8, "constant"),
    ("hdm", 0.4, "constant"),
]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize(("variant", "strength", "profile"), CASES)
def test_gaussian_oracle_1000_steps(variant, strength, profile, sampler, record_property) -> None:
    cov_err, mean_err, _ = oracle_errors(variant, strength, profile, sampler, 1000)
    record_property("cov_rel_error", cov_err)
    assert cov_err < 0.03, cov_err
    assert mean_err < 0.02, mean_err


def test_gaussian_oracle_unit_target() -> None:
    cov_err, mean_err, _ = oracle_errors("sdm", -0.8, "beta", "ddpm", 1000, target="unit")
    assert cov_err < 0.03 and mean_err < 0.02


@pytest.mark.parametrize("steps", [50, 100])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize(("variant", "strength"), [("sdm", -0.8), ("hdm", -0.4), ("sdm", 0.4)])
def test_gaussian_oracle_respaced(variant, strength, sampler, steps, record_property) -> None:
    """Respacing shrinks variance even isotropically: squeezing may add at most 0.02 to that."""
    iso_err, _, _ = oracle_errors("isotropic", 0.0, "beta", sampler, steps)
    cov_err, mean_err, _ = oracle_errors(variant, strength, "beta", sampler, steps)
    record_property("isotropic_cov_rel_error", iso_err)
    record_property("cov_rel_error", cov_err)
    assert cov_err <= iso_err + 0.02, (cov_err, iso_err)
    assert mean_err < 0.02


@pytest.mark.parametrize("variant", ["sdm", "hdm"])
def test_paper_sampler_error_and_constant_profile_equivalence(variant, record_property) -> None:
    """ddpm-paper is exact when S_t is constant in t; with the beta profile we report its error."""
    _, _, exact = oracle_errors(variant, -0.8, "constant", "ddpm", 100)
    _, _, paper = oracle_errors(variant, -0.8, "constant", "ddpm-paper", 100, clip=False)
    assert (exact - paper).abs().max() < 1e-4
    paper_err, paper_mean, _ = oracle_errors(variant, -0.8, "beta", "ddpm-paper", 1000, clip=False)
    exact_err, _, _ = oracle_errors(variant, -0.8, "beta", "ddpm", 1000)
    record_property("paper_cov_rel_error", paper_err)
    record_property("exact_cov_rel_error", exact_err)
    print(
        f"\n{variant} s=-0.8 beta, 1000 steps: cov error ddpm-paper {paper_err:.4f}, ddpm {exact_err:.4f}"
    )
    assert np.isfinite(paper_err) and paper_mean < 0.05


def test_paper_step_at_zero_strength_is_diffusers_default() -> None:
    proc, ref = _zero_strength(), DDPMScheduler()  # clip_sample=True, as the reference ran
    ref.set_timesteps(50)
    x = torch.randn(2, 3, 8, 8)
    for t, t_prev in timesteps(1000, 50):
        out = torch.randn(2, 3, 8, 8)
        ours = ddpm_paper_step(proc, out, x, t, t_prev, generator=_gen(t))
        theirs = ref.step(out, t, x, generator=_gen(t))
        assert (ours.prev_sample - theirs.prev_sample).abs().max() < 1e-5
        x = theirs.prev_sample


def test_sampling_rejects_bad_arguments() -> None:
    proc = _zero_strength()
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        proc.sample(lambda x, t: x, (1, 3, 4, 4), 10, "euler", progress=False)
    with pytest.raises(ValueError, match="num_steps must be an integer in"):
        proc.sample(lambda x, t: x, (1, 3, 4, 4), 0, progress=False)
    with pytest.raises(ValueError, match="channel basis has 3 channels"):
        proc.sample(lambda x, t: x, (1, 1, 4, 4), 10, progress=False)


def test_prior_is_squeezed() -> None:
    proc = SqueezedDiffusion(ChannelBasis.luminance(), "sdm", -0.8)
    x = proc.prior((64, 3, 16, 16), generator=_gen(0))
    along = (x * proc.basis.direction.view(1, 3, 1, 1)).sum(1)
    assert float(along.std()) == pytest.approx(np.exp(0.8), rel=0.02)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "ddpm-paper"])
def test_samplers_clip_x0_by_default_like_diffusers(sampler: str) -> None:
    """A wild predictor (as an undertrained network is at large t) saturates unclipped
    samples; the default clips x_0 to [-1, 1], so the last step lands inside the data range."""
    proc = SqueezedDiffusion(ChannelBasis(torch.tensor([0.5, 0.6, 0.62])), "hdm", -0.4)

    def wild(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -3.0 * x

    run = {"generator": _gen(2), "progress": False}
    clipped = proc.sample(wild, (2, 3, 8, 8), 10, sampler, **run)
    # ddpm-paper clips S_t^-1 x_0 and maps back with S_t, which at t = 0 is still exp(-s_0) != 1
    assert clipped.abs().max() <= (1.01 if sampler == "ddpm-paper" else 1.0 + 1e-4)
    unclipped = proc.sample(wild, (2, 3, 8, 8), 10, sampler, clip=False, **run)
    assert unclipped.abs().max() > 2.0
