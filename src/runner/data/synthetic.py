"""Synthetic data readers (`dataset.reader: {_target_: runner.data.synthetic.shapes_only, ...}`):
shape-only sets (what test levels read instead of every dataset; conf/dataset/synthetic.yaml) and
the synthetic task of the reinitialization paper."""
from typing import Sequence

import torch

from runner.data.tensors import Arrays
from runner.targets import register


def shapes_only(shape: Sequence[int], num_classes: int, n_train: int = 64, n_test: int = 32,
                seed: int = 0, dtype: str = "uint8") -> Arrays:
    """Random inputs of the given shape with random labels (every class present when n allows);
    uint8 images, or N(0, 1) floats for any other `dtype` (feature datasets). One generator
    seeded with `seed` draws the training part, then the test part."""
    g = torch.Generator().manual_seed(seed)

    def part(n):
        if dtype == "uint8":
            x = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
        else:
            x = torch.randn((n, *shape), generator=g)
        y = torch.arange(n) % num_classes
        return x, y[torch.randperm(n, generator=g)]

    return Arrays(*part(n_train), *part(n_test))


def reinit_task(n_train: int = 256, n_test: int = 10000, alpha: float = 1.0, dim: int = 128,
                bits: int = 3, seed: int = 0) -> Arrays:
    """The synthetic task of Alabdulmohsin et al. 2021 (Sec. 1.1).

    y is uniform over {0, ..., 2^bits - 1}; the first `bits` coordinates of x are y in binary
    (most significant bit first) as +-alpha, the remaining `dim - bits` are i.i.d. N(0, 1).
    """
    g = torch.Generator().manual_seed(seed)

    def part(n):
        y = torch.randint(0, 2 ** bits, (n,), generator=g)
        x = torch.randn((n, dim), generator=g)
        powers = 2 ** torch.arange(bits - 1, -1, -1)
        x[:, :bits] = alpha * (2.0 * ((y[:, None] // powers) % 2) - 1.0)
        return x, y

    return Arrays(*part(n_train), *part(n_test))


register("reader", shapes_only, reinit_task)  # config slots of this kind may name them (runner.targets)
