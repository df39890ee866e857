"""`dataset.reader.download=true`: a failed download is one line and leaves nothing behind; a
complete one lands where the reader looks."""
import gzip
import shutil
import struct
from pathlib import Path
from urllib.error import URLError

import pytest
import torchvision

from runner.data import readers
from runner.errors import DatasetMissing, DownloadFailed


@pytest.fixture(autouse=True)
def rmtree_only_in_tmp_path(tmp_path, monkeypatch):
    """A download's clean-up removes folders: these tests let it remove nothing outside their own
    folder (a wrong path is a failure here, not a deleted machine, also under mutation testing)."""
    rmtree = shutil.rmtree

    def guarded(path, *args, **kwargs):
        assert Path(path).absolute().is_relative_to(tmp_path), f"rmtree({path}) outside {tmp_path}"
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", guarded)


def idx(path: Path, data: bytes, shape) -> None:
    path.write_bytes(gzip.compress(struct.pack(">HBB", 0, 8, len(shape))
                                   + struct.pack(f">{len(shape)}I", *shape) + data))


class FakeMNIST:
    """torchvision.datasets.MNIST's download: writes raw files into root/MNIST/raw; with
    `fail`, only part of the first file, then the error of a machine without network."""

    fail = True
    roots = []

    def __init__(self, root, train=True, download=False):
        if not download:  # as torchvision says when the files are not there
            raise RuntimeError("Dataset not found. You can use download=True to download it")
        FakeMNIST.roots.append(Path(root))
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        prefix, n = ("train", 3) if train else ("t10k", 2)
        if self.fail:
            (raw / f"{prefix}-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b partial")
            raise URLError("[Errno -3] Temporary failure in name resolution")
        idx(raw / f"{prefix}-images-idx3-ubyte.gz", bytes(n * 28 * 28), (n, 28, 28))
        idx(raw / f"{prefix}-labels-idx1-ubyte.gz", bytes(range(n)), (n,))


def test_failed_download_is_one_line_and_leaves_no_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    root = tmp_path / "data" / "mnist"
    with pytest.raises(DownloadFailed) as e:
        readers.mnist(str(root), download=True)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("downloading MNIST failed (URLError: <urlopen error [Errno -3]")
    assert "nothing was kept; without a network, put the four IDX files" in msg
    assert "download=true" not in msg
    assert list(tmp_path.iterdir()) == []  # not even data/


def test_failed_download_keeps_what_was_there(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    (tmp_path / "mnist" / "notes.txt").parent.mkdir()
    (tmp_path / "mnist" / "notes.txt").write_text("mine")
    with pytest.raises(DownloadFailed):
        readers.mnist(str(tmp_path / "mnist"), download=True)
    assert [p.name for p in tmp_path.rglob("*")] == ["mnist", "notes.txt"]


def test_complete_download_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(FakeMNIST, "fail", False)
    monkeypatch.setattr(FakeMNIST, "roots", [])
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    a = readers.mnist(str(tmp_path / "mnist"), download=True)
    assert tuple(a.x_train.shape) == (3, 1, 28, 28) and a.y_test.tolist() == [0, 1]
    assert sorted(p.name for p in (tmp_path / "mnist" / "MNIST" / "raw").iterdir())[0] == \
        "t10k-images-idx3-ubyte.gz"
    assert [p.name for p in tmp_path.iterdir()] == ["mnist"]  # no staging folder left
    [staging] = set(FakeMNIST.roots)  # beside the target (one file system: moves are renames)
    assert staging.parent == tmp_path and staging.name.startswith(".mnist.download-")


def test_complete_download_into_new_nested_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(FakeMNIST, "fail", False)
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    a = readers.mnist(str(tmp_path / "a" / "b" / "mnist"), download=True)
    assert a.y_train.tolist() == [0, 1, 2]
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["mnist"]


def test_complete_download_joins_what_was_there(tmp_path, monkeypatch):
    monkeypatch.setattr(FakeMNIST, "fail", False)
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    root = tmp_path / "mnist"
    (root / "MNIST").mkdir(parents=True)
    (root / "notes.txt").write_text("mine")
    (root / "MNIST" / "README").write_text("mine too")
    a = readers.mnist(str(root), download=True)
    assert a.y_test.tolist() == [0, 1]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "mnist", "mnist/MNIST", "mnist/MNIST/README", "mnist/MNIST/raw",
        *(f"mnist/MNIST/raw/{p}-{k}-ubyte.gz" for p in ("t10k", "train")
          for k in ("images-idx3", "labels-idx1")), "mnist/notes.txt"]
    assert (root / "notes.txt").read_text() == "mine"


