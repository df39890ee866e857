"""Batched image transforms on the training device, with per-sample randomness.

Each transform is a callable `t(x, gen) -> x` on float images (B, C, H, W) in [0, 1] (before
normalization); random ones draw from `gen`, a generator on the images' device, so the same seed
repeats the same augmentation.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from runner.targets import register


def _rand(n: int, gen: Optional[torch.Generator], device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device)


def _within_range(out: torch.Tensor, x: torch.Tensor, fill: Optional[float] = None) -> torch.Tensor:
    """`out` clamped, image by image, to the range of `x` (and `fill`). Bilinear resampling
    stays in that range in exact arithmetic; in floats it can step out by an ulp (1.0000001)."""
    lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    if fill is not None:
        lo, hi = lo.clamp(max=fill), hi.clamp(min=fill)
    return torch.maximum(torch.minimum(out, hi), lo)


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
    """Resize to `size` (`mode`: bilinear, or bicubic / nearest / area, as F.interpolate with its
    default align_corners=False); with `crop`, resize to `size` then center-crop to `crop`."""

    def __init__(self, size: int, crop: Optional[int] = None, mode: str = "bilinear"):
        self.size, self.crop, self.mode = size, crop, mode

    def __call__(self, x, gen=None):
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode=self.mode)
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
        return _within_range(F.interpolate(small, size=(h, w), mode="bilinear",
                                           align_corners=False), x)


class RandomCrop:
    """Pad by `padding` (constant `fill` or reflect) and crop a random window of the input size,
    or of `size`x`size` (e.g. `Resize(248)` then `RandomCrop(padding=0, size=224)`)."""

    def __init__(self, padding: int = 4, fill: float = 0.0, mode: str = "constant",
                 size: Optional[int] = None):
        self.padding, self.fill, self.mode, self.size = padding, fill, mode, size

    def __call__(self, x, gen=None):
        p = self.padding
        b, _, h, w = x.shape
        ch, cw = (h, w) if self.size is None else (self.size, self.size)
        kw = {"value": self.fill} if self.mode == "constant" else {}
        xp = F.pad(x, (p, p, p, p), mode=self.mode, **kw) if p else x
        dh, dw = h + 2 * p - ch, w + 2 * p - cw
        top = (_rand(b, gen, x.device) * (dh + 1)).long().clamp_(max=dh)
        left = (_rand(b, gen, x.device) * (dw + 1)).long().clamp_(max=dw)
        return _gather_window(xp, top, left, ch, cw)


class HFlip:
    """Flip each image horizontally with probability `p`."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x, gen=None):
        flip = (_rand(x.shape[0], gen, x.device) < self.p).view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x)


