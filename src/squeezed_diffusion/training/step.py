"""One optimiser step: forward, backward and update over a global batch."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from .batches import Batches
from .state import TrainState


def train_step(
    state: TrainState,
    batches: Batches,
    step: int,
    *,
    grad_accum: int = 1,
    grad_clip: float = 0.0,
    skip_nonfinite: bool = False,
) -> torch.Tensor:
    """Train on step ``step``'s global batch; returns the mean loss, on the device (no host
    sync, except with ``skip_nonfinite``).

    A non-finite loss with ``skip_nonfinite`` drops the batch's gradients (counted in
    ``state.skipped_batches``) and returns 0, so the logged mean stays finite; that check
    reads the loss on the host every step.
    """
    acc = state.accelerator
    if state.cuda_graphs:  # a new iteration: the graphs may now overwrite the last step's outputs
        torch.compiler.cudagraph_mark_step_begin()
    total = torch.zeros((), device=acc.device)
    for micro, part in enumerate(batches.indices(step).chunk(grad_accum)):
        last = micro == grad_accum - 1
        with nullcontext() if last else acc.no_sync(state.model):
            x_t, t, target = batches.micro_batch(step, micro, part)
            with acc.autocast():
                pred = state.model(x_t, t).sample
            loss = F.mse_loss(pred.float(), target.float())
            acc.backward(loss / grad_accum)
        total += loss.detach() / grad_accum
    if skip_nonfinite and not torch.isfinite(total):
        state.optimizer.zero_grad(set_to_none=True)
        state.skipped_batches += 1
        return torch.zeros_like(total)
    if grad_clip > 0:
        acc.clip_grad_norm_(state.model.parameters(), grad_clip)
    state.optimizer.step()
    state.lr_scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.ema.step(state.unwrapped.parameters())
    return total
