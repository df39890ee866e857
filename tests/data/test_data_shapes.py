"""Images whose shape differs from the dataset's declared `shape` are refused when read, in one
line naming the file, the shape found and the shape expected: each file reader, with files
written here in its own format."""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from runner.results import load_results

RUN = ["experiment=fmnist_mlp", "device=cpu", "threads=1", "train.max_epochs=1"]


def idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def idx_set(d: Path, prefixes, train_hw, test_hw=(28, 28)) -> None:
    d.mkdir(parents=True)
    for prefix, hw in zip(prefixes, (train_hw, test_hw)):
        idx(d / f"{prefix}-images-idx3-ubyte.gz", np.zeros((6, *hw)))
        idx(d / f"{prefix}-labels-idx1-ubyte.gz", np.arange(6) % 2 + 1)


def cifar(d: Path) -> None:
    d.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
        (d / name).write_bytes(pickle.dumps(batch))


def svhn(d: Path) -> None:
    from scipy.io import savemat
    d.mkdir(parents=True)
    for part, hw in (("train", (30, 32)), ("test", (32, 32))):
        savemat(d / f"{part}_32x32.mat", {"X": np.zeros((*hw, 3, 5), np.uint8),
                                            "y": (np.arange(5) + 1).reshape(-1, 1)})


def png(path: Path, size) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)


def folder(d: Path, sizes) -> None:
    for split in ("train", "test"):
        for i, size in enumerate(sizes):
            png(d / split / "cat" / f"{i}.png", size)


def tiny_imagenet(d: Path) -> None:
    base = d / "tiny-imagenet-200"
    png(base / "train" / "n01" / "images" / "a.JPEG", (16, 16))
    png(base / "val" / "images" / "v.JPEG", (16, 16))
    (base / "wnids.txt").write_text("n01\n")
    (base / "val" / "val_annotations.txt").write_text("v.JPEG\tn01\t0\t0\t16\t16\n")


CASES = [  # (dataset, overrides, writes the files into data_root/DIR, file named, found, expected)
    ("mnist", [], lambda d: idx_set(d / "mnist", ("train", "t10k"), (27, 27)),
     "mnist/train-images-idx3-ubyte.gz", "(1, 27, 27)", "[1, 28, 28]"),
    ("kmnist", [], lambda d: idx_set(d / "kmnist", ("train", "t10k"), (28, 28), (28, 30)),
     "kmnist/t10k-images-idx3-ubyte.gz", "(1, 28, 30)", "[1, 28, 28]"),
    ("emnist_letters", [],  # stored transposed: read back as (1, 27, 28)
     lambda d: idx_set(d / "emnist", ("emnist-letters-train", "emnist-letters-test"), (28, 27)),
     "emnist-letters-train-images-idx3-ubyte.gz", "(1, 27, 28)", "[1, 28, 28]"),
    ("cifar10", ["dataset.shape=[3,28,28]"], lambda d: cifar(d / "cifar10" / "cifar-10-batches-py"),
     "cifar-10-batches-py/data_batch_1", "(3, 32, 32)", "[3, 28, 28]"),
    ("svhn", [], lambda d: svhn(d / "svhn"), "svhn/train_32x32.mat", "(3, 30, 32)", "[3, 32, 32]"),
    ("caltech101", ["dataset.reader.size=null"], lambda d: folder(d / "caltech101", [(20, 20)]),
     "caltech101/train/cat/0.png", "(3, 20, 20)", "[3, 224, 224]"),
    ("caltech101", ["dataset.reader.size=24"], lambda d: folder(d / "caltech101", [(20, 20)]),
     "caltech101/train/cat/0.png", "(3, 24, 24)", "[3, 224, 224]"),
    ("caltech101", ["dataset.reader.size=null"],  # each file's own size: they must agree
     lambda d: folder(d / "caltech101", [(20, 20), (20, 24)]), "caltech101/train/cat/1.png",
     "(3, 24, 20)", "(3, 20, 20)"),
    ("tiny_imagenet", ["dataset.reader.size=null"], lambda d: tiny_imagenet(d / "tiny_imagenet"),
     "tiny-imagenet-200/train/n01/images/a.JPEG", "(3, 16, 16)", "[3, 64, 64]"),
]


@pytest.mark.sizes  # nine runs through the app
def test_images_of_another_shape_are_refused_naming_the_file(hydra_cli, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    problems = []
    for i, (dataset, extra, write, named, found, expected) in enumerate(CASES):
        root, out = tmp_path / f"data{i}", tmp_path / f"out{i}"
        write(root)
        code = hydra_cli(f"dataset={dataset}", *RUN, f"data_root={root}", *extra,
                         f"hydra.run.dir={out}")
        printed = capsys.readouterr()
        lines = [line for line in printed.err.splitlines() if line.strip()]
        statuses = [r["status"] for r in load_results([out])]
        if code != 1 or len(lines) != 1 or not all(s in lines[0] for s in (named, found, expected)) \
                or "Traceback" in printed.err or statuses not in ([], ["failed"]):
            problems.append(f"{dataset} {extra}: exit {code}, stderr {lines}, statuses {statuses}")
    assert not problems, "\n".join(problems)
