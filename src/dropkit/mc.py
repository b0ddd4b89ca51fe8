"""Monte Carlo dropout: dropout at inference, only on the dropout layers.

:func:`mc_dropout` is a context manager that puts a model in eval mode except for its
dropout-family modules (see :func:`is_dropout_module`), which are switched to training mode so
that they keep drawing masks (also through ``model.eval()`` calls inside the block); BatchNorm
and every other module stay in eval (running statistics used and left untouched). On exit every
module's ``training`` flag is restored exactly, also when the body raises.

:func:`mc_predict` runs ``n_samples`` stochastic forward passes under :func:`mc_dropout` and
``torch.no_grad()`` and summarizes them: the predictive mean and variance and, for classifiers,
the predictive entropy and the mutual information (BALD), in nats (natural log).

Example:
    >>> import torch, dropkit
    >>> model = torch.nn.Sequential(
    ...     torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), dropkit.nn.Dropout(0.5),
    ...     torch.nn.Linear(8, 3))
    >>> x = torch.randn(5, 4)
    >>> pred = dropkit.mc.mc_predict(model, x, n_samples=20, seed=0)
    >>> pred.mean.shape, pred.variance.shape, pred.entropy.shape
    (torch.Size([5, 3]), torch.Size([5, 3]), torch.Size([5]))
    >>> torch.allclose(pred.mean.sum(1), torch.ones(5))
    True
    >>> bool((pred.mutual_information >= 0).all())
    True
    >>> model.training, model[2].training  # modes restored
    (True, True)
    >>> with dropkit.mc.mc_dropout(model):
    ...     [m.training for m in model]
    [False, False, True, False]
"""

from __future__ import annotations

import numbers
import types
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules.dropout import _DropoutNd

from . import _validation as v
from . import functional as F
from .nn import RateModule

__all__ = ["MCPrediction", "is_dropout_module", "mc_dropout", "mc_predict"]

TASKS = ("classification", "regression")
_MASK64 = (1 << 64) - 1


def is_dropout_module(module: nn.Module) -> bool:
    """Whether ``module`` belongs to the dropout family that MC dropout switches on.

    True for every :class:`dropkit.nn.RateModule` (dropkit's dropout, spatial, timestep, Gaussian
    and alpha dropout, DropBlock, DropPath and any subclass) and for torch's own ``nn.Dropout``,
    ``nn.Dropout1d/2d/3d``, ``nn.AlphaDropout`` and ``nn.FeatureAlphaDropout``. Dropout called
    functionally inside another module's ``forward`` (``F.dropout(x, training=self.training)``)
    follows that module's flag, which stays in eval.

    Args:
        module: Any ``torch.nn.Module``.

    Example:
        >>> import torch, dropkit
        >>> is_dropout_module(dropkit.nn.DropPath(0.1)), is_dropout_module(torch.nn.Dropout2d())
        (True, True)
        >>> is_dropout_module(torch.nn.BatchNorm1d(3))
        False
    """
    return isinstance(module, (RateModule, _DropoutNd))


def _check_model(fn: str, model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{fn}: `model` must be a torch.nn.Module, got {type(model).__name__} {model!r}."
        )
    return model


