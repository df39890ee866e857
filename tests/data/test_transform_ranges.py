"""Every random transform covers its whole range over many draws, ends included, and never leaves
it: crop offsets (the last one too), flip rates both ways, shift fractions, angles, zooms, shears,
blur levels, contrast / brightness / saturation factors and hue shifts. Each drawn parameter is
read back from the transformed images (or from the sampled matrices), not from the code."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.colors import rgb_to_hsv

from runner.data.transforms import (ColorJitter, HFlip, RandomAffine, RandomBlur, RandomContrast,
                                    RandomCrop, RandomShift, VFlip)

N = 4000


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def covers(values, lo, hi, slack=0.02):
    """All values within [lo, hi], and both ends reached to within `slack` of the width."""
    v = torch.as_tensor(values, dtype=torch.float64)
    eps = 1e-5 * max(1.0, abs(lo), abs(hi))
    width = hi - lo
    return (v.min() >= lo - eps and v.max() <= hi + eps
            and v.min() <= lo + slack * width and v.max() >= hi - slack * width)


def coordinates(n, h, w):
    """n images whose channel 0 is the row index and channel 1 the column index."""
    rows = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w)
    cols = torch.arange(w, dtype=torch.float32).view(1, w).expand(h, w)
    return torch.stack([rows, cols]).expand(n, 2, h, w).contiguous()


@pytest.mark.parametrize("padding,size,side", [(4, None, 8), (2, None, 8), (0, 5, 8), (3, 6, 7)])
def test_random_crop_reaches_every_offset(padding, size, side):
    crop = side if size is None else size
    out = RandomCrop(padding, fill=-1.0, size=size)(coordinates(N, side, side), gen())
    # output pixel (r, c) is image pixel (top + r - p, left + c - p) where that is not padding:
    # read the offsets back at the first such pixel of each output
    first = (out[:, 0] != -1).flatten(1).float().argmax(1)
    r, c = first // crop, first % crop
    at = torch.arange(N)
    top, left = out[at, 0, r, c] - r + padding, out[at, 1, r, c] - c + padding
    last = side + 2 * padding - crop
    for offsets in (top, left):
        counts = torch.bincount(offsets.long(), minlength=last + 1)
        assert len(counts) == last + 1, "offset beyond the last window"
        assert counts.min() > 0.5 * N / (last + 1), f"offsets not all drawn: {counts.tolist()}"
        assert counts.max() < 1.25 * N / (last + 1), f"offsets not uniform: {counts.tolist()}"
    assert torch.corrcoef(torch.stack([top, left]))[0, 1].abs() < 0.1  # drawn independently


@pytest.mark.parametrize("flip,dim", [(HFlip, -1), (VFlip, -2)])
@pytest.mark.parametrize("p", [0.3, 0.5, None])
def test_flips_happen_at_their_rate(flip, dim, p):
    x = coordinates(N, 4, 4)
    out = (flip() if p is None else flip(p))(x, gen())
    p = 0.5 if p is None else p  # the default: half the images
    flipped = (out == x.flip(dim)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped ^ kept).all())  # each image is one or the other
    assert flipped.float().mean().item() == pytest.approx(p, abs=0.03)


@pytest.mark.parametrize("flip", [HFlip, VFlip])
def test_flip_with_p_0_never_flips_even_on_a_draw_of_exactly_0(flip):
    g = gen(3)
    torch.rand(1532311, generator=g)  # seed 3's stream has an exact 0.0 here
    state = g.get_state()
    assert torch.rand(1, generator=g).item() == 0.0
    g.set_state(state)
    x = coordinates(1, 4, 4)
    assert torch.equal(flip(0.0)(x, g), x)


def linear_parts(theta):
    """Forward (image -> output) linear map and shift, in units of the side, of affine_grid's
    output -> input matrices."""
    fwd = torch.linalg.inv(theta[:, :, :2])
    shift = (fwd @ -theta[:, :, 2:]).squeeze(-1) / 2  # a side is 2 units long
    return fwd, shift


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_shift_fractions_cover_plus_minus_fraction(fraction):
    theta = RandomShift(fraction).matrices(N, gen(), "cpu")
    fwd, shift = linear_parts(theta)
    torch.testing.assert_close(fwd, torch.eye(2).expand(N, 2, 2))
    for axis in (0, 1):
        assert covers(shift[:, axis], -fraction, fraction)
    # read back from images: a shifted point lands where the shift says
    x = torch.zeros(8, 1, 33, 33)
    x[:, :, 16, 16] = 1.0  # a dot at the centre
    t = RandomShift(0.25)
    theta = t.matrices(8, gen(1), "cpu")
    t.matrices = lambda b, g, d: theta
    out = t(x, None)
    _, shift = linear_parts(theta)
    ys, xs = torch.arange(33.0).view(33, 1), torch.arange(33.0).view(1, 33)
    mass = out[:, 0].sum((1, 2))
    cx, cy = (out[:, 0] * xs).sum((1, 2)) / mass, (out[:, 0] * ys).sum((1, 2)) / mass
    torch.testing.assert_close(cx - 16, shift[:, 0] * 33, atol=0.05, rtol=0)
    torch.testing.assert_close(cy - 16, shift[:, 1] * 33, atol=0.05, rtol=0)


def test_affine_parameters_cover_their_ranges():
    rot = linear_parts(RandomAffine(rotation=30).matrices(N, gen(), "cpu"))[0]
    angle = torch.atan2(rot[:, 1, 0], rot[:, 0, 0]) * 180 / math.pi
    assert covers(angle, -30, 30, slack=0.002)  # degrees exactly: 4000 draws reach 0.1 deg of the ends
    zoom = linear_parts(RandomAffine(scale=0.4).matrices(N, gen(), "cpu"))[0][:, 0, 0]
    assert covers(zoom, 0.6, 1.4)
    limit = math.tan(math.radians(40))
    shx = linear_parts(RandomAffine(shear=40).matrices(N, gen(), "cpu"))[0]
    assert covers(shx[:, 0, 1], -limit, limit) and bool((shx[:, 1, 0] == 0).all())
    shy = linear_parts(RandomAffine(shear_y=40).matrices(N, gen(), "cpu"))[0]
    assert covers(shy[:, 1, 0], -limit, limit) and bool((shy[:, 0, 1] == 0).all())
    shift = linear_parts(RandomAffine(translate=0.2).matrices(N, gen(), "cpu"))[1]
    assert covers(shift[:, 0], -0.2, 0.2) and covers(shift[:, 1], -0.2, 0.2)


@pytest.mark.parametrize("levels", [4, 8, None])
def test_random_blur_uses_every_level(levels):
    h = 16
    x = torch.rand(1, 1, h, h, generator=gen(3)).expand(800, 1, h, h).contiguous()
    out = (RandomBlur() if levels is None else RandomBlur(0.3, levels=levels))(x, gen())
    levels = levels or 8  # the default: 8 levels down to 30 % (Zilly et al.)
    candidates = []
    for s in np.linspace(0.3, 1.0, levels):  # what each level does to the image, by hand
        size = max(1, round(h * s))
        small = F.interpolate(x[:1], size=(size, size), mode="area")
        candidates.append(F.interpolate(small, size=(h, h), mode="bilinear", align_corners=False))
    candidates = torch.cat(candidates)
    dist = (out[:, None] - candidates[None]).flatten(2).abs().amax(2)  # (images, levels)
    level = dist.argmin(1)
    assert bool((dist.min(1).values < 1e-5).all())  # every output is one of the levels
    counts = torch.bincount(level, minlength=levels)
    assert counts.min() > 0.5 * 800 / levels, counts.tolist()  # the first (0.3) and last (1.0) too


def test_random_blur_of_a_tiny_image_reaches_one_pixel():
    x = torch.rand(64, 2, 4, 4, generator=gen())
    out = RandomBlur(0.25, levels=2)(x, gen())  # 4 x 0.25: down to 1x1, i.e. each image's mean
    sharp = (out == x).flatten(1).all(1)
    flat = (out - x.mean((2, 3), keepdim=True)).flatten(1).abs().amax(1) < 1e-6
    assert bool((sharp ^ flat).all()) and sharp.any() and flat.any()


def test_contrast_factors_cover_their_range():
    x = (0.5 + 0.05 * torch.randn(N, 1, 4, 4, generator=gen(1))).clamp(0, 1)  # no clamping below
    out = RandomContrast(0.4)(x, gen())
    mean = x.mean((1, 2, 3), keepdim=True)
    f = ((out - mean) * (x - mean)).sum((1, 2, 3)) / (x - mean).pow(2).sum((1, 2, 3))
    assert covers(f, 0.6, 1.4)


def test_color_jitter_components_cover_their_ranges():
    grey = torch.full((N, 3, 1, 1), 0.5)
    f = ColorJitter(brightness=0.5)(grey, gen())[:, 0, 0, 0] / 0.5
    assert covers(f, 0.5, 1.5)

    colour = torch.tensor([0.5, 0.4, 0.45]).view(1, 3, 1, 1).expand(N, 3, 1, 1)
    luma = (colour[0, :, 0, 0] * torch.tensor([0.299, 0.587, 0.114])).sum()
    out = ColorJitter(saturation=0.4)(colour, gen())
    f = (out[:, 0, 0, 0] - luma) / (colour[0, 0, 0, 0] - luma)
    assert covers(f, 0.6, 1.4)

    out = ColorJitter(hue=0.1)(colour, gen())
    hue = lambda t: rgb_to_hsv(t[:, :, 0, 0].numpy())[:, 0]  # noqa: E731 (an independent HSV)
    shift = (hue(out) - hue(colour) + 0.5) % 1.0 - 0.5
    assert covers(shift, -0.1, 0.1, slack=0.03)
