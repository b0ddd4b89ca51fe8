"""Forward-mode AD and torch.func transforms for every function of dropkit.functional.

Every function is affine in its inputs once the seed is fixed, so its tangent is the Jacobian
of the primal call applied to the tangent: the primal's mask and scale (alpha dropout: the
affine's linear part; Gaussian dropout: the same noise). The reference Jacobian comes from
plain eager reverse mode (``torch.autograd.functional.jacobian``: one ``autograd.grad`` per
output element through the custom ops' registered backward), independent of forward mode and
of functorch.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import grad, jacfwd, jacrev, jvp, vmap

import dropkit.distributed as dd
import dropkit.functional as DF

with warnings.catch_warnings():
    # torch's own first use of forward AD scripts its jvp decompositions (torch.jit.script is
    # deprecated in this torch): load them once here, not inside a test.
    warnings.simplefilter("ignore", DeprecationWarning)
    import torch._decomp.decompositions_for_jvp


def _p(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


# (id, input shapes, function of the inputs); every call fixes its seed.
CASES = [
    ("dropout", [(3, 4, 5)], lambda x: DF.dropout(x, 0.5, seed=3)),
    ("dropout-p-tensor", [(3, 4, 5)], lambda x: DF.dropout(x, _p(0.5), seed=3)),
    ("dropout-noise-shape", [(3, 4, 5)],
     lambda x: DF.dropout(x, 0.4, noise_shape=(3, 1, 5), seed=4)),
    ("dropout-vanilla", [(3, 4, 5)], lambda x: DF.dropout(x, 0.3, mode="vanilla", seed=5)),
    ("dropout-vanilla-eval", [(3, 4)],
     lambda x: DF.dropout(x, 0.3, training=False, mode="vanilla")),
    ("dropout-vanilla-eval-p-tensor", [(3, 4)],
     lambda x: DF.dropout(x, _p(0.3), training=False, mode="vanilla")),
    ("dropout-bitmask", [(3, 4, 5)], lambda x: DF.dropout(x, 0.5, seed=6, save="bitmask")),
    ("dropout-p1", [(3, 4)], lambda x: DF.dropout(x, 1.0, seed=3)),
    ("spatial1d", [(2, 3, 5)], lambda x: DF.spatial_dropout1d(x, 0.5, seed=7)),
    ("spatial2d", [(2, 3, 4, 4)], lambda x: DF.spatial_dropout2d(x, 0.5, seed=8)),
    ("spatial3d-p-tensor", [(2, 2, 3, 3, 2)],
     lambda x: DF.spatial_dropout3d(x, _p(0.5), seed=9)),
    ("timestep", [(2, 5, 3)], lambda x: DF.timestep_dropout(x, 0.5, seed=10)),
    ("gaussian", [(3, 4, 5)], lambda x: DF.gaussian_dropout(x, 0.3, seed=11)),
    ("gaussian-p-tensor", [(3, 4, 5)], lambda x: DF.gaussian_dropout(x, _p(0.3), seed=11)),
    ("gaussian-p1", [(3, 4)], lambda x: DF.gaussian_dropout(x, 1.0, seed=11)),
    ("alpha", [(3, 4, 5)], lambda x: DF.alpha_dropout(x, 0.3, seed=12)),
    ("alpha-p-tensor", [(3, 4, 5)], lambda x: DF.alpha_dropout(x, _p(0.3), seed=12)),
    ("alpha-noise-shape", [(3, 4, 5)],
     lambda x: DF.alpha_dropout(x, 0.3, noise_shape=(3, 4, 1), seed=13)),
    ("drop-path", [(6, 3, 2)], lambda x: DF.drop_path(x, 0.5, seed=0)),
    ("drop-path-batch-p-tensor", [(6, 3, 2)],
     lambda x: DF.drop_path(x, _p(0.5), mode="batch", seed=4)),
    ("drop-block1d", [(2, 3, 8)], lambda x: DF.drop_block1d(x, 0.3, 3, seed=14)),
    ("drop-block2d", [(2, 2, 6, 6)], lambda x: DF.drop_block2d(x, 0.3, 3, seed=15)),
    ("drop-block2d-p-tensor-expected", [(2, 2, 6, 6)],
     lambda x: DF.drop_block2d(x, _p(0.3), 3, scale="expected", seed=15)),
    ("drop-block3d", [(1, 2, 4, 4, 4)], lambda x: DF.drop_block3d(x, 0.3, 2, seed=16)),
    ("drop-connect", [(4, 5)], lambda w: DF.drop_connect(w, 0.5, seed=17)),
    ("bias-dropout-add", [(3, 4), (4,), (3, 4)],
     lambda x, b, r: DF.bias_dropout_add(x, b, r, 0.5, seed=18)),
    ("bias-dropout-add-no-bias-p-tensor", [(3, 4), (3, 4)],
     lambda x, r: DF.bias_dropout_add(x, None, r, _p(0.5), seed=18)),
    ("drop-path-add", [(6, 3), (6, 3)], lambda x, r: DF.drop_path_add(x, r, 0.5, seed=0)),
    ("drop-path-add-p-tensor", [(6, 3), (6, 3)],
     lambda x, r: DF.drop_path_add(x, r, _p(0.5), scale_by_keep=False, seed=0)),
    ("shard-dropout", [(4, 3)],
     lambda x: dd.dropout(x, 0.5, shard=dd.Shard((4, 6), (0, 3)), seed=3)),
    ("shard-drop-block2d", [(1, 2, 3, 6)],
     lambda x: dd.drop_block2d(x, 0.3, 2, shard=dd.Shard((1, 2, 6, 6), (0, 0, 3, 0)),
                               seed=19)),
]
IDS = [case[0] for case in CASES]
ZERO_JACOBIAN = {"dropout-p1", "gaussian-p1"}  # p = 1: exact zeros, zero derivative
DTYPES = [torch.float32, torch.float64]


def _inputs(shapes, dtype, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, generator=g, dtype=torch.float64).to(dtype)
                 .requires_grad_(requires_grad) for s in shapes)


def _reference_tangent(fn, primals, tangents):
    """``J @ t`` with ``J`` from eager reverse mode (no forward AD, no functorch)."""
    jac = torch.autograd.functional.jacobian(fn, primals)
    out = fn(*primals)
    total = torch.zeros(out.numel(), dtype=torch.float64)
    for j, t in zip(jac, tangents, strict=True):
        total += j.reshape(out.numel(), t.numel()).double() @ t.reshape(-1).double()
    return total.reshape(out.shape)


def _check_tangent(case_id, got, want, dtype):
    assert got is not None, "no tangent"
    assert got.dtype == dtype
    if case_id not in ZERO_JACOBIAN:
        assert want.abs().sum() > 0  # the case is not degenerate (everything dropped)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("case_id", "shapes", "fn"), CASES, ids=IDS)
def test_forward_ad_dual_tensors_carry_the_masked_tangent(case_id, shapes, fn, dtype):
    # Inputs that also require grad take the paths that save for backward (save="bitmask").
    primals = _inputs(shapes, dtype, requires_grad=True)
    tangents = _inputs(shapes, dtype, seed=1)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip(primals, tangents, strict=True)]
        primal_out, tangent_out = fwAD.unpack_dual(fn(*duals))
    assert torch.equal(primal_out, fn(*primals))
    _check_tangent(case_id, tangent_out, _reference_tangent(fn, primals, tangents), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("case_id", "shapes", "fn"), CASES, ids=IDS)
def test_func_jvp_gives_the_masked_tangent(case_id, shapes, fn, dtype):
    primals, tangents = _inputs(shapes, dtype), _inputs(shapes, dtype, seed=1)
    out, tangent_out = jvp(fn, primals, tangents)
    assert torch.equal(out, fn(*primals))
    _check_tangent(case_id, tangent_out, _reference_tangent(fn, primals, tangents), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("case_id", "shapes", "fn"), CASES, ids=IDS)
def test_func_grad_jacrev_jacfwd_agree_with_eager_reverse_mode(case_id, shapes, fn, dtype):
    primals = _inputs(shapes, dtype)
    want = torch.autograd.functional.jacobian(fn, primals)
    argnums = tuple(range(len(primals)))
    for transform in (jacrev, jacfwd):
        got = transform(fn, argnums=argnums)(*primals)
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w), transform.__name__
    weight = _inputs([tuple(fn(*primals).shape)], dtype, seed=2)[0]
    grads = grad(lambda *a: (fn(*a) * weight).sum(), argnums=argnums)(*primals)
    leaves = [p.detach().requires_grad_() for p in primals]
    eager = torch.autograd.grad((fn(*leaves) * weight).sum(), leaves)
    for g, w in zip(grads, eager, strict=True):
        assert torch.equal(g, w)


@pytest.mark.parametrize(("case_id", "shapes", "fn"), CASES, ids=IDS)
def test_gradcheck_forward_backward_and_batched(case_id, shapes, fn):
    primals = _inputs(shapes, torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        fn, primals, check_forward_ad=True, check_backward_ad=True, check_batched_grad=True,
        check_batched_forward_grad=True,
    )
    assert torch.autograd.gradgradcheck(fn, primals, check_fwd_over_rev=True,
                                        check_rev_over_rev=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("case_id", "shapes", "fn"), CASES, ids=IDS)
def test_compositions_hessian_and_per_sample_grad(case_id, shapes, fn, dtype):
    primals = _inputs(shapes, dtype)

    def loss(*a):
        return torch.sin(fn(*a)).sum()

    want = torch.autograd.functional.hessian(loss, primals)  # eager double backward
    got = jacfwd(jacrev(loss, argnums=0), argnums=0)(*primals)
    torch.testing.assert_close(got, want[0][0], rtol=1e-5, atol=1e-5)
    # vmap(grad(...)) over a batch of first inputs equals the eager gradient of each.
    batch = _inputs([(3, *shapes[0])], dtype, seed=3)[0]
    per_sample = vmap(grad(loss), in_dims=(0, *(None,) * (len(primals) - 1)))(batch, *primals[1:])
    for i in range(3):
        leaf = batch[i].detach().requires_grad_()
        (eager,) = torch.autograd.grad(loss(leaf, *primals[1:]), leaf)
        torch.testing.assert_close(per_sample[i], eager, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("randomness", ["error", "different", "same"])
@pytest.mark.parametrize(("case_id", "shapes", "fn"), CASES, ids=IDS)
def test_vmap_of_a_seeded_call_is_the_call_on_each_slice(case_id, shapes, fn, randomness):
    primals = _inputs([(3, *shapes[0]), *shapes[1:]], torch.float64)
    in_dims = (0, *(None,) * (len(shapes) - 1))
    out = vmap(fn, in_dims=in_dims, randomness=randomness)(*primals)
    for i in range(3):
        assert torch.equal(out[i], fn(primals[0][i], *primals[1:]))


UNSEEDED = [
    ("dropout", lambda x: DF.dropout(x, 0.5)),
    ("dropout-p-tensor", lambda x: DF.dropout(x, _p(0.5))),
    ("gaussian", lambda x: DF.gaussian_dropout(x, 0.3)),
    ("alpha", lambda x: DF.alpha_dropout(x, 0.3)),
    ("drop-block2d", lambda x: DF.drop_block2d(x, 0.3, 2)),
    ("drop-path-add", lambda x: DF.drop_path_add(x, x, 0.5)),
]


@pytest.mark.parametrize(("case_id", "fn"), UNSEEDED, ids=[c[0] for c in UNSEEDED])
def test_vmap_randomness_of_a_drawn_seed(case_id, fn):
    """A drawn seed follows vmap's ``randomness``: an error, one key per slice, or one key for
    the whole batch (the slice's result with the generator in the same state)."""
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(fn)(x)
    torch.manual_seed(0)
    same = vmap(fn, randomness="same")(x)
    for i in range(4):
        torch.manual_seed(0)
        assert torch.equal(same[i], fn(x[i]))
    different = vmap(fn, randomness="different")(x)
    zero = [(different[i] == x[i]).all() for i in range(4)]  # not the identity either
    assert not all(zero)
    ratios = different / x
    assert any(not torch.equal(ratios[0], ratios[i]) for i in range(1, 4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_inplace_dropout_keeps_the_tangent(dtype):
    x, t = _inputs([(5, 6), (5, 6)], dtype)
    want = DF.dropout(t, 0.5, seed=2)  # linear: the tangent is the call on the tangent
    with fwAD.dual_level():
        dual = fwAD.make_dual(x.clone(), t.clone())  # copy_ writes the tangent in place
        out = DF.dropout(dual, 0.5, inplace=True, seed=2)
        assert out is dual
        primal, tangent = fwAD.unpack_dual(out)
    assert torch.equal(primal, DF.dropout(x, 0.5, seed=2))
    assert torch.equal(tangent, want)
    out, tangent = jvp(lambda a: DF.dropout(a.clone(), 0.5, inplace=True, seed=2), (x,), (t,))
    assert torch.equal(tangent, want)


def test_alpha_tangent_is_the_linear_part_of_the_affine():
    """Kept: ``a * t``; dropped: 0 (the fill is a constant), with torch's ``a``."""
    p = 0.3
    x, t = _inputs([(40, 50), (40, 50)], torch.float64)
    out, tangent = jvp(lambda a: DF.alpha_dropout(a, p, seed=4), (x,), (t,))
    alpha = -1.7580993408473766
    a = ((1 - p) * (1 + p * alpha**2)) ** -0.5
    kept = out != DF.alpha_dropout(torch.zeros_like(x), p, seed=4)  # the fill marks drops
    assert 0 < kept.float().mean() < 1
    torch.testing.assert_close(tangent, torch.where(kept, a * t, 0.0), rtol=1e-6, atol=0)


def test_gaussian_tangent_uses_the_primal_noise():
    x, t = _inputs([(30, 30), (30, 30)], torch.float64)
    out, tangent = jvp(lambda a: DF.gaussian_dropout(a, 0.4, seed=5), (x,), (t,))
    noise = out / x
    torch.testing.assert_close(tangent, noise * t)
    assert noise.std() > 0.5  # the noise is there: std sqrt(0.4 / 0.6)
    assert math.isclose(noise.mean().item(), 1.0, abs_tol=0.15)
