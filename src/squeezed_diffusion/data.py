"""Dataset registry: every dataset is decoded once into memory and served as floats in [-1, 1].

Images are held as one uint8 tensor ``[N, C, H, W]`` (the 50,000 CIFAR images take 150 MB), so
training pays no decoding per step and basis fitting streams plain tensor slices. Loaders only
produce a uint8 ``[N, H, W, C]`` array; ``load_dataset`` applies ``subset`` and ``resolution``
the same way for all of them. Resizing is PIL's antialiased bilinear filter, after a centre crop
to a square when the images are not square.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .core.fileio import atomic_write
from .core.values import is_integer

__all__ = ["DATASETS", "DataError", "ImageDataset", "load_dataset"]

DATASETS: tuple[str, ...] = (
    "cifar10",
    "cifar100",
    "celeba64",
    "imagefolder",
    "fashion-mnist",
    "photos",
    "shapes",
    "array",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
CELEBA_CROP = 140  # the usual centre crop of the 178x218 aligned CelebA images
PHOTOS_DEFAULT_N = 10_000
_CACHE_FORMAT = 1  # bump when the decoded layout changes, so stale caches are ignored
_GRAY_MODES = ("1", "L", "LA")


class DataError(ValueError):
    """Bad or missing dataset; the message is one line naming the problem and the fix."""


class ImageDataset:
    """All images of a dataset in memory as uint8 ``[N, C, H, W]``.

    Training gathers its batches straight from :attr:`images` (``training/batches.py``),
    basis fitting streams float batches from :meth:`batches`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        name: str,
        *,
        resolution: int | None = None,
        subset: int | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) == 0:
            raise DataError(
                f"{name}: expected a non-empty uint8 tensor [N, C, H, W], "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        self.images = images.contiguous()
        self.name = name
        self.resolution = resolution
        self.subset = subset
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every item."""
        c, h, w = self.images.shape[1:]
        return c, h, w

    @property
    def fingerprint(self) -> str:
        """Short content hash, recorded with trained models to tell which data they saw."""
        if self._fingerprint is None:
            meta = [self.name, self.resolution, self.subset, list(self.images.shape)]
            digest = hashlib.sha256(json.dumps(meta).encode())
            digest.update(self.images.numpy().data)
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Float ``[B, C, H, W]`` batches in [-1, 1], in dataset order (for basis fitting)."""
        for start in range(0, len(self), batch_size):
            yield to_float(self.images[start : start + batch_size])


def check_options(
    name: str, data_dir: str | Path | None, download: bool, skip_bad_images: bool
) -> None:
    """A one-line error for an unknown dataset, or an option its loader would not read (a
    configuration checks this before any work, not when its data are first loaded)."""
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    given = {
        "data_dir": data_dir is not None,
        "download": download,
        "skip_bad_images": skip_bad_images,
    }
    for option in (o for o, on in given.items() if on and o not in _OPTIONS[name]):
        flag = "--" + option.replace("_", "-")
        raise DataError(f"{flag} does not apply to the {name} dataset; drop it")


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    resolution: int | None = None,
    subset: int | None = None,
    seed: int | None = None,
    download: bool = False,
    skip_bad_images: bool = False,
) -> ImageDataset:
    """Load dataset ``name`` (one of ``DATASETS``) fully into memory.

    ``subset`` keeps the first ``subset`` images; ``resolution`` resizes every image to
    ``resolution`` x ``resolution`` once, at load time; ``seed`` (default 0) draws the
    generated datasets, ``photos`` and ``shapes``, and is refused for the others;
    ``download`` lets torchvision fetch CIFAR when it is missing.
    """
    check_options(name, data_dir, download, skip_bad_images)
    loader = _LOADERS[name]
    for flag, value in (("subset", subset), ("resolution", resolution)):
        if value is not None and not (is_integer(value) and value >= 1):
            raise DataError(f"{flag} must be a positive integer, got {value!r}")
    if seed is not None and name not in _SEEDED:
        raise DataError(
            f"seed draws the generated datasets ({', '.join(_SEEDED)}), not {name}; drop it"
        )
    if seed is not None and not (is_integer(seed) and seed >= 0):
        raise DataError(f"seed must be an integer >= 0, got {seed!r}")
    root = None if data_dir is None else Path(data_dir).expanduser()
    request = _Request(name, root, resolution, subset, seed or 0, download, skip_bad_images)
    images = loader(request)
    if subset is not None and subset > len(images):
        raise DataError(f"{name}: subset {subset} exceeds the {len(images)} images available")
    images = _resize_all(images[:subset], resolution)
    tensor = torch.from_numpy(np.require(images, np.uint8, ["C", "W"])).permute(0, 3, 1, 2)
    return ImageDataset(tensor, name, resolution=resolution, subset=subset)


