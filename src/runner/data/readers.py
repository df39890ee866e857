"""Dataset readers: each returns `Arrays` (uint8 images N×C×H×W, int64 labels) on the CPU.

A reader looks in the configured root (and, where one exists, a well-known system location),
downloads only when asked to, and otherwise fails with `DatasetMissing`, which names the dataset,
the paths it looked at and how to provide the data.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Iterable, List

import numpy as np
import torch

from runner.data.tensors import Arrays
from runner.errors import DatasetMissing

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (the MNIST family's format), gzip-compressed or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    return torch.from_numpy(arr.copy())


def _find(dirs: Iterable[Path], name: str) -> Path | None:
    for d in dirs:
        for candidate in (d / name, d / (name + ".gz")):
            if candidate.exists():
                return candidate
    return None


def idx_dataset(name: str, dirs: List[Path], prefixes=("train", "t10k"), how: str = "") -> Arrays:
    """Read the four IDX files `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`."""
    parts = []
    for prefix in prefixes:
        for kind in ("images-idx3", "labels-idx1"):
            f = _find(dirs, f"{prefix}-{kind}-ubyte")
            if f is None:
                raise DatasetMissing(name, dirs, how)
            parts.append(read_idx(f))
    xtr, ytr, xte, yte = parts
    return Arrays(xtr.unsqueeze(1), ytr.long(), xte.unsqueeze(1), yte.long())


def torchvision_download(cls_name: str, root: Path) -> None:
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    for train in (True, False):
        cls(str(root), train=train, download=True)


def mnist_family(name: str, tv_class: str, root: str, download: bool = False,
                 extra_dirs: Iterable[str] = ()) -> Arrays:
    """MNIST-like IDX data in `root`, torchvision's `root/<Class>/raw`, or `extra_dirs`."""
    r = Path(root)
    dirs = [r, r / tv_class / "raw", *map(Path, extra_dirs)]
    how = (f"pass dataset.reader.download=true to fetch it with torchvision, or put the four "
           f"IDX files into {r}")
    try:
        return idx_dataset(name, dirs, how=how)
    except DatasetMissing:
        if not download:
            raise
    torchvision_download(tv_class, r)
    return idx_dataset(name, dirs, how=how)


def fashion_mnist(root: str, download: bool = False) -> Arrays:
    """Fashion-MNIST; also found in the Debian package `dataset-fashion-mnist`."""
    return mnist_family("Fashion-MNIST", "FashionMNIST", root, download,
                        extra_dirs=[DEBIAN_FASHION_MNIST])


def mnist(root: str, download: bool = False) -> Arrays:
    return mnist_family("MNIST", "MNIST", root, download)
