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
_rotate = jax.jit(aa.rotate, static_argnames='fill')
_shear_x = jax.jit(aa.shear_x, static_argnames='fill')
_shear_y = jax.jit(aa.shear_y, static_argnames='fill')
_translate_x = jax.jit(aa.translate_x, static_argnames='fill')
_translate_y = jax.jit(aa.translate_y, static_argnames='fill')
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
    return Image.fromarray(image[..., 0], 'L')
  return Image.fromarray(image, 'RGB')


def _unpil(pil):
  array = np.asarray(pil).astype(np.int64)
  return array[..., None] if array.ndim == 2 else array


# A few images: random RGB, random grey, a low-contrast RGB (autocontrast has
# work to do) and a coarse one with few distinct levels.
_IMAGES = {
    'rgb': _uint8(0, (12, 12, 3)),
    'grey': _uint8(1, (12, 12, 1)),
    'low_contrast': _uint8(2, (12, 12, 3), 40, 126),
    'few_levels': (_uint8(3, (12, 12, 3), 0, 4) * 60).astype(np.uint8),
}


# ---------------------------------------------------------------------------
# Lookup-table ops: exact.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('name', sorted(_IMAGES))
def test_invert_matches_pil(name):
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top

  image = _IMAGES[name]
  got = _levels(_invert(_float(image)))
  np.testing.assert_array_equal(got, _unpil(ImageOps.invert(_pil(image))))


@pytest.mark.parametrize('name', sorted(_IMAGES))
def test_posterize_matches_pil(name):
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top

  image = _IMAGES[name]
  for bits in range(1, 9):
    got = _levels(_posterize(_float(image), bits))
    want = _unpil(ImageOps.posterize(_pil(image), bits))
    np.testing.assert_array_equal(got, want, err_msg=f'bits={bits}')


@pytest.mark.parametrize('name', sorted(_IMAGES))
def test_solarize_matches_pil(name):
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top

  image = _IMAGES[name]
  # torchvision's bins are fractional (linspace(255, 0, 10)); 256 inverts
  # nothing and 0 everything.
  for threshold in (0.0, 28.333334, 113.333336, 128.0, 198.33333, 255.0,
                    256.0):
    got = _levels(_solarize(_float(image), threshold))
    want = _unpil(ImageOps.solarize(_pil(image), threshold))
    np.testing.assert_array_equal(got, want, err_msg=f'threshold={threshold}')


def _np_autocontrast(image):
  out = image.astype(np.int64).copy()
  for c in range(image.shape[-1]):
    channel = out[..., c]
    lo, hi = channel.min(), channel.max()
    if hi > lo:
      out[..., c] = (channel - lo) * 255 // (hi - lo)
  return out


@pytest.mark.parametrize('name', sorted(_IMAGES))
def test_autocontrast_matches_integer_formula_and_pil(name):
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top

  image = _IMAGES[name].copy()
  if name == 'rgb':
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
  for fn, args in ((_invert, ()), (_posterize, (3,)), (_solarize, (100.0,)),
                   (_autocontrast, ()), (_equalize, ())):
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
  return (0.2989 * image[..., :1] + 0.587 * image[..., 1:2]
          + 0.114 * image[..., 2:3])


def _np_smooth(image):
  out = image.copy()
  kernel = np.ones((3, 3))
  kernel[1, 1] = 5
  kernel /= 13
  h, w = image.shape[:2]
  for y in range(1, h - 1):
    for x in range(1, w - 1):
      out[y, x] = np.tensordot(kernel, image[y - 1:y + 2, x - 1:x + 2],
                               axes=((0, 1), (0, 1)))
  return out


def _np_blend(image, degenerate, factor):
  return np.clip(degenerate + factor * (image - degenerate), 0, 1)


_ENHANCE = {
    # name: (op, float reference degenerate, PIL enhancer name)
    'brightness': (_brightness, np.zeros_like, 'Brightness'),
    'color': (_color, _np_gray, 'Color'),
    'contrast': (_contrast, lambda x: _np_gray(x).mean(), 'Contrast'),
    'sharpness': (_sharpness, _np_smooth, 'Sharpness'),
}


@pytest.mark.parametrize('op_name', sorted(_ENHANCE))
@pytest.mark.parametrize('image_name', ['rgb', 'grey', 'low_contrast'])
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
    assert diff.min() >= 0 and diff.max() <= 1, (factor, diff.min(),
                                                  diff.max())


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
@pytest.mark.parametrize('degrees', [0.0, 6.6666665, -6.6666665, 30.0, -17.3,
                                     90.0])
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
    ('shear_x', 0.26666668), ('shear_x', -0.23333333), ('shear_x', 0.3),
    ('shear_y', 0.26666668), ('shear_y', -0.2), ('shear_y', 0.033333335),
    ('translate_x', 14.0), ('translate_x', -12.0), ('translate_x', 4.0),
    ('translate_y', 14.0), ('translate_y', -4.0), ('translate_y', 2.5),
]


def _affine_matrix(op, magnitude):
  return {
      'shear_x': (1, magnitude, 0, 0, 1, 0),
      'shear_y': (1, 0, 0, magnitude, 1, 0),
      'translate_x': (1, 0, -magnitude, 0, 1, 0),
      'translate_y': (1, 0, 0, 0, 1, -magnitude),
  }[op]


