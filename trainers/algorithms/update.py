"""What every objective's update shares: epochs of shuffled minibatches, each split into
micro-batches whose gradients accumulate, gradient-norm clipping and the optimizer step; and the
learning-rate schedule the training loop applies once a step.

An objective supplies two functions and ``optimize`` does the rest::

    micro_batches(minibatch) -> row index tensors            how a minibatch is split for memory
    micro_loss(epoch, minibatch, rows) -> scalar tensor       this micro-batch's share of the
                                                              minibatch loss, so that the shares
                                                              sum to the minibatch loss exactly

    for epoch in 1 … μ:
        for minibatch in a fresh permutation of the rows, in chunks of ``minibatch_size``:
            zero the gradients
            for rows in micro_batches(minibatch): micro_loss(epoch, minibatch, rows).backward()
            clip the gradient norm to ``max_grad_norm``; optimizer step

``forward_precision`` is the context the loop runs an update in: with ``model.autocast`` set, every
forward pass of the update (old log-probs, reference, loss) runs under ``torch.autocast``, and
``optimize`` steps out of it for the backward pass, as PyTorch's autocast documentation asks.

Nothing here touches the learning rate: the loop sets it at the top of each step
(``set_learning_rate``), as CleanRL does, so an update that is skipped (no policy token, no pair)
still advances the schedule by exactly one step and no scheduler is ever stepped out of order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


def optimize(
    optimizer: torch.optim.Optimizer,
    trainable: list[torch.nn.Parameter],
    size: int,
    micro_batches: Callable[[torch.Tensor], Iterable[torch.Tensor]],
    micro_loss: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
    epochs: int = 1,
    minibatch_size: int | None = None,
    max_grad_norm: float | None = 1.0,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
) -> dict[str, float]:
    """Run the update over ``size`` rows; return ``loss`` (the mean minibatch loss), ``grad_norm``
    (the mean norm before clipping) and ``update/optimizer_steps``.

    ``shuffle=False`` keeps the rows in order and draws nothing from any random generator (SFT's
    one step over its batch)."""
    minibatch_size = minibatch_size or size
    loss_sum, grad_norms = 0.0, []
    for epoch in range(epochs):
        order = torch.randperm(size, generator=generator) if shuffle else torch.arange(size)
        for minibatch in order.split(minibatch_size):
            optimizer.zero_grad(set_to_none=True)
            for rows in micro_batches(minibatch):
                loss = micro_loss(epoch, minibatch, rows)
                with torch.autocast(loss.device.type, enabled=False):
                    loss.backward()
                loss_sum += loss.item()
            grad_norms.append(clip_grad_norm(trainable, max_grad_norm))
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    optimizer_steps = epochs * math.ceil(size / minibatch_size)
    return {
        "loss": loss_sum / max(optimizer_steps, 1),
        "grad_norm": sum(grad_norms) / max(len(grad_norms), 1),
        "update/optimizer_steps": float(optimizer_steps),
    }


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def forward_precision(model: torch.nn.Module, autocast: str) -> torch.autocast:
    """``torch.autocast`` on ``model``'s device in ``autocast`` (``model.autocast``); "none" is a
    context that changes nothing."""
    dtype = AUTOCAST_DTYPES.get(autocast)
    return torch.autocast(next(model.parameters()).device.type, dtype=dtype, enabled=dtype is not None)


def advantage_stats(advantages: torch.Tensor) -> dict[str, float]:
    """``advantage/{mean,std,max,min}`` of one advantage per sequence."""
    return {
        "advantage/mean": advantages.mean().item(),
        "advantage/std": advantages.std().item() if advantages.numel() > 1 else 0.0,
        "advantage/max": advantages.max().item(),
        "advantage/min": advantages.min().item(),
    }


def trained_stats(policy_tokens: float, sequences: int, trained_tokens: float) -> dict[str, float]:
    """What an update trained on: policy tokens (the loss's, one epoch's worth), sequences, and
    every token of them (the throughput's count)."""
    return {
        "update/policy_tokens": float(policy_tokens),
        "update/sequences": float(sequences),
        "update/trained_tokens": float(trained_tokens),
        "update/skipped": 0.0,
    }


def clip_grad_norm(parameters: list[torch.nn.Parameter], max_norm: float | None) -> float:
    """The total gradient norm before clipping; clip to ``max_norm`` when it is set."""
    limit = max_norm if max_norm else float("inf")
    return float(torch.nn.utils.clip_grad_norm_(parameters, limit))


def trainable_parameters(*modules: torch.nn.Module | None) -> list[torch.nn.Parameter]:
    return [p for module in modules if module is not None for p in module.parameters() if p.requires_grad]


# --- the learning-rate schedule ---------------------------------------------------------------------


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float = 0.0) -> float:
    """The factor on the base learning rate at ``step`` (0 for the first step of a phase): linear
    warm-up over ``warmup_steps``, then ``constant`` or ``cosine`` decay to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {schedule!r}")


def set_learning_rate(optimizer: torch.optim.Optimizer, multiplier: float) -> float:
    """Every parameter group's ``base_lr`` × ``multiplier`` (a group without one keeps its rate
    as the base); returns the first group's rate."""
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * multiplier
    return optimizer.param_groups[0]["lr"]
