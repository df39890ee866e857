"""Every dataset config reads small files written in its native format; a missing dataset is one
clear message; Fashion-MNIST from the Debian package splits 54,000 / 6,000 / 10,000."""
import gzip
import pickle
import re
import struct

import numpy as np
import pytest
import torch
from hydra.utils import get_method
from omegaconf import OmegaConf
from PIL import Image

from conftest import CONF, needs_fashion_mnist
from runner.data import readers
from runner.data.folders import tiny_imagenet
from runner.data.synthetic import shapes_only
from runner.data.tensors import split_train_val
from runner.errors import DataError, DatasetMissing

MINE = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml") if p.stem != "reinit_synthetic")
FOLDERS = ["oxford_pets", "stanford_dogs", "cars196", "caltech101", "cassava", "cub200_2010",
           "resisc45", "pcam", "imagenet"]
GENERATED = {"digits", "synthetic"}  # need no files


def instantiate(node):
    """Call a reader config's `_target_` (errors propagate unwrapped, as in the trainer)."""
    kwargs = OmegaConf.to_container(node, resolve=True)
    return get_method(kwargs.pop("_target_"))(**kwargs)


def reader(compose_cfg, name, root):
    """A dataset's reader as configured, offline (`download=false` where it has the option)."""
    cfg = compose_cfg([f"dataset={name}", f"data_root={root}"])
    if "download" in cfg.dataset.reader:
        cfg.dataset.reader.download = False
    return cfg.dataset, lambda: instantiate(cfg.dataset.reader)


def write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def images(n, c, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


# the name a missing-dataset message gives, and the files its fix asks for (readers not listed:
# the config's `reader.name`)
TITLES = {"mnist": "MNIST", "kmnist": "KMNIST", "fashion_mnist": "Fashion-MNIST",
          "emnist_letters": "EMNIST letters", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
          "svhn": "SVHN", "tiny_imagenet": "Tiny ImageNet"}
IDX = "the four IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz"
WHAT = {"mnist": IDX, "kmnist": IDX, "fashion_mnist": IDX,
        "emnist_letters": "emnist-letters-{train,test}-{images-idx3,labels-idx1}-ubyte.gz",
        "cifar10": "the python-version batches cifar-10-batches-py/ (data_batch_1, data_batch_2, "
                   "data_batch_3, data_batch_4, data_batch_5, test_batch)",
        "cifar100": "the python-version batches cifar-100-python/ (train, test)",
        "svhn": "train_32x32.mat, test_32x32.mat",
        "tiny_imagenet": "the unpacked tiny-imagenet-200.zip "
                         "(http://cs231n.stanford.edu/tiny-imagenet-200.zip)"}
DOWNLOADABLE = {"mnist", "kmnist", "fashion_mnist", "emnist_letters", "cifar10", "cifar100", "svhn"}


@pytest.mark.parametrize("name", [n for n in MINE if n not in GENERATED])
def test_missing_dataset_is_one_clear_message(compose_cfg, tmp_path, monkeypatch, name):
    monkeypatch.setattr("runner.data.readers.DEBIAN_FASHION_MNIST", str(tmp_path / "no_debian"))
    ds, read = reader(compose_cfg, name, tmp_path / "nothing")
    with pytest.raises(DatasetMissing) as e:
        read()
    msg = str(e.value)
    assert str(tmp_path / "nothing") in msg and "dataset.reader.root" in msg
    assert msg.startswith(f"dataset {TITLES.get(name) or ds.reader.name} not found (looked in: ")
    assert ("download=true" in msg) == (name in DOWNLOADABLE)  # only where torchvision has it
    if name in WHAT:  # the fix names the files and where they go
        where = ds.reader.root or f"{ds.reader.data_root}/{name}"  # Fashion-MNIST: data_root/...
        assert f"put {WHAT[name]} into {where} (" in msg


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


def test_idx_files_may_be_uncompressed(tmp_path):
    x = images(2, 1, 28, 28)[:, 0]
    for p in ("train", "t10k"):
        write_idx(tmp_path / f"{p}-images-idx3-ubyte.gz", x)
        write_idx(tmp_path / f"{p}-labels-idx1-ubyte.gz", [3, 4])
        for kind in ("images-idx3", "labels-idx1"):  # as `gunzip` leaves them
            gz = tmp_path / f"{p}-{kind}-ubyte.gz"
            gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
            gz.unlink()
    a = readers.mnist(str(tmp_path))
    assert torch.equal(a.x_test[:, 0], torch.from_numpy(x)) and a.y_train.tolist() == [3, 4]


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
    assert a.y_train.dtype == a.y_test.dtype == torch.int64 and a.source == str(d)


def save_svhn(path, x, y):
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"X": x.transpose(2, 3, 1, 0), "y": np.asarray(y).reshape(-1, 1)})


