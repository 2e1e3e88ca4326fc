"""Tests for maskcon_jax.autoaugment against PIL and NumPy references.

Images are small uint8 arrays scaled to [0, 1]; outputs are compared on the
uint8 level scale (`round(255 * x)`). Tolerances:

* Lookup-table ops (invert, posterize, solarize, equalize): exact, since both
  sides do the same integer arithmetic. Autocontrast: exact against the
  integer formula; PIL evaluates it in double precision and lands one level
  lower where the exact quotient is an integer just missed by rounding, so
  against PIL those (and only those) pixels may be one level lower.
* Enhance ops: within 1e-5 of the float formula, and 0 or +1 level above PIL,
  which rounds its degenerate image to uint8 (an error of at most 0.45 level
  after scaling by |1 - factor| <= 0.9) and truncates the blend.
* Geometric ops: exact on every pixel whose PIL source point lies more than
  1e-3 px from a pixel boundary (float32 and double can round differently
  only there), and on at least 95% of all pixels.

The official MaskCon flavour is compared with a PIL reference written from
the official code's op definitions (`_official_op`), on random RGB images
and grey images converted to RGB, at 28 and 32 px. Its nearest-neighbour
ops are exact there; its bicubic shears lie 0 to 1 level above PIL, which
truncates the interpolated value to uint8 where `autoaugment` keeps the
float (tolerances in `test_official_ops_match_pil_reference`).
"""

import functools

import hypothesis
from hypothesis import strategies as st
import jax
import numpy as np
import pytest

from maskcon_jax import autoaugment as aa

_SEEDS = st.integers(min_value=0, max_value=2**31 - 1)
_SETTINGS = hypothesis.settings(max_examples=10, deadline=None)

# Eager JAX compiles every primitive separately for each new shape, so the
# tests call jitted wrappers: one compilation per function and shape.
_invert = jax.jit(aa.invert)
_posterize = jax.jit(aa.posterize)
_solarize = jax.jit(aa.solarize)
_autocontrast = jax.jit(aa.autocontrast)
_equalize = jax.jit(aa.equalize)
_brightness = jax.jit(aa.enhance_brightness)
_color = jax.jit(aa.enhance_color)
_contrast = jax.jit(aa.enhance_contrast)
_sharpness = jax.jit(aa.enhance_sharpness)
_rotate = jax.jit(aa.rotate, static_argnames="fill")
_shear_x = jax.jit(aa.shear_x, static_argnames="fill")
_shear_y = jax.jit(aa.shear_y, static_argnames="fill")
_translate_x = jax.jit(aa.translate_x, static_argnames="fill")
_translate_y = jax.jit(aa.translate_y, static_argnames="fill")
_apply_op = jax.jit(jax.vmap(aa.apply_op, in_axes=(None, 0, 0)))


def _uint8(seed, shape, low=0, high=256):
  return np.random.default_rng(seed).integers(low, high, shape, dtype=np.uint8)


def _float(image):
  # As augment.to_float scales uint8 images; the lookup-table ops return
  # levels on the same grid.
  return image.astype(np.float32) * np.float32(1 / 255)


def _levels(image):
  return np.round(np.asarray(image, np.float64) * 255).astype(np.int64)


def _pil(image):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if image.shape[-1] == 1:
    return Image.fromarray(image[..., 0], "L")
  return Image.fromarray(image, "RGB")


def _unpil(pil):
  array = np.asarray(pil).astype(np.int64)
  return array[..., None] if array.ndim == 2 else array


# A few images: random RGB, random grey, a low-contrast RGB (autocontrast has
# work to do) and a coarse one with few distinct levels.
_IMAGES = {
    "rgb": _uint8(0, (12, 12, 3)),
    "grey": _uint8(1, (12, 12, 1)),
    "low_contrast": _uint8(2, (12, 12, 3), 40, 126),
    "few_levels": (_uint8(3, (12, 12, 3), 0, 4) * 60).astype(np.uint8),
}


# ---------------------------------------------------------------------------
# Lookup-table ops: exact.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(_IMAGES))
def test_invert_matches_pil(name):
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top

  image = _IMAGES[name]
  got = _levels(_invert(_float(image)))
  np.testing.assert_array_equal(got, _unpil(ImageOps.invert(_pil(image))))


@pytest.mark.parametrize("name", sorted(_IMAGES))
def test_posterize_matches_pil(name):
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top

  image = _IMAGES[name]
  for bits in range(1, 9):
    got = _levels(_posterize(_float(image), bits))
    want = _unpil(ImageOps.posterize(_pil(image), bits))
    np.testing.assert_array_equal(got, want, err_msg=f"bits={bits}")


@pytest.mark.parametrize("name", sorted(_IMAGES))
def test_solarize_matches_pil(name):
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top

  image = _IMAGES[name]
  # torchvision's bins are fractional (linspace(255, 0, 10)); 256 inverts
  # nothing and 0 everything.
  for threshold in (0.0, 28.333334, 113.333336, 128.0, 198.33333, 255.0, 256.0):
    got = _levels(_solarize(_float(image), threshold))
    want = _unpil(ImageOps.solarize(_pil(image), threshold))
    np.testing.assert_array_equal(got, want, err_msg=f"threshold={threshold}")


def _np_autocontrast(image):
  out = image.astype(np.int64).copy()
  for c in range(image.shape[-1]):
    channel = out[..., c]
    lo, hi = channel.min(), channel.max()
    if hi > lo:
      out[..., c] = (channel - lo) * 255 // (hi - lo)
  return out


@pytest.mark.parametrize("name", sorted(_IMAGES))
def test_autocontrast_matches_integer_formula_and_pil(name):
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top

  image = _IMAGES[name].copy()
  if name == "rgb":
    image[..., 1] = 77  # A constant channel is left alone.
  got = _levels(_autocontrast(_float(image)))
  np.testing.assert_array_equal(got, _np_autocontrast(image))
  want = _unpil(ImageOps.autocontrast(_pil(image)))
  diff = got - want
  assert set(np.unique(diff)) <= {0, 1}
  # Where PIL is lower, the exact quotient is an integer.
  for c in range(image.shape[-1]):
    channel = image[..., c].astype(np.int64)
    span = channel.max() - channel.min()
    lower = diff[..., c] == 1
    assert np.all((channel[lower] - channel.min()) * 255 % max(span, 1) == 0)


