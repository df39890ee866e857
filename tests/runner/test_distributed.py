"""Distributed data-parallel training (runner.distributed): 2 CPU processes with gloo train what
one process trains on the same global batches, masked methods included."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF
from runner import ci
from runner.results import MemoryRecorder
from runner.train import Trainer

BASE = ["experiment=fmnist_mlp", "model=swr_cnn", "model.channels=4", "model.hidden=16",
        "ci=smoke", "device=cpu", "threads=1", "optim=sgd", "optim.lr=0.1", "optim.momentum=0.9",
        "train.max_batches=3", "train.max_epochs=2", "train.epochs=2"]  # 3 full batches of 8 per epoch
RIGL = ["method=rigl", "method.sparsity=0.5", "method.t_p=2", "method.stop=1.0"]


def trained(overrides, distributed=False):
    """Parameters and masks after training the composed config."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"distributed.enabled={distributed}"])
    GlobalHydra.instance().clear()
    trainer = Trainer(ci.apply(cfg), MemoryRecorder())
    trainer.fit()
    ctx = trainer.ctx
    return ({n: p.detach().clone() for n, p in ctx.model.named_parameters()},
            {n: ctx.masks[n].keep.clone() for n in ctx.masks.names()})


def worker(rank, world, port, overrides, out):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.save(trained(overrides, distributed=True), f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("method", [pytest.param([], marks=pytest.mark.slow),
                                    pytest.param(RIGL, marks=pytest.mark.sizes)],  # two processes
                         ids=["vanilla", "rigl"])
def test_two_gloo_ranks_train_what_one_process_trains_on_the_global_batch(tmp_path, method):
    overrides = BASE + method
    mp.spawn(worker, args=(2, free_port(), overrides, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    params, masks = trained(overrides)
    for r_params, r_masks in ranks:
        assert r_params.keys() == params.keys() and r_masks.keys() == masks.keys()
        for n in params:
            assert torch.allclose(r_params[n], params[n], atol=1e-5, rtol=1e-4), n
        for n in masks:
            assert torch.equal(r_masks[n], masks[n]), n
    assert all(torch.equal(ranks[0][0][n], ranks[1][0][n]) for n in params)  # bitwise across ranks
    if method:
        assert masks and not all(m.all() for m in masks.values())
        initial = trained(overrides[:-1] + ["method.t_p=1000"])[1]  # no mask update
        assert any(not torch.equal(initial[n], masks[n]) for n in masks)  # RigL moved them


def test_distributed_outside_torchrun_says_how_to_start_it():
    from omegaconf import OmegaConf

    from runner.distributed import setup
    from runner.errors import RunnerError
    env = {k: os.environ.pop(k) for k in ("WORLD_SIZE",) if k in os.environ}
    try:
        with pytest.raises(RunnerError, match="torchrun"):
            setup(OmegaConf.create({"enabled": True, "backend": None, "sync_bn": False}), "cpu")
    finally:
        os.environ.update(env)
