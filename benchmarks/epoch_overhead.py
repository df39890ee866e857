"""Runner epoch vs a minimal hand-written PyTorch loop, same process, same in-memory data.

    python benchmarks/epoch_overhead.py [--repeats 5] [--device cpu]

Both train SWR's MLP (784-100-100-10) with Adam, batch 256, for one epoch of Fashion-MNIST's
54,000 training images. The reference loop gets the best case: images already normalized floats.
The runner's epoch goes through its real path (uint8 batches -> pipeline -> model -> loss ->
hooks -> step, with its running loss/accuracy bookkeeping). Timings are interleaved and the
median of each is compared; the printed ratio is runner / reference (1.00 = no overhead).
"""
import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from runner.app import conf_dir
from runner.results import RunRecorder
from runner.train import Trainer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--experiment", default="fmnist_mlp")
    a = p.parse_args()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={a.experiment}", f"device={a.device}"])
    trainer = Trainer(cfg, RunRecorder(tempfile.mkdtemp(), {}))
    trainer.load_stage_data(trainer.stages[0])
    ctx = trainer.ctx
    ctx.reset_optimizer()
    train = ctx.data.train
    x_ref = ctx.pipeline(train.x, False, None)  # pre-normalized floats for the reference
    y_ref = train.y
    ref_model = trainer.ctx.build_model()
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=cfg.optim.lr)
    bs = cfg.train.batch_size

    def reference_epoch():
        perm = torch.randperm(len(y_ref))
        for i in range(0, len(y_ref), bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(ref_model(x_ref[idx]), y_ref[idx])
            ref_opt.zero_grad(set_to_none=True)
            loss.backward()
            ref_opt.step()

    def runner_epoch():
        trainer.train_epoch(bs, None)

    def timed(fn):
        if torch.cuda.is_available() and a.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available() and a.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    reference_epoch(), runner_epoch()  # warm-up
    ref, run = [], []
    for _ in range(a.repeats):
        ref.append(timed(reference_epoch))
        run.append(timed(runner_epoch))
    r, m = statistics.median(ref), statistics.median(run)
    print(f"device {a.device}, {len(y_ref)} images, batch {bs}, {a.repeats} interleaved repeats")
    print(f"reference loop: median {r:.3f} s/epoch  (all: {', '.join(f'{t:.3f}' for t in ref)})")
    print(f"runner epoch:   median {m:.3f} s/epoch  (all: {', '.join(f'{t:.3f}' for t in run)})")
    print(f"ratio runner/reference: {m / r:.3f}")


if __name__ == "__main__":
    main()
