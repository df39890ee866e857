"""Datasets as tensors on the training device: splits, subsets, batches and the batch pipeline.

Images stay uint8 (N, C, H, W) on the device; a batch is an index slice, turned into floats in
[0, 1], passed through the phase's transforms and (when training) augmentations, and normalized
last, all as batched tensor operations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch

Transform = Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]


@dataclass
class Arrays:
    """What a reader returns: the dataset's own train and test parts, on the CPU."""

    x_train: torch.Tensor  # uint8 (N, C, H, W), or float for feature datasets
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: Optional[str] = None  # the directory or file read (recorded in result.json)
    files: Optional[Tuple[str, str]] = None  # the file (first image) read for each part's images


def check_shape(arrays: Arrays, shape: Sequence[int], name: str) -> None:
    """Every sample has the shape the dataset declares (`shape`); else a `DataError` naming the
    file read, the shape found and the shape expected."""
    from runner.errors import DataError

    expected = tuple(int(s) for s in shape)
    for i, part in enumerate(("train", "test")):
        found = tuple(getattr(arrays, f"x_{part}").shape[1:])
        if found != expected:
            where = arrays.files[i] if arrays.files else arrays.source or f"{name}'s reader"
            raise DataError(f"{where} holds {part} images of shape {found}, but {name} declares "
                            f"shape {list(expected)}; provide the right files, or set the "
                            f"dataset's shape (and reader options) to match")


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.y.shape[0]

    def take(self, idx: torch.Tensor) -> "Split":
        return Split(self.x[idx], self.y[idx])


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split


def val_count(n: int, val_fraction: float) -> int:
    """How many of a training set's n samples the validation split holds out."""
    return int(round(val_fraction * n))


def split_train_val(arrays: Arrays, val_fraction: float, seed: int, device) -> Splits:
    """Hold out `val_fraction` of the training set (a permutation drawn from `seed`)."""
    n = len(arrays.y_train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = val_count(n, val_fraction)
    train = Split(arrays.x_train, arrays.y_train).take(perm[n_val:])
    val = Split(arrays.x_train, arrays.y_train).take(perm[:n_val])
    test = Split(arrays.x_test, arrays.y_test)
    return Splits(*(Split(s.x.to(device), s.y.to(device)) for s in (train, val, test)))


def subset_indices(n: int, seed: int, fraction: Optional[float] = None, count: Optional[int] = None,
                   chunks: Optional[int] = None, chunk: int = 0, access: str = "full"
                   ) -> Optional[torch.Tensor]:
    """Indices of the part of an n-sample training set a phase sees; None for all of it.

    The same seed gives the same permutation in every phase, so 50 % of the data is a subset of
    100 % (warm start) and continual chunks are disjoint pieces of one order.
    """
    if fraction is None and count is None and chunks is None:
        return None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    if fraction is not None:
        return perm[: int(round(fraction * n))]
    if count is not None:
        if count > n:
            raise ValueError(f"subset.n={count} exceeds the {n} training samples")
        return perm[:count]
    size = n // chunks
    if access == "full":
        return perm[: (chunk + 1) * size]
    if access == "limited":
        return perm[chunk * size: (chunk + 1) * size]
    raise ValueError(f"subset.access={access!r}; valid: 'full', 'limited'")


class Pipeline:
    """uint8 batch -> float in [0, 1] -> transforms -> augmentations (train) -> normalization.

    `deterministic` is the part that does not depend on randomness or on train/eval (the trainer
    may apply it once to a whole split and keep the result); `random` is the rest.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], transforms: List[Transform],
                 augment: List[Transform], device):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.transforms, self.augment = transforms, augment

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self.mean, self.inv_std
        if mean.shape[1] != x.shape[1]:  # one-channel stats of data made RGB: broadcast
            mean, inv_std = mean.mean(1, keepdim=True), inv_std.mean(1, keepdim=True)
        return (x - mean).mul_(inv_std)

    def deterministic(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:  # feature vectors (synthetic tasks) are used as they are
            return x
        x = x.float().mul_(1.0 / 255)
        for t in self.transforms:
            x = t(x, None)
        return x if self.augment else self.normalize(x)

    def random(self, x: torch.Tensor, train: bool, gen: Optional[torch.Generator]) -> torch.Tensor:
        if not self.augment or x.dim() != 4:
            return x
        if train:
            for t in self.augment:
                x = t(x, gen)
        return self.normalize(x)

    def __call__(self, x: torch.Tensor, train: bool, gen: Optional[torch.Generator]) -> torch.Tensor:
        return self.random(self.deterministic(x), train, gen)

    def prepare(self, split: Split, chunk: int = 4096) -> Split:
        """The split with `deterministic` applied once (in chunks), for reuse every epoch."""
        if len(split) == 0:
            return split
        x = torch.cat([self.deterministic(split.x[i:i + chunk]) for i in range(0, len(split), chunk)])
        return Split(x, split.y)


def batches(split: Split, batch_size: Optional[int], gen: Optional[torch.Generator],
            shuffle: bool = True, limit: Optional[int] = None
            ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Index-slice batches of a split (a fresh permutation from `gen` when shuffling; a full
    batch is used as it is, its order being irrelevant to the step). A streamed split
    (runner.data.stream) gives its own batches."""
    if hasattr(split, "batches"):
        return split.batches(batch_size, gen, shuffle, limit)
    n = len(split)
    if 0 < n <= (batch_size or n) and limit != 0:
        return ((split.x, split.y),)
    return _slices(split, batch_size, gen, shuffle, limit)


def _slices(split: Split, batch_size: Optional[int], gen: Optional[torch.Generator],
            shuffle: bool, limit: Optional[int]) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    n = len(split)
    bs = n if batch_size is None else min(batch_size, n)
    order = (torch.randperm(n, generator=gen, device="cpu").to(split.y.device)
             if shuffle and bs < n else None)
    for b, start in enumerate(range(0, n, bs)):
        if limit is not None and b >= limit:
            return
        if order is None:
            yield split.x[start:start + bs], split.y[start:start + bs]
        else:
            idx = order[start:start + bs]
            yield split.x[idx], split.y[idx]