def test_equalize_matches_pil():
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top

  # A 32x32 image whose brightest level occurs once: PIL's table gives that
  # level (2 + 1023) // 4 = 256, which its point() clips to 255.
  clipped = _uint8(4, (32, 32, 3), 0, 201)
  clipped[5, 7] = 250
  constant = np.full((12, 12, 3), 93, np.uint8)
  images = dict(_IMAGES, clipped=clipped, constant=constant)
  for name, image in images.items():
    got = _levels(_equalize(_float(image)))
    want = _unpil(ImageOps.equalize(_pil(image)))
    np.testing.assert_array_equal(got, want, err_msg=name)
  assert _levels(_equalize(_float(clipped)))[5, 7, 0] == 255


def test_lookup_ops_quantise_float_inputs_to_levels():
  image = np.random.default_rng(5).random((12, 12, 3), dtype=np.float32)
  as_levels = _float(_levels(image).astype(np.uint8))
  for fn, args in (
      (_invert, ()),
      (_posterize, (3,)),
      (_solarize, (100.0,)),
      (_autocontrast, ()),
      (_equalize, ()),
  ):
    got = np.asarray(fn(image, *args))
    np.testing.assert_array_equal(got, np.asarray(fn(as_levels, *args)))
    # Outputs lie on uint8 levels.
    np.testing.assert_allclose(got * 255, _levels(got), atol=1e-4)


# ---------------------------------------------------------------------------
# Enhance ops: the float formula, and within one level of PIL.
# ---------------------------------------------------------------------------


def _np_gray(image):
  if image.shape[-1] == 1:
    return image
  return (
      0.2989 * image[..., :1]
      + 0.587 * image[..., 1:2]
      + 0.114 * image[..., 2:3]
  )


def _np_smooth(image):
  out = image.copy()
  kernel = np.ones((3, 3))
  kernel[1, 1] = 5
  kernel /= 13
  h, w = image.shape[:2]
  for y in range(1, h - 1):
    for x in range(1, w - 1):
      out[y, x] = np.tensordot(
          kernel, image[y - 1 : y + 2, x - 1 : x + 2], axes=((0, 1), (0, 1))
      )
  return out


def _np_blend(image, degenerate, factor):
  return np.clip(degenerate + factor * (image - degenerate), 0, 1)


_ENHANCE = {
    # name: (op, float reference degenerate, PIL enhancer name)
    "brightness": (_brightness, np.zeros_like, "Brightness"),
    "color": (_color, _np_gray, "Color"),
    "contrast": (_contrast, lambda x: _np_gray(x).mean(), "Contrast"),
    "sharpness": (_sharpness, _np_smooth, "Sharpness"),
}


@pytest.mark.parametrize("op_name", sorted(_ENHANCE))
@pytest.mark.parametrize("image_name", ["rgb", "grey", "low_contrast"])
def test_enhance_ops_match_formula_and_pil(op_name, image_name):
  from PIL import ImageEnhance  # pylint: disable=g-import-not-at-top

  fn, degenerate_fn, enhancer = _ENHANCE[op_name]
  image = _IMAGES[image_name]
  x = _float(image).astype(np.float64)
  for factor in (0.1, 0.37, 1.0, 1.5, 1.9):
    got = np.asarray(fn(_float(image), factor))
    want = _np_blend(x, degenerate_fn(x), factor)
    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=str(factor))
    pil = _unpil(getattr(ImageEnhance, enhancer)(_pil(image)).enhance(factor))
    diff = _levels(got) - pil
    assert diff.min() >= 0 and diff.max() <= 1, (factor, diff.min(), diff.max())


# ---------------------------------------------------------------------------
# Geometric ops: exact away from pixel boundaries.
# ---------------------------------------------------------------------------


def _source_points(matrix, height, width):
  """PIL's source point (double precision) for every output pixel."""
  a, b, c, d, e, f = matrix
  y, x = np.mgrid[:height, :width] + 0.5
  return a * x + b * y + c, d * x + e * y + f


def _pil_rotate_matrix(degrees, height, width):
  # Image.rotate's inverse matrix about (W / 2, H / 2), as PIL builds it.
  angle = -np.deg2rad(degrees)
  a, b = round(np.cos(angle), 15), round(np.sin(angle), 15)
  d, e = round(-np.sin(angle), 15), round(np.cos(angle), 15)
  cx, cy = width / 2, height / 2
  return (a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy)


def _assert_geometric_match(got, want, matrix):
  height, width = got.shape[:2]
  u, v = _source_points(matrix, height, width)
  margin = np.minimum(np.abs(u - np.round(u)), np.abs(v - np.round(v)))
  clear = margin > 1e-3
  mismatch = np.any(got != want, axis=-1)
  assert not np.any(mismatch & clear)
  # Source points on a boundary are common for simple magnitudes (a shear of
  # 0.2 puts every fifth column's points on one), but they only change the
  # output where neighbouring pixels differ.
  assert mismatch.mean() <= 0.05


# Magnitudes the CIFAR-10 policy uses at 32 px (both signs), plus others.
@pytest.mark.parametrize(
    "degrees", [0.0, 6.6666665, -6.6666665, 30.0, -17.3, 90.0]
)
def test_rotate_matches_pil(degrees):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  image = _uint8(6, (32, 32, 3))
  degrees = float(np.float32(degrees))
  got = _levels(_rotate(_float(image), degrees))
  want = _unpil(_pil(image).rotate(degrees, Image.NEAREST))
  _assert_geometric_match(got, want, _pil_rotate_matrix(degrees, 32, 32))


# ShearX/Y and TranslateX/Y as torchvision builds them. With shear angle
# atan(m) about the top-left corner, _get_inverse_affine_matrix reduces to
# (1, m, 0, 0, 1, 0) for ShearX and (1, 0, 0, m, 1, 0) for ShearY (the
# matrices of the original AutoAugment code); a translation by t is
# (1, 0, -tx, 0, 1, -ty).
_AFFINE_CASES = [
    ("shear_x", 0.26666668),
    ("shear_x", -0.23333333),
    ("shear_x", 0.3),
    ("shear_y", 0.26666668),
    ("shear_y", -0.2),
    ("shear_y", 0.033333335),
    ("translate_x", 14.0),
    ("translate_x", -12.0),
    ("translate_x", 4.0),
    ("translate_y", 14.0),
    ("translate_y", -4.0),
    ("translate_y", 2.5),
]


def _affine_matrix(op, magnitude):
  return {
      "shear_x": (1, magnitude, 0, 0, 1, 0),
      "shear_y": (1, 0, 0, magnitude, 1, 0),
      "translate_x": (1, 0, -magnitude, 0, 1, 0),
      "translate_y": (1, 0, 0, 0, 1, -magnitude),
  }[op]


