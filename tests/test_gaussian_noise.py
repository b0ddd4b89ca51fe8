"""dropkit.functional.gaussian_noise / dropkit.nn.GaussianNoise / dropkit.numpy.gaussian_noise:
additive Gaussian noise on the mask engine's normal stream (``docs/rng.md`` section 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dropkit
import dropkit.functional as DF
import dropkit.numpy as dnp
from dropkit import rng
from dropkit.kernels import torch_ref
from helpers import BACKENDS, DTYPES, run_on, same_bits


def _reference(x: torch.Tensor, seed: int, std: float) -> torch.Tensor:
    """The spec's expression on the pure-PyTorch noise: ``x + std * z`` in the compute dtype."""
    z = torch_ref.normal_field(rng.seed_to_key(seed), x.numel()).reshape(x.shape)
    ct = torch_ref.compute_dtype(x.dtype)
    return (x.to(ct) + (std * z).to(ct)).to(x.dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bits_equal_the_numpy_twin_and_the_spec(backend, dtype):
    x = torch.randn(3, 1001, generator=torch.Generator().manual_seed(0)).to(dtype)
    y = run_on(backend, DF.gaussian_noise, x, 0.7, seed=2**40 + 3)
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
    assert same_bits(y, _reference(x, 2**40 + 3, 0.7))
    if dtype != torch.bfloat16:  # NumPy has no bfloat16
        want = dnp.gaussian_noise(x.numpy(), 0.7, seed=2**40 + 3)
        assert want.dtype == x.numpy().dtype
        assert np.array_equal(y.numpy().view(np.uint8), want.view(np.uint8))


def test_noise_is_gaussian_dropouts_normal_field():
    """The same z as gaussian_dropout for the same seed: one normal stream, not a second one."""
    x = torch.ones(4099, dtype=torch.float64)
    p = 0.2
    sigma = math.sqrt(p / (1 - p))
    z_mul = (DF.gaussian_dropout(x, p, seed=11) - 1) / sigma
    z_add = DF.gaussian_noise(torch.zeros_like(x), 1.0, seed=11)
    torch.testing.assert_close(z_add, z_mul, rtol=0, atol=1e-12)


@pytest.mark.parametrize("stddev", [0.05, 0.3, 2.0])
def test_statistics_within_4_sigma(stddev):
    n = 200_000
    x = torch.full((n,), 3.0, dtype=torch.float64)
    noise = DF.gaussian_noise(x, stddev, seed=123) - x
    mean, var = noise.mean().item(), noise.var().item()
    assert abs(mean) <= 4 * stddev / math.sqrt(n)
    # Var of the sample variance of a normal: 2 sigma^4 / (n - 1)
    assert abs(var - stddev**2) <= 4 * stddev**2 * math.sqrt(2 / (n - 1))
    # Fourth moment: a normal has kurtosis 3 (sd of the sample kurtosis ~ sqrt(24 / n))
    kurt = ((noise - mean) ** 4).mean().item() / var**2
    assert abs(kurt - 3.0) <= 4 * math.sqrt(24 / n)


def test_seed_generator_and_manual_seed():
    x = torch.zeros(64)
    assert torch.equal(DF.gaussian_noise(x, 1.0, seed=5), DF.gaussian_noise(x, 1.0, seed=5))
    assert not torch.equal(DF.gaussian_noise(x, 1.0, seed=5), DF.gaussian_noise(x, 1.0, seed=6))
    a = DF.gaussian_noise(x, 1.0, generator=torch.Generator().manual_seed(1))
    b = DF.gaussian_noise(x, 1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    torch.manual_seed(3)
    c = DF.gaussian_noise(x, 1.0)
    torch.manual_seed(3)
    assert torch.equal(c, DF.gaussian_noise(x, 1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_is_the_identity_and_nothing_is_saved(dtype):
    x = torch.randn(5, 7, dtype=dtype, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = DF.gaussian_noise(x, 0.5, seed=4)
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(x.grad, g)
    assert saved == []
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(lambda t: DF.gaussian_noise(t, 0.5, seed=4),
                                        (x.detach().requires_grad_(),))


def test_eval_zero_stddev_and_empty_return_the_input():
    x = torch.randn(4, 3)
    assert DF.gaussian_noise(x, 0.5, training=False) is x
    assert DF.gaussian_noise(x, 0.0) is x
    e = torch.empty(0, 3)
    assert DF.gaussian_noise(e, 0.5) is e
    m = dropkit.nn.GaussianNoise(0.5).eval()
    assert m(x) is x
    assert np.array_equal(dnp.gaussian_noise(x.numpy(), 0.5, training=False), x.numpy())


def test_module():
    m = dropkit.nn.GaussianNoise(0.25)
    assert repr(m) == "GaussianNoise(stddev=0.25)"
    assert m.state_dict() == {} and list(m.parameters()) == []
    x = torch.randn(6, 5)
    assert torch.equal(m(x, seed=9), DF.gaussian_noise(x, 0.25, seed=9))
    m.stddev = 1.5
    assert torch.equal(m(x, seed=9), DF.gaussian_noise(x, 1.5, seed=9))
    with pytest.raises(ValueError, match=r"GaussianNoise: `stddev` must be a finite number >= 0"):
        m.stddev = -1.0


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_stddev_values(bad):
    with pytest.raises(ValueError, match=r"gaussian_noise: `stddev` must be a finite number"):
        DF.gaussian_noise(torch.ones(2), bad)
    with pytest.raises(ValueError, match=r"gaussian_noise: `stddev`"):
        dnp.gaussian_noise(np.ones(2), bad)
    with pytest.raises(ValueError, match=r"GaussianNoise: `stddev`"):
        dropkit.nn.GaussianNoise(bad)


@pytest.mark.parametrize("bad", ["0.1", True, None, torch.tensor(0.1)])
def test_bad_stddev_types(bad):
    with pytest.raises(TypeError, match=r"gaussian_noise: `stddev` must be a real number >= 0"):
        DF.gaussian_noise(torch.ones(2), bad)
    with pytest.raises(TypeError, match=r"GaussianNoise: `stddev` must be a real number"):
        dropkit.nn.GaussianNoise(bad)


def test_bad_inputs():
    with pytest.raises(TypeError, match=r"gaussian_noise: `input` must be a torch.Tensor"):
        DF.gaussian_noise([1.0], 0.1)
    with pytest.raises(TypeError, match=r"gaussian_noise: `input` must have dtype"):
        DF.gaussian_noise(torch.ones(2, dtype=torch.int64), 0.1)
    with pytest.raises(TypeError, match=r"gaussian_noise: `training` must be a bool"):
        DF.gaussian_noise(torch.ones(2), 0.1, training=1)
    with pytest.raises(ValueError, match=r"gaussian_noise: pass either `seed` or `generator`"):
        DF.gaussian_noise(torch.ones(2), 0.1, seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match=r"gaussian_noise: `x` must be a numpy.ndarray"):
        dnp.gaussian_noise([1.0], 0.1)


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    m = dropkit.nn.GaussianNoise(0.4)
    x = torch.randn(8, 9, requires_grad=True)

    def step(t, seed):
        return m(t, seed=seed)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    y = compiled(x, 17)
    assert torch.equal(y, DF.gaussian_noise(x, 0.4, seed=17))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert torch.equal(compiled(x, 18), DF.gaussian_noise(x, 0.4, seed=18))
    m.stddev = 0.9  # a new stddev reaches the compiled function (it may recompile)
    assert torch.equal(compiled(x, 18), DF.gaussian_noise(x, 0.9, seed=18))
    m.eval()
    assert torch.equal(torch.compile(m, fullgraph=True, backend="aot_eager")(x), x)


def test_opcheck():
    x = torch.randn(3, 4, requires_grad=True)
    key = torch.tensor([1, 2], dtype=torch.int64)
    torch.library.opcheck(torch.ops.dropkit.gaussian_add.default, (x, key, 0.5))
