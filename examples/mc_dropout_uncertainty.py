"""MC-dropout uncertainty of a classifier with ``dropkit.mc.mc_predict``.

An MLP with ``dropkit.nn.Dropout`` learns three Gaussian blobs in 2-D. At test time
``mc_predict`` runs the model many times with its dropout layers sampling (everything else in
eval mode) and summarizes the passes: the predictive entropy is close to 0 on points near the
training blobs, high between two blobs (where the classes meet) and raised on points far from
all data (less so: a ReLU network extrapolates with confidence, and MC dropout only partly
corrects it). With a fixed ``seed`` the result is reproducible and torch's global RNG is left
untouched.

Runs in a few seconds on a CPU: ``python examples/mc_dropout_uncertainty.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import dropkit.nn as dnn
from dropkit.mc import mc_predict

CENTRES = torch.tensor([[0.0, 2.0], [-2.0, -1.0], [2.0, -1.0]])


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return CENTRES[y] + 0.5 * torch.randn(n, 2, generator=g), y


def main(epochs: int = 150, seed: int = 0) -> dict[str, float]:
    """Train, then compare the MC predictive entropy (nats) on test points near the blobs, on
    points between two blobs and on far-away points; returns the mean of each group."""
    torch.manual_seed(seed)
    x, y = make_data(600, seed=1)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), dnn.Dropout(0.3),
                          nn.Linear(64, 64), nn.ReLU(), dnn.Dropout(0.3), nn.Linear(64, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

    near, near_y = make_data(300, seed=2)
    between = (CENTRES[[1, 2, 0]] + CENTRES[[2, 0, 1]]) / 2  # midpoints of the blob pairs
    angles = torch.linspace(0, 2 * math.pi, 13)[:-1]
    far = 8.0 * torch.stack([angles.cos(), angles.sin()], 1)  # a ring far from every blob
    groups = {"near the training blobs": near, "between two blobs": between,
              "far from the data": far}
    state = torch.get_rng_state()
    result = {name: float(mc_predict(model, points, 50, seed=seed).entropy.mean())
              for name, points in groups.items()}
    assert torch.equal(torch.get_rng_state(), state)  # seeded: the global RNG is untouched
    pred = mc_predict(model, near, 50, seed=seed).mean.argmax(1)
    result["mc_accuracy"] = float((pred == near_y).float().mean())
    print(f"MC accuracy near the blobs: {100 * result['mc_accuracy']:.1f}%")
    print(f"mean predictive entropy, nats (max ln 3 = {math.log(3):.3f}):")
    for name in groups:
        print(f"  {name:<24} {result[name]:.3f}")
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)  # a tiny model: more threads only contend (tests/test_examples.py)
    main()
