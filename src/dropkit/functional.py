"""The dropout family as functions: validate, short-circuit the trivial cases, dispatch.

Every function here draws its decisions from dropkit's Philox mask engine
([docs/rng.md](../rng.md)): the mask is a pure function of ``(seed, noise shape)``, identical on
every backend and device, and backward regenerates it from the seed instead of keeping it
(autograd saves 16 bytes per call, not a mask).

Conventions shared by all functions:

* ``p`` is the probability of *dropping* an element (not the keep probability). It is realised
  as ``p_eff = round(p * 65536) / 65536`` (``|p_eff - p| <= 2**-17``), and inverted scaling uses
  ``1 / (1 - p_eff)``, so ``E[output] == input`` exactly.
* ``training=False`` or ``p == 0`` returns ``input`` itself (vanilla mode in eval: ``input *
  (1 - p_eff)``); every other ``p`` returns a new tensor (or ``input``, written in place, for
  ``inplace=True``), also when ``p_eff`` rounds to 0. ``p == 1`` returns exact zeros, with a
  zero gradient, even for inf/NaN inputs; dropped positions are exactly 0 for any input. Empty
  tensors pass through.
* ``p`` may also be a 0-dim floating tensor that does not require grad: the op reads its value
  when it runs (and checks that it is in ``[0, 1]`` then), so a compiled graph does not guard on
  it and a schedule can change it every step without recompiling (modules do this under
  ``torch.compile``). The results and the random numbers drawn are the same as with the float;
  the tensor path returns a new tensor, even for ``p = 0``.
* ``seed`` (an int in ``[0, 2**64)``) fixes the mask; otherwise a 64-bit seed is drawn from
  ``generator`` (default: torch's default CPU generator), so ``torch.manual_seed`` makes runs
  reproducible. A training call draws it iff ``0 < p < 1`` (the exact ``p``, not ``p_eff``), as
  ``torch.nn.functional.dropout`` draws random numbers; ``p = 0`` and ``p = 1`` draw nothing.
* ``inplace=True`` raises what torch's in-place dropout raises: for an inference tensor outside
  ``torch.inference_mode()`` and for an input whose elements share memory (an expanded tensor),
  unless nothing is written (``p = 0``, eval).
* Accepted dtypes: float16, bfloat16, float32, float64. Results keep the input's memory
  format, as torch's dropout does (``torch.preserve_format``: ``channels_last`` stays
  ``channels_last``), with the values of the contiguous computation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from . import _ops, rng
from . import _validation as v
from . import distributed as _distributed
from .kernels import torch_ref

__all__ = [
    "alpha_dropout",
    "bias_dropout_add",
    "drop_block1d",
    "drop_block2d",
    "drop_block3d",
    "drop_connect",
    "drop_path",
    "drop_path_add",
    "dropout",
    "gaussian_dropout",
    "spatial_dropout1d",
    "spatial_dropout2d",
    "spatial_dropout3d",
    "timestep_dropout",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SPARSE_LAYOUTS = (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr,
                   torch.sparse_bsc)


def _check_input(fn: str, input: object, name: str = "input") -> Tensor:
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}: `{name}` must be a torch.Tensor, got {type(input).__name__}.")
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{fn}: `{name}` must have dtype torch.float16, torch.bfloat16, torch.float32 or "
            f"torch.float64, got {input.dtype}."
        )
    return input


def _check_rate(fn: str, p: object) -> float | Tensor:
    """A float in [0, 1], or a 0-dim floating tensor. A tensor's value is checked when the op
    runs; in eager mode it is also checked here, so that the message names ``fn``."""
    if isinstance(p, Tensor):
        if p.dim() != 0 or not p.is_floating_point():
            raise TypeError(
                f"{fn}: `p` must be a real number in [0, 1] or a 0-dim floating tensor, got a "
                f"tensor of shape {tuple(p.shape)} and dtype {p.dtype}."
            )
        if p.requires_grad:
            raise ValueError(
                f"{fn}: `p` must not require grad (no gradient flows to the drop rate), got a "
                f"0-dim tensor with requires_grad=True; pass `p.detach()`."
            )
        if type(p) is Tensor and not torch.compiler.is_compiling() \
                and not torch.jit.is_tracing():
            _ops.read_rate(p, fn)
        return p
    return v.check_p(fn, p)


def _check_common(
    fn, input, p, training, inplace, seed, generator, name: str = "input"
) -> float | Tensor:
    _check_input(fn, input, name)
    p = _check_rate(fn, p)
    v.check_bool(fn, "training", training)
    v.check_bool(fn, "inplace", inplace)
    if training and input.layout in _SPARSE_LAYOUTS:
        raise TypeError(
            f"{fn}: `{name}` must be a dense (strided) tensor in training, got layout "
            f"{input.layout} (torch.nn.functional.dropout does not support sparse tensors "
            f"either; drop the values instead, or use `{name}.to_dense()`)."
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{fn}: `generator` must be a torch.Generator or None, got "
            f"{type(generator).__name__}."
        )
    v.check_seed(fn, seed, generator)
    return p


GENERATOR_UNDER_COMPILE = (
    "dropkit: a `generator=` is read outside the compiled graph (torch.compile cannot take a "
    "torch.Generator into a graph); pass `seed=` instead to compile with fullgraph=True"
)


def _break_for(generator: torch.Generator | None) -> None:
    """Dynamo cannot take a generator into a graph: under ``torch.compile`` a call with a
    ``generator`` is a graph break first (so the draw runs in eager Python, with eager's key and
    generator state), and with ``fullgraph=True`` dynamo's ``Unsupported`` error quoting
    :data:`GENERATOR_UNDER_COMPILE` (``docs/export.md``)."""
    if generator is not None and torch.compiler.is_compiling():
        torch._dynamo.graph_break(msg=GENERATOR_UNDER_COMPILE)


def draw_key(
    seed: int | None = None,
    generator: torch.Generator | None = None,
    *,
    per_rank: bool = True,
    rate: float | Tensor | None = None,
) -> Tensor:
    """The Philox key ``[seed & 0xFFFFFFFF, seed >> 32]`` as an int64 tensor of shape (2,).

    Without ``seed``, both 32-bit words are drawn from ``generator`` (default: torch's default
    CPU generator), which is the same as drawing a uniform 64-bit seed (from a ``generator``
    always in eager Python, see :func:`_break_for`). With a ``rate`` (the call's drop rate: a
    float, or a 0-dim tensor read when the call runs, also inside a compiled graph) they are
    drawn only if ``0 < rate < 1``; otherwise nothing is drawn and the key is ``(0, 0)``
    (``p = 0`` and ``p = 1`` need no random numbers). When ``torch.distributed`` is
    initialized, a drawn key is made rank-dependent with :func:`dropkit.rng.rank_key` unless
    ``per_rank=False`` (or :func:`dropkit.distributed.rank_streams` turned it off); an explicit
    ``seed`` never is.
    """
    if seed is not None:
        return torch.tensor(rng.seed_to_key(seed), dtype=torch.int64)
    _break_for(generator)
    if (isinstance(rate, Tensor) and generator is None
            and not torch._C._are_functorch_transforms_active()):  # vmap sees randint's draw
        key = _ops.draw_key_op(rate)
    elif rate is not None and not 0.0 < (_ops.read_rate(rate) if isinstance(rate, Tensor)
                                        else rate) < 1.0:
        return torch.zeros(2, dtype=torch.int64)
    elif generator is not None:
        key = torch.randint(0, 2**32, (2,), dtype=torch.int64, generator=generator,
                            device=generator.device)
    else:
        # `generator=None` spelled out: inductor then keeps eager's randint (the same keys).
        key = torch.randint(0, 2**32, (2,), dtype=torch.int64, generator=None, device="cpu")
    rank = _distributed.stream_rank() if per_rank else None
    if rank is None:
        return key
    zero = torch.zeros((), dtype=torch.int64, device=key.device)  # rng.rank_key, on tensors
    r0, r1, _, _ = torch_ref.philox4x32(zero + (rank & rng.MASK32), zero + (rank >> 32),
                                        zero + rng.STREAM_RANK, zero, key[0], key[1])
    return torch.stack([r0, r1])


_NO_KEY = (0, 0)  # p == 1 draws nothing: every element is dropped without looking


def _check_writable(input: Tensor) -> None:
    """Raise torch's own errors for an in-place write that torch refuses: into an inference
    tensor outside inference mode, or into a tensor whose elements share memory (expanded).
    Compiled graphs are left to torch's functionalization."""
    if torch.compiler.is_compiling():
        return
    if input.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(
            "Inplace update to inference tensor outside InferenceMode is not allowed.You can "
            "make a clone to get a normal tensor before doing inplace update.See "
            "https://github.com/pytorch/rfcs/pull/17 for more details."
        )
    if torch._debug_has_internal_overlap(input) == 1:  # 1: yes; 2: too hard to tell (allowed)
        raise RuntimeError(
            "unsupported operation: more than one element of the written-to tensor refers to a "
            "single memory location. Please clone() the tensor before performing the operation."
        )


