"""Random image augmentations that run on the accelerator inside `jax.jit`.

Every function works on one image in HWC layout and takes its randomness from
an explicit PRNG key, so a batch is augmented by splitting one key into per-
example keys and `jax.vmap`-ing the single-image function (see the `*_batch`
functions). Raw `uint32` keys and typed keys from `jax.random.key` both work.

The semantics follow torchvision's transforms, with two deliberate
simplifications:

* Resizing is bilinear with half-pixel centres (`align_corners=False`) and no
  antialiasing, i.e. `tf.image.resize(..., 'bilinear', antialias=False)`.
  Upscaling matches PIL's bilinear filter exactly; downscaling does not blur
  first, which keeps the sampler to four gathered neighbours per pixel.
* Data-dependent choices (which crop attempt fits, whether a transform is
  applied, the order of the colour-jitter operations) are made with `where` /
  `switch` instead of Python control flow, so they trace once and vectorise.

Where torchvision treats PIL images and tensors differently (the border of a
perspective warp), the PIL behaviour is followed, since MaskCon's data
loaders hand PIL images to the transforms. The per-dataset views of the paper
(`cifar_strong`, `cars_strong`, `cars_weak`, `sop`) are registered in
`VIEW_POLICIES` next to the MoCo v2 `weak` / `strong` pair; AutoAugment lives
in `maskcon_jax.autoaugment` (`cifar_strong` uses the official MaskCon code's
policy, `cifar_strong_tv` torchvision's).

Each random op has a public form that takes a key and a private form that
takes uniforms drawn in advance. The views draw all their uniforms with a
single `jax.random.uniform` call: every separate PRNG call adds a Threefry
kernel to the program, and on CPU compiling those (especially under `vmap`)
costs far more than running the augmentation.

Float images are expected in [0, 1]; `uint8` inputs to the view functions are
scaled by 1/255 first. Normalisation happens last, after all other ops.

It is over 600 lines (about 1,400) because the official code's per-dataset
view policies (the last section) need torchvision-faithful primitives of
their own (crops, perspective, colour jitter, blur), each tested against
torchvision in tests/test_augment.py; one module keeps one definition of
each and shows in one place how the policies compose them. AutoAugment's
operations, the one large family, are in `autoaugment`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from maskcon_jax import autoaugment
from maskcon_jax import filters
from maskcon_jax import hierarchies

# torchvision.transforms.RandomResizedCrop.get_params tries this many times
# before falling back to a central crop.
_CROP_ATTEMPTS = 10
_CROP_UNIFORMS = 4 * _CROP_ATTEMPTS
# Four factors, four sort keys for the op order and one apply decision.
_JITTER_UNIFORMS = 9
_JITTER_APPLY = 8

# MoCo v2 / MaskCon crop parameters for both views.
_VIEW_CROP_SCALE = (0.2, 1.0)
_VIEW_CROP_RATIO = (3 / 4, 4 / 3)

Box = tuple[jax.Array, jax.Array, jax.Array, jax.Array]


# ---------------------------------------------------------------------------
# Geometry.
# ---------------------------------------------------------------------------


def _axis_sampler(
    start: jax.Array, length: jax.Array, out_size: int, in_size: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Neighbour indices and weights for resampling one axis of a crop.

  Args:
    start: First pixel of the crop along this axis (may be traced).
    length: Number of pixels in the crop along this axis (may be traced).
    out_size: Number of output pixels.
    in_size: Size of the full image along this axis.

  Returns:
    `(lower, upper, frac)`, each of shape `(out_size,)`: output pixel `o` is
    `(1 - frac[o]) * x[lower[o]] + frac[o] * x[upper[o]]`.
  """
  start = jnp.asarray(start, jnp.float32)
  length = jnp.asarray(length, jnp.float32)
  scale = length / out_size
  # Half-pixel centres: output pixel o covers [o, o+1) in output space, whose
  # centre maps to (o + 0.5) * scale in crop space.
  src = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5
  # Clamping to the crop (rather than the whole image) is what cropping first
  # and resizing second does: edge pixels are replicated, never the pixels
  # just outside the box.
  src = jnp.clip(src, start, start + length - 1.0)
  src = jnp.clip(src, 0.0, in_size - 1.0)
  lower_f = jnp.floor(src)
  frac = src - lower_f
  lower = lower_f.astype(jnp.int32)
  upper = jnp.minimum(lower + 1, in_size - 1)
  return lower, upper, frac


def resized_crop(
    image: jax.Array,
    box: Sequence[jax.Array | float],
    size: int,
) -> jax.Array:
  """Crops `box` out of `image` and resizes it bilinearly to `size` x `size`.

  Equivalent to cropping the (integer) box and then resizing with
  `tf.image.resize(crop, (size, size), 'bilinear', antialias=False)`: half-
  pixel centres, edge pixels of the crop replicated, no antialiasing when
  downscaling. Separable: rows are interpolated first, then columns, each with
  two gathers, so the cost is O(size * (W + size) * C) per image.

  Args:
    image: Float image of shape `(H, W, C)`.
    box: `(top, left, height, width)` in pixels; scalars, possibly traced.
    size: Output height and width (static).

  Returns:
    Float32 array of shape `(size, size, C)`.
  """
  image = jnp.asarray(image, jnp.float32)
  height, width = image.shape[0], image.shape[1]
  top, left, box_h, box_w = box
  y0, y1, fy = _axis_sampler(top, box_h, size, height)
  x0, x1, fx = _axis_sampler(left, box_w, size, width)
  rows0 = jnp.take(image, y0, axis=0)
  rows1 = jnp.take(image, y1, axis=0)
  rows = rows0 + (rows1 - rows0) * fy[:, None, None]
  cols0 = jnp.take(rows, x0, axis=1)
  cols1 = jnp.take(rows, x1, axis=1)
  return cols0 + (cols1 - cols0) * fx[None, :, None]


