"""The three small networks and where each dropout method goes in them.

* ``cnn1d`` (MNIST-1D): the mnist1d repository's ``ConvBase``: three ``Conv1d`` of 25 channels
  (kernels 5, 3, 3, stride 2, padding 1) + ReLU and a linear head (125 -> 10); activation
  dropout after every ReLU, DropConnect on the head.
* ``mlp`` (MNIST-1D): ``40 -> 100 -> 100 -> 10`` with ReLU; activation dropout after every
  hidden ReLU, DropConnect on both hidden layers.
* ``cnn2d`` (digits): a residual CNN, a 3x3 stem and two residual blocks
  ``x + DropPath(conv-ReLU-conv(x))`` (2x2 max-pool between them), then a linear head;
  activation dropout after the stem and after each block, DropPath on the residual branches,
  DropConnect on the head.
"""

from __future__ import annotations

from torch import Tensor, nn

import dropkit.nn as dnn

__all__ = ["ACTIVATION_METHODS", "BLOCK_SIZE", "build_model", "drop_layer"]

ACTIVATION_METHODS = ("dropout", "vanilla", "spatial", "dropblock", "dropblock-linear",
                      "gaussian")
BLOCK_SIZE = 3


def drop_layer(method: str, p: float, dims: int) -> nn.Module:
    """The activation-dropout module of ``method`` for ``dims``-d feature maps (0: vectors);
    ``nn.Identity`` for methods that act elsewhere (``none``, ``droppath``, ``dropconnect``)."""
    if method == "dropout":
        return dnn.Dropout(p)
    if method == "vanilla":
        return dnn.Dropout(p, mode="vanilla")
    if method == "gaussian":
        return dnn.GaussianDropout(p)
    if method == "spatial":
        return (dnn.SpatialDropout1d, dnn.SpatialDropout2d)[dims - 1](p)
    if method in ("dropblock", "dropblock-linear"):
        return (dnn.DropBlock1d, dnn.DropBlock2d)[dims - 1](p, BLOCK_SIZE)
    return nn.Identity()


def _linear(method: str, p: float, n_in: int, n_out: int) -> nn.Module:
    if method == "dropconnect":
        return dnn.DropConnectLinear(n_in, n_out, p=p)
    return nn.Linear(n_in, n_out)


class _Residual(nn.Module):
    """``relu(x + drop_path(conv(relu(conv(x)))))``."""

    def __init__(self, channels: int, drop_path: nn.Module) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        return (x + self.drop_path(self.branch(x))).relu()


def build_model(name: str, method: str, p: float) -> nn.Module:
    """A fresh ``cnn1d``, ``mlp`` or ``cnn2d`` with ``method`` at rate ``p`` (see module docs)."""
    if name == "cnn1d":
        layers: list[nn.Module] = []
        for n_in, kernel in ((1, 5), (25, 3), (25, 3)):  # length 40 -> 19 -> 10 -> 5
            layers += [nn.Conv1d(n_in, 25, kernel, stride=2, padding=1), nn.ReLU(),
                       drop_layer(method, p, 1)]
        return nn.Sequential(*layers, nn.Flatten(), _linear(method, p, 25 * 5, 10))
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            _linear(method, p, 40, 100), nn.ReLU(), drop_layer(method, p, 0),
            _linear(method, p, 100, 100), nn.ReLU(), drop_layer(method, p, 0),
            nn.Linear(100, 10),
        )
    if name == "cnn2d":
        def path() -> nn.Module:
            return dnn.DropPath(p) if method == "droppath" else nn.Identity()

        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), drop_layer(method, p, 2),
            _Residual(32, path()), drop_layer(method, p, 2), nn.MaxPool2d(2),
            _Residual(32, path()), drop_layer(method, p, 2),
            nn.Flatten(), _linear(method, p, 32 * 4 * 4, 10),
        )
    raise ValueError(f"build_model: `name` must be one of 'cnn1d', 'mlp', 'cnn2d', got {name!r}.")
