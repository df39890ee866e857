"""Data-parallel training over the ranks of `torchrun` (`distributed.enabled=true`):

    torchrun --nproc_per_node=8 -m runner experiment=NAME distributed.enabled=true

or, under SLURM, one job of several tasks through Hydra's submitit launcher (docs/usage.md).

Every rank composes the same config and builds the same model, data, methods and masks from the
same seed. A global batch (`train.batch_size`, in the same order on every rank) is cut into
`world` shards (rank r trains on shard r; a streamed split decodes only its shard), and
DistributedDataParallel averages the gradients, so a step is the single-process step on the
global batch (exactly so for equal shards and no batch norm: batch-norm statistics stay per rank
unless `sync_bn`, which needs GPUs). Methods then see the same parameters and the same
gradients on every rank and draw from the same generator, so their masks, filter bases and
state stay identical; `check_same` verifies parameters and masks at the end of every phase.
Epoch statistics are summed over ranks; every rank evaluates the whole validation and test
splits. Only rank 0 writes: the other ranks run Hydra with nothing to write (`worker_overrides`)
and a recorder that keeps its record in memory (`MemoryRecorder`).
"""
from __future__ import annotations

import atexit
import os
from typing import Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from runner.data.tensors import batches
from runner.errors import RunnerError
from runner.results import MemoryRecorder, Recorder, RunRecorder


def rank() -> int:
    """This process' rank under torchrun or a SLURM job of several tasks (0 outside them)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def worker_overrides() -> List[str]:
    """Hydra overrides that make a rank other than 0 write no files."""
    if rank() == 0:
        return []
    return ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled"]


def recorder(out_dir, base) -> Recorder:
    """Rank 0 writes the run's files; the other ranks keep their record in memory."""
    return RunRecorder(out_dir, base) if rank() == 0 else MemoryRecorder(base)


class Dist:
    """This rank's place in the process group and the few things the trainer asks of it."""

    def __init__(self, device: torch.device, sync_bn: bool):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device, self.sync_bn = device, sync_bn

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model as the training step calls it (gradients averaged over ranks)."""
        if self.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def batches(self, split, batch_size, gen, limit=None) -> Iterator[Tuple[torch.Tensor, ...]]:
        """This rank's shard of every global batch."""
        if hasattr(split, "batches"):  # streamed: decode only this rank's images
            split.shard = (self.rank, self.world)
            yield from batches(split, batch_size, gen, limit=limit)
            return
        for x, y in batches(split, batch_size, gen, limit=limit):
            yield x.tensor_split(self.world)[self.rank], y.tensor_split(self.world)[self.rank]

    def all_reduce(self, stats: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(stats)
        return stats

    @torch.no_grad()
    def check_same(self, model: nn.Module, masks, where: str) -> None:
        """Parameters and masks bitwise equal on every rank, else one error naming `where`."""
        parts = [p.detach().double().sum().view(1) for p in model.parameters()]
        parts += [masks[n].keep.double().sum().view(1) for n in masks.names()]
        mine = torch.cat(parts) if parts else torch.zeros(1, device=self.device)
        everyone = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(everyone, mine)
        differ = [r for r, t in enumerate(everyone) if not torch.equal(t, everyone[0])]
        if differ:
            raise RunnerError(f"distributed: ranks {differ} hold other parameters or masks than "
                              f"rank 0 after {where}; a method draws randomness or reads data "
                              f"that differ between ranks")


def setup(cfg, device: str) -> Optional[Dist]:
    """Join torchrun's process group when `cfg.enabled` (backend: nccl on GPUs, else gloo)."""
    if not cfg.enabled:
        return None
    if "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment  # Hydra's submitit launcher
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)  # RANK, ... from SLURM
    if "WORLD_SIZE" not in os.environ:
        raise RunnerError("distributed.enabled=true needs torchrun (torchrun --nproc_per_node=N "
                          "-m runner ... distributed.enabled=true) or a SLURM job of several "
                          "tasks (hydra/launcher=submitit_slurm hydra.launcher.tasks_per_node=N)")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(cfg.backend or ("nccl" if use_cuda else "gloo"))
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    if cfg.sync_bn and not use_cuda:
        raise RunnerError("distributed.sync_bn=true needs GPUs (SyncBatchNorm); set it false")
    return Dist(dev, cfg.sync_bn)
