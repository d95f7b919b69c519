"""Checkpoints: atomic writes, verified loads, keep-last-N.

A checkpoint is a folder ``checkpoints/step-NNNNNNNN`` of a run (see ``run.py``) written as
``step-NNNNNNNN.tmp-PID`` and renamed into place only when every file is on
disk, so a kill at any moment leaves either the old set of checkpoints or the
new one: never a partial folder under a final name. ``state.json`` records a
SHA-256 manifest of the other files, checked on load.

Weights are safetensors; optimiser and LR-scheduler state go through
``torch.save`` and are read back with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..core.fileio import load_tensors_only, save_tensors, sha256

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})$")
_FILES = ("model.safetensors", "ema.safetensors", "rng.safetensors", "optimizer.pt")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or from another model; the message says what to do."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    ema_params: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write ``checkpoints/step-NNNNNNNN`` atomically, then drop all but the newest ``keep``."""
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model_state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_tensors(model_state, tmp / "model.safetensors")
    save_tensors(
        {k: v.detach().cpu().contiguous() for k, v in ema_params.items()},
        tmp / "ema.safetensors",
    )
    save_tensors(_rng_state(), tmp / "rng.safetensors")
    torch.save(optimizer_state, tmp / "optimizer.pt")
    manifest = {name: sha256(tmp / name) for name in _FILES}
    (tmp / "state.json").write_text(
        json.dumps({**state, "step": step, "manifest": manifest}, indent=1)
    )
    for name in (*_FILES, "state.json"):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
        _discard(final)
    tmp.rename(final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep]:
        _discard(old)
    return final


def _discard(ckpt: Path) -> None:
    """Delete a checkpoint folder without ever leaving a partial one under a final name:
    rename it to a ``.tmp`` name first (atomic), then delete; a kill in between leaves a
    ``.tmp`` folder, which :func:`remove_partial_checkpoints` clears on the next start."""
    doomed = ckpt.with_name(f"{ckpt.name}.tmp-{os.getpid()}-old")
    ckpt.rename(doomed)
    _fsync_dir(ckpt.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Finished checkpoint folders (never ``.tmp`` ones), oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)


def remove_partial_checkpoints(run_dir: str | Path) -> None:
    """Delete ``.tmp`` folders left by a writer that was killed mid-checkpoint."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if root.is_dir():
        for tmp in root.glob("step-*.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def verify(ckpt: Path) -> dict[str, Any]:
    """Return ``state.json`` after checking every file against its manifest. The error names
    the problem only: the fix depends on the caller (:func:`find_checkpoint` adds it)."""
    try:
        state = json.loads((ckpt / "state.json").read_text())
        manifest = state["manifest"]
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"checkpoint {ckpt} is incomplete or corrupt (state.json: {err.__class__.__name__})"
        ) from None
    for name in _FILES:
        path = ckpt / name
        if not path.is_file() or sha256(path) != manifest.get(name):
            raise CheckpointError(
                f"checkpoint {ckpt} is corrupt ({name} is missing or does not match its checksum)"
            )
    return state


def find_checkpoint(run_dir: str | Path, which: str = "latest") -> Path:
    """``latest`` (the newest checkpoint that verifies) or one checkpoint folder of this run
    (its path, or its name under ``RUN/checkpoints``): another run's weights would be paired
    with this run's process and config."""
    if which != "latest":
        folder = Path(run_dir) / CHECKPOINT_DIR
        path = Path(which) if Path(which).exists() else folder / which
        if not path.is_dir():
            raise CheckpointError(
                f"checkpoint {which} not found; pass latest or a folder under {folder}"
            )
        if path.resolve().parent != folder.resolve():
            raise CheckpointError(
                f"checkpoint {which} is not one of {run_dir}'s (under {folder}); pass latest "
                "or one of them"
            )
        try:
            verify(path)
        except CheckpointError as err:
            raise CheckpointError(
                f"{err}; pass latest or another of the run's checkpoints"
            ) from None
        return path
    candidates = list_checkpoints(run_dir)
    for ckpt in reversed(candidates):
        try:
            verify(ckpt)
            return ckpt
        except CheckpointError as err:
            warnings.warn(f"{err}; skipping it", stacklevel=2)
    folder = Path(run_dir) / CHECKPOINT_DIR
    if candidates:  # `sqdm train --out` refuses a folder with checkpoints: not "train it first"
        raise CheckpointError(
            f"no usable checkpoint in {folder} (it holds {len(candidates)}, all corrupt); to "
            f"train the run again, delete {run_dir} (or give sqdm train another --out)"
        )
    raise CheckpointError(f"no usable checkpoint in {folder}; train the run first")


def load_checkpoint(ckpt: Path) -> dict[str, Any]:
    """Tensors and state of a verified checkpoint (optimiser state loaded with weights_only)."""
    state = verify(ckpt)
    return {
        "state": state,
        "model": load_file(str(ckpt / "model.safetensors")),
        "ema": load_file(str(ckpt / "ema.safetensors")),
        "rng": load_file(str(ckpt / "rng.safetensors")),
        "optimizer": _load_tensors_only(ckpt / "optimizer.pt"),
    }


def _load_tensors_only(path: Path) -> Any:
    return load_tensors_only(
        path,
        lambda why: CheckpointError(
            f"{path} holds more than tensors and plain data ({why}); refusing to load it. Use "
            "checkpoints written by `sqdm train`"
        ),
    )


def restore_rng(rng: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        cuda = sorted((k for k in rng if k.startswith("cuda")), key=lambda k: int(k[4:]))
        states = [rng[k] for k in cuda]  # by device number: "cuda10" sorts before "cuda2"
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Load a state dict, turning a shape/key mismatch into a one-line error."""
    expected = model.state_dict()
    if set(weights) != set(expected) or any(
        weights[k].shape != expected[k].shape for k in expected
    ):
        raise CheckpointError(
            f"checkpoint {source} holds weights for a different model than the run's "
            f"({type(model).__name__} with {len(expected)} tensors); check --model or the run folder"
        )
    model.load_state_dict(weights)
