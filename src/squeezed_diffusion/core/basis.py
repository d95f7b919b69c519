"""Orthonormal bases in which the noise is shaped, registered by name.

A basis splits image space into K *groups* of orthonormal directions plus the
orthogonal *rest*. Every squeeze operator in this project is diagonal in such a
basis: it multiplies group k by one factor and the rest by another. A basis
therefore needs one operation, :meth:`Basis.scale_sum`, and the dimensions of its
groups (for HDM's determinant compensation).

- :class:`ChannelBasis` (``channel``): the paper's basis. One direction ``v`` in colour
  space, applied to every pixel's channel vector (K = 1, acts on C dimensions).
- :class:`PixelPCABasis` (``pca``): the top-k principal components of flattened images
  (K = k, each its own group, acts on C*H*W dimensions).
- :class:`DCTBasis` (``dct``): radial frequency bands of an orthonormal 2-D DCT-II per
  channel ("frequency-specific squeezing").

A subclass registers itself in :data:`BASES` under its ``name`` and declares its fitting
``options``; the training config, ``sqdm fit-basis``/``sqdm train`` flags, the basis cache
and the diffusers schedulers read those declarations, so a new basis is one class here.

The operators are linear, so a sum ``sum_j S_j x_j`` (a sampler step combines
x_t, x0hat and fresh noise) needs one projection onto the groups, not one per
term: :meth:`Basis.scale_sum` is the primitive and :meth:`Basis.scale` its
one-term case.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .fileio import atomic_path, save_tensors
from .registry import Registry
from .values import is_integer

Tensor = torch.Tensor
# One term of Basis.scale_sum: (x [B, C, H, W], group factors [B or 1, K], rest factor [B or 1]
# or a number; the number 1 skips the multiplication, which is SDM's rest).
Term = tuple[Tensor, Tensor, Tensor | float]
FORMAT = "squeezed-diffusion-basis/1"
# A basis whose tensors hold more numbers than this is not written into a scheduler's JSON
# config (pixel PCA: k x C*H*W); such bases are used through SqueezedDiffusion directly.
JSON_CONFIG_MAX_NUMBERS = 4096


@dataclass(frozen=True)
class Option:
    """A fitting option of a basis: a config key (``basis_options``) and a command-line flag."""

    default: Any
    help: str
    type: type = int
    multiple: bool = False  # a list of ``type`` values
    least: float | None = None  # checked with the config, before any image is read

    def coerce(self, name: str, value: Any) -> Any:
        """``value`` as this option's type (a list when ``multiple``); one-line error otherwise."""
        values = list(value) if self.multiple and isinstance(value, (list, tuple)) else [value]
        # int(2.7) would be 2 and int(True) 1: an int option takes whole numbers only
        misread = self.type is int and not all(is_integer(v) or _whole_text(v) for v in values)
        try:
            if any(isinstance(v, bool) for v in values) or misread:
                raise ValueError
            out = [self.type(v) for v in values]
        except (TypeError, ValueError):
            kind = {int: "a whole number", float: "a number"}.get(self.type, self.type.__name__)
            raise ValueError(f"basis option {name} must be {kind}, got {value!r}") from None
        if self.least is not None and any(v < self.least for v in out):
            raise ValueError(f"basis option {name} must be >= {self.least:g}, got {value!r}")
        return out if self.multiple else out[0]


def _whole_text(value: Any) -> bool:
    """A whole number written out, as the command line gives it (``"16"``)."""
    return isinstance(value, str) and value.strip().lstrip("+-").isdigit()


def _expand(scale: Tensor | float, ndim: int) -> Tensor | float:
    """View a per-sample scale ``[B]`` so it broadcasts over ``[B, ...]``."""
    if isinstance(scale, Tensor):
        return scale.reshape(-1, *([1] * (ndim - 1)))
    return scale


