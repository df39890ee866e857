"""The streaming data path (runner.data.stream) against the in-memory path, on JPEG fixtures."""
import pytest
import torch

from runner.data.folders import image_folder
from runner.data.stream import folder_files, stream_splits, write_fixture
from runner.data.tensors import batches, split_train_val


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