@pytest.mark.parametrize("op, magnitude", _AFFINE_CASES)
@pytest.mark.parametrize("channels", [1, 3])
def test_shear_and_translate_match_pil(op, magnitude, channels):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  fn = {
      "shear_x": _shear_x,
      "shear_y": _shear_y,
      "translate_x": _translate_x,
      "translate_y": _translate_y,
  }[op]
  image = _uint8(7, (32, 32, channels))
  # torchvision's magnitudes are float32 (torch.linspace) and reach PIL as
  # the doubles of those values.
  magnitude = float(np.float32(magnitude))
  matrix = _affine_matrix(op, magnitude)
  got = _levels(fn(_float(image), magnitude))
  want = _unpil(
      _pil(image).transform((32, 32), Image.AFFINE, matrix, Image.NEAREST)
  )
  _assert_geometric_match(got, want, matrix)


def test_geometric_fill():
  grey = np.float32(0.2)
  image = np.full((8, 8, 3), grey, np.float32)
  out = np.asarray(_translate_x(image, 3.0, fill=0.5))
  np.testing.assert_array_equal(out[:, :3], 0.5)
  np.testing.assert_array_equal(out[:, 3:], grey)
  out = np.asarray(_rotate(image, 45.0))
  assert out[0, 0, 0] == 0.0 and out[4, 4, 0] == grey


# ---------------------------------------------------------------------------
# Dispatch, identities and invariants.
# ---------------------------------------------------------------------------


def _direct(name, image, magnitude):
  """The public op that `apply_op(image, OP_INDEX[name], magnitude)` runs."""
  return {
      "Identity": lambda: image,
      "Invert": lambda: aa.invert(image),
      "AutoContrast": lambda: aa.autocontrast(image),
      "Equalize": lambda: aa.equalize(image),
      "Posterize": lambda: aa.posterize(image, int(magnitude)),
      "Solarize": lambda: aa.solarize(image, magnitude),
      "Brightness": lambda: aa.enhance_brightness(image, 1 + magnitude),
      "Color": lambda: aa.enhance_color(image, 1 + magnitude),
      "Contrast": lambda: aa.enhance_contrast(image, 1 + magnitude),
      "Sharpness": lambda: aa.enhance_sharpness(image, 1 + magnitude),
      "Rotate": lambda: aa.rotate(image, magnitude),
      "ShearX": lambda: aa.shear_x(image, magnitude),
      "ShearY": lambda: aa.shear_y(image, magnitude),
      "TranslateX": lambda: aa.translate_x(image, int(magnitude)),
      "TranslateY": lambda: aa.translate_y(image, int(magnitude)),
  }[name]()


# One (op, magnitude) per row, every op at least once, as the policy would
# pass them (signed, translate and posterize fractional to check truncation).
_DISPATCH_CASES = [
    ("Identity", 0.0),
    ("Invert", 0.0),
    ("AutoContrast", 0.0),
    ("Equalize", 0.0),
    ("Posterize", 5.0),
    ("Posterize", 6.7),
    ("Solarize", 113.333336),
    ("Brightness", -0.6),
    ("Brightness", 0.8),
    ("Color", 0.3),
    ("Contrast", -0.7),
    ("Sharpness", 0.9),
    ("Sharpness", -0.4),
    ("Rotate", -6.6666665),
    ("ShearX", 0.26666668),
    ("ShearY", -0.23333333),
    ("TranslateX", -12.888889),
    ("TranslateY", 14.500001),
]


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 3])
def test_apply_op_under_vmap_matches_each_op(channels):
  image = _float(_uint8(8, (12, 12, channels)))
  ops = np.asarray([aa.OP_INDEX[name] for name, _ in _DISPATCH_CASES])
  mags = np.asarray([m for _, m in _DISPATCH_CASES], np.float32)
  out = np.asarray(_apply_op(image, ops, mags))
  assert out.shape == (len(ops), 12, 12, channels)
  direct = jax.jit(_direct, static_argnums=(0, 2))
  for (name, magnitude), got in zip(_DISPATCH_CASES, out):
    want = np.asarray(direct(name, image, float(magnitude)))
    np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)
  assert aa.OP_NAMES[0] == "Identity" and len(set(aa.OP_NAMES)) == 15


# Each op at its neutral setting: magnitude 0 for the signed ops (factor 1,
# no rotation, shear or shift), 8 bits for Posterize, threshold 256 for
# Solarize. The lookup-table ops are exact on images already on uint8 levels.
_NEUTRAL = [
    ("Identity", 0.0),
    ("Posterize", 8.0),
    ("Solarize", 256.0),
    ("Brightness", 0.0),
    ("Color", 0.0),
    ("Contrast", 0.0),
    ("Sharpness", 0.0),
    ("Rotate", 0.0),
    ("ShearX", 0.0),
    ("ShearY", 0.0),
    ("TranslateX", 0.0),
    ("TranslateY", 0.0),
]


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 3])
def test_ops_at_neutral_magnitude_are_identity(channels):
  ops = np.asarray([aa.OP_INDEX[name] for name, _ in _NEUTRAL])
  mags = np.asarray([m for _, m in _NEUTRAL], np.float32)

  @_SETTINGS
  @hypothesis.given(seed=_SEEDS)
  def check(seed):
    image = _float(_uint8(seed, (10, 13, channels)))
    out = np.asarray(_apply_op(image, ops, mags))
    for (name, _), got in zip(_NEUTRAL, out):
      np.testing.assert_allclose(got, image, atol=1e-6, err_msg=name)
    # Invert is its own inverse, and autocontrast leaves a full-range image
    # alone.
    np.testing.assert_array_equal(np.asarray(_invert(_invert(image))), image)
    full = image.copy()
    full[0, 0], full[0, 1] = 0.0, 1.0
    np.testing.assert_array_equal(np.asarray(_autocontrast(full)), full)

  check()


def test_ops_preserve_shape_dtype_and_range():
  num_ops = len(aa.OP_NAMES)

  @_SETTINGS
  @hypothesis.given(seed=_SEEDS, channels=st.sampled_from([1, 3]))
  def check(seed, channels):
    rng = np.random.default_rng(seed)
    image = rng.random((9, 11, channels), dtype=np.float32)
    ops = np.arange(num_ops)
    # Magnitudes over and beyond the policy's ranges, both signs.
    mags = rng.uniform(-40, 40, num_ops).astype(np.float32)
    mags[aa.OP_INDEX["Posterize"]] = rng.integers(0, 9)
    mags[aa.OP_INDEX["Solarize"]] = rng.uniform(0, 256)
    for name in ("Brightness", "Color", "Contrast", "Sharpness"):
      mags[aa.OP_INDEX[name]] = rng.uniform(-1, 1)
    out = np.asarray(_apply_op(image, ops, mags))
    assert out.shape == (num_ops, 9, 11, channels)
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 1.0

  check()