def _rest_part(terms: Sequence[Term]) -> tuple[Tensor, bool]:
    """``(sum_j rest_j x_j, owned)``: ``owned`` is False when it is the caller's own ``x``.

    One allocation at most: the first product is a new tensor, later terms are added into
    it in place; a single term with rest 1 is returned as is (SDM's squeeze).
    """
    x, _, rest = terms[0]
    if len(terms) == 1 and isinstance(rest, float) and rest == 1.0:
        return x, False
    out = x * _expand(rest, x.ndim)
    for x, _, rest in terms[1:]:
        if isinstance(rest, Tensor):
            out.addcmul_(x, _expand(rest, x.ndim))
        else:
            out.add_(x, alpha=rest)
    return out, True


def _group_weighted(y: Tensor, group: Tensor, rest: Tensor | float) -> Tensor:
    """``y * (group - rest)``, with ``group`` ``[B or 1, K]``: what a term adds along its groups.

    A number ``rest`` enters as ``alpha``: wrapping it in a tensor would cost more than the
    arithmetic, and this runs at every training and sampling step.
    """
    out = y * group
    if isinstance(rest, Tensor):
        return out.addcmul_(y, rest.reshape(-1, 1), value=-1.0)
    return out.sub_(y, alpha=rest)


class Basis(ABC):
    """Groups of orthonormal directions, with a diagonal operator acting on them.

    Subclasses set ``name`` (their registry key), ``summary`` (one line of help) and
    ``options`` (keyword arguments of :meth:`fit`), and are registered on definition.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[dict[str, Option]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        BASES.register(cls.name, cls, aliases=cls.aliases)

    @staticmethod
    def load(path: str | Path) -> Basis:
        """0.1.0's name of :func:`load_basis`, kept so 0.1.0 code runs; deprecated."""
        warnings.warn(
            "Basis.load is deprecated; use squeezed_diffusion.load_basis", DeprecationWarning, 2
        )
        return load_basis(path)

    def __init__(self, eigenvalues: Tensor | None = None, metadata: dict | None = None) -> None:
        self.eigenvalues = None if eigenvalues is None else _floats(eigenvalues, "eigenvalues")
        self.metadata: dict = dict(metadata or {})

    @classmethod
    @abstractmethod
    def fit(cls, batches: Iterable[Tensor], max_images: int | None = None, **options: Any) -> Basis:
        """Fit on float ``[B, C, H, W]`` batches in [-1, 1] (at most ``max_images`` images)."""

    # -- geometry -----------------------------------------------------------------
    @property
    @abstractmethod
    def group_dims(self) -> tuple[int, ...]:
        """Number of dimensions in each squeezed group (within :attr:`ambient_dim`)."""

    @property
    @abstractmethod
    def ambient_dim(self) -> int:
        """Dimension of the space one operator acts on (C per pixel, or C*H*W)."""

    @property
    def num_groups(self) -> int:
        return len(self.group_dims)

    @property
    def rest_dim(self) -> int:
        return self.ambient_dim - sum(self.group_dims)

    def group_names(self) -> list[str]:
        """Human-readable names of the groups followed by the rest (used in errors)."""
        return [f"component {k}" for k in range(self.num_groups)] + ["orthogonal complement"]

    @abstractmethod
    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` if a ``[B, C, H, W]`` batch does not fit this basis."""

    def scale(self, x: Tensor, group: Tensor, rest: Tensor | float) -> Tensor:
        """Multiply ``x`` by ``group[:, k]`` along group k and by ``rest`` elsewhere.

        ``x`` is ``[B, C, H, W]``; ``group`` is ``[B, K]`` (or ``[1, K]``) and
        ``rest`` is ``[B]`` (or ``[1]``, or a number). This is the only operation
        the process needs; it is :meth:`scale_sum` with one term.
        """
        return self.scale_sum([(x, group, rest)])

    @abstractmethod
    def scale_sum(self, terms: Sequence[Term]) -> Tensor:
        """``sum_j S_j x_j`` over terms ``(x_j, group_j, rest_j)`` as in :meth:`scale`.

        Every operator is linear, so a basis projects the terms onto its groups
        once rather than once per term; this is where each basis spends its
        effort on speed. Returns a new tensor (never one of the ``x_j``).
        """

    def to(self, device: torch.device | str) -> Basis:
        """Move the basis tensors (in float32) to ``device``; returns ``self``."""
        for name, value in self._tensors().items():
            setattr(self, name, value.to(device=device, dtype=torch.float32))
        return self

    # -- persistence --------------------------------------------------------------
    @abstractmethod
    def _tensors(self) -> dict[str, Tensor]:
        """The tensors that define the basis (saved to and moved with it)."""

    @abstractmethod
    def _config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments other than the tensors."""

    def to_config(self) -> dict[str, Any]:
        """The constructor arguments as plain JSON (a scheduler's ``basis_config``).

        Raises ``ValueError`` for a basis too big for a config file (pixel PCA).
        """
        tensors = self._tensors()
        if sum(t.numel() for t in tensors.values()) > JSON_CONFIG_MAX_NUMBERS:
            raise ValueError(
                f"a {self.name} basis holds {sum(t.numel() for t in tensors.values())} numbers, too "
                "many for a scheduler's JSON config: build a SqueezedDiffusion with it and sample "
                "with SqueezedDiffusion.sample directly"
            )
        return {**self._config(), **{k: v.tolist() for k, v in tensors.items()}}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Basis:
        """Inverse of :meth:`to_config`; unknown or missing fields are one-line errors."""
        try:
            return cls(**config)
        except TypeError as err:
            raise ValueError(f"bad {cls.name} basis config {dict(config)}: {err}") from None

    def fit_report(self) -> list[str]:
        """Lines that ``sqdm fit-basis`` prints after the eigenvalues: what a reader checks
        in this kind of basis (none by default)."""
        return []

    def save(self, path: str | Path) -> Path:
        """Write the basis to a safetensors file (atomic: temp file, then rename); see :func:`load_basis`."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._tensors().items()}
        if self.eigenvalues is not None:
            tensors["eigenvalues"] = self.eigenvalues.cpu().contiguous()
        header = {
            "format": FORMAT,
            "kind": self.name,
            "config": json.dumps(self._config()),
            "metadata": json.dumps(self.metadata),
        }
        if Path(path).is_dir():
            raise IsADirectoryError(
                f"{path} is a folder; save the basis to a file in it, e.g. "
                f"{Path(path) / 'basis.safetensors'}"
            )
        try:
            with atomic_path(path) as tmp:
                save_tensors(tensors, tmp, metadata=header)
        except SafetensorError as err:  # safetensors' own I/O errors, as the OSError they are
            raise OSError(f"cannot write the basis to {path}: {err}") from None
        return Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._config()}, groups={self.group_dims})"


BASES: Registry[type[Basis]] = Registry("basis")


def basis_options(name: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every fitting option of basis ``name``: ``given`` values (coerced) over the defaults.

    An option the basis does not declare is a one-line error naming the ones it has.
    """
    cls = BASES.get(name)
    given = dict(given or {})
    unknown = sorted(set(given) - set(cls.options))
    if unknown:
        allowed = ", ".join(cls.options) or "none"
        raise ValueError(
            f"basis {cls.name!r} has no option(s) {', '.join(unknown)}; its options: {allowed}"
        )
    return {
        key: opt.coerce(key, given[key]) if key in given else opt.default
        for key, opt in cls.options.items()
    }


def fit_basis(
    name: str, batches: Iterable[Tensor], max_images: int | None = None, **options: Any
) -> Basis:
    """Fit the registered basis ``name`` with its options (defaults filled in)."""
    return BASES.get(name).fit(batches, max_images=max_images, **basis_options(name, options))


def _check_image_shape(basis: str, image_shape: tuple[int, ...], shape: tuple[int, ...]) -> None:
    """The bases defined per pixel fit one image shape only."""
    if len(shape) != 4 or tuple(shape[1:]) != image_shape:
        raise ValueError(
            f"{basis} images of shape {image_shape}, got a batch of shape {tuple(shape)}; "
            "make one for this resolution"
        )


class _CovarianceAccumulator:
    """Streaming mean and covariance of D-dimensional vectors, in float64.

    :meth:`update` takes ``[B, D, P]``: P vectors per item (the pixels of an image for
    the channel covariance, P = 1 for flattened images), so no batch is ever transposed.
    Vectors are centred on the first batch's mean before their products are taken, so
    float32 sees small numbers. Work is done in chunks of about a megabyte through one
    reused buffer (cache-resident, no allocation per chunk), products are summed in
    float32 until a chunk brings the count to ``FLUSH`` vectors or more (at most ``FLUSH``
    plus one chunk, ``CHUNK / D`` vectors) and then added to the float64 totals.
    """

    CHUNK = 2**18  # float32 elements per chunk: 1 MB, fits in cache
    FLUSH = 2**16  # vectors summed in float32 before moving to float64

    def __init__(self) -> None:
        self.n = 0
        self.shift: Tensor | None = None
        self.sum: Tensor | None = None
        self.outer: Tensor | None = None
        self._gram: Tensor | None = None  # float32 partial sum of outer products
        self._pending = 0
        self._buf: Tensor | None = None

    def update(self, x: Tensor) -> None:
        x = x.detach().to(torch.float32)
        dim, per_item = x.shape[1], x.shape[2]
        if self.shift is None:
            self.shift = x.mean((0, 2))
            self.sum = torch.zeros(dim, dtype=torch.float64)
            self.outer = torch.zeros(dim, dim, dtype=torch.float64)
            self._gram = torch.zeros(dim, dim)
        step = max(1, self.CHUNK // (dim * per_item))
        if self._buf is None or self._buf.shape[1:] != x.shape[1:]:
            self._buf = torch.empty(step, dim, per_item)
        for chunk in x.split(step):
            centred = torch.sub(chunk, self.shift[:, None], out=self._buf[: len(chunk)])
            self.sum += centred.sum((0, 2)).double()
            if per_item == 1:
                flat = centred[..., 0]
                self._gram.addmm_(flat.T, flat)
            else:
                self._gram += torch.bmm(centred, centred.mT).sum(0)
            self._pending += centred.shape[0] * per_item
            if self._pending >= self.FLUSH:
                self._flush()
        self.n += x.shape[0] * per_item

    def _flush(self) -> None:
        self.outer += self._gram.double()
        self._gram.zero_()
        self._pending = 0

    def mean_cov(self) -> tuple[Tensor, Tensor]:
        if self.n < 2:
            raise ValueError("need at least two samples to estimate a covariance")
        self._flush()
        mean_c = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mean_c, mean_c)) / (self.n - 1)
        return self.shift.double() + mean_c, cov


def _floats(values: Any, what: str) -> Tensor:
    """``values`` (a tensor or nested numbers) as float64; a one-line error for anything else."""
    try:
        return torch.as_tensor(values).detach().to(torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{what} must be numbers, got {values!r}") from None


def _fit_images(batches: Iterable[Tensor], max_images: int | None) -> Iterator[Tensor]:
    """The batches a fit reads: checked ([B, C, H, W], finite, one image shape throughout)
    and cut at ``max_images`` images in all (None: every image)."""
    if max_images is not None and (not is_integer(max_images) or max_images < 1):
        raise ValueError(f"max_images must be an integer >= 1 or None, got {max_images!r}")
    left, shape = max_images, None
    for batch in batches:
        if not isinstance(batch, Tensor) or batch.ndim != 4:
            got = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
            raise ValueError(f"basis fitting expects [B, C, H, W] tensors in [-1, 1], got {got}")
        if shape is not None and tuple(batch.shape[1:]) != shape:
            raise ValueError(
                f"images change shape mid-stream: {shape} then {tuple(batch.shape[1:])}"
            )
        shape = tuple(batch.shape[1:])
        if left is not None:
            batch = batch[:left]
            left -= len(batch)
        if not torch.isfinite(batch).all():  # one NaN image makes every direction NaN
            raise ValueError("basis fitting got NaN or infinite pixel values; check the images")
        yield batch
        if left == 0:
            return


def _check_variance(evals: Tensor, what: str) -> None:
    """Without variance every direction is an eigenvector: the fitted one would be arbitrary."""
    if not evals.max() > 0:
        raise ValueError(f"the images have no {what} variance (constant images?); nothing to fit")


def _sign_fix(vectors: Tensor) -> Tensor:
    """Flip each row so its largest-magnitude entry is positive (a reproducible sign)."""
    idx = vectors.abs().argmax(dim=1)
    signs = torch.sign(vectors.gather(1, idx[:, None]))
    return vectors * signs


class ChannelBasis(Basis):
    """The paper's basis: one unit direction ``v`` in colour space, per pixel.

    ``S x = rest * x + (group - rest) * v (v . x)`` on each pixel: O(C) per pixel.
    """

    name = "channel"
    summary = "the paper's: the top eigenvector of the colour-channel covariance, per pixel"

    def __init__(
        self,
        direction: Tensor | Iterable[float],
        eigenvalues: Tensor | None = None,
        metadata: dict | None = None,
    ) -> None:
        super().__init__(eigenvalues, metadata)
        v = _floats(direction, "direction")
        if v.ndim != 1 and sum(n > 1 for n in v.shape) > 1:  # else flattened into C * K channels
            raise ValueError(f"direction must be one vector, got shape {tuple(v.shape)}")
        v = v.flatten()
        norm = float(v.norm())
        if v.numel() < 1 or not math.isfinite(norm) or norm == 0.0:
            raise ValueError(f"direction must be a finite non-zero vector, got {v.tolist()}")
        self.direction = (v / norm).to(torch.float32)

    @classmethod
    def luminance(cls, channels: int = 3) -> ChannelBasis:
        """The direction (1, ..., 1)/sqrt(C), close to what natural images give."""
        return cls(torch.ones(channels))

    def fit_report(self) -> list[str]:
        """The direction, and its angle to luminance: natural images give a few degrees."""
        v = self.direction.double()
        cos = min(1.0, float(v.sum().abs()) / math.sqrt(len(v)))
        return [
            f"direction: [{', '.join(f'{x:.6f}' for x in v.tolist())}]",
            f"angle to luminance (1, ..., 1)/sqrt(C): {math.degrees(math.acos(cos)):.2f} degrees",
        ]

    @classmethod
    def fit(cls, batches: Iterable[Tensor], max_images: int | None = None) -> ChannelBasis:
        """Top eigenvector of the C x C channel covariance over every pixel."""
        acc = _CovarianceAccumulator()
        num_images = 0
        for batch in _fit_images(batches, max_images):
            acc.update(batch.flatten(2))
            num_images += batch.shape[0]
        _, cov = acc.mean_cov()
        evals, evecs = torch.linalg.eigh(cov)
        evals, evecs = evals.flip(0), evecs.flip(1)
        _check_variance(evals, "colour")
        direction = _sign_fix(evecs[:, :1].T)[0]
        return cls(direction, eigenvalues=evals, metadata={"num_images": num_images})

    @property
    def channels(self) -> int:
        return self.direction.numel()

    @property
    def group_dims(self) -> tuple[int, ...]:
        return (1,)

    @property
    def ambient_dim(self) -> int:
        return self.channels

    def group_names(self) -> list[str]:
        return ["principal channel direction", "orthogonal channel directions"]

    def check_shape(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 4 or shape[1] != self.channels:
            raise ValueError(
                f"channel basis has {self.channels} channels but the batch has shape "
                f"{tuple(shape)}; expected [B, {self.channels}, H, W]"
            )

    def scale_sum(self, terms: Sequence[Term]) -> Tensor:
        """``sum_j rest_j x_j + v (sum_j (group_j - rest_j) v . x_j)`` per pixel.

        The projections are batched matmuls over the channel axis, accumulated in place
        (one read of each ``x_j``), then added to the rest part in one pass. Like every
        matmul they follow torch's float32 matmul precision: full unless TF32 is enabled.
        """
        base, owned = _rest_part(terms)
        v = self.direction.to(base.dtype)
        proj: Tensor | None = None
        for x, group, rest in terms:
            flat = x.flatten(2)  # [B, C, H * W]
            weights = _group_weighted(v, group, rest).unsqueeze(1)  # [B or 1, 1, C]
            if len(weights) != len(flat):
                weights = weights.expand(len(flat), -1, -1)
            proj = torch.bmm(weights, flat) if proj is None else proj.baddbmm_(weights, flat)
        proj = proj.view(base.shape[0], 1, *base.shape[2:])
        v = v.view(1, -1, 1, 1)
        return base.addcmul_(proj, v) if owned else torch.addcmul(base, proj, v)

    def _tensors(self) -> dict[str, Tensor]:
        return {"direction": self.direction}

    def _config(self) -> dict[str, Any]:
        return {}


class PixelPCABasis(Basis):
    """The top-k principal components of flattened images, each its own group."""

    name = "pca"
    summary = "the top-k principal components of flattened images, each its own group"
    aliases = ("pixel_pca",)  # its name in 0.1.0 basis files and scheduler configs
    options: ClassVar[dict[str, Option]] = {
        "k": Option(16, "principal components to squeeze (pca)", least=1)
    }

    def __init__(
        self,
        components: Tensor,
        image_shape: Iterable[int],
        eigenvalues: Tensor | None = None,
        metadata: dict | None = None,
    ) -> None:
        super().__init__(eigenvalues, metadata)
        self.image_shape = tuple(int(s) for s in image_shape)
        comps = _floats(components, "components").float()
        if comps.ndim != 2 or comps.shape[1] != math.prod(self.image_shape):
            raise ValueError(
                f"components must be [k, {math.prod(self.image_shape)}] for images of shape "
                f"{self.image_shape}, got {tuple(comps.shape)}"
            )
        gram = comps.double() @ comps.double().T  # squeeze() and unsqueeze() assume U U^T = I
        if not torch.allclose(gram, torch.eye(len(comps), dtype=torch.float64), atol=1e-3):
            raise ValueError("components must be orthonormal rows (as a PCA fit gives)")
        self.components = comps

    @classmethod
    def fit(
        cls, batches: Iterable[Tensor], max_images: int | None = None, k: int = 16
    ) -> PixelPCABasis:
        """Streaming covariance of flattened images, then its top-k eigenvectors."""
        acc = _CovarianceAccumulator()
        image_shape: tuple[int, ...] | None = None
        for batch in _fit_images(batches, max_images):
            if image_shape is None:  # k checked at the first batch, not after all of them
                image_shape = tuple(batch.shape[1:])
                dim = math.prod(image_shape)
                if not (is_integer(k) and 1 <= k < dim):
                    raise ValueError(
                        f"k must be in [1, {dim - 1}] for images of shape {image_shape}, got {k!r}"
                    )
            acc.update(batch.flatten(1)[..., None])
        if image_shape is None:
            raise ValueError("no images to fit the basis on")
        if acc.n <= k:  # n images span at most n - 1 directions: the others would be arbitrary
            raise ValueError(f"k={k} components need more than {k} images, got {acc.n}")
        _, cov = acc.mean_cov()
        evals, evecs = torch.linalg.eigh(cov.float())
        evals, evecs = evals.flip(0).double(), evecs.flip(1)
        _check_variance(evals, "pixel")
        components = _sign_fix(evecs[:, :k].T.contiguous())
        return cls(components, image_shape, eigenvalues=evals[:k], metadata={"num_images": acc.n})

    @property
    def group_dims(self) -> tuple[int, ...]:
        return (1,) * self.components.shape[0]

    @property
    def ambient_dim(self) -> int:
        return self.components.shape[1]

    def check_shape(self, shape: tuple[int, ...]) -> None:
        _check_image_shape("pixel PCA basis was fitted on", self.image_shape, shape)

    def scale_sum(self, terms: Sequence[Term]) -> Tensor:
        """Rest part plus ``U^T`` of the summed, weighted component coefficients: J + 1 matmuls."""
        base, _ = _rest_part(terms)
        u = self.components.to(base.dtype)
        coef = sum(_group_weighted(x.flatten(1) @ u.T, g, r) for x, g, r in terms)
        return torch.addmm(base.reshape(base.shape[0], -1), coef, u).view(base.shape)

    def _tensors(self) -> dict[str, Tensor]:
        return {"components": self.components}

    def _config(self) -> dict[str, Any]:
        return {"image_shape": list(self.image_shape)}


def dct_matrix(n: int) -> Tensor:
    """Orthonormal DCT-II matrix ``M`` (``M @ x`` transforms, ``M.T @ X`` inverts)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


class DCTBasis(Basis):
    """Radial frequency bands of an orthonormal 2-D DCT-II, per channel.

    Frequency ``(u, v)`` of an ``H x W`` image has normalised radius
    ``r = sqrt((u / H)^2 + (v / W)^2)`` in ``[0, sqrt 2)``. ``cutoffs``
    ``(c_1 < ... < c_K)`` define K groups ``[0, c_1), [c_1, c_2), ...``; the
    frequencies at or above ``c_K`` are the rest. The default squeezes the
    lowest-frequency band, which carries most of natural images' energy.
    """

    name = "dct"
    summary = "radial frequency bands of a 2-D DCT per channel"
    options: ClassVar[dict[str, Option]] = {
        "cutoffs": Option([0.25], "DCT band edges (dct)", type=float, multiple=True)
    }

    def __init__(
        self,
        image_shape: Iterable[int],
        cutoffs: Iterable[float] = (0.25,),
        eigenvalues: Tensor | None = None,
        metadata: dict | None = None,
    ) -> None:
        super().__init__(eigenvalues, metadata)
        self.image_shape = tuple(int(s) for s in image_shape)
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {self.image_shape}")
        self.cutoffs = tuple(float(c) for c in cutoffs)
        if not self.cutoffs or any(b <= a for a, b in itertools.pairwise((0.0, *self.cutoffs))):
            raise ValueError(f"cutoffs must be positive and increasing, got {self.cutoffs}")
        c, h, w = self.image_shape
        self.dct_h = dct_matrix(h).float()
        self.dct_w = dct_matrix(w).float()
        radius = torch.sqrt(
            (torch.arange(h)[:, None] / h) ** 2 + (torch.arange(w)[None, :] / w) ** 2
        )
        self.band = torch.bucketize(
            radius, torch.tensor(self.cutoffs, dtype=radius.dtype), right=True
        )
        counts = torch.bincount(self.band.flatten(), minlength=len(self.cutoffs) + 1)
        if (counts[:-1] == 0).any():
            raise ValueError(f"cutoffs {self.cutoffs} leave an empty band at resolution {h}x{w}")
        if counts[-1] == 0:  # the rest: what HDM compensates, and a group of its own
            highest = math.floor(float(radius.max()) * 1e4) / 1e4
            raise ValueError(
                f"cutoff {self.cutoffs[-1]} leaves no frequency above it at resolution {h}x{w}; "
                f"choose cutoffs of at most {highest}"
            )
        self._dims = tuple(int(n) * c for n in counts[:-1])

    @classmethod
    def fit(
        cls,
        batches: Iterable[Tensor],
        max_images: int | None = None,
        cutoffs: Iterable[float] = (0.25,),
    ) -> DCTBasis:
        """Nothing to learn; records each band's mean coefficient variance as its 'eigenvalue'."""
        basis: DCTBasis | None = None
        n, total, total_sq = 0, None, None
        for batch in _fit_images(batches, max_images):
            if basis is None:
                basis = cls(tuple(batch.shape[1:]), cutoffs)
            coef = basis.dct(batch.float()).double()
            total = coef.sum(0) if total is None else total + coef.sum(0)
            total_sq = (coef**2).sum(0) if total_sq is None else total_sq + (coef**2).sum(0)
            n += batch.shape[0]
        if basis is None or n < 2:
            raise ValueError("need at least two images to fit a DCT basis")
        var = (total_sq - total**2 / n) / (n - 1)  # [C, H, W]
        per_freq = var.sum(0)
        energy = torch.stack(
            [per_freq[basis.band == g].mean() for g in range(basis.num_groups + 1)]
        )
        basis.eigenvalues = energy
        basis.metadata = {"num_images": n}
        return basis

    def dct(self, x: Tensor) -> Tensor:
        return self.dct_h.to(x.dtype) @ x @ self.dct_w.to(x.dtype).T

    def idct(self, coef: Tensor) -> Tensor:
        return self.dct_h.to(coef.dtype).T @ coef @ self.dct_w.to(coef.dtype)

    @property
    def group_dims(self) -> tuple[int, ...]:
        return self._dims

    @property
    def ambient_dim(self) -> int:
        return math.prod(self.image_shape)

    def group_names(self) -> list[str]:
        edges = (0.0, *self.cutoffs)
        bands = [f"frequency band [{a:g}, {b:g})" for a, b in itertools.pairwise(edges)]
        return [*bands, f"frequencies >= {self.cutoffs[-1]:g}"]

    def check_shape(self, shape: tuple[int, ...]) -> None:
        _check_image_shape("DCT basis was built for", self.image_shape, shape)

    def scale_sum(self, terms: Sequence[Term]) -> Tensor:
        """One inverse transform of the summed, band-weighted coefficients: J + 1 transforms."""
        band = self.band.to(terms[0][0].device)
        coef: Tensor | None = None
        for x, group, rest in terms:
            rest = torch.as_tensor(rest, dtype=group.dtype, device=group.device).reshape(-1, 1)
            factors = torch.cat([group, rest.expand(group.shape[0], 1)], dim=1)
            weighted = self.dct(x) * factors[:, band].unsqueeze(1).to(x.dtype)  # [B, 1, H, W]
            coef = weighted if coef is None else coef.add_(weighted)
        return self.idct(coef)

    def _tensors(self) -> dict[str, Tensor]:
        return {}

    def _config(self) -> dict[str, Any]:
        return {"image_shape": list(self.image_shape), "cutoffs": list(self.cutoffs)}

    def to(self, device: torch.device | str) -> DCTBasis:
        self.dct_h, self.dct_w = self.dct_h.to(device), self.dct_w.to(device)
        self.band = self.band.to(device)  # else every scale_sum copies it to the device
        return self


def load_basis(path: str | Path) -> Basis:
    """Read a basis written by :meth:`save`, whatever its kind (0.1.0 files included)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the basis file in it")
    if not path.is_file():
        raise FileNotFoundError(
            f"basis file {path} does not exist; create it with `sqdm fit-basis`"
        )
    try:  # every step, the constructor's checks included: a file may hold anything
        tensors = load_file(str(path))
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))["__metadata__"]
        if header.get("format") != FORMAT:
            raise KeyError("format")
        cls = BASES.get(header["kind"])
        config = json.loads(header["config"])
        metadata = json.loads(header["metadata"])
        if not isinstance(config, dict) or not isinstance(metadata, dict):
            raise TypeError("its config and metadata must be mappings")
        eigenvalues = tensors.pop("eigenvalues", None)
        return cls(**tensors, **config, eigenvalues=eigenvalues, metadata=metadata)
    except (SafetensorError, KeyError, ValueError, TypeError, OSError) as err:
        raise ValueError(
            f"{path} is not a readable basis file ({type(err).__name__}: {err}); "
            "re-create it with `sqdm fit-basis`"
        ) from None
