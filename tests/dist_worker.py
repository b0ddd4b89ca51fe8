"""The body of tests/test_distributed.py's two-process run (gloo on loopback).

Each rank records what it drew in ``rank{r}.pt``; the test process compares the records with
each other and with single-process references. Kept in its own module so that
``torch.multiprocessing.spawn`` can import it in the children.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import dropkit
import dropkit.functional as DF
from dropkit import distributed as dd

GLOBAL_SEED = 123
SHARD_SEED = 5


def global_input(*shape: int) -> torch.Tensor:
    """The same tensor on every rank and in the test process."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(GLOBAL_SEED))


def _draws() -> list[torch.Tensor]:
    """Masks drawn by a few modules after the same manual_seed on every rank."""
    torch.manual_seed(0)
    x = torch.ones(64, 32)
    return [DF.dropout(x, 0.5), dropkit.nn.Dropout(0.5)(x),
            dropkit.nn.SpatialDropout1d(0.5)(torch.ones(8, 16, 4))]


def _compiled() -> torch.Tensor:
    """The first mask of _draws, through a compiled module (rank mixing traced by dynamo)."""
    module = torch.compile(dropkit.nn.Dropout(0.5), fullgraph=True, backend="eager")
    torch.manual_seed(0)
    return module(torch.ones(64, 32))


def _shards(rank: int, world: int) -> dict[str, torch.Tensor]:
    x = global_input(4, 6, 10, 9)
    out = {}
    for dim in range(4):
        local, shard = dd.split(x, dim, rank, world)
        out[f"dropout/{dim}"] = dd.dropout(local, 0.3, shard=shard, seed=SHARD_SEED)
        out[f"spatial/{dim}"] = dd.spatial_dropout2d(local, 0.3, shard=shard, seed=SHARD_SEED)
        out[f"block/{dim}"] = dd.drop_block2d(local, 0.2, 3, shard=shard, seed=SHARD_SEED)
        torch.manual_seed(7)  # generators in step: a drawn key is shared, not rank-mixed
        out[f"drawn/{dim}"] = dd.dropout(local, 0.3, shard=shard)
    return out


def _dtensors(world: int) -> dict[str, torch.Tensor]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    x = global_input(4, 6, 10, 9)
    out = {}
    for dim in (1, 2, 3):
        dt = distribute_tensor(x, mesh, [Shard(dim)])
        out[f"dropout/{dim}"] = dd.dropout(dt, 0.3, seed=SHARD_SEED).full_tensor()
        out[f"spatial/{dim}"] = dd.spatial_dropout2d(dt, 0.3, seed=SHARD_SEED).full_tensor()
        out[f"block/{dim}"] = dd.drop_block2d(dt, 0.2, 3, seed=SHARD_SEED).full_tensor()
    leaf = distribute_tensor(x, mesh, [Shard(2)]).requires_grad_()
    dd.drop_block2d(leaf, 0.2, 3, seed=SHARD_SEED).sum().backward()
    out["block_grad/2"] = leaf.grad.full_tensor()
    return out


def _ddp() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), dropkit.nn.Dropout(0.5))
    ddp = DistributedDataParallel(model)
    out = ddp(torch.ones(16, 8))
    out.sum().backward()
    return {"output": out.detach(), "grad": model[0].weight.grad.clone()}


def _drop_path() -> dict[str, torch.Tensor]:
    x = torch.ones(4, 3)
    records = {}
    for sync in (False, True):
        torch.manual_seed(1)
        module = dropkit.nn.DropPath(0.5, mode="batch", sync_ranks=sync)
        records[f"sync={sync}"] = torch.stack([module(x)[0, 0] for _ in range(24)])
    return records


def run(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        record = {
            "draws": _draws(),
            "draws_again": _draws(),  # the same run repeated gives the same masks
            "compiled": _compiled(),
            "shards": _shards(rank, world),
            "dtensors": _dtensors(world),
            "ddp": _ddp(),
            "drop_path": _drop_path(),
            "broadcast_seed": dd.broadcast_seed(),
        }
        with dd.rank_streams(False):
            record["draws_unmixed"] = _draws()
        torch.save(record, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
