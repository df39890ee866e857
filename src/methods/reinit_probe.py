"""Measurements of the reinitialization paper's Sec. 4 at the end of a run (no intervention).

- `margins`: the smallest softmax margins p_y - max_{j != y} p_j on the training set (Figure 4);
- `weight_size`: ||input of the last linear layer on a random training batch of 256||_F times
  ||its weight||_F, the size of the weights with the normalization layers accounted (App. D,
  Figure 6);
- `perturb`: training loss and accuracy with every parameter perturbed by N(0, sigma^2), mean
  over `draws` draws, for each sigma (Figure 5).
"""
from __future__ import annotations

import copy
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Method
from runner.models import params


class ReinitProbe(Method):
    name = "reinit_probe"

    def __init__(self, margins: int = 400, sigmas: List[float] = (0.01, 0.02, 0.05, 0.1),
                 draws: int = 5, batch: int = 256):
        self.n_margins, self.sigmas, self.draws = int(margins), list(sigmas), int(draws)
        self.batch = int(batch)

    def outputs(self, ctx, model: nn.Module):
        return ctx.predict(ctx.data.train.x, model=model), ctx.data.train.y

    @torch.no_grad()
    def weight_size(self, ctx) -> float:
        model, train = ctx.model, ctx.data.train
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        seen = {}
        hook = last.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
        gen = torch.Generator().manual_seed(ctx.seed)
        idx = torch.randperm(len(train), generator=gen)[:self.batch].to(train.y.device)
        model(ctx.pipeline(train.x[idx], False, None))
        hook.remove()
        return (seen["x"].norm() * last.weight.detach().norm()).item()

    @torch.no_grad()
    def perturb(self, ctx) -> Dict[str, Dict[str, float]]:
        gen = torch.Generator().manual_seed(ctx.seed + 1)
        out = {}
        for sigma in self.sigmas:
            losses, accs = [], []
            for _ in range(self.draws):
                noisy = copy.deepcopy(ctx.model)
                for slot in params.slots(noisy):
                    w = slot.value()
                    slot.assign(w + sigma * torch.randn(w.shape, generator=gen).to(w.device))
                logits, y = self.outputs(ctx, noisy)
                losses.append(F.cross_entropy(logits, y).item())
                accs.append((logits.argmax(1) == y).float().mean().item())
            out[str(sigma)] = {"loss": sum(losses) / len(losses), "acc": sum(accs) / len(accs)}
        return out

    def on_phase_end(self, ctx) -> Dict:
        if ctx.phase.index != ctx.num_phases - 1:
            return {}
        was_training = ctx.model.training
        ctx.model.eval()
        logits, y = self.outputs(ctx, ctx.model)
        p = logits.softmax(1)
        true = p.gather(1, y[:, None]).squeeze(1)
        other = p.scatter(1, y[:, None], -1.0).max(1).values
        margins = (true - other).sort().values[:self.n_margins]
        result = {"margins": margins.tolist(), "weight_size": self.weight_size(ctx),
                  "perturb": self.perturb(ctx)}
        ctx.model.train(was_training)
        return result
