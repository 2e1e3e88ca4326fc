"""Tests for maskcon_jax.augment against independent references."""

import colorsys
import functools
import itertools
import math

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskcon_jax import augment
from maskcon_jax import autoaugment

_SEEDS = st.integers(min_value=0, max_value=2**31 - 1)
_SETTINGS = hypothesis.settings(max_examples=10, deadline=None)

# Eager JAX compiles every primitive separately for each new shape, so the
# tests call jitted wrappers: one compilation per function and shape.
_resized_crop = jax.jit(augment.resized_crop, static_argnames="size")
_brightness = jax.jit(augment.adjust_brightness)
_contrast = jax.jit(augment.adjust_contrast)
_saturation = jax.jit(augment.adjust_saturation)
_hue = jax.jit(augment.adjust_hue)


def _stats(channels):
  return (0.5,) * channels, (0.25,) * channels


def _random_image(seed, shape):
  return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _random_uint8(seed, shape):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---------------------------------------------------------------------------
# resized_crop
# ---------------------------------------------------------------------------


def _pil_resized_crop(image, box, size):
  """Crop and resize each channel with PIL's bilinear filter in 'F' mode."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  top, left, height, width = box
  channels = []
  for c in range(image.shape[-1]):
    pil = Image.fromarray(np.ascontiguousarray(image[..., c]))
    pil = pil.crop((left, top, left + width, top + height))
    channels.append(np.asarray(pil.resize((size, size), Image.BILINEAR)))
  return np.stack(channels, axis=-1)


def _half_pixel_resize(crop, size):
  """Bilinear resize written from tf.image.resize's half-pixel kernel."""
  in_h, in_w, _ = crop.shape

  def axis(in_size):
    scale = in_size / size
    lower, upper, lerp = [], [], []
    for o in range(size):
      src = (o + 0.5) * scale - 0.5
      src_floor = math.floor(src)
      lower.append(max(src_floor, 0))
      upper.append(min(math.ceil(src), in_size - 1))
      lerp.append(src - src_floor)
    return lower, upper, lerp

  ylo, yhi, ylerp = axis(in_h)
  xlo, xhi, xlerp = axis(in_w)
  out = np.zeros((size, size, crop.shape[-1]), np.float64)
  for y in range(size):
    for x in range(size):
      top_l, top_r = crop[ylo[y], xlo[x]], crop[ylo[y], xhi[x]]
      bot_l, bot_r = crop[yhi[y], xlo[x]], crop[yhi[y], xhi[x]]
      top = top_l + (top_r - top_l) * xlerp[x]
      bot = bot_l + (bot_r - bot_l) * xlerp[x]
      out[y, x] = top + (bot - top) * ylerp[y]
  return out


# Boxes that only upscale (box height and width <= size), including boxes on
# the image border, so PIL's bilinear filter has no antialiasing to add.
@pytest.mark.parametrize(
    "box, size",
    [
        ((2, 3, 5, 7), 16),
        ((0, 0, 13, 17), 20),
        ((4, 1, 9, 6), 9),
        ((8, 12, 5, 5), 11),
        ((0, 10, 13, 7), 32),
        ((3, 3, 1, 1), 4),
    ],
)
def test_resized_crop_matches_pil_when_upscaling(box, size):
  image = _random_image(0, (13, 17, 3))
  got = np.asarray(_resized_crop(image, box, size=size))
  want = _pil_resized_crop(image, box, size)
  assert got.shape == (size, size, 3)
  # PIL weights in double precision; float32 coordinates differ by ~1e-7.
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# Downscaling cases against a NumPy transcription of the half-pixel kernel
# (the tf.image.resize(..., 'bilinear', antialias=False) convention). Both
# sides are float32-exact interpolations; 1e-5 covers float32 coordinates.
@pytest.mark.parametrize(
    "box, size",
    [
        ((0, 0, 13, 17), 5),
        ((2, 3, 10, 12), 4),
        ((1, 0, 12, 17), 7),
        ((0, 4, 13, 8), 3),
        ((5, 5, 8, 3), 6),  # Downscales rows, upscales columns.
    ],
)
def test_resized_crop_matches_half_pixel_reference_when_downscaling(box, size):
  image = _random_image(1, (13, 17, 2))
  top, left, height, width = box
  got = np.asarray(_resized_crop(image, box, size=size))
  want = _half_pixel_resize(
      image[top : top + height, left : left + width].astype(np.float64), size
  )
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_resized_crop_full_box_same_size_is_identity():
  image = _random_image(2, (24, 24, 3))
  got = _resized_crop(image, (0, 0, 24, 24), size=24)
  np.testing.assert_allclose(np.asarray(got), image, atol=1e-6, rtol=0)


def test_resized_crop_accepts_traced_box_under_jit_and_vmap():
  images = _random_image(3, (3, 13, 17, 1))
  boxes = tuple(
      jnp.asarray(v) for v in zip((2, 3, 5, 7), (0, 0, 9, 9), (4, 1, 9, 6))
  )
  got = jax.jit(jax.vmap(functools.partial(augment.resized_crop, size=9)))(
      images, boxes
  )
  for i in range(3):
    box = tuple(int(b[i]) for b in boxes)
    want = _pil_resized_crop(images[i], box, 9)
    np.testing.assert_allclose(np.asarray(got[i]), want, atol=1e-4, rtol=0)


def test_random_resized_crop_full_scale_square_ratio_is_identity():
  image = _random_image(4, (20, 20, 3))
  crop = jax.jit(
      jax.vmap(
          functools.partial(
              augment.random_resized_crop,
              size=20,
              scale=(1.0, 1.0),
              ratio=(1.0, 1.0),
          ),
          in_axes=(0, None),
      )
  )
  got = np.asarray(crop(jax.random.split(jax.random.PRNGKey(0), 5), image))
  np.testing.assert_allclose(
      got, np.broadcast_to(image, got.shape), atol=1e-6, rtol=0
  )


# ---------------------------------------------------------------------------
# sample_crop_box
# ---------------------------------------------------------------------------


# Shared by the tests below so each image shape compiles once.
_NUM_BOXES = 4000


