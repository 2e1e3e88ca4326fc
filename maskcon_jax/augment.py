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

Each random op has a public form that takes a key and a private form that
takes uniforms drawn in advance. The views draw all their uniforms with a
single `jax.random.uniform` call: every separate PRNG call adds a Threefry
kernel to the program, and on CPU compiling those (especially under `vmap`)
costs far more than running the augmentation.

Float images are expected in [0, 1]; `uint8` inputs to the view functions are
scaled by 1/255 first. Normalisation happens last, after all other ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

# ITU-R 601-2 luma weights, as used by PIL's `convert('L')` and torchvision's
# `rgb_to_grayscale`.
_LUMA_WEIGHTS = (0.2989, 0.587, 0.114)

# torchvision.transforms.RandomResizedCrop.get_params tries this many times
# before falling back to a central crop.
_CROP_ATTEMPTS = 10
_CROP_UNIFORMS = 4 * _CROP_ATTEMPTS
# Four factors, four sort keys for the op order and one apply decision.
_JITTER_UNIFORMS = 9

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


# ---------------------------------------------------------------------------
# Colour. Formulas follow torchvision.transforms.functional on float tensors.
# ---------------------------------------------------------------------------


def rgb_to_grayscale(image: jax.Array) -> jax.Array:
  """ITU-R 601-2 luma of an RGB image, shape `(H, W, 1)`."""
  weights = jnp.asarray(_LUMA_WEIGHTS, image.dtype)
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
  return jnp.where(uniforms[8] < p, jittered, image)


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
  for name, value in (('mean', mean), ('std', std)):
    if len(value) not in (1, channels):
      raise ValueError(
          f'{name} has {len(value)} entries but the image has {channels}'
          ' channels; give one value per channel.'
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


def _weak_augment(uniforms: jax.Array, image: jax.Array, size: int) -> jax.Array:
  x = to_float(image)
  box = _crop_box(
      uniforms[:_CROP_UNIFORMS], x.shape[0], x.shape[1], scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)
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
  jitter_u = uniforms[_WEAK_UNIFORMS:_WEAK_UNIFORMS + _JITTER_UNIFORMS]
  x = _color_jitter(
      jitter_u, x, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
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
  """Key-encoder view: `weak_augment` then `normalize`; float32 `(size, size, C)`."""
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


def test_view(
    image: jax.Array,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> jax.Array:
  """Deterministic view: bilinear resize of the whole image, then normalise."""
  x = to_float(image)
  box = (0.0, 0.0, float(x.shape[0]), float(x.shape[1]))
  return normalize(resized_crop(x, box, size), mean, std)


# The names start with "test"; this stops pytest from collecting them when a
# test module imports them directly.
test_view.__test__ = False

ViewFn = Callable[..., jax.Array]

# Random view policies by name, each `fn(rng, image, *, size, mean, std)`.
# Dataset-specific policies (e.g. AutoAugment variants) register here.
VIEW_POLICIES: dict[str, ViewFn] = {
    'weak': weak_view,
    'strong': strong_view,
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
  return jax.vmap(lambda x: test_view(x, size=size, mean=mean, std=std))(
      images
  )


test_view_batch.__test__ = False