# ---------------------------------------------------------------------------
# The CIFAR-10 policy.
# ---------------------------------------------------------------------------


def test_augmentation_space_matches_torchvision_at_32px():
  space = aa.augmentation_space(10, 32, 32)
  # Values of torchvision's _augmentation_space(10, (32, 32)).
  np.testing.assert_allclose(space["ShearX"][0][8], 0.26666668, rtol=1e-6)
  np.testing.assert_allclose(space["Rotate"][0][2], 6.6666665, rtol=1e-6)
  np.testing.assert_allclose(
      space["TranslateX"][0][9], 150 / 331 * 32, rtol=1e-6
  )
  np.testing.assert_allclose(
      space["TranslateY"][0][3], 150 / 331 * 32 / 3, rtol=1e-6
  )
  np.testing.assert_allclose(space["Color"][0][7], 0.7, rtol=1e-6)
  np.testing.assert_array_equal(
      space["Posterize"][0], [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
  )
  np.testing.assert_allclose(
      space["Solarize"][0][[0, 2, 8, 9]],
      [255, 198.33333, 28.333334, 0],
      rtol=1e-6,
  )
  signed = {name for name, (_, s) in space.items() if s}
  assert signed == {
      "ShearX",
      "ShearY",
      "TranslateX",
      "TranslateY",
      "Rotate",
      "Brightness",
      "Color",
      "Contrast",
      "Sharpness",
  }
  # Translations scale with their own axis.
  space = aa.augmentation_space(10, 20, 40)
  np.testing.assert_allclose(
      space["TranslateX"][0][9], 150 / 331 * 40, rtol=1e-6
  )
  np.testing.assert_allclose(
      space["TranslateY"][0][9], 150 / 331 * 20, rtol=1e-6
  )


def test_cifar10_policy_tables():
  assert len(aa.CIFAR10_POLICY) == 25
  ops, probs, mags, signed = aa.policy_tables(aa.CIFAR10_POLICY, 32, 32)
  assert ops.shape == probs.shape == mags.shape == signed.shape == (25, 2)
  names = [[aa.OP_NAMES[i] for i in row] for row in ops]
  assert names[0] == ["Invert", "Contrast"]
  assert names[14] == ["Solarize", "Invert"]
  assert names[24] == ["TranslateY", "AutoContrast"]
  # 13 distinct operations: all but Identity and ShearX.
  assert {n for row in names for n in row} == set(aa.OP_NAMES) - {
      "Identity",
      "ShearX",
  }
  np.testing.assert_allclose(probs[1], [0.7, 0.3])
  np.testing.assert_allclose(probs[14], [0.5, 0.0])
  np.testing.assert_allclose(probs[22], [0.9, 0.8])
  # Mean step probability of torchvision's table (a checksum over all 50).
  np.testing.assert_allclose(probs.mean(), 26.5 / 50, rtol=1e-6)
  # Rotate bin 2, TranslateX bin 9 at 32 px; Posterize bin 7 = 5 bits;
  # Solarize bin 2.
  np.testing.assert_allclose(mags[1], [20 / 3, 150 / 331 * 32], rtol=1e-6)
  np.testing.assert_allclose(mags[5], [0.3 * 7 / 9, 5], rtol=1e-6)
  np.testing.assert_allclose(mags[14, 0], 255 - 255 * 2 / 9, rtol=1e-6)
  assert signed[1].all() and not signed[14].any()


def _draw_params(num, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), num)

  @jax.jit
  @jax.vmap
  def params(key):
    uniforms = jax.random.uniform(key, (aa.AUTOAUGMENT_UNIFORMS,))
    return aa.autoaugment_params(uniforms, 32, 32)

  return [np.asarray(x) for x in params(keys)]


def test_sub_policy_choice_covers_all_25_and_steps_follow_the_policy():
  num = 5000
  index, step_ops, step_mags = _draw_params(num)
  counts = np.bincount(index, minlength=25)
  assert counts.shape == (25,) and np.all(counts > 0)
  # 200 expected each; the bounds are about five standard deviations.
  assert counts.min() > 130 and counts.max() < 270
  ops, probs, mags, signed = aa.policy_tables(aa.CIFAR10_POLICY, 32, 32)
  identity = aa.OP_INDEX["Identity"]
  run = step_ops != identity
  # A step runs its policy op with its magnitude, possibly negated.
  np.testing.assert_array_equal(step_ops[run], ops[index][run])
  np.testing.assert_allclose(np.abs(step_mags[run]), mags[index][run])
  assert np.all(step_mags[run & ~signed[index]] >= 0)
  negated = step_mags < 0
  assert 0.4 < negated[run & signed[index] & (mags[index] > 0)].mean() < 0.6
  # Steps run with their probability: pooled over the sub-policies the run
  # rate matches the mean probability within about five standard errors.
  assert abs(run.mean() - probs[index].mean()) < 0.025
  # The p = 0 Invert step of sub-policy 14 never runs.
  assert not np.any(run[index == 14, 1])


@pytest.mark.slow
def test_autoaugment_applies_the_drawn_steps():
  image = _float(_uint8(9, (16, 16, 3)))
  keys = jax.random.split(jax.random.PRNGKey(3), 64)

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, None))
  def both(key, image):
    uniforms = jax.random.uniform(key, (aa.AUTOAUGMENT_UNIFORMS,))
    _, step_ops, step_mags = aa.autoaugment_params(uniforms, 16, 16)
    manual = image
    for step in range(2):
      manual = aa.apply_op(manual, step_ops[step], step_mags[step])
    return aa.autoaugment(key, image), manual

  out, manual = (np.asarray(x) for x in both(keys, image))
  np.testing.assert_array_equal(out, manual)
  changed = np.any(out != image, axis=(1, 2, 3))
  assert 0.3 < changed.mean() < 1.0


# ---------------------------------------------------------------------------
# The official MaskCon flavour against a PIL reference.
# ---------------------------------------------------------------------------

