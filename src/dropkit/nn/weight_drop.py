"""DropConnect on named parameters of any module (weight dropout, the AWD-LSTM recipe).

:class:`WeightDrop` wraps a module and, in training, replaces some of its parameters by a
dropped copy for the duration of one call. It avoids the known bugs of earlier wrappers:

* the wrapped module is a registered submodule, so its parameters reach ``parameters()``, the
  optimizer and ``state_dict()`` (torchnlp's wrapper had none);
* ``train()``/``eval()`` reach the wrapped module; in eval the module runs unchanged;
* the real ``Parameter`` objects are never replaced, written to or deleted: forward calls the
  module through :func:`torch.func.functional_call` with the dropped tensors, so nothing
  depends on ``nn.RNNBase`` internals (``_flat_weights``), which broke AWD-LSTM's wrapper on
  PyTorch >= 1.4, and no warning is filtered away;
* the mask comes from dropkit's Philox engine, so autograd keeps a 16-byte key, not a mask.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.stateless import _reparametrize_module

from .. import _validation as v
from .. import functional as F
from . import _jit
from ._rate import RateModule

__all__ = ["WeightDrop"]


class WeightDrop(RateModule):
    """Drop each element of the named parameters of ``module`` with probability ``p``.

    In training, every call draws one Bernoulli keep field over the named parameters (in the
    order of ``names``, flattened and concatenated), scales kept weights by ``1 / (1 - p)`` and
    runs ``module`` with the dropped weights in place of the real ones (via
    :func:`torch.func.functional_call`); gradients flow to the real parameters through the kept
    elements. In eval, or at ``p = 0``, ``module`` runs unchanged. Works with ``nn.LSTM``,
    ``nn.GRU``, ``nn.RNN``, ``nn.Linear`` or any module whose parameters are named.

    Args:
        module: The module to wrap (registered as the submodule ``module``).
        names: Parameter name, or names, of ``module`` to drop (as in
            ``module.named_parameters()``, e.g. ``"weight_hh_l0"`` or ``"0.weight"``).
        p: Probability of dropping a weight (not the keep probability), in ``[0, 1]``.

    ``forward(*args, seed=None, generator=None, **kwargs)`` passes ``args`` and ``kwargs`` to
    ``module``; ``seed``/``generator`` fix or draw the mask as in
    :func:`dropkit.functional.dropout`.

    Checkpoints:
        ``state_dict()`` keys carry the submodule's prefix (``module.weight_hh_l0``). A plain
        checkpoint of the wrapped module (unprefixed keys, e.g. from an ``nn.LSTM``) loads
        directly with ``load_state_dict``, also when the ``WeightDrop`` sits inside a bigger
        model that replaced a plain module by it; :meth:`plain_state_dict` (the same as
        ``wd.module.state_dict()``) saves one a plain module loads.

    Raises:
        TypeError: ``module`` is not an ``nn.Module`` or ``names`` are not strings; bad ``p``.
        ValueError: ``names`` is empty or names something that is not a parameter of
            ``module`` (the message lists the available names); ``p`` outside ``[0, 1]``.

    Example:
        >>> import torch, dropkit
        >>> from dropkit.nn.weight_drop import WeightDrop
        >>> wd = WeightDrop(torch.nn.LSTM(3, 4, batch_first=True), p=0.5)
        >>> wd
        WeightDrop(
          names=('weight_hh_l0',), p=0.5
          (module): LSTM(3, 4, batch_first=True)
        )
        >>> out, _ = wd(torch.randn(2, 5, 3), seed=0)
        >>> out.shape
        torch.Size([2, 5, 4])
        >>> sorted(wd.state_dict())[:2]
        ['module.bias_hh_l0', 'module.bias_ih_l0']

    Reference:
        Wan et al., "Regularization of Neural Networks using DropConnect", ICML 2013; Merity et
        al., "Regularizing and Optimizing LSTM Language Models", ICLR 2018.
    """

    def __init__(
        self, module: nn.Module, names: str | Iterable[str] = ("weight_hh_l0",), p: float = 0.5
    ) -> None:
        cls = type(self).__name__
        super().__init__(p)
        if not isinstance(module, nn.Module):
            raise TypeError(f"{cls}: `module` must be a torch.nn.Module, got "
                            f"{type(module).__name__}.")
        names = (names,) if isinstance(names, str) else tuple(names)
        if not names:
            raise ValueError(f"{cls}: `names` must name at least one parameter, got none.")
        available = [name for name, _ in module.named_parameters()]
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"{cls}: `names` must be strings, got {type(name).__name__} "
                                f"{name!r}.")
            if name not in available:
                raise ValueError(f"{cls}: {name!r} is not a parameter of "
                                 f"{type(module).__name__}; available: {', '.join(available)}.")
        if len(set(names)) != len(names):
            raise ValueError(f"{cls}: `names` must not repeat a name, got {names}.")
        self.module = module
        self.names = names
        self.register_load_state_dict_pre_hook(_accept_plain_keys)

    def dropped_weights(
        self, *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """The dropped copies of the named parameters that one training call uses (differentiable
        with respect to the real parameters). ``forward(..., seed=s)`` uses exactly
        ``dropped_weights(seed=s)``."""
        params = dict(self.module.named_parameters())
        raw = [params[name] for name in self.names]
        if torch.jit.is_tracing():  # the custom op, as TorchScript modules call it
            def drop(w: Tensor) -> Tensor:
                return _jit.rate_dropout(w, self.p, _jit.static_shape(w), "inverted", False,
                                         seed, generator)
        else:
            def drop(w: Tensor) -> Tensor:
                return F.dropout(w, self._rate(), True, seed=seed, generator=generator)
        if len(raw) == 1:
            return {self.names[0]: drop(raw[0])}
        dropped = drop(torch.cat([w.reshape(-1) for w in raw]))
        chunks = torch.split(dropped, [w.numel() for w in raw])
        return {name: c.reshape(w.shape).to(w.dtype)
                for name, c, w in zip(self.names, chunks, raw, strict=True)}

    def forward(
        self, *args, seed: int | None = None, generator: torch.Generator | None = None, **kwargs
    ):
        traced = _jit.fx_call(self, args, dict(kwargs, seed=seed, generator=generator))
        if traced is not None:  # torch.fx: one call_module node, as for the other modules
            return traced
        v.check_seed(type(self).__name__, seed, generator)
        if not self.training:
            return self.module(*args, **kwargs)
        weights = self.dropped_weights(seed=seed, generator=generator)
        if torch.jit.is_tracing():  # functional_call refuses to run under torch.jit.trace
            with _reparametrize_module(self.module, weights):
                return self.module(*args, **kwargs)
        return functional_call(self.module, weights, args, kwargs)

    def plain_state_dict(self) -> dict[str, Tensor]:
        """The wrapped module's ``state_dict`` (unprefixed keys): what a plain module loads."""
        return self.module.state_dict()

    def extra_repr(self) -> str:
        return f"names={self.names}, p={self.p}"


def _accept_plain_keys(
    wd: WeightDrop, state_dict: Mapping, prefix: str, *args
) -> None:
    """Load-time pre-hook: rename ``prefix + key`` to ``prefix + "module." + key`` for every key
    of the wrapped module's ``state_dict`` that arrives unprefixed (a plain checkpoint)."""
    for key in wd.module.state_dict():
        plain, wrapped = prefix + key, prefix + "module." + key
        if plain in state_dict and wrapped not in state_dict:
            state_dict[wrapped] = state_dict.pop(plain)