class VFlip:
    """Flip each image vertically with probability `p`."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x, gen=None):
        flip = (_rand(x.shape[0], gen, x.device) < self.p).view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(-2), x)


def _uniform(n: int, bound: float, gen, device) -> torch.Tensor:
    """n values uniform in [-bound, bound]."""
    return (_rand(n, gen, device) * 2 - 1) * bound


class RandomAffine:
    """A random affine map per image, sampled bilinearly (outside: `fill`).

    rotation and shear in degrees (uniform in [-a, a]; `shear` skews along x, `shear_y` along y),
    `scale` a magnitude (zoom factor uniform in [1 - s, 1 + s]), `translate` a fraction of the
    side (shift uniform in [-t, t] times width / height, per axis). The map is about the centre.
    """

    def __init__(self, rotation: float = 0.0, shear: float = 0.0, shear_y: float = 0.0,
                 scale: float = 0.0, translate: float = 0.0, fill: float = 0.0):
        self.rotation, self.shear, self.shear_y = rotation, shear, shear_y
        self.scale, self.translate, self.fill = scale, translate, fill

    def matrices(self, b: int, gen, device) -> torch.Tensor:
        """(b, 2, 3) maps from output to input coordinates in [-1, 1] (affine_grid's convention)."""
        rad = math.pi / 180
        rot = _uniform(b, self.rotation * rad, gen, device)
        shx = torch.tan(_uniform(b, self.shear * rad, gen, device))
        shy = torch.tan(_uniform(b, self.shear_y * rad, gen, device))
        zoom = 1 + _uniform(b, self.scale, gen, device)
        tx = _uniform(b, self.translate, gen, device) * 2  # a side is 2 units long
        ty = _uniform(b, self.translate, gen, device) * 2
        cos, sin = torch.cos(rot), torch.sin(rot)
        fwd = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        shear = torch.stack([torch.stack([torch.ones_like(shx), shx], -1),
                             torch.stack([shy, torch.ones_like(shy)], -1)], -2)
        fwd = fwd @ shear * zoom.view(b, 1, 1)  # image -> output: rotate . shear . zoom
        a, b_, c, d = fwd[:, 0, 0], fwd[:, 0, 1], fwd[:, 1, 0], fwd[:, 1, 1]
        inv = torch.stack([torch.stack([d, -b_], -1), torch.stack([-c, a], -1)], -2) \
            / (a * d - b_ * c).view(b, 1, 1)  # the 2x2 inverse in closed form: no host sync
        t = -(inv @ torch.stack([tx, ty], -1).unsqueeze(-1))
        return torch.cat([inv, t], -1)

    def __call__(self, x, gen=None):
        theta = self.matrices(x.shape[0], gen, x.device).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x - self.fill, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        return _within_range(out + self.fill, x, self.fill)


class RandomShift(RandomAffine):
    """Shift each image by up to `fraction` of its side, per axis (Zilly et al.: up to 100 %);
    content moved out of view is lost and the uncovered area is `fill` (0: black, as
    torchvision's RandomAffine fills)."""

    def __init__(self, fraction: float = 0.5, fill: float = 0.0):
        super().__init__(translate=fraction, fill=fill)


class RandomBlur:
    """Blur each image by down-sampling to a random fraction of its size in [`min_scale`, 1]
    (area) and up-sampling back (bilinear); Zilly et al.'s "random blurring by downsizing down
    to 30 %". The fraction is drawn from `levels` evenly spaced values; every level is computed
    for the whole batch and each image takes its own (no host sync, no data-dependent shapes)."""

    def __init__(self, min_scale: float = 0.3, levels: int = 8):
        self.scales = torch.linspace(min_scale, 1.0, levels).tolist()

    def __call__(self, x, gen=None):
        h, w = x.shape[-2:]
        pick = (_rand(x.shape[0], gen, x.device) * len(self.scales)).long().clamp_(
            max=len(self.scales) - 1)
        out = x
        for i, s in enumerate(self.scales[:-1]):  # the last level (1.0) leaves images unchanged
            size = (max(1, round(h * s)), max(1, round(w * s)))
            small = F.interpolate(x, size=size, mode="area")
            blurred = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
            out = torch.where((pick == i).view(-1, 1, 1, 1), blurred, out)
        return _within_range(out, x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601) of RGB images, or the image itself when it has one channel."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _factors(b: int, magnitude: float, gen, device) -> torch.Tensor:
    return (1 + _uniform(b, magnitude, gen, device)).clamp_(min=0).view(b, 1, 1, 1)


class RandomContrast:
    """Scale each image's deviation from its mean grey level by a factor in [1 - m, 1 + m]."""

    def __init__(self, magnitude: float = 0.4):
        self.magnitude = magnitude

    def __call__(self, x, gen=None):
        f = _factors(x.shape[0], self.magnitude, gen, x.device)
        mean = _gray(x).mean((1, 2, 3), keepdim=True)
        return ((x - mean) * f + mean).clamp_(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    mx, mn = x.max(1).values, x.min(1).values
    d = mx - mn
    safe = torch.where(d > 0, d, torch.ones_like(d))
    h = torch.where(mx == r, (g - b) / safe % 6,
                    torch.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(d > 0, h / 6, torch.zeros_like(h))
    s = torch.where(mx > 0, d / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    return torch.stack([h, s, mx], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * (torch.minimum(k, 4 - k).clamp(0, 1))


class ColorJitter:
    """Per-image random brightness, contrast, saturation (factors in [1 - m, 1 + m]) and hue
    (shift in [-m, m] of a full turn), applied in that order (torchvision draws a random order)."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0):
        self.brightness, self.contrast = brightness, contrast
        self.saturation, self.hue = saturation, hue

    def __call__(self, x, gen=None):
        b, dev = x.shape[0], x.device
        if self.brightness:
            x = (x * _factors(b, self.brightness, gen, dev)).clamp(0, 1)
        if self.contrast:
            x = RandomContrast(self.contrast)(x, gen)
        if self.saturation and x.shape[1] == 3:
            f = _factors(b, self.saturation, gen, dev)
            x = ((x - _gray(x)) * f + _gray(x)).clamp(0, 1)
        if self.hue and x.shape[1] == 3:
            hsv = _rgb_to_hsv(x)
            shift = _uniform(b, self.hue, gen, dev).view(b, 1, 1)
            hsv = torch.stack([(hsv[:, 0] + shift) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
            x = _hsv_to_rgb(hsv)
        return x


register("transform", ToRGB, Resize, Blur, RandomCrop, HFlip, VFlip, RandomAffine, RandomShift, RandomBlur, RandomContrast, ColorJitter)  # config slots of this kind may name them (runner.targets)