# ----------------------------------------------------------------------------- shared helpers


@dataclass(frozen=True)
class _Request:
    name: str
    root: Path | None
    resolution: int | None
    subset: int | None
    seed: int
    download: bool
    skip_bad_images: bool


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to floats in [-1, 1], the data range of every process: the inverse of
    :func:`to_uint8` (up to its rounding)."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8 ``[N, C, H, W]`` (rounded, clipped): the inverse of the
    scaling the dataset streams with, for samples that are scored or saved as images."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def _existing(req: _Request) -> Path:
    """The request's data path, which must exist."""
    if req.root is None:
        raise DataError(f"{req.name} needs a data path; pass --data-dir PATH")
    if not req.root.exists():
        raise DataError(f"{req.name}: {req.root} does not exist; check the data path")
    return req.root


def _fit(im: Image.Image, size: int, crop: int | None = None) -> Image.Image:
    """Centre-crop a square (side ``crop``, at most the short side) and resize it to ``size``."""
    w, h = im.size
    side = min(w, h, crop or w)
    left, top = (w - side) // 2, (h - side) // 2
    if side != w or side != h:  # crop first: resize(box=...) would blend in pixels outside it
        im = im.crop((left, top, left + side, top + side))
    return im if side == size else im.resize((size, size), Image.BILINEAR)


def _from_pil(im: Image.Image) -> np.ndarray:
    a = np.asarray(im)
    return a.reshape(*a.shape[:2], -1)  # grayscale (H, W) -> (H, W, 1)


def _to_pil(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)


def _resize_all(images: np.ndarray, size: int | None) -> np.ndarray:
    """Uint8 ``[N, H, W, C]`` resized to ``size`` (PIL per image: one filter for all loaders)."""
    if size is None or images.shape[1:3] == (size, size):
        return images
    return np.stack([_from_pil(_fit(_to_pil(a), size)) for a in images])


# ----------------------------------------------------------------------------- image files


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _decode(src: Path | bytes, size: int | None, crop: int | None) -> np.ndarray:
    """One image file as uint8 ``[H, W, C]`` with C = 1 (grayscale) or 3; raises on bad data."""
    with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
        loaded = im.convert("L" if im.mode in _GRAY_MODES else "RGB")  # forces full decoding
    return _from_pil(loaded if size is None else _fit(loaded, size, crop))


def _decode_all(
    items: Iterable[tuple[int, str, Path | bytes]],
    count: int,
    size: int | None,
    crop: int | None,
    skip_bad: bool,
) -> tuple[np.ndarray, int]:
    """Decode ``(slot, label, source)`` items into slot order; returns (images, skipped)."""
    decoded: list[np.ndarray | None] = [None] * count
    for slot, label, src in items:
        try:
            decoded[slot] = _decode(src, size, crop)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            if not skip_bad:
                raise DataError(
                    f"cannot read image {label} ({err}); "
                    "pass --skip-bad-images to skip unreadable files"
                ) from err
    images = [a for a in decoded if a is not None]
    skipped = count - len(images)
    if skipped:
        warnings.warn(f"skipped {skipped} unreadable image file(s)", stacklevel=2)
    if not images:
        raise DataError("no readable images left after skipping unreadable files")
    if any(a.shape[2] == 3 for a in images):  # grayscale only if every image is grayscale
        images = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in images]
    sizes = sorted({a.shape[:2] for a in images})
    if len(sizes) > 1:
        raise DataError(
            f"images differ in size ({', '.join(f'{h}x{w}' for h, w in sizes[:4])}"
            f"{', ...' if len(sizes) > 4 else ''}); pass --resolution N to resize all to N x N"
        )
    return np.stack(images), skipped


