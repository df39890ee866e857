"""Dataset readers: each returns `Arrays` (uint8 images N×C×H×W, int64 labels) on the CPU.

A reader looks in the configured root (and, where one exists and no root was given, a well-known
system location), downloads only when asked to, and otherwise fails with `DatasetMissing`, which
names the dataset, the paths it looked at and how to provide the data. A file that cannot be
parsed (truncated, corrupt) is a `DataError` naming it, and `Arrays.source` records the directory
read (the trainer writes it into result.json and checks labels against the classes).
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
import shutil
import struct
import tempfile
import zlib
from functools import partial
from pathlib import Path
from typing import Iterable, List

import numpy as np
import torch

from runner.data.tensors import Arrays
from runner.errors import DataError, DatasetMissing, DownloadFailed
from runner.targets import register

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def corrupt(path: Path, e: BaseException) -> DataError:
    reason = " ".join(f"{type(e).__name__}: {e}".split())
    return DataError(f"{path} is corrupt or truncated ({reason}); delete it and provide it again")


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (the MNIST family's format), gzip-compressed or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    except (OSError, EOFError, struct.error, zlib.error) as e:
        raise corrupt(path, e) from None
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    size = 4 + 4 * ndim + math.prod(shape)  # Python integers: a hostile header cannot overflow
    if len(data) != size:
        raise DataError(f"{path} holds {len(data)} bytes, its header promises {size} "
                        f"(shape {tuple(shape)}): truncated or corrupt; provide it again")
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
    files = []
    for prefix in prefixes:
        for kind in ("images-idx3", "labels-idx1"):
            f = _find(dirs, f"{prefix}-{kind}-ubyte")
            if f is None:
                raise DatasetMissing(name, dirs, how)
            files.append(f)
    xtr, ytr, xte, yte = map(read_idx, files)
    for (x, y), (fx, fy) in (((xtr, ytr), files[:2]), ((xte, yte), files[2:])):
        if x.dim() != 3 or y.dim() != 1:
            bad, dims = (fx, tuple(x.shape)) if x.dim() != 3 else (fy, tuple(y.shape))
            raise DataError(f"{bad} holds an array of shape {dims}; IDX images are (N, H, W) and "
                            f"labels (N,): provide the right file")
        if len(x) != len(y):
            raise DataError(f"{name}: {fx} holds {len(x)} images but {fy} {len(y)} labels; "
                            f"the files do not belong together")
    return Arrays(xtr.unsqueeze(1), ytr.long(), xte.unsqueeze(1), yte.long(),
                  source=str(files[0].parent), files=(str(files[0]), str(files[2])))


DOWNLOAD_HINT = ", or pass dataset.reader.download=true to fetch it with torchvision"


def how_to_provide(what: str, root: Path, download: bool = True) -> str:
    """The fix a `DatasetMissing` message suggests: where to put the files, which keys to set."""
    how = (f"put {what} into {root} (set dataset.reader.root=DIR, or data_root=DIR / "
           f"RUNNER_DATA for all datasets)")
    return how + (DOWNLOAD_HINT if download else "")


def torchvision_download(cls_name: str, root: Path, splits=({"train": True}, {"train": False}),
                         **kwargs) -> None:
    """Fetch a torchvision dataset into `root`, all or nothing: the files arrive in a staging
    folder beside `root` and move into it once every split is complete. On failure the staging
    folder and any folder made for it are removed."""
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    root = Path(root).absolute()
    made = next((p for p in reversed([root, *root.parents]) if not p.exists()), None)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.download-", dir=root.parent))
    try:
        for split in splits:
            cls(str(staging), download=True, **split, **kwargs)
        _move_into(staging, root)
    except BaseException:
        shutil.rmtree(made if made is not None and made != root else staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into(src: Path, dst: Path) -> None:
    """Move the tree `src` into `dst`, keeping files `dst` already has."""
    dst.mkdir(exist_ok=True)
    for item in src.iterdir():
        target = dst / item.name
        if item.is_dir() and target.is_dir():
            _move_into(item, target)
        elif not target.exists():
            os.replace(item, target)


def with_download(read, download: bool, fetch):
    """`read()`; if the data are missing and `download`, `fetch()` and read again. A failed
    download is one line (`DownloadFailed`) and leaves nothing behind."""
    try:
        return read()
    except DatasetMissing as missing:
        if not download:
            raise
        try:
            fetch()
        except Exception as e:
            raise DownloadFailed(missing.name, e, missing.how.removesuffix(DOWNLOAD_HINT)) from None
    return read()


def mnist_family(name: str, tv_class: str, root: str, download: bool = False,
                 extra_dirs: Iterable[str] = ()) -> Arrays:
    """MNIST-like IDX data in `root`, torchvision's `root/<Class>/raw`, or `extra_dirs`."""
    r = Path(root)
    dirs = [r, r / tv_class / "raw", *map(Path, extra_dirs)]
    how = how_to_provide("the four IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz", r)
    return with_download(lambda: idx_dataset(name, dirs, how=how), download,
                         lambda: torchvision_download(tv_class, r))


def fashion_mnist(root: str | None = None, download: bool = False, data_root: str = "data") -> Arrays:
    """Fashion-MNIST from `root` alone when given; else from `data_root/fashion_mnist`, then
    the Debian package `dataset-fashion-mnist`."""
    if root is not None:
        return mnist_family("Fashion-MNIST", "FashionMNIST", root, download)
    return mnist_family("Fashion-MNIST", "FashionMNIST", str(Path(data_root) / "fashion_mnist"),
                        download, extra_dirs=[DEBIAN_FASHION_MNIST])