@functools.cache
def _boxes_fn(height, width, scale, ratio):
  sample = functools.partial(
      augment.sample_crop_box,
      height=height,
      width=width,
      scale=scale,
      ratio=ratio,
  )
  return jax.jit(jax.vmap(sample))


def _sample_boxes(num, height, width, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
  keys = jax.random.split(jax.random.PRNGKey(height * 1000 + width), num)
  boxes = _boxes_fn(height, width, scale, ratio)(keys)
  return tuple(np.asarray(b) for b in boxes)


def _torchvision_area_fractions(num, height, width, scale, ratio, seed=0):
  """NumPy transcription of RandomResizedCrop.get_params (areas only)."""
  rng = np.random.default_rng(seed)
  area = height * width
  fractions = []
  for _ in range(num):
    for _ in range(10):
      target_area = area * rng.uniform(*scale)
      aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
      w = int(round(math.sqrt(target_area * aspect)))
      h = int(round(math.sqrt(target_area / aspect)))
      if 0 < w <= width and 0 < h <= height:
        fractions.append(w * h / area)
        break
    else:
      fractions.append(1.0)
  return np.asarray(fractions)


@pytest.mark.parametrize("height, width", [(32, 32), (20, 40)])
def test_sample_crop_box_is_inside_image_with_valid_area_and_ratio(
    height, width
):
  scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
  top, left, h, w = _sample_boxes(_NUM_BOXES, height, width, scale, ratio)
  assert np.all(top >= 0) and np.all(left >= 0)
  assert np.all(h >= 1) and np.all(w >= 1)
  assert np.all(top + h <= height) and np.all(left + w <= width)
  # Width and height are rounded, so check the bounds the unrounded values
  # satisfy: each rounded side is within 0.5 of the real one.
  area = height * width
  assert np.all((h + 0.5) * (w + 0.5) >= scale[0] * area)
  assert np.all((h - 0.5) * (w - 0.5) <= scale[1] * area)
  assert np.all((w + 0.5) / (h - 0.5) >= ratio[0])
  assert np.all((w - 0.5) / (h + 0.5) <= ratio[1])
  # Offsets are spread over the whole valid range, not pinned to a corner.
  slack_y, slack_x = height - h, width - w
  movable = slack_y > 0
  assert 0.4 < np.mean(top[movable] / slack_y[movable]) < 0.6
  movable = slack_x > 0
  assert 0.4 < np.mean(left[movable] / slack_x[movable]) < 0.6


@pytest.mark.parametrize("height, width", [(32, 32), (20, 40)])
def test_sample_crop_box_area_distribution_matches_torchvision(height, width):
  scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
  top, left, h, w = _sample_boxes(_NUM_BOXES, height, width, scale, ratio)
  del top, left
  fractions = h * w / (height * width)
  want = _torchvision_area_fractions(20000, height, width, scale, ratio)
  # The fraction has std ~0.23, so the 4000-sample mean has std ~0.004; the
  # bounds are about five standard errors wide.
  assert abs(fractions.mean() - want.mean()) < 0.02
  assert abs(np.median(fractions) - np.median(want)) < 0.03
  if height == width:
    # Fitting attempts are biased towards small areas but still centre around
    # (0.2 + 1) / 2. (A 1:2 image cannot hold large crops of ratio <= 4/3.)
    assert 0.45 < fractions.mean() < 0.65


@pytest.mark.parametrize(
    "height, width, want",
    [
        # Wider than ratio allows: full height, width = round(10 * 4 / 3).
        (10, 40, (0, 13, 10, 13)),
        # Taller than ratio allows: full width, height = round(10 / (3 / 4)).
        (40, 10, (13, 0, 13, 10)),
        # Ratio already in range: the whole image.
        (30, 36, (0, 0, 30, 36)),
    ],
)
def test_sample_crop_box_falls_back_to_central_crop(height, width, want):
  # An area of 2-3 times the image never fits, so every key falls back.
  sample = jax.jit(
      functools.partial(
          augment.sample_crop_box, height=height, width=width, scale=(2.0, 3.0)
      )
  )
  for seed in range(3):
    got = tuple(int(v) for v in sample(jax.random.PRNGKey(seed)))
    assert got == want


# ---------------------------------------------------------------------------
# Flip and colour.
# ---------------------------------------------------------------------------


def test_random_flip():
  image = _random_image(5, (6, 7, 3))

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, None))
  def variants(key, image):
    return (
        augment.random_flip(key, image),
        augment.random_flip(key, image, p=1.0),
        augment.random_flip(key, image, p=0.0),
    )

  keys = jax.random.split(jax.random.PRNGKey(0), 400)
  default, always, never = (np.asarray(x) for x in variants(keys, image))
  np.testing.assert_array_equal(
      always, np.broadcast_to(image[:, ::-1], always.shape)
  )
  np.testing.assert_array_equal(never, np.broadcast_to(image, never.shape))
  flipped = np.all(default == image[:, ::-1], axis=(1, 2, 3))
  assert np.all(flipped | np.all(default == image, axis=(1, 2, 3)))
  # 400 draws with p=0.5: the bounds are about four standard deviations.
  assert 0.4 < flipped.mean() < 0.6


def _colour_image(seed, channels=3):
  image = _random_image(seed, (9, 11, channels))
  # Exercise the HSV edge cases: grey pixels, black, white, saturated primaries
  # and ties between the maximal channels.
  image[0, :6] = np.asarray(
      [
          [0.3] * 3,
          [0.0] * 3,
          [1.0] * 3,
          [1.0, 0.0, 0.0],
          [0.0, 1.0, 0.0],
          [0.6, 0.6, 0.1],
      ]
  )[:, :channels]
  return image


def _np_gray(image):
  return (
      0.2989 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]
  )[..., None]


def _np_blend(image, other, factor):
  return np.clip(factor * image + (1 - factor) * other, 0, 1)


def _np_brightness(image, factor):
  return np.clip(image * factor, 0, 1)


