"""The streaming data path (runner.data.stream) against the in-memory path, on JPEG fixtures."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from runner.data import stream
from runner.data.folders import image_folder
from runner.data.stream import FolderSplit, folder_files, stream_splits, write_fixture
from runner.data.tensors import batches, split_train_val
from runner.errors import DatasetMissing


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("imagefolder"), classes=3, per_class=8,
                         size=(40, 52))


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_gives_the_labels_and_shapes_of_the_in_memory_path(tree, workers):
    memory = split_train_val(image_folder("fixture", str(tree), "train", "val", size=32),
                             0.25, 3, "cpu")
    stream = stream_splits(folder_files("fixture", str(tree)), 0.25, 3, "cpu", size=32,
                           resize=36, workers=workers)
    for a, b in zip(memory.__dict__.values(), stream.__dict__.values()):
        assert len(a) == len(b) and torch.equal(a.y, b.y)
        xs, ys = zip(*batches(b, 5, None, shuffle=False))
        assert torch.equal(torch.cat(ys), a.y)
        x = torch.cat(xs)
        assert x.shape == a.x.shape and x.dtype == a.x.dtype == torch.uint8
    gen = torch.Generator().manual_seed(0)
    xs, ys = zip(*batches(stream.train, 4, gen, limit=2))
    assert [tuple(x.shape) for x in xs] == [(4, 3, 32, 32)] * 2
    order = torch.randperm(len(stream.train), generator=torch.Generator().manual_seed(0))[:8]
    assert torch.equal(torch.cat(ys), stream.train.y[order])  # the trainer's order generator
    again = torch.cat([x for x, _ in batches(stream.train, 4, torch.Generator().manual_seed(0),
                                             limit=2)])
    assert torch.equal(torch.cat(xs), again)  # a seed repeats the random crops
    assert stream.val.x[:3].shape == (3, 3, 32, 32)


def test_a_run_trains_on_a_streamed_dataset(run_cfg, tree):
    result = run_cfg(["experiment=fmnist_mlp", "dataset=imagenet_stream", "device=cpu",
                      f"dataset.reader.root={tree}", "dataset.stream.size=32",
                      "dataset.stream.resize=36", "dataset.stream.workers=0",
                      "dataset.shape=[3,32,32]", "dataset.num_classes=3", "train.epochs=1",
                      "train.batch_size=8", "train.eval_batch_size=4"])
    assert result["status"] == "completed", result.get("error")
    assert result["phases"][0]["steps"] == 3  # 24 images, 10 % validation -> 22 -> 3 batches


def test_split_x_decodes_the_eval_crops_on_the_splits_device(tree):
    train = stream_splits(folder_files("fixture", str(tree)), 0.25, 3, "cpu", size=32, resize=36,
                          workers=0).train  # x of a training split: eval crops all the same
    evaluated = FolderSplit(train.files, train.y_cpu, False, "cpu", size=32, resize=36, workers=0)
    want = torch.cat([x for x, _ in evaluated.batches(4, None, shuffle=False)])
    assert torch.equal(train.x[0:len(train)], want)
    assert torch.equal(train.x[torch.tensor([5, 0])], want[[5, 0]])
    empty = train.x[3:3]
    assert empty.shape == (0, 3, 32, 32) and empty.dtype == torch.uint8
    meta = FolderSplit(train.files[:1], train.y_cpu[:1], True, "meta", size=32, resize=36)
    assert meta.x[0:1].device.type == "meta" and meta.x[0:0].device.type == "meta"


def test_fixture_is_smooth_reproducible_and_has_a_quarter_for_validation(tmp_path):
    from torchvision.io import decode_image

    def tree(root, per_class):
        write_fixture(root, classes=2, per_class=per_class, size=(48, 64))
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.JPEG"))}

    first = tree(tmp_path / "a", 4)
    assert sorted(first) == [f"{part}/class{c}/{i}.JPEG" for part, n in (("train", 4), ("val", 1))
                             for c in range(2) for i in range(n)]
    assert tree(tmp_path / "a", 4) == first  # written again over itself: the same bytes
    assert sum(p.startswith("val/") for p in tree(tmp_path / "b", 8)) == 2 * 2
    for p in first:
        x = decode_image(str(tmp_path / "a" / p)).int()
        assert x.shape == (3, 48, 64) and x.float().std() > 20  # (H, W) as given; not flat
        steps = max((x[:, 1:] - x[:, :-1]).abs().max(), (x[:, :, 1:] - x[:, :, :-1]).abs().max())
        assert steps < 40  # smooth: interpolated from a coarse random grid


def test_bench_counts_the_images_it_decoded_per_second(tree, monkeypatch, capsys):
    clock = iter([100.0, 102.0, 200.0, 204.0])
    monkeypatch.setattr(stream, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setattr(stream, "write_fixture", None)  # a tree is given: none is written
    workers, real = [], stream.stream_splits

    def spy(*args, **kwargs):
        splits = real(*args, **kwargs)
        workers.append(splits.train.workers)
        return splits

    monkeypatch.setattr(stream, "stream_splits", spy)
    for bs, n in ((4, 2), (8, 4)):  # 24 training images: 2 batches of 4; 4 of 8 take two passes
        assert stream.main(["bench", "--root", str(tree), "--workers", "0", "--batch-size",
                            str(bs), "--batches", str(n)]) == 0
    row = "| decode + RandomResizedCrop(224) + flip | 0 |"
    head = ["| path | workers | batch | images | images/s |", "|---|---|---|---|---|"]
    assert capsys.readouterr().out.splitlines() == [*head, f"{row} 4 | 8 | 4.0 |",
                                                    *head, f"{row} 8 | 48 | 12.0 |"]
    assert workers == [0, 0]


def test_bench_command_line(monkeypatch, capsys, tmp_path):
    calls = []
    monkeypatch.setattr(stream, "bench", lambda *args: calls.append(args) or 1.0)
    assert stream.main(["bench"]) == 0 and calls == [(None, 2, 64, 8)]
    with pytest.raises(SystemExit):
        stream.main(["benchmark"])  # the one command is `bench`
    assert len(calls) == 1
    with pytest.raises(SystemExit):
        stream.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: python -m runner.data.stream [-h] ")
    assert f"{stream.__doc__.splitlines()[0]} positional arguments:" in text
    assert "an ImageFolder tree (default: a written fixture of 512 train JPEGs of 500x375)" in text


def test_bench_without_a_tree_writes_the_fixture_its_help_names(monkeypatch, tmp_path, capsys):
    made, real = [], stream.write_fixture

    def small(root, **kwargs):  # 2 x 2 tiny images instead of 8 x 64 of 375 x 500
        made.append((root, kwargs))
        return real(root, classes=2, per_class=2, size=(16, 16))

    monkeypatch.setattr(stream, "write_fixture", small)
    assert stream.bench(None, 0, 2, 1) > 0
    assert [kw for _, kw in made] == [{"classes": 8, "per_class": 64}]
    assert not made[0][0].exists()  # a temporary folder, removed
    assert "| 0 | 2 | 2 |" in capsys.readouterr().out
    with pytest.raises(DatasetMissing, match=f"^dataset bench not found \\(looked in: {tmp_path}"):
        stream.bench(str(tmp_path), 0, 2, 1)


def test_stream_options_default_to_imagenets_and_a_generator_sets_the_crops(tree):
    splits = stream_splits(folder_files("fixture", str(tree)), 0.25, 3, "cpu")
    t = splits.train
    assert (t.size, t.resize, tuple(t.scale), t.workers) == (224, 256, (0.08, 1.0), 4)
    assert FolderSplit(t.files, t.y_cpu, True, "cpu").resize == 256
    small = FolderSplit(t.files[:4], t.y_cpu[:4], True, "cpu", size=16, resize=20, workers=0)
    crops = [next(batches(small, 4, torch.Generator().manual_seed(s), shuffle=False))[0] for s in (0, 1, 0)]
    assert not torch.equal(crops[0], crops[1]) and torch.equal(crops[0], crops[2])  # random crops
    [(x, y)] = list(small.batches(None, None, shuffle=False))  # the whole split in one batch
    assert x.shape == (4, 3, 16, 16) and torch.equal(y, small.y_cpu)