@pytest.mark.parametrize('op, magnitude', _AFFINE_CASES)
@pytest.mark.parametrize('channels', [1, 3])
def test_shear_and_translate_match_pil(op, magnitude, channels):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  fn = {'shear_x': _shear_x, 'shear_y': _shear_y,
        'translate_x': _translate_x, 'translate_y': _translate_y}[op]
  image = _uint8(7, (32, 32, channels))
  # torchvision's magnitudes are float32 (torch.linspace) and reach PIL as
  # the doubles of those values.
  magnitude = float(np.float32(magnitude))
  matrix = _affine_matrix(op, magnitude)
  got = _levels(fn(_float(image), magnitude))
  want = _unpil(_pil(image).transform((32, 32), Image.AFFINE, matrix,
                                      Image.NEAREST))
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
      'Identity': lambda: image,
      'Invert': lambda: aa.invert(image),
      'AutoContrast': lambda: aa.autocontrast(image),
      'Equalize': lambda: aa.equalize(image),
      'Posterize': lambda: aa.posterize(image, int(magnitude)),
      'Solarize': lambda: aa.solarize(image, magnitude),
      'Brightness': lambda: aa.enhance_brightness(image, 1 + magnitude),
      'Color': lambda: aa.enhance_color(image, 1 + magnitude),
      'Contrast': lambda: aa.enhance_contrast(image, 1 + magnitude),
      'Sharpness': lambda: aa.enhance_sharpness(image, 1 + magnitude),
      'Rotate': lambda: aa.rotate(image, magnitude),
      'ShearX': lambda: aa.shear_x(image, magnitude),
      'ShearY': lambda: aa.shear_y(image, magnitude),
      'TranslateX': lambda: aa.translate_x(image, int(magnitude)),
      'TranslateY': lambda: aa.translate_y(image, int(magnitude)),
  }[name]()


# One (op, magnitude) per row, every op at least once, as the policy would
# pass them (signed, translate and posterize fractional to check truncation).
_DISPATCH_CASES = [
    ('Identity', 0.0), ('Invert', 0.0), ('AutoContrast', 0.0),
    ('Equalize', 0.0), ('Posterize', 5.0), ('Posterize', 6.7),
    ('Solarize', 113.333336), ('Brightness', -0.6), ('Brightness', 0.8),
    ('Color', 0.3), ('Contrast', -0.7), ('Sharpness', 0.9),
    ('Sharpness', -0.4), ('Rotate', -6.6666665), ('ShearX', 0.26666668),
    ('ShearY', -0.23333333), ('TranslateX', -12.888889),
    ('TranslateY', 14.500001),
]


@pytest.mark.parametrize('channels', [1, 3])
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
  assert aa.OP_NAMES[0] == 'Identity' and len(set(aa.OP_NAMES)) == 15


# Each op at its neutral setting: magnitude 0 for the signed ops (factor 1,
# no rotation, shear or shift), 8 bits for Posterize, threshold 256 for
# Solarize. The lookup-table ops are exact on images already on uint8 levels.
_NEUTRAL = [('Identity', 0.0), ('Posterize', 8.0), ('Solarize', 256.0),
            ('Brightness', 0.0), ('Color', 0.0), ('Contrast', 0.0),
            ('Sharpness', 0.0), ('Rotate', 0.0), ('ShearX', 0.0),
            ('ShearY', 0.0), ('TranslateX', 0.0), ('TranslateY', 0.0)]


@pytest.mark.parametrize('channels', [1, 3])
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
    np.testing.assert_array_equal(
        np.asarray(_invert(_invert(image))), image)
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
    mags[aa.OP_INDEX['Posterize']] = rng.integers(0, 9)
    mags[aa.OP_INDEX['Solarize']] = rng.uniform(0, 256)
    for name in ('Brightness', 'Color', 'Contrast', 'Sharpness'):
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
  np.testing.assert_allclose(space['ShearX'][0][8], 0.26666668, rtol=1e-6)
  np.testing.assert_allclose(space['Rotate'][0][2], 6.6666665, rtol=1e-6)
  np.testing.assert_allclose(space['TranslateX'][0][9], 150 / 331 * 32,
                             rtol=1e-6)
  np.testing.assert_allclose(space['TranslateY'][0][3], 150 / 331 * 32 / 3,
                             rtol=1e-6)
  np.testing.assert_allclose(space['Color'][0][7], 0.7, rtol=1e-6)
  np.testing.assert_array_equal(space['Posterize'][0],
                                [8, 8, 7, 7, 6, 6, 5, 5, 4, 4])
  np.testing.assert_allclose(space['Solarize'][0][[0, 2, 8, 9]],
                             [255, 198.33333, 28.333334, 0], rtol=1e-6)
  signed = {name for name, (_, s) in space.items() if s}
  assert signed == {'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate',
                    'Brightness', 'Color', 'Contrast', 'Sharpness'}
  # Translations scale with their own axis.
  space = aa.augmentation_space(10, 20, 40)
  np.testing.assert_allclose(space['TranslateX'][0][9], 150 / 331 * 40,
                             rtol=1e-6)
  np.testing.assert_allclose(space['TranslateY'][0][9], 150 / 331 * 20,
                             rtol=1e-6)


def test_cifar10_policy_tables():
  assert len(aa.CIFAR10_POLICY) == 25
  ops, probs, mags, signed = aa.policy_tables(aa.CIFAR10_POLICY, 32, 32)
  assert ops.shape == probs.shape == mags.shape == signed.shape == (25, 2)
  names = [[aa.OP_NAMES[i] for i in row] for row in ops]
  assert names[0] == ['Invert', 'Contrast']
  assert names[14] == ['Solarize', 'Invert']
  assert names[24] == ['TranslateY', 'AutoContrast']
  # 13 distinct operations: all but Identity and ShearX.
  assert ({n for row in names for n in row}
          == set(aa.OP_NAMES) - {'Identity', 'ShearX'})
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
  identity = aa.OP_INDEX['Identity']
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
