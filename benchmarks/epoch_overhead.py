"""Runner epoch vs a minimal hand-written PyTorch loop, same process, same in-memory data.

    python benchmarks/epoch_overhead.py [--repeats 5] [--device cpu] [--experiment fmnist_mlp]
        [--mask 0.9] [--set train.precision=bf16 --set train.channels_last=true ...]

Both train the experiment's model (default: SWR's MLP 784-100-100-10, Adam, batch 256) for one
epoch of its first phase's training set (Fashion-MNIST: 54,000 images). The reference loop gets
the best case: images already normalized floats on the device, a device permutation, and the same
options the runner runs with (autocast dtype, channels_last, torch.compile). `--mask 0.9` prunes
90 % of every weight tensor at random: the runner through `method=random_mask` (its masks are
enforced by runner.sparse.masks), the reference by multiplying each weight by its 0/1 mask after every
step. Timings are interleaved and the median of each is compared; the printed ratio is
runner / reference (1.00 = no overhead).
"""
import argparse
import contextlib
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from runner.app import conf_dir
from runner.config import prepare
from runner.results import RunRecorder
from runner.train import Trainer
from runner.training.build import PRECISIONS


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--experiment", default="fmnist_mlp")
    p.add_argument("--mask", type=float, default=0.0, help="share of each weight tensor pruned")
    p.add_argument("--set", action="append", default=[], help="a config override (repeatable)")
    a = p.parse_args()
    overrides = [f"experiment={a.experiment}", f"device={a.device}", "seed=0", *a.set]
    if a.mask:
        overrides += ["method=random_mask", f"method.density={1 - a.mask}", "method.kind=pruned"]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    cfg = prepare(cfg)  # as a run's: a test level (--set ci=smoke) written into its options
    trainer = Trainer(cfg, RunRecorder(tempfile.mkdtemp(), {}))
    trainer.data.load_phase_data(trainer.parts.phases[0])  # the first steps of Trainer.fit
    ctx = trainer.ctx
    ctx.phase = trainer.parts.phases[0]
    trainer.call_hook("setup")
    ctx.reset_optimizer()
    if cfg.train.compile:
        ctx.model = torch.compile(ctx.model)
    device = trainer.parts.device
    train = ctx.data.train
    x_ref = ctx.pipeline(train.x, False, None)  # normalized floats (channels-last if asked)
    y_ref = train.y
    ref_model = ctx.build_model()
    masks = {}
    with torch.no_grad():  # the runner's masks, applied by hand to the reference
        named = dict(ref_model.named_parameters())
        for name in ctx.masks.names():
            masks[named[name]] = ctx.masks[name].keep.to(named[name].dtype)
            named[name].mul_(masks[named[name]])
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=cfg.optim.lr)
    fwd = torch.compile(ref_model) if cfg.train.compile else ref_model
    amp = PRECISIONS[cfg.train.precision]
    bs = cfg.train.batch_size

    def reference_epoch():
        perm = torch.randperm(len(y_ref), device=device)
        for i in range(0, len(y_ref), bs):
            idx = perm[i:i + bs]
            with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
                loss = F.cross_entropy(fwd(x_ref[idx]), y_ref[idx])
            ref_opt.zero_grad(set_to_none=True)
            loss.backward()
            ref_opt.step()
            if masks:
                with torch.no_grad():
                    torch._foreach_mul_(list(masks), list(masks.values()))

    def runner_epoch():
        trainer.loop.train_epoch(bs, None)

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    reference_epoch(), runner_epoch()  # warm-up (and compilation)
    ref, run = [], []
    for _ in range(a.repeats):
        ref.append(timed(reference_epoch))
        run.append(timed(runner_epoch))
    r, m = statistics.median(ref), statistics.median(run)
    print(f"{a.experiment} on {device}, {len(y_ref)} images, batch {bs}, {a.repeats} interleaved "
          f"repeats; options: {' '.join(a.set) or 'defaults'}; mask: {a.mask:g}")
    print(f"reference loop: median {r:.3f} s/epoch  (all: {', '.join(f'{t:.3f}' for t in ref)})")
    print(f"runner epoch:   median {m:.3f} s/epoch  (all: {', '.join(f'{t:.3f}' for t in run)})")
    print(f"ratio runner/reference: {m / r:.3f}")


if __name__ == "__main__":
    main()