def _run(input, key, t, noise_shape, scale, shift, fill, inplace, offset=None) -> Tensor:
    """Apply the op; ``offset``: ``input`` is a shard at that offset of a global input whose
    field is ``noise_shape`` (:mod:`dropkit.distributed`; out of place)."""
    if not isinstance(key, Tensor):
        key = torch.tensor(key, dtype=torch.int64)
    if offset is not None:
        return _ops.masked_affine_at_eager(input, key, t, list(noise_shape), list(offset),
                                           scale, shift, fill)
    args = (key, t, list(noise_shape), scale, shift, fill)
    if not inplace:
        return _ops.masked_affine_eager(input, *args)
    _check_writable(input)
    if (torch.is_grad_enabled() and input.requires_grad) or _ops._transformed():
        # Autograd (forward mode and functorch too) needs the out-of-place op; copying back
        # keeps `inplace` semantics.
        return input.copy_(_ops.masked_affine_eager(input, *args))
    _ops.masked_affine_(input, *args)
    return input


def _run_rate(input, p, noise_shape, kind, inplace, seed, generator, per_rank=True) -> Tensor:
    """The tensor-rate path: the op reads ``p`` at run time (no recompiles when it changes)."""
    key = draw_key(seed, generator, per_rank=per_rank, rate=p)
    out = _ops.rate_op_eager(input, key, p, list(noise_shape), kind)
    return input.copy_(out) if inplace else out


