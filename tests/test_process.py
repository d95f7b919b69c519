"""The forward process: diffusers at s = 0, the paper's dense formulas, the marginal, validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MEAN0, SIGMA0, dense_squeeze, paper_strength_t, top_direction
from diffusers import DDPMScheduler

from squeezed_diffusion import ChannelBasis, DCTBasis, PixelPCABasis, SqueezedDiffusion


def rel_fro(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("variant", ["isotropic", "sdm", "hdm"])
def test_add_noise_at_zero_strength_equals_diffusers(variant: str) -> None:
    proc = SqueezedDiffusion(ChannelBasis([0.6, 0.5, 0.62]), variant, 0.0)
    ref = DDPMScheduler()
    x0, noise = torch.rand(8, 3, 16, 16) * 2 - 1, torch.randn(8, 3, 16, 16)
    t = torch.tensor([0, 1, 10, 100, 500, 900, 998, 999])
    x_t, target = proc.add_noise(x0, noise, t)
    assert (x_t - ref.add_noise(x0, noise, t)).abs().max() < 1e-5
    assert torch.equal(target, noise)


@pytest.mark.parametrize("variant", ["sdm", "hdm"])
@pytest.mark.parametrize("strength", [-1.2, -0.4, 0.7])
def test_add_noise_matches_dense_paper_formula(variant: str, strength: float) -> None:
    v = np.array([0.55, 0.6, 0.58])
    proc = SqueezedDiffusion(ChannelBasis(v), variant, strength, "beta", target="squeezed")
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float32).astype(np.float64))
    s_t = paper_strength_t(strength, "beta")
    x0, noise = torch.rand(5, 3, 4, 4) * 2 - 1, torch.randn(5, 3, 4, 4)
    t = torch.tensor([0, 50, 300, 700, 999])
    x_t, target = proc.add_noise(x0, noise, t)
    for i, ti in enumerate(t.tolist()):
        s = dense_squeeze(v, s_t[ti], variant)
        shaped = np.einsum("ij,jhw->ihw", s, noise[i].double().numpy())
        expect = np.sqrt(abar[ti]) * x0[i].double().numpy() + np.sqrt(1 - abar[ti]) * shaped
        np.testing.assert_allclose(target[i].numpy(), shaped, atol=2e-6)
        np.testing.assert_allclose(x_t[i].numpy(), expect, atol=2e-6)
    if variant == "hdm":  # the library's S_t has det 1 (dense: the squeeze of the identity)
        for ti in (300, 999):
            dense = proc.squeeze(torch.eye(3).view(3, 3, 1, 1), ti).view(3, 3).double()
            assert abs(float(torch.linalg.det(dense)) - 1) < 1e-5, ti


def test_unit_target_is_the_unit_noise() -> None:
    proc = SqueezedDiffusion(ChannelBasis.luminance(), "sdm", -0.4, target="unit")
    noise = torch.randn(2, 3, 4, 4)
    _, target = proc.add_noise(torch.zeros_like(noise), noise, torch.tensor([5, 999]))
    assert torch.equal(target, noise)


@pytest.mark.parametrize("variant", ["sdm", "hdm"])
@pytest.mark.parametrize("t", [100, 500, 999])
def test_forward_marginal_covariance(variant: str, t: int) -> None:
    """x_t ~ N(a m, a^2 Sigma0 + sigma^2 S_t^2) over 102,400 draws."""
    v = top_direction(SIGMA0)
    proc = SqueezedDiffusion(ChannelBasis(v), variant, -0.8, "beta")
    chol = np.linalg.cholesky(SIGMA0)
    z = torch.randn(100, 3, 32, 32, dtype=torch.float64)
    x0 = (
        torch.einsum("ij,bjhw->bihw", torch.tensor(chol), z) + torch.tensor(MEAN0).view(1, 3, 1, 1)
    ).float()
    x_t, _ = proc.add_noise(x0, torch.randn_like(x0), torch.full((100,), t))
    vecs = x_t.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    abar = float(proc.alphas_cumprod[t])
    s = dense_squeeze(v, paper_strength_t(-0.8, "beta")[t], variant)
    expect = abar * SIGMA0 + (1 - abar) * s @ s
    assert rel_fro(np.cov(vecs.T), expect) < 0.02
    assert np.abs(vecs.mean(0) - np.sqrt(abar) * MEAN0).max() < 0.01


@pytest.mark.parametrize(
    "basis",
    [ChannelBasis([0.3, 0.5, 0.8]), DCTBasis((3, 8, 8), (0.2, 0.5)), None],
    ids=["channel", "dct", "pca"],
)
def test_squeeze_is_orthogonal_diagonal_and_inverts(basis) -> None:
    if basis is None:
        q, _ = torch.linalg.qr(torch.randn(3 * 8 * 8, 4, dtype=torch.float64))
        basis = PixelPCABasis(q.T.float(), (3, 8, 8))
    proc = SqueezedDiffusion(basis, "hdm", [-0.6] * basis.num_groups, "constant")
    x = torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    assert (proc.unsqueeze(proc.squeeze(x, t), t) - x).abs().max() < 1e-5
    # Dense operator from the basis applied to the identity: symmetric, eigenvalues = factors.
    eye = torch.eye(3 * 64).view(-1, 3, 8, 8)
    dense = proc.squeeze(eye, 999).reshape(3 * 64, -1).double()
    assert torch.allclose(dense, dense.T, atol=1e-5)
    copies = 3 * 64 // basis.ambient_dim  # the channel basis acts on each of the 64 pixels
    squeezed = copies * sum(basis.group_dims)
    expect = sorted([np.exp(0.6)] * squeezed + [float(proc.c_rest[999])] * copies * basis.rest_dim)
    assert np.allclose(sorted(torch.linalg.eigvalsh(dense).tolist()), expect, atol=1e-4)
    assert abs(float(torch.linalg.slogdet(dense)[1])) < 1e-3  # HDM: det = 1


def test_sigma_and_log_snr_shapes() -> None:
    proc = SqueezedDiffusion(ChannelBasis.luminance(), "sdm", -0.4)
    assert proc.sigma(999).shape == (2,)
    assert proc.sigma(torch.tensor([1, 2])).shape == (2, 2)
    lsnr = proc.log_snr_table()
    assert lsnr.shape == (1000, 2)
    assert (lsnr[1:] < lsnr[:-1]).all()  # every direction's SNR falls with t
    assert float(proc.sigma(999)[0]) == pytest.approx(
        float(proc.sigma(999)[1]) * np.exp(0.4), rel=1e-6
    )


@pytest.mark.parametrize(
    ("variant", "strength", "profile", "direction"),
    [("sdm", 10.0, "beta", "principal"), ("hdm", -12.0, "linear", "orthogonal")],
)
def test_invalid_process_names_t_direction_and_strength(
    variant, strength, profile, direction
) -> None:
    with pytest.raises(ValueError, match=r"invalid") as err:
        SqueezedDiffusion(ChannelBasis.luminance(), variant, strength, profile)
    msg = str(err.value)
    assert f"strength {strength:g}" in msg and direction in msg
    assert "at t=" in msg and "\n" not in msg


def valid_strengths(variant: str, grid: np.ndarray) -> list[float]:
    out = []
    for s in grid:
        try:
            SqueezedDiffusion(ChannelBasis.luminance(), variant, float(s), "beta")
            out.append(float(s))
        except ValueError:
            pass
    return out


def test_valid_strength_ranges_are_the_documented_ones() -> None:
    """README, 'The process': on a 0.5 grid, SDM is valid for -44 <= s <= 4.5 (antisqueezing
    only speeds up the principal SNR's fall; below -44 its variance overflows float32) and
    HDM for -9.5 <= s <= 4.5 (its orthogonal directions, scaled by exp(s / 2), stop falling
    first). Both ranges are contiguous."""
    grid = np.arange(-100.0, 20.0, 0.5)
    with pytest.raises(ValueError, match="overflows float32; use a strength closer to 0"):
        SqueezedDiffusion(ChannelBasis.luminance(), "sdm", -44.5)
    for variant, low in (("sdm", -44.0), ("hdm", -9.5)):
        valid = valid_strengths(variant, grid)
        assert (valid[0], valid[-1]) == (low, 4.5), variant
        assert len(valid) == round((4.5 - low) / 0.5) + 1, variant
    with pytest.raises(ValueError, match="along the principal") as bad:  # the README says where
        SqueezedDiffusion(ChannelBasis.luminance(), "sdm", 5.0)
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    t = bad.value.args[0].split("at t=")[1].split()[0]
    assert f"squeezing breaks at s = 5, where the principal SNR stops falling at t = {t}." in readme


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"strength": float("nan")}, "finite"),
        ({"strength": float("inf")}, "finite"),
        ({"variant": "sqdm"}, "unknown variant 'sqdm'; choose one of: isotropic, sdm, hdm"),
        ({"profile": "cosine"}, "unknown profile 'cosine'"),
        ({"prediction_type": "v"}, "unknown prediction_type 'v'"),
        ({"strength": [0.1, 0.2]}, "strength has 2 values but the basis has 1 groups"),
        (  # used to be set to 0 without a word
            {"variant": "isotropic", "strength": -0.4},
            r"strength \[-0.4\] with variant isotropic, whose noise has no squeezing",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        SqueezedDiffusion(ChannelBasis.luminance(), **kwargs)


def test_the_gaussian_oracle_refuses_what_it_would_misread() -> None:
    """Its gain is one timestep's and one covariance's: a mixed batch of timesteps, a
    covariance that is none (or zero, against which errors are relative) or of another size
    would give wrong predictions without an error."""
    from squeezed_diffusion.core.oracle import CIFAR_LIKE_COV, CIFAR_LIKE_MEAN, GaussianOracle

    proc = SqueezedDiffusion(ChannelBasis.luminance(3), "sdm", -0.4)
    oracle = GaussianOracle(proc, CIFAR_LIKE_MEAN, CIFAR_LIKE_COV)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"one timestep per call, got \[5, 9\]"):
        oracle(x, torch.tensor([5, 9]))
    assert oracle(x, torch.tensor([5, 5])).shape == x.shape
    flipped = CIFAR_LIKE_COV.clone()
    flipped[0, 0] = -1.0
    singular = torch.ones(3, 3, dtype=torch.float64) * 0.2  # grey pixels: fine
    GaussianOracle(proc, CIFAR_LIKE_MEAN, singular)
    for seed in range(20):  # float32 covariances of rank-2 data: eigenvalues of -1e-9 or so
        g, h = torch.randn(2, 4096, generator=torch.Generator().manual_seed(seed))
        x = torch.stack([0.3 * g + 0.1 * h, 0.59 * g - 0.2 * h, 0.11 * g + 0.05 * h]).float()
        GaussianOracle(proc, x.mean(1), torch.cov(x))
    for cov, mean in ((flipped, CIFAR_LIKE_MEAN), (torch.zeros(3, 3), CIFAR_LIKE_MEAN),
                      (CIFAR_LIKE_COV + torch.triu(torch.ones(3, 3), 1), CIFAR_LIKE_MEAN)):  # fmt: skip
        with pytest.raises(ValueError, match="symmetric positive semi-definite and not zero"):
            GaussianOracle(proc, mean, cov)
    with pytest.raises(ValueError, match=r"give a mean of 3 and a 3 x 3 covariance, got \(2,\)"):
        GaussianOracle(proc, CIFAR_LIKE_MEAN[:2], CIFAR_LIKE_COV)


def test_hdm_needs_a_complement() -> None:
    with pytest.raises(ValueError, match="HDM needs directions outside"):
        SqueezedDiffusion(ChannelBasis([1.0]), "hdm", -0.4)
    SqueezedDiffusion(ChannelBasis([1.0]), "sdm", -0.4)  # grayscale SDM is fine


def test_0_1_0_target_and_prediction_type_follow_one_rule_everywhere() -> None:
    """The process, saved configs and the CLI (test_reliability) fold 0.1.0's ``target``
    into ``prediction_type`` alike: alone it wins, agreeing is fine, contradicting raises
    (a saved config used to drop the saved prediction_type silently)."""
    from squeezed_diffusion.training.config import TrainConfig

    basis = ChannelBasis.luminance()
    assert SqueezedDiffusion(basis, target="unit").prediction_type == "unit_epsilon"
    assert TrainConfig.from_dict({"target": "unit"}).prediction_type == "unit_epsilon"
    agreeing = {"target": "unit", "prediction_type": "unit_epsilon"}
    assert TrainConfig.from_dict(agreeing).prediction_type == "unit_epsilon"
    with pytest.raises(ValueError, match="contradicts prediction_type 'sample'"):
        SqueezedDiffusion(basis, prediction_type="sample", target="unit")
    with pytest.raises(ValueError, match="contradicts prediction_type 'sample'"):
        TrainConfig.from_dict({"target": "unit", "prediction_type": "sample"})


def test_the_process_refuses_what_it_would_misread() -> None:
    """Inputs that used to be read silently otherwise (None as v-prediction, a float timestep
    truncated, one noise image broadcast over the batch, NaN betas) or fail with raw torch
    errors: one-line ValueErrors naming the argument."""
    proc = SqueezedDiffusion(ChannelBasis.luminance(3), "sdm", 0.4)
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x)
    cases = [
        (lambda: SqueezedDiffusion(prediction_type=None), "prediction_type must be one of"),
        (lambda: SqueezedDiffusion(beta_start=-0.1), r"betas must be finite numbers in \[0, 1\]"),
        (lambda: SqueezedDiffusion(beta_end=2.0), r"betas must be finite numbers in \[0, 1\]"),
        (
            lambda: SqueezedDiffusion(num_train_timesteps=3, trained_betas=[0.1, np.nan, 0.1]),
            "betas must be finite",
        ),
        (
            lambda: SqueezedDiffusion(trained_betas=[0.02] * 10),
            "trained_betas has 10 entries but num_train_timesteps is 1000",
        ),
        (
            lambda: SqueezedDiffusion(rescale_betas_zero_snr="false"),
            "rescale_betas_zero_snr must be True or False",
        ),
        (lambda: proc.add_noise(x, noise, torch.full((4,), 10.7)), "timesteps must be integers"),
        (lambda: proc.add_noise(x, noise, torch.ones(4, dtype=torch.bool)), "must be integers"),
        (lambda: proc.add_noise(x, noise, torch.arange(2)), "2 timesteps for a batch of 4"),
        (lambda: proc.add_noise(x, noise[:1], 5), r"noise has shape \(1, 3, 8, 8\), x0"),
        (lambda: proc.add_noise(x[:, :1], noise[:, :1], 5), "channel basis has 3 channels"),
        (lambda: proc.squeeze(x, 10.9), r"a timestep must be an integer in \[0, 1000\), got 10.9"),
        (lambda: proc.sigma(-1), r"in \[0, 1000\), got -1"),
        (  # True read as 1 (strength) or failed inside torch (T)
            lambda: SqueezedDiffusion(num_train_timesteps=True),
            "num_train_timesteps must be an integer >= 1, got True",
        ),
        (lambda: SqueezedDiffusion(strength=True), "strength must be a number or a list"),
        (lambda: SqueezedDiffusion(beta_start="x"), "beta_start must be a number, got 'x'"),
        (lambda: SqueezedDiffusion(beta_end=None), "beta_end must be a number, got None"),
        (lambda: SqueezedDiffusion("channel"), "basis must be a Basis"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    isotropic = SqueezedDiffusion(ChannelBasis.luminance(3), "isotropic")
    with pytest.raises(ValueError, match="channel basis has 3 channels"):
        isotropic.add_noise(x[:, :1], noise[:, :1], torch.zeros(4, dtype=torch.long))
    assert proc.add_noise(x, noise, np.int64(5))[0].shape == x.shape  # numpy ints are integers
