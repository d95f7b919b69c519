"""Bases: fitting recovers known structure, streaming equals one pass, files round-trip."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SIGMA0, dense_operator, top_direction

from squeezed_diffusion import ChannelBasis, DCTBasis, PixelPCABasis, load_basis
from squeezed_diffusion.core.basis import dct_matrix, fit_basis


def gaussian_images(n: int, cov: np.ndarray, size: int = 8, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, cov.shape[0], size, size, generator=gen, dtype=torch.float64)
    x = torch.einsum("ij,bjhw->bihw", torch.tensor(np.linalg.cholesky(cov)), z)
    return (x + 0.1).float()


def angle_deg(a: torch.Tensor, b: np.ndarray) -> float:
    cos = abs(float(a.double() @ torch.tensor(b))) / float(a.double().norm()) / np.linalg.norm(b)
    return math.degrees(math.acos(min(1.0, cos)))


def test_channel_fit_recovers_top_eigenvector() -> None:
    images = gaussian_images(256, SIGMA0)
    basis = ChannelBasis.fit(images.split(32))
    assert angle_deg(basis.direction, top_direction(SIGMA0)) < 1.0
    assert basis.direction.abs().argmax() == basis.direction.argmax()  # sign: largest entry > 0
    assert torch.allclose(
        basis.eigenvalues, torch.tensor(np.linalg.eigvalsh(SIGMA0)[::-1].copy()), rtol=0.05
    )
    assert basis.metadata["num_images"] == 256


def test_channel_fit_streaming_equals_one_pass() -> None:
    images = gaussian_images(120, SIGMA0, seed=3)
    one = ChannelBasis.fit([images])
    streamed = ChannelBasis.fit(images.split(7))
    assert torch.allclose(one.eigenvalues, streamed.eigenvalues, rtol=1e-5)
    assert torch.allclose(one.direction, streamed.direction, atol=1e-6)
    limited = ChannelBasis.fit(images.split(7), max_images=50)
    assert limited.metadata["num_images"] == 50
    assert torch.allclose(limited.direction, ChannelBasis.fit([images[:50]]).direction, atol=1e-6)


def test_channel_fit_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"expects \[B, C, H, W\]"):
        ChannelBasis.fit([torch.zeros(3, 8, 8)])


def test_pixel_pca_recovers_planted_components() -> None:
    gen = torch.Generator().manual_seed(0)
    dim, k = 3 * 8 * 8, 3
    planted, _ = torch.linalg.qr(torch.randn(dim, k, generator=gen, dtype=torch.float64))
    scales = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)
    coef = torch.randn(2000, k, generator=gen, dtype=torch.float64) * scales
    data = coef @ planted.T + 0.05 * torch.randn(2000, dim, generator=gen, dtype=torch.float64)
    basis = PixelPCABasis.fit(data.float().view(-1, 3, 8, 8).split(128), k=k)
    overlap = basis.components.double() @ planted
    assert torch.allclose(overlap.abs(), torch.eye(k, dtype=torch.float64), atol=0.02)
    assert torch.allclose(basis.components @ basis.components.T, torch.eye(k), atol=1e-5)
    assert torch.allclose(basis.eigenvalues.sqrt(), scales, rtol=0.1)


def test_dct_matrix_is_orthonormal_and_bands_follow_the_radius() -> None:
    m = dct_matrix(16)
    assert torch.allclose(m @ m.T, torch.eye(16, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(
        m[1], torch.tensor([np.sqrt(2 / 16) * np.cos(np.pi * (2 * i + 1) / 32) for i in range(16)])
    )
    basis = DCTBasis((3, 16, 16), cutoffs=(0.125, 0.5))
    # band sizes counted by hand from the radius sqrt((u/16)^2 + (v/16)^2) of each frequency
    radius = [np.hypot(u / 16, v / 16) for u in range(16) for v in range(16)]
    counts = [sum(r < 0.125 for r in radius), sum(0.125 <= r < 0.5 for r in radius)]
    assert list(basis.group_dims) == [3 * c for c in counts] and counts == [4, 52]
    # a single-frequency image lies in its band: scaling that band alone scales it whole
    for (u, v), band in (((1, 1), 0), ((3, 5), 1), ((12, 9), None)):
        wave = torch.outer(m[u], m[v]).float().expand(1, 3, 16, 16)
        group = torch.ones(1, 2)
        if band is not None:
            group[0, band] = 2.0
        assert torch.allclose(
            basis.scale(wave, group, torch.full((1,), 3.0)),
            wave * (2.0 if band is not None else 3.0),
            atol=1e-5,
        )
    x = torch.randn(2, 3, 16, 16)
    same = basis.scale(x, torch.ones(1, 2), torch.ones(1))
    assert torch.allclose(same, x, atol=1e-5)
    # Scaling only the lowest band by 0 removes exactly the DC component when the band is {0}.
    dc_only = DCTBasis((3, 16, 16), cutoffs=(1e-6,))
    no_dc = dc_only.scale(x, torch.zeros(1, 1), torch.ones(1))
    assert torch.allclose(no_dc.mean((2, 3)), torch.zeros(2, 3), atol=1e-5)
    with pytest.raises(ValueError, match="leave an empty band"):
        DCTBasis((3, 4, 4), cutoffs=(0.1, 0.11))
    with pytest.raises(ValueError, match="no frequency above it at resolution 4x4"):
        DCTBasis((3, 4, 4), cutoffs=(1.1,))  # radii reach sqrt(2) * 3/4 = 1.06 only


def test_dct_fit_puts_more_energy_in_low_band_for_smooth_images() -> None:
    gen = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(
        torch.randn(64, 3, 4, 4, generator=gen), size=16, mode="bilinear"
    )
    basis = DCTBasis.fit(smooth.split(16), cutoffs=(0.25,))
    assert basis.eigenvalues[0] > 10 * basis.eigenvalues[1]
    # each band's "eigenvalue": the mean over its frequencies of the coefficient variance
    # (summed over channels), against scipy's orthonormal 2-D DCT-II
    import scipy.fft

    coef = scipy.fft.dctn(smooth.numpy().astype(np.float64), axes=(2, 3), norm="ortho")
    per_freq = coef.var(0, ddof=1).sum(0)
    radius = np.hypot(*np.meshgrid(np.arange(16) / 16, np.arange(16) / 16, indexing="ij"))
    want = [per_freq[radius < 0.25].mean(), per_freq[radius >= 0.25].mean()]
    np.testing.assert_allclose(basis.eigenvalues.numpy(), want, rtol=1e-4)


@pytest.mark.parametrize("kind", ["channel", "pca", "dct"])
def test_save_load_round_trip(tmp_path, kind: str) -> None:
    images = gaussian_images(64, SIGMA0)
    basis = {
        "channel": lambda: ChannelBasis.fit([images]),
        "pca": lambda: PixelPCABasis.fit([images], k=4),
        "dct": lambda: DCTBasis.fit([images], cutoffs=(0.2, 0.4)),
    }[kind]()
    basis.metadata.update({"fingerprint": "abc123", "image_shape": [3, 8, 8]})
    loaded = load_basis(basis.save(tmp_path / "b.safetensors"))
    assert type(loaded) is type(basis) and loaded.metadata == basis.metadata
    assert torch.equal(loaded.eigenvalues, basis.eigenvalues)
    x = torch.randn(2, 3, 8, 8)
    g, r = torch.full((1, basis.num_groups), 0.5), torch.full((1,), 2.0)
    assert torch.allclose(loaded.scale(x, g, r), basis.scale(x, g, r))


def test_load_rejects_missing_and_corrupt_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="sqdm fit-basis"):
        load_basis(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="not a readable basis file"):
        load_basis(bad)
    good = ChannelBasis.luminance().save(tmp_path / "good.safetensors")
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[:-5])
    with pytest.raises(ValueError, match="not a readable basis file"):
        load_basis(truncated)


def test_save_errors_name_the_path_and_leave_nothing(tmp_path) -> None:
    basis = ChannelBasis.luminance()
    with pytest.raises(IsADirectoryError, match=r"is a folder; .* e\.g\. .*basis\.safetensors"):
        basis.save(tmp_path)
    assert list(tmp_path.iterdir()) == []  # refused before a temporary file was written
    if Path("/proc").is_dir():  # refuses new files whatever the user, root included
        with pytest.raises(OSError, match=r"cannot write the basis to /proc/b\.safetensors"):
            basis.save("/proc/b.safetensors")  # safetensors' own error, raised as an OSError


def test_direction_validation() -> None:
    with pytest.raises(ValueError, match="finite non-zero"):
        ChannelBasis([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="finite non-zero"):
        ChannelBasis([float("nan"), 1.0, 0.0])


@pytest.mark.parametrize("kind", ["channel", "pca", "dct"])
def test_scale_sum_of_several_terms_equals_dense_operators(kind: str) -> None:
    """The samplers' three-term ``scale_sum`` (per-sample and broadcast scales) equals the
    sum of the dense per-sample operators, and leaves its inputs untouched."""
    gen = torch.Generator().manual_seed(5)
    basis = {
        "channel": lambda: ChannelBasis(direction=torch.tensor([0.5, 0.6, 0.62])),
        "pca": lambda: PixelPCABasis.fit(torch.randn(300, 3, 8, 8, generator=gen).split(100), k=3),
        "dct": lambda: DCTBasis((3, 8, 8), cutoffs=(0.2, 0.5)),
    }[kind]()
    batch, k = 4, basis.num_groups
    terms = [
        (torch.randn(batch, 3, 8, 8, generator=gen), torch.rand(batch, k, generator=gen) + 0.5,
         torch.rand(batch, generator=gen) + 0.5),
        (torch.randn(batch, 3, 8, 8, generator=gen), torch.rand(1, k, generator=gen) + 0.5,
         torch.rand(1, generator=gen) + 0.5),
        (torch.randn(batch, 3, 8, 8, generator=gen), torch.rand(batch, k, generator=gen), 0.7),
    ]  # fmt: skip
    before = [x.clone() for x, _, _ in terms]
    out = basis.scale_sum(terms)
    for b in range(batch):
        want = torch.zeros(3 * 8 * 8, dtype=torch.float64)
        for x, group, rest in terms:
            g = group[b] if len(group) == batch else group[0]
            r = float(rest if isinstance(rest, float) else rest[b if len(rest) == batch else 0])
            want += dense_operator(basis, g, r, (3, 8, 8)) @ x[b].double().flatten()
        assert torch.allclose(out[b].double().flatten(), want, atol=1e-4), (kind, b)
    assert all(torch.equal(x, x0) for (x, _, _), x0 in zip(terms, before, strict=True))


@pytest.mark.parametrize("kind", ["pca", "dct"])
def test_per_pixel_bases_refuse_another_resolution(kind) -> None:
    images = torch.rand(32, 3, 8, 8) * 2 - 1
    basis = PixelPCABasis.fit([images], k=2) if kind == "pca" else DCTBasis((3, 8, 8))
    basis.check_shape((4, 3, 8, 8))
    for shape in ((4, 3, 16, 16), (4, 1, 8, 8), (3, 8, 8)):
        with pytest.raises(ValueError, match=r"images of shape \(3, 8, 8\).*this resolution"):
            basis.check_shape(shape)


def test_fitting_refuses_data_that_would_give_an_arbitrary_basis() -> None:
    """Constant images (no variance: every direction an eigenvector), fewer images than PCA
    components, or a NaN image: a one-line error, not an arbitrary or NaN basis."""
    images = torch.rand(8, 3, 8, 8) * 2 - 1
    with_nan = torch.cat([images, torch.full((1, 3, 8, 8), float("nan"))])
    cases = [
        (lambda: ChannelBasis.fit([torch.full((8, 3, 8, 8), 0.5)]), "no colour variance"),
        (lambda: PixelPCABasis.fit([torch.zeros(20, 3, 8, 8)], k=2), "no pixel variance"),
        (lambda: PixelPCABasis.fit([images[:3]], k=16), "k=16 components need more than 16"),
        (lambda: ChannelBasis.fit([with_nan]), "NaN or infinite pixel values"),
        (lambda: DCTBasis.fit([with_nan]), "NaN or infinite pixel values"),
    ]
    for fit, message in cases:
        with pytest.raises(ValueError, match=message):
            fit()
    assert PixelPCABasis.fit([images], k=4).components.shape == (4, 192)


def test_bases_refuse_arguments_they_would_misread(tmp_path) -> None:
    """Each of these used to be read otherwise without a word (k=2.7 as 2, max_images=-1 as
    all but one image, a 2 x 3 direction as 6 channels, any matrix as PCA components) or to
    fail with a raw torch or TypeError: a one-line ValueError naming the argument."""
    images = torch.rand(12, 3, 8, 8) * 2 - 1
    batches = images.split(4)
    cases = [
        (
            lambda: fit_basis("pca", batches, k=2.7),
            "basis option k must be a whole number, got 2.7",
        ),
        (lambda: fit_basis("pca", batches, k=True), "basis option k must be a whole number"),
        (lambda: fit_basis("pca", batches, k=0), "basis option k must be >= 1, got 0"),
        (lambda: fit_basis("dct", batches, cutoffs=[True, 0.5]), "cutoffs must be a number"),
        (lambda: ChannelBasis.fit(batches, max_images=-1), "max_images must be an integer >= 1"),
        (lambda: ChannelBasis.fit(batches, max_images=2.5), "max_images must be an integer >= 1"),
        (lambda: ChannelBasis([[1.0, 1, 1], [1, 0, 0]]), r"one vector, got shape \(2, 3\)"),
        (lambda: ChannelBasis("abc"), "direction must be numbers, got 'abc'"),
        (lambda: PixelPCABasis(torch.ones(2, 192), (3, 8, 8)), "must be orthonormal rows"),
        (lambda: ChannelBasis.fit([images, torch.rand(4, 4, 8, 8)]), "change shape mid-stream"),
        (lambda: DCTBasis.fit([images, torch.rand(4, 3, 16, 16)]), "change shape mid-stream"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert fit_basis("pca", batches, k="3").components.shape == (3, 192)  # as the CLI gives it

    def first_batch_only():  # k is checked at the first batch, not after streaming them all
        yield images[:4]
        raise AssertionError("read past the first batch")

    with pytest.raises(ValueError, match=r"k must be in \[1, 191\] for images of shape"):
        PixelPCABasis.fit(first_batch_only(), k=192)
    assert ChannelBasis.fit(batches, max_images=5).metadata == {"num_images": 5}
    assert ChannelBasis([[1.0, 1.0, 1.0]]).channels == 3
    assert ChannelBasis([1.0, 1, 1], eigenvalues=[2.0, 1.0]).eigenvalues.dtype == torch.float64
    # a file holds anything: the constructor's refusal is the file's
    fitted = PixelPCABasis.fit(batches, k=2)
    fitted.components = fitted.components * 2
    path = fitted.save(tmp_path / "pca.safetensors")
    with pytest.raises(ValueError, match=r"not a readable basis file .* orthonormal rows"):
        load_basis(path)
    with pytest.raises(IsADirectoryError, match="is a folder; give the basis file in it"):
        load_basis(tmp_path)