def sample_crop_box(
    rng: jax.Array,
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
  """Samples a crop box like `torchvision.transforms.RandomResizedCrop`.

  Makes 10 attempts, each with an area drawn uniformly from `scale` times the
  image area and an aspect ratio (width / height) drawn log-uniformly from
  `ratio`, with height and width rounded to integers. The first attempt that
  fits inside the image is placed uniformly at random; if none fits, the
  central crop with the aspect ratio clamped to `ratio` is used. All attempts
  are drawn at once so the choice is a gather rather than a loop.

  Args:
    rng: PRNG key.
    height: Image height (static).
    width: Image width (static).
    scale: Range of the crop area as a fraction of the image area.
    ratio: Range of the crop aspect ratio (width / height).

  Returns:
    `(top, left, height, width)` as int32 scalars.
  """
  # Drawn flat: a multi-dimensional draw compiles several times slower.
  uniforms = jax.random.uniform(rng, (_CROP_UNIFORMS,))
  return _crop_box(uniforms, height, width, scale, ratio)


def _crop_box(
    uniforms: jax.Array,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> Box:
  """`sample_crop_box` from `_CROP_UNIFORMS` uniforms."""
  u_area, u_ratio, u_top, u_left = uniforms.reshape(4, _CROP_ATTEMPTS)
  area = float(height * width)
  target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = jnp.exp(log_lo + (log_hi - log_lo) * u_ratio)
  # jnp.round rounds half to even, like Python's round() used by torchvision.
  crop_w = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
  crop_h = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)

  def offset(u: jax.Array, slack: jax.Array) -> jax.Array:
    # Uniform integer in [0, slack], like torch.randint(0, slack + 1). Only
    # used where the attempt fits, i.e. slack >= 0.
    value = jnp.floor(u * (slack + 1).astype(jnp.float32)).astype(jnp.int32)
    return jnp.clip(value, 0, jnp.maximum(slack, 0))

  top = offset(u_top, height - crop_h)
  left = offset(u_left, width - crop_w)
  first = jnp.argmax(fits)
  found = fits[first]

  # The fallback depends only on static shapes, so it is plain Python.
  in_ratio = width / height
  if in_ratio < min(ratio):
    fb_w = width
    fb_h = int(round(fb_w / min(ratio)))
  elif in_ratio > max(ratio):
    fb_h = height
    fb_w = int(round(fb_h * max(ratio)))
  else:
    fb_w, fb_h = width, height
  fb_top = (height - fb_h) // 2
  fb_left = (width - fb_w) // 2

  def pick(values: jax.Array, fallback: int) -> jax.Array:
    return jnp.where(found, values[first], fallback).astype(jnp.int32)

  return (
      pick(top, fb_top),
      pick(left, fb_left),
      pick(crop_h, fb_h),
      pick(crop_w, fb_w),
  )


def random_resized_crop(
    rng: jax.Array,
    image: jax.Array,
    *,
    size: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> jax.Array:
  """Random crop (see `sample_crop_box`) resized to `size` x `size`."""
  box = sample_crop_box(
      rng, image.shape[0], image.shape[1], scale=scale, ratio=ratio
  )
  return resized_crop(image, box, size)


def random_flip(rng: jax.Array, image: jax.Array, p: float = 0.5) -> jax.Array:
  """Flips `image` horizontally with probability `p`."""
  return _flip(jax.random.uniform(rng), image, p)


def _flip(u: jax.Array, image: jax.Array, p: float) -> jax.Array:
  return jnp.where(u < p, image[:, ::-1, :], image)


def _square_to_quad(corners: jax.Array) -> jax.Array:
  """Homography taking the unit square's corners to `corners`.

  Closed form (Heckbert, 1989) instead of solving torchvision's 8x8 system:
  it is exact for any non-degenerate quadrilateral and, unlike an 8x8 solve
  on pixel coordinates, well conditioned in float32.

  Args:
    corners: `(4, 2)` points (x, y) for the unit-square corners (0, 0),
      (1, 0), (1, 1), (0, 1), in that order.

  Returns:
    `(3, 3)` matrix `M` with `M @ (u, v, 1)` proportional to the image of
    `(u, v)`.
  """
  x, y = corners[:, 0], corners[:, 1]
  sum_x = x[0] - x[1] + x[2] - x[3]
  sum_y = y[0] - y[1] + y[2] - y[3]
  dx1, dx2 = x[1] - x[2], x[3] - x[2]
  dy1, dy2 = y[1] - y[2], y[3] - y[2]
  det = dx1 * dy2 - dx2 * dy1
  g = (sum_x * dy2 - dx2 * sum_y) / det
  h = (dx1 * sum_y - sum_x * dy1) / det
  return jnp.stack(
      [
          jnp.stack([x[1] - x[0] + g * x[1], x[3] - x[0] + h * x[3], x[0]]),
          jnp.stack([y[1] - y[0] + g * y[1], y[3] - y[0] + h * y[3], y[0]]),
          jnp.stack([g, h, jnp.ones_like(g)]),
      ]
  )


def _adjugate3(m: jax.Array) -> jax.Array:
  """Adjugate of a 3x3 matrix: its inverse times the determinant."""
  cols = [m[:, i] for i in range(3)]
  # Rows of the adjugate are cross products of the matrix's columns.
  return jnp.stack(
      [
          jnp.cross(cols[1], cols[2]),
          jnp.cross(cols[2], cols[0]),
          jnp.cross(cols[0], cols[1]),
      ]
  )


def perspective_coeffs(
    startpoints: jax.Array, endpoints: jax.Array
) -> jax.Array:
  """The 8 coefficients torchvision's `_get_perspective_coeffs` returns.

  `(a, b, c, d, e, f, g, h)` such that the homography
  `(x, y) -> ((a x + b y + c) / (g x + h y + 1), (d x + e y + f) / (...))`
  takes each of the four `endpoints` to the matching `startpoints` point,
  i.e. it maps output coordinates to input coordinates.

  Args:
    startpoints: `(4, 2)` corners (x, y) in the input image: top-left,
      top-right, bottom-right, bottom-left.
    endpoints: `(4, 2)` matching corners in the output image.

  Returns:
    Float32 array of shape `(8,)`.
  """
  start = _square_to_quad(jnp.asarray(startpoints, jnp.float32))
  end = _square_to_quad(jnp.asarray(endpoints, jnp.float32))
  # end^-1 up to scale; the overall scale is removed below.
  matrix = start @ _adjugate3(end)
  return (matrix / matrix[2, 2]).reshape(9)[:8]


def _coeffs_to_matrix(coeffs: jax.Array) -> jax.Array:
  coeffs = jnp.asarray(coeffs, jnp.float32)
  return jnp.concatenate([coeffs, jnp.ones((1,), jnp.float32)]).reshape(3, 3)


def perspective_transform(
    image: jax.Array, coeffs: jax.Array, fill: float = 0.0
) -> jax.Array:
  """Bilinear perspective warp, as PIL's `Image.transform(PERSPECTIVE)`.

  Output pixel `(x, y)` samples the input at the homography image `(u, v)`
  of its centre `(x + 0.5, y + 0.5)`. Points outside `[0, W) x [0, H)` give
  `fill`; inside, the four nearest pixel centres are interpolated, with
  indices clamped at the border. (torchvision's tensor path instead blends
  border samples with the fill; PIL's, used for PIL images, is followed.)

  Args:
    image: Float image `(H, W, C)`.
    coeffs: `(8,)` output-to-input coefficients (see `perspective_coeffs`).
    fill: Value for pixels that map outside the image.

  Returns:
    Float32 image, same shape.
  """
  return _homography_warp(image, _coeffs_to_matrix(coeffs), fill)


def _homography_warp(
    image: jax.Array, matrix: jax.Array, fill: float = 0.0
) -> jax.Array:
  """`perspective_transform` with a 3x3 output-to-input matrix."""
  image = jnp.asarray(image, jnp.float32)
  height, width, channels = image.shape
  ys = jnp.arange(height, dtype=jnp.float32)[:, None] + 0.5
  xs = jnp.arange(width, dtype=jnp.float32)[None, :] + 0.5
  (a, b, c), (d, e, f), (g, h, i) = (
      [matrix[r, k] for k in range(3)] for r in range(3)
  )
  den = g * xs + h * ys + i
  # Points on or behind the homography's vanishing line have no image; with
  # RandomPerspective's corner offsets (at most a quarter of the side) that
  # line never crosses the output, so this only guards the division.
  ahead = den > 1e-6
  safe_den = jnp.where(ahead, den, 1.0)
  src_x = (a * xs + b * ys + c) / safe_den
  src_y = (d * xs + e * ys + f) / safe_den
  inside = (
      ahead
      & (src_x >= 0.0)
      & (src_x < width)
      & (src_y >= 0.0)
      & (src_y < height)
  )
  # Pixel centres are at integer + 0.5.
  src_x = jnp.clip(src_x, 0.0, float(width)) - 0.5
  src_y = jnp.clip(src_y, 0.0, float(height)) - 0.5
  x0f, y0f = jnp.floor(src_x), jnp.floor(src_y)
  fx = (src_x - x0f)[..., None]
  fy = (src_y - y0f)[..., None]
  x0 = jnp.clip(x0f.astype(jnp.int32), 0, width - 1)
  x1 = jnp.clip(x0f.astype(jnp.int32) + 1, 0, width - 1)
  y0 = jnp.clip(y0f.astype(jnp.int32), 0, height - 1)
  y1 = jnp.clip(y0f.astype(jnp.int32) + 1, 0, height - 1)
  flat = image.reshape(height * width, channels)

  def at(yi: jax.Array, xi: jax.Array) -> jax.Array:
    return jnp.take(flat, yi * width + xi, axis=0)

  top = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * fx
  bottom = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * fx
  return jnp.where(
      inside[..., None], top + (bottom - top) * fy, jnp.float32(fill)
  )


def _perspective_endpoints(
    uniforms: jax.Array, height: int, width: int, distortion_scale: float
) -> jax.Array:
  """`RandomPerspective.get_params` endpoints from 8 uniforms, `(4, 2)`."""
  # Each corner moves inwards by an integer uniform in [0, k] per axis.
  kx = int(distortion_scale * (width // 2))
  ky = int(distortion_scale * (height // 2))
  limit = jnp.asarray([kx, ky] * 4, jnp.float32)
  offsets = jnp.minimum(jnp.floor(uniforms * (limit + 1.0)), limit)
  dx, dy = offsets[0::2], offsets[1::2]
  right, bottom = float(width - 1), float(height - 1)
  return jnp.stack(
      [
          jnp.stack([dx[0], dy[0]]),
          jnp.stack([right - dx[1], dy[1]]),
          jnp.stack([right - dx[2], bottom - dy[2]]),
          jnp.stack([dx[3], bottom - dy[3]]),
      ]
  )


def _image_corners(height: int, width: int) -> jax.Array:
  right, bottom = float(width - 1), float(height - 1)
  return jnp.asarray(
      [[0.0, 0.0], [right, 0.0], [right, bottom], [0.0, bottom]], jnp.float32
  )


# Eight corner offsets and one apply decision.
_PERSPECTIVE_UNIFORMS = 9


def sample_perspective_coeffs(
    rng: jax.Array, height: int, width: int, distortion_scale: float = 0.5
) -> jax.Array:
  """Coefficients of a `RandomPerspective(distortion_scale)` draw, `(8,)`.

  The same key gives the same warp in `random_perspective` (when applied).

  Args:
    rng: PRNG key.
    height: Image height (static).
    width: Image width (static).
    distortion_scale: Corners move inwards by up to this fraction of half
      the side.

  Returns:
    Output-to-input coefficients for `perspective_transform`.
  """
  uniforms = jax.random.uniform(rng, (_PERSPECTIVE_UNIFORMS,))
  endpoints = _perspective_endpoints(
      uniforms[:8], height, width, distortion_scale
  )
  return perspective_coeffs(_image_corners(height, width), endpoints)


def random_perspective(
    rng: jax.Array,
    image: jax.Array,
    *,
    distortion_scale: float = 0.5,
    p: float = 0.5,
    fill: float = 0.0,
) -> jax.Array:
  """`torchvision.transforms.RandomPerspective(distortion_scale, p)`.

  With probability `p`, each image corner moves inwards by a random whole
  number of pixels (up to `distortion_scale` times half the side, per axis)
  and the image is warped bilinearly so that the corners land there.

  Args:
    rng: PRNG key.
    image: Float image `(H, W, C)`.
    distortion_scale: Distortion strength in [0, 1].
    p: Probability of warping.
    fill: Value outside the warped image.

  Returns:
    Float32 image, same shape.
  """
  uniforms = jax.random.uniform(rng, (_PERSPECTIVE_UNIFORMS,))
  return _perspective(uniforms, image, distortion_scale, p, fill)


def _perspective_matrix(
    uniforms: jax.Array,
    height: int,
    width: int,
    distortion_scale: float,
    p: float,
) -> jax.Array:
  """Output-to-input 3x3 matrix of a `RandomPerspective` draw.

  Args:
    uniforms: `_PERSPECTIVE_UNIFORMS` uniforms: 8 corner offsets, then the
      apply decision.
    height: Image height (static).
    width: Image width (static).
    distortion_scale: Distortion strength in [0, 1].
    p: Probability of warping.

  Returns:
    The homography, or the identity where the warp is not applied.
  """
  endpoints = _perspective_endpoints(
      uniforms[:8], height, width, distortion_scale
  )
  coeffs = perspective_coeffs(_image_corners(height, width), endpoints)
  return jnp.where(
      uniforms[8] < p, _coeffs_to_matrix(coeffs), jnp.eye(3, dtype=jnp.float32)
  )


def _flip_matrix(u: jax.Array, width: int, p: float) -> jax.Array:
  """3x3 matrix of a horizontal flip with probability `p` (else identity).

  In PIL's continuous coordinates a flip is `x -> W - x`, which maps pixel
  centres onto pixel centres, so a warp composed with it samples exactly
  what flipping the pixels before or after the warp would.
  """
  flip = jnp.asarray(
      [[-1.0, 0.0, width], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], jnp.float32
  )
  return jnp.where(u < p, flip, jnp.eye(3, dtype=jnp.float32))


def _perspective(
    uniforms: jax.Array,
    image: jax.Array,
    distortion_scale: float,
    p: float,
    fill: float = 0.0,
) -> jax.Array:
  """`random_perspective` from `_PERSPECTIVE_UNIFORMS` uniforms.

  The image is always resampled; without a warp the matrix is the identity,
  for which bilinear sampling at pixel centres returns the input exactly.
  Selecting with `where` between warped and input images instead would, once
  XLA fuses the warp into its consumers, evaluate the warp several times.
  """
  height, width = image.shape[0], image.shape[1]
  matrix = _perspective_matrix(uniforms, height, width, distortion_scale, p)
  return _homography_warp(image, matrix, fill)


# ---------------------------------------------------------------------------
# Colour. Formulas follow torchvision.transforms.functional on float tensors.
# ---------------------------------------------------------------------------


def rgb_to_grayscale(image: jax.Array) -> jax.Array:
  """ITU-R 601-2 luma of an RGB image, shape `(H, W, 1)`."""
  weights = jnp.asarray(autoaugment.LUMA_WEIGHTS, image.dtype)
  return jnp.sum(image * weights, axis=-1, keepdims=True)


def _blend(image: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
  return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Multiplies intensities by `factor` and clips to [0, 1]."""
  return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Blends with the mean grey level (of the luma for RGB), clipped."""
  if image.shape[-1] == 3:
    mean = jnp.mean(rgb_to_grayscale(image))
  else:
    mean = jnp.mean(image)
  return _blend(image, mean, factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Blends with the grayscale image, clipped; a no-op for 1 channel."""
  if image.shape[-1] == 1:
    return image
  return _blend(image, rgb_to_grayscale(image), factor)


def _rgb_to_hsv(image: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  maxc = jnp.max(image, axis=-1)
  minc = jnp.min(image, axis=-1)
  eqc = maxc == minc
  cr = maxc - minc
  # Grey pixels have no hue; the safe divisors keep them (and black) finite.
  s = cr / jnp.where(eqc, 1.0, maxc)
  cr_div = jnp.where(eqc, 1.0, cr)
  rc = (maxc - r) / cr_div
  gc = (maxc - g) / cr_div
  bc = (maxc - b) / cr_div
  h = jnp.where(
      maxc == r,
      bc - gc,
      jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc),
  )
  h = jnp.fmod(h / 6.0 + 1.0, 1.0)
  return h, s, maxc


def _hsv_to_rgb(h: jax.Array, s: jax.Array, v: jax.Array) -> jax.Array:
  i_f = jnp.floor(h * 6.0)
  f = h * 6.0 - i_f
  i = i_f.astype(jnp.int32) % 6
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  sector = [i == k for k in range(5)]
  r = jnp.select(sector, [v, q, p, p, t], v)
  g = jnp.select(sector, [t, v, v, q, p], p)
  b = jnp.select(sector, [p, p, t, v, v], q)
  return jnp.stack([r, g, b], axis=-1)


def adjust_hue(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Rotates the hue by `factor` (in [-0.5, 0.5] turns); no-op for 1 channel."""
  if image.shape[-1] == 1:
    return image
  h, s, v = _rgb_to_hsv(image)
  h = jnp.mod(h + factor, 1.0)
  return _hsv_to_rgb(h, s, v)


def _jitter_range(strength: float) -> tuple[float, float]:
  # torchvision turns a scalar strength s into the factor range
  # [max(0, 1 - s), 1 + s].
  return max(0.0, 1.0 - strength), 1.0 + strength


def sample_color_jitter_params(
    rng: jax.Array,
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
) -> tuple[jax.Array, jax.Array]:
  """Draws `ColorJitter.get_params`: an op order and the four factors.

  Args:
    rng: PRNG key.
    brightness: Brightness strength s; factor ~ U[max(0, 1 - s), 1 + s].
    contrast: Contrast strength, same convention.
    saturation: Saturation strength, same convention.
    hue: Hue strength, at most 0.5; shift ~ U[-hue, hue].

  Returns:
    `(order, factors)`: `order` is a permutation of `0..3` (brightness,
    contrast, saturation, hue) and `factors` the float32 factors in that
    fixed op order.
  """
  # Draws as many uniforms as `color_jitter` does, so both agree per key.
  uniforms = jax.random.uniform(rng, (_JITTER_UNIFORMS,))
  return _jitter_params(uniforms, brightness, contrast, saturation, hue)


def _jitter_params(
    u: jax.Array,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> tuple[jax.Array, jax.Array]:
  ranges = (
      _jitter_range(brightness),
      _jitter_range(contrast),
      _jitter_range(saturation),
      (-hue, hue),
  )
  lo = jnp.asarray([r[0] for r in ranges], jnp.float32)
  hi = jnp.asarray([r[1] for r in ranges], jnp.float32)
  factors = lo + (hi - lo) * u[:4]
  # Sorting i.i.d. uniforms gives a uniformly random permutation, and is much
  # cheaper to compile than jax.random.permutation.
  order = jnp.argsort(u[4:8]).astype(jnp.int32)
  return order, factors


def apply_color_jitter(
    image: jax.Array, order: jax.Array, factors: jax.Array
) -> jax.Array:
  """Applies the four colour adjustments in `order` with `factors`.

  The order is realised as four `lax.switch` steps, so under `vmap` each step
  evaluates all four adjustments and selects one; that is cheap next to the
  network this feeds, and avoids any data-dependent Python control flow.

  Args:
    image: Float image `(H, W, C)` in [0, 1].
    order: Permutation of `0..3`, indexing (brightness, contrast, saturation,
      hue).
    factors: The four factors, indexed the same way.

  Returns:
    The adjusted image.
  """
  ops = (
      lambda x: adjust_brightness(x, factors[0]),
      lambda x: adjust_contrast(x, factors[1]),
      lambda x: adjust_saturation(x, factors[2]),
      lambda x: adjust_hue(x, factors[3]),
  )
  for step in range(len(ops)):
    image = jax.lax.switch(order[step], ops, image)
  return image


def color_jitter(
    rng: jax.Array,
    image: jax.Array,
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
) -> jax.Array:
  """`RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)`.

  The four adjustments are applied in a random order with random factors, as
  torchvision's `ColorJitter` does; the order and factors are those that
  `sample_color_jitter_params(rng, ...)` returns for the same key.

  Args:
    rng: PRNG key.
    image: Float image `(H, W, C)` in [0, 1].
    brightness: Brightness jitter strength.
    contrast: Contrast jitter strength.
    saturation: Saturation jitter strength.
    hue: Hue jitter strength, at most 0.5.
    p: Probability of applying the jitter at all.

  Returns:
    The jittered image, same shape as `image`.
  """
  uniforms = jax.random.uniform(rng, (_JITTER_UNIFORMS,))
  return _color_jitter(
      uniforms, image, brightness, contrast, saturation, hue, p
  )


def _color_jitter(
    uniforms: jax.Array,
    image: jax.Array,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p: float,
) -> jax.Array:
  """`color_jitter` from `_JITTER_UNIFORMS` uniforms."""
  order, factors = _jitter_params(
      uniforms, brightness, contrast, saturation, hue
  )
  jittered = apply_color_jitter(image, order, factors)
  return jnp.where(uniforms[_JITTER_APPLY] < p, jittered, image)


def random_grayscale(
    rng: jax.Array, image: jax.Array, p: float = 0.2
) -> jax.Array:
  """Replaces RGB by its luma (in all 3 channels) with probability `p`."""
  return _grayscale(jax.random.uniform(rng), image, p)


def _grayscale(u: jax.Array, image: jax.Array, p: float) -> jax.Array:
  if image.shape[-1] == 1:
    return image
  gray = jnp.broadcast_to(rgb_to_grayscale(image), image.shape)
  return jnp.where(u < p, gray, image)


# ---------------------------------------------------------------------------
# Blur.
# ---------------------------------------------------------------------------


def blur_kernel_size(size: int) -> int:
  """Odd Gaussian kernel size of about 10% of `size`, at least 3.

  The SimCLR / BYOL convention (23 taps at 224 px). MaskCon blurs with PIL's
  `GaussianBlur(radius=sigma)`, which has no kernel size; at 224 px and
  sigma <= 2 a 23-tap kernel reaches 5.5 sigma, so truncation is negligible.
  Small images get small kernels (3 taps at 32 px), which truncate large
  sigmas; pass `kernel_size` explicitly where that matters.

  Args:
    size: Image side in pixels.

  Returns:
    `2 * int(0.05 * size) + 1`, at least 3.
  """
  return max(3, 2 * int(0.05 * size) + 1)


# The blur itself is shared with the models (the saliency high-pass).
gaussian_kernel1d = filters.gaussian_kernel1d
gaussian_blur = filters.gaussian_blur


# sigma and the apply decision.
_BLUR_UNIFORMS = 2


def random_gaussian_blur(
    rng: jax.Array,
    image: jax.Array,
    *,
    sigma: tuple[float, float] = (0.1, 2.0),
    kernel_size: int | None = None,
    p: float = 0.5,
) -> jax.Array:
  """`RandomApply([GaussianBlur(kernel_size, sigma)], p)`.

  Args:
    rng: PRNG key.
    image: Float image `(H, W, C)`.
    sigma: Range of the standard deviation, drawn uniformly per call.
    kernel_size: Odd kernel size; `blur_kernel_size(H)` if None.
    p: Probability of blurring.

  Returns:
    Float32 image, same shape.
  """
  uniforms = jax.random.uniform(rng, (_BLUR_UNIFORMS,))
  return _gaussian_blur(uniforms, image, sigma, kernel_size, p)


def _gaussian_blur(
    uniforms: jax.Array,
    image: jax.Array,
    sigma: tuple[float, float],
    kernel_size: int | None,
    p: float,
) -> jax.Array:
  """`random_gaussian_blur` from `_BLUR_UNIFORMS` uniforms."""
  if kernel_size is None:
    kernel_size = blur_kernel_size(image.shape[0])
  std = sigma[0] + (sigma[1] - sigma[0]) * uniforms[0]
  blurred = gaussian_blur(image, std, kernel_size)
  return jnp.where(uniforms[1] < p, blurred, image)


def normalize(
    image: jax.Array, mean: Sequence[float], std: Sequence[float]
) -> jax.Array:
  """`(image - mean) / std` per channel.

  Args:
    image: Float image `(..., C)`.
    mean: Per-channel means, length `C` or 1.
    std: Per-channel standard deviations, length `C` or 1.

  Returns:
    The normalised float32 image.

  Raises:
    ValueError: If `mean` or `std` does not have 1 or `C` entries.
  """
  channels = image.shape[-1]
  for name, value in (("mean", mean), ("std", std)):
    if len(value) not in (1, channels):
      raise ValueError(
          f"{name} has {len(value)} entries but the image has {channels}"
          " channels; give one value per channel."
      )
  mean_arr = jnp.asarray(mean, jnp.float32)
  inv_std = 1.0 / jnp.asarray(std, jnp.float32)
  return (jnp.asarray(image, jnp.float32) - mean_arr) * inv_std


# ---------------------------------------------------------------------------
# Views.
# ---------------------------------------------------------------------------


def to_float(image: jax.Array) -> jax.Array:
  """`uint8` in [0, 255] to float32 in [0, 1]; float inputs pass through."""
  if image.dtype == jnp.uint8:
    return image.astype(jnp.float32) * (1.0 / 255.0)
  return image.astype(jnp.float32)


_WEAK_UNIFORMS = _CROP_UNIFORMS + 1
_STRONG_UNIFORMS = _WEAK_UNIFORMS + _JITTER_UNIFORMS + 1


def _weak_augment(
    uniforms: jax.Array, image: jax.Array, size: int
) -> jax.Array:
  x = to_float(image)
  box = _crop_box(
      uniforms[:_CROP_UNIFORMS],
      x.shape[0],
      x.shape[1],
      _VIEW_CROP_SCALE,
      _VIEW_CROP_RATIO,
  )
  x = resized_crop(x, box, size)
  return _flip(uniforms[_CROP_UNIFORMS], x, 0.5)


def weak_augment(rng: jax.Array, image: jax.Array, *, size: int) -> jax.Array:
  """Random resized crop (scale 0.2-1) + horizontal flip, in [0, 1].

  Args:
    rng: PRNG key.
    image: `(H, W, C)` image, `uint8` or float in [0, 1].
    size: Output height and width (static).

  Returns:
    Float32 `(size, size, C)` in [0, 1].
  """
  uniforms = jax.random.uniform(rng, (_WEAK_UNIFORMS,))
  return _weak_augment(uniforms, image, size)


def strong_augment(rng: jax.Array, image: jax.Array, *, size: int) -> jax.Array:
  """Weak augmentation + colour jitter (p=0.8) + grayscale (p=0.2).

  The colour jitter is `ColorJitter(0.4, 0.4, 0.4, 0.1)` as in MoCo v2.

  Args:
    rng: PRNG key.
    image: `(H, W, C)` image, `uint8` or float in [0, 1].
    size: Output height and width (static).

  Returns:
    Float32 `(size, size, C)` in [0, 1].
  """
  uniforms = jax.random.uniform(rng, (_STRONG_UNIFORMS,))
  x = _weak_augment(uniforms[:_WEAK_UNIFORMS], image, size)
  jitter_u = uniforms[_WEAK_UNIFORMS : _WEAK_UNIFORMS + _JITTER_UNIFORMS]
  x = _color_jitter(
      jitter_u,
      x,
      brightness=0.4,
      contrast=0.4,
      saturation=0.4,
      hue=0.1,
      p=0.8,
  )
  return _grayscale(uniforms[-1], x, 0.2)


def weak_view(
    rng: jax.Array,
    image: jax.Array,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> jax.Array:
  """Key-encoder view: `weak_augment` then `normalize`; float32."""
  return normalize(weak_augment(rng, image, size=size), mean, std)


def strong_view(
    rng: jax.Array,
    image: jax.Array,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> jax.Array:
  """Query-encoder view: `strong_augment` then `normalize`; float32."""
  return normalize(strong_augment(rng, image, size=size), mean, std)


# ---------------------------------------------------------------------------
# MaskCon's per-dataset policies (utils.get_augment in the paper's code).
# ---------------------------------------------------------------------------

# Per-dataset (mean, std) used by `normalize` in the paper's code; Cars196,
# SOP and ImageNet32 use the ImageNet statistics.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (hierarchies.CIFAR10_MEAN, hierarchies.CIFAR10_STD),
    "cifar100": (hierarchies.CIFAR100_MEAN, hierarchies.CIFAR100_STD),
    "imagenet": (hierarchies.IMAGENET_MEAN, hierarchies.IMAGENET_STD),
}

_CIFAR_STRONG_UNIFORMS = _WEAK_UNIFORMS + autoaugment.AUTOAUGMENT_UNIFORMS
_CARS_STRONG_UNIFORMS = (
    _WEAK_UNIFORMS
    + _PERSPECTIVE_UNIFORMS
    + _JITTER_UNIFORMS
    + 1
    + _BLUR_UNIFORMS
)
_CARS_WEAK_UNIFORMS = _CROP_UNIFORMS + _PERSPECTIVE_UNIFORMS + 1
_SOP_UNIFORMS = _WEAK_UNIFORMS + _PERSPECTIVE_UNIFORMS


def _split_uniforms(uniforms: jax.Array, *sizes: int) -> list[jax.Array]:
  """Consecutive slices of `uniforms` with the given sizes."""
  if sum(sizes) != uniforms.shape[0]:
    raise ValueError(f"{uniforms.shape[0]} uniforms for parts {sizes}.")
  parts, start = [], 0
  for size in sizes:
    parts.append(uniforms[start : start + size])
    start += size
  return parts


def _view_crop(uniforms: jax.Array, image: jax.Array, size: int) -> jax.Array:
  """The views' random resized crop (scale 0.2-1) of a uint8/float image."""
  x = to_float(image)
  box = _crop_box(
      uniforms, x.shape[0], x.shape[1], _VIEW_CROP_SCALE, _VIEW_CROP_RATIO
  )
  return resized_crop(x, box, size)


def _flip_then_perspective(
    weak_u: jax.Array, persp_u: jax.Array, image: jax.Array, size: int
) -> jax.Array:
  """Crop, flip (p=0.5) and `RandomPerspective(0.5, p=0.5)`, in that order.

  Draws like `_weak_augment` followed by `_perspective`, but resamples once:
  the flip is folded into the warp's matrix.
  """
  x = _view_crop(weak_u[:_CROP_UNIFORMS], image, size)
  # Warping the flipped image: the warp's source point is flipped.
  matrix = _flip_matrix(
      weak_u[_CROP_UNIFORMS], size, 0.5
  ) @ _perspective_matrix(persp_u, size, size, 0.5, 0.5)
  return _homography_warp(x, matrix)


def _cifar_strong_augment(
    rng: jax.Array,
    image: jax.Array,
    size: int,
    flavour: autoaugment.Flavour,
) -> jax.Array:
  """Crop + flip + AutoAugment of `flavour`; both CIFAR views draw alike."""
  uniforms = jax.random.uniform(rng, (_CIFAR_STRONG_UNIFORMS,))
  weak_u, policy_u = _split_uniforms(
      uniforms, _WEAK_UNIFORMS, autoaugment.AUTOAUGMENT_UNIFORMS
  )
  x = _weak_augment(weak_u, image, size)
  return autoaugment.apply_autoaugment(policy_u, x, flavour=flavour)


def cifar_strong_augment(
    rng: jax.Array, image: jax.Array, *, size: int
) -> jax.Array:
  """Crop (0.2-1) + flip + the official MaskCon AutoAugment, in [0, 1].

  The official MaskCon code's query view for its small-image datasets
  (CIFARtoy, CIFAR-100, ImageNet32; `get_augment(..., 'strong')`):
  `RandomResizedCrop(size, (0.2, 1))`, `RandomHorizontalFlip()` and its own
  `CIFAR10Policy()` (from DeepVoltaire/AutoAugment), i.e.
  `autoaugment.OFFICIAL`: grey fill (128), Rotate never negated, bicubic
  shears, untruncated translations, Solarize thresholds from 256, one step
  probability of 0.8 where torchvision has 0.6, and `u < p` step draws. As
  elsewhere here, images stay float between the ops where the official
  pipeline rounds PIL images to uint8. `cifar_strong_tv_augment` is the same
  view with torchvision's AutoAugment.

  Args:
    rng: PRNG key.
    image: `(H, W, C)` image, `uint8` or float in [0, 1] (1 or 3 channels).
    size: Output height and width (static).

  Returns:
    Float32 `(size, size, C)` in [0, 1].
  """
  return _cifar_strong_augment(rng, image, size, autoaugment.OFFICIAL)


def cifar_strong_tv_augment(
    rng: jax.Array, image: jax.Array, *, size: int
) -> jax.Array:
  """Crop (0.2-1) + flip + torchvision's AutoAugment CIFAR-10, in [0, 1].

  `cifar_strong_augment` with torchvision's
  `AutoAugment(AutoAugmentPolicy.CIFAR10)` (fill 0, `autoaugment.TORCHVISION`)
  in place of the official MaskCon policy; it draws the same uniforms, so a
  key gives both views the same crop, flip and sub-policy choice.

  Args:
    rng: PRNG key.
    image: `(H, W, C)` image, `uint8` or float in [0, 1] (1 or 3 channels).
    size: Output height and width (static).

  Returns:
    Float32 `(size, size, C)` in [0, 1].
  """
  return _cifar_strong_augment(rng, image, size, autoaugment.TORCHVISION)


def cars_strong_augment(
    rng: jax.Array, image: jax.Array, *, size: int
) -> jax.Array:
  """The Cars196 query view, in [0, 1].

  Crop (0.2-1) + flip + `RandomPerspective(0.5, p=0.5)` + colour jitter
  (0.4, 0.4, 0.4, 0.1; p=0.8) + grayscale (p=0.2) + Gaussian blur (sigma in
  [0.1, 2], p=0.5, `blur_kernel_size(size)` taps), in that order.

  Args:
    rng: PRNG key.
    image: `(H, W, C)` image, `uint8` or float in [0, 1].
    size: Output height and width (static).

  Returns:
    Float32 `(size, size, C)` in [0, 1].
  """
  uniforms = jax.random.uniform(rng, (_CARS_STRONG_UNIFORMS,))
  weak_u, persp_u, jitter_u, gray_u, blur_u = _split_uniforms(
      uniforms,
      _WEAK_UNIFORMS,
      _PERSPECTIVE_UNIFORMS,
      _JITTER_UNIFORMS,
      1,
      _BLUR_UNIFORMS,
  )
  x = _flip_then_perspective(weak_u, persp_u, image, size)
  x = _color_jitter(
      jitter_u, x, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8
  )
  x = _grayscale(gray_u[0], x, 0.2)
  return _gaussian_blur(
      blur_u, x, sigma=(0.1, 2.0), kernel_size=blur_kernel_size(size), p=0.5
  )


def cars_weak_augment(
    rng: jax.Array, image: jax.Array, *, size: int
) -> jax.Array:
  """The Cars196 key view: crop + perspective (0.5, p=0.5) + flip, in [0, 1].

  The paper's SOP key view is the same; `sop_augment` stands in for it.

  Args:
    rng: PRNG key.
    image: `(H, W, C)` image, `uint8` or float in [0, 1].
    size: Output height and width (static).

  Returns:
    Float32 `(size, size, C)` in [0, 1].
  """
  uniforms = jax.random.uniform(rng, (_CARS_WEAK_UNIFORMS,))
  crop_u, persp_u, flip_u = _split_uniforms(
      uniforms, _CROP_UNIFORMS, _PERSPECTIVE_UNIFORMS, 1
  )
  x = _view_crop(crop_u, image, size)
  # Flipping the warped image: the flip acts on output coordinates first.
  matrix = _perspective_matrix(persp_u, size, size, 0.5, 0.5) @ _flip_matrix(
      flip_u[0], size, 0.5
  )
  return _homography_warp(x, matrix)


def sop_augment(rng: jax.Array, image: jax.Array, *, size: int) -> jax.Array:
  """The SOP query view: crop + flip + perspective (0.5, p=0.5), in [0, 1].

  The paper's SOP key view applies the same three transforms with the flip
  last; the perspective corner offsets are symmetric under a horizontal flip,
  so both orders give (up to half a pixel) the same distribution and this
  one policy serves both views.

  Args:
    rng: PRNG key.
    image: `(H, W, C)` image, `uint8` or float in [0, 1].
    size: Output height and width (static).

  Returns:
    Float32 `(size, size, C)` in [0, 1].
  """
  uniforms = jax.random.uniform(rng, (_SOP_UNIFORMS,))
  weak_u, persp_u = _split_uniforms(
      uniforms, _WEAK_UNIFORMS, _PERSPECTIVE_UNIFORMS
  )
  return _flip_then_perspective(weak_u, persp_u, image, size)


def cifar_strong_view(
    rng: jax.Array,
    image: jax.Array,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> jax.Array:
  """`cifar_strong_augment` then `normalize`; float32 `(size, size, C)`."""
  return normalize(cifar_strong_augment(rng, image, size=size), mean, std)


def cifar_strong_tv_view(
    rng: jax.Array,
    image: jax.Array,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> jax.Array:
  """`cifar_strong_tv_augment` then `normalize`; float32 `(size, size, C)`."""
  return normalize(cifar_strong_tv_augment(rng, image, size=size), mean, std)


def cars_strong_view(
    rng: jax.Array,
    image: jax.Array,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> jax.Array:
  """`cars_strong_augment` then `normalize`; float32 `(size, size, C)`."""
  return normalize(cars_strong_augment(rng, image, size=size), mean, std)


def cars_weak_view(
    rng: jax.Array,
    image: jax.Array,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> jax.Array:
  """`cars_weak_augment` then `normalize`; float32 `(size, size, C)`."""
  return normalize(cars_weak_augment(rng, image, size=size), mean, std)


def sop_view(
    rng: jax.Array,
    image: jax.Array,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> jax.Array:
  """`sop_augment` then `normalize`; float32 `(size, size, C)`."""
  return normalize(sop_augment(rng, image, size=size), mean, std)


def test_view(
    image: jax.Array,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> jax.Array:
  """Deterministic view: bilinear resize to `size` x `size`, then normalise.

  Non-square images are stretched to a square rather than resized along the
  short side as torchvision's `Resize(size)` would.

  Args:
    image: `(H, W, C)` image, `uint8` or float in [0, 1].
    size: Output height and width (static).
    mean: Per-channel means for `normalize`.
    std: Per-channel standard deviations for `normalize`.

  Returns:
    Float32 `(size, size, C)`.
  """
  x = to_float(image)
  box = (0.0, 0.0, float(x.shape[0]), float(x.shape[1]))
  return normalize(resized_crop(x, box, size), mean, std)


# The names start with "test"; this stops pytest from collecting them when a
# test module imports them directly.
test_view.__test__ = False

ViewFn = Callable[..., jax.Array]

# Random view policies by name, each `fn(rng, image, *, size, mean, std)`.
# `weak` / `strong` are the MoCo v2 pair; the others are the paper's
# per-dataset views: CIFAR-10/100 and ImageNet32 use `cifar_strong` (query,
# the official code's AutoAugment) and `cifar_weak` (key), Cars196
# `cars_strong` / `cars_weak`, SOP `sop` for both. `cifar_strong_tv` is the
# CIFAR query view with torchvision's AutoAugment instead.
VIEW_POLICIES: dict[str, ViewFn] = {
    "weak": weak_view,
    "strong": strong_view,
    "cifar_strong": cifar_strong_view,
    "cifar_strong_tv": cifar_strong_tv_view,
    "cifar_weak": weak_view,
    "cars_strong": cars_strong_view,
    "cars_weak": cars_weak_view,
    "sop": sop_view,
}


def view_batch(
    view_fn: ViewFn,
    rng: jax.Array,
    images: jax.Array,
    **kwargs,
) -> jax.Array:
  """Applies a random single-image view to a `(B, H, W, C)` batch.

  Example `i` uses `jax.random.split(rng, B)[i]`, so results match calling
  `view_fn` on each image with that key.

  Args:
    view_fn: A policy such as `weak_view` or a `VIEW_POLICIES` entry.
    rng: PRNG key for the whole batch.
    images: Batch of images, `uint8` or float in [0, 1].
    **kwargs: Static keyword arguments for `view_fn` (`size`, `mean`, `std`).

  Returns:
    Float32 array `(B, size, size, C)`.
  """
  keys = jax.random.split(rng, images.shape[0])
  return jax.vmap(lambda k, x: view_fn(k, x, **kwargs))(keys, images)


def policy_views(
    policies: Sequence[str],
    rngs: Sequence[jax.Array],
    images: jax.Array,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[jax.Array, ...]:
  """One view batch per `(policy name, key)` pair, e.g. a step's weak+strong.

  Args:
    policies: names in `VIEW_POLICIES`.
    rngs: one PRNG key per policy.
    images: Batch of images, `uint8` or float in [0, 1].
    size, mean, std: output size and normalisation.

  Returns:
    A tuple of float32 arrays `(B, size, size, C)`, in the order of
    `policies`.
  """
  if len(policies) != len(rngs):
    raise ValueError(f"{len(policies)} policies but {len(rngs)} keys.")
  return tuple(
      view_batch(
          VIEW_POLICIES[name], rng, images, size=size, mean=mean, std=std
      )
      for name, rng in zip(policies, rngs)
  )


def weak_view_batch(
    rng: jax.Array,
    images: jax.Array,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> jax.Array:
  """`weak_view` over a batch, one split key per example."""
  return view_batch(weak_view, rng, images, size=size, mean=mean, std=std)


def strong_view_batch(
    rng: jax.Array,
    images: jax.Array,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> jax.Array:
  """`strong_view` over a batch, one split key per example."""
  return view_batch(strong_view, rng, images, size=size, mean=mean, std=std)


def test_view_batch(
    images: jax.Array,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> jax.Array:
  """`test_view` over a batch."""
  return jax.vmap(lambda x: test_view(x, size=size, mean=mean, std=std))(images)


test_view_batch.__test__ = False