def _eval_scale(input: Tensor, p: Tensor, inplace: bool) -> Tensor:
    """Vanilla dropout at eval time with a tensor rate: ``input * (1 - p_eff)`` (exact zeros for
    ``p_eff = 1``) in plain torch ops, with no custom op and no key, so an exported or compiled
    eval graph holds a multiplication only (``docs/export.md``)."""
    t = torch.floor(p.to(torch.float64) * rng.LANE_RANGE + 0.5)
    scale = 1.0 - t / rng.LANE_RANGE
    everything = (t >= rng.LANE_RANGE).to(input.device)
    if inplace:
        return input.mul_(scale).masked_fill_(everything, 0.0)
    return (input * scale).masked_fill(everything, 0.0)


def _dropout_impl(
    input, p, training, inplace, mode, noise_shape, seed, generator, per_rank=True, offset=None
) -> Tensor:
    """The shared path of the Bernoulli variants; ``offset`` (a float ``p`` only) makes
    ``input`` a shard of a global input whose field is ``noise_shape`` (see :func:`_run`)."""
    if input.numel() == 0 or (not training and mode == "inverted"):
        return input
    kind = ("inverted" if mode == "inverted" else "unscaled") if training else "eval"
    if isinstance(p, Tensor):
        if not training:
            return _eval_scale(input, p, inplace)
        return _run_rate(input, p, noise_shape, kind, inplace, seed, generator,
                         per_rank=per_rank)
    if p == 0.0:
        return input
    t, scale, _, _ = rng.affine_params(kind, p)
    if t == rng.LANE_RANGE and (p == 1.0 or not training):  # exact zeros, no RNG drawn
        return _run(input, _NO_KEY, t, noise_shape, 0.0, 0.0, 0.0, inplace, offset)
    if not training:  # vanilla mode at eval time
        return input.mul_(scale) if inplace else input * scale
    # 0 < p < 1 draws a key even when p_eff rounds to 0 or 1 (the op handles both thresholds).
    key = draw_key(seed, generator, per_rank=per_rank)
    return _run(input, key, t, noise_shape, scale, 0.0, 0.0, inplace, offset)


def dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    mode: str = "inverted",
    noise_shape: Sequence[int | None] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    save: str = "seed",
) -> Tensor:
    """Zero each element (or each cell of ``noise_shape``) with probability ``p``.

    Args:
        input: Tensor of any shape and a floating dtype.
        p: Probability of dropping an element (not the keep probability), in ``[0, 1]``.
        training: Apply dropout if ``True`` (the default, as in ``torch.nn.functional``).
        inplace: Write the result into ``input``.
        mode: ``"inverted"`` scales kept values by ``1 / (1 - p)`` in training and is the
            identity in eval; ``"vanilla"`` does not scale in training and multiplies by
            ``1 - p`` in eval (the original paper's formulation).
        noise_shape: Keras semantics: one entry per axis of ``input``, each ``1`` (the axis
            shares one decision), the axis' size, or ``None`` (= the axis' size).
        seed: Fixes the mask: an int in ``[0, 2**64)``.
        generator: Draws the seed when ``seed`` is not given.
        save: What autograd keeps for backward. ``"seed"`` (default): the 16-byte key, and
            backward regenerates the mask. ``"bitmask"``: the keep field packed to 1 bit per
            element of the noise field (``ceil(numel / 8)`` bytes), read back by backward
            instead of regenerating it. Same output and gradient either way.

    Shape:
        - Input: ``(*)``, any shape.
        - Output: ``(*)``, same shape as input.

    Raises:
        TypeError: ``input`` is not a floating tensor (or is sparse, in training: torch's
            dropout rejects sparse tensors too), ``p`` is not a real number, ``training``
            or ``inplace`` is not a bool, ``noise_shape`` has non-int entries, or ``seed`` is
            not an int.
        ValueError: ``p`` (a float, or a tensor's value) outside ``[0, 1]`` or NaN, an
            unknown ``mode`` or ``save``, a ``noise_shape`` of the wrong length or with an
            entry that is neither 1 nor the axis' size, or a ``seed`` outside ``[0, 2**64)``.

    Example:
        The seeds' example: ``noise_shape=(1, 1, 5)`` drops whole columns of a 1x7x5 tensor.

        >>> import torch, dropkit.functional as DF
        >>> x = torch.arange(35.).reshape(1, 7, 5)
        >>> y = DF.dropout(x, 0.5, noise_shape=(1, 1, 5), seed=0)
        >>> y[0, :3]
        tensor([[ 0.,  0.,  4.,  6.,  8.],
                [10.,  0., 14., 16., 18.],
                [20.,  0., 24., 26., 28.]])
        >>> bool((DF.dropout(x, 0.5, noise_shape=(1, 7, 1), seed=0) == 0).all(-1).any())
        True

    Reference:
        Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting",
        JMLR 2014.
    """
    fn = "dropout"
    p = _check_common(fn, input, p, training, inplace, seed, generator)
    v.check_choice(fn, "mode", mode, v.MODES)
    v.check_choice(fn, "save", save, ("seed", "bitmask"))
    shape = v.resolve_noise_shape(fn, tuple(input.shape), noise_shape)
    if save == "bitmask" and training and input.requires_grad and torch.is_grad_enabled():
        rate = _ops.read_rate(p, fn) if isinstance(p, Tensor) else p
        t, scale, _, _ = rng.affine_params("inverted" if mode == "inverted" else "unscaled", rate)
        if 0 < t < rng.LANE_RANGE:  # p = 0 and p = 1 keep nothing for backward anyway
            key = draw_key(seed, generator)
            out, _ = _ops.masked_affine_bits_eager(input, key, t, list(shape), scale, 0.0, 0.0)
            return input.copy_(out) if inplace else out
    return _dropout_impl(input, p, training, inplace, mode, shape, seed, generator)


