"""AutoAugment (the CIFAR-10 policy) as pure, vmappable JAX functions.

Two flavours of the policy are provided (see `Flavour`):

* `TORCHVISION` reproduces torchvision's
  `transforms.AutoAugment(AutoAugmentPolicy.CIFAR10)` on a PIL image.
* `OFFICIAL` reproduces the `CIFAR10Policy` of the official MaskCon code
  (taken from DeepVoltaire/AutoAugment): grey fill (128), an unsigned Rotate,
  bicubic shears, untruncated translations, Solarize thresholds from 256 and
  one different step probability.

Both apply PIL's `ImageOps`, `ImageEnhance` and `Image.transform`, which the
operations reproduce:

* Lookup-table ops (invert, posterize, solarize, autocontrast, equalize) first
  quantise the image to uint8 levels (`round(255 * x)`) and then follow PIL's
  integer arithmetic, so on uint8-valued inputs they are exact.
* Enhance ops (brightness, color, contrast, sharpness) blend the image with a
  degenerate image, `clip(f * x + (1 - f) * degenerate)`, in float. PIL rounds
  the degenerate image to uint8 and truncates the result; skipping both keeps
  the outputs within one uint8 level of PIL's without a systematic downward
  bias.
* Geometric ops (rotate, shear, translate) resample with nearest neighbour
  (or, for the official shears, PIL's bicubic filter) and a constant fill,
  using PIL's convention: output pixel `(x, y)` reads the input around
  `M @ (x + 0.5, y + 0.5, 1)`, where `M` is the inverse affine matrix. The
  bicubic result is not truncated to uint8 either, for the same reason.

Images are float HWC in [0, 1] with 1 or 3 channels. `apply_op` runs any
operation chosen by a (possibly traced) index; it groups the operations into
four families (identity, lookup table, blend, affine) so that a batch under
`vmap`, where every branch is evaluated, costs one lookup, one blend and one
gather per step rather than one of each per operation.

It is over 600 lines (about 1,000) because it is one table: sixteen PIL
operations reproduced exactly, the policy's 25 sub-policies in two flavours,
and their sampling. Splitting the operations from the policy would separate
each operation from the only code that calls it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

# torchvision's rgb_to_grayscale weights (ITU-R 601-2), also `augment`'s
# grayscale. PIL's integer luma differs from these by less than 1e-4 per
# channel.
LUMA_WEIGHTS = (0.2989, 0.587, 0.114)
_NUM_LEVELS = 256

# Operation names, as torchvision's AutoAugment spells them. The index of a
# name is the `op` argument of `apply_op`.
OP_NAMES = (
    "Identity",
    "Invert",
    "AutoContrast",
    "Equalize",
    "Posterize",
    "Solarize",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Rotate",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)
OP_INDEX = {name: i for i, name in enumerate(OP_NAMES)}

_IDENTITY_FAMILY, _LUT_FAMILY, _BLEND_FAMILY, _AFFINE_FAMILY = range(4)
_FAMILY_OF = {
    "Identity": _IDENTITY_FAMILY,
    "Invert": _LUT_FAMILY,
    "AutoContrast": _LUT_FAMILY,
    "Equalize": _LUT_FAMILY,
    "Posterize": _LUT_FAMILY,
    "Solarize": _LUT_FAMILY,
    "Brightness": _BLEND_FAMILY,
    "Color": _BLEND_FAMILY,
    "Contrast": _BLEND_FAMILY,
    "Sharpness": _BLEND_FAMILY,
    "Rotate": _AFFINE_FAMILY,
    "ShearX": _AFFINE_FAMILY,
    "ShearY": _AFFINE_FAMILY,
    "TranslateX": _AFFINE_FAMILY,
    "TranslateY": _AFFINE_FAMILY,
}
_FAMILIES = np.asarray([_FAMILY_OF[name] for name in OP_NAMES], np.int32)

# torchvision.transforms.AutoAugmentPolicy.CIFAR10: 25 sub-policies, each two
# (operation, probability, magnitude bin) steps; None marks ops without a
# magnitude.
SubPolicy = tuple[tuple[str, float, int | None], tuple[str, float, int | None]]
CIFAR10_POLICY: tuple[SubPolicy, ...] = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)

# The official MaskCon code's CIFAR10Policy: the same sub-policies and
# magnitude bins, but the second Equalize of sub-policy 16 runs with p = 0.8
# (torchvision: 0.6).
OFFICIAL_CIFAR10_POLICY: tuple[SubPolicy, ...] = (
    CIFAR10_POLICY[:16]
    + ((("Equalize", 0.2, None), ("Equalize", 0.8, None)),)
    + CIFAR10_POLICY[17:]
)

# PIL's `convert('L')` luma, (R * 19595 + G * 38470 + B * 7471) >> 16 with
# rounding: the weights sum to exactly 1, so a grey RGB pixel keeps its level
# (within a float32 ulp here).
_PIL_LUMA_WEIGHTS = (19595 / 65536, 38470 / 65536, 7471 / 65536)


@dataclasses.dataclass(frozen=True)
class Flavour:
  """The semantics of one AutoAugment implementation.

  Flavours are hashable, so they can be static arguments of `jax.jit` and
  keys of the cached `policy_tables`.

  Attributes:
    name: Key in `FLAVOURS`.
    policy: Default sub-policies.
    fill: Value, in [0, 1], of pixels that the geometric ops map from outside
      the image.
    solarize_start: Solarize threshold of magnitude bin 0; the bins run
      linearly from it down to 0.
    signed_rotate: Whether Rotate's magnitude is negated with probability 1/2
      (if not, it always rotates counter-clockwise).
    truncate_translate: Whether translations are truncated to whole pixels
      (torchvision's `int()`) before the nearest-neighbour warp; otherwise the
      float offset is sampled as PIL does, which rounds it half up.
    shear_resample: `'nearest'` or `'bicubic'` (PIL's a = -1 filter).
    strict_probability: Whether a step runs iff `u < p` (`random.random() <
      p`); otherwise iff `u <= p` (torchvision).
    luma_weights: RGB weights of the grey image that Color and Contrast blend
      with.
  """

  name: str
  policy: tuple[SubPolicy, ...]
  fill: float
  solarize_start: float
  signed_rotate: bool
  truncate_translate: bool
  shear_resample: str
  strict_probability: bool
  luma_weights: tuple[float, float, float]


# torchvision's AutoAugment on a PIL image, with its default fill (0).
TORCHVISION = Flavour(
    name="torchvision",
    policy=CIFAR10_POLICY,
    fill=0.0,
    solarize_start=255.0,
    signed_rotate=True,
    truncate_translate=True,
    shear_resample="nearest",
    strict_probability=False,
    # Kept from the first version of this module; within 1e-4 of PIL's luma.
    luma_weights=LUMA_WEIGHTS,
)

# The official MaskCon code's `CIFAR10Policy` / `SubPolicy` (utils/utils.py,
# from DeepVoltaire/AutoAugment), with its default fillcolor (128, 128, 128).
# Its rotate composites an RGBA rotation over a grey image, which amounts to
# a nearest-neighbour rotation with fill 128; it never negates the angle.
OFFICIAL = Flavour(
    name="official",
    policy=OFFICIAL_CIFAR10_POLICY,
    fill=128.0 / 255.0,
    solarize_start=256.0,
    signed_rotate=False,
    truncate_translate=False,
    shear_resample="bicubic",
    strict_probability=True,
    luma_weights=_PIL_LUMA_WEIGHTS,
)

FLAVOURS = {flavour.name: flavour for flavour in (TORCHVISION, OFFICIAL)}


def get_flavour(flavour: Flavour | str) -> Flavour:
  """A `Flavour`, given itself or its name in `FLAVOURS`."""
  if isinstance(flavour, Flavour):
    return flavour
  if flavour not in FLAVOURS:
    raise ValueError(
        f"Unknown AutoAugment flavour {flavour!r}; expected one "
        f"of {sorted(FLAVOURS)}."
    )
  return FLAVOURS[flavour]


# One uniform picks the sub-policy; each of the two steps takes one for its
# probability and one for its sign.
AUTOAUGMENT_UNIFORMS = 5


# ---------------------------------------------------------------------------
# Lookup-table operations (uint8 semantics).
# ---------------------------------------------------------------------------


def to_levels(image: jax.Array) -> jax.Array:
  """Float image in [0, 1] to int32 uint8 levels, `round(255 * x)`."""
  scaled = jnp.clip(jnp.asarray(image, jnp.float32), 0.0, 1.0) * 255.0
  return jnp.round(scaled).astype(jnp.int32)


def _from_levels(levels: jax.Array) -> jax.Array:
  return levels.astype(jnp.float32) * (1.0 / 255.0)


def apply_lut(image: jax.Array, lut: jax.Array) -> jax.Array:
  """Maps the uint8 levels of `image` through a lookup table.

  Args:
    image: Float image `(H, W, C)` in [0, 1]; quantised to levels first.
    lut: Int table of shape `(256,)` (shared) or `(C, 256)` (per channel),
      with values in [0, 255].

  Returns:
    Float32 image on uint8 levels, `lut[level] / 255`.
  """
  levels = to_levels(image)
  channels = image.shape[-1]
  lut = jnp.broadcast_to(jnp.asarray(lut, jnp.int32), (channels, _NUM_LEVELS))
  # One flat gather for all channels: channel c's table starts at 256 * c.
  offsets = jnp.arange(channels, dtype=jnp.int32) * _NUM_LEVELS
  return _from_levels(jnp.take(lut.reshape(-1), levels + offsets))


def _identity_lut() -> jax.Array:
  return jnp.arange(_NUM_LEVELS, dtype=jnp.int32)


def _invert_lut() -> jax.Array:
  return 255 - _identity_lut()


def _posterize_lut(bits: jax.Array) -> jax.Array:
  # PIL keeps the top `bits` bits: level & ~(2 ** (8 - bits) - 1).
  shift = 8 - jnp.clip(jnp.asarray(bits).astype(jnp.int32), 0, 8)
  levels = _identity_lut()
  return jnp.left_shift(jnp.right_shift(levels, shift), shift)


def _solarize_lut(threshold: jax.Array) -> jax.Array:
  # PIL's ImageOps.solarize: levels >= threshold are inverted. The threshold
  # may be fractional (torchvision's bins are linspace(255, 0, 10)).
  levels = _identity_lut()
  threshold = jnp.asarray(threshold, jnp.float32)
  return jnp.where(
      levels.astype(jnp.float32) >= threshold, 255 - levels, levels
  )


def _autocontrast_lut(levels: jax.Array) -> jax.Array:
  """Per-channel `ImageOps.autocontrast` tables `(C, 256)` for `levels`."""
  lo = jnp.min(levels, axis=(0, 1))[:, None]
  hi = jnp.max(levels, axis=(0, 1))[:, None]
  ramp = _identity_lut()[None, :]
  # Integer division gives the exact floor of (level - lo) * 255 / (hi - lo).
  # PIL evaluates the same quotient in double precision and truncates, which
  # for a few (lo, hi) pairs lands just below an exact integer quotient; there
  # PIL's level is one lower.
  span = jnp.maximum(hi - lo, 1)
  stretched = jnp.clip(jnp.floor_divide((ramp - lo) * 255, span), 0, 255)
  # A constant channel is left alone.
  return jnp.where(hi > lo, stretched, ramp)


def _histograms(levels: jax.Array) -> jax.Array:
  """Per-channel histograms `(C, 256)` of int levels `(H, W, C)`."""
  channels = levels.shape[-1]
  offsets = jnp.arange(channels, dtype=jnp.int32) * _NUM_LEVELS
  flat = (levels + offsets).reshape(-1)
  counts = jnp.zeros((channels * _NUM_LEVELS,), jnp.int32).at[flat].add(1)
  return counts.reshape(channels, _NUM_LEVELS)


def _equalize_lut(levels: jax.Array) -> jax.Array:
  """Per-channel `ImageOps.equalize` tables `(C, 256)` for `levels`."""
  hist = _histograms(levels)
  num_pixels = levels.shape[0] * levels.shape[1]
  top = jnp.max(levels, axis=(0, 1))
  top_count = jnp.take_along_axis(hist, top[:, None], axis=1)[:, 0]
  # PIL (>= 10) and torchvision: the pixels below the brightest level are
  # spread over 255 steps, starting half a step in.
  step = (num_pixels - top_count) // 255
  below = jnp.cumsum(hist, axis=1) - hist
  safe_step = jnp.maximum(step, 1)[:, None]
  lut = jnp.clip((step[:, None] // 2 + below) // safe_step, 0, 255)
  # A step of 0 (including single-level channels) leaves the channel alone.
  return jnp.where(step[:, None] > 0, lut, _identity_lut()[None, :])


def invert(image: jax.Array) -> jax.Array:
  """`ImageOps.invert`: level -> 255 - level."""
  return apply_lut(image, _invert_lut())


def posterize(image: jax.Array, bits: jax.Array | int) -> jax.Array:
  """`ImageOps.posterize`: keeps the top `bits` (0-8) bits of each level."""
  return apply_lut(image, _posterize_lut(bits))


def solarize(image: jax.Array, threshold: jax.Array | float) -> jax.Array:
  """`ImageOps.solarize`: inverts levels >= `threshold` (in 0-256)."""
  return apply_lut(image, _solarize_lut(threshold))


def autocontrast(image: jax.Array) -> jax.Array:
  """`ImageOps.autocontrast` (no cutoff): stretches each channel to 0-255."""
  return apply_lut(image, _autocontrast_lut(to_levels(image)))


def equalize(image: jax.Array) -> jax.Array:
  """`ImageOps.equalize`: per-channel histogram equalisation."""
  return apply_lut(image, _equalize_lut(to_levels(image)))


# ---------------------------------------------------------------------------
# Enhance (blend) operations.
# ---------------------------------------------------------------------------


def _blend(
    image: jax.Array, degenerate: jax.Array, factor: jax.Array
) -> jax.Array:
  image = jnp.asarray(image, jnp.float32)
  factor = jnp.asarray(factor, jnp.float32)
  return jnp.clip(degenerate + factor * (image - degenerate), 0.0, 1.0)


def _grayscale(
    image: jax.Array, luma_weights: tuple[float, ...] = LUMA_WEIGHTS
) -> jax.Array:
  image = jnp.asarray(image, jnp.float32)
  if image.shape[-1] == 1:
    return image
  weights = jnp.asarray(luma_weights, jnp.float32)
  return jnp.sum(image * weights, axis=-1, keepdims=True)


def _smooth(image: jax.Array) -> jax.Array:
  """PIL's `ImageFilter.SMOOTH` without rounding; border pixels are kept."""
  image = jnp.asarray(image, jnp.float32)
  height, width = image.shape[0], image.shape[1]
  if height <= 2 or width <= 2:
    return image
  # 3x3 kernel: 1 everywhere, 5 in the centre, divided by 13.
  total = 4.0 * image[1:-1, 1:-1]
  for dy in range(3):
    for dx in range(3):
      total = total + image[dy : height - 2 + dy, dx : width - 2 + dx]
  return image.at[1:-1, 1:-1].set(total * (1.0 / 13.0))


def enhance_brightness(
    image: jax.Array, factor: jax.Array | float
) -> jax.Array:
  """`ImageEnhance.Brightness`: blend with black."""
  return _blend(image, jnp.zeros_like(image), factor)


def enhance_color(image: jax.Array, factor: jax.Array | float) -> jax.Array:
  """`ImageEnhance.Color`: blend with the grayscale image."""
  return _blend(image, _grayscale(image), factor)


def enhance_contrast(image: jax.Array, factor: jax.Array | float) -> jax.Array:
  """`ImageEnhance.Contrast`: blend with the mean grey level."""
  return _blend(image, jnp.mean(_grayscale(image)), factor)


def enhance_sharpness(image: jax.Array, factor: jax.Array | float) -> jax.Array:
  """`ImageEnhance.Sharpness`: blend with the smoothed image."""
  return _blend(image, _smooth(image), factor)


# ---------------------------------------------------------------------------
# Affine operations.
# ---------------------------------------------------------------------------


def affine_transform(
    image: jax.Array, matrix: jax.Array, fill: float = 0.0
) -> jax.Array:
  """Nearest-neighbour affine warp with PIL's `Image.transform` convention.

  Output pixel `(x, y)` takes the input pixel that contains the point
  `(u, v) = M @ (x + 0.5, y + 0.5, 1)`, i.e. `(floor(u), floor(v))`; points
  outside the image give `fill`.

  Args:
    image: Float image `(H, W, C)`.
    matrix: Inverse (output to input) affine matrix, 6 values
      `(a, b, c, d, e, f)` as PIL takes them, or shape `(2, 3)`.
    fill: Value for pixels that map outside the image.

  Returns:
    Float32 image, same shape.
  """
  image = jnp.asarray(image, jnp.float32)
  height, width, channels = image.shape
  m = jnp.asarray(matrix, jnp.float32).reshape(6)
  ys = jnp.arange(height, dtype=jnp.float32)[:, None] + 0.5
  xs = jnp.arange(width, dtype=jnp.float32)[None, :] + 0.5
  # Clipping before the cast keeps far-away points finite; -1 and the size
  # are both outside, so clipping never moves a point inside.
  src_x = jnp.clip(m[0] * xs + m[1] * ys + m[2], -1.0, float(width))
  src_y = jnp.clip(m[3] * xs + m[4] * ys + m[5], -1.0, float(height))
  ix = jnp.floor(src_x).astype(jnp.int32)
  iy = jnp.floor(src_y).astype(jnp.int32)
  inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
  flat_index = jnp.clip(iy, 0, height - 1) * width + jnp.clip(ix, 0, width - 1)
  gathered = jnp.take(
      image.reshape(height * width, channels), flat_index, axis=0
  )
  return jnp.where(inside[..., None], gathered, jnp.float32(fill))


def _cubic_kernel(t: jax.Array) -> jax.Array:
  """PIL's bicubic kernel (the a = -1 cubic convolution) at distance `t`.

  PIL's BICUBIC macro (Geometry.c) evaluates p1 + d (p2 + d (p3 + d p4)) on
  the taps v1..v4 at offsets -1..2 from floor, with p1 = v2, p2 = v3 - v1,
  p3 = 2 (v1 - v2) + v3 - v4 and p4 = v2 - v1 + v4 - v3. Collecting the
  coefficient of each tap gives this kernel at the tap's distance from the
  sample point: |t|^3 - 2 |t|^2 + 1 up to 1, -|t|^3 + 5 |t|^2 - 8 |t| + 4 up
  to 2, and 0 beyond; it is continuous, so a sample point that moves by an
  ulp across a pixel centre changes the result by about an ulp.
  """
  t = jnp.abs(t)
  near = (t - 2.0) * t * t + 1.0
  far = ((5.0 - t) * t - 8.0) * t + 4.0
  return jnp.where(t <= 1.0, near, jnp.where(t < 2.0, far, 0.0))


def affine_transform_bicubic(
    image: jax.Array, matrix: jax.Array, fill: float = 0.0
) -> jax.Array:
  """Bicubic affine warp as PIL's `Image.transform(..., Image.BICUBIC)`.

  With `(u, v) = M @ (x + 0.5, y + 0.5, 1)` as in `affine_transform`, output
  pixel `(x, y)` is `fill` unless `(u, v)` lies in `[0, W) x [0, H)`;
  otherwise it interpolates the 4x4 pixels around `(u - 0.5, v - 0.5)` (rows
  first, then columns, as PIL does), with neighbours beyond the border
  clamped to it, and is clipped to [0, 1]. PIL also truncates the result to
  uint8; this keeps the float, within one level above PIL's.

  Args:
    image: Float image `(H, W, C)`.
    matrix: Inverse (output to input) affine matrix, 6 values
      `(a, b, c, d, e, f)` as PIL takes them, or shape `(2, 3)`.
    fill: Value for pixels that map outside the image.

  Returns:
    Float32 image, same shape.
  """
  image = jnp.asarray(image, jnp.float32)
  height, width, channels = image.shape
  m = jnp.asarray(matrix, jnp.float32).reshape(6)
  ys = jnp.arange(height, dtype=jnp.float32)[:, None] + 0.5
  xs = jnp.arange(width, dtype=jnp.float32)[None, :] + 0.5
  src_x = m[0] * xs + m[1] * ys + m[2]
  src_y = m[3] * xs + m[4] * ys + m[5]
  inside = (src_x >= 0.0) & (src_x < width) & (src_y >= 0.0) & (src_y < height)
  # Points outside give `fill`; clipping them keeps the taps in the table.
  u = jnp.clip(src_x, 0.0, float(width)) - 0.5
  v = jnp.clip(src_y, 0.0, float(height)) - 0.5
  # Taps reach 2 px beyond the image; edge padding clamps them as PIL does.
  # Each entry also carries its own (unclamped) row and column, from which
  # the tap weights are computed. XLA recomputes `u` and `v` separately for
  # the gather's indices and for the weights, contracting multiply-adds into
  # FMAs in some places only; weights from the floor of one and the fraction
  # of the other would be a whole pixel off where a point lies within an ulp
  # of a pixel centre (every row of some columns for some shears), whereas
  # weights of the gathered taps' own positions stay consistent.
  pad = 2
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
  rows, cols = jnp.meshgrid(
      jnp.arange(-pad, height + pad, dtype=jnp.float32),
      jnp.arange(-pad, width + pad, dtype=jnp.float32),
      indexing="ij",
  )
  table = jnp.concatenate([padded, rows[..., None], cols[..., None]], axis=-1)
  taps = jnp.arange(-1, 3, dtype=jnp.int32) + pad
  ix = jnp.floor(u).astype(jnp.int32)[..., None] + taps
  iy = jnp.floor(v).astype(jnp.int32)[..., None] + taps
  # One gather of the 4x4 neighbourhood: (H, W, row tap, column tap, C + 2).
  flat_index = iy[..., :, None] * (width + 2 * pad) + ix[..., None, :]
  patch = jnp.take(table.reshape(-1, channels + 2), flat_index, axis=0)
  wy = _cubic_kernel(v[..., None] - patch[..., :, 0, channels])
  wx = _cubic_kernel(u[..., None] - patch[..., 0, :, channels + 1])
  # Products and sums rather than einsum: a float32 dot may run at reduced
  # (TF32) precision on GPUs.
  rows_value = jnp.sum(patch[..., :channels] * wx[..., None, :, None], axis=3)
  value = jnp.sum(rows_value * wy[..., None], axis=2)
  value = jnp.clip(value, 0.0, 1.0)
  return jnp.where(inside[..., None], value, jnp.float32(fill))


def _shear_rows_bicubic(
    image: jax.Array, factor: jax.Array, fill: float
) -> jax.Array:
  """`affine_transform_bicubic` for the ShearX matrix `(1, f, 0, 0, 1, 0)`.

  The source point of output `(x, y)` is `(x + 0.5 + s, y + 0.5)` with the
  row's shift `s = f (y + 0.5)`: PIL's vertical weights are exactly
  (0, 1, 0, 0), and all pixels of a row share the horizontal fraction, so
  each output row blends 4 copies of its input row, shifted by
  `floor(s) - 1 .. floor(s) + 2` (clamped to the border), with 4 weights.
  That is a quarter of the general warp's gather. `s` is a bare product, so
  the floor that places the taps and the fraction that weights them agree
  even where XLA recomputes it (see `affine_transform_bicubic`).
  """
  image = jnp.asarray(image, jnp.float32)
  height, width, channels = image.shape
  factor = jnp.asarray(factor, jnp.float32)
  shift = factor * (jnp.arange(height, dtype=jnp.float32) + 0.5)
  src_x = jnp.arange(width, dtype=jnp.float32)[None, :] + 0.5 + shift[:, None]
  inside = (src_x >= 0.0) & (src_x < width)
  # A row shifted by more than the width is all fill; clipping keeps the
  # integer shift small.
  base = jnp.floor(jnp.clip(shift, -width - 2.0, width + 2.0))
  taps = jnp.arange(-1, 3, dtype=jnp.int32)
  weights = _cubic_kernel((shift - base)[:, None] - taps.astype(jnp.float32))
  columns = (
      jnp.arange(width, dtype=jnp.int32)[None, :, None]
      + base.astype(jnp.int32)[:, None, None]
      + taps
  )
  flat_index = jnp.arange(height, dtype=jnp.int32)[
      :, None, None
  ] * width + jnp.clip(columns, 0, width - 1)
  # (H, W, tap, C): one gather of 4 taps per output pixel.
  gathered = jnp.take(
      image.reshape(height * width, channels), flat_index, axis=0
  )
  value = jnp.sum(gathered * weights[:, None, :, None], axis=2)
  value = jnp.clip(value, 0.0, 1.0)
  return jnp.where(inside[..., None], value, jnp.float32(fill))


def _swap_axes(image: jax.Array) -> jax.Array:
  return jnp.swapaxes(image, 0, 1)


def _check_resample(resample: str) -> None:
  if resample not in ("nearest", "bicubic"):
    raise ValueError(
        f"Unknown resample {resample!r}; expected 'nearest' or 'bicubic'."
    )


def _rotate_matrix(degrees: jax.Array, height: int, width: int) -> jax.Array:
  # PIL's Image.rotate: counter-clockwise about (W / 2, H / 2).
  theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  cx, cy = width / 2.0, height / 2.0
  return jnp.stack(
      [
          cos,
          -sin,
          cx - cos * cx + sin * cy,
          sin,
          cos,
          cy - sin * cx - cos * cy,
      ]
  )


def _shear_x_matrix(factor: jax.Array) -> jax.Array:
  # torchvision shears about the top-left corner: input x = x + factor * y.
  zero, one = jnp.float32(0.0), jnp.float32(1.0)
  factor = jnp.asarray(factor, jnp.float32)
  return jnp.stack([one, factor, zero, zero, one, zero])


def _shear_y_matrix(factor: jax.Array) -> jax.Array:
  zero, one = jnp.float32(0.0), jnp.float32(1.0)
  factor = jnp.asarray(factor, jnp.float32)
  return jnp.stack([one, zero, zero, factor, one, zero])


def _translate_matrix(dx: jax.Array, dy: jax.Array) -> jax.Array:
  zero, one = jnp.float32(0.0), jnp.float32(1.0)
  dx = jnp.asarray(dx, jnp.float32)
  dy = jnp.asarray(dy, jnp.float32)
  return jnp.stack([one, zero, -dx, zero, one, -dy])


def rotate(
    image: jax.Array, degrees: jax.Array | float, fill: float = 0.0
) -> jax.Array:
  """Rotates counter-clockwise by `degrees` about the image centre."""
  height, width = image.shape[0], image.shape[1]
  return affine_transform(image, _rotate_matrix(degrees, height, width), fill)


def shear_x(
    image: jax.Array,
    factor: jax.Array | float,
    fill: float = 0.0,
    resample: str = "nearest",
) -> jax.Array:
  """Horizontal shear about the top-left corner: out(x, y) = in(x + f y, y).

  `resample` is `'nearest'` or `'bicubic'` (as `affine_transform_bicubic`).
  """
  _check_resample(resample)
  if resample == "bicubic":
    return _shear_rows_bicubic(image, factor, fill)
  return affine_transform(image, _shear_x_matrix(factor), fill)


def shear_y(
    image: jax.Array,
    factor: jax.Array | float,
    fill: float = 0.0,
    resample: str = "nearest",
) -> jax.Array:
  """Vertical shear about the top-left corner: out(x, y) = in(x, y + f x).

  `resample` is `'nearest'` or `'bicubic'` (as `affine_transform_bicubic`).
  """
  _check_resample(resample)
  if resample == "bicubic":
    # ShearY is ShearX of the transposed image.
    return _swap_axes(_shear_rows_bicubic(_swap_axes(image), factor, fill))
  return affine_transform(image, _shear_y_matrix(factor), fill)


def translate_x(
    image: jax.Array, pixels: jax.Array | float, fill: float = 0.0
) -> jax.Array:
  """Shifts the content right by `pixels` (left if negative)."""
  return affine_transform(image, _translate_matrix(pixels, 0.0), fill)


def translate_y(
    image: jax.Array, pixels: jax.Array | float, fill: float = 0.0
) -> jax.Array:
  """Shifts the content down by `pixels` (up if negative)."""
  return affine_transform(image, _translate_matrix(0.0, pixels), fill)


# ---------------------------------------------------------------------------
# Dispatch by index.
# ---------------------------------------------------------------------------


def _is(op: jax.Array, name: str) -> jax.Array:
  return op == OP_INDEX[name]


def _lut_family(
    image: jax.Array, op: jax.Array, magnitude: jax.Array
) -> jax.Array:
  levels = to_levels(image)
  channels = image.shape[-1]

  def per_channel(lut: jax.Array) -> jax.Array:
    return jnp.broadcast_to(lut, (channels, _NUM_LEVELS))

  lut = jnp.select(
      [
          _is(op, "Invert"),
          _is(op, "AutoContrast"),
          _is(op, "Equalize"),
          _is(op, "Posterize"),
      ],
      [
          per_channel(_invert_lut()),
          _autocontrast_lut(levels),
          _equalize_lut(levels),
          # torchvision passes int(magnitude) bits.
          per_channel(_posterize_lut(jnp.trunc(magnitude))),
      ],
      per_channel(_solarize_lut(magnitude)),
  )
  offsets = jnp.arange(channels, dtype=jnp.int32) * _NUM_LEVELS
  return _from_levels(jnp.take(lut.reshape(-1), levels + offsets))


def _blend_family(
    image: jax.Array,
    op: jax.Array,
    magnitude: jax.Array,
    luma_weights: tuple[float, ...] = LUMA_WEIGHTS,
) -> jax.Array:
  gray = _grayscale(image, luma_weights)
  degenerate = jnp.where(
      _is(op, "Brightness"),
      0.0,
      jnp.where(
          _is(op, "Color"),
          gray,
          jnp.where(_is(op, "Contrast"), jnp.mean(gray), _smooth(image)),
      ),
  )
  return _blend(image, degenerate, 1.0 + magnitude)


def _affine_family(
    image: jax.Array,
    op: jax.Array,
    magnitude: jax.Array,
    fill: float,
    flavour: Flavour = TORCHVISION,
) -> jax.Array:
  height, width = image.shape[0], image.shape[1]
  if flavour.truncate_translate:
    # torchvision passes int(magnitude) pixels to translate (towards zero).
    shift = jnp.trunc(magnitude)
  else:
    shift = magnitude
  matrix = jnp.select(
      [
          _is(op, "Rotate"),
          _is(op, "ShearX"),
          _is(op, "ShearY"),
          _is(op, "TranslateX"),
      ],
      [
          _rotate_matrix(magnitude, height, width),
          _shear_x_matrix(magnitude),
          _shear_y_matrix(magnitude),
          _translate_matrix(shift, 0.0),
      ],
      _translate_matrix(0.0, shift),
  )
  warped = affine_transform(image, matrix, fill)
  _check_resample(flavour.shear_resample)
  if flavour.shear_resample == "nearest":
    return warped
  # Rotate and translate stay nearest; under vmap both warps run for every
  # example. ShearY is ShearX of the transposed image: a square image is
  # transposed (or not) before one row-wise shear.
  shear_y_op = _is(op, "ShearY")
  if height == width:
    rows = jnp.where(shear_y_op, _swap_axes(image), image)
    sheared = _shear_rows_bicubic(rows, magnitude, fill)
    sheared = jnp.where(shear_y_op, _swap_axes(sheared), sheared)
  else:
    sheared = jnp.where(
        shear_y_op,
        _swap_axes(_shear_rows_bicubic(_swap_axes(image), magnitude, fill)),
        _shear_rows_bicubic(image, magnitude, fill),
    )
  shear = _is(op, "ShearX") | shear_y_op
  return jnp.where(shear, sheared, warped)


def apply_op(
    image: jax.Array,
    op: jax.Array | int,
    magnitude: jax.Array | float,
    fill: float | None = None,
    *,
    flavour: Flavour | str = TORCHVISION,
) -> jax.Array:
  """Applies operation `OP_NAMES[op]` as the flavour's policy would.

  `magnitude` is the signed magnitude torchvision's `_apply_op` takes:
  degrees (counter-clockwise) for Rotate, the shear factor for ShearX/Y,
  pixels for TranslateX/Y (positive moves the content right / down),
  `factor - 1` for the enhance ops, bits (truncated) for Posterize and the
  threshold level for Solarize; it is ignored by the other ops.

  The flavour decides the rest: `TORCHVISION` truncates translations to whole
  pixels and shears with nearest neighbour; `OFFICIAL` samples translations
  at the float offset (PIL rounds it half up) and shears bicubically. Both
  rotate and translate with nearest neighbour.

  Args:
    image: Float image `(H, W, C)` in [0, 1].
    op: Index into `OP_NAMES`; may be traced (e.g. per example under `vmap`).
    magnitude: Signed magnitude, may be traced.
    fill: Fill value of the geometric operations; defaults to the
      flavour's.
    flavour: A `Flavour` or its name (static).

  Returns:
    Float32 image, same shape, in [0, 1].
  """
  flavour = get_flavour(flavour)
  fill = flavour.fill if fill is None else fill
  image = jnp.asarray(image, jnp.float32)
  op = jnp.asarray(op, jnp.int32)
  magnitude = jnp.asarray(magnitude, jnp.float32)
  family = jnp.asarray(_FAMILIES)[op]
  branches = (
      lambda x, o, m: x,
      _lut_family,
      functools.partial(_blend_family, luma_weights=flavour.luma_weights),
      functools.partial(_affine_family, fill=fill, flavour=flavour),
  )
  return jax.lax.switch(family, branches, image, op, magnitude)


# ---------------------------------------------------------------------------
# The policy.
# ---------------------------------------------------------------------------


def augmentation_space(
    num_bins: int,
    height: int,
    width: int,
    flavour: Flavour | str = TORCHVISION,
) -> dict[str, tuple[np.ndarray, bool]]:
  """Magnitude bins and signs: torchvision's `AutoAugment._augmentation_space`.

  The official flavour's `SubPolicy.ranges` differ in two bins: Solarize runs
  from 256 (not 255) down to 0, and Rotate is unsigned. Its translations
  (`magnitude * img.size`) equal torchvision's bins up to rounding.

  Args:
    num_bins: Number of magnitude bins (10 for AutoAugment).
    height: Image height (sets the TranslateY range).
    width: Image width (sets the TranslateX range).
    flavour: A `Flavour` or its name.

  Returns:
    Map from op name to `(magnitudes, signed)`; `magnitudes` has `num_bins`
    float32 values (a single 0 for ops without a magnitude), and `signed`
    says whether the policy negates it with probability 1/2.
  """
  flavour = get_flavour(flavour)

  def linspace(start: float, stop: float) -> np.ndarray:
    return np.linspace(start, stop, num_bins, dtype=np.float32)

  # 8 - round(i / ((num_bins - 1) / 4)); the official round(linspace(8, 4))
  # gives the same bits.
  bits = 8 - np.round(np.arange(num_bins) / ((num_bins - 1) / 4))
  zero = np.zeros((1,), np.float32)
  return {
      "ShearX": (linspace(0.0, 0.3), True),
      "ShearY": (linspace(0.0, 0.3), True),
      "TranslateX": (linspace(0.0, 150.0 / 331.0 * width), True),
      "TranslateY": (linspace(0.0, 150.0 / 331.0 * height), True),
      "Rotate": (linspace(0.0, 30.0), flavour.signed_rotate),
      "Brightness": (linspace(0.0, 0.9), True),
      "Color": (linspace(0.0, 0.9), True),
      "Contrast": (linspace(0.0, 0.9), True),
      "Sharpness": (linspace(0.0, 0.9), True),
      "Posterize": (bits.astype(np.float32), False),
      "Solarize": (linspace(flavour.solarize_start, 0.0), False),
      "AutoContrast": (zero, False),
      "Equalize": (zero, False),
      "Invert": (zero, False),
      "Identity": (zero, False),
  }


@functools.lru_cache(maxsize=None)
def policy_tables(
    policy: tuple[SubPolicy, ...],
    height: int,
    width: int,
    flavour: Flavour = TORCHVISION,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Flattens a policy into constant arrays, each of shape `(len(policy), 2)`.

  Args:
    policy: Sub-policies such as `CIFAR10_POLICY`.
    height: Image height.
    width: Image width.
    flavour: The `Flavour` whose magnitude bins and signs to use.

  Returns:
    `(ops, probs, magnitudes, signed)`: op indices (int32), probabilities and
    unsigned magnitudes (float32), and whether each magnitude takes a random
    sign (bool).
  """
  space = augmentation_space(10, height, width, flavour)
  ops, probs, mags, signed = [], [], [], []
  for sub_policy in policy:
    for name, prob, magnitude_bin in sub_policy:
      values, is_signed = space[name]
      ops.append(OP_INDEX[name])
      probs.append(prob)
      mags.append(0.0 if magnitude_bin is None else values[magnitude_bin])
      signed.append(is_signed)
  shape = (len(policy), 2)
  return (
      np.asarray(ops, np.int32).reshape(shape),
      np.asarray(probs, np.float32).reshape(shape),
      np.asarray(mags, np.float32).reshape(shape),
      np.asarray(signed, bool).reshape(shape),
  )


def autoaugment_params(
    uniforms: jax.Array,
    height: int,
    width: int,
    policy: tuple[SubPolicy, ...] | None = None,
    *,
    flavour: Flavour | str = TORCHVISION,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The sub-policy and the two steps that `AUTOAUGMENT_UNIFORMS` uniforms pick.

  Follows `AutoAugment.forward` (and the official `CIFAR10Policy`, which
  draws the same way): a uniformly chosen sub-policy; step `i` runs if
  `u_i <= p_i` (official: `u_i < p_i`), and a signed magnitude is negated if
  its sign draw is 0 (here: its uniform is below 1/2).

  Args:
    uniforms: `AUTOAUGMENT_UNIFORMS` values in [0, 1).
    height: Image height.
    width: Image width.
    policy: Sub-policies; defaults to the flavour's.
    flavour: A `Flavour` or its name (static).

  Returns:
    `(index, ops, magnitudes)`: the sub-policy index, and for the two steps
    the op index to run (`Identity` when a step is skipped) and the signed
    magnitude, as `apply_op` takes it.
  """
  flavour = get_flavour(flavour)
  policy = flavour.policy if policy is None else policy
  ops, probs, mags, signed = (
      jnp.asarray(t) for t in policy_tables(policy, height, width, flavour)
  )
  num = len(policy)
  index = jnp.minimum(jnp.floor(uniforms[0] * num).astype(jnp.int32), num - 1)
  u_prob, u_sign = uniforms[1:3], uniforms[3:5]
  if flavour.strict_probability:
    run = u_prob < probs[index]
  else:
    run = u_prob <= probs[index]
  step_ops = jnp.where(run, ops[index], OP_INDEX["Identity"])
  negate = signed[index] & (u_sign < 0.5)
  step_mags = jnp.where(negate, -mags[index], mags[index])
  return index, step_ops, step_mags


def apply_autoaugment(
    uniforms: jax.Array,
    image: jax.Array,
    policy: tuple[SubPolicy, ...] | None = None,
    fill: float | None = None,
    *,
    flavour: Flavour | str = TORCHVISION,
) -> jax.Array:
  """`autoaugment` with its `AUTOAUGMENT_UNIFORMS` uniforms drawn in advance."""
  flavour = get_flavour(flavour)
  image = jnp.asarray(image, jnp.float32)
  _, step_ops, step_mags = autoaugment_params(
      uniforms, image.shape[0], image.shape[1], policy, flavour=flavour
  )
  for step in range(2):
    image = apply_op(
        image, step_ops[step], step_mags[step], fill, flavour=flavour
    )
  return image


def autoaugment(
    rng: jax.Array,
    image: jax.Array,
    *,
    policy: tuple[SubPolicy, ...] | None = None,
    fill: float | None = None,
    flavour: Flavour | str = TORCHVISION,
) -> jax.Array:
  """AutoAugment's CIFAR-10 policy on one float HWC image in [0, 1].

  With the default flavour this is torchvision's
  `AutoAugment(AutoAugmentPolicy.CIFAR10)`; with `flavour=OFFICIAL` the
  official MaskCon code's `CIFAR10Policy()`.

  Args:
    rng: PRNG key.
    image: Float image `(H, W, C)` in [0, 1] (1 or 3 channels).
    policy: Sub-policies; defaults to the flavour's CIFAR-10 policy.
    fill: Fill value of the geometric operations; defaults to the
      flavour's.
    flavour: A `Flavour` or its name (static).

  Returns:
    Float32 image, same shape, in [0, 1].
  """
  uniforms = jax.random.uniform(rng, (AUTOAUGMENT_UNIFORMS,))
  return apply_autoaugment(uniforms, image, policy, fill, flavour=flavour)
