"""Sparsity: what a sparse network keeps, how it is chosen and how it is stored.

- `keep`: the counting and selection every sparse method shares: `keep_count` (entries a density
  keeps, with an explicit rounding rule), `layer_counts` (per-tensor budgets, uniform or ERK),
  `split_count` (one count split over tensors by size), `top_k` / `top_k_masks` (bool masks of
  the k largest or smallest scores, per tensor or over all), `SCOPES`.
- `masks`: the run's masks over stored parameters (`ctx.masks`), enforced by the trainer.
- `pruning`: pruning scores at initialization (random, magnitude, SNIP, USNIP, GraSP, SynFlow),
  their masks (`top_d`) and the sparsity of a masked model.
- `cops`: COPS, Algorithm 4.1 of Wimmer's thesis, over flat score vectors.
- `training`: what the sparse-training methods (SET, RigL, GMP, LTH, FT) share.
- `storage`: a FreezeNet on disk (trained entries, mask bits, seed).
"""
