"""dropkit under ``torch.distributed``: rank-dependent streams, and masks that do not depend on
how a tensor is split.

Two rules ([docs/rng.md](../rng.md), section 9), both consequences of masks being a pure function of
``(seed, global index)``:

* **Ranks draw different masks by default.** When ``torch.distributed`` is initialized, a seed
  *drawn* from a generator (no ``seed=`` given) is turned into a rank-dependent key with
  :func:`dropkit.rng.rank_key`, so data-parallel replicas seeded alike (the usual
  ``torch.manual_seed(0)`` on every rank) still drop different units, and rerunning the job
  gives the same masks. An explicit ``seed=`` is never changed. :func:`rank_streams` turns the
  rule off (every rank then draws what its generator gives); ``DropPath(sync_ranks=True)`` /
  ``drop_path(..., sync_ranks=True)`` turns it off for one module, so that its batch-mode
  decision agrees across ranks when the ranks' generators agree.
* **Shard-invariant masks.** The functions here take one shard of a bigger tensor (a
  ``DTensor``, or a local tensor with a :class:`Shard` that says where it sits) and give it
  exactly its slice of the mask the unsplit tensor would get with the same seed, for a split
  along any axes: the decisions are read at global field indices (DropBlock also draws the
  seeds of the neighbouring shards whose blocks reach into this one). Every rank must use the
  same seed: pass ``seed=``, keep the generators in step, or use :func:`broadcast_seed`.

Example:
    >>> import torch
    >>> from dropkit import distributed as dd, functional as DF
    >>> x = torch.randn(4, 6)
    >>> full = DF.dropout(x, 0.5, seed=3)
    >>> shards = [dd.split(x, dim=1, rank=r, world_size=2) for r in range(2)]
    >>> parts = [dd.dropout(local, 0.5, shard=shard, seed=3) for local, shard in shards]
    >>> torch.equal(torch.cat(parts, dim=1), full)
    True
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from . import _ops
from . import _validation as v

__all__ = [
    "Shard",
    "broadcast_seed",
    "drop_block1d",
    "drop_block2d",
    "drop_block3d",
    "dropout",
    "rank_streams",
    "spatial_dropout1d",
    "spatial_dropout2d",
    "spatial_dropout3d",
    "split",
    "stream_rank",
]

_rank_streams = True


def stream_rank() -> int | None:
    """The rank that drawn keys are mixed with, or ``None`` (not distributed, or turned off)."""
    if not _rank_streams or not dist.is_available() or not dist.is_initialized():
        return None
    return dist.get_rank()


@contextlib.contextmanager
def rank_streams(enabled: bool) -> Iterator[None]:
    """Turn rank-dependent streams on or off inside a ``with`` block (they are on by default).

    >>> from dropkit import distributed as dd
    >>> with dd.rank_streams(False):
    ...     dd.stream_rank() is None
    True
    """
    global _rank_streams
    v.check_bool("rank_streams", "enabled", enabled)
    previous, _rank_streams = _rank_streams, enabled
    try:
        yield
    finally:
        _rank_streams = previous


def broadcast_seed(group: dist.ProcessGroup | None = None, src: int = 0) -> int:
    """A 64-bit seed drawn from torch's default generator on rank ``src`` and broadcast to every
    rank of ``group``, for shard-invariant calls whose ranks' generators are not in step."""
    seed = torch.randint(0, 2**32, (2,), dtype=torch.int64)
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(seed, src=src, group=group)
    lo, hi = seed.tolist()
    return lo | hi << 32


class Shard(NamedTuple):
    """Where a local tensor sits in a global one: the global shape and the local block's start
    on every axis (the local block's shape is the local tensor's shape).

    >>> Shard((4, 6), (0, 3))
    Shard(global_shape=(4, 6), offset=(0, 3))
    """

    global_shape: tuple[int, ...]
    offset: tuple[int, ...]


