"""DropConnect (Wan et al., 2013): drop individual *weights* instead of activations.

:func:`drop_connect` is inverted dropout of a weight tensor: each weight is kept with
probability ``1 - p_eff`` and scaled by ``1 / (1 - p_eff)``, so ``E[drop_connect(W)] == W`` for
every ``p`` and the deterministic "mean" network at inference time is the plain layer. The mask
is the Philox keep field (stream 0) over the weight's shape, exactly
:func:`dropkit.functional.dropout`'s mask for the same seed; per-example masks
(:func:`sample_weights`) are the stream-0 keep field over the noise shape ``(N, *weight.shape)``.

Note on the paper's scaling: Wan et al. train with unscaled masks ``M * W`` and rescale at
inference. The seed article's ``dropout(W) * p`` rule (``nn.Dropout`` already rescales by
``1 / (1 - p)``) gives ``E = p * W``: it equals the unscaled rule ``(1 - p) * W`` only at
``p = 0.5`` and the plain layer at no ``p < 1``. Here the scaling is inverted, so no rescale is
needed at inference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import functional as F

__all__ = ["drop_connect"]


def drop_connect(
    weight: Tensor,
    p: float = 0.5,
    training: bool = True,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Drop each weight with probability ``p`` and scale the kept ones by ``1 / (1 - p)``.

    This is :func:`dropkit.functional.dropout` applied to a weight tensor (same mask for the same
    seed); gradients flow to ``weight`` (backward regenerates the mask from the seed). Biases
    are not dropped: pass only the weight. Use the result in place of the weight, e.g.
    ``torch.nn.functional.linear(x, drop_connect(W, 0.5), b)``: one mask for the whole batch.
    For one mask per example use the layers of :mod:`dropkit.nn` with ``mask="sample"``.

    Args:
        weight: Weight tensor of any shape and a floating dtype.
        p: Probability of dropping a weight, in ``[0, 1]`` (float or 0-dim floating tensor).
        training: Drop if ``True``; otherwise return ``weight`` itself.
        seed: Fixes the mask: an int in ``[0, 2**64)``.
        generator: Draws the seed when ``seed`` is not given.

    Raises:
        TypeError, ValueError: As :func:`dropkit.functional.dropout` (messages name
            ``drop_connect``).

    Example:
        >>> import torch, dropkit.functional as DF
        >>> from dropkit._drop_connect import drop_connect
        >>> w = torch.ones(2, 4)
        >>> torch.equal(drop_connect(w, 0.5, seed=0), DF.dropout(w, 0.5, seed=0))
        True
        >>> drop_connect(w, 0.5, seed=0)
        tensor([[2., 0., 2., 2.],
                [2., 2., 2., 2.]])

    Reference:
        Wan, Zeiler, Zhang, LeCun & Fergus, "Regularization of Neural Networks using
        DropConnect", ICML 2013.
    """
    fn = "drop_connect"
    p = F._check_common(fn, weight, p, training, False, seed, generator, name="weight")
    return F._dropout_impl(weight, p, training, False, "inverted", weight.shape, seed, generator)


def sample_weights(
    weight: Tensor,
    n: int,
    p: float | Tensor,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``n`` independently masked copies of ``weight``, shape ``(n, *weight.shape)``.

    The mask is the stream-0 keep field over the noise shape ``(n, *weight.shape)`` (so copy
    ``k`` is *not* ``drop_connect(weight, p, seed=seed)`` unless ``n == 1``). Memory: the result
    holds ``n * weight.numel()`` elements; backward regenerates the mask from the seed and sums
    the gradient over the copies. ``p`` is already validated by the caller.
    """
    expanded = weight.expand(n, *weight.shape)
    return F._dropout_impl(
        expanded, p, True, False, "inverted", expanded.shape, seed, generator
    )
