"""Readers of image files: ImageFolder trees and Tiny ImageNet's archive layout.

Every image is decoded (PIL, in threads), converted to RGB (or kept grayscale with `channels=1`),
resized to `size`x`size` (bilinear, aspect ratio not kept, as "we resize images to 224x224" in the
reinitialization paper) and stacked into one uint8 tensor. The whole set must fit in memory: at
224x224 that is 150 kB per image, so ImageNet-scale sets need a small `size` (a documented limit).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from runner.data.readers import how_to_provide
from runner.data.tensors import Arrays
from runner.errors import DataError, DatasetMissing
from runner.targets import register

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def load_images(paths: Sequence[Path], size: Optional[int], channels: int = 3) -> torch.Tensor:
    """uint8 (N, C, size, size) from image files (`size=None` keeps each file's own size, which
    must then agree)."""
    from PIL import Image

    def load(p):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB" if channels == 3 else "L")
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except (OSError, Image.DecompressionBombError) as e:  # a bomb: too many pixels
            raise DataError(f"{p} cannot be read as an image ({' '.join(str(e).split())[:200]}); "
                            f"replace or remove it") from None
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        arrays = list(pool.map(load, paths))
    odd = next((i for i, a in enumerate(arrays) if a.shape != arrays[0].shape), None)
    if odd is not None:  # size=None: each file keeps its own size
        raise DataError(f"{paths[odd]} holds an image of shape {arrays[odd].shape}, {paths[0]} one "
                        f"of shape {arrays[0].shape}; images of different sizes need the reader's "
                        f"size option")
    return torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0, channels, size or 0,
                                                                         size or 0, dtype=torch.uint8)


def _tree(d: Path, classes: List[str]) -> Tuple[List[Path], torch.Tensor]:
    files, labels = [], []
    for i, c in enumerate(classes):
        found = sorted(p for p in (d / c).rglob("*") if p.suffix.lower() in EXTENSIONS)
        files += found
        labels += [i] * len(found)
    return files, torch.tensor(labels, dtype=torch.long)


def folder_tree(name: str, root: str, train: str, test: str):
    """((train files, labels), (test files, labels)) of `root/<train|test>/<class>/<image>`;
    classes are the sorted sub-directories of the training tree."""
    r = Path(root)
    dirs = [r / train, r / test]
    if not all(d.is_dir() for d in dirs):
        raise DatasetMissing(name, dirs, how_to_provide(
            f"an ImageFolder tree ({train}/<class>/<image>, {test}/<class>/<image>)", r, False))
    classes = sorted(p.name for p in dirs[0].iterdir() if p.is_dir())
    unknown = sorted({p.name for p in dirs[1].iterdir() if p.is_dir()} - set(classes))
    if unknown:
        raise DataError(f"{name}: {dirs[1]} has classes without training images: {unknown[:5]}")
    trees = _tree(dirs[0], classes), _tree(dirs[1], classes)
    for d, (files, _) in zip(dirs, trees):
        if not files:
            raise DataError(f"{name}: {d} holds no images in class sub-directories "
                            f"({d}/<class>/<image>, extensions {', '.join(EXTENSIONS)})")
    return trees


def image_folder(name: str, root: str, train: str = "train", test: str = "test",
                 size: Optional[int] = 224, channels: int = 3) -> Arrays:
    """`root/<train>/<class>/<image>` and `root/<test>/<class>/<image>`; classes are the sorted
    sub-directory names of the training tree (the test tree must use the same names)."""
    (ftr, ytr), (fte, yte) = folder_tree(name, root, train, test)
    return Arrays(load_images(ftr, size, channels), ytr, load_images(fte, size, channels), yte,
                  source=str(Path(root)), files=(str(ftr[0]), str(fte[0])))


def tiny_imagenet(root: str, size: Optional[int] = 64) -> Arrays:
    """Tiny ImageNet (Le & Yang 2015) as its archive unpacks: `tiny-imagenet-200/` (in `root`, or
    `root` itself) with `wnids.txt`, `train/<wnid>/images/*.JPEG` (500 per class) and
    `val/images/*.JPEG` labelled by `val/val_annotations.txt`. The official validation set (50 per
    class) is the test set, as in the SWR code and the thesis (the test labels are not public)."""
    r = Path(root)
    dirs = [r / "tiny-imagenet-200", r]
    base = next((d for d in dirs if (d / "wnids.txt").exists()), None)
    if base is None:
        raise DatasetMissing("Tiny ImageNet", dirs, how_to_provide(
            "the unpacked tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip)",
            r, False))
    wnids = (base / "wnids.txt").read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    ftr, ytr = [], []
    for w in wnids:
        found = sorted((base / "train" / w / "images").glob("*.JPEG"))
        ftr += found
        ytr += [index[w]] * len(found)
    fte, yte = [], []
    for line in (base / "val" / "val_annotations.txt").read_text().splitlines():
        if line.strip():
            fname, wnid = line.split("\t")[:2]
            fte.append(base / "val" / "images" / fname)
            yte.append(index[wnid])
    if not ftr or not fte:
        raise DataError(f"Tiny ImageNet: {base} holds no {'training' if not ftr else 'validation'} "
                        f"images (train/<wnid>/images/*.JPEG, val/images/ with val_annotations.txt)")
    return Arrays(load_images(ftr, size), torch.tensor(ytr), load_images(fte, size),
                  torch.tensor(yte), source=str(base), files=(str(ftr[0]), str(fte[0])))


register("reader", image_folder, tiny_imagenet)  # config slots of this kind may name them (runner.targets)
