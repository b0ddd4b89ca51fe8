"""DropConnect layers: ``nn.Linear`` / ``nn.Conv{1,2,3}d`` whose weights are dropped in training.

Each layer *is* the torch layer (same constructor, same ``weight`` / ``bias`` parameters, same
``state_dict``) and a :class:`~dropkit.nn.RateModule` (``p`` is a float property, schedules
drive it, ``torch.compile`` does not recompile when it changes).

Training (``mask``):

* ``"batch"``: one weight mask per forward call, shared by every example (what AWD-LSTM,
  fastai and baal do). Extra memory: one masked weight copy.
* ``"sample"``: an independent mask per example, as in the paper. The masks are the stream-0
  keep field over ``(N, *weight.shape)``; the layer computes ``y[n] = (W * M_n / (1 - p)) x[n]
  + b`` with a batched matmul (Linear) or a grouped convolution with ``groups = N * groups``
  (convs). Extra memory: ``N * weight.numel()`` elements for the masked copies (plus the usual
  activations), i.e. ``N`` times the weight; use it for small layers or small batches.

Biases are never dropped. Inverted scaling makes ``E[y] == W x + b`` for every ``p``.

Inference (``inference``, used when ``self.training`` is False):

* ``"mean"``: the expected layer, ``W x + b`` (the plain layer), then ``activation``.
* ``"gaussian"``: the paper's moment matching. The pre-activation ``u = (W * M / (1 - p)) x + b``
  with ``M_ij ~ Bernoulli(1 - p)`` independent has mean ``mu = W x + b`` and variance
  ``sigma^2 = sum_j W_ij^2 x_j^2 Var(M_ij) / (1 - p)^2 = p / (1 - p) * (W^2)(x^2)``
  (elementwise squares; for convs the same with a convolution of squared weights over the
  squared input). The layer returns the average of ``activation(mu + sigma * eps)`` over
  ``n_samples`` draws ``eps ~ N(0, 1)`` (torch's RNG: ``generator``, or a fresh generator seeded
  with ``seed``; memory ``n_samples`` times the output). Without ``activation`` the average of
  the identity is ``mu`` exactly, so ``"gaussian"`` returns ``mu``. At ``p_eff == 1`` every
  weight is dropped in training, and ``"gaussian"`` returns that network's exact output,
  ``activation(b)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from .. import _validation as v
from .. import rng
from .._drop_connect import drop_connect, sample_weights
from . import _jit
from ._rate import RateModule

MASKS = ("batch", "sample")
INFERENCES = ("mean", "gaussian")
DEFAULT_N_SAMPLES = 128


class _RateBase(RateModule):
    """Lets ``nn.Linear.__init__``'s ``super().__init__()`` reach ``nn.Module`` without a rate;
    the DropConnect layer sets the rate itself afterwards."""

    def __init__(self) -> None:
        nn.Module.__init__(self)


def _check_n_samples(name: str, n_samples: object) -> int:
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral):
        raise TypeError(
            f"{name}: `n_samples` must be a positive int, got {type(n_samples).__name__} "
            f"{n_samples!r}."
        )
    if n_samples < 1:
        raise ValueError(f"{name}: `n_samples` must be a positive int, got {n_samples}.")
    return int(n_samples)


class _DropConnectMixin(_jit.Forward):
    """Shared settings, checks and inference for the DropConnect layers."""

    def _copy_parameters(self, module: nn.Module):
        """Copy ``module``'s weight and bias into this layer (for ``from_module``); returns it."""
        with torch.no_grad():
            self.weight.copy_(module.weight)
            if module.bias is not None:
                self.bias.copy_(module.bias)
        return self

    def _setup(self, p, mask, inference, n_samples, activation) -> None:
        name = type(self).__name__
        self._init_rate(p)
        self.mask = v.check_choice(name, "mask", mask, MASKS)
        self.inference = v.check_choice(name, "inference", inference, INFERENCES)
        self.n_samples = _check_n_samples(name, n_samples)
        if activation is not None and not callable(activation):
            raise TypeError(
                f"{name}: `activation` must be callable or None, got "
                f"{type(activation).__name__}."
            )
        self.activation = activation

    def _check_call(self, seed, generator) -> None:
        name = type(self).__name__
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"{name}: `generator` must be a torch.Generator or None, got "
                f"{type(generator).__name__}."
            )
        v.check_seed(name, seed, generator)

    def _act(self, y: Tensor) -> Tensor:
        return y if self.activation is None else self.activation(y)

    def _jit_weight(
        self, n: int, seed: int | None, generator: torch.Generator | None
    ) -> Tensor:
        """The dropped weight (``n = 0``: one mask) or ``n`` dropped copies, in TorchScript."""
        w = self.weight
        if n == 0:
            return _jit.rate_dropout(w, self._p_value, _jit.static_shape(w), "inverted", False,
                                     seed, generator)
        noise = [n] + _jit.static_shape(w)  # noqa: RUF005  (TorchScript: no starred lists)
        return _jit.rate_dropout(w.expand(noise), self._p_value, noise, "inverted", False, seed,
                                 generator)

    def _jit_gaussian(
        self, name: str, input: Tensor, seed: int | None, generator: torch.Generator | None
    ) -> Tensor:
        if torch.jit.is_scripting():
            raise RuntimeError(name + ": inference='gaussian' does not run "
                               "under torch.jit.script (torch.jit.trace it, or use "
                               "inference='mean').")
        return self._traced(input, seed, generator)

    @torch.jit.unused
    def _traced(self, input, seed, generator):
        """Under ``torch.jit.trace``: the eager code, which records plain torch ops here."""
        return self._forward(input, seed, generator)

    def _gaussian(self, mu: Tensor, var_unit: Callable[[], Tensor], seed, generator) -> Tensor:
        """Average of ``activation(mu + sigma * eps)``; ``var_unit()`` is ``(W^2)(x^2)``."""
        if self.activation is None:
            return mu
        p_eff = rng.effective_p(rng.threshold(self.p))
        if p_eff == 1.0:
            return self.activation(self._bias_only(mu))
        if p_eff == 0.0:
            return self.activation(mu)
        sigma = var_unit().mul(p_eff / (1.0 - p_eff)).clamp_min(0).sqrt()
        if seed is not None:
            generator = torch.Generator(mu.device).manual_seed(seed)
        eps = torch.randn(
            (self.n_samples, *mu.shape), generator=generator, dtype=mu.dtype, device=mu.device
        )
        return self.activation(mu + sigma * eps).mean(0)

    def _bias_only(self, mu: Tensor) -> Tensor:
        out = torch.zeros_like(mu)
        if self.bias is not None:
            shape = (-1,) + (1,) * (mu.dim() - self._bias_axis(mu) - 1)
            out = out + self.bias.reshape(shape)
        return out

    def extra_repr(self) -> str:
        act = "" if self.activation is None else f", activation={self.activation!r}"
        return (
            f"{super().extra_repr()}, p={self.p}, mask={self.mask!r}, "
            f"inference={self.inference!r}, n_samples={self.n_samples}{act}"
        )