# The official code's SubPolicy magnitude ranges, computed as it computes
# them (NumPy float64; translations are fractions of the image size).
_OFFICIAL_RANGES = {
    "ShearX": np.linspace(0, 0.3, 10),
    "ShearY": np.linspace(0, 0.3, 10),
    "TranslateX": np.linspace(0, 150 / 331, 10),
    "TranslateY": np.linspace(0, 150 / 331, 10),
    "Rotate": np.linspace(0, 30, 10),
    "Color": np.linspace(0.0, 0.9, 10),
    "Posterize": np.round(np.linspace(8, 4, 10), 0).astype(int),
    "Solarize": np.linspace(256, 0, 10),
    "Contrast": np.linspace(0.0, 0.9, 10),
    "Sharpness": np.linspace(0.0, 0.9, 10),
    "Brightness": np.linspace(0.0, 0.9, 10),
}
_OFFICIAL_FILL = (128, 128, 128)
_OFFICIAL_SIGNED = {
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Color",
    "Contrast",
    "Sharpness",
    "Brightness",
}


def _official_rotate(pil, degrees):
  """The official rotate: an RGBA rotation composited over a grey image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rotated = pil.convert("RGBA").rotate(degrees)
  grey = Image.new("RGBA", rotated.size, (128,) * 4)
  return Image.composite(rotated, grey, rotated).convert(pil.mode)


def _official_op(name, pil, magnitude, sign):
  """The official SubPolicy's op `name` on an RGB PIL image, via PIL calls.

  `magnitude` is the official range value and `sign` the official
  `random.choice([-1, 1])` draw (Rotate and the lookup-table ops have none).
  """
  # pylint: disable=g-import-not-at-top
  from PIL import Image, ImageEnhance, ImageOps
  # pylint: enable=g-import-not-at-top

  width, height = pil.size
  affine = {
      "ShearX": ((1, magnitude * sign, 0, 0, 1, 0), Image.BICUBIC),
      "ShearY": ((1, 0, 0, magnitude * sign, 1, 0), Image.BICUBIC),
      "TranslateX": ((1, 0, magnitude * width * sign, 0, 1, 0), None),
      "TranslateY": ((1, 0, 0, 0, 1, magnitude * height * sign), None),
  }
  if name in affine:
    matrix, resample = affine[name]
    if resample is None:  # The official translate keeps transform's default.
      return pil.transform(
          pil.size, Image.AFFINE, matrix, fillcolor=_OFFICIAL_FILL
      )
    return pil.transform(
        pil.size, Image.AFFINE, matrix, resample, fillcolor=_OFFICIAL_FILL
    )
  if name == "Rotate":
    return _official_rotate(pil, magnitude)
  if name in ("Color", "Contrast", "Sharpness", "Brightness"):
    return getattr(ImageEnhance, name)(pil).enhance(1 + magnitude * sign)
  if name == "Posterize":
    return ImageOps.posterize(pil, int(magnitude))
  if name == "Solarize":
    return ImageOps.solarize(pil, magnitude)
  return getattr(ImageOps, name.lower())(pil)


def _official_cases():
  """(op name, bin, sign) for every op, every bin and both signs."""
  cases = [(name, 0, 1) for name in ("AutoContrast", "Equalize", "Invert")]
  for name in sorted(_OFFICIAL_RANGES):
    signs = (1, -1) if name in _OFFICIAL_SIGNED else (1,)
    cases += [(name, b, s) for b in range(10) for s in signs]
  return cases


_OFFICIAL_CASES = _official_cases()
_apply_official = jax.jit(
    jax.vmap(
        functools.partial(aa.apply_op, flavour=aa.OFFICIAL),
        in_axes=(None, 0, 0),
    )
)


def _jax_official_magnitude(space, name, magnitude_bin, sign):
  """The `apply_op` magnitude that the official (name, bin, sign) means."""
  if name not in space or len(space[name][0]) == 1:
    return 0.0
  magnitude = space[name][0][magnitude_bin]
  # PIL's translate matrix (1, 0, c, ...) reads the input at x + c, moving the
  # content by -c; apply_op's translate magnitude is the content's move.
  if name in ("TranslateX", "TranslateY"):
    sign = -sign
  return magnitude * sign


def _near_border(matrix, height, width, margin=1e-3):
  """Pixels whose PIL source point lies within `margin` of the image edge."""
  u, v = _source_points(matrix, height, width)
  return (
      (np.abs(u) < margin)
      | (np.abs(u - width) < margin)
      | (np.abs(v) < margin)
      | (np.abs(v - height) < margin)
  )


@pytest.mark.slow
@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("kind", ["rgb", "grey"])
def test_official_ops_match_pil_reference(size, kind):
  """Every official op, bin and sign against the official op in PIL.

  Tolerances, on uint8 levels: lookup-table ops exact (AutoContrast as in
  `test_autocontrast_matches_integer_formula_and_pil`); TranslateX/Y and the
  policy's Rotate (bin 2, 20/3 degrees) exact on every pixel (nearest
  neighbour; at these sizes no source point lies near a pixel boundary), the
  other Rotate bins as `_assert_geometric_match` allows; enhance ops
  0 or +1 level above PIL (see `test_enhance_ops_match_formula_and_pil`);
  ShearX/Y (bicubic) in [0, 1] levels above PIL, whose filter truncates the
  interpolated double to uint8 where this keeps the float, except at the
  few pixels whose source point lies on the image's edge (within 1e-3 px),
  where float32 and PIL's double decide in/out differently.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(size)
  if kind == "rgb":
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    pil = Image.fromarray(image, "RGB")
    inputs = {3: image}
  else:
    grey = rng.integers(0, 256, (size, size), dtype=np.uint8)
    pil = Image.fromarray(grey, "L").convert("RGB")
    # The 1-channel image and its 3-channel copy must agree with PIL's RGB.
    inputs = {1: grey[..., None], 3: np.asarray(pil)}
  space = aa.augmentation_space(10, size, size, aa.OFFICIAL)
  ops = np.asarray([aa.OP_INDEX[name] for name, _, _ in _OFFICIAL_CASES])
  mags = np.asarray(
      [_jax_official_magnitude(space, *case) for case in _OFFICIAL_CASES],
      np.float32,
  )
  outputs = {
      c: np.asarray(_apply_official(_float(x), ops, mags))
      for c, x in inputs.items()
  }
  if kind == "grey":
    # Channel by channel the same as the 1-channel image (Color and Contrast
    # go through a float32 luma whose weights sum to 1: within an ulp).
    np.testing.assert_allclose(
        outputs[3], np.broadcast_to(outputs[1], outputs[3].shape), atol=1e-6
    )
  checked_shear = 0
  for i, (name, magnitude_bin, sign) in enumerate(_OFFICIAL_CASES):
    magnitude = _OFFICIAL_RANGES.get(name, [0] * 10)[magnitude_bin]
    want = _unpil(_official_op(name, pil, magnitude, sign))
    for channels, out in outputs.items():
      msg = f"{name} bin={magnitude_bin} sign={sign} channels={channels}"
      got = out[i]
      if channels == 1:
        want_c = want[..., :1]
      else:
        want_c = want
      if name in ("ShearX", "ShearY"):
        matrix = (
            (1, magnitude * sign, 0, 0, 1, 0)
            if name == "ShearX"
            else (1, 0, 0, magnitude * sign, 1, 0)
        )
        edge = _near_border(matrix, size, size)
        diff = got * 255 - want_c
        clear = np.broadcast_to(~edge[..., None], diff.shape)
        assert diff[clear].min() >= -1e-3 and diff[clear].max() <= 1 + 1e-3, (
            msg,
            diff[clear].min(),
            diff[clear].max(),
        )
        assert edge.sum() <= size // 2, msg
        checked_shear += 1
      elif name in ("Color", "Contrast", "Sharpness", "Brightness"):
        diff = _levels(got) - want_c
        assert diff.min() >= 0 and diff.max() <= 1, (
            msg,
            diff.min(),
            diff.max(),
        )
      elif name == "AutoContrast":
        diff = _levels(got) - want_c
        assert set(np.unique(diff)) <= {0, 1}, msg
      elif name == "Rotate" and magnitude_bin not in (0, 2):
        # PIL rotates in 16.16 fixed point (an error of up to 2.4e-4 px at
        # these sizes), this in float32: the odd pixel whose source point is
        # that close to a pixel boundary may differ (20 degrees at 32 px
        # has one).
        _assert_geometric_match(
            _levels(got), want_c, _pil_rotate_matrix(magnitude, size, size)
        )
      else:
        np.testing.assert_array_equal(_levels(got), want_c, err_msg=msg)
  assert checked_shear == 2 * 10 * 2 * len(outputs)


