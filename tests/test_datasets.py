"""Every dataset config reads small files written in its native format; a missing dataset is one
clear message; Fashion-MNIST from the Debian package splits 54,000 / 6,000 / 10,000."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from hydra.utils import get_method
from omegaconf import OmegaConf
from PIL import Image

from conftest import CONF, needs_fashion_mnist
from runner.data.tensors import split_train_val
from runner.errors import DatasetMissing

MINE = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml") if p.stem != "reinit_synthetic")
FOLDERS = ["oxford_pets", "stanford_dogs", "cars196", "caltech101", "cassava", "cub200_2010",
           "resisc45", "pcam", "imagenet"]
GENERATED = {"digits", "synthetic"}  # need no files


def instantiate(node):
    """Call a reader config's `_target_` (errors propagate unwrapped, as in the trainer)."""
    kwargs = OmegaConf.to_container(node, resolve=True)
    return get_method(kwargs.pop("_target_"))(**kwargs)


def reader(compose_cfg, name, root):
    cfg = compose_cfg([f"dataset={name}", f"data_root={root}"])
    return cfg.dataset, lambda: instantiate(cfg.dataset.reader)


def write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def images(n, c, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


@pytest.mark.parametrize("name", [n for n in MINE if n not in GENERATED])
def test_missing_dataset_is_one_clear_message(compose_cfg, tmp_path, monkeypatch, name):
    monkeypatch.setattr("runner.data.readers.DEBIAN_FASHION_MNIST", str(tmp_path / "no_debian"))
    _, read = reader(compose_cfg, name, tmp_path / "nothing")
    with pytest.raises(DatasetMissing) as e:
        read()
    msg = str(e.value)
    assert str(tmp_path / "nothing") in msg and "dataset.reader.root" in msg
    assert "not found" in msg


@needs_fashion_mnist
def test_fashion_mnist_from_the_debian_package(compose_cfg, tmp_path):
    ds, read = reader(compose_cfg, "fashion_mnist", tmp_path)
    a = read()
    s = split_train_val(a, 0.1, 0, "cpu")
    assert (len(s.train), len(s.val), len(s.test)) == (54_000, 6_000, 10_000)
    assert a.x_train.shape[1:] == tuple(ds.shape) and a.x_train.dtype == torch.uint8
    assert sorted(a.y_test.unique().tolist()) == list(range(10))


@pytest.mark.parametrize("name,sub,prefix", [("mnist", "", "t10k"),
                                             ("kmnist", "KMNIST/raw", "t10k")])
def test_idx_datasets(compose_cfg, tmp_path, name, sub, prefix):
    d = tmp_path / name / sub
    d.mkdir(parents=True)
    x, xt = images(5, 1, 28, 28)[:, 0], images(3, 1, 28, 28, seed=1)[:, 0]
    for p, xs, ys in (("train", x, [0, 1, 2, 3, 4]), (prefix, xt, [9, 8, 7])):
        write_idx(d / f"{p}-images-idx3-ubyte.gz", xs)
        write_idx(d / f"{p}-labels-idx1-ubyte.gz", ys)
    ds, read = reader(compose_cfg, name, tmp_path)
    a = read()
    assert torch.equal(a.x_train[:, 0], torch.from_numpy(x)) and a.y_train.tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(a.x_test[:, 0], torch.from_numpy(xt)) and a.y_test.tolist() == [9, 8, 7]
    assert a.x_train.shape[1:] == tuple(ds.shape)


def test_emnist_letters_transposes_and_shifts_labels(compose_cfg, tmp_path):
    d = tmp_path / "emnist" / "EMNIST" / "raw"
    d.mkdir(parents=True)
    x, xt = images(3, 1, 28, 28)[:, 0], images(2, 1, 28, 28, seed=1)[:, 0]
    for p, xs, ys in (("train", x, [1, 2, 26]), ("test", xt, [26, 5])):
        write_idx(d / f"emnist-letters-{p}-images-idx3-ubyte.gz", xs)
        write_idx(d / f"emnist-letters-{p}-labels-idx1-ubyte.gz", ys)
    ds, read = reader(compose_cfg, "emnist_letters", tmp_path)
    a = read()
    assert torch.equal(a.x_train[:, 0], torch.from_numpy(x).transpose(1, 2))
    assert torch.equal(a.x_test[:, 0], torch.from_numpy(xt).transpose(1, 2))
    assert a.y_train.tolist() == [0, 1, 25] and a.y_test.tolist() == [25, 4] and ds.num_classes == 26


def write_pickle(path, data, labels, key):
    with open(path, "wb") as f:
        pickle.dump({b"data": data.reshape(len(data), -1), key: list(labels)}, f)


def test_cifar10_pickled_batches(compose_cfg, tmp_path):
    d = tmp_path / "cifar10" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        write_pickle(d / f"data_batch_{i}", images(2, 3, 32, 32, i), [i, i + 1], b"labels")
    write_pickle(d / "test_batch", images(3, 3, 32, 32, 9), [7, 8, 9], b"labels")
    ds, read = reader(compose_cfg, "cifar10", tmp_path)
    a = read()
    assert a.x_train.shape == (10, 3, 32, 32) and a.x_test.shape == (3, 3, 32, 32)
    assert torch.equal(a.x_train[:2], torch.from_numpy(images(2, 3, 32, 32, 1)))  # CHW order
    assert a.y_train.tolist()[:4] == [1, 2, 2, 3] and a.y_test.tolist() == [7, 8, 9]


def test_cifar100_fine_labels(compose_cfg, tmp_path):
    d = tmp_path / "cifar100" / "cifar-100-python"
    d.mkdir(parents=True)
    for part, n, fine in (("train", 4, [99, 0, 42, 7]), ("test", 2, [3, 98])):
        with open(d / part, "wb") as f:
            pickle.dump({b"data": images(n, 3, 32, 32, n).reshape(n, -1),
                         b"fine_labels": fine, b"coarse_labels": [1] * n}, f)
    _, read = reader(compose_cfg, "cifar100", tmp_path)
    a = read()
    assert a.y_train.tolist() == [99, 0, 42, 7] and a.y_test.tolist() == [3, 98]
    assert torch.equal(a.x_test, torch.from_numpy(images(2, 3, 32, 32, 2)))


def test_svhn_mat_files(compose_cfg, tmp_path):
    from scipy.io import savemat

    d = tmp_path / "svhn"
    d.mkdir()
    x, xt = images(3, 3, 32, 32), images(2, 3, 32, 32, seed=1)
    # .mat layout: X is (32, 32, 3, N), y is (N, 1), 10 = digit 0
    savemat(d / "train_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": [[10], [1], [9]]})
    savemat(d / "test_32x32.mat", {"X": xt.transpose(2, 3, 1, 0), "y": [[3], [10]]})
    _, read = reader(compose_cfg, "svhn", tmp_path)
    a = read()
    assert torch.equal(a.x_train, torch.from_numpy(x)) and a.y_train.tolist() == [0, 1, 9]
    assert torch.equal(a.x_test, torch.from_numpy(xt)) and a.y_test.tolist() == [3, 0]


