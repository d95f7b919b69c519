"""Dataset registry: every loader on a tiny fixture written here, plus the real CIFAR-10 tar."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from squeezed_diffusion import data
from squeezed_diffusion.data import DATASETS, DataError, ImageDataset, load_dataset


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Keep decoded-image caches out of the user's home directory."""
    monkeypatch.setenv("SQDM_CACHE", str(tmp_path_factory.mktemp("cache")))


def _rng_images(n: int, h: int = 8, w: int = 8, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _save_png(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(path)


def _jpeg_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _hwc(ds: ImageDataset) -> np.ndarray:
    return ds.images.permute(0, 2, 3, 1).numpy()


# ----------------------------------------------------------------------------- registry


def test_registry_lists_every_loader_and_rejects_unknown_names():
    assert tuple(data._LOADERS) == DATASETS
    with pytest.raises(DataError, match=r"unknown dataset 'mnist'; choose one of: cifar10, "):
        load_dataset("mnist")


def test_missing_data_path_is_named(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=f"{missing} does not exist"):
        load_dataset("imagefolder", missing)
    with pytest.raises(DataError, match="needs a data path"):
        load_dataset("array")


# ----------------------------------------------------------------------------- CIFAR


def _write_cifar(root: Path, name: str, seed: int = 0) -> np.ndarray:
    """Torchvision's pickle layout; returns the images as [N, 3, 32, 32]."""
    if name == "cifar10":
        folder, files, label_key = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            b"labels",
        )
    else:
        folder, files, label_key = root / "cifar-100-python", ["train"], b"fine_labels"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    parts = []
    for f in files:
        flat = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        with (folder / f).open("wb") as fh:
            pickle.dump({b"data": flat, label_key: [0, 1, 2], b"batch_label": b"x"}, fh)
        parts.append(flat.reshape(-1, 3, 32, 32))
    return np.concatenate(parts)


@pytest.mark.parametrize(("name", "count"), [("cifar10", 15), ("cifar100", 3)])
def test_cifar_pickles(tmp_path, name, count):
    expected = _write_cifar(tmp_path, name)
    ds = load_dataset(name, tmp_path)
    assert len(ds) == count and ds.shape == (3, 32, 32) and ds.name == name
    np.testing.assert_array_equal(ds.images.numpy(), expected)
    first = next(ds.batches(4))
    torch.testing.assert_close(first[2], torch.from_numpy(expected[2]).float() / 127.5 - 1)


def test_cifar_missing_offline_says_where_and_what_to_do(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"CIFAR-10 not found under {tmp_path}" in msg
    assert "cifar-10-batches-py/data_batch_1..5" in msg and "--download" in msg
    with pytest.raises(DataError, match="cifar-100-python/train"):
        load_dataset("cifar100", tmp_path)


def test_cifar_download_uses_torchvision_then_reads_pickles(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def fake_cifar100(root, train, download):
        calls.append((root, train, download))
        _write_cifar(Path(root), "cifar100", seed=3)

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", fake_cifar100)
    ds = load_dataset("cifar100", tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True)] and len(ds) == 3
    load_dataset("cifar100", tmp_path, download=True)  # files present: no second download
    assert len(calls) == 1

    def offline(root, train, download):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match=r"downloading CIFAR-10 .* failed .*no network"):
        load_dataset("cifar10", tmp_path, download=True)


# ----------------------------------------------------------------------------- image folders


def test_imagefolder_png_class_subfolders_sorted_and_exact(tmp_path):
    imgs = _rng_images(4)
    for path, a in zip(["cat/1.png", "cat/0.png", "dog/0.png", "ant.png"], imgs, strict=True):
        _save_png(tmp_path / path, a)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset("imagefolder", tmp_path)
    assert ds.shape == (3, 8, 8) and len(ds) == 4
    # sorted by relative path: ant.png, cat/0.png, cat/1.png, dog/0.png
    np.testing.assert_array_equal(_hwc(ds), imgs[[3, 1, 0, 2]])


def test_imagefolder_grayscale_kept_only_when_all_gray(tmp_path):
    gray = _rng_images(2, c=1)
    _save_png(tmp_path / "a.png", gray[0])
    _save_png(tmp_path / "b.png", gray[1])
    assert load_dataset("imagefolder", tmp_path).shape == (1, 8, 8)
    _save_png(tmp_path / "c.png", _rng_images(1)[0])
    mixed = _hwc(load_dataset("imagefolder", tmp_path))
    assert mixed.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(mixed[0], np.repeat(gray[0], 3, axis=2))


def test_imagefolder_mixed_sizes_need_resolution(tmp_path):
    _save_png(tmp_path / "a.png", _rng_images(1, 8, 8)[0])
    _save_png(tmp_path / "b.png", np.full((12, 16, 3), 200, np.uint8))
    with pytest.raises(DataError, match=r"differ in size.*--resolution"):
        load_dataset("imagefolder", tmp_path)
    ds = load_dataset("imagefolder", tmp_path, resolution=4)
    assert ds.shape == (3, 4, 4)
    assert (ds.images[1] == 200).all()  # a constant image stays constant through crop + resize


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar"])
def test_imagefolder_reads_tar_archives_without_extracting(tmp_path, suffix):
    colours = {
        "train/b/0.jpg": (250, 10, 10),
        "train/a/1.jpg": (10, 250, 10),
        "x/c.jpeg": (0, 0, 240),
    }
    archive = tmp_path / f"imgs{suffix}"
    with tarfile.open(archive, "w:gz" if suffix != ".tar" else "w") as tf:
        for name, colour in colours.items():  # archive order differs from sorted order
            payload = _jpeg_bytes(colour)
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        info = tarfile.TarInfo("README")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    ds = load_dataset("imagefolder", archive)
    assert ds.shape == (3, 8, 8) and len(ds) == 3
    means = _hwc(ds).reshape(3, -1, 3).mean(axis=1)
    expected = [colours[k] for k in sorted(colours)]
    np.testing.assert_allclose(means, expected, atol=4)
    assert sorted(os.listdir(tmp_path)) == [archive.name]  # nothing extracted next to it


def test_corrupt_image_is_named_and_can_be_skipped(tmp_path):
    _save_png(tmp_path / "good.png", _rng_images(1)[0])
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"cannot read image .*bad\.png.*--skip-bad-images"):
        load_dataset("imagefolder", tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = load_dataset("imagefolder", tmp_path, skip_bad_images=True)
    assert len(ds) == 1


def test_truncated_jpeg_in_archive_names_member(tmp_path):
    archive = tmp_path / "x.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, payload in [
            ("ok.jpg", _jpeg_bytes((1, 2, 3))),
            ("cut.jpg", _jpeg_bytes((9, 9, 9))[:40]),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    with pytest.raises(DataError, match=r"x\.tar\.gz:cut\.jpg"):
        load_dataset("imagefolder", archive)


def test_empty_folder_and_empty_archive(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images .*found in"):
        load_dataset("imagefolder", tmp_path / "empty")
    with tarfile.open(tmp_path / "e.tar", "w"):
        pass
    with pytest.raises(DataError, match="no images"):
        load_dataset("imagefolder", tmp_path / "e.tar")
    (tmp_path / "f.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"not a folder or \.tar"):
        load_dataset("imagefolder", tmp_path / "f.zip")


def test_decoded_archive_is_cached_and_invalidated_on_change(tmp_path, monkeypatch):
    archive = tmp_path / "a.tar"
    _save_png(tmp_path / "p.png", _rng_images(1)[0])
    with tarfile.open(archive, "w") as tf:
        tf.add(tmp_path / "p.png", "p.png")
    first = load_dataset("imagefolder", archive)
    cached = list(Path(os.environ["SQDM_CACHE"]).glob("a.tar-*.npy"))
    assert len(cached) == 1

    def no_decoding(*args):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(data, "_decode", no_decoding)
    assert load_dataset("imagefolder", archive).fingerprint == first.fingerprint
    st = archive.stat()
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded although cached"):
        load_dataset("imagefolder", archive)


# ----------------------------------------------------------------------------- CelebA


def test_celeba_centre_crop_and_resize(tmp_path):
    face = np.zeros((218, 178, 3), np.uint8)  # black border, white centre 140 x 140
    face[39:179, 19:159] = 255
    for i in range(2):
        _save_png(tmp_path / "celeba" / "img_align_celeba" / f"{i:06d}.png", face)
    ds = load_dataset("celeba64", tmp_path)
    assert ds.shape == (3, 64, 64) and len(ds) == 2
    # without the crop the black border would show up at the edges
    assert ds.images.float().min() > 240
    assert load_dataset(
        "celeba64", tmp_path / "celeba" / "img_align_celeba", resolution=32
    ).shape == (3, 32, 32)


def test_celeba_uses_the_training_split_when_the_partition_file_is_there(tmp_path):
    folder = tmp_path / "celeba" / "img_align_celeba"
    for i, split in enumerate([0, 1, 0, 2], 1):  # train images white, the others black
        _save_png(
            folder / f"{i:06d}.jpg", np.full((218, 178, 3), 255 if split == 0 else 0, np.uint8)
        )
    partition = tmp_path / "celeba" / "list_eval_partition.txt"
    partition.write_text("000001.jpg 0\n000002.jpg 1\n000003.jpg 0\n000004.jpg 2\n")
    ds = load_dataset("celeba64", tmp_path)
    assert len(ds) == 2 and ds.images.float().min() > 240
    partition.write_text("000001.jpg train\n")
    with pytest.raises(DataError, match=r"list_eval_partition.txt:1 is not 'FILE SPLIT'"):
        load_dataset("celeba64", tmp_path)


# ----------------------------------------------------------------------------- Fashion-MNIST


def _idx_bytes(a: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, a.ndim]) + np.asarray(a.shape, ">i4").tobytes()
    return header + a.tobytes()


def test_fashion_mnist_idx_gz_and_plain(tmp_path):
    imgs = _rng_images(5, 28, 28, 1)[..., 0]
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    with gzip.open(raw / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(_idx_bytes(imgs))
    ds = load_dataset("fashion-mnist", tmp_path / "tv")
    assert ds.shape == (1, 28, 28) and len(ds) == 5
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), imgs)
    flat = tmp_path / "debian"
    flat.mkdir()
    (flat / "train-images-idx3-ubyte").write_bytes(_idx_bytes(imgs)[:-1])  # truncated
    with pytest.raises(DataError, match="not a complete uint8 IDX file"):
        load_dataset("fashion-mnist", flat)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path)