def _spatial(spatial_dims: int):
    name = f"spatial_dropout{spatial_dims}d"
    axes = {1: "L", 2: "H, W", 3: "D, H, W"}[spatial_dims]

    def spatial_dropout(
        input: Tensor,
        p: float = 0.5,
        training: bool = True,
        inplace: bool = False,
        *,
        data_format: str = "channels_first",
        mode: str = "inverted",
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        p = _check_common(name, input, p, training, inplace, seed, generator)
        v.check_choice(name, "mode", mode, v.MODES)
        shape = v.spatial_noise_shape(name, tuple(input.shape), spatial_dims, data_format)
        return _dropout_impl(input, p, training, inplace, mode, shape, seed, generator)

    spatial_dropout.__name__ = spatial_dropout.__qualname__ = name
    spatial_dropout.__doc__ = f"""Drop whole channels of a {spatial_dims}D feature map.

    Every (sample, channel) pair is kept or dropped as a whole over the spatial axes ({axes}),
    as in Tompson et al. (2015) and Keras' ``SpatialDropout{spatial_dims}D``.

    Args:
        input: Feature map, see Shape.
        p: Probability of dropping a channel (not the keep probability), in ``[0, 1]``.
        training: Apply dropout if ``True``.
        inplace: Write the result into ``input``.
        data_format: ``"channels_first"`` (PyTorch's layout) or ``"channels_last"`` (Keras'
            layout, e.g. text as ``(samples, sequence_length, embedding_dim)``).
        mode: ``"inverted"`` or ``"vanilla"``, as in :func:`dropout`.
        seed: Fixes the mask: an int in ``[0, 2**64)``.
        generator: Draws the seed when ``seed`` is not given.

    Shape:
        - channels_first: ``(N, C, {axes})`` batched or ``(C, {axes})`` unbatched.
        - channels_last: ``(N, {axes}, C)`` batched or ``({axes}, C)`` unbatched.
        - Any other rank is a ``ValueError``. Output: same shape as input.

    Raises:
        TypeError: As :func:`dropout`.
        ValueError: As :func:`dropout`, an unknown ``data_format``, or a wrong rank.

    Example:
        >>> import torch, dropkit.functional as DF
        >>> x = torch.ones({", ".join(["2", "3"] + ["4"] * spatial_dims)})
        >>> y = DF.{name}(x, 0.5, seed=1)
        >>> bool(((y == 0) | (y == 2)).all())
        True
    """
    return spatial_dropout


spatial_dropout1d = _spatial(1)
spatial_dropout2d = _spatial(2)
spatial_dropout3d = _spatial(3)


def timestep_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    mode: str = "inverted",
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Drop whole timesteps: every feature of a (sample, timestep) pair shares one decision.

    This is the seeds' Keras ``TimestepDropout``: noise shape ``(N, T, 1, ...)``.

    Args:
        input: Sequence batch ``(N, T, *features)``.
        p: Probability of dropping a timestep (not the keep probability), in ``[0, 1]``.
        training: Apply dropout if ``True``.
        inplace: Write the result into ``input``.
        mode: ``"inverted"`` or ``"vanilla"``, as in :func:`dropout`.
        seed: Fixes the mask: an int in ``[0, 2**64)``.
        generator: Draws the seed when ``seed`` is not given.

    Shape:
        - Input: ``(N, T, *features)`` with at least one feature axis (rank >= 3).
        - Output: same shape as input.

    Raises:
        TypeError: As :func:`dropout`.
        ValueError: As :func:`dropout`, or an input of rank < 3.

    Example:
        >>> import torch, dropkit.functional as DF
        >>> y = DF.timestep_dropout(torch.ones(2, 6, 4), 0.5, seed=3)
        >>> bool(((y == 0).all(-1) | (y == 2).all(-1)).all())
        True
    """
    fn = "timestep_dropout"
    p = _check_common(fn, input, p, training, inplace, seed, generator)
    v.check_choice(fn, "mode", mode, v.MODES)
    shape = v.timestep_noise_shape(fn, tuple(input.shape))
    return _dropout_impl(input, p, training, inplace, mode, shape, seed, generator)


def gaussian_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Multiply by Gaussian noise ``N(1, p / (1 - p))`` (Srivastava et al., 2014, section 10).

    The noise has the same mean and variance as inverted dropout's ``mask / (1 - p)``. It is
    drawn from stream 1 of the Philox engine (Box-Muller in float64,
    [docs/rng.md](../rng.md)); backward regenerates it.

    Args:
        input: Tensor of any shape and a floating dtype.
        p: Equivalent drop rate, in ``[0, 1]``; the noise's variance is ``p / (1 - p)``.
        training: Apply the noise if ``True``; identity otherwise.
        inplace: Write the result into ``input``.
        seed: Fixes the noise: an int in ``[0, 2**64)``.
        generator: Draws the seed when ``seed`` is not given.

    Shape:
        - Input: ``(*)``. Output: same shape.

    Raises:
        TypeError, ValueError: As :func:`dropout`. ``p = 1`` (infinite variance) returns zeros.

    Example:
        >>> import torch, dropkit.functional as DF
        >>> y = DF.gaussian_dropout(torch.ones(100_000), 0.2, seed=0)
        >>> round(y.mean().item(), 2), round(y.var().item(), 2)
        (1.0, 0.25)
    """
    fn = "gaussian_dropout"
    p = _check_common(fn, input, p, training, inplace, seed, generator)
    if not training or input.numel() == 0:
        return input
    if isinstance(p, Tensor):
        return _run_rate(input, p, input.shape, "gaussian", inplace, seed, generator)
    if p == 0.0:
        return input
    if p == 1.0:
        return _run(input, _NO_KEY, rng.LANE_RANGE, input.shape, 0.0, 0.0, 0.0, inplace)
    out = _ops.gaussian_mul_eager(input, draw_key(seed, generator), math.sqrt(p / (1.0 - p)))
    return input.copy_(out) if inplace else out


def alpha_dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    noise_shape: Sequence[int | None] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Alpha dropout for self-normalizing networks (SELU), keeping mean 0 and variance 1.

    Dropped elements are set to SELU's negative saturation value ``-1.7581`` and the result
    is mapped by the affine ``a * y + b`` that restores zero mean and unit variance (Klambauer
    et al., 2017), as ``torch.nn.AlphaDropout`` does. The mask is the same Bernoulli field as
    :func:`dropout` with the same seed; ``noise_shape`` (as in :func:`dropout`) gives feature
    alpha dropout.

    Args:
        input: Tensor of any shape and a floating dtype.
        p: Probability of dropping an element, in ``[0, 1]``.
        training: Apply alpha dropout if ``True``; identity otherwise.
        inplace: Write the result into ``input``.
        noise_shape: Keras-style shared axes, as in :func:`dropout`.
        seed: Fixes the mask: an int in ``[0, 2**64)``.
        generator: Draws the seed when ``seed`` is not given.

    Shape:
        - Input: ``(*)``. Output: same shape.

    Raises:
        TypeError, ValueError: As :func:`dropout`. ``p = 1`` returns zeros.

    Example:
        >>> import torch, dropkit.functional as DF
        >>> y = DF.alpha_dropout(torch.randn(200_000, generator=torch.Generator().manual_seed(0)),
        ...                      0.2, seed=0)
        >>> abs(y.mean().item()) < 0.01, abs(y.std().item() - 1) < 0.01
        (True, True)
    """
    fn = "alpha_dropout"
    p = _check_common(fn, input, p, training, inplace, seed, generator)
    shape = v.resolve_noise_shape(fn, tuple(input.shape), noise_shape)
    if not training or input.numel() == 0:
        return input
    if isinstance(p, Tensor):
        return _run_rate(input, p, shape, "alpha", inplace, seed, generator)
    if p == 0.0:
        return input
    if p == 1.0:
        return _run(input, _NO_KEY, rng.LANE_RANGE, shape, 0.0, 0.0, 0.0, inplace)
    t, scale, shift, fill = rng.affine_params("alpha", p)
    return _run(input, draw_key(seed, generator), t, shape, scale, shift, fill, inplace)


DROP_PATH_MODES = ("row", "batch")


def drop_path(
    input: Tensor,
    p: float,
    training: bool = True,
    *,
    mode: str = "row",
    scale_by_keep: bool = True,
    sync_ranks: bool = False,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Stochastic depth: drop whole samples of a residual branch (DropPath).

    Use it on the residual branch, ``x + drop_path(block(x), p)``: a dropped sample skips the
    block. ``mode="row"`` draws one decision per sample (noise shape ``(N, 1, ..., 1)``, timm's
    ``DropPath`` and torchvision's ``StochasticDepth(mode="row")``); ``mode="batch"`` one decision
    for the whole batch (torchvision's ``mode="batch"``, the original paper).

    Unlike timm's ``drop_path``, ``training`` defaults to ``True`` here, as in every
    ``torch.nn.functional`` function: calling the function means applying it.

    Args:
        input: Batch ``(N, *)`` of residual-branch outputs.
        p: Probability of dropping a sample (or the batch), in ``[0, 1]``.
        training: Apply DropPath if ``True``; identity otherwise.
        mode: ``"row"`` or ``"batch"``.
        scale_by_keep: Scale kept samples by ``1 / (1 - p)`` (the default, as timm and
            torchvision do); ``False`` leaves them unscaled.
        sync_ranks: Under ``torch.distributed``, draw the same decisions on every rank (a drawn
            key is not made rank-dependent, see :mod:`dropkit.distributed`), so that a
            ``"batch"``-mode drop skips the block on all ranks at once. The ranks' generators
            must agree (the same ``torch.manual_seed``), or pass ``seed``.
        seed: Fixes the decisions: an int in ``[0, 2**64)``.
        generator: Draws the seed when ``seed`` is not given.

    Shape:
        - Input: ``(N, *)``, at least one dimension. Output: same shape.

    Raises:
        TypeError: As :func:`dropout`, or ``scale_by_keep`` or ``sync_ranks`` not a bool.
        ValueError: As :func:`dropout`, an unknown ``mode``, or a 0-dimensional input.

    Example:
        >>> import torch, dropkit.functional as DF
        >>> y = DF.drop_path(torch.ones(6, 3), 0.5, seed=0)
        >>> y[:, 0].tolist(), bool((y == y[:, :1]).all())
        ([2.0, 0.0, 2.0, 2.0, 2.0, 2.0], True)

    Reference:
        Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016.
    """
    fn = "drop_path"
    p = _check_common(fn, input, p, training, False, seed, generator)
    v.check_choice(fn, "mode", mode, DROP_PATH_MODES)
    v.check_bool(fn, "scale_by_keep", scale_by_keep)
    v.check_bool(fn, "sync_ranks", sync_ranks)
    if input.dim() == 0:
        raise ValueError(
            f"{fn}: expected an input (N, *) with a batch dimension, got a 0D tensor."
        )
    lead = input.shape[0] if mode == "row" else 1
    noise_shape = (lead,) + (1,) * (input.dim() - 1)
    if not training:
        return input
    mode = "inverted" if scale_by_keep else "unscaled"
    return _dropout_impl(input, p, training, False, mode, noise_shape, seed, generator,
                         per_rank=not sync_ranks)


from ._drop_block import drop_block1d, drop_block2d, drop_block3d  # noqa: E402  (imports this module)
from ._drop_connect import drop_connect  # noqa: E402
from ._fused_add import bias_dropout_add, drop_path_add  # noqa: E402


def gaussian_noise(
    input: Tensor,
    stddev: float,
    training: bool = True,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Add zero-mean Gaussian noise ``N(0, stddev**2)`` (Keras' ``GaussianNoise``), in training.

    The noise ``stddev * z`` uses the same standard normal field ``z`` as
    :func:`gaussian_dropout` (stream 1 of the Philox engine, Box-Muller in float64,
    [docs/rng.md](../rng.md) section 5): for the same ``seed``, ``gaussian_noise(x, s) - x`` is
    ``(gaussian_dropout(ones, p) - 1) * s / sqrt(p / (1 - p))`` up to rounding. The gradient is
    the identity, so autograd saves nothing. :func:`dropkit.numpy.gaussian_noise` is the NumPy
    twin (same bits).

    Args:
        input: Tensor of any shape and a floating dtype.
        stddev: Standard deviation of the noise, a finite number ``>= 0``.
        training: Add the noise if ``True`` (the default, as in ``torch.nn.functional``);
            return ``input`` itself otherwise.
        seed: Fixes the noise: an int in ``[0, 2**64)``.
        generator: Draws the seed when ``seed`` is not given.

    Shape:
        - Input: ``(*)``. Output: same shape, contiguous (``input`` itself when ``training``
          is ``False``, ``stddev`` is 0 or ``input`` is empty).

    Raises:
        TypeError: ``input`` is not a floating tensor, ``stddev`` is not a real number,
            ``training`` is not a bool, or ``seed`` is not an int.
        ValueError: ``stddev`` negative, infinite or NaN, or a ``seed`` outside ``[0, 2**64)``.

    Example:
        >>> import torch, dropkit.functional as DF
        >>> y = DF.gaussian_noise(torch.ones(100_000), 0.3, seed=0)
        >>> round(y.mean().item(), 2), round(y.std().item(), 2)
        (1.0, 0.3)
        >>> DF.gaussian_noise(torch.ones(2), 0.3, training=False).tolist()
        [1.0, 1.0]
    """
    fn = "gaussian_noise"
    _check_common(fn, input, 0.0, training, False, seed, generator)
    stddev = v.check_stddev(fn, stddev)
    if not training or stddev == 0.0 or input.numel() == 0:
        return input
    return _ops.gaussian_add_eager(input, draw_key(seed, generator), stddev)


__all__ += ["gaussian_noise"]


from ._attention import scaled_dot_product_attention  # noqa: E402

__all__ += ["scaled_dot_product_attention"]


def drop_head(
    input: Tensor,
    p: float,
    training: bool = True,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DropHead: drop whole attention heads, one decision per (sample, head).

    Exactly :func:`dropout` with ``noise_shape=(N, H, 1, 1)`` (the same mask engine, bits and
    scale): each kept head is scaled by ``1 / (1 - p_eff)``, which keeps the expectation. The
    paper (Zhou et al., 2020) instead rescales by ``H / (number of kept heads)`` per sample,
    which depends on the draw; dropkit uses the expectation-preserving scale of dropout. Apply
    it to the per-head attention output ``(N, H, L, E)``, before the heads are merged and
    projected ([the attention guide](../guides/attention.md)).

    Args:
        input: Per-head outputs ``(N, H, L, E)`` of a floating dtype.
        p: Probability of dropping a head (not the keep probability), in ``[0, 1]``.
        training: Apply DropHead if ``True``; return ``input`` itself otherwise.
        seed: Fixes the mask: an int in ``[0, 2**64)``.
        generator: Draws the seed when ``seed`` is not given.

    Shape:
        - Input: ``(N, H, L, E)``. Output: same shape.

    Raises:
        TypeError: As :func:`dropout`.
        ValueError: As :func:`dropout`, or an input that is not 4D.

    Example:
        >>> import torch, dropkit.functional as DF
        >>> y = DF.drop_head(torch.ones(2, 4, 3, 5), 0.5, seed=1)
        >>> bool(((y == 0).flatten(2).all(-1) | (y == 2).flatten(2).all(-1)).all())
        True

    Reference:
        Zhou et al., "Scheduled DropHead: A Regularization Method for Transformer Models",
        Findings of EMNLP 2020.
    """
    fn = "drop_head"
    p = _check_common(fn, input, p, training, False, seed, generator)
    if input.dim() != 4:
        raise ValueError(f"{fn}: expected per-head outputs (N, H, L, E), a 4D input, got a "
                         f"{input.dim()}D tensor of shape {tuple(input.shape)}.")
    noise_shape = (input.shape[0], input.shape[1], 1, 1)
    return _dropout_impl(input, p, training, False, "inverted", noise_shape, seed, generator)


__all__ += ["drop_head"]
