"""Batched transforms: what each does to known tensors; per-sample randomness, seeded."""
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from matplotlib.colors import rgb_to_hsv

from runner.data.transforms import (Blur, ColorJitter, HFlip, RandomAffine, RandomBlur,
                                    RandomContrast, RandomCrop, RandomShift, Resize, ToRGB, VFlip,
                                    _gray)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


RANDOM = [RandomCrop(4), RandomCrop(0, size=5), HFlip(), VFlip(), RandomShift(0.5),
          RandomAffine(rotation=10, shear=40, shear_y=20, scale=0.4, translate=0.4), RandomBlur(0.3),
          RandomContrast(0.4), ColorJitter(0.5, 0.5, 0.25, 0.1)]


@pytest.mark.parametrize("t", RANDOM, ids=lambda t: type(t).__name__)
def test_randomness_is_per_sample_and_seeded(t):
    x = torch.rand(1, 3, 8, 8).expand(16, -1, -1, -1).contiguous()  # 16 copies of one image
    a, b = t(x.clone(), gen(1)), t(x.clone(), gen(1))
    torch.testing.assert_close(a, b)  # same seed, same result
    assert not all(torch.equal(a[0], a[i]) for i in range(1, 16))  # samples differ
    assert not torch.equal(a, t(x.clone(), gen(2)))


def test_blur_of_a_constant_image_is_constant():
    x = torch.full((2, 3, 32, 32), 0.3)
    torch.testing.assert_close(Blur(0.25)(x), x)
    torch.testing.assert_close(RandomBlur(0.3)(x, gen()), x)


def test_blur_averages_blocks():
    x = torch.zeros(1, 1, 4, 4)
    x[..., 0, 0] = 1.0  # one bright pixel: the 2x2 area mean is 0.25, spread bilinearly
    y = Blur(0.5)(x)
    assert y.sum() == pytest.approx(1.0, abs=1e-5) and y.max() == pytest.approx(0.25)


def test_random_blur_keeps_some_images_sharp_and_blurs_others():
    x = (torch.arange(64.0).view(1, 1, 8, 8) % 2).expand(32, 1, 8, 8)  # stripes
    y = RandomBlur(0.3, levels=4)(x, gen())
    sharp = [(y[i] == x[i]).all().item() for i in range(32)]
    assert any(sharp) and not all(sharp)


def test_full_shift_moves_content_out_of_view():
    x = torch.ones(64, 1, 16, 16)
    y = RandomShift(1.0, fill=0.0)(x, gen())
    visible = y.mean((1, 2, 3))
    assert visible.min() < 0.1  # some images shifted (almost) entirely out of view
    assert visible.max() > 0.5
    # a shift of 100 % exactly in both axes leaves nothing
    t = RandomShift(1.0)
    theta = torch.tensor([[[1.0, 0, -2.0], [0, 1.0, -2.0]]])
    grid = torch.nn.functional.affine_grid(theta, [1, 1, 16, 16], align_corners=False)
    assert torch.nn.functional.grid_sample(x[:1], grid, align_corners=False).abs().max() == 0
    assert isinstance(t, RandomAffine)


def test_shift_by_whole_pixels_matches_a_roll():
    x = torch.rand(1, 1, 8, 8)
    t = RandomAffine()
    t.matrices = lambda b, g, d: torch.tensor([[[1.0, 0, -0.5], [0, 1.0, 0.0]]])  # 2 of 8 px
    y = t(x)
    torch.testing.assert_close(y[..., 2:], x[..., :-2])
    assert y[..., :2].abs().max() == 0


def test_affine_matrices_are_rotations_scalings_and_shears():
    rot = RandomAffine(rotation=30).matrices(256, gen(), "cpu")
    lin = rot[:, :, :2]
    torch.testing.assert_close(lin @ lin.transpose(1, 2), torch.eye(2).expand(256, 2, 2))
    angle = torch.atan2(lin[:, 1, 0], lin[:, 0, 0]).abs() * 180 / torch.pi
    assert angle.max() <= 30 + 1e-4 and angle.max() > 25 and angle.std() > 1
    zoom = 1 / RandomAffine(scale=0.4).matrices(256, gen(), "cpu")[:, 0, 0]
    assert zoom.min() >= 0.6 - 1e-5 and zoom.max() <= 1.4 + 1e-5
    shear = RandomAffine(shear=40).matrices(256, gen(), "cpu")[:, :, :2]
    torch.testing.assert_close(torch.linalg.det(shear), torch.ones(256))  # area-preserving
    assert shear[:, 0, 1].abs().max() <= torch.tan(torch.tensor(40 * torch.pi / 180)) + 1e-5
    assert (shear[:, 1, 0] == 0).all()
    torch.testing.assert_close(RandomAffine().matrices(3, gen(), "cpu"),
                               torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(3, 2, 3))


