"""Batched image transforms on the training device, with per-sample randomness.

Each transform is a callable `t(x, gen) -> x` on float images (B, C, H, W) in [0, 1] (before
normalization); random ones draw from `gen`, a generator on the images' device, so the same seed
repeats the same augmentation.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _rand(n: int, gen: Optional[torch.Generator], device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device)


def _gather_window(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: int, w: int
                   ) -> torch.Tensor:
    """x[b, :, top_b:top_b+h, left_b:left_b+w] for every b, as one indexing op."""
    b, c = x.shape[:2]
    rows = (top.view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = (left.view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return x[bi, ci, rows, cols]


class ToRGB:
    """Grayscale to three channels (repeats the channel)."""

    def __call__(self, x, gen=None):
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class Resize:
    """Resize to `size` (bilinear); with `crop`, resize to `size` then center-crop to `crop`."""

    def __init__(self, size: int, crop: Optional[int] = None, mode: str = "bilinear"):
        self.size, self.crop, self.mode = size, crop, mode

    def __call__(self, x, gen=None):
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode=self.mode, align_corners=False)
        if self.crop:
            o = (self.size - self.crop) // 2
            x = x[..., o:o + self.crop, o:o + self.crop]
        return x


class Blur:
    """Blur by down-sampling by `factor` (area) and up-sampling back (bilinear)."""

    def __init__(self, factor: float = 0.25):
        self.factor = factor

    def __call__(self, x, gen=None):
        h, w = x.shape[-2:]
        small = F.interpolate(x, scale_factor=self.factor, mode="area")
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


class RandomCrop:
    """Pad by `padding` (constant `fill` or reflect) and crop a random window of the input size."""

    def __init__(self, padding: int = 4, fill: float = 0.0, mode: str = "constant"):
        self.padding, self.fill, self.mode = padding, fill, mode

    def __call__(self, x, gen=None):
        p = self.padding
        b, _, h, w = x.shape
        kw = {"value": self.fill} if self.mode == "constant" else {}
        xp = F.pad(x, (p, p, p, p), mode=self.mode, **kw)
        top = (_rand(b, gen, x.device) * (2 * p + 1)).long().clamp_(max=2 * p)
        left = (_rand(b, gen, x.device) * (2 * p + 1)).long().clamp_(max=2 * p)
        return _gather_window(xp, top, left, h, w)


class HFlip:
    """Flip each image horizontally with probability `p`."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x, gen=None):
        flip = (_rand(x.shape[0], gen, x.device) < self.p).view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x)
