"""A measurement, not an intervention: mutually frozen weights (runner.models.frozen) and the
simplified Fisher score (runner.models.fisher), written to result.json and metrics.csv.

Stack it after the method (`extra_methods`) so it measures what the method left. Per phase it
records, in result.json, the counts at the end (`frozen_filters`, `frozen_units`,
`frozen_double`, `frozen_triple`) and at the start, after the methods before it acted
(`start_frozen_...`: phase 1's start is the first task's end plus any intervention), and in
`totals` the denominator of each count (filters and units: the units that can freeze; double
and triple: all weights of the conv and linear layers), which the report prints beside them;
with `per_layer`, the counts of every layer; with `fisher_samples > 0`, the class-pair Fisher
score of the penultimate features of that many test samples (`fisher`, Fig. 6). Per epoch, in
metrics.csv: the counts with `every_epoch` (Fig. 3) and, with `pairs: k`, the pair norm sums of
the first k units of every layer (`pair/<layer>/<unit>`, Fig. 4).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from methods.base import Method
from runner.models.fisher import class_fisher, penultimate
from runner.models.frozen import CUTOFF, count_frozen, pair_norms, trace_layers

KEYS = {"filters": "countable_units", "units": "countable_units", "double": "weights",
        "triple": "weights"}  # count -> its denominator in count_frozen


class FrozenProbe(Method):
    name = "frozen_probe"

    def __init__(self, cutoff: float = CUTOFF, every_epoch: bool = False, per_layer: bool = False,
                 pairs: int = 0, fisher_samples: int = 0, fisher_classes: Optional[int] = 10):
        self.cutoff, self.every_epoch, self.per_layer = float(cutoff), every_epoch, per_layer
        self.pairs, self.fisher_samples, self.fisher_classes = pairs, fisher_samples, fisher_classes

    def setup(self, ctx) -> None:
        self.layers = trace_layers(ctx.model)
        c = count_frozen(self.layers, self.cutoff)  # the denominators depend on the layers only
        self.totals = {f"{p}frozen_{k}": c[total] for k, total in KEYS.items() for p in ("", "start_")}

    def counts(self, prefix: str = "", per_layer: bool = False) -> Dict:
        c = count_frozen(self.layers, self.cutoff)
        out = {f"{prefix}frozen_{k}": c[k] for k in KEYS}
        if per_layer:
            out[f"{prefix}frozen_layers"] = c["layers"]
        return out

    def on_phase_start(self, ctx) -> None:
        self.start = self.counts("start_")

    def state_dict(self):
        return {"start": getattr(self, "start", None)}

    def load_state_dict(self, state, ctx) -> None:
        if state["start"] is not None:
            self.start = state["start"]

    def on_epoch_end(self, ctx) -> Dict[str, float]:
        row = self.counts() if self.every_epoch else {}
        if self.pairs:
            for name, sums in pair_norms(self.layers).items():
                row.update({f"pair/{name}/{i}": float(v) for i, v in enumerate(sums[:self.pairs])})
        return row

    def on_phase_end(self, ctx) -> Dict:
        out = {**self.counts(per_layer=self.per_layer), **self.start, "totals": self.totals}
        if self.fisher_samples:
            out["fisher"] = self.fisher(ctx)
        return out

    def fisher(self, ctx) -> float:
        """The class-pair Fisher score of the first `fisher_samples` test samples' features."""
        split = ctx.data.test
        n = min(self.fisher_samples, len(split))
        feats = ctx.predict(split.x[:n], fn=penultimate)
        return class_fisher(feats.cpu(), split.y[:n].cpu(), self.fisher_classes)