def test_flips():
    x = torch.arange(16.0).view(1, 1, 4, 4).expand(2, 1, 4, 4)
    torch.testing.assert_close(HFlip(1.0)(x), x.flip(-1))
    torch.testing.assert_close(VFlip(1.0)(x), x.flip(-2))
    torch.testing.assert_close(VFlip(0.0)(x), x)


def test_random_crop_with_padding_stays_a_window():
    x = torch.rand(32, 1, 6, 6)
    y = RandomCrop(2)(x, gen())
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(32):  # every output is one of the 25 windows of its padded input
        assert any(torch.equal(y[i], xp[i, :, r:r + 6, c:c + 6]) for r in range(5) for c in range(5))


def test_resize_248_then_random_crop_224_gives_224():
    x = torch.rand(2, 3, 224, 224)
    y = RandomCrop(0, size=224)(Resize(248)(x), gen())
    assert y.shape == (2, 3, 224, 224)


def test_to_rgb_and_resize():
    x = torch.rand(2, 1, 28, 28)
    y = Resize(224)(ToRGB()(x))
    assert y.shape == (2, 3, 224, 224)
    torch.testing.assert_close(y[:, 0], y[:, 2])
    const = torch.full((1, 1, 28, 28), 0.7)
    torch.testing.assert_close(Resize(224)(const), torch.full((1, 1, 224, 224), 0.7))


def test_contrast_keeps_the_mean_and_scales_deviations():
    x = torch.rand(64, 1, 8, 8)
    y = RandomContrast(0.4)(x, gen())
    dev_x = (x - x.mean((1, 2, 3), keepdim=True)).std((1, 2, 3))
    dev_y = (y - x.mean((1, 2, 3), keepdim=True)).std((1, 2, 3))
    ratio = dev_y / dev_x
    assert ratio.min() >= 0.6 - 1e-4 and ratio.max() <= 1.4 + 1e-4 and ratio.std() > 0.05


def test_color_jitter_components():
    grey = torch.full((8, 3, 4, 4), 0.5)
    # hue and saturation leave grey images unchanged
    torch.testing.assert_close(ColorJitter(saturation=0.5, hue=0.5)(grey, gen()), grey)
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    j = ColorJitter(hue=0.5)
    j_shift = j(red.expand(64, 3, 2, 2), gen())
    assert (j_shift.max(1).values - 1).abs().max() < 1e-5  # value (max channel) preserved
    assert (j_shift[:, 1:].amax((1, 2, 3)) > 0.5).any()  # some turned green or blue
    b = ColorJitter(brightness=0.5)(grey, gen())
    assert ((b >= 0.25 - 1e-6) & (b <= 0.75 + 1e-6)).all() and b.std() > 0


ALL = RANDOM + [RandomCrop(2, mode="reflect"), Resize(6, crop=4), Resize(10), Blur(0.5), ToRGB()]


@pytest.mark.parametrize("t", ALL, ids=lambda t: type(t).__name__)
def test_transforms_work_on_the_images_device_and_dtype(t):
    # the meta device refuses to mix with CPU tensors: every tensor a transform makes is on x's
    y = t(torch.empty(4, 3, 8, 8, device="meta"), None)
    assert y.device.type == "meta"
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64, generator=gen())
    assert t(x, gen()).dtype == torch.float64


@pytest.mark.parametrize("t", RANDOM + [RandomContrast(0.9), ColorJitter(brightness=0.9),
                                        ColorJitter(contrast=0.9), ColorJitter(saturation=0.9),
                                        ColorJitter(hue=0.5)], ids=lambda t: type(t).__name__)
def test_outputs_stay_in_the_unit_interval(t):
    x = (torch.rand(64, 3, 6, 6, generator=gen(1)) > 0.5).float()  # black, white, pure colours
    y = t(x, gen())
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("shape", [(2, 3, 3, 5), (2, 3, 5, 3), (1, 1, 7, 4), (1, 1, 4, 7),
                                   (1, 3, 3, 3), (1, 3, 9, 9)])
def test_resize_gives_size_by_size_like_torchvision(shape):
    x = torch.rand(shape, generator=gen())
    torch.testing.assert_close(Resize(3)(x), TF.resize(x, [3, 3], antialias=False))