def _np_contrast(image, factor):
  mean = _np_gray(image).mean() if image.shape[-1] == 3 else image.mean()
  return _np_blend(image, mean, factor)


def _np_saturation(image, factor):
  if image.shape[-1] == 1:
    return image
  return _np_blend(image, _np_gray(image), factor)


def _np_hue(image, factor):
  if image.shape[-1] == 1:
    return image
  out = np.empty_like(image)
  for idx in np.ndindex(image.shape[:-1]):
    h, s, v = colorsys.rgb_to_hsv(*image[idx].astype(np.float64))
    out[idx] = colorsys.hsv_to_rgb((h + factor) % 1.0, s, v)
  return out


@pytest.mark.parametrize("channels", [1, 3])
def test_colour_adjustments_at_neutral_factor_are_identity(channels):
  image = _colour_image(7, channels)
  for fn in (_brightness, _contrast, _saturation):
    np.testing.assert_allclose(np.asarray(fn(image, 1.0)), image, atol=1e-6)
  # The hue goes through an HSV round trip, which rounds.
  np.testing.assert_allclose(np.asarray(_hue(image, 0.0)), image, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("factor", [0.0, 0.35, 0.8, 1.3, 2.5])
def test_blend_adjustments_match_torchvision_formulas(channels, factor):
  image = _colour_image(8, channels)
  for fn, ref in (
      (_brightness, _np_brightness),
      (_contrast, _np_contrast),
      (_saturation, _np_saturation),
  ):
    np.testing.assert_allclose(
        np.asarray(fn(image, factor)),
        ref(image, factor),
        atol=1e-5,
        err_msg=ref.__name__,
    )


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("factor", [-0.5, -0.1, 0.07, 0.25, 0.5])
def test_adjust_hue_matches_colorsys(channels, factor):
  image = _colour_image(9, channels)
  got = np.asarray(_hue(image, factor))
  np.testing.assert_allclose(got, _np_hue(image, factor), atol=1e-4)


def test_apply_color_jitter_follows_the_given_order():
  image = _colour_image(10)
  factors = np.asarray([1.3, 0.6, 1.7, 0.2], np.float32)
  refs = (_np_brightness, _np_contrast, _np_saturation, _np_hue)
  orders = list(itertools.permutations(range(4)))
  apply = jax.jit(jax.vmap(augment.apply_color_jitter, in_axes=(None, 0, None)))
  outputs = np.asarray(apply(image, jnp.asarray(orders), factors))
  for order, got in zip(orders, outputs):
    want = image
    for op in order:
      want = refs[op](want, factors[op])
    np.testing.assert_allclose(got, want, atol=1e-4, err_msg=str(order))
  # The order matters for these factors, so a fixed order would be caught.
  assert len({o.tobytes() for o in outputs}) > 12


def test_color_jitter_params_are_random_permutations_in_range():
  keys = jax.random.split(jax.random.PRNGKey(1), 500)
  orders, factors = jax.jit(jax.vmap(augment.sample_color_jitter_params))(keys)
  orders, factors = np.asarray(orders), np.asarray(factors)
  np.testing.assert_array_equal(np.sort(orders, axis=1), [[0, 1, 2, 3]] * 500)
  assert len({tuple(o) for o in orders}) == 24
  lo, hi = np.asarray([0.6, 0.6, 0.6, -0.1]), np.asarray([1.4, 1.4, 1.4, 0.1])
  assert np.all(factors >= lo) and np.all(factors <= hi)
  # Uniform draws spread over the whole range.
  assert np.all(factors.min(axis=0) < lo + 0.05)
  assert np.all(factors.max(axis=0) > hi - 0.05)


@pytest.mark.slow
def test_color_jitter_probability_and_params():
  image = _colour_image(11)

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, None))
  def variants(key, image):
    default = augment.color_jitter(key, image)
    never = augment.color_jitter(key, image, p=0.0)
    always = augment.color_jitter(key, image, p=1.0)
    order, factors = augment.sample_color_jitter_params(key)
    return (
        default,
        never,
        always,
        augment.apply_color_jitter(image, order, factors),
    )

  keys = jax.random.split(jax.random.PRNGKey(2), 300)
  default, never, always, from_params = (
      np.asarray(x) for x in variants(keys, image)
  )
  changed = np.any(default != image, axis=(1, 2, 3))
  # 300 draws with p=0.8: the bounds are about four standard deviations.
  assert 0.72 < changed.mean() < 0.88
  np.testing.assert_array_equal(never, np.broadcast_to(image, never.shape))
  # color_jitter applies exactly the order and factors sampled from its key.
  np.testing.assert_array_equal(always, from_params)
  # When applied, the default output is the always-applied one.
  np.testing.assert_array_equal(default[changed], always[changed])


def test_random_grayscale():
  image = _colour_image(13)

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, None))
  def variants(key, image):
    return (
        augment.random_grayscale(key, image),
        augment.random_grayscale(key, image, p=1.0),
        augment.random_grayscale(key, image, p=0.0),
        augment.random_grayscale(key, image[..., :1], p=1.0),
    )

  keys = jax.random.split(jax.random.PRNGKey(4), 400)
  default, always, never, mono = (np.asarray(x) for x in variants(keys, image))
  want = np.repeat(_np_gray(image), 3, axis=-1)
  np.testing.assert_allclose(
      always, np.broadcast_to(want, always.shape), atol=1e-6
  )
  np.testing.assert_array_equal(never, np.broadcast_to(image, never.shape))
  np.testing.assert_array_equal(
      mono, np.broadcast_to(image[..., :1], mono.shape)
  )
  grey = np.all(default == always, axis=(1, 2, 3))
  assert np.all(grey | np.all(default == image, axis=(1, 2, 3)))
  # 400 draws with p=0.2: the bounds are about three standard deviations.
  assert 0.14 < grey.mean() < 0.26