# Dropout-family modules inside an open mc_dropout block -> number of open blocks.
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def _keep_sampling(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook of :func:`mc_dropout`: a dropout-family module samples in every call of
    the block, even after a direct ``module.training = False``."""
    if module in _ACTIVE:
        module.training = True


def train(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()``/``eval()`` of a dropout-family module inside :func:`mc_dropout`: it stays in
    training mode (so ``training`` is also what a compiled graph's guards see). Outside a block
    (a copy made inside one) it is the class's own ``train``; named ``train`` so that a model
    pickled inside a block loads with the class's method."""
    if self in _ACTIVE:
        self.training = True
        return self
    return type(self).train(self, mode)


@contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Switch on only the dropout-family modules of ``model`` for the duration of the block.

    On entry the ``training`` flag of every module of ``model`` (``model.modules()``, the model
    included) is recorded; then each module's flag is set directly (``train()``/``eval()``
    overrides are not called): ``True`` for :func:`is_dropout_module` modules, ``False`` for
    the rest. Inside the block the dropout-family modules keep sampling whatever happens: a
    ``model.eval()`` or ``train(False)`` leaves them in training mode (their ``train`` is
    overridden for the block), and a direct ``module.training = False`` is undone by a forward
    pre-hook before the module's next call (baal's ``MCDropoutModule`` keeps sampling through
    ``eval()`` too). Other modules follow such calls as usual (``model.train()`` inside the
    block does switch BatchNorm to batch statistics). On exit, normal or by an exception, the
    override and the hooks are removed and each recorded module gets its own flag back, so
    models that were in mixed modes come back unchanged. Nesting works (the inner block
    restores the MC state, the outer one the original). Yields ``model``.

    Args:
        model: The network whose dropout-family modules are switched on.

    Raises:
        TypeError: If ``model`` is not a ``torch.nn.Module``.

    Example:
        >>> import torch, dropkit
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4),
        ...                             dropkit.nn.Dropout(0.5)).eval()
        >>> with dropkit.mc.mc_dropout(model):
        ...     before = [m.training for m in model.modules()]
        ...     after_eval = [m.training for m in model.eval().modules()]
        ...     before, after_eval
        ([False, False, False, True], [False, False, False, True])
        >>> [m.training for m in model.modules()]  # restored
        [False, False, False, False]
    """
    _check_model("mc_dropout", model)
    modules = list(model.modules())
    saved = [m.training for m in modules]
    entered, hooks = [], []
    try:
        for m in modules:
            m.training = is_dropout_module(m)
            if not m.training:
                continue
            entered.append(m)
            _ACTIVE[m] = _ACTIVE.get(m, 0) + 1
            if _ACTIVE[m] == 1:  # the outermost block installs the override and the hook
                m.train = types.MethodType(train, m)
                hooks.append(m.register_forward_pre_hook(_keep_sampling))
        yield model
    finally:
        for hook in hooks:
            hook.remove()
        for m in entered:
            _ACTIVE[m] -= 1
            if not _ACTIVE[m]:
                del _ACTIVE[m]
                del m.train
        for m, flag in zip(modules, saved, strict=True):
            m.training = flag


class MCPrediction(NamedTuple):
    """The summary of ``n_samples`` stochastic forward passes (``S`` below).

    Attributes:
        mean: Mean over the samples of the outputs (regression) or of the softmax probabilities
            (classification); the shape of one model output.
        variance: Per-element variance over the samples (population variance, divisor ``S``;
            0 for ``S = 1``), same shape as ``mean``.
        entropy: Classification only: predictive entropy ``H[mean]`` in nats, the class axis
            reduced (``None`` for regression).
        expected_entropy: Classification only: ``mean_s H[p_s]`` in nats, the aleatoric part.
        mutual_information: Classification only: BALD, ``entropy - expected_entropy`` in nats,
            clamped at 0 against rounding (it is >= 0 mathematically).
        samples: The ``S`` outputs (softmax probabilities for classification) stacked on a new
            leading axis, when ``return_samples=True``; else ``None``.

    Example:
        >>> import torch, dropkit
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), dropkit.nn.Dropout(0.5))
        >>> pred = dropkit.mc.mc_predict(model, torch.randn(2, 4), n_samples=5, seed=0,
        ...                              task="regression")
        >>> pred.mean.shape, pred.entropy is None, pred.samples is None
        (torch.Size([2, 3]), True, True)
    """

    mean: Tensor
    variance: Tensor
    entropy: Tensor | None = None
    expected_entropy: Tensor | None = None
    mutual_information: Tensor | None = None
    samples: Tensor | None = None


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _derive_seed(base: int, *words: int) -> int:
    """A 64-bit seed for one pass, mixed from the base seed and the pass' coordinates."""
    h = _splitmix64(base)
    for w in words:
        h = _splitmix64(h ^ w)
    return h


def _check_positive_int(fn: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{fn}: `{name}` must be a positive int, got {type(value).__name__} {value!r}."
        )
    if value < 1:
        raise ValueError(f"{fn}: `{name}` must be a positive int, got {value!r}.")
    return int(value)


def _entropy(p: Tensor, dim: int) -> Tensor:
    """``-sum p log p`` over ``dim`` with ``0 log 0 = 0``."""
    return -torch.special.xlogy(p, p).sum(dim)


def _cuda_devices() -> list[int]:
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    return list(range(torch.cuda.device_count()))