class Fetch:
    """A torchvision dataset class whose download succeeds and writes nothing; records calls."""

    calls = []

    def __init__(self, root, download=False, **kwargs):
        Fetch.calls.append((type(self).__name__, Path(root), download, kwargs))


# reader, its arguments, the torchvision class, the folder it downloads into, one call per split
DOWNLOADS = [
    (readers.mnist, {}, "MNIST", "", [{"train": True}, {"train": False}]),
    (readers.kmnist, {}, "KMNIST", "", [{"train": True}, {"train": False}]),
    (readers.fashion_mnist, {}, "FashionMNIST", "", [{"train": True}, {"train": False}]),
    (lambda root, **kw: readers.fashion_mnist(data_root=root, **kw), {}, "FashionMNIST",
     "fashion_mnist", [{"train": True}, {"train": False}]),  # root: null (the config's)
    (readers.emnist_letters, {}, "EMNIST", "",
     [{"train": True, "split": "letters"}, {"train": False, "split": "letters"}]),
    (readers.cifar10, {}, "CIFAR10", "", [{"train": True}, {"train": False}]),
    (readers.cifar100, {}, "CIFAR100", "", [{"train": True}, {"train": False}]),
    (readers.svhn, {}, "SVHN", "svhn", [{"split": "train"}, {"split": "test"}]),
    (readers.svhn, {"extra": True}, "SVHN", "svhn",
     [{"split": "train"}, {"split": "test"}, {"split": "extra"}]),
]


@pytest.mark.parametrize("read,kwargs,cls,sub,splits", DOWNLOADS)
def test_each_reader_downloads_only_when_asked_with_torchvisions_arguments(
        tmp_path, monkeypatch, read, kwargs, cls, sub, splits):
    monkeypatch.setattr(torchvision.datasets, cls, type(cls, (Fetch,), {}))
    monkeypatch.setattr(Fetch, "calls", [])
    monkeypatch.setattr(readers, "DEBIAN_FASHION_MNIST", str(tmp_path / "no_debian"))
    root = tmp_path / "data"
    with pytest.raises(DatasetMissing):
        read(root=str(root), **kwargs)  # download defaults to off
    assert Fetch.calls == []
    with pytest.raises(DatasetMissing):  # fetched (here: nothing), then read again
        read(root=str(root), download=True, **kwargs)
    target = root / sub
    assert [(c, d, k) for c, _, d, k in Fetch.calls] == [(cls, True, s) for s in splits]
    for _, staging, _, _ in Fetch.calls:
        assert staging.parent == target.parent and staging.name.startswith(f".{target.name}.")


@pytest.mark.parametrize("name", sorted(["mnist", "kmnist", "fashion_mnist", "emnist_letters",
                                         "cifar10", "cifar100", "svhn"]))
def test_torchvision_datasets_download_by_default(compose_cfg, name):
    assert compose_cfg([f"dataset={name}"]).dataset.reader.download is True


def test_default_run_downloads_into_data_root(compose_cfg, tmp_path, monkeypatch):
    from runner.instantiate import instantiate

    monkeypatch.setattr(FakeMNIST, "fail", False)
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    cfg = compose_cfg(["dataset=mnist", f"data_root={tmp_path}/data"])
    a = instantiate(cfg.dataset.reader, "dataset.reader", "reader")
    assert a.y_train.tolist() == [0, 1, 2] and Path(a.source).is_relative_to(tmp_path / "data" / "mnist")


def test_unfetchable_data_is_one_line_before_a_run_directory(hydra_cli, capsys, tmp_path,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)  # no network
    assert hydra_cli("experiment=fmnist_mlp", "dataset=mnist", f"data_root={tmp_path}/data",
                     "device=cpu") == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "MNIST" not in out  # printed once
    assert err.startswith("error: downloading MNIST failed (URLError: ")
    assert "put the four IDX files" in err and f"into {tmp_path}/data/mnist (set " \
        "dataset.reader.root=DIR" in err
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no run directory, no partial data