def test_normalize():
  image = np.asarray([[[0.0, 0.5, 1.0]]], np.float32)
  got = augment.normalize(image, (0.5, 0.5, 0.5), (0.5, 0.25, 0.5))
  np.testing.assert_allclose(np.asarray(got), [[[-1.0, 0.0, 1.0]]], atol=1e-6)
  got = augment.normalize(image, (0.5,), (0.5,))
  np.testing.assert_allclose(np.asarray(got), [[[-1.0, 0.0, 1.0]]], atol=1e-6)
  with pytest.raises(ValueError, match="mean has 2 entries"):
    augment.normalize(image, (0.5, 0.5), (0.5,))
  with pytest.raises(ValueError, match="std has 2 entries"):
    augment.normalize(image[..., :1], (0.5,), (0.5, 0.5))


# ---------------------------------------------------------------------------
# Views.
# ---------------------------------------------------------------------------


@functools.cache
def _view_fn(policy, size, channels):
  """Jitted `(rng, image) -> (view in [0, 1], normalised view)`."""
  augment_fn = {"weak": augment.weak_augment, "strong": augment.strong_augment}[
      policy
  ]
  view_fn = augment.VIEW_POLICIES[policy]
  mean, std = _stats(channels)

  @jax.jit
  def fn(rng, image):
    return (
        augment_fn(rng, image, size=size),
        view_fn(rng, image, size=size, mean=mean, std=std),
    )

  return fn


# Fashion-MNIST downscaled and upscaled, 8x8 digits, CIFAR-sized RGB and a
# non-square RGB image. The weak policy is a prefix of the strong one, so one
# shape covers it.
@pytest.mark.slow
@pytest.mark.parametrize(
    "policy, height, width, channels, size",
    [
        ("strong", 28, 28, 1, 16),
        ("strong", 8, 8, 1, 16),
        ("strong", 32, 32, 3, 32),
        ("strong", 20, 30, 3, 24),
        ("weak", 28, 28, 1, 32),
    ],
)
def test_views_shape_range_determinism_and_normalisation(
    policy, height, width, channels, size
):
  mean, std = _stats(channels)
  fn = _view_fn(policy, size, channels)

  @_SETTINGS
  @hypothesis.example(seed=37806, image_seed=0)  # See "other views" below.
  @hypothesis.given(seed=_SEEDS, image_seed=_SEEDS)
  def check(seed, image_seed):
    image = _random_uint8(image_seed, (height, width, channels))
    key = jax.random.PRNGKey(seed)
    raw, view = (np.asarray(x) for x in fn(key, image))
    assert raw.shape == view.shape == (size, size, channels)
    assert raw.dtype == view.dtype == np.float32
    assert np.all(np.isfinite(raw))
    assert raw.min() >= 0.0 and raw.max() <= 1.0
    np.testing.assert_allclose(view, (raw - mean) / std, atol=1e-5)
    # Same key, same view; other keys, other views. One other key may draw
    # the same view (an 8x8 image upscaled has few distinct crops: seed
    # 37806 and its fold_in(1) agree), three in a row practically never.
    np.testing.assert_array_equal(np.asarray(fn(key, image)[1]), view)
    others = [
        np.asarray(fn(jax.random.fold_in(key, i), image)[1]) for i in (1, 2, 3)
    ]
    assert not all(np.array_equal(other, view) for other in others)

  check()


@pytest.mark.parametrize("policy", ["weak", "strong"])
def test_views_flip_half_the_time(policy):
  # A 1-channel horizontal ramp stays increasing under any crop, brightness or
  # contrast change (the only colour ops with an effect on 1 channel) and the
  # values are small enough never to clip at the bright end, so a decreasing
  # view must have been flipped.
  ramp = np.broadcast_to(np.linspace(0.1, 0.5, 8, dtype=np.float32), (8, 8))
  image = ramp[..., None]
  augment_fn = {"weak": augment.weak_augment, "strong": augment.strong_augment}[
      policy
  ]
  fn = jax.jit(
      jax.vmap(functools.partial(augment_fn, size=8), in_axes=(0, None))
  )
  out = np.asarray(fn(jax.random.split(jax.random.PRNGKey(5), 400), image))
  left, right = out[:, :, 0, 0].mean(axis=1), out[:, :, -1, 0].mean(axis=1)
  assert np.all(left != right)
  flipped = left > right
  # 400 draws with p=0.5: the bounds are about four standard deviations.
  assert 0.4 < flipped.mean() < 0.6


def test_weak_view_crops_with_moco_scale_and_ratio():
  # Channels holding the row and column index reveal the crop box: when
  # upscaling, the outermost output pixels are exactly the crop's edge pixels.
  rows, cols = np.meshgrid(np.arange(32.0), np.arange(32.0), indexing="ij")
  image = np.stack([rows, cols], axis=-1).astype(np.float32)
  fn = jax.jit(
      jax.vmap(
          functools.partial(augment.weak_augment, size=32), in_axes=(0, None)
      )
  )
  out = np.asarray(fn(jax.random.split(jax.random.PRNGKey(7), 1000), image))
  h = out[..., 0].max(axis=(1, 2)) - out[..., 0].min(axis=(1, 2)) + 1
  w = out[..., 1].max(axis=(1, 2)) - out[..., 1].min(axis=(1, 2)) + 1
  np.testing.assert_array_equal(h, np.round(h))
  fractions = h * w / 1024
  assert np.all((h + 0.5) * (w + 0.5) >= 0.2 * 1024)
  assert np.all((w + 0.5) / (h - 0.5) >= 3 / 4)
  assert np.all((w - 0.5) / (h + 0.5) <= 4 / 3)
  want = _torchvision_area_fractions(20000, 32, 32, (0.2, 1.0), (3 / 4, 4 / 3))
  # Five standard errors of the 1000-sample mean.
  assert abs(fractions.mean() - want.mean()) < 0.04


