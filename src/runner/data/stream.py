"""The streaming data path for ImageNet-scale sets, chosen per dataset by config (`stream:`):
an ImageFolder tree read by DataLoader workers that decode the JPEGs (torchvision.io) and crop
them (torchvision.transforms.v2), batches of uint8 images moved to the device, where the
dataset's pipeline normalizes them as it does every other dataset.

- train: RandomResizedCrop(`size`, scale `scale`) and a horizontal flip (the standard ImageNet
  augmentation; the thesis's setup, App. A.5 / Table A.11, does not state its own);
- validation and test: Resize(`resize`) and CenterCrop(`size`).

The validation split is held out of the training files with the same seeded permutation as the
in-memory path (`runner.data.tensors.split_train_val`), so both paths give the same labels in
the same order. A split behaves like `runner.data.tensors.Split` (len, `y`, `take`, `x[i:j]`
decodes those images with the eval transform) and has its own `batches` (the trainer's
`batches` and `RunContext.evaluate` use it). Shuffling order comes from the trainer's order
generator, worker randomness from it too, so a seed and a worker count repeat a run.

    python -m runner.data.stream bench --workers 2   # images/s of this path on this machine
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from runner.data.folders import folder_tree
from runner.data.tensors import Splits, val_count
from runner.targets import register

# torchvision 0.29 marks its JPEG decoder deprecated in favour of TorchCodec; it still works
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of "
                        "TorchVision are deprecated", category=DeprecationWarning)


@dataclass
class Files:
    """What a streaming reader returns: image paths and labels of the train and test parts."""

    train: List[str]
    y_train: torch.Tensor
    test: List[str]
    y_test: torch.Tensor


def folder_files(name: str, root: str, train: str = "train", test: str = "val") -> Files:
    """`root/<train>/<class>/<image>` and `root/<test>/<class>/<image>` (classes: the sorted
    sub-directories of the training tree, as `runner.data.folders.image_folder`)."""
    (ftr, ytr), (fte, yte) = folder_tree(name, root, train, test)
    return Files([str(f) for f in ftr], ytr, [str(f) for f in fte], yte)


class _Decoded(Dataset):
    """(uint8 CxHxW crop, label) of file i, decoded and cropped in a worker."""

    def __init__(self, files: Sequence[str], labels: torch.Tensor, transform):
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from torchvision.io import ImageReadMode, decode_image, read_file
        img = decode_image(read_file(self.files[i]), mode=ImageReadMode.RGB)
        return self.transform(img), self.labels[i]


def transform(train: bool, size: int, resize: int, scale: Sequence[float]):
    from torchvision.transforms import v2
    if train:
        return v2.Compose([v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True),
                           v2.RandomHorizontalFlip()])
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size)])


class _Lazy:
    """`split.x[a:b]` / `split.x[idx]`: those images, decoded with the eval transform."""

    def __init__(self, split: "FolderSplit"):
        self.split = split

    def __getitem__(self, idx) -> torch.Tensor:
        s = self.split
        order = range(len(s))[idx] if isinstance(idx, slice) else torch.as_tensor(idx).tolist()
        ds = _Decoded([s.files[i] for i in order], s.y_cpu[list(order)],
                      transform(False, s.size, s.resize, s.scale))
        x = [ds[i][0] for i in range(len(ds))]
        return (torch.stack(x) if x else torch.zeros(0, 3, s.size, s.size, dtype=torch.uint8)
                ).to(s.device)


class FolderSplit:
    """A split of image files: train-time crops (`train`) or eval crops, in batches."""

    def __init__(self, files: Sequence[str], labels: torch.Tensor, train: bool, device,
                 size: int = 224, resize: int = 256, scale: Sequence[float] = (0.08, 1.0),
                 workers: int = 4):
        self.files, self.y_cpu, self.train = list(files), labels.cpu(), train
        self.device, self.size, self.resize, self.scale, self.workers = (
            torch.device(device), size, resize, tuple(scale), workers)
        self.y = self.y_cpu.to(self.device)
        self.x = _Lazy(self)
        self.shard = (0, 1)  # (rank, world): decode only shard `rank` of every batch

    def __len__(self) -> int:
        return len(self.files)

    def take(self, idx: torch.Tensor) -> "FolderSplit":
        idx = idx.cpu()
        return FolderSplit([self.files[i] for i in idx.tolist()], self.y_cpu[idx], self.train,
                           self.device, self.size, self.resize, self.scale, self.workers)

    def batches(self, batch_size: Optional[int], gen: Optional[torch.Generator],
                shuffle: bool = True, limit: Optional[int] = None
                ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        n = len(self)
        bs = n if batch_size is None else min(batch_size, n)
        order = torch.randperm(n, generator=gen) if shuffle and gen is not None else torch.arange(n)
        if limit is not None:
            order = order[:limit * bs]
        seed = int(torch.randint(0, 2**62, (1,), generator=gen)) if gen is not None else 0
        rank, world = self.shard
        loader = DataLoader(
            _Decoded(self.files, self.y_cpu, transform(self.train, self.size, self.resize,
                                                       self.scale)),
            batch_sampler=[b.tensor_split(world)[rank].tolist() for b in order.split(bs)],
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=False, prefetch_factor=4 if self.workers else None)
        if self.workers == 0:  # crops drawn in this process: from the seed, not the global state
            state = torch.random.get_rng_state()
            torch.manual_seed(seed)
        try:
            for x, y in loader:
                yield (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))
        finally:
            if self.workers == 0:
                torch.random.set_rng_state(state)


def stream_splits(files: Files, val_fraction: float, seed: int, device, size: int = 224,
                  resize: int = 256, scale: Sequence[float] = (0.08, 1.0), workers: int = 4
                  ) -> Splits:
    """Train / val / test splits of `files` (the validation permutation of split_train_val)."""
    n = len(files.train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = val_count(n, val_fraction)
    opts = dict(size=size, resize=resize, scale=scale, workers=workers)
    whole = FolderSplit(files.train, files.y_train, True, device, **opts)
    val = FolderSplit(files.train, files.y_train, False, device, **opts).take(perm[:n_val])
    return Splits(whole.take(perm[n_val:]), val,
                  FolderSplit(files.test, files.y_test, False, device, **opts))


def write_fixture(root: Path, classes: int = 4, per_class: int = 8, size=(375, 500),
                  seed: int = 0) -> Path:
    """An ImageFolder tree of smooth random JPEGs (train/ and val/), for tests and benchmarks."""
    from torchvision.io import encode_jpeg
    g = torch.Generator().manual_seed(seed)
    for part, n in (("train", per_class), ("val", max(1, per_class // 4))):
        for c in range(classes):
            d = root / part / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                low = torch.rand(1, 3, size[0] // 16, size[1] // 16, generator=g)
                img = torch.nn.functional.interpolate(low, size=size, mode="bilinear")
                (d / f"{i}.JPEG").write_bytes(
                    encode_jpeg((img[0] * 255).to(torch.uint8), quality=90).numpy().tobytes())
    return root


def bench(root: Optional[str], workers: int, batch_size: int, batches: int) -> float:
    """Images per second of the training path (decode + random-resized-crop 224 + flip)."""
    import tempfile
    if root is None:
        with tempfile.TemporaryDirectory() as tmp:
            return bench(str(write_fixture(Path(tmp), classes=8, per_class=64)), workers,
                         batch_size, batches)
    files = folder_files("bench", root)
    split = stream_splits(files, 0.0, 0, "cpu", workers=workers).train
    gen = torch.Generator().manual_seed(0)
    for _ in split.batches(batch_size, gen, limit=1):  # warm-up: workers start, files cached
        pass
    n, t0 = 0, time.perf_counter()
    while n < batches * batch_size:
        for x, _ in split.batches(batch_size, gen, limit=batches):
            n += len(x)
    rate = n / (time.perf_counter() - t0)
    print("| path | workers | batch | images | images/s |\n|---|---|---|---|---|\n"
          f"| decode + RandomResizedCrop(224) + flip | {workers} | {batch_size} | {n} "
          f"| {rate:.1f} |")
    return rate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.data.stream", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["bench"])
    p.add_argument("--root", default=None, help="an ImageFolder tree (default: a written fixture "
                   "of 512 train JPEGs of 500x375)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=8)
    a = p.parse_args(argv)
    bench(a.root, a.workers, a.batch_size, a.batches)
    return 0


register("reader", folder_files)  # config slots of this kind may name them (runner.targets)


if __name__ == "__main__":
    from runner.errors import exit_with
    exit_with(main)
