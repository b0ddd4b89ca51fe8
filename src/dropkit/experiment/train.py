"""One training run: Adam with a cosine learning-rate decay, cross-entropy, minibatches."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from dropkit.schedules import Linear, RateScheduler

from .data import Split

__all__ = ["RunResult", "accuracy", "train"]


@dataclass
class RunResult:
    """What one run measured; ``curve`` is the test accuracy after each epoch."""

    train_acc: float
    test_acc: float
    sec_per_epoch: float
    curve: list[float] = field(default_factory=list)

    @property
    def gap(self) -> float:
        return self.train_acc - self.test_acc


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Eval-mode accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
                  for i in range(0, len(x), batch))
    return correct / len(x)


def train(
    model: nn.Module,
    data: Split,
    *,
    epochs: int,
    seed: int,
    lr: float,
    batch_size: int,
    device: torch.device,
    ramp_p: float | None = None,
) -> RunResult:
    """Train ``model`` in place; ``ramp_p`` ramps every dropkit rate in it linearly from 0 to
    ``ramp_p`` over training (DropBlock's schedule, via :class:`~dropkit.schedules.RateScheduler`).

    The minibatch order comes from a generator seeded with ``seed``; dropkit masks come from
    torch's default generator, which the caller seeds.
    """
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    steps_per_epoch = -(-len(x_train) // batch_size)
    total = epochs * steps_per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    lr_decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    rates = RateScheduler(model, Linear(0.0, ramp_p, total)) if ramp_p is not None else None
    order = torch.Generator().manual_seed(seed)
    curve, seconds = [], 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(x_train), generator=order).split(batch_size):
            idx = idx.to(device)
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_decay.step()
            if rates is not None:
                rates.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        curve.append(accuracy(model, x_test, y_test))
    return RunResult(accuracy(model, x_train, y_train), curve[-1], seconds / epochs, curve)
