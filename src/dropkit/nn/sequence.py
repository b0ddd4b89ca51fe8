"""Sequence dropouts: variational (locked) dropout and word-type embedding dropout.

Which axes share one decision, for a batch-first input ``(N, T, D)`` (samples, timesteps,
features):

=================================================  =============  =========================
Module                                             noise shape    what is dropped
=================================================  =============  =========================
``dropkit.nn.Dropout``                             ``(N, T, D)``  single elements
``dropkit.nn.TimestepDropout``                     ``(N, T, 1)``  whole timesteps (tokens)
``LockedDropout(batch_first=True)``                ``(N, 1, D)``  the same features at
                                                                  every timestep
``SpatialDropout1d(data_format="channels_last")``  ``(N, 1, D)``  the same as LockedDropout
=================================================  =============  =========================

``SpatialDropout1d`` with ``data_format="channels_last"`` draws exactly the noise shape of
``LockedDropout(batch_first=True)`` on ``(N, T, D)`` (features are its channels, time its
length), so both give the same mask for the same seed; ``LockedDropout`` also accepts
time-major ``(T, N, D)`` input (``batch_first=False``, noise ``(1, N, D)``, the AWD-LSTM layout)
and any number of feature axes. :class:`EmbeddingDropout` drops word *types*: every occurrence
of a token id in one sequence shares one decision (Gal & Ghahramani, 2016), independently per
sequence.

>>> import torch, dropkit
>>> from dropkit.nn.sequence import LockedDropout
>>> x = torch.ones(2, 5, 3)
>>> a = LockedDropout(0.5)(x, seed=7)
>>> b = dropkit.nn.SpatialDropout1d(0.5, data_format="channels_last")(x, seed=7)
>>> torch.equal(a, b)
True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import _validation as v
from .. import functional as F
from .. import rng
from ..kernels import torch_ref
from . import _jit
from ._rate import RateModule

__all__ = ["EmbeddingDropout", "LockedDropout"]


class LockedDropout(_jit.Forward, RateModule):
    """Variational dropout: one mask per sequence, shared by all timesteps.

    Input ``(N, T, *features)`` when ``batch_first`` (noise shape ``(N, 1, *features)``) or
    ``(T, N, *features)`` otherwise (noise shape ``(1, N, *features)``). Kept values are scaled
    by ``1 / (1 - p)``; eval is the identity.

    Args:
        p: Probability of dropping a feature of a sequence (not the keep probability).
        batch_first: The layout of the input, as in ``torch.nn.LSTM``.

    ``forward(input, *, seed=None, generator=None)`` fixes or draws the mask.

    Raises:
        TypeError: Bad ``p`` or a non-bool ``batch_first``; in forward, as
            :func:`dropkit.functional.dropout`.
        ValueError: ``p`` outside ``[0, 1]``; in forward, an input of rank < 3.

    Example:
        >>> import torch, dropkit
        >>> from dropkit.nn.sequence import LockedDropout
        >>> m = LockedDropout(0.5, batch_first=False)
        >>> m
        LockedDropout(p=0.5, batch_first=False)
        >>> y = m(torch.ones(6, 2, 4), seed=1)
        >>> bool((y == y[0]).all())
        True

    Reference:
        Gal & Ghahramani, "A Theoretically Grounded Application of Dropout in Recurrent Neural
        Networks", NeurIPS 2016.
    """

    def __init__(self, p: float = 0.5, *, batch_first: bool = True) -> None:
        super().__init__(p)
        self.batch_first = v.check_bool(type(self).__name__, "batch_first", batch_first)

    def _forward(self, input, seed, generator):
        if isinstance(input, Tensor) and input.dim() < 3:
            layout = "(N, T, *features)" if self.batch_first else "(T, N, *features)"
            raise ValueError(
                f"LockedDropout: expected an input {layout} of at least 3 dimensions "
                f"(batch_first={self.batch_first}), got a {input.dim()}D tensor of shape "
                f"{tuple(input.shape)}."
            )
        shape = None
        if isinstance(input, Tensor):  # None: the input's size (symbolic under torch.export)
            shape = [None] * input.dim()
            shape[1 if self.batch_first else 0] = 1
        return F.dropout(input, self._rate(), self.training, noise_shape=shape, seed=seed,
                         generator=generator)

    def _jit_forward(
        self,
        input: Tensor,
        shape: list[int],
        seed: int | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        if len(shape) < 3:
            raise ValueError("LockedDropout: expected an input of at least 3 dimensions, got a "
                             + str(len(shape)) + "D tensor.")
        if not self.training:
            return input
        axis = 1 if self.batch_first else 0
        noise = shape[:axis] + [1] + shape[axis + 1:]  # noqa: RUF005  (TorchScript)
        return _jit.rate_dropout(input, self._p_value, noise, "inverted", False, seed, generator)

    def extra_repr(self) -> str:
        return f"p={self.p}, batch_first={self.batch_first}"


class EmbeddingDropout(_jit.Forward, RateModule):
    """Word-type dropout on an ``nn.Embedding``: per sequence, drop every occurrence of a token.

    For an index input ``(N, T)``, each (sequence, token id) pair is kept or dropped as a whole
    with probability ``p``: all occurrences of a dropped id in that sequence get a zero
    embedding, kept ones are scaled by ``1 / (1 - p)``. Decisions of different sequences are
    independent. A 1-D input ``(T,)`` is one sequence; for inputs ``(N, *)`` all tokens of row
    ``n`` form sequence ``n``. Eval returns ``embedding(input)`` unchanged.

    The decision of ``(n, id)`` is element ``n * V + id`` (``V = num_embeddings``) of the keep
    field of noise shape ``(N, V)`` of dropkit's Philox engine (stream 0), the same field
    ``dropkit.rng.keep_field((N, V), p, seed)`` gives. Only the elements at the looked-up
    indices are evaluated, so the extra memory is ``O(N * T)``, independent of ``V``, and no
    masked copy of the weight is built (unlike AWD-LSTM's ``embedded_dropout``). Gradients reach
    only the rows of kept occurrences. ``padding_idx``, ``max_norm`` and ``sparse`` of the
    embedding keep working (the lookup is the embedding's own forward).

    Args:
        embedding: The ``nn.Embedding`` to wrap (registered as submodule ``embedding``).
        p: Probability of dropping a word type in a sequence (not the keep probability).

    ``forward(input, *, seed=None, generator=None)`` fixes or draws the decisions.

    Raises:
        TypeError: ``embedding`` is not an ``nn.Embedding``; bad ``p``; in forward, ``input``
            is not an integer tensor.
        ValueError: ``p`` outside ``[0, 1]``; in forward, a 0-dim ``input``.

    Example:
        >>> import torch, dropkit
        >>> from dropkit.nn.sequence import EmbeddingDropout
        >>> m = EmbeddingDropout(torch.nn.Embedding(10, 3), p=0.5)
        >>> m
        EmbeddingDropout(
          p=0.5
          (embedding): Embedding(10, 3)
        )
        >>> y = m(torch.tensor([[4, 4, 4, 4]]), seed=2)
        >>> bool((y == 0).all()) or bool((y != 0).all())
        True

    Reference:
        Gal & Ghahramani, "A Theoretically Grounded Application of Dropout in Recurrent Neural
        Networks", NeurIPS 2016, section 4.2.
    """

    def __init__(self, embedding: nn.Embedding, p: float = 0.1) -> None:
        super().__init__(p)
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"EmbeddingDropout: `embedding` must be a torch.nn.Embedding, got "
                            f"{type(embedding).__name__}.")
        self.embedding = embedding

    def keep(
        self, input: Tensor, *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Boolean keep decisions of shape ``input.shape`` (what one training call uses)."""
        self._check_input(input, seed, generator)
        return self._keep(input, F.draw_key(seed, generator, rate=self._rate()),
                          self._threshold())

    def _forward(self, input, seed, generator):
        self._check_input(input, seed, generator)
        rate = self._rate()
        emb = self.embedding(input)
        if not self.training or (not isinstance(rate, Tensor) and rate == 0.0):
            return emb
        t = self._threshold()
        keep = self._keep(input, F.draw_key(seed, generator, rate=rate), t)
        if isinstance(t, Tensor):
            scale = rng.LANE_RANGE / (rng.LANE_RANGE - t).clamp_min(1).to(torch.float64)
            scale = scale.to(torch_ref.compute_dtype(emb.dtype))
        else:
            scale = rng.inverted_scale(t)
        return torch.where(keep.unsqueeze(-1), emb * scale, torch.zeros((), dtype=emb.dtype,
                                                                         device=emb.device))

    def _jit_forward(
        self,
        input: Tensor,
        shape: list[int],
        seed: int | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        if not self.training:
            return self.embedding(input)
        if torch.jit.is_scripting():
            raise RuntimeError("EmbeddingDropout: training mode does not run under "
                               "torch.jit.script (torch.jit.trace it, or script it in eval).")
        return self._traced_forward(input, seed, generator)

    @torch.jit.unused
    def _traced_forward(self, input, seed, generator):
        """Under ``torch.jit.trace``: the eager code records plain torch ops."""
        return self._forward(input, seed, generator)

    def _threshold(self) -> int | Tensor:
        rate = self._rate()
        if isinstance(rate, Tensor):
            return torch.floor(rate * rng.LANE_RANGE + 0.5).to(torch.int64)
        return rng.threshold(rate)

    def _keep(self, input: Tensor, key: Tensor, t: int | Tensor) -> Tensor:
        key = key.to(input.device)
        idx = input.reshape(1, -1) if input.dim() == 1 else input.flatten(1)  # also if empty
        rows = torch.arange(idx.shape[0], dtype=torch.int64, device=idx.device).unsqueeze(1)
        field = rows * self.embedding.num_embeddings + idx.to(torch.int64)  # (N, T) indices
        block, lane = field // 8, field % 8
        zero = torch.zeros((), dtype=torch.int64, device=idx.device)
        words = torch.stack(
            torch_ref.philox4x32(block & rng.MASK32, block >> 32, zero + rng.STREAM_BERNOULLI,
                                 zero, key[0], key[1]), dim=-1)
        word = torch.gather(words, -1, (lane // 2).unsqueeze(-1)).squeeze(-1)
        u = torch.where(lane % 2 == 0, word & 0xFFFF, word >> 16)
        return (u >= t).reshape(input.shape)

    @staticmethod
    def _check_input(input: object, seed: object, generator: object) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"EmbeddingDropout: `generator` must be a torch.Generator or None, "
                            f"got {type(generator).__name__}.")
        v.check_seed("EmbeddingDropout", seed, generator)
        if not isinstance(input, Tensor) or input.is_floating_point() or input.is_complex() \
                or input.dtype == torch.bool:
            raise TypeError(f"EmbeddingDropout: `input` must be an integer tensor of token ids, "
                            f"got {getattr(input, 'dtype', type(input).__name__)}.")
        if input.dim() == 0:
            raise ValueError("EmbeddingDropout: expected token ids (N, T) or (T,), got a 0D "
                             "tensor.")

    def extra_repr(self) -> str:
        return f"p={self.p}"
