"""torch.distributed for torchrun: process group, DDP or FSDP2 wrapping, tensor parallelism on a
2-D device mesh (data x tensor), full state dicts."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among `size` processes and its device."""

    rank: int
    size: int
    device: torch.device
    tp: int = 1
    """Processes each model is split over (tensor parallelism); the mesh is (size / tp, tp),
    ranks r and r + 1 ... of one tensor-parallel group next to each other."""

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def dp_size(self) -> int:
        return self.size // self.tp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp

    def rows(self, batch_size: int) -> slice:
        """The rows of each global batch this rank trains on: [r*B/D, (r+1)*B/D) for its
        data-parallel rank r of D (the processes of one tensor-parallel group share rows)."""
        share = batch_size // self.dp_size
        return slice(self.dp_rank * share, (self.dp_rank + 1) * share)

    def layout(self) -> dict:
        return {"data_parallel": self.dp_size, "tensor_parallel": self.tp}


def init_world(tp: int = 1) -> World:
    """Join the process group torchrun set up (gloo on CPU, NCCL on GPU), or run alone; `tp`
    processes of it hold one model between them."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if size % tp:
        from lmsuite.errors import LmsuiteError

        raise LmsuiteError(f"tensor_parallel = {tp} does not divide the {size} processes; "
                           "start a multiple of it (torchrun --nproc_per_node)")
    return World(rank=dist.get_rank() if size > 1 else 0, size=size, device=device, tp=tp)


def close_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    if world.size > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world.size
    return value


def wrap(model: nn.Module, world: World, fsdp: bool) -> nn.Module:
    """DDP for models that fit one device, FSDP2 (`fully_shard`, per layer) for those that
    don't; the model itself when running alone. With tensor parallelism, the layers are split
    over each tensor-parallel group first, and FSDP2 shards across the data-parallel one."""
    if world.tp > 1:
        from torch.distributed.device_mesh import init_device_mesh

        from lmsuite.train.tensor_parallel import parallelize

        mesh = init_device_mesh(world.device.type, (world.dp_size, world.tp),
                                mesh_dim_names=("dp", "tp"))
        parallelize(model, mesh["tp"])
        if world.dp_size == 1:
            return model
        from torch.distributed.fsdp import fully_shard

        for layer in model.gpt_neox.layers:
            fully_shard(layer, mesh=mesh["dp"])
        return fully_shard(model, mesh=mesh["dp"])
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in model.gpt_neox.layers:
            fully_shard(layer)
        return fully_shard(model)
    if world.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def no_gradient_sync(model: nn.Module, sync: bool) -> AbstractContextManager:
    """Skip the gradient all-reduce on micro-batches before the last of a step."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
        return nullcontext()
    if hasattr(model, "no_sync") and not sync:  # DDP
        return model.no_sync()
    return nullcontext()


def grad_norm_value(norm: torch.Tensor) -> float:
    """The global gradient norm as a float (FSDP2 returns it as a DTensor)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts on the CPU (complete on rank 0); the optimizer
    state is keyed by parameter name. Every rank must call this."""
    return (get_model_state_dict(model, options=FULL),
            get_optimizer_state_dict(model, optimizer, options=FULL))


def load_model_state(model: nn.Module, model_state: dict) -> None:
    """Load a full model state dict into a possibly sharded model (the optimizer stays)."""
    set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True))


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                    optimizer_state: dict) -> None:
    """Load full state dicts (as `full_state` returns them) into a possibly sharded model."""
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