def test_svhn_extra_joins_training_in_torchvisions_folder(tmp_path):
    d = tmp_path / "svhn"  # torchvision's layout: root/svhn/*.mat
    x, xt, xe = images(2, 3, 32, 32), images(1, 3, 32, 32, 1), images(3, 3, 32, 32, 2)
    save_svhn(d / "train_32x32.mat", x, [10, 1])
    save_svhn(d / "test_32x32.mat", xt, [2])
    save_svhn(d / "extra_32x32.mat", xe, [3, 10, 4])
    a = readers.svhn(str(tmp_path))
    assert len(a.y_train) == 2 and a.source == str(d)
    a = readers.svhn(str(tmp_path), extra=True)
    assert torch.equal(a.x_train, torch.from_numpy(np.concatenate([x, xe])))
    assert a.y_train.tolist() == [0, 1, 3, 0, 4] and a.y_test.tolist() == [2]


def py2_pickle(d):
    """What Python 2's cPickle.dump(d, f, 2) writes for a dict of str -> list of ints (the CIFAR
    site's batches are such pickles: their keys load as bytes only with encoding="bytes")."""
    out = b"\x80\x02}("  # PROTO 2, EMPTY_DICT, MARK
    for k, v in d.items():
        out += b"U" + bytes([len(k)]) + k  # SHORT_BINSTRING: a Python 2 str
        out += b"](" + b"".join(b"K" + bytes([int(i)]) for i in v) + b"e"  # list of small ints
    return out + b"u."  # SETITEMS, STOP


