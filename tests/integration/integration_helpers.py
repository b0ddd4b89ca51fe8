"""What every real model of the integration suite is checked for (``check_model``).

For a model built by a real timm/torchvision/transformers factory (no weights) and
``dropkit.convert``-ed on a copy: the report, eval outputs bit-equal to the original's,
``state_dict`` unchanged, the realised rates of the converted layers in training (measured with
forward hooks: zeros in each layer's output where its input was not zero) within 4 standard
deviations of the configured rates, one training step, one ``torch.compile`` step and one
``torch.export`` in eval.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import dropkit
import dropkit.nn as dnn
from dropkit import rng
from dropkit.convert import ConversionReport

SIGMAS = 4.0


def effective(p: float) -> float:
    """The rate dropkit's element and sample masks realise for ``p`` (16-bit threshold)."""
    return rng.effective_p(rng.threshold(p))


def call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def first_tensor(output: Any) -> torch.Tensor:
    """The logits of a timm/torchvision model or a transformers ``ModelOutput``."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


@dataclasses.dataclass
class _Tally:
    p: float
    units: int = 0
    dropped: int = 0
    fractions: list[float] = dataclasses.field(default_factory=list)  # DropBlock: one per map


class RateMeter:
    """Forward hooks on every dropkit module of ``model`` that count what it dropped."""

    def __init__(self, model: nn.Module):
        self.tallies: dict[str, _Tally] = {}
        self._handles = []
        for name, m in model.named_modules():
            if isinstance(m, dnn.Dropout | dnn.DropPath | dnn.DropBlock2d | dnn.DropBlock3d):
                self.tallies[name] = _Tally(float(m.p))
                self._handles += [m.register_forward_pre_hook(self._before),
                                  m.register_forward_hook(self._after(name))]
        self._nonzero: dict[int, torch.Tensor] = {}

    def _before(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._nonzero[id(module)] = args[0].detach() != 0  # before an inplace layer writes

    def _after(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            nz = self._nonzero.pop(id(module))
            zero = (out.detach() == 0) & nz
            t = self.tallies[name]
            if isinstance(module, dnn.Dropout):
                t.units += int(nz.sum())
                t.dropped += int(zero.sum())
            elif isinstance(module, dnn.DropPath):
                if module.mode == "batch":
                    nz, zero = nz.reshape(1, -1), zero.reshape(1, -1)
                else:
                    nz, zero = nz.flatten(1), zero.flatten(1)
                live = nz.any(1)
                t.units += int(live.sum())
                t.dropped += int((zero.sum(1) == nz.sum(1))[live].sum())
            else:  # DropBlock: the dropped fraction of each (sample, channel) map
                spatial = module._spatial_dims
                maps_nz = nz.flatten(-spatial).flatten(0, -2).double()
                maps_zero = zero.flatten(-spatial).flatten(0, -2).double()
                live = maps_nz.sum(1) > 0
                if not module.per_channel:  # one mask per sample: one fraction per sample
                    maps_nz = nz.flatten(1).double()
                    maps_zero = zero.flatten(1).double()
                    live = maps_nz.sum(1) > 0
                t.fractions += (maps_zero.sum(1)[live] / maps_nz.sum(1)[live]).tolist()
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def check(self, min_units: int = 200) -> dict[str, tuple[float, float]]:
        """Assert each layer's rate; returns ``{name: (measured, configured)}``."""
        seen = {}
        # Element and sample masks: independent Bernoulli units, pooled over all layers (each
        # with its own rate): the dropped count within 4 sigma of its expectation.
        units = dropped = 0
        mean = var = 0.0
        blocks: dict[float, list[float]] = collections.defaultdict(list)
        for name, t in self.tallies.items():
            if t.fractions:  # DropBlock: pooled over the layers of one rate, maps independent
                blocks[t.p] += t.fractions
                seen[name] = (sum(t.fractions) / len(t.fractions), t.p)
            elif t.units:
                q = effective(t.p)
                units, dropped = units + t.units, dropped + t.dropped
                mean, var = mean + t.units * q, var + t.units * q * (1 - q)
                seen[name] = (t.dropped / t.units, t.p)
        for p, fractions in blocks.items():
            n = len(fractions)
            m = sum(fractions) / n
            sd = math.sqrt(sum((f - m) ** 2 for f in fractions) / max(n - 1, 1))
            assert n >= 100, f"DropBlock p={p}: only {n} maps"
            assert abs(m - p) <= SIGMAS * sd / math.sqrt(n) + 1e-3, (
                f"DropBlock p={p}: dropped {m:.4f} of {n} maps (+- {sd / math.sqrt(n):.4f})")
        if units:
            assert units >= min_units, f"only {units} units seen"
            assert abs(dropped - mean) <= SIGMAS * math.sqrt(var), (
                f"dropped {dropped} of {units}, expected {mean:.1f} +- {SIGMAS} * "
                f"{math.sqrt(var):.2f}")
        return seen