def test_strong_view_applies_colour_jitter_and_grayscale():
  # Crop and flip leave a constant image unchanged, so only the colour ops
  # can change it.
  colour = np.asarray([0.7, 0.4, 0.2], np.float32)
  image = np.broadcast_to(colour, (8, 8, 3))
  fn = jax.jit(
      jax.vmap(
          functools.partial(augment.strong_augment, size=8), in_axes=(0, None)
      )
  )
  out = np.asarray(fn(jax.random.split(jax.random.PRNGKey(6), 400), image))
  pixel = out[:, 0, 0]
  assert np.all(out == out[:, :1, :1])
  unchanged = np.all(pixel == colour, axis=-1)
  grey = (pixel[:, 0] == pixel[:, 1]) & (pixel[:, 1] == pixel[:, 2])
  # Unchanged needs no jitter (0.2) and no grayscale (0.8): 0.16. Grey needs
  # grayscale: 0.2 (jitter factors never make the channels equal here).
  # 400 draws; the bounds are about 3.5 standard deviations.
  assert 0.1 < unchanged.mean() < 0.23
  assert 0.13 < grey.mean() < 0.27


@pytest.mark.slow
@pytest.mark.parametrize(
    "policy, make_key",
    [
        ("weak", jax.random.PRNGKey),
        ("strong", jax.random.PRNGKey),
        ("strong", jax.random.key),
    ],
)
def test_batch_views_match_single_views_with_split_keys(policy, make_key):
  batch_fn = {
      "weak": augment.weak_view_batch,
      "strong": augment.strong_view_batch,
  }[policy]
  mean, std = _stats(1)
  # One image repeated: any difference between examples comes from the
  # per-example keys.
  images = np.repeat(_random_uint8(15, (1, 28, 28, 1)), 6, axis=0)
  key = make_key(7)
  out = np.asarray(
      jax.jit(functools.partial(batch_fn, size=16, mean=mean, std=std))(
          key, images
      )
  )
  assert out.shape == (6, 16, 16, 1) and out.dtype == np.float32
  assert len({o.tobytes() for o in out}) == 6
  single = _view_fn(policy, 16, 1)
  for i, k in enumerate(jax.random.split(key, 6)):
    np.testing.assert_allclose(
        out[i], np.asarray(single(k, images[i])[1]), atol=1e-6
    )


def test_test_view_resizes_and_normalises_deterministically():
  mean, std = _stats(3)
  images = _random_uint8(16, (4, 13, 17, 3))
  out = np.asarray(
      jax.jit(
          functools.partial(
              augment.test_view_batch, size=20, mean=mean, std=std
          )
      )(images)
  )
  assert out.shape == (4, 20, 20, 3) and out.dtype == np.float32
  single = jax.jit(
      functools.partial(augment.test_view, size=20, mean=mean, std=std)
  )
  for i in range(4):
    want = _pil_resized_crop(
        images[i].astype(np.float32) / 255, (0, 0, 13, 17), 20
    )
    np.testing.assert_allclose(out[i], (want - mean) / std, atol=1e-4)
    np.testing.assert_allclose(out[i], np.asarray(single(images[i])), atol=1e-6)


def test_view_policies_registry():
  assert augment.VIEW_POLICIES["weak"] is augment.weak_view
  assert augment.VIEW_POLICIES["strong"] is augment.strong_view


@pytest.mark.slow
def test_jitted_batch_view_compiles_once():
  traces = []
  mean, std = _stats(3)

  @jax.jit
  def step(key, images):
    traces.append(None)
    strong = augment.strong_view_batch(key, images, size=32, mean=mean, std=std)
    return strong, augment.test_view_batch(images, size=32, mean=mean, std=std)

  for seed in range(3):
    images = _random_uint8(seed, (8, 32, 32, 3))
    strong, test = step(jax.random.PRNGKey(seed), images)
    assert strong.shape == test.shape == (8, 32, 32, 3)
    assert np.all(np.isfinite(np.asarray(strong)))
    np.testing.assert_allclose(
        np.asarray(test), (images / 255 - mean) / std, atol=1e-5
    )
  assert len(traces) == 1


# ---------------------------------------------------------------------------
# Perspective (torchvision RandomPerspective on PIL images).
# ---------------------------------------------------------------------------

# The tests below rebuild views from their private steps to check the order.
# pylint: disable=protected-access


def _torchvision_perspective_coeffs(startpoints, endpoints):
  """torchvision's _get_perspective_coeffs: float64 least squares, float32."""
  a = np.zeros((8, 8))
  for i, (p1, p2) in enumerate(zip(endpoints, startpoints)):
    a[2 * i] = [p1[0], p1[1], 1, 0, 0, 0, -p2[0] * p1[0], -p2[0] * p1[1]]
    a[2 * i + 1] = [0, 0, 0, p1[0], p1[1], 1, -p2[1] * p1[0], -p2[1] * p1[1]]
  b = np.asarray(startpoints, np.float64).reshape(8)
  return np.linalg.lstsq(a, b, rcond=None)[0].astype(np.float32)


def _corners(height, width):
  return [[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]]


def _apply_homography(coeffs, x, y):
  a, b, c, d, e, f, g, h = np.asarray(coeffs, np.float64)
  den = g * x + h * y + 1
  return (a * x + b * y + c) / den, (d * x + e * y + f) / den


# (height, width, endpoints): mild and maximal distortions at 32 px and 224 px
# (offsets up to int(0.5 * side // 2)), and a non-square image.
_PERSPECTIVE_CASES = [
    (32, 32, [[3, 1], [29, 0], [31, 27], [8, 24]]),
    (32, 32, [[8, 8], [23, 8], [23, 23], [8, 23]]),
    (224, 224, [[56, 3], [200, 56], [170, 223], [0, 180]]),
    (12, 16, [[2, 1], [12, 0], [14, 9], [4, 8]]),
]


@pytest.mark.parametrize("height, width, endpoints", _PERSPECTIVE_CASES)
def test_perspective_coeffs_match_torchvision(height, width, endpoints):
  start = _corners(height, width)
  got = np.asarray(
      jax.jit(augment.perspective_coeffs)(
          np.asarray(start, np.float32), np.asarray(endpoints, np.float32)
      )
  )
  want = _torchvision_perspective_coeffs(start, endpoints)
  # float32 closed form against a float64 solve: relative error ~1e-6 of
  # each coefficient's scale.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # The homography takes each endpoint onto its image corner.
  for (ex, ey), (sx, sy) in zip(endpoints, start):
    np.testing.assert_allclose(
        _apply_homography(got, ex, ey), (sx, sy), atol=1e-3
    )