def test_official_shear_is_bicubic_and_torchvision_nearest():
  # On a smooth horizontal ramp a shear by 0.3 moves rows by fractional
  # offsets: nearest copies input levels, bicubic interpolates between them.
  ramp = np.tile(np.linspace(0.1, 0.9, 16, dtype=np.float32), (16, 1))
  image = ramp[..., None]
  nearest = np.asarray(_shear_x(image, 0.3))
  bicubic = np.asarray(
      jax.jit(aa.shear_x, static_argnames=("fill", "resample"))(
          image, 0.3, fill=0.5, resample="bicubic"
      )
  )
  inside = nearest[1:8, 2:12, 0]
  assert np.all(np.isin(inside, ramp))
  assert not np.all(np.isin(bicubic[1:8, 2:12, 0], ramp))
  # Away from the clamped border, PIL's a = -1 kernel maps a linear ramp
  # f(i) = i to f(i0) + 2 d - 3 d^2 + 2 d^3 at i0 + d (the weights
  # (2d^2 - d - d^3, 1 - 2d^2 + d^3, d + d^2 - d^3, d^3 - d^2) on offsets
  # -1..2); Keys' a = -0.5 kernel would give the linear value i0 + d.
  # Source column: x + 0.3 (y + 0.5).
  y, x = np.mgrid[:16, :16]
  source = x + 0.3 * (y + 0.5)
  i0 = np.floor(source)
  d = source - i0
  want = 0.1 + 0.8 / 15 * (i0 + 2 * d - 3 * d**2 + 2 * d**3)
  np.testing.assert_allclose(bicubic[1:8, 2:10, 0], want[1:8, 2:10], atol=1e-5)
  assert (
      np.abs(bicubic[1:8, 2:10, 0] - (0.1 + 0.8 / 15 * source[1:8, 2:10])).max()
      > 1e-3
  )
  with pytest.raises(ValueError, match="resample"):
    aa.shear_x(image, 0.3, resample="bilinear")


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 3])
def test_affine_transform_bicubic_matches_pil(channels):
  # The general bicubic warp (the shears' row-wise path is checked against
  # it below) on matrices with both axes fractional: a rotation as
  # Image.rotate builds it, and a shear-and-shift. Tolerance as for the
  # official shears: [0, 1] level above PIL's truncated value, except where
  # a source point lies on the image edge.
  from PIL import Image  # pylint: disable=g-import-not-at-top

  image = _uint8(19, (28, 32, channels))
  matrices = [
      _pil_rotate_matrix(17.3, 28, 32),
      (1.0, 0.21, -3.3, -0.13, 1.0, 2.6),
      # Source points one float32 ulp from pixel centres along whole
      # columns (4/15 (x + 0.5) + y is an integer for x = 7, 22).
      (1.0, 0.0, 0.0, -4 / 15, 1.0, 0.0),
      (1.0, 0.2, 0.0, 0.0, 1.0, 0.0),
  ]
  matrices = np.float32(matrices)
  # Under vmap and jit, as the policy runs it.
  warp = jax.jit(
      jax.vmap(
          functools.partial(aa.affine_transform_bicubic, fill=128 / 255),
          in_axes=(None, 0),
      )
  )
  out = np.asarray(warp(_float(image), matrices))
  fill = 128 if channels == 1 else (128,) * 3
  for matrix, got in zip(matrices.astype(np.float64), out):
    matrix = tuple(matrix)
    want = _unpil(
        _pil(image).transform(
            (32, 28), Image.AFFINE, matrix, Image.BICUBIC, fillcolor=fill
        )
    )
    edge = _near_border(matrix, 28, 32)
    diff = (got * 255 - want)[~edge]
    assert diff.min() >= -1e-3 and diff.max() <= 1 + 1e-3, (
        matrix,
        diff.min(),
        diff.max(),
    )
    assert edge.sum() <= 16
  warp = jax.jit(aa.affine_transform_bicubic, static_argnames="fill")
  # The row-wise shears equal the general warp (up to float rounding).
  shear = jax.jit(aa.shear_x, static_argnames=("fill", "resample"))
  shear_y = jax.jit(aa.shear_y, static_argnames=("fill", "resample"))
  for factor in (0.26666668, -0.23333333, 0.2, -1.7):
    for fn, matrix in (
        (shear, (1, factor, 0, 0, 1, 0)),
        (shear_y, (1, 0, 0, factor, 1, 0)),
    ):
      got = np.asarray(fn(_float(image), factor, fill=0.5, resample="bicubic"))
      want = np.asarray(warp(_float(image), np.float32(matrix), fill=0.5))
      edge = _near_border(matrix, 28, 32)
      np.testing.assert_allclose(
          got[~edge], want[~edge], atol=1e-5, err_msg=str(matrix)
      )