def mc_predict(
    model: nn.Module,
    x: Tensor,
    n_samples: int,
    *,
    batch_size: int | None = None,
    task: str = "classification",
    class_dim: int = -1,
    consistent: bool = False,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_samples: bool = False,
) -> MCPrediction:
    """Predict with Monte Carlo dropout: ``n_samples`` stochastic passes, summarized.

    The passes run under :func:`mc_dropout` (only dropout-family modules active) and
    ``torch.no_grad()``; ``x`` is split along dim 0 into chunks of ``batch_size`` (``None``: one
    chunk). The model must return one tensor whose dim 0 matches its input's.

    Randomness: a base seed is ``seed``, or is drawn from ``generator``, or else from torch's
    default generator (one draw). Each pass runs inside ``torch.random.fork_rng`` with torch's
    global RNG seeded from a 64-bit seed derived from the base seed and the pass' coordinates, so
    the caller's global RNG state is left as it was (apart from that one draw when no ``seed`` or
    ``generator`` is given), and both dropkit modules (which draw their mask key from the default
    generator) and torch's own dropout are reproducible: with a fixed ``seed`` the whole result is
    reproducible for fixed ``batch_size`` and ``consistent``.

    - ``consistent=False``: pass ``s`` of chunk ``c`` is seeded from ``(seed, s, c)``. Inputs get
      independent masks, and the result depends on ``batch_size`` (the same distribution, other
      draws); ``n_samples * ceil(N / batch_size)`` forward calls.
    - ``consistent=True`` (consistent MC dropout, the same masks for every input): each input is
      run as its own batch of one, and every input's pass ``s`` is seeded from ``(seed, s)``
      alone, so every input sees exactly the same masks in pass ``s``: identical inputs give
      identical samples, and the result does not depend on ``batch_size`` (which is only
      validated). Cost: ``n_samples * N`` forward calls of batch one.

    Args:
        model: The network; its modules' modes are restored afterwards.
        x: The inputs, batched along dim 0.
        n_samples: Number of stochastic passes, a positive int.
        batch_size: Chunk size along dim 0, a positive int, or ``None`` for all at once.
        task: ``"classification"`` (the outputs are logits; softmax over ``class_dim``) or
            ``"regression"`` (the outputs are summarized as they are).
        class_dim: The class axis of the outputs (classification).
        consistent: Use the same masks for every input (see above).
        seed: Base seed, an int in ``[0, 2**64)``.
        generator: Draws the base seed when ``seed`` is not given.
        return_samples: Also return the stacked samples (``S`` times the output's memory).

    Returns:
        An :class:`MCPrediction`. Entropies are in nats; statistics have the output's dtype.

    Raises:
        TypeError: For a ``model`` that is not an ``nn.Module``, an ``x`` that is not a tensor,
            ``n_samples``/``batch_size`` that are not ints,
            a non-bool ``consistent``/``return_samples``, a bad ``seed`` type, or a
            ``generator`` that is not a ``torch.Generator``.
        ValueError: For ``n_samples``/``batch_size`` below 1, an unknown
            ``task``, a 0-dim or empty ``x``, both ``seed`` and ``generator``, an out-of-range
            ``seed``, or a ``class_dim`` outside the output's dimensions.

    Example:
        >>> import torch, dropkit
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), dropkit.nn.Dropout(0.5))
        >>> x = torch.randn(6, 4)
        >>> pred = dropkit.mc.mc_predict(model, x, n_samples=8, batch_size=4, seed=0)
        >>> pred.mean.shape, pred.mutual_information.shape
        (torch.Size([6, 3]), torch.Size([6]))
        >>> again = dropkit.mc.mc_predict(model, x, n_samples=8, batch_size=4, seed=0)
        >>> torch.equal(pred.mean, again.mean)
        True
    """
    fn = "mc_predict"
    _check_model(fn, model)
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: `x` must be a Tensor, got {type(x).__name__}.")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(
            f"{fn}: `x` must have a non-empty batch axis (dim 0), got shape {tuple(x.shape)}."
        )
    n_samples = _check_positive_int(fn, "n_samples", n_samples)
    if batch_size is not None:
        batch_size = _check_positive_int(fn, "batch_size", batch_size)
    task = v.check_choice(fn, "task", task, TASKS)
    consistent = v.check_bool(fn, "consistent", consistent)
    return_samples = v.check_bool(fn, "return_samples", return_samples)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{fn}: `generator` must be a torch.Generator, got {type(generator).__name__}."
        )
    v.check_seed(fn, seed, generator)

    if seed is None:
        lo, hi = F.draw_key(None, generator).tolist()
        seed = int(lo) | (int(hi) << 32)

    n = x.shape[0]
    if consistent:
        bounds = [(i, i + 1) for i in range(n)]
    else:
        step = n if batch_size is None else batch_size
        bounds = [(i, min(i + step, n)) for i in range(0, n, step)]

    samples = []
    with mc_dropout(model), torch.no_grad():
        for s in range(n_samples):
            sample_seed = _derive_seed(seed, s)
            outs = []
            for c, (a, b) in enumerate(bounds):
                pass_seed = sample_seed if consistent else _derive_seed(seed, s, c)
                with torch.random.fork_rng(devices=_cuda_devices()):
                    torch.manual_seed(pass_seed)
                    out = model(x[a:b])
                if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != b - a:
                    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(
                        f"{fn}: the model must return a Tensor with dim 0 of size {b - a} "
                        f"(one row per input), got {got}."
                    )
                outs.append(out)
            samples.append(outs[0] if len(outs) == 1 else torch.cat(outs))
    stacked = torch.stack(samples)  # (S, N, ...)

    if task == "regression":
        mean = stacked.mean(0)
        variance = stacked.var(0, correction=0)
        return MCPrediction(mean, variance, samples=stacked if return_samples else None)

    out_dim = stacked.dim() - 1
    if not -out_dim <= class_dim < out_dim or class_dim % out_dim == 0:
        raise ValueError(
            f"{fn}: `class_dim` must index a non-batch axis of the model output (shape "
            f"{tuple(stacked.shape[1:])}), got {class_dim}."
        )
    cdim = class_dim % out_dim + 1  # in the stacked tensor
    probs = torch.softmax(stacked, dim=cdim)
    mean = probs.mean(0)
    variance = probs.var(0, correction=0)
    entropy = _entropy(mean, cdim - 1)
    expected_entropy = _entropy(probs, cdim).mean(0)
    mutual_information = (entropy - expected_entropy).clamp_min(0.0)
    return MCPrediction(mean, variance, entropy, expected_entropy, mutual_information,
                        probs if return_samples else None)