def measure_rates(model: nn.Module, make_inputs: Callable[[], Any], passes: int
                  ) -> dict[str, tuple[float, float]]:
    """``passes`` training forwards without gradients; each converted layer's rate checked."""
    meter = RateMeter(model)
    model.train()
    try:
        with torch.no_grad():
            for _ in range(passes):
                call(model, make_inputs())
    finally:
        meter.remove()
    return meter.check()


def training_step(model: nn.Module, inputs: Any) -> None:
    """One SGD step: finite gradients, and the parameters move."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=1e-3)
    loss = (first_tensor(call(model, inputs)).float() - 1).square().mean()  # heads may start at 0
    loss.backward()
    assert all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)
    opt.step()
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, params, strict=True))


def compile_step(model: nn.Module, inputs: Any, backend: str = "aot_eager") -> None:
    """One training step under ``torch.compile`` (forward and backward)."""
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    model.train()
    loss = first_tensor(call(compiled, inputs)).float().square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()


def export_eval(model: nn.Module, inputs: Any) -> None:
    """``torch.export`` in eval: no random op in the graph, the eager eval output."""
    model.eval()
    args = inputs if isinstance(inputs, tuple) else ((inputs,) if not isinstance(inputs, dict)
                                                      else ())
    kwargs = inputs if isinstance(inputs, dict) else None
    ep = torch.export.export(model, args, kwargs)
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    # (aten.dropout with train=False may remain: the peers' own functional F.dropout calls)
    assert not [t for t in targets if "bernoulli" in t or "dropkit" in t], targets
    with torch.no_grad():
        got = first_tensor(call(ep.module(), inputs))
        want = first_tensor(call(model, inputs))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def check_model(
    original: nn.Module,
    inputs: Any,
    make_rate_inputs: Callable[[], Any],
    *,
    converted_sources: dict[str, int],
    skipped_sources: dict[str, int] | None = None,
    passes: int,
    channels_last: bool = False,
    compile_backend: str = "aot_eager",
    convert_kwargs: dict[str, Any] | None = None,
) -> ConversionReport:
    """Every check of the module docstring; returns the report."""
    report = dropkit.convert(original, copy=True, **(convert_kwargs or {}))
    model = report.model
    got = collections.Counter(c.source for c in report.converted)
    assert dict(got) == converted_sources, str(report)
    skipped = collections.Counter(s.source for s in report.skipped)
    assert dict(skipped) == (skipped_sources or {}), str(report)
    for s in report.skipped:
        assert s.reason, s
    # Nothing of the peers' dropout classes is left unconverted except what was skipped.
    for c in report.converted:
        assert c.training == original.training

    assert list(model.state_dict()) == list(original.state_dict())
    for (k, a), b in zip(original.state_dict().items(), model.state_dict().values(),
                         strict=True):
        assert torch.equal(a, b), k
    model.load_state_dict(original.state_dict())

    original.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(first_tensor(call(model, inputs)), first_tensor(call(original,
                                                                                 inputs)))
        if channels_last:
            cl = inputs.to(memory_format=torch.channels_last)
            m_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
            o_cl = copy.deepcopy(original).to(memory_format=torch.channels_last)
            assert torch.equal(first_tensor(m_cl(cl)), first_tensor(o_cl(cl)))

    export_eval(model, inputs)
    measure_rates(model, make_rate_inputs, passes)
    training_step(model, inputs)
    if channels_last:
        m_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        training_step(m_cl, inputs.to(memory_format=torch.channels_last))
    compile_step(model, inputs, compile_backend)
    return report