def test_resize_by_hand():
    x = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    row = torch.tensor([0.0, 0.25, 0.75, 1.0])  # half-pixel centres: corners not aligned
    torch.testing.assert_close(Resize(4)(x), row.expand(1, 1, 4, 4))
    x = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(Resize(2, mode="nearest")(x), x[..., ::2, ::2])
    torch.testing.assert_close(Resize(2, mode="area")(x), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert Resize(2, mode="bicubic")(x).shape == (1, 1, 2, 2)


def test_resize_then_centre_crop():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    torch.testing.assert_close(Resize(8, crop=4)(x), x[..., 2:6, 2:6])
    torch.testing.assert_close(Resize(8, crop=5)(x), x[..., 1:6, 1:6])
    y = Resize(16, crop=8)(x)  # up-sample, then the central half
    torch.testing.assert_close(y, Resize(16)(x)[..., 4:12, 4:12])


def test_blur_by_hand():
    x = torch.zeros(1, 1, 4, 4)
    x[..., 0, 0] = 1.0  # the 2x2 area means are 0.25 and 0: bilinear back with half-pixel centres
    w = torch.tensor([1.0, 0.75, 0.25, 0.0])
    torch.testing.assert_close(Blur(0.5)(x), 0.25 * torch.outer(w, w).view(1, 1, 4, 4))


def test_random_crop_reflect_is_a_window_of_the_reflected_image():
    x = torch.rand(32, 1, 5, 5, generator=gen())
    y = RandomCrop(2, fill=0.5, mode="reflect")(x, gen())  # fill applies to constant padding only
    xp = F.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(32):
        assert any(torch.equal(y[i], xp[i, :, r:r + 5, c:c + 5]) for r in range(5) for c in range(5))


def test_shift_fills_the_uncovered_area():
    x = torch.rand(1, 2, 8, 8, generator=gen())
    t = RandomShift(0.5, fill=0.3)
    t.matrices = lambda b, g, d: torch.tensor([[[1.0, 0, -0.5], [0, 1.0, 0.0]]])  # 2 of 8 px
    y = t(x)
    torch.testing.assert_close(y[..., 2:], x[..., :-2])
    torch.testing.assert_close(y[..., :2], torch.full_like(y[..., :2], 0.3))


def test_gray_is_itu601_luma():
    x = torch.rand(4, 1, 3, 3, generator=gen())
    assert torch.equal(_gray(x), x)  # one channel: already grey
    rgb = torch.eye(3).view(3, 3, 1, 1)  # pure red, green, blue
    torch.testing.assert_close(_gray(rgb).flatten(), torch.tensor([0.299, 0.587, 0.114]))


def test_contrast_keeps_each_images_mean_grey_level():
    # float64, no clamping (values near each image's own mean): the mean is kept to rounding
    base = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64).view(3, 1, 1, 1)
    x = base + 0.05 * torch.rand(3, 3, 4, 4, dtype=torch.float64, generator=gen())
    y = RandomContrast(0.4)(x, gen())
    luma = lambda t: (t * torch.tensor([0.299, 0.587, 0.114], dtype=t.dtype).view(1, 3, 1, 1)  # noqa: E731
                      ).sum(1).mean((1, 2))
    torch.testing.assert_close(luma(y), luma(x), atol=1e-12, rtol=0)
    assert not torch.allclose(y, x)


def test_color_jitter_components_at_zero_are_off():
    x = torch.rand(8, 3, 4, 4, generator=gen())
    assert torch.equal(ColorJitter()(x, gen()), x)
    grey = torch.rand(8, 1, 4, 4, generator=gen())  # saturation and hue need colour
    assert torch.equal(ColorJitter(saturation=0.5, hue=0.2)(grey, gen()), grey)


def test_hue_shift_turns_every_colour_of_an_image_by_the_same_angle():
    x = torch.rand(16, 3, 4, 4, generator=gen())  # random colours: every sector of the hexcone
    y = ColorJitter(hue=0.5)(x, gen())
    hsv = lambda t: torch.from_numpy(rgb_to_hsv(t.permute(0, 2, 3, 1).numpy())).flatten(1, 2)  # noqa: E731
    a, b = hsv(x), hsv(y)  # an independent HSV: (images, pixels, hsv)
    torch.testing.assert_close(b[..., 1:], a[..., 1:], atol=1e-5, rtol=0)  # saturation, value kept
    turn = (b[..., 0] - a[..., 0]) % 1.0
    spread = (turn - turn[:, :1] + 0.5) % 1.0 - 0.5  # circular difference to the first pixel
    assert spread.abs().max() < 1e-4
    assert turn[:, 0].std() > 0.1  # images turned by different angles