def test_official_augmentation_space_and_tables():
  for size in ((28, 28), (32, 32), (20, 40)):
    height, width = size
    space = aa.augmentation_space(10, height, width, aa.OFFICIAL)
    tv_space = aa.augmentation_space(10, height, width)
    for name, values in _OFFICIAL_RANGES.items():
      scale = {"TranslateX": width, "TranslateY": height}.get(name, 1)
      np.testing.assert_allclose(
          space[name][0], values * scale, rtol=1e-6, atol=1e-6, err_msg=name
      )
      assert space[name][1] == (name in _OFFICIAL_SIGNED), name
    # Solarize starts at 256 (inverts nothing) rather than torchvision's 255.
    assert space["Solarize"][0][0] == 256 and tv_space["Solarize"][0][0] == 255
    assert not space["Rotate"][1] and tv_space["Rotate"][1]
    for name in set(space) - {"Solarize", "Rotate"}:
      np.testing.assert_array_equal(space[name][0], tv_space[name][0])
      assert space[name][1] == tv_space[name][1]
  # The policy tables differ from torchvision's in one probability (the
  # second Equalize of sub-policy 16), in Solarize's thresholds and in
  # Rotate's sign.
  assert aa.OFFICIAL.policy is aa.OFFICIAL_CIFAR10_POLICY
  ops, probs, mags, signed = aa.policy_tables(
      aa.OFFICIAL_CIFAR10_POLICY, 32, 32, aa.OFFICIAL
  )
  tv_ops, tv_probs, tv_mags, tv_signed = aa.policy_tables(
      aa.CIFAR10_POLICY, 32, 32
  )
  np.testing.assert_array_equal(ops, tv_ops)
  differ = np.argwhere(probs != tv_probs)
  np.testing.assert_array_equal(differ, [[16, 1]])
  np.testing.assert_allclose([probs[16, 1], tv_probs[16, 1]], [0.8, 0.6])
  np.testing.assert_allclose(probs.mean(), 26.7 / 50, rtol=1e-6)
  solarize = ops == aa.OP_INDEX["Solarize"]
  rotate = ops == aa.OP_INDEX["Rotate"]
  np.testing.assert_array_equal(mags[~solarize], tv_mags[~solarize])
  np.testing.assert_allclose(
      mags[solarize], np.linspace(256, 0, 10)[[2, 8, 5, 3]], rtol=1e-6
  )
  np.testing.assert_array_equal(signed[~rotate], tv_signed[~rotate])
  assert not signed[rotate].any() and tv_signed[rotate].all()
  assert aa.get_flavour("official") is aa.OFFICIAL
  assert aa.get_flavour(aa.TORCHVISION) is aa.TORCHVISION
  with pytest.raises(ValueError, match="flavour"):
    aa.get_flavour("timm")


@pytest.mark.parametrize(
    "flavour", [aa.TORCHVISION, aa.OFFICIAL], ids=lambda f: f.name
)
def test_policy_draws_per_flavour(flavour):
  num = 5000
  keys = jax.random.split(jax.random.PRNGKey(11), num)

  @jax.jit
  @jax.vmap
  def params(key):
    uniforms = jax.random.uniform(key, (aa.AUTOAUGMENT_UNIFORMS,))
    return aa.autoaugment_params(uniforms, 32, 32, flavour=flavour)

  index, step_ops, step_mags = (np.asarray(x) for x in params(keys))
  ops, probs, mags, signed = aa.policy_tables(flavour.policy, 32, 32, flavour)
  run = step_ops != aa.OP_INDEX["Identity"]
  np.testing.assert_array_equal(step_ops[run], ops[index][run])
  np.testing.assert_allclose(np.abs(step_mags[run]), mags[index][run])
  assert abs(run.mean() - probs[index].mean()) < 0.025
  assert not np.any(run[index == 14, 1])
  rotate = run & (step_ops == aa.OP_INDEX["Rotate"])
  solarize = run & (step_ops == aa.OP_INDEX["Solarize"])
  translate = run & (
      (step_ops == aa.OP_INDEX["TranslateX"])
      | (step_ops == aa.OP_INDEX["TranslateY"])
  )
  assert rotate.sum() > 50 and solarize.sum() > 50 and translate.sum() > 200
  negative_rotations = np.mean(step_mags[rotate] < 0)
  # Translations (both flavours) take either sign; the policy's bins 3, 8 and
  # 9 at 32 px, untruncated.
  assert 0.4 < np.mean(step_mags[translate] < 0) < 0.6
  np.testing.assert_allclose(
      np.unique(np.abs(step_mags[translate])),
      np.linspace(0, 150 / 331 * 32, 10)[[3, 8, 9]],
      rtol=1e-6,
  )
  if flavour is aa.OFFICIAL:
    # Never negated: always 20/3 degrees counter-clockwise.
    assert negative_rotations == 0
    np.testing.assert_allclose(step_mags[rotate], 20 / 3, rtol=1e-6)
    thresholds = np.linspace(256, 0, 10)[[2, 3, 5, 8]]
  else:
    assert 0.4 < negative_rotations < 0.6
    thresholds = np.linspace(255, 0, 10)[[2, 3, 5, 8]]
  np.testing.assert_allclose(
      np.unique(step_mags[solarize]), np.sort(thresholds), rtol=1e-6
  )


def test_official_step_runs_only_below_its_probability():
  # Uniforms aimed at sub-policy 1 (Rotate p=0.7, TranslateX p=0.3), with
  # the step draws exactly at the probabilities: torchvision runs a step if
  # u <= p, the official code if random.random() < p.
  p = np.float32([0.7, 0.3])
  at = np.asarray([1.5 / 25, *p, 0.9, 0.9], np.float32)
  below = np.asarray([1.5 / 25, *np.nextafter(p, 0), 0.9, 0.9], np.float32)
  params = jax.jit(
      aa.autoaugment_params, static_argnums=(1, 2), static_argnames="flavour"
  )
  rotate, translate = aa.OP_INDEX["Rotate"], aa.OP_INDEX["TranslateX"]
  for flavour, uniforms, want in (
      (aa.TORCHVISION, at, [rotate, translate]),
      (aa.OFFICIAL, at, [0, 0]),
      (aa.OFFICIAL, below, [rotate, translate]),
  ):
    index, step_ops, _ = params(uniforms, 32, 32, flavour=flavour)
    assert int(index) == 1
    np.testing.assert_array_equal(step_ops, want, err_msg=flavour.name)