# ----------------------------------------------------------------------------- photos


def test_photos_deterministic_in_range_and_varied():
    a = load_dataset("photos", subset=64, seed=0)
    b = load_dataset("photos", subset=64, seed=0)
    c = load_dataset("photos", subset=64, seed=1)
    assert a.shape == (3, 32, 32) and len(a) == 64
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert torch.equal(load_dataset("photos", subset=8, seed=0).images, a.images[:8])
    x = next(a.batches(len(a)))
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.2
    assert len({a.images[i].float().mean().item() for i in range(64)}) > 50  # distinct crops
    for res in (16, 64):
        assert load_dataset("photos", subset=8, resolution=res).shape == (3, res, res)


# ----------------------------------------------------------------------------- arrays


def test_array_layouts_and_value_ranges(tmp_path):
    imgs = _rng_images(6, 8, 10)
    np.save(tmp_path / "nhwc.npy", imgs)
    np.save(tmp_path / "nchw.npy", imgs.transpose(0, 3, 1, 2))
    np.savez(tmp_path / "named.npz", labels=np.arange(6), images=imgs)
    np.savez(tmp_path / "only.npz", x=imgs.transpose(0, 3, 1, 2))
    np.save(tmp_path / "pm1.npy", imgs.astype(np.float32) / 127.5 - 1)
    np.save(tmp_path / "unit.npy", imgs.astype(np.float64) / 255)
    for f in ["nhwc.npy", "nchw.npy", "named.npz", "only.npz", "pm1.npy", "unit.npy"]:
        ds = load_dataset("array", tmp_path / f)
        assert ds.shape == (3, 8, 10), f
        np.testing.assert_array_equal(_hwc(ds), imgs, err_msg=f)
    np.save(tmp_path / "gray.npy", imgs[..., 0])
    assert load_dataset("array", tmp_path / "gray.npy").shape == (1, 8, 10)


