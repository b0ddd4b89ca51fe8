"""torch.distributed: rank-dependent streams, shard-invariant masks, DDP, DTensor, DropPath sync.

One two-process gloo run on loopback (``dist_worker.run``) records what each rank drew; the
tests compare the records across ranks and with single-process references computed here.
Shard invariance of the local-tensor API is also checked in-process for every split axis.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dropkit.functional as DF
from dist_worker import SHARD_SEED, global_input
from dropkit import distributed as dd
from dropkit import rng

WORLD = 2

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    import dist_worker

    folder = tmp_path_factory.mktemp("dist")
    mp.spawn(dist_worker.run, args=(WORLD, str(folder / "init"), str(folder)), nprocs=WORLD)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _mixed_seed(rank: int) -> int:
    """The seed rank ``rank`` uses after torch.manual_seed(0), by the spec (docs/rng.md, 9)."""
    torch.manual_seed(0)
    k0, k1 = torch.randint(0, 2**32, (2,), dtype=torch.int64).tolist()
    r0, r1 = rng.rank_key((k0, k1), rank)
    return r0 | r1 << 32


def test_ranks_draw_different_masks_by_the_spec(records):
    first = [r["draws"][0] for r in records]
    assert not torch.equal(first[0], first[1])
    for rank, mask in enumerate(first):
        assert torch.equal(mask, DF.dropout(torch.ones(64, 32), 0.5, seed=_mixed_seed(rank)))


def test_repeated_run_gives_the_same_masks(records):
    for r in records:
        for a, b in zip(r["draws"], r["draws_again"], strict=True):
            assert torch.equal(a, b)


def test_compiled_module_mixes_the_rank_too(records):
    for r in records:
        assert torch.equal(r["compiled"], r["draws"][0])


def test_rank_streams_off_gives_the_generator_masks(records):
    torch.manual_seed(0)
    reference = DF.dropout(torch.ones(64, 32), 0.5)
    for r in records:
        assert torch.equal(r["draws_unmixed"][0], reference)


def test_ddp_replicas_drop_different_units_and_agree_on_gradients(records):
    a, b = (r["ddp"] for r in records)
    assert not torch.equal(a["output"] == 0, b["output"] == 0)
    assert torch.equal(a["grad"], b["grad"])  # all-reduced


def test_drop_path_batch_mode_sync_ranks(records):
    own = [r["drop_path"]["sync=False"] for r in records]
    sync = [r["drop_path"]["sync=True"] for r in records]
    assert torch.equal(sync[0], sync[1])
    assert not torch.equal(own[0], own[1])
    assert 0 < int((sync[0] == 0).sum()) < len(sync[0])  # both outcomes occur


def test_broadcast_seed_agrees(records):
    assert records[0]["broadcast_seed"] == records[1]["broadcast_seed"]


def _references(x):
    return {
        "dropout": DF.dropout(x, 0.3, seed=SHARD_SEED),
        "spatial": DF.spatial_dropout2d(x, 0.3, seed=SHARD_SEED),
        "block": DF.drop_block2d(x, 0.2, 3, scale="expected", seed=SHARD_SEED),
    }


def test_split_shards_get_slices_of_the_global_mask(records):
    x = global_input(4, 6, 10, 9)
    refs = _references(x)
    torch.manual_seed(7)
    refs["drawn"] = DF.dropout(x, 0.3)
    for name, dim in itertools.product(refs, range(4)):
        parts = [r["shards"][f"{name}/{dim}"] for r in records]
        assert torch.equal(torch.cat(parts, dim=dim), refs[name]), (name, dim)


def test_dtensor_shards_get_slices_of_the_global_mask(records):
    refs = _references(global_input(4, 6, 10, 9))
    for name, dim in itertools.product(refs, (1, 2, 3)):
        assert torch.equal(records[0]["dtensors"][f"{name}/{dim}"], refs[name]), (name, dim)
        assert torch.equal(records[1]["dtensors"][f"{name}/{dim}"], refs[name]), (name, dim)


def test_dtensor_drop_block_gradient(records):
    x = global_input(4, 6, 10, 9).requires_grad_()
    DF.drop_block2d(x, 0.2, 3, scale="expected", seed=SHARD_SEED).sum().backward()
    assert torch.equal(records[0]["dtensors"]["block_grad/2"], x.grad)


# In-process checks of the local-tensor API (no process group needed).


@pytest.mark.parametrize("world", [2, 3, 5])
@pytest.mark.parametrize("dim", [0, 1, 2, 3])
def test_any_split_matches(world, dim):
    x = torch.randn(3, 5, 11, 7)
    fns = {
        "dropout": (lambda t, **k: dd.dropout(t, 0.4, **k), DF.dropout(x, 0.4, seed=9)),
        "noise_shape": (lambda t, **k: dd.dropout(t, 0.4, noise_shape=(3, 1, 11, 1), **k),
                        DF.dropout(x, 0.4, noise_shape=(3, 1, 11, 1), seed=9)),
        "vanilla": (lambda t, **k: dd.spatial_dropout2d(t, 0.4, mode="vanilla", **k),
                    DF.spatial_dropout2d(x, 0.4, mode="vanilla", seed=9)),
        "block": (lambda t, **k: dd.drop_block2d(t, 0.3, (5, 2), per_channel=False, **k),
                  DF.drop_block2d(x, 0.3, (5, 2), per_channel=False, scale="expected",
                                  seed=9)),
        "block_none": (lambda t, **k: dd.drop_block2d(t, 0.3, 4, scale="none", **k),
                       DF.drop_block2d(x, 0.3, 4, scale="none", seed=9)),
    }
    for name, (fn, full) in fns.items():
        parts = [fn(local, shard=shard, seed=9)
                 for local, shard in (dd.split(x, dim, r, world) for r in range(world))]
        assert torch.equal(torch.cat(parts, dim=dim), full), name


def test_two_axis_split_and_channels_last_block():
    x = torch.randn(2, 9, 8, 3)  # channels_last (N, H, W, C)
    full = DF.drop_block2d(x, 0.25, 3, scale="expected", data_format="channels_last", seed=1)
    for top, left in itertools.product((0, 4), (0, 5)):
        local = x[:, top:top + 5, left:left + 5 if left == 0 else None]
        shard = dd.Shard(tuple(x.shape), (0, top, left, 0))
        out = dd.drop_block2d(local, 0.25, 3, shard=shard, data_format="channels_last", seed=1)
        assert torch.equal(out, full[:, top:top + 5, left:left + 5 if left == 0 else None])


def test_drop_block3d_and_1d_split():
    for fn_d, ref_fn, shape in [(dd.drop_block3d, DF.drop_block3d, (2, 2, 7, 6, 5)),
                                (dd.drop_block1d, DF.drop_block1d, (3, 2, 29))]:
        x = torch.randn(*shape)
        full = ref_fn(x, 0.2, 3, scale="expected", seed=4)
        parts = [fn_d(local, 0.2, 3, shard=shard, seed=4)
                 for local, shard in (dd.split(x, -1, r, 3) for r in range(3))]
        assert torch.equal(torch.cat(parts, dim=-1), full)


def test_shard_gradient_regenerates_the_mask():
    x = torch.randn(4, 8, requires_grad=True)
    local, shard = dd.split(x, 1, 1, 2)
    out = dd.dropout(local, 0.5, shard=shard, seed=3)
    out.backward(torch.ones_like(out))
    full = torch.autograd.grad(DF.dropout(x, 0.5, seed=3).sum(), x)[0]
    assert torch.equal(x.grad[:, 4:], full[:, 4:])
    assert torch.equal(x.grad[:, :4], torch.zeros(4, 4))


def test_p_one_and_eval():
    x = torch.full((2, 4), float("inf"))
    local, shard = dd.split(x, 1, 0, 2)
    assert torch.equal(dd.dropout(local, 1.0, shard=shard), torch.zeros(2, 2))
    assert dd.dropout(local, 0.5, training=False, shard=shard) is local
    assert torch.equal(dd.dropout(local, 0.5, False, shard=shard, mode="vanilla"), local * 0.5)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: dd.dropout(torch.ones(2, 2), 0.5), TypeError,
         "`shard` must be a dropkit.distributed.Shard"),
        (lambda: dd.dropout(torch.ones(2, 2), 0.5, shard=dd.Shard((2,), (0,))), ValueError,
         "one global size and one offset per axis"),
        (lambda: dd.dropout(torch.ones(2, 2), 0.5, shard=dd.Shard((2, 3), (0, 2))), ValueError,
         "offset + 2 <= global size"),
        (lambda: dd.dropout([1.0], 0.5, shard=dd.Shard((1,), (0,))), TypeError,
         "`input` must be a torch.Tensor"),
        (lambda: dd.dropout(torch.ones(2), 2.0, shard=dd.Shard((2,), (0,))), ValueError,
         "`p` must be in [0, 1]"),
        (lambda: dd.drop_block2d(torch.ones(1, 1, 4, 4), 0.1, 2, scale="batch",
                                 shard=dd.Shard((1, 1, 4, 4), (0, 0, 0, 0))), ValueError,
         "`scale` must be one of ('expected', 'none') for a shard"),
        (lambda: dd.rank_streams("no").__enter__(), TypeError, "`enabled` must be a bool"),
        (lambda: dd.split(torch.ones(5, 3), 0, 2, 2), ValueError,
         "split: `rank` must be in [0, world_size) = [0, 2), got 2."),
        (lambda: dd.split(torch.ones(5, 3), 0, -1, 2), ValueError,
         "split: `rank` must be in [0, world_size) = [0, 2), got -1."),
        (lambda: dd.split(torch.ones(5, 3), 0, 0, 0), ValueError,
         "split: `world_size` must be >= 1, got 0."),
        (lambda: dd.split(torch.ones(5, 3), 2, 0, 2), ValueError,
         "split: `dim` must be an axis of the 2D input, in [-2, 2), got 2."),
        (lambda: dd.split(torch.ones(5, 3), 0, 1.0, 2), TypeError,
         "split: `rank` must be an int, got float 1.0."),
        (lambda: dd.split(torch.ones(5, 3), 0, 0, True), TypeError,
         "split: `world_size` must be an int, got bool True."),
        (lambda: dd.split([1.0], 0, 0, 1), TypeError,
         "split: `input` must be a torch.Tensor, got list."),
        (lambda: dd.dropout(torch.ones(2), torch.tensor(2.0), shard=dd.Shard((2,), (0,))),
         ValueError, "dropout: `p` must be in [0, 1], got 2.0."),
    ],
)
def test_errors(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


def test_rank_key_spec_vectors():
    # docs/rng.md, section 9
    assert rng.rank_key((0, 0), 1) == (1417338474, 3942112148)
    assert rng.rank_key(rng.seed_to_key(2**32 + 5), 3) == (2032779780, 3076301678)
