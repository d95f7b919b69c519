"""The file operations the whole package shares: an atomic write (of a file or a folder),
tensors saved as safetensors with the usual permissions, a content hash and a
``torch.load`` that can run no code.

They live in ``core`` because ``core`` imports nothing else from the package and bases are
saved from here; training, evaluation and the CLI use the same functions.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary name beside ``path``; on success rename it onto ``path``.

    A killed writer, or several processes writing at once (sweep shards, ranks), never leave
    half a file under the final name. The temporary name keeps ``path``'s suffix, so writers
    that choose a format by suffix (``np.savez``) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path``; on success rename it onto ``path``, which
    must not exist or be empty. A killed writer leaves no half-filled folder under the name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.is_dir():
            path.rmdir()  # empty, else OSError: nothing is overwritten
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_tensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """safetensors' ``save_file``, then the permissions any other file gets (0666 less the
    umask): safetensors creates its files 0600, which teammates on a shared cluster could
    not read."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def atomic_write(path: str | Path, data: str | bytes | Callable[[Path], object]) -> Path:
    """Write text, bytes, or whatever ``data(tmp_path)`` writes, to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            data(tmp)
    return path


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_tensors_only(path: str | Path, refuse: Callable[[str], Exception]) -> Any:
    """``torch.load`` restricted to tensors and plain containers, so a crafted pickle can run
    no code; a file that holds anything else raises ``refuse(<the error's type name>)``, the
    caller's one-line error that says which file it expected."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError ...: all mean "not ours"
        raise refuse(type(err).__name__) from None