def test_digits_from_scikit_learn(compose_cfg, tmp_path):
    ds, read = reader(compose_cfg, "digits", tmp_path)
    a = read()
    assert len(a.y_train) + len(a.y_test) == 1797 and a.x_train.shape[1:] == tuple(ds.shape)
    assert a.x_train.max() == 255 and len(a.y_test) == 359
    from collections import Counter

    from sklearn.datasets import load_digits

    d = load_digits()  # every (image, label) pair once, in train or test
    pairs = Counter((bytes(np.rint(img * 255 / 16).astype(np.uint8)), int(y))
                    for img, y in zip(d.images, d.target))
    ours = Counter((bytes(x[0].numpy()), int(y)) for part in ((a.x_train, a.y_train),
                                                               (a.x_test, a.y_test))
                   for x, y in zip(*part))
    assert ours == pairs and set(a.y_test.tolist()) == set(range(10))


@pytest.mark.parametrize("name", ["digits", pytest.param("fashion_mnist", marks=needs_fashion_mnist)])
def test_configured_mean_and_std_are_the_training_sets(compose_cfg, tmp_path, name):
    ds, read = reader(compose_cfg, name, tmp_path)
    x = read().x_train.float() / 255
    assert ds.mean[0] == pytest.approx(x.mean().item(), abs=1e-3)
    assert ds.std[0] == pytest.approx(x.std().item(), abs=1e-3)


def test_synthetic_shapes(compose_cfg, tmp_path):
    cfg = compose_cfg(["dataset=synthetic", "dataset.shape=[3,8,8]", "dataset.num_classes=4"])
    a = instantiate(cfg.dataset.reader)
    assert a.x_train.shape == (512, 3, 8, 8) and set(a.y_train.tolist()) == {0, 1, 2, 3}


def write_png(path, color, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


def test_tiny_imagenet_archive_layout(compose_cfg, tmp_path):
    base = tmp_path / "tiny_imagenet" / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for i, w in enumerate(wnids):
        for j in range(2):
            img = base / "train" / w / "images" / f"{w}_{j}.JPEG"
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), (200 * i, 50, 0)).save(img, "JPEG", quality=100)
    (base / "val" / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64), (0, 0, 200)).save(base / "val/images/val_0.JPEG", "JPEG")
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t63\t63\n")
    ds, read = reader(compose_cfg, "tiny_imagenet", tmp_path)
    a = read()
    assert a.x_train.shape == (4, 3, 64, 64) and a.y_train.tolist() == [0, 0, 1, 1]
    assert a.y_test.tolist() == [1] and abs(int(a.x_train[2, 0, 5, 5]) - 200) <= 2


@pytest.mark.parametrize("name", FOLDERS)
def test_image_folder_datasets(compose_cfg, tmp_path, name):
    root = tmp_path / name
    cfg = compose_cfg([f"dataset={name}", f"data_root={tmp_path}"])
    test_dir = cfg.dataset.reader.test
    write_png(root / "train" / "b_class" / "1.png", (255, 0, 0), 10)
    write_png(root / "train" / "a_class" / "1.png", (0, 255, 0), 12)
    write_png(root / "train" / "a_class" / "2.png", (0, 255, 0), 12)
    write_png(root / test_dir / "b_class" / "x.png", (255, 0, 0), 20)
    a = instantiate(cfg.dataset.reader)
    size = cfg.dataset.shape[-1]
    assert a.x_train.shape == (3, 3, size, size) and a.x_test.shape == (1, 3, size, size)
    assert a.y_train.tolist() == [0, 0, 1] and a.y_test.tolist() == [1]  # sorted class names
    assert a.x_test[0, 0].min() == 255 and a.x_test[0, 1].max() == 0  # red, resized


def test_every_config_has_the_contract_keys(compose_cfg):
    for name in MINE:
        ds = compose_cfg([f"dataset={name}"]).dataset
        assert {"name", "reader", "shape", "num_classes", "mean", "std", "augment"} <= set(ds)
        channels = ds.shape[0] if len(ds.shape) == 3 else None
        assert channels is None or len(ds.mean) == len(ds.std) in (1, channels), name