@pytest.mark.parametrize(
    "height, width, endpoints", [c for c in _PERSPECTIVE_CASES if c[0] < 100]
)
@pytest.mark.parametrize("channels", [1, 3])
def test_perspective_transform_matches_pil(height, width, endpoints, channels):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  coeffs = _torchvision_perspective_coeffs(_corners(height, width), endpoints)
  image = _random_image(20, (height, width, channels))
  got = np.asarray(jax.jit(augment.perspective_transform)(image, coeffs))
  # PIL in 'F' mode, one channel at a time: bilinear without rounding.
  want = np.stack(
      [
          np.asarray(
              Image.fromarray(image[..., c]).transform(
                  (width, height),
                  Image.PERSPECTIVE,
                  tuple(map(float, coeffs)),
                  Image.BILINEAR,
              )
          )
          for c in range(channels)
      ],
      axis=-1,
  )
  # Points within 1e-3 px of the image border may fall on either side of it
  # (fill or value); elsewhere both interpolate the same four pixels with
  # weights that differ by float32 rounding.
  y, x = np.mgrid[:height, :width] + 0.5
  u, v = _apply_homography(coeffs, x, y)
  clear = (
      np.minimum.reduce(
          [np.abs(u), np.abs(u - width), np.abs(v), np.abs(v - height)]
      )
      > 1e-3
  )
  np.testing.assert_allclose(got[clear], want[clear], atol=1e-5)
  assert clear.mean() > 0.9
  # Part of the output lies outside the warped image and is filled with 0.
  outside = clear & ((u < 0) | (u >= width) | (v < 0) | (v >= height))
  assert outside.any() and np.all(got[outside] == 0)


@pytest.mark.parametrize("height, width", [(32, 32), (20, 31)])
def test_perspective_endpoints_follow_torchvision_get_params(height, width):
  keys = jax.random.split(jax.random.PRNGKey(0), 2000)
  endpoints = np.asarray(
      jax.jit(
          jax.vmap(
              lambda k: augment._perspective_endpoints(
                  jax.random.uniform(k, (8,)), height, width, 0.5
              )
          )
      )(keys)
  )
  kx, ky = int(0.5 * (width // 2)), int(0.5 * (height // 2))
  np.testing.assert_array_equal(endpoints, np.round(endpoints))
  # Offsets of each corner from its image corner, inwards.
  right, bottom = width - 1, height - 1
  offsets_x = np.stack(
      [
          endpoints[:, 0, 0],
          right - endpoints[:, 1, 0],
          right - endpoints[:, 2, 0],
          endpoints[:, 3, 0],
      ],
      1,
  )
  offsets_y = np.stack(
      [
          endpoints[:, 0, 1],
          endpoints[:, 1, 1],
          bottom - endpoints[:, 2, 1],
          bottom - endpoints[:, 3, 1],
      ],
      1,
  )
  for offsets, k in ((offsets_x, kx), (offsets_y, ky)):
    # torch.randint(0, k + 1): every integer in [0, k], about equally often.
    for column in offsets.T:
      counts = np.bincount(column.astype(int), minlength=k + 1)
      assert counts.shape == (k + 1,)
      expected = len(column) / (k + 1)
      assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


@pytest.mark.slow
def test_random_perspective_probability_and_params():
  image = _random_image(21, (16, 16, 3))

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, None))
  def variants(key, image):
    coeffs = augment.sample_perspective_coeffs(key, 16, 16)
    return (
        augment.random_perspective(key, image),
        augment.random_perspective(key, image, p=0.0),
        augment.random_perspective(key, image, p=1.0),
        augment.perspective_transform(image, coeffs),
    )

  keys = jax.random.split(jax.random.PRNGKey(22), 400)
  default, never, always, from_params = (
      np.asarray(x) for x in variants(keys, image)
  )
  # Without a warp the image is resampled at its own pixel centres: exact.
  np.testing.assert_array_equal(never, np.broadcast_to(image, never.shape))
  np.testing.assert_allclose(always, from_params, atol=1e-6)
  warped = np.any(default != image, axis=(1, 2, 3))
  assert np.all(np.any(always != image, axis=(1, 2, 3)))
  np.testing.assert_array_equal(default[warped], always[warped])
  # 400 draws with p=0.5: the bounds are about four standard deviations.
  assert 0.4 < warped.mean() < 0.6


@pytest.mark.parametrize("flip_first", [False, True])
def test_flip_folded_into_perspective_matches_flipping_pixels(flip_first):
  # The views fold the flip into the warp's matrix; that must equal
  # flipping the pixels before (SOP, Cars query) or after (Cars key) warping.
  image = _random_image(23, (20, 20, 3))
  coeffs = _torchvision_perspective_coeffs(
      _corners(20, 20), [[3, 2], [17, 0], [19, 15], [1, 19]]
  )
  matrix = np.append(coeffs, 1).reshape(3, 3)
  flip = np.asarray([[-1, 0, 20], [0, 1, 0], [0, 0, 1]], np.float32)
  warp = jax.jit(augment._homography_warp)
  y, x = np.mgrid[:20, :20] + 0.5
  if flip_first:
    got = warp(image, flip @ matrix)
    want = warp(image[:, ::-1], matrix)
  else:
    got = warp(image, matrix @ flip)
    want = np.asarray(warp(image, matrix))[:, ::-1]
    x = 20 - x
  # Source points on the image border may round to either side of it.
  u, v = _apply_homography(coeffs, x, y)
  clear = (
      np.minimum.reduce([np.abs(u), np.abs(u - 20), np.abs(v), np.abs(v - 20)])
      > 1e-3
  )
  np.testing.assert_allclose(
      np.asarray(got)[clear], np.asarray(want)[clear], atol=1e-5
  )
  assert clear.mean() > 0.9


# ---------------------------------------------------------------------------
# Gaussian blur (torchvision GaussianBlur).
# ---------------------------------------------------------------------------