def test_array_errors(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((4, 5, 6, 7), np.uint8))
    with pytest.raises(DataError, match=r"expected images shaped \[N, H, W, C\].*\(4, 5, 6, 7\)"):
        load_dataset("array", tmp_path / "bad.npy")
    np.save(tmp_path / "big.npy", np.full((2, 4, 4, 3), 3.0))
    with pytest.raises(DataError, match=r"\[0, 1\] or \[-1, 1\]"):
        load_dataset("array", tmp_path / "big.npy")
    np.savez(tmp_path / "two.npz", a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(DataError, match="name the image array 'images'"):
        load_dataset("array", tmp_path / "two.npz")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("array", tmp_path / "junk.npy")


# ----------------------------------------------------------------------------- common options


@pytest.fixture
def arr_file(tmp_path) -> Path:
    imgs = _rng_images(10, 8, 8)
    imgs[:, :, :4] = 0  # left half black, right half random: a flip is visible
    np.save(tmp_path / "x.npy", imgs)
    return tmp_path / "x.npy"


def test_subset_keeps_first_images(arr_file):
    full = load_dataset("array", arr_file)
    sub = load_dataset("array", arr_file, subset=3)
    assert torch.equal(sub.images, full.images[:3])
    for bad in (0, -1, 2.5, "4", True):
        with pytest.raises(DataError, match="subset must be a positive integer"):
            load_dataset("array", arr_file, subset=bad)
    with pytest.raises(DataError, match="resolution must be a positive integer, got True"):
        load_dataset("array", arr_file, resolution=True)
    # only drawn datasets read a seed: one given for stored images would change nothing
    with pytest.raises(
        DataError, match=r"seed draws the generated datasets \(photos, shapes\), not"
    ):
        load_dataset("array", arr_file, seed=3)
    with pytest.raises(DataError, match=r"seed must be an integer >= 0, got 1\.5"):
        load_dataset("shapes", subset=2, seed=1.5)
    with pytest.raises(DataError, match="subset 11 exceeds the 10 images"):
        load_dataset("array", arr_file, subset=11)


def test_resolution_resizes_once_with_antialiasing(tmp_path):
    stripes = np.zeros((1, 16, 16, 3), np.uint8)
    stripes[:, :, ::2] = 255  # one-pixel stripes average to grey when antialiased
    np.save(tmp_path / "s.npy", stripes)
    ds = load_dataset("array", tmp_path / "s.npy", resolution=4)
    assert ds.shape == (3, 4, 4)
    assert ds.images.float().sub(127.5).abs().max() < 10
    # exactly one PIL bilinear resize (two in a row, or another filter, give other pixels)
    once = np.asarray(Image.fromarray(stripes[0]).resize((4, 4), Image.BILINEAR))
    assert np.array_equal(ds.images[0].permute(1, 2, 0).numpy(), once)


def test_batches_are_unflipped_floats_in_dataset_order(arr_file):
    ds = load_dataset("array", arr_file)
    expected = torch.from_numpy(np.load(arr_file)).permute(0, 3, 1, 2).float() / 127.5 - 1
    batches = list(ds.batches(4))  # basis fitting sees the data unflipped, in order
    assert [len(b) for b in batches] == [4, 4, 2]
    torch.testing.assert_close(torch.cat(batches), expected)


def test_fingerprint_tracks_content_and_options(arr_file):
    ds = load_dataset("array", arr_file)
    assert re.fullmatch("[0-9a-f]{16}", ds.fingerprint)
    assert load_dataset("array", arr_file).fingerprint == ds.fingerprint
    assert load_dataset("array", arr_file, subset=9).fingerprint != ds.fingerprint
    changed = np.load(arr_file)
    changed[5, 3, 6, 1] ^= 1
    np.save(arr_file, changed)
    assert load_dataset("array", arr_file).fingerprint != ds.fingerprint


# ----------------------------------------------------------------------------- real data


def test_real_cifar10_jpeg_tar(cifar_tar, shared_cache, monkeypatch):
    """All 50,000 images, in the session's shared cache (test_cli and test_readme read it)."""
    monkeypatch.setenv("SQDM_CACHE", str(shared_cache))
    ds = load_dataset("imagefolder", cifar_tar)
    assert len(ds) == 50_000 and ds.shape == (3, 32, 32)
    mean = ds.images.sum(dtype=torch.int64).item() / ds.images.numel()
    assert 115 < mean < 128, mean  # CIFAR-10's mean pixel value is about 121
    assert (
        ds.images[:, 0].float().mean() > ds.images[:, 2].float().mean()
    )  # red above blue, as CIFAR