def _no_images(path: Path) -> DataError:
    kinds = ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES)
    return DataError(f"no images ({kinds}) found in {path}; give a folder or archive of images")


def _decode_archive(
    req: _Request, path: Path, size: int | None, crop: int | None
) -> tuple[np.ndarray, int]:
    """Decode a tar archive without extracting it: members are streamed in archive order."""
    try:
        with tarfile.open(path) as tf:
            members = sorted(
                (m for m in tf.getmembers() if m.isfile() and _is_image(m.name)),
                key=lambda m: m.name,
            )[: req.subset]
            if not members:
                raise _no_images(path)
            order = sorted(range(len(members)), key=lambda i: members[i].offset_data)
            items = ((i, f"{path}:{members[i].name}", _read_member(tf, members[i])) for i in order)
            return _decode_all(items, len(members), size, crop, req.skip_bad_images)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"cannot read archive {path} ({err}); is it a valid .tar/.tar.gz?") from err


def _read_member(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tf.extractfile(member)
    assert f is not None  # regular files always have content
    return f.read()


def _load_files(
    req: _Request, size: int | None, crop: int | None = None, names: set[str] | None = None
) -> np.ndarray:
    """Images from a folder (recursive) or tar archive, sorted by relative path; ``names``
    (file names) keeps only those files of a folder, e.g. a dataset's training split.

    A full decode is cached as .npy (see ``_cache_path``); a ``subset`` reads the cache when
    one exists and otherwise decodes only its own images.
    """
    path = _existing(req)
    if path.is_file():
        if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise DataError(f"{path} is a file, not a folder or .tar/.tar.gz/.tgz of images")
        st = path.stat()
        signature: object = [st.st_size, st.st_mtime_ns]
    else:
        files = sorted(
            (
                p
                for p in path.rglob("*")
                if _is_image(p.name) and (names is None or p.name in names) and p.is_file()
            ),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            raise _no_images(path)
        stats = [(p.relative_to(path).as_posix(), p.stat()) for p in files]
        signature = hashlib.sha256(
            json.dumps([(n, s.st_size, s.st_mtime_ns) for n, s in stats]).encode()
        ).hexdigest()
    cache = _cache_path(path, signature, [size, crop])
    if cache.exists():
        return np.load(cache, mmap_mode="r")[: req.subset]
    if path.is_file():
        images, skipped = _decode_archive(req, path, size, crop)
    else:
        chosen = files[: req.subset]
        items = ((i, str(p), p) for i, p in enumerate(chosen))
        images, skipped = _decode_all(items, len(chosen), size, crop, req.skip_bad_images)
    if req.subset is None and not skipped:  # only complete, clean decodes are cached
        _write_cache(cache, images)
    return images


def cache_dir() -> Path:
    """Where decoded datasets and fitted bases are cached: ``$SQDM_CACHE`` or ``~/.cache``."""
    return Path(os.environ.get("SQDM_CACHE") or Path.home() / ".cache" / "squeezed-diffusion")


def _cache_path(source: Path, signature: object, params: object) -> Path:
    """Cache file for a decoded source, keyed by its path, size/mtime signature and options."""
    root = cache_dir()
    key = json.dumps([_CACHE_FORMAT, str(source.resolve()), signature, params])
    return root / f"{source.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"


def _write_cache(path: Path, images: np.ndarray) -> None:
    """Atomic, so concurrent or killed runs never see half a file; a cache that cannot be
    written only warns (the images are decoded again next time)."""
    try:
        atomic_write(path, lambda tmp: np.save(tmp, images))
    except OSError as err:
        warnings.warn(f"could not cache decoded images at {path}: {err}", stacklevel=3)


# ----------------------------------------------------------------------------- loaders


_CIFAR = {  # name: (title, folder, files)
    "cifar10": ("CIFAR-10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)]),
    "cifar100": ("CIFAR-100", "cifar-100-python", ["train"]),
}


def _load_cifar(req: _Request) -> np.ndarray:
    """Torchvision's python-pickle files, read directly (torchvision's md5 check rejects copies)."""
    title, folder, files = _CIFAR[req.name]
    if req.root is None:
        raise DataError(
            f"{title} needs a data path; pass --data-dir PATH (sqdm train and sqdm sweep can "
            "add --download to fetch it there)"
        )
    paths = [req.root / folder / f for f in files]
    expected = f"{folder}/{files[0]}..{len(files)}" if len(files) > 1 else f"{folder}/{files[0]}"
    if req.download and not all(p.exists() for p in paths):
        from torchvision import datasets

        cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[req.name]
        try:
            cls(str(req.root), train=True, download=True)
        except (OSError, RuntimeError) as err:
            raise DataError(
                f"downloading {title} into {req.root} failed ({err}); "
                f"check the internet connection or put torchvision's {title} files there"
            ) from err
    if not all(p.exists() for p in paths):
        raise DataError(
            f"{title} not found under {req.root}: expected {expected}; put torchvision's "
            f"{title} files there, or fetch them with sqdm train or sqdm sweep --download"
        )
    parts = []
    for p in paths:
        try:
            with p.open("rb") as f:
                data = pickle.load(f, encoding="bytes")[b"data"]
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as err:
            raise DataError(f"{p} is not a {title} python-pickle batch ({err!r})") from err
        parts.append(np.asarray(data, np.uint8).reshape(-1, 3, 32, 32))
    return np.concatenate(parts).transpose(0, 2, 3, 1)


def _load_celeba(req: _Request) -> np.ndarray:
    """Aligned CelebA (178x218): centre crop 140 px, resized to 64 unless --resolution says else.

    The training split (162,770 images) when ``list_eval_partition.txt`` lies in the image
    folder or up to two levels above it (torchvision's layout); every image otherwise.
    """
    root = _existing(req)
    for sub in ("celeba/img_align_celeba", "img_align_celeba"):  # torchvision layout first
        if (root / sub).is_dir():
            root = root / sub
            break
    split = next(
        (
            d / _CELEBA_SPLIT
            for d in (root, root.parent, root.parent.parent)
            if (d / _CELEBA_SPLIT).is_file()
        ),
        None,
    )
    names = _celeba_train_names(split) if split is not None else None
    return _load_files(
        replace(req, root=root), size=req.resolution or 64, crop=CELEBA_CROP, names=names
    )


_CELEBA_SPLIT = "list_eval_partition.txt"


def _celeba_train_names(path: Path) -> set[str]:
    """File names marked 0 (train) in CelebA's partition file: lines ``000001.jpg 0``."""
    names = set()
    for i, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{path}:{i} is not 'FILE SPLIT' (split 0, 1 or 2); restore the file")
        if parts[1] == "0":
            names.add(parts[0])
    if not names:
        raise DataError(f"{path} marks no image as training (split 0); restore the file")
    return names


def _load_imagefolder(req: _Request) -> np.ndarray:
    return _load_files(req, size=req.resolution)


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (MNIST format): 0, 0, dtype 0x08 (uint8), ndim, big-endian int32 dims."""
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
        raw = f.read()
    ndim = raw[3] if len(raw) > 4 and raw[:3] == b"\x00\x00\x08" else 0
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4)) if ndim else ()
    if not dims or len(raw) != 4 + 4 * ndim + int(np.prod(dims)):
        raise DataError(f"{path} is not a complete uint8 IDX file; re-download or reinstall it")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _load_fashion_mnist(req: _Request) -> np.ndarray:
    """Torchvision's ``FashionMNIST/raw`` layout or Debian's flat folder, plain or gzipped."""
    root = req.root or FASHION_MNIST_DIR
    candidates = [
        root / sub / f"train-images-idx3-ubyte{ext}"
        for sub in (".", "FashionMNIST/raw")
        for ext in (".gz", "")
    ]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise DataError(
            f"Fashion-MNIST not found under {root}: expected train-images-idx3-ubyte[.gz]; "
            f"run 'apt-get install dataset-fashion-mnist' (installs to {FASHION_MNIST_DIR}) "
            "or put torchvision's FashionMNIST/raw files there"
        )
    images = _read_idx(path)
    if images.ndim != 3:
        raise DataError(f"{path} holds shape {images.shape}; expected images [N, H, W]")
    return images[..., None]


def _photo_sources() -> list[np.ndarray]:
    """scikit-image's bundled colour photographs (natural scenes only; all load offline)."""
    try:
        from skimage import data
    except ImportError as err:
        raise DataError("the photos dataset needs scikit-image; pip install scikit-image") from err
    return [
        data.astronaut(),
        data.chelsea(),
        data.coffee(),
        data.rocket(),
        data.stereo_motorcycle()[0],
    ]


def _load_photos(req: _Request) -> np.ndarray:
    """Offline natural images: random square crops (1/4 to 1/2 of the short side), downscaled."""
    size = req.resolution or 32
    count = req.subset or PHOTOS_DEFAULT_N
    photos = [Image.fromarray(p) for p in _photo_sources()]
    # Four uniforms per image, row by row: a smaller subset is a prefix of a larger one.
    draws = np.random.default_rng(req.seed).random((count, 4))
    out = np.empty((count, size, size, 3), np.uint8)
    for i, (u_photo, u_side, u_left, u_top) in enumerate(draws):
        photo = photos[int(u_photo * len(photos))]
        w, h = photo.size
        lo, hi = min(w, h) // 4, min(w, h) // 2
        side = lo + int(u_side * (hi - lo + 1))
        left, top = int(u_left * (w - side + 1)), int(u_top * (h - side + 1))
        # box= resamples straight from the full photo: crop and antialiased resize in one pass
        box = (left, top, left + side, top + side)
        out[i] = np.asarray(photo.resize((size, size), Image.BILINEAR, box=box))
    return out


SHAPES = ("disc", "square", "triangle", "ring")


def _load_shapes(req: _Request) -> np.ndarray:
    """Offline synthetic images that a small model learns in a minute: one coloured disc,
    square, triangle or ring (random colour, size and place) on a plain background of another
    colour. Drawn at 4x resolution and average-pooled, so edges are antialiased. Colours are
    drawn as a shared brightness plus a smaller tint per channel, so, as in photographs, the
    channels are correlated and the top colour direction is close to luminance."""
    size, count = req.resolution or 16, req.subset or PHOTOS_DEFAULT_N
    rng = np.random.default_rng(req.seed)
    fine = 4 * size
    yy, xx = (np.mgrid[0:fine, 0:fine] + 0.5) / fine
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        kind = SHAPES[rng.integers(len(SHAPES))]
        cx, cy = rng.uniform(0.45, 0.55, 2)
        r = rng.uniform(0.26, 0.34)
        dx, dy = xx - cx, yy - cy
        mask = {
            "disc": dx**2 + dy**2 < r**2,
            "square": (abs(dx) < 0.85 * r) & (abs(dy) < 0.85 * r),
            "triangle": (dy < 0.8 * r) & (dy > -r + 2 * abs(dx)),
            "ring": (dx**2 + dy**2 < r**2) & (dx**2 + dy**2 > (0.55 * r) ** 2),
        }[kind]
        colours = rng.uniform(0.15, 0.85, (2, 1)) + rng.uniform(-0.15, 0.15, (2, 3))
        if abs(colours[0].mean() - colours[1].mean()) < 0.25:  # keep the shape visible
            colours[1] = 1.0 - colours[1]
        image = np.where(mask[..., None], colours[1], colours[0])
        pooled = image.reshape(size, 4, size, 4, 3).mean((1, 3))
        out[i] = np.clip(np.rint(pooled * 255), 0, 255).astype(np.uint8)
    return out


# What the ``array`` dataset reads (and ``sqdm sample --out`` writes), in any case.
ARRAY_SUFFIXES = (".npz", ".npy")


def _load_array(req: _Request) -> np.ndarray:
    """A .npy or .npz file; see ``_images_from_array`` for the accepted layouts and ranges."""
    path = _existing(req)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        why = str(err)
        if "allow_pickle" in why:  # numpy's advice names its own keyword, not a fix here
            why = "it holds pickled objects, which are not loaded: save plain numeric arrays"
        raise DataError(f"cannot read {path} as a .npy/.npz array ({why})") from err
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = loaded.files
            if "images" not in keys and len(keys) != 1:
                raise DataError(f"{path} holds arrays {keys}; name the image array 'images'")
            loaded = loaded["images" if "images" in keys else keys[0]]
    return _images_from_array(loaded, path)


def _images_from_array(arr: np.ndarray, where: Path) -> np.ndarray:
    """Normalise an array to uint8 ``[N, H, W, C]``.

    Layout: 3-D is ``[N, H, W]`` grayscale; 4-D is channels-last when the last dim is 1, 3 or 4
    and the second is not, else channels-first (second dim 1, 3 or 4). Values: integers must lie
    in 0..255; floats are [-1, 1] when any value is negative, else [0, 1] (1e-3 slack, clipped).
    """
    channels = (1, 3, 4)
    if arr.ndim == 3:
        arr = arr[..., None]
    elif arr.ndim == 4 and arr.shape[1] in channels:
        arr = arr.transpose(0, 2, 3, 1)
    elif not (arr.ndim == 4 and arr.shape[-1] in channels):
        raise DataError(
            f"{where}: expected images shaped [N, H, W, C] or [N, C, H, W] with C in 1, 3, 4 "
            f"(or [N, H, W]), got {arr.shape}"
        )
    if len(arr) == 0:
        raise DataError(f"{where} holds no images (shape {arr.shape})")
    lo, hi = float(arr.min()), float(arr.max())
    if np.issubdtype(arr.dtype, np.floating):
        if not -1 - 1e-3 <= lo <= hi <= 1 + 1e-3:  # also rejects NaN
            raise DataError(f"{where}: float images must lie in [0, 1] or [-1, 1], got {lo}..{hi}")
        arr = (arr + 1) * 127.5 if lo < 0 else arr * 255.0
        return np.rint(arr).clip(0, 255).astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer) or lo < 0 or hi > 255:
        raise DataError(f"{where}: {arr.dtype} images must be uint8 (0..255) or float in [-1, 1]")
    return arr.astype(np.uint8, copy=False)


_LOADERS: dict[str, Callable[[_Request], np.ndarray]] = {
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "celeba64": _load_celeba,
    "imagefolder": _load_imagefolder,
    "fashion-mnist": _load_fashion_mnist,
    "photos": _load_photos,
    "shapes": _load_shapes,
    "array": _load_array,
}
_SEEDED = ("photos", "shapes")  # drawn, not read: the datasets a seed changes
# The options each loader reads besides resolution and subset; any other is refused, never
# ignored (photos and shapes are generated, so they read no path).
_OPTIONS: dict[str, tuple[str, ...]] = {
    "cifar10": ("data_dir", "download"),
    "cifar100": ("data_dir", "download"),
    "celeba64": ("data_dir", "skip_bad_images"),
    "imagefolder": ("data_dir", "skip_bad_images"),
    "fashion-mnist": ("data_dir",),
    "photos": (),
    "shapes": (),
    "array": ("data_dir",),
}