def test_cifar_batches_as_python_2_wrote_them(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    x = images(2, 3, 32, 32)
    (d / "train").write_bytes(py2_pickle({b"data": x.reshape(-1), b"fine_labels": [5, 99],
                                          b"coarse_labels": [1, 2]}))
    (d / "test").write_bytes(py2_pickle({b"data": x[:1].reshape(-1), b"fine_labels": [7],
                                         b"coarse_labels": [3]}))
    a = readers.cifar100(str(tmp_path))
    assert a.x_train.dtype == torch.uint8 and torch.equal(a.x_train, torch.from_numpy(x))
    assert a.y_train.tolist() == [5, 99] and a.y_test.tolist() == [7]
    assert a.y_train.dtype == torch.int64 and a.source == str(d)


def error_line(parse, path):
    """The one-line reason a parser gives for `path`, as a corrupt-file message quotes it."""
    with pytest.raises(Exception) as e:
        parse(path)
    return " ".join(f"{type(e.value).__name__}: {e.value}".split())


@pytest.mark.parametrize("keep", [0, 100, 1000])  # bytes left of a .mat cut short
def test_a_corrupt_file_is_one_line_naming_it_and_the_reason(tmp_path, keep):
    from scipy.io import loadmat

    mat = tmp_path / "train_32x32.mat"
    save_svhn(mat, images(2, 3, 32, 32), [1, 2])
    save_svhn(tmp_path / "test_32x32.mat", images(1, 3, 32, 32), [1])
    mat.write_bytes(mat.read_bytes()[:keep])
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_pickle(d / f, images(1, 3, 32, 32), [1], b"labels")
    (d / "data_batch_3").write_bytes((d / "data_batch_3").read_bytes()[:keep + 50])
    for read, bad, parse in ((readers.svhn, mat, loadmat),
                             (readers.cifar10, d / "data_batch_3",
                              lambda p: pickle.load(open(p, "rb"), encoding="bytes"))):
        with pytest.raises(DataError) as e:
            read(str(tmp_path))
        assert str(e.value) == (f"{bad} is corrupt or truncated ({error_line(parse, bad)}); "
                                f"delete it and provide it again")


def test_images_and_labels_that_do_not_pair_up_name_the_file(tmp_path):
    save_svhn(tmp_path / "svhn" / "train_32x32.mat", images(3, 3, 32, 32), [1, 2])
    save_svhn(tmp_path / "svhn" / "test_32x32.mat", images(1, 3, 32, 32), [1])
    with pytest.raises(DataError, match=f"^{tmp_path}/svhn/train_32x32.mat holds 3 images but 2 "
                                        f"labels$"):
        readers.svhn(str(tmp_path))
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    write_pickle(d / "train", images(2, 3, 32, 32), [1, 2, 3], b"fine_labels")
    write_pickle(d / "test", images(1, 3, 32, 32), [1], b"fine_labels")
    with pytest.raises(DataError, match=f"^{d}/train holds 2 images but 3 labels$"):
        readers.cifar100(str(tmp_path))


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
    assert a.y_train.dtype == torch.int64
    torch.manual_seed(1)  # the split follows `seed` alone; the defaults are the config's
    again, other = readers.digits(), readers.digits(seed=1)
    assert torch.equal(again.y_test, a.y_test) and torch.equal(again.x_train, a.x_train)
    assert not torch.equal(other.y_test, a.y_test)


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
    assert a.x_train.dtype == a.x_test.dtype == torch.uint8  # images, the full byte range
    assert a.x_train.min() == 0 and a.x_train.max() == 255
    assert a.y_train.bincount().tolist() == [128] * 4 and a.y_test.bincount().tolist() == [32] * 4


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_synthetic_data_follow_the_seed_alone_bitwise(dtype):
    def draw(seed, global_seed):
        torch.manual_seed(global_seed)  # the global generator must not matter
        return shapes_only([2, 3], 3, n_train=12, n_test=6, seed=seed, dtype=dtype)

    a, again, other = draw(0, 1), draw(0, 2), draw(1, 1)
    for part in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, part), getattr(again, part)), part
    assert not torch.equal(a.x_train, other.x_train) and not torch.equal(a.y_train, other.y_train)
    assert a.x_train.shape == (12, 2, 3) and a.x_test.shape == (6, 2, 3)
    assert a.x_train.dtype == getattr(torch, dtype) and a.y_test.bincount().tolist() == [2] * 3


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


def test_tiny_imagenet_resizes_and_records_its_folder(tmp_path):
    base = tmp_path  # the root itself may be the unpacked tiny-imagenet-200/
    (base / "wnids.txt").write_text("n01\nn02\n")
    for i, w in enumerate(["n01", "n02"]):
        write_png(base / "train" / w / "images" / f"{w}_0.JPEG", (250 * i, 0, 0), 64)
    for name, color in (("val 0.JPEG", (0, 0, 250)), ("val_1.JPEG", (0, 250, 0))):
        write_png(base / "val" / "images" / name, color, 64)  # file names may hold spaces
    (base / "val" / "val_annotations.txt").write_text("val 0.JPEG\tn02\t0\t0\t63\t63\n\n"
                                                      "val_1.JPEG\tn01\t0\t0\t63\t63\n")
    a = tiny_imagenet(str(tmp_path))
    assert a.x_train.shape == (2, 3, 64, 64) and a.x_test.shape == (2, 3, 64, 64)
    assert a.source == str(base) and a.y_test.tolist() == [1, 0]
    small = tiny_imagenet(str(tmp_path), size=32)
    assert small.x_train.shape == (2, 3, 32, 32) and small.x_test.shape == (2, 3, 32, 32)
    assert small.x_test[0, 2].min() >= 245 and small.x_test[1, 1].min() >= 245  # blue, green
    assert small.x_train[1, 0].min() >= 245 and small.y_train.tolist() == [0, 1]


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