def _np_gaussian_kernel(sigma, kernel_size):
  x = np.arange(kernel_size) - (kernel_size - 1) / 2
  pdf = np.exp(-0.5 * (x / sigma) ** 2)
  return pdf / pdf.sum()


@pytest.mark.slow
@pytest.mark.parametrize(
    "sigma, kernel_size", [(0.1, 3), (0.8, 5), (2.0, 7), (1.3, 23)]
)
@pytest.mark.parametrize("channels", [1, 3])
def test_gaussian_blur_matches_scipy_reflect_convolution(
    sigma, kernel_size, channels
):
  from scipy import ndimage  # pylint: disable=g-import-not-at-top

  image = _random_image(24, (12, 16, channels))
  kernel = _np_gaussian_kernel(sigma, kernel_size)
  np.testing.assert_allclose(
      np.asarray(augment.gaussian_kernel1d(sigma, kernel_size)),
      kernel,
      atol=1e-6,
  )
  blur = jax.jit(augment.gaussian_blur, static_argnames="kernel_size")
  got = np.asarray(blur(image, sigma, kernel_size=kernel_size))
  # scipy's 'mirror' mode is torch's 'reflect' padding (edge not repeated).
  want = image.astype(np.float64)
  for axis in (0, 1):
    want = ndimage.correlate1d(want, kernel, axis=axis, mode="mirror")
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_blur_kernel_size():
  assert augment.blur_kernel_size(224) == 23
  assert augment.blur_kernel_size(32) == 3
  assert augment.blur_kernel_size(64) == 7
  assert augment.blur_kernel_size(8) == 3
  with pytest.raises(ValueError, match="odd"):
    augment.gaussian_blur(np.zeros((4, 4, 1), np.float32), 1.0, 4)


def test_random_gaussian_blur_probability_and_sigma():
  image = _random_image(25, (16, 16, 3))

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, None))
  def variants(key, image):
    uniforms = jax.random.uniform(key, (2,))
    sigma = 0.1 + 1.9 * uniforms[0]
    return (
        augment.random_gaussian_blur(key, image),
        augment.random_gaussian_blur(key, image, p=0.0),
        augment.gaussian_blur(image, sigma, 3),
    )

  keys = jax.random.split(jax.random.PRNGKey(26), 400)
  default, never, want = (np.asarray(x) for x in variants(keys, image))
  np.testing.assert_array_equal(never, np.broadcast_to(image, never.shape))
  blurred = np.any(default != image, axis=(1, 2, 3))
  # The sigma drawn for a key is 0.1 + 1.9 * its first uniform.
  np.testing.assert_allclose(default[blurred], want[blurred], atol=1e-6)
  assert 0.4 < blurred.mean() < 0.6


# ---------------------------------------------------------------------------
# The paper's per-dataset views.
# ---------------------------------------------------------------------------


def test_normalization_statistics():
  assert augment.NORMALIZATION == {
      "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
      "cifar100": ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276)),
      "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
  }


def test_dataset_view_policies_are_registered():
  policies = augment.VIEW_POLICIES
  assert policies["cifar_strong"] is augment.cifar_strong_view
  assert policies["cifar_strong_tv"] is augment.cifar_strong_tv_view
  assert policies["cifar_weak"] is augment.weak_view
  assert policies["cars_strong"] is augment.cars_strong_view
  assert policies["cars_weak"] is augment.cars_weak_view
  assert policies["sop"] is augment.sop_view


_DATASET_AUGMENTS = {
    "cifar_strong": augment.cifar_strong_augment,
    "cifar_strong_tv": augment.cifar_strong_tv_augment,
    "cars_strong": augment.cars_strong_augment,
    "cars_weak": augment.cars_weak_augment,
    "sop": augment.sop_augment,
}


@pytest.mark.slow
@pytest.mark.parametrize("policy", sorted(_DATASET_AUGMENTS))
def test_dataset_views_under_jit_and_vmap(policy):
  mean, std = augment.NORMALIZATION["cifar10"]
  images = _random_uint8(27, (8, 40, 36, 3))
  key = jax.random.PRNGKey(28)

  @jax.jit
  def views(key, images):
    raw = jax.vmap(functools.partial(_DATASET_AUGMENTS[policy], size=24))(
        jax.random.split(key, 8), images
    )
    view = augment.view_batch(
        augment.VIEW_POLICIES[policy], key, images, size=24, mean=mean, std=std
    )
    return raw, view

  raw, view = (np.asarray(x) for x in views(key, images))
  assert raw.shape == view.shape == (8, 24, 24, 3)
  assert raw.dtype == view.dtype == np.float32
  assert np.all(np.isfinite(view))
  assert raw.min() >= 0.0 and raw.max() <= 1.0
  np.testing.assert_allclose(
      view, (raw - np.asarray(mean)) / np.asarray(std), atol=1e-5
  )
  assert len({v.tobytes() for v in view}) == 8
  np.testing.assert_array_equal(np.asarray(views(key, images)[1]), view)


def _uniforms(key, num):
  return jax.random.uniform(key, (num,))


# cifar_strong is the official MaskCon code's view (its own AutoAugment);
# cifar_strong_tv keeps torchvision's AutoAugment.
_CIFAR_STRONG_FLAVOURS = {
    "cifar_strong": (augment.cifar_strong_augment, autoaugment.OFFICIAL),
    "cifar_strong_tv": (
        augment.cifar_strong_tv_augment,
        autoaugment.TORCHVISION,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("policy", sorted(_CIFAR_STRONG_FLAVOURS))
def test_cifar_strong_is_weak_then_autoaugment(policy):
  augment_fn, flavour = _CIFAR_STRONG_FLAVOURS[policy]
  image = _random_uint8(29, (32, 32, 3))

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, None))
  def both(key, image):
    u = _uniforms(key, 46)
    weak = augment._weak_augment(u[:41], image, 32)
    return (
        augment_fn(key, image, size=32),
        weak,
        autoaugment.apply_autoaugment(u[41:], weak, flavour=flavour),
    )

  out, weak, want = (
      np.asarray(x)
      for x in both(jax.random.split(jax.random.PRNGKey(30), 64), image)
  )
  np.testing.assert_array_equal(out, want)
  # AutoAugment changes most views (each sub-policy step runs with p <= 0.9).
  assert np.mean(np.any(out != weak, axis=(1, 2, 3))) > 0.3