class DropConnectLinear(_DropConnectMixin, nn.Linear, _RateBase):
    """``nn.Linear`` with DropConnect on its weight (Wan et al., 2013); see the module docs.

    The positional arguments ``in_features``, ``out_features``, ``bias``, ``device`` and
    ``dtype`` are those of :class:`torch.nn.Linear`; the DropConnect settings are keyword-only.

    Args:
        p: Probability of dropping a weight, in ``[0, 1]``.
        mask: ``"batch"`` (one mask per call) or ``"sample"`` (one mask per input vector: every
            row of the flattened leading dimensions of ``(*, in_features)``).
        inference: ``"mean"`` or ``"gaussian"`` (moment matching; needs ``activation``).
        n_samples: Gaussian draws per unit for ``inference="gaussian"``.
        activation: Applied to the layer's output in every mode (``None``: identity).

    ``forward(input, *, seed=None, generator=None)``: ``seed`` fixes the mask (training) or the
    Gaussian draws (``inference="gaussian"``).

    Raises:
        TypeError: A non-real ``p``, a non-int ``n_samples``, a non-callable ``activation``; in
            ``forward``, a bad ``seed`` or ``generator``.
        ValueError: ``p`` outside ``[0, 1]``, an unknown ``mask`` or ``inference``,
            ``n_samples < 1``; in ``forward``, a ``seed`` outside ``[0, 2**64)``.

    Example:
        >>> import torch
        >>> from dropkit.nn.drop_connect import DropConnectLinear
        >>> layer = DropConnectLinear(4, 2, p=0.3)
        >>> layer
        DropConnectLinear(in_features=4, out_features=2, bias=True, p=0.3, mask='batch', inference='mean', n_samples=128)
        >>> x = torch.ones(3, 4)
        >>> torch.equal(layer.eval()(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
        True
    """  # noqa: E501

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        p: float = 0.5,
        mask: str = "batch",
        inference: str = "mean",
        n_samples: int = DEFAULT_N_SAMPLES,
        activation: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        v.check_p(type(self).__name__, p)
        nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        self._setup(p, mask, inference, n_samples, activation)

    @classmethod
    def from_module(cls, module: nn.Linear, p: float = 0.5, **kwargs) -> DropConnectLinear:
        """A DropConnect copy of ``module`` (weights and bias copied, same device and dtype)."""
        if not isinstance(module, nn.Linear):
            raise TypeError(
                f"{cls.__name__}.from_module: `module` must be a torch.nn.Linear, got "
                f"{type(module).__name__}."
            )
        w = module.weight
        new = cls(module.in_features, module.out_features, module.bias is not None,
                  device=w.device, dtype=w.dtype, p=p, **kwargs)
        return new._copy_parameters(module)

    def _bias_axis(self, mu: Tensor) -> int:
        return mu.dim() - 1

    def _forward(self, input, seed, generator):
        self._check_call(seed, generator)
        w, b = self.weight, self.bias
        if not self.training:
            mu = TF.linear(input, w, b)
            if self.inference == "mean":
                return self._act(mu)
            return self._gaussian(mu, lambda: TF.linear(input * input, w * w), seed, generator)
        if self.mask == "batch":
            return self._act(TF.linear(input, drop_connect(w, self._rate(), seed=seed,
                                                           generator=generator), b))
        lead = input.shape[:-1]
        x = input.reshape(-1, 1, self.in_features)  # (M, 1, in)
        ws = sample_weights(w, x.shape[0], self._rate(), seed=seed, generator=generator)
        y = torch.bmm(x, ws.transpose(1, 2)).reshape(*lead, self.out_features)
        return self._act(y if b is None else y + b)

    def _jit_forward(
        self,
        input: Tensor,
        shape: list[int],
        seed: int | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        w, b = self.weight, self.bias
        if not self.training:
            if self.inference == "mean":
                return self._act(TF.linear(input, w, b))
            return self._jit_gaussian("DropConnectLinear", input, seed, generator)
        if self.mask == "batch":
            return self._act(TF.linear(input, self._jit_weight(0, seed, generator), b))
        lead = shape[:-1]
        n = 1
        for size in lead:
            n *= size
        ws = self._jit_weight(n, seed, generator)
        x = input.reshape(n, 1, self.in_features)
        y = torch.bmm(x, ws.transpose(1, 2)).reshape(lead + [self.out_features])  # noqa: RUF005
        return self._act(y if b is None else y + b)


def _conv_class(dims: int):
    base = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    conv_fn = {1: TF.conv1d, 2: TF.conv2d, 3: TF.conv3d}[dims]
    name = f"DropConnectConv{dims}d"

    class DropConnectConv(_DropConnectMixin, base, _RateBase):
        def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size,
            stride=1,
            padding=0,
            dilation=1,
            groups: int = 1,
            bias: bool = True,
            padding_mode: str = "zeros",
            device=None,
            dtype=None,
            *,
            p: float = 0.5,
            mask: str = "batch",
            inference: str = "mean",
            n_samples: int = DEFAULT_N_SAMPLES,
            activation: Callable[[Tensor], Tensor] | None = None,
        ) -> None:
            v.check_p(type(self).__name__, p)
            base.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                          dilation, groups, bias, padding_mode, device, dtype)
            self._setup(p, mask, inference, n_samples, activation)

        @classmethod
        def from_module(cls, module, p: float = 0.5, **kwargs):
            """A DropConnect copy of ``module`` (weights and bias copied, same settings)."""
            if type(module) is not base and not isinstance(module, cls):
                raise TypeError(
                    f"{cls.__name__}.from_module: `module` must be a torch.nn."
                    f"{base.__name__}, got {type(module).__name__}."
                )
            w = module.weight
            new = cls(module.in_channels, module.out_channels, module.kernel_size,
                      module.stride, module.padding, module.dilation, module.groups,
                      module.bias is not None, module.padding_mode, device=w.device,
                      dtype=w.dtype, p=p, **kwargs)
            return new._copy_parameters(module)

        def _bias_axis(self, mu: Tensor) -> int:
            return mu.dim() - dims - 1

        def _per_sample(self, input: Tensor, seed, generator) -> Tensor:
            unbatched = input.dim() == dims + 1
            x = input.unsqueeze(0) if unbatched else input
            shape = _jit.static_shape(x) if torch.jit.is_tracing() else x.shape
            if len(shape) != dims + 2 or shape[1] != self.in_channels:
                axes, c = v._SPATIAL_AXES[dims], self.in_channels
                raise ValueError(
                    f"{name}: expected `input` of shape (N, {c}, {axes}) or ({c}, {axes}) "
                    f"(in_channels={c}), got shape {tuple(input.shape)}."
                )
            n = shape[0]
            if torch.jit.is_tracing():
                ws = self._jit_weight(n, seed, generator)
            else:
                ws = sample_weights(self.weight, n, self._rate(), seed=seed, generator=generator)
            ws = ws.reshape(n * self.out_channels, *self.weight.shape[1:])
            if self.padding_mode != "zeros":
                x = TF.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
                padding = 0
            else:
                padding = self.padding
            x = x.reshape(1, n * self.in_channels, *x.shape[2:])
            bias = None if self.bias is None else self.bias.repeat(n)
            y = conv_fn(x, ws, bias, self.stride, padding, self.dilation, self.groups * n)
            y = y.reshape(n, self.out_channels, *y.shape[2:])
            return y.squeeze(0) if unbatched else y

        @torch.jit.unused
        def _per_sample_traced(self, input, seed, generator):
            return self._per_sample(input, seed, generator)

        def _forward(self, input, seed, generator):
            self._check_call(seed, generator)
            w, b = self.weight, self.bias
            if not self.training:
                mu = self._conv_forward(input, w, b)
                if self.inference == "mean":
                    return self._act(mu)
                return self._gaussian(
                    mu, lambda: self._conv_forward(input * input, w * w, None), seed, generator
                )
            if self.mask == "batch":
                wd = drop_connect(w, self._rate(), seed=seed, generator=generator)
                return self._act(self._conv_forward(input, wd, b))
            if input.numel() == 0:
                return self._act(self._conv_forward(input, w, b))
            return self._act(self._per_sample(input, seed, generator))

        def _jit_forward(
            self,
            input: Tensor,
            shape: list[int],
            seed: int | None,
            generator: torch.Generator | None,
        ) -> Tensor:
            w, b = self.weight, self.bias
            jit_name = "DropConnectConv" + str(len(self.kernel_size)) + "d"
            if not self.training:
                if self.inference == "mean":
                    return self._act(self._conv_forward(input, w, b))
                return self._jit_gaussian(jit_name, input, seed, generator)
            if self.mask == "batch":
                return self._act(self._conv_forward(input, self._jit_weight(0, seed, generator),
                                                    b))
            if torch.jit.is_scripting():
                raise RuntimeError(jit_name + ": mask='sample' does not run under torch.jit.script "
                                   "(torch.jit.trace it).")
            if _jit.is_empty(input):
                return self._act(self._conv_forward(input, w, b))
            return self._act(self._per_sample_traced(input, seed, generator))

    DropConnectConv.__name__ = DropConnectConv.__qualname__ = name
    DropConnectConv.__doc__ = f"""``nn.{base.__name__}`` with DropConnect on its weight
    (Wan et al., 2013); see the module docs of :mod:`dropkit.nn.drop_connect`.

    The positional arguments ``in_channels`` to ``dtype`` are those of
    :class:`torch.nn.{base.__name__}`; the DropConnect settings are keyword-only.

    Args:
        p: Probability of dropping a weight, in ``[0, 1]``.
        mask: ``"batch"`` (one mask per call) or ``"sample"`` (one mask per example; a grouped
            convolution over the batch, ``N * weight.numel()`` extra elements).
        inference: ``"mean"`` or ``"gaussian"`` (moment matching; needs ``activation``).
        n_samples: Gaussian draws per unit for ``inference="gaussian"``.
        activation: Applied to the layer's output in every mode (``None``: identity).

    ``forward(input, *, seed=None, generator=None)``: ``seed`` fixes the mask (training) or the
    Gaussian draws (``inference="gaussian"``).

    Raises:
        TypeError: A non-real ``p``, a non-int ``n_samples``, a non-callable ``activation``; in
            ``forward``, a bad ``seed`` or ``generator``.
        ValueError: ``p`` outside ``[0, 1]``, an unknown ``mask`` or ``inference``,
            ``n_samples < 1``; in ``forward``, a ``seed`` outside ``[0, 2**64)``.

    Example:
        >>> import torch, dropkit
        >>> layer = dropkit.nn.{name}(2, 4, 3, p=0.5, mask="sample")
        >>> x = torch.ones({", ".join(["2", "2"] + ["5"] * dims)})
        >>> layer(x, seed=0).shape == layer.eval()(x).shape
        True
    """
    return DropConnectConv


DropConnectConv1d = _conv_class(1)
DropConnectConv2d = _conv_class(2)
DropConnectConv3d = _conv_class(3)

__all__ = ["DropConnectConv1d", "DropConnectConv2d", "DropConnectConv3d", "DropConnectLinear"]