def write_mnist(d, n_train, n_test=1):
    d.mkdir(parents=True, exist_ok=True)
    for p, n in (("train", n_train), ("t10k", n_test)):
        write_idx(d / f"{p}-images-idx3-ubyte.gz", images(n, 1, 28, 28)[:, 0])
        write_idx(d / f"{p}-labels-idx1-ubyte.gz", [1] * n)


def test_fashion_mnist_looks_in_the_data_directory_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_mnist(tmp_path / "data" / "fashion_mnist", 3)  # the default data_root: ./data
    assert len(readers.fashion_mnist().y_train) == 3
    write_mnist(tmp_path / "elsewhere" / "fashion_mnist", 2)
    assert len(readers.fashion_mnist(data_root=str(tmp_path / "elsewhere")).y_train) == 2


def test_idx_files_that_do_not_pair_up_or_are_cut_short_say_so(tmp_path):
    write_mnist(tmp_path, 3)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", [1, 2])
    with pytest.raises(DataError, match=(
            f"^MNIST: {tmp_path}/train-images-idx3-ubyte.gz holds 3 images but "
            f"{tmp_path}/train-labels-idx1-ubyte.gz 2 labels; the files do not belong together$")):
        readers.mnist(str(tmp_path))
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(b"not gzip at all")
    reason = error_line(lambda p: gzip.open(p).read(), bad)
    with pytest.raises(DataError, match=re.escape(f"{bad} is corrupt or truncated ({reason}); delete it "
                                                  "and provide it again")):
        readers.read_idx(bad)
    raw = tmp_path / "raw"
    raw.mkdir()
    header = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 2, 28, 28)
    (raw / "cut").write_bytes(header + bytes(100))
    with pytest.raises(DataError, match=re.escape(
            f"{raw}/cut holds 116 bytes, its header promises 1584 (shape (2, 28, 28)): "
            "truncated or corrupt; provide it again")):
        readers.read_idx(raw / "cut")


def test_an_image_folder_reads_its_test_tree_in_the_asked_channels(tmp_path):
    from runner.data.folders import image_folder
    write_png(tmp_path / "train" / "a" / "1.png", (90, 90, 90), 6)
    write_png(tmp_path / "test" / "a" / "1.png", (30, 30, 30), 6)  # the default test directory
    a = image_folder("gray", str(tmp_path), size=4, channels=1)
    assert a.x_train.shape == a.x_test.shape == (1, 1, 4, 4)
    assert a.x_test.unique().tolist() == [30] and a.source == str(tmp_path)


def test_images_are_resized_bilinearly_and_an_empty_list_keeps_its_shape(tmp_path):
    from runner.data.folders import load_images
    pixels = images(1, 3, 8, 8)[0].transpose(1, 2, 0)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    got = load_images([tmp_path / "x.png"], 4)[0].permute(1, 2, 0).numpy()
    want = {m: np.asarray(Image.fromarray(pixels).resize((4, 4), m)) for m in (Image.BILINEAR, Image.BICUBIC)}
    assert np.array_equal(got, want[Image.BILINEAR]) and not np.array_equal(got, want[Image.BICUBIC])
    assert load_images([], 4, 1).shape == (0, 1, 4, 4) and load_images([], None, 3).shape == (0, 3, 0, 0)
    assert load_images([], 4).dtype == torch.uint8
