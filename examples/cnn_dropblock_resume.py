"""A small CNN trained with dropkit: ``convert`` + a DropBlock schedule + resuming a checkpoint.

The model is written with torch's own ``nn.Dropout2d`` and ``nn.Dropout``; ``dropkit.convert``
swaps them for dropkit's modules (same semantics, same ``state_dict`` keys), a
``dropkit.nn.DropBlock2d`` sits after the first convolution, and a
``dropkit.schedules.RateScheduler`` ramps every dropkit rate linearly from 0 (the DropBlock
paper's schedule). Halfway, the run saves a checkpoint (model, optimizer, rate scheduler and
torch's RNG state), and a second run resumes from it: it ends with the same weights as the run
that never stopped, because the schedule's step and the mask stream are restored too.

The data are synthetic 12x12 images of a horizontal or a vertical bar in noise (no download).
Runs in a few seconds on a CPU: ``python examples/cnn_dropblock_resume.py``.
"""

from __future__ import annotations

import io

import torch
from torch import nn

import dropkit
import dropkit.nn as dnn
from dropkit.schedules import Linear, RateScheduler


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 1, 12, 12)`` with one bar each; label 0 horizontal, 1 vertical."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.5 * torch.randn(n, 1, 12, 12, generator=g)
    where = torch.randint(2, 10, (n,), generator=g)
    for i in range(n):
        if y[i] == 0:
            x[i, 0, where[i], 2:10] += 1.5
        else:
            x[i, 0, 2:10, where[i]] += 1.5
    return x, y


def make_model() -> nn.Module:
    """A torch model with torch's dropout layers; DropBlock is dropkit's own."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), dnn.DropBlock2d(0.0, block_size=3),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, 2),
    )


def setup(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, RateScheduler]:
    torch.manual_seed(seed)
    model = make_model()
    report = dropkit.convert(model)  # nn.Dropout2d / nn.Dropout -> dropkit modules, in place
    assert len(report.converted) == 2, report
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    # Every dropkit module follows the schedule: 0 at step 0 up to 0.15 at step 30.
    rates = RateScheduler(model, Linear(0.0, 0.15, steps=30))
    return model, optimizer, rates


def train(model: nn.Module, optimizer: torch.optim.Optimizer, rates: RateScheduler,
          data: tuple[torch.Tensor, torch.Tensor], steps: int) -> None:
    x, y = data
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rates.step()


def checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer,
               rates: RateScheduler) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rates": rates.state_dict(), "rng": torch.get_rng_state()}, buffer)
    return buffer.getvalue()


def resume(blob: bytes, seed: int) -> tuple[nn.Module, torch.optim.Optimizer, RateScheduler]:
    model, optimizer, rates = setup(seed)
    state = torch.load(io.BytesIO(blob))
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rates.load_state_dict(state["rates"])  # the schedule continues where it stopped
    torch.set_rng_state(state["rng"])  # ... and so do the masks
    return model, optimizer, rates


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    model.eval()
    x, y = data
    return float((model(x).argmax(1) == y).float().mean())


def main(steps: int = 60, seed: int = 0) -> dict[str, object]:
    """Train ``steps`` steps straight through, and again stopping halfway and resuming from the
    checkpoint; returns the test accuracy, the final DropBlock rate and whether both runs ended
    with equal weights."""
    train_data, test_data = make_data(512, seed=1), make_data(256, seed=2)

    model, optimizer, rates = setup(seed)
    train(model, optimizer, rates, train_data, steps)

    first, opt1, rates1 = setup(seed)
    train(first, opt1, rates1, train_data, steps // 2)
    blob = checkpoint(first, opt1, rates1)
    del first, opt1, rates1  # the process "stops" here
    resumed, opt2, rates2 = resume(blob, seed)
    train(resumed, opt2, rates2, train_data, steps - steps // 2)

    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 resumed.state_dict().values(), strict=True))
    result = {"test_accuracy": accuracy(model, test_data), "final_rate": model[2].p,
              "resumed_equals_straight": same}
    print(f"test accuracy {100 * result['test_accuracy']:.1f}%, DropBlock p now "
          f"{result['final_rate']:.3f}, resumed run == straight run: {same}")
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)  # a tiny model: more threads only contend (tests/test_examples.py)
    main()