@pytest.mark.slow
def test_cifar_strong_tv_is_the_torchvision_view_and_differs_from_official():
  # cifar_strong_tv is what cifar_strong was before the official policy:
  # crop + flip + torchvision's AutoAugment with the default arguments.
  # Both views draw the same uniforms, so they share crop, flip and
  # sub-policy and differ only where the two AutoAugments do.
  image = _random_uint8(33, (32, 32, 3))

  @jax.jit
  @jax.vmap
  def views(key):
    u = _uniforms(key, 46)
    weak = augment._weak_augment(u[:41], image, 32)
    return (
        augment.cifar_strong_tv_augment(key, image, size=32),
        autoaugment.apply_autoaugment(u[41:], weak),
        augment.cifar_strong_augment(key, image, size=32),
    )

  tv, default, official = (
      np.asarray(x) for x in views(jax.random.split(jax.random.PRNGKey(34), 64))
  )
  np.testing.assert_array_equal(tv, default)
  differs = np.any(tv != official, axis=(1, 2, 3))
  assert 0.1 < differs.mean() < 0.9


@pytest.mark.slow
def test_cifar_strong_grey_image_matches_its_rgb_copy():
  # A 1-channel image gives, channel by channel, the view of its 3-channel
  # copy (fill 128/255 on the single channel; luma of a grey pixel = itself).
  grey = _random_uint8(35, (36, 40, 1))
  rgb = np.repeat(grey, 3, axis=-1)
  keys = jax.random.split(jax.random.PRNGKey(36), 64)
  views = jax.jit(
      jax.vmap(
          functools.partial(augment.cifar_strong_augment, size=32),
          in_axes=(0, None),
      )
  )
  out1, out3 = np.asarray(views(keys, grey)), np.asarray(views(keys, rgb))
  assert out1.shape == (64, 32, 32, 1) and out3.shape == (64, 32, 32, 3)
  np.testing.assert_allclose(out3, np.broadcast_to(out1, out3.shape), atol=1e-6)
  # Some views show the grey fill of a translation, shear or rotation.
  fill = np.float32(128 / 255)
  assert np.mean(np.any(out1 == fill, axis=(1, 2, 3))) > 0.05


@pytest.mark.slow
def test_cars_views_apply_their_transforms_in_the_paper_order():
  # Recomposes each view from the public transforms with the same uniforms.
  image = _random_uint8(31, (40, 36, 3))
  size = 24

  def crop(u):
    return augment._view_crop(u, image, size)

  def flip(u, x):
    return jnp.where(u < 0.5, x[:, ::-1], x)

  def perspective(u, x):
    endpoints = augment._perspective_endpoints(u[:8], size, size, 0.5)
    coeffs = augment.perspective_coeffs(
        jnp.asarray(_corners(size, size), jnp.float32), endpoints
    )
    return jnp.where(u[8] < 0.5, augment.perspective_transform(x, coeffs), x)

  @jax.jit
  @jax.vmap
  def views(key):
    u = _uniforms(key, 62)
    # Crop, flip and warp as the view does (the flip folded into the warp;
    # checked against flipping pixels below and in the test above), so that
    # the colour ops, which use image-wide statistics, see the same input.
    x = augment._flip_then_perspective(u[:41], u[41:50], image, size)
    order, factors = augment._jitter_params(u[50:59], 0.4, 0.4, 0.4, 0.1)
    x = jnp.where(u[58] < 0.8, augment.apply_color_jitter(x, order, factors), x)
    x = jnp.where(
        u[59] < 0.2, jnp.broadcast_to(augment.rgb_to_grayscale(x), x.shape), x
    )
    sigma = 0.1 + 1.9 * u[60]
    strong = jnp.where(u[61] < 0.5, augment.gaussian_blur(x, sigma, 3), x)
    u = _uniforms(key, 50)
    weak = flip(u[49], perspective(u[40:49], crop(u[:40])))
    u = _uniforms(key, 50)
    sop = perspective(u[41:50], flip(u[40], crop(u[:40])))
    return (
        strong,
        augment.cars_strong_augment(key, image, size=size),
        weak,
        augment.cars_weak_augment(key, image, size=size),
        sop,
        augment.sop_augment(key, image, size=size),
    )

  out = [
      np.asarray(x) for x in views(jax.random.split(jax.random.PRNGKey(32), 64))
  ]
  np.testing.assert_allclose(out[1], out[0], atol=1e-5)
  # The views fold the flip into the warp, which moves sample points by
  # float rounding. That decides in/out differently for the odd pixel whose
  # centre maps exactly onto the warped image's edge (integer corners make
  # that common). Any change of order would alter most pixels of the views
  # that are both flipped and warped (about a quarter).
  for name, want, got in (("cars_weak", *out[2:4]), ("sop", *out[4:6])):
    match = np.all(np.abs(got - want) <= 1e-5, axis=-1)
    assert match.mean() >= 0.998, name


@pytest.mark.slow
def test_policy_views_matches_view_batch_per_policy():
  mean, std = augment.NORMALIZATION["cifar10"]
  images = _random_uint8(29, (4, 32, 32, 3))
  keys = tuple(jax.random.split(jax.random.PRNGKey(30)))
  weak, strong = augment.policy_views(
      ("weak", "strong"), keys, images, size=32, mean=mean, std=std
  )
  for view, name, key in ((weak, "weak", keys[0]), (strong, "strong", keys[1])):
    expected = augment.view_batch(
        augment.VIEW_POLICIES[name], key, images, size=32, mean=mean, std=std
    )
    np.testing.assert_array_equal(np.asarray(view), np.asarray(expected))
  assert not np.array_equal(np.asarray(weak), np.asarray(strong))
  with pytest.raises(ValueError, match="2 policies but 1 keys"):
    augment.policy_views(
        ("weak", "strong"), keys[:1], images, size=32, mean=mean, std=std
    )
