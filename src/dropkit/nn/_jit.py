"""What lets every dropkit module run under ``torch.fx``, ``torch.jit.script`` and
``torch.jit.trace``, and name itself in its errors.

:class:`Forward` gives a module ``forward(input, seed=None, generator=None)``:

* in eager mode (and under ``torch.compile`` / ``torch.export``) it calls the module's
  ``_forward``, the Python path through :mod:`dropkit.functional`; a ``TypeError`` or
  ``ValueError`` raised there as ``"dropout: ..."`` is re-raised as ``"Dropout: ..."`` (the
  module's class name), at no cost when nothing is raised;
* when ``torch.fx`` traces it (the input is an ``fx.Proxy``), it records one ``call_module``
  node, as torch's own dropout modules give, whatever the tracer's ``is_leaf_module`` says; the
  ``GraphModule`` then calls the module itself, so it follows ``train()`` / ``eval()``;
* under ``torch.jit.script`` and ``torch.jit.trace`` it calls ``_jit_forward(input, shape,
  seed, generator)``, TorchScript code that draws the key with ``torch.randint`` (as
  :func:`dropkit.functional.draw_key` does, from the same generator) and applies the mask with
  the registered ops ``torch.ops.dropkit.*``, so the masks are the eager ones for the same
  generator state. ``shape`` is ``input.shape``, read as constants while tracing (the custom
  ops take the noise shape as a list of ints).

Under TorchScript the seed is an int64, so only seeds in ``[0, 2**63)`` can be passed, and a
drawn key is not made rank-dependent under ``torch.distributed``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def static_shape(x: Tensor) -> list[int]:
    """``x.shape`` as a list of ints; while tracing, read as constants of the trace."""
    if torch.jit.is_scripting():
        return x.shape
    return _traced_shape(x)


@torch.jit.unused
def _traced_shape(x: Tensor) -> list[int]:
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        return [int(n) for n in x.shape]
    finally:
        torch._C._set_tracing_state(state)


def is_empty(x: Tensor) -> bool:
    """``x.numel() == 0``, read as a constant while tracing."""
    for n in static_shape(x):
        if n == 0:
            return True
    return False


def check_spatial_rank(name: str, shape: list[int], dims: int) -> None:
    """The rank rule of the spatial variants (``dims`` spatial axes, batched or unbatched) in
    TorchScript, where :mod:`dropkit._validation` cannot run; ``name`` is the module's."""
    rank = len(shape)
    if rank != dims + 2 and rank != dims + 1:
        raise ValueError(name + str(dims) + "d: expected a " + str(dims + 2)
                         + "D input or an unbatched " + str(dims + 1) + "D input, got a "
                         + str(rank) + "D tensor.")


def threshold(p: float) -> int:
    """:func:`dropkit.rng.threshold` (TorchScript reads no global constants: 65536 is
    ``rng.LANE_RANGE``)."""
    return math.floor(p * 65536.0 + 0.5)


def key(seed: int | None, generator: torch.Generator | None, draw: bool) -> Tensor:
    """The Philox key (int64, shape (2,)): from ``seed``, drawn from ``generator`` (torch's
    default CPU generator when ``None``) as :func:`dropkit.functional.draw_key` draws it, or
    zeros when ``draw`` is ``False`` (nothing random is needed)."""
    if seed is not None:
        if seed < 0:
            raise ValueError("dropkit: `seed` must be in [0, 2**63) under TorchScript, got "
                             + str(seed) + ".")
        return torch.stack([torch.full((), seed & 0xFFFFFFFF, dtype=torch.int64),
                            torch.full((), seed >> 32, dtype=torch.int64)])
    if not draw:
        return torch.zeros(2, dtype=torch.int64)
    return torch.randint(0, 4294967296, [2], dtype=torch.int64, generator=generator)


def rate_dropout(
    input: Tensor,
    p: float,
    noise_shape: list[int],
    kind: str,
    inplace: bool,
    seed: int | None,
    generator: torch.Generator | None,
) -> Tensor:
    """The Bernoulli variants in training (``kind``: ``"inverted"``, ``"unscaled"`` or
    ``"alpha"``) and Gaussian dropout (``"gaussian"``), with the short cuts of
    :mod:`dropkit.functional`: ``p = 0`` returns ``input``, and a key is drawn iff
    ``0 < p < 1``."""
    if is_empty(input) or p == 0.0:
        return input
    k = key(seed, generator, p < 1.0).to(input.device)
    rate = torch.full((), p, dtype=torch.float64)
    out = torch.ops.dropkit.rate_op(input, k, rate, noise_shape, kind)
    return input.copy_(out) if inplace else out


def vanilla_eval(input: Tensor, p: float, inplace: bool) -> Tensor:
    """Vanilla dropout at eval time: ``input * (1 - p_eff)``."""
    t = threshold(p)
    if p == 0.0 or is_empty(input):
        return input
    scale = 0.0 if t >= 65536 else 1.0 - t / 65536.0
    return input.mul_(scale) if inplace else input * scale


@torch.jit.unused
def fx_call(module: torch.nn.Module, args: tuple, kwargs: dict) -> object:
    """The ``fx.Proxy`` of one ``call_module`` node calling ``module``, when ``torch.fx`` is
    tracing (a ``Proxy`` among ``args`` / ``kwargs``); ``None`` otherwise. ``None``-valued
    keyword arguments are left out of the node."""
    proxies = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.fx.Proxy)]
    if not proxies:
        return None
    tracer = proxies[0].tracer
    kwargs = {name: value for name, value in kwargs.items() if value is not None}
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, kwargs)


def named(err: Exception, module: torch.nn.Module) -> Exception:
    """``err`` with the function name that starts its message (``"dropout: ..."``) replaced by
    the module's class name (``"Dropout: ..."``)."""
    head, sep, rest = str(err).partition(": ")
    if sep and head.isidentifier() and len(err.args) == 1:
        err.args = (f"{type(module).__name__}: {rest}",)
    return err


class Forward:
    """``forward(input, seed=None, generator=None)``: eager, ``torch.fx`` and TorchScript paths
    (see the module's docs). A subclass defines ``_forward`` (eager) and ``_jit_forward``."""

    __jit_unused_properties__ = ("p",)  # a Python property (validated writes), not TorchScript

    def forward(
        self, input: Tensor, seed: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            return self._jit_forward(input, static_shape(input), seed, generator)
        return self._python_forward(input, seed, generator)

    @torch.jit.unused
    def _python_forward(self, input, seed=None, generator=None):
        if isinstance(input, torch.fx.Proxy):
            return fx_call(self, (input,), {"seed": seed, "generator": generator})
        try:
            return self._forward(input, seed, generator)
        except (TypeError, ValueError) as err:
            raise named(err, self)  # noqa: B904  (the same exception, renamed)