@pytest.mark.slow
@pytest.mark.parametrize("size", [28, 32])
def test_official_translate_offsets_round_half_up(size):
  # Every TranslateX bin, both signs, on an image whose pixel values are
  # their column indices: the official flavour shifts the content by the
  # float offset rounded half up (PIL samples the input at floor(x + 0.5 -
  # t)); torchvision truncates the offset first.
  offsets = np.linspace(0, 150 / 331 * size, 10, dtype=np.float32)
  offsets = np.concatenate([offsets, -offsets[1:]])
  columns = np.tile(np.arange(size, dtype=np.float32), (size, 1))[..., None]
  ops = np.full(offsets.shape, aa.OP_INDEX["TranslateX"])
  official = np.asarray(_apply_official(columns, ops, offsets))
  tv = np.asarray(_apply_op(columns, ops, offsets))
  for t, off, tvo in zip(offsets, official, tv):
    for out, shift, fill in (
        (off, int(np.floor(t + 0.5)), 128 / 255),
        (tvo, int(np.trunc(t)), 0.0),
    ):
      source = np.arange(size) - shift
      want = np.where(
          (source >= 0) & (source < size), source, np.float32(fill)
      ).astype(np.float32)
      np.testing.assert_array_equal(out[0, :, 0], want, err_msg=str(t))
  # 14.50 px at 32 px, bin 9: 15 px officially, 14 px in torchvision.
  if size == 32:
    assert round(float(offsets[9]), 2) == 14.5


def test_official_geometric_fill_is_grey_128():
  for channels in (1, 3):
    image = np.full((8, 8, channels), 0.2, np.float32)
    ops = np.asarray(
        [
            aa.OP_INDEX[n]
            for n in ("TranslateX", "TranslateY", "ShearX", "Rotate")
        ]
    )
    out = np.asarray(
        _apply_official(image, ops, np.float32([3.0, -3.0, 0.3, 30.0]))
    )
    fill = np.float32(128 / 255)
    np.testing.assert_array_equal(out[0][:, :3], fill)
    np.testing.assert_array_equal(out[1][5:], fill)
    np.testing.assert_array_equal(out[2][7, 6:], fill)
    assert out[3][0, 0, 0] == fill and out[3][4, 4, 0] == np.float32(0.2)
    assert np.all(_levels(out[:, :, :3][out[:, :, :3] == fill]) == 128)


@pytest.mark.slow
@pytest.mark.parametrize(
    "flavour", [aa.TORCHVISION, aa.OFFICIAL], ids=lambda f: f.name
)
def test_flavour_ops_at_neutral_magnitude_are_identity(flavour):
  apply = jax.jit(
      jax.vmap(
          functools.partial(aa.apply_op, flavour=flavour), in_axes=(None, 0, 0)
      )
  )
  ops = np.asarray([aa.OP_INDEX[name] for name, _ in _NEUTRAL])
  mags = np.asarray([m for _, m in _NEUTRAL], np.float32)
  for channels in (1, 3):
    image = _float(_uint8(12 + channels, (10, 13, channels)))
    out = np.asarray(apply(image, ops, mags))
    for (name, _), got in zip(_NEUTRAL, out):
      if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        # x + 1 * (x - degenerate) rounds.
        np.testing.assert_allclose(got, image, atol=1e-6, err_msg=name)
      else:
        # Lookup tables, and warps whose taps (bicubic: weight 1 on the
        # centre tap, 0 on the others) land on pixel centres: exact.
        np.testing.assert_array_equal(got, image, err_msg=name)


def test_official_ops_preserve_shape_dtype_and_range():
  num_ops = len(aa.OP_NAMES)
  rng = np.random.default_rng(14)
  for channels in (1, 3):
    image = rng.random((9, 11, channels), dtype=np.float32)
    # Extreme levels make the bicubic kernel over- and undershoot.
    image[::2, ::2] = 1.0
    image[1::2, 1::2] = 0.0
    mags = rng.uniform(-40, 40, num_ops).astype(np.float32)
    mags[aa.OP_INDEX["ShearX"]] = 0.27
    mags[aa.OP_INDEX["ShearY"]] = -0.23
    mags[aa.OP_INDEX["Posterize"]] = 5
    mags[aa.OP_INDEX["Solarize"]] = 100
    for name in ("Brightness", "Color", "Contrast", "Sharpness"):
      mags[aa.OP_INDEX[name]] = rng.uniform(-1, 1)
    out = np.asarray(_apply_official(image, np.arange(num_ops), mags))
    assert out.shape == (num_ops, 9, 11, channels)
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.slow
def test_official_autoaugment_grey_matches_repeated_rgb():
  # The whole policy, many draws: a grey image gives the same result as its
  # 3-channel copy, channel by channel, and every channel of the latter is
  # identical.
  grey = _float(_uint8(15, (32, 32, 1)))
  rgb = np.repeat(grey, 3, axis=-1)
  keys = jax.random.split(jax.random.PRNGKey(16), 128)

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, None))
  def run(key, image):
    return aa.autoaugment(key, image, flavour=aa.OFFICIAL)

  out1, out3 = np.asarray(run(keys, grey)), np.asarray(run(keys, rgb))
  np.testing.assert_array_equal(out3[..., 0], out3[..., 1])
  np.testing.assert_array_equal(out3[..., 0], out3[..., 2])
  np.testing.assert_allclose(out3, np.broadcast_to(out1, out3.shape), atol=1e-6)
  changed = np.any(out1 != grey, axis=(1, 2, 3))
  assert 0.3 < changed.mean() < 1.0


@pytest.mark.slow
def test_official_autoaugment_applies_the_drawn_steps():
  image = _float(_uint8(17, (16, 16, 3)))
  keys = jax.random.split(jax.random.PRNGKey(18), 64)

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, None))
  def both(key, image):
    uniforms = jax.random.uniform(key, (aa.AUTOAUGMENT_UNIFORMS,))
    _, step_ops, step_mags = aa.autoaugment_params(
        uniforms, 16, 16, flavour="official"
    )
    manual = image
    for step in range(2):
      manual = aa.apply_op(
          manual, step_ops[step], step_mags[step], flavour="official"
      )
    return (
        aa.autoaugment(key, image, flavour=aa.OFFICIAL),
        manual,
        aa.autoaugment(key, image),
    )

  out, manual, tv = (np.asarray(x) for x in both(keys, image))
  np.testing.assert_array_equal(out, manual)
  # The same draws give different images in the two flavours whenever a
  # geometric step or Solarize runs (fill, shear filter, offsets, bins).
  differs = np.any(out != tv, axis=(1, 2, 3))
  assert 0.1 < differs.mean() < 0.9
