"""The `sqdm` command: help, version, fit-basis on arrays, folders and archives."""

from __future__ import annotations

import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from squeezed_diffusion import ChannelBasis, PixelPCABasis, __version__, load_basis
from squeezed_diffusion.cli import main
from squeezed_diffusion.data import load_dataset

PLANTED = np.array([0.8, -0.55, 0.24]) / np.linalg.norm([0.8, -0.55, 0.24])  # far from luminance


def correlated_uint8(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    """[N, H, W, 3] uint8 images whose colours vary mostly along ``PLANTED`` (about 79 degrees
    from luminance, so a fit that returned the luminance default would fail)."""
    rng = np.random.default_rng(seed)
    main_axis = rng.normal(0, 45, (n, size, size, 1)) * PLANTED
    return np.clip(128 + main_axis + rng.normal(0, 8, (n, size, size, 3)), 0, 255).astype(np.uint8)


def test_version_and_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "squeezed_diffusion.cli", "--version"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and __version__ in out.stdout
    helptext = subprocess.run(["sqdm", "--help"], capture_output=True, text=True)
    assert helptext.returncode == 0 and "fit-basis" in helptext.stdout


def test_fit_basis_on_npy_prints_and_writes(tmp_path, capsys) -> None:
    arr = tmp_path / "imgs.npy"
    np.save(arr, correlated_uint8(40))
    out = tmp_path / "basis.safetensors"
    assert main(["fit-basis", str(arr), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "eigenvalues: [" in printed and str(out) in printed
    basis = load_basis(out)
    assert isinstance(basis, ChannelBasis)
    cos = abs(float(basis.direction.double() @ torch.tensor(PLANTED)))
    assert np.degrees(np.arccos(min(1.0, cos))) < 3  # the planted direction, not luminance
    assert basis.metadata["num_images"] == 40 and basis.metadata["image_shape"] == [3, 8, 8]
    assert len(basis.metadata["fingerprint"]) >= 8


def test_fit_basis_on_folder_and_tar(tmp_path, capsys) -> None:
    folder = tmp_path / "imgs" / "cls"
    folder.mkdir(parents=True)
    for i, img in enumerate(correlated_uint8(12, seed=1)):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    archive = tmp_path / "imgs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "imgs", arcname="imgs")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert main(["fit-basis", str(tmp_path / "imgs"), "--out", str(a)]) == 0
    assert main(["fit-basis", str(archive), "--out", str(b)]) == 0
    assert np.allclose(load_basis(a).direction, load_basis(b).direction, atol=1e-6)
    capsys.readouterr()
    assert (
        main(["fit-basis", str(tmp_path / "imgs"), "--basis", "pca", "--k", "3", "--out", str(a)])
        == 0
    )
    assert isinstance(load_basis(a), PixelPCABasis) and load_basis(a).components.shape == (3, 192)


def test_fit_basis_fits_what_training_fits(tmp_path, monkeypatch, capsys) -> None:
    """The same image cap as a training run's basis (the first 50,000), so that both give the
    same basis of a larger set such as CelebA; and the basis aliases that train takes."""
    import squeezed_diffusion.training.bases as bases
    from squeezed_diffusion.training.bases import cached_basis

    arr = tmp_path / "imgs.npy"
    np.save(arr, correlated_uint8(40))
    caps = []

    def spy(name, batches, max_images, **options):
        caps.append(max_images)
        return fit(name, batches, max_images, **options)

    fit = bases.fit_basis
    monkeypatch.setattr(bases, "fit_basis", spy)
    monkeypatch.setenv("SQDM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "b.safetensors"
    assert main(["fit-basis", str(arr), "--basis", "pixel_pca", "--k", "2", "--out", str(out)]) == 0
    assert "fitted pca basis on 40 images" in capsys.readouterr().out
    trained = cached_basis(load_dataset("array", arr), "pca", {"k": 2})
    assert caps == [50_000, 50_000]
    assert torch.equal(load_basis(out).components, trained.components)
    # the cache is a cache: a damaged entry is fitted again (with a warning), not an error
    (entry,) = (tmp_path / "cache" / "bases").iterdir()
    entry.write_bytes(b"cut short")
    with pytest.warns(UserWarning, match="is not a readable basis file.*; fitting the basis again"):
        again = cached_basis(load_dataset("array", arr), "pca", {"k": 2})
    assert len(caps) == 3 and torch.equal(again.components, trained.components)
    assert torch.equal(load_basis(entry).components, trained.components)


def test_fit_basis_takes_the_basis_option_spellings_of_train() -> None:
    """``--basis-k`` and ``--subset`` as ``train`` spells them, beside ``--k``/``--max-images``."""
    from squeezed_diffusion.cli import build_parser

    parse = build_parser().parse_args
    for argv in (["--k", "3", "--max-images", "5"], ["--basis-k", "3", "--subset", "5"]):
        args = parse(["fit-basis", "x.npy", *argv])
        assert (args.basis_opt_k, args.max_images) == (3, 5)


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["fit-basis", "does/not/exist"], "neither an existing folder"),
        (["fit-basis", "missing.npy"], "missing.npy does not exist; check the path"),
    ],
)
def test_fit_basis_errors_are_one_line(argv, pattern, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sqdm: error:") and pattern in err and "\n" not in err
    assert not list(tmp_path.iterdir())  # nothing written that could pass for a result


def test_a_dataset_name_with_data_dir_is_the_dataset_not_a_folder_named_so(
    tmp_path, monkeypatch, capsys
) -> None:
    """With a folder ./array here, ``fit-basis array --data-dir X.npy`` read the folder and
    ignored --data-dir."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "array").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "array" / "0.png")
    np.save(tmp_path / "x.npy", correlated_uint8(40))
    out = tmp_path / "b.safetensors"
    assert main(["fit-basis", "array", "--data-dir", "x.npy", "--out", str(out)]) == 0
    assert "on 40 images of shape (3, 8, 8) (array)" in capsys.readouterr().out
