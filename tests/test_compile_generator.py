"""``torch.compile`` of calls that pass ``generator=``: dynamo cannot take a ``torch.Generator``
into a graph, so dropkit draws from it in eager Python. Without ``fullgraph`` that is a graph
break with eager's masks and generator state; with ``fullgraph=True`` it is one clear error that
says to pass ``seed=`` (``docs/export.md``)."""

from __future__ import annotations

import pytest
import torch

import dropkit.functional as DF
import dropkit.nn as dn

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)

CALLS = {
    "dropout": lambda x, g: DF.dropout(x, 0.5, generator=g),
    "dropout-p-tensor": lambda x, g: DF.dropout(x, torch.tensor(0.5), generator=g),
    "gaussian_dropout": lambda x, g: DF.gaussian_dropout(x, 0.3, generator=g),
    "drop_block2d": lambda x, g: DF.drop_block2d(x, 0.3, 2, generator=g),
    "bias_dropout_add": lambda x, g: DF.bias_dropout_add(x, None, x, 0.5, generator=g),
    "Dropout-module": lambda x, g: dn.Dropout(0.5)(x, generator=g),
}


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list(CALLS))
def test_compiled_generator_call_matches_eager_masks_and_generator_state(name):
    call, x = CALLS[name], _x()
    torch._dynamo.reset()
    compiled = torch.compile(lambda t, g: call(t, g), backend="eager")
    eager_gen, compiled_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(2):  # the second call reuses the compiled graphs, and draws anew
        want, got = call(x, eager_gen), compiled(x, compiled_gen)
        assert torch.equal(got, want)
        assert torch.equal(compiled_gen.get_state(), eager_gen.get_state())
    assert not torch.equal(call(x, torch.Generator().manual_seed(8)), want)


@pytest.mark.parametrize("name", list(CALLS))
def test_fullgraph_generator_call_says_to_pass_seed(name):
    call, x = CALLS[name], _x()
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(7)
    compiled = torch.compile(lambda t: call(t, g), backend="eager", fullgraph=True)
    with pytest.raises(torch._dynamo.exc.Unsupported, match=r"pass `seed=` instead"):
        compiled(x)
    # The same call with `seed=` compiles in one graph.
    seeded = torch.compile(lambda t: DF.dropout(t, 0.5, seed=3), backend="eager", fullgraph=True)
    assert torch.equal(seeded(x), DF.dropout(x, 0.5, seed=3))