def mnist(root: str, download: bool = False) -> Arrays:
    return mnist_family("MNIST", "MNIST", root, download)


def kmnist(root: str, download: bool = False) -> Arrays:
    """Kuzushiji-MNIST (Clanuwat et al. 2018): MNIST's file names and layout."""
    return mnist_family("KMNIST", "KMNIST", root, download)


def emnist_letters(root: str, download: bool = False) -> Arrays:
    """EMNIST letters (Cohen et al. 2017): `emnist-letters-*` IDX files in `root` or torchvision's
    `root/EMNIST/raw`. The files store images transposed (they are transposed back here) and
    labels 1..26 (shifted to 0..25, so the dataset has 26 classes)."""
    r = Path(root)
    dirs = [r, r / "EMNIST" / "raw"]
    how = how_to_provide("emnist-letters-{train,test}-{images-idx3,labels-idx1}-ubyte.gz", r)
    read = partial(idx_dataset, "EMNIST letters", dirs,
                   ("emnist-letters-train", "emnist-letters-test"), how)
    a = with_download(read, download, partial(torchvision_download, "EMNIST", r, split="letters"))
    return Arrays(a.x_train.transpose(2, 3).contiguous(), a.y_train - 1,
                  a.x_test.transpose(2, 3).contiguous(), a.y_test - 1, source=a.source, files=a.files)


def _cifar_batches(files: List[Path], label_key: bytes):
    """The pickled batches (pickles run code when loaded: only from a trusted source)."""
    xs, ys = [], []
    for f in files:
        try:
            with open(f, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError) as e:
            raise corrupt(f, e) from None
        if len(xs[-1]) != len(ys[-1]):
            raise DataError(f"{f} holds {len(xs[-1])} images but {len(ys[-1])} labels")
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _cifar(name: str, tv_class: str, folder: str, train: List[str], test: List[str],
           label_key: bytes, root: str, download: bool) -> Arrays:
    r = Path(root)
    dirs = [r / folder, r]

    def read():
        for d in dirs:
            if all((d / f).exists() for f in train + test):
                return Arrays(*_cifar_batches([d / f for f in train], label_key),
                              *_cifar_batches([d / f for f in test], label_key), source=str(d),
                              files=(str(d / train[0]), str(d / test[0])))
        raise DatasetMissing(name, dirs, how_to_provide(f"the python-version batches "
                                                        f"{folder}/ ({', '.join(train + test)})", r))
    return with_download(read, download, partial(torchvision_download, tv_class, r))


def cifar10(root: str, download: bool = False) -> Arrays:
    """CIFAR-10 (Krizhevsky 2009): the pickled batches of `cifar-10-batches-py/`."""
    return _cifar("CIFAR-10", "CIFAR10", "cifar-10-batches-py",
                  [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels",
                  root, download)


def cifar100(root: str, download: bool = False) -> Arrays:
    """CIFAR-100 with its 100 fine labels: the pickles `cifar-100-python/{train,test}`."""
    return _cifar("CIFAR-100", "CIFAR100", "cifar-100-python", ["train"], ["test"],
                  b"fine_labels", root, download)


def svhn(root: str, download: bool = False, extra: bool = False) -> Arrays:
    """SVHN cropped digits (Netzer et al. 2011): `{train,test[,extra]}_32x32.mat` in `root` (or
    torchvision's `root/svhn`). Label 10 stands for the digit 0 and becomes 0."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    r = Path(root)
    dirs = [r, r / "svhn"]
    parts = ["train", "test"] + (["extra"] if extra else [])

    def load(part):
        f = _find(dirs, f"{part}_32x32.mat")
        if f is None:
            raise DatasetMissing("SVHN", dirs, how_to_provide(
                ", ".join(f"{p}_32x32.mat" for p in parts), r))
        try:
            m = loadmat(f)
            x = torch.from_numpy(np.ascontiguousarray(m["X"].transpose(3, 2, 0, 1)))
            y = torch.from_numpy(m["y"].astype(np.int64).reshape(-1) % 10)
        except (OSError, ValueError, KeyError, TypeError, IndexError, MatReadError) as e:
            # scipy's errors for a file cut short in its 128-byte header: MatReadError, IndexError
            raise corrupt(f, e) from None
        if len(x) != len(y):
            raise DataError(f"{f} holds {len(x)} images but {len(y)} labels")
        return x, y, f

    def read():
        (xtr, ytr, ftr), (xte, yte, fte), *more = [load(p) for p in parts]
        if more:
            if more[0][0].shape[1:] != xtr.shape[1:]:
                raise DataError(f"{more[0][2]} holds images of shape {tuple(more[0][0].shape[1:])}, "
                                f"{ftr} of shape {tuple(xtr.shape[1:])}; provide the right file")
            xtr, ytr = torch.cat([xtr, more[0][0]]), torch.cat([ytr, more[0][1]])
        return Arrays(xtr, ytr, xte, yte, source=str(ftr.parent), files=(str(ftr), str(fte)))

    splits = [{"split": p} for p in parts]
    return with_download(read, download, partial(torchvision_download, "SVHN", r / "svhn", splits))


def digits(test_fraction: float = 0.2, seed: int = 0) -> Arrays:
    """scikit-learn's 8x8 digits (1,797 images, values 0..16 scaled to 0..255), split into train
    and test by a seeded permutation (the set has no official split)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(np.rint(d.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    return Arrays(x[tr], y[tr], x[te], y[te])


register("reader", fashion_mnist, mnist, kmnist, emnist_letters, cifar10, cifar100, svhn, digits)  # config slots of this kind may name them (runner.targets)