def split(input: Tensor, dim: int, rank: int, world_size: int) -> tuple[Tensor, Shard]:
    """Rank ``rank``'s part of ``input`` split along ``dim`` as ``torch.tensor_split`` does
    (sizes differ by at most one), and its :class:`Shard`.

    Raises:
        TypeError: ``input`` is not a tensor, or ``dim``, ``rank`` or ``world_size`` is not an
            int.
        ValueError: ``dim`` is not an axis of ``input``, ``world_size < 1``, or ``rank``
            outside ``[0, world_size)``.

    >>> import torch
    >>> from dropkit import distributed as dd
    >>> local, shard = dd.split(torch.zeros(5, 3), dim=0, rank=1, world_size=2)
    >>> tuple(local.shape), shard.offset
    ((2, 3), (3, 0))
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"split: `input` must be a torch.Tensor, got {type(input).__name__}.")
    for arg, value in (("dim", dim), ("world_size", world_size), ("rank", rank)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"split: `{arg}` must be an int, got {type(value).__name__} "
                            f"{value!r}.")
    if not -input.dim() <= dim < input.dim():
        raise ValueError(f"split: `dim` must be an axis of the {input.dim()}D input, in "
                         f"[{-input.dim()}, {input.dim()}), got {dim}.")
    if world_size < 1:
        raise ValueError(f"split: `world_size` must be >= 1, got {world_size}.")
    if not 0 <= rank < world_size:
        raise ValueError(
            f"split: `rank` must be in [0, world_size) = [0, {world_size}), got {rank}."
        )
    parts = torch.tensor_split(input, world_size, dim=dim)
    dim = dim % input.dim()
    start = sum(part.shape[dim] for part in parts[:rank])
    offset = tuple(start if axis == dim else 0 for axis in range(input.dim()))
    return parts[rank], Shard(tuple(input.shape), offset)


def _is_dtensor(x: object) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - builds without distributed support
        return False
    return isinstance(x, DTensor)


def _resolve(fn: str, input: object, shard: object) -> tuple[Tensor, Shard, Callable]:
    """The local tensor, its shard, and how to wrap the local result (DTensor or as is)."""
    if _is_dtensor(input):
        from torch.distributed.tensor import DTensor
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        if shard is not None:
            raise ValueError(f"{fn}: a DTensor carries its own placement; pass `shard=None`.")
        _, offset = compute_local_shape_and_global_offset(
            input.shape, input.device_mesh, input.placements
        )
        mesh, placements, shape, stride = (input.device_mesh, input.placements, input.shape,
                                           input.stride())

        def wrap(local: Tensor) -> Tensor:
            return DTensor.from_local(local, mesh, placements, run_check=False, shape=shape,
                                      stride=stride)

        return input.to_local(), Shard(tuple(shape), tuple(offset)), wrap
    if not isinstance(input, Tensor):
        raise TypeError(f"{fn}: `input` must be a torch.Tensor, got {type(input).__name__}.")
    if not isinstance(shard, Shard):
        raise TypeError(
            f"{fn}: `shard` must be a dropkit.distributed.Shard for a local tensor (or pass a "
            f"DTensor), got {type(shard).__name__}."
        )
    glob, offset = tuple(shard.global_shape), tuple(shard.offset)
    if len(glob) != input.dim() or len(offset) != input.dim():
        raise ValueError(
            f"{fn}: `shard` must have one global size and one offset per axis of the "
            f"{input.dim()}D input, got {shard}."
        )
    for axis, (size, start, n) in enumerate(zip(glob, offset, input.shape, strict=True)):
        if not (isinstance(size, int) and isinstance(start, int) and 0 <= start
                and start + n <= size):
            raise ValueError(
                f"{fn}: `shard` places axis {axis} (size {n}) at offset {start!r} of a global "
                f"axis of size {size!r}; expected ints with 0 <= offset and offset + {n} <= "
                f"global size."
            )
    return input, Shard(glob, offset), lambda local: local


def _check(fn, input, p, training, shard, seed, generator):
    from . import functional as F

    local, shard, wrap = _resolve(fn, input, shard)
    p = F._check_common(fn, local, p, training, False, seed, generator)
    return local, shard, wrap, (_ops.read_rate(p, fn) if isinstance(p, Tensor) else p)


def _masked(local, p, training, mode, field, shard, seed, generator) -> Tensor:
    """Dropout's shared path with the shard's offset: no rank mixing, the global field."""
    from . import functional as F

    return F._dropout_impl(local, p, training, False, mode, field, seed, generator,
                           per_rank=False, offset=shard.offset)


def dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    *,
    shard: Shard | None = None,
    mode: str = "inverted",
    noise_shape: Sequence[int | None] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """:func:`dropkit.functional.dropout` of one shard: its slice of the global tensor's mask.

    Args:
        input: A ``DTensor`` (any placements), or the local tensor of this rank with ``shard``.
        p: Probability of dropping an element, in ``[0, 1]``.
        training: Apply dropout if ``True``.
        shard: Where ``input`` sits in the global tensor (``None`` for a DTensor).
        mode: ``"inverted"`` or ``"vanilla"``.
        noise_shape: Keras ``noise_shape`` of the *global* tensor.
        seed: The seed every rank uses (recommended); otherwise drawn from ``generator``, which
            must then be in the same state on every rank (no rank mixing here).
        generator: Draws the seed when ``seed`` is not given.

    Shape:
        - Input: the local ``(*)``. Output: same shape (a DTensor for a DTensor input).

    Raises:
        TypeError: As :func:`dropkit.functional.dropout`, or a local tensor without a Shard.
        ValueError: As :func:`dropkit.functional.dropout`, or a ``shard`` that does not fit.

    Example:
        >>> import torch
        >>> from dropkit import distributed as dd, functional as DF
        >>> x = torch.randn(6, 4)
        >>> top = dd.dropout(x[:2], 0.5, shard=dd.Shard((6, 4), (0, 0)), seed=1)
        >>> torch.equal(top, DF.dropout(x, 0.5, seed=1)[:2])
        True
    """
    fn = "distributed.dropout"
    local, shard, wrap, p = _check(fn, input, p, training, shard, seed, generator)
    v.check_choice(fn, "mode", mode, v.MODES)
    field = v.resolve_noise_shape(fn, shard.global_shape, noise_shape)
    return wrap(_masked(local, p, training, mode, field, shard, seed, generator))


def _spatial(spatial_dims: int):
    name = f"spatial_dropout{spatial_dims}d"

    def spatial_dropout(
        input: Tensor,
        p: float = 0.5,
        training: bool = True,
        *,
        shard: Shard | None = None,
        data_format: str = "channels_first",
        mode: str = "inverted",
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        fn = f"distributed.{name}"
        local, shard, wrap, p = _check(fn, input, p, training, shard, seed, generator)
        v.check_choice(fn, "mode", mode, v.MODES)
        field = v.spatial_noise_shape(fn, shard.global_shape, spatial_dims, data_format)
        return wrap(_masked(local, p, training, mode, field, shard, seed, generator))

    spatial_dropout.__name__ = spatial_dropout.__qualname__ = name
    spatial_dropout.__doc__ = f"""
    :func:`dropkit.functional.{name}` of one shard: its slice of the global tensor's mask.

    Arguments, shapes and errors as :func:`dropout` and :func:`dropkit.functional.{name}`; the
    rank and layout rules apply to the global shape.

    Example:
        >>> import torch
        >>> from dropkit import distributed as dd, functional as DF
        >>> x = torch.randn({", ".join(["2", "4"] + ["6"] * spatial_dims)})
        >>> shards = [dd.split(x, dim=-1, rank=r, world_size=3) for r in range(3)]
        >>> parts = [dd.{name}(local, 0.5, shard=shard, seed=2) for local, shard in shards]
        >>> torch.equal(torch.cat(parts, dim=-1), DF.{name}(x, 0.5, seed=2))
        True
    """
    return spatial_dropout


spatial_dropout1d = _spatial(1)
spatial_dropout2d = _spatial(2)
spatial_dropout3d = _spatial(3)

_SHARD_SCALES = ("expected", "none")


def _block(spatial_dims: int):
    name = f"drop_block{spatial_dims}d"

    def drop_block(
        input: Tensor,
        p: float = 0.1,
        block_size: int | Sequence[int] = 7,
        training: bool = True,
        *,
        shard: Shard | None = None,
        per_channel: bool = True,
        scale: str = "expected",
        data_format: str = "channels_first",
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        from . import _drop_block
        from . import _drop_block_numpy as spec
        from . import functional as F

        fn = f"distributed.{name}"
        local, shard, wrap, p = _check(fn, input, p, training, shard, seed, generator)
        block = spec.check_block_size(fn, block_size, spatial_dims)
        spec.check_options(fn, per_channel, scale, data_format)
        if scale not in _SHARD_SCALES:
            raise ValueError(
                f"{fn}: `scale` must be one of {_SHARD_SCALES} for a shard (\"batch\" counts "
                f"the kept units of every shard), got {scale!r}."
            )
        spec.check_rank(fn, shard.global_shape, spatial_dims, data_format)
        if not training or p == 0.0 or local.numel() == 0:
            return input
        key = (F.draw_key(seed, generator, per_rank=False) if p < 1.0
               else torch.zeros(2, dtype=torch.int64))
        out = _drop_block.drop_block_at_eager(
            local, key, torch.tensor(p, dtype=torch.float64), list(block), per_channel, scale,
            data_format == "channels_last", list(shard.global_shape), list(shard.offset),
        )
        return wrap(out)

    drop_block.__name__ = drop_block.__qualname__ = name
    drop_block.__doc__ = f"""
    :func:`dropkit.functional.{name}` of one shard: its slice of the global tensor's mask.

    The seed rate is calibrated for the global map, and the seeds of neighbouring shards whose
    blocks reach into this one are drawn too, so blocks cross shard borders exactly as in the
    unsplit tensor. ``scale`` is ``"expected"`` (the default here) or ``"none"``: ``"batch"``
    would need the kept count of every shard. Other arguments, shapes and errors as
    :func:`dropout` and :func:`dropkit.functional.{name}`.

    Example:
        >>> import torch
        >>> from dropkit import distributed as dd, functional as DF
        >>> x = torch.randn({", ".join(["2", "3"] + ["9"] * spatial_dims)})
        >>> shards = [dd.split(x, dim=2, rank=r, world_size=2) for r in range(2)]
        >>> parts = [dd.{name}(local, 0.2, block_size=3, shard=shard, seed=4)
        ...          for local, shard in shards]
        >>> full = DF.{name}(x, 0.2, block_size=3, scale="expected", seed=4)
        >>> torch.equal(torch.cat(parts, dim=2), full)
        True
    """
    return drop_block


drop_block1d = _block(1)
drop_block2d = _block(2)
drop_block3d = _block(3)
