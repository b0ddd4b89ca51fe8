"""The two offline datasets: MNIST-1D (generated locally) and scikit-learn's 8x8 digits.

Both loaders return a :class:`Split` of float32 inputs and int64 labels on the CPU. Neither
touches the network: MNIST-1D is generated with ``mnist1d.data.make_dataset`` (numpy and scipy
only; ``get_dataset`` would download, it is never called) and the digits ship with
scikit-learn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

__all__ = ["Split", "load_digits", "load_mnist1d"]


@dataclass(frozen=True)
class Split:
    """Train and test tensors: ``x`` is ``(N, C, *spatial)``, ``y`` holds class indices."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_mnist1d(seed: int, num_samples: int = 5000) -> Split:
    """MNIST-1D (Greydanus, 2020) with the package's default arguments, ``(N, 1, 40)`` signals.

    ``make_dataset`` reseeds numpy's and Python's global generators; their states are restored
    afterwards, so loading the data leaves the caller's randomness as it was.
    """
    import numpy as np
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    args.num_samples = num_samples
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return Split(*(_tensor(data[k], k.startswith("y")) for k in ("x", "y", "x_test", "y_test")))


def load_digits(seed: int, test_fraction: float = 0.2) -> Split:
    """scikit-learn's bundled 8x8 digits (1797 images), pixels scaled to ``[0, 1]``,
    ``(N, 1, 8, 8)``, split stratified by class with ``random_state=seed``."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    images = digits.images.reshape(-1, 1, 8, 8) / 16.0
    parts = train_test_split(images, digits.target, test_size=test_fraction,
                             random_state=seed, stratify=digits.target)
    x_train, x_test, y_train, y_test = (_tensor(a, i >= 2) for i, a in enumerate(parts))
    return Split(x_train, y_train, x_test, y_test)


def _tensor(array: object, labels: bool) -> torch.Tensor:
    import numpy as np

    if labels:
        return torch.as_tensor(np.asarray(array), dtype=torch.int64)
    out = torch.as_tensor(np.asarray(array), dtype=torch.float32)
    return out.unsqueeze(1) if out.ndim == 2 else out
