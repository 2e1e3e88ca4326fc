"""Gaussian filtering of one image, shared by the augmentations and models.

The random blur of the views (`maskcon_jax.augment`) and the saliency
method's high-pass input (`maskcon_jax.models.highpass`) and blur fill use
the same torchvision-compatible kernel; it lives here so that the models do
not depend on the augmentation module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gaussian_kernel1d(sigma: jax.Array | float, kernel_size: int) -> jax.Array:
  """torchvision's `_get_gaussian_kernel1d`: normalised samples at integers."""
  half = (kernel_size - 1) * 0.5
  x = jnp.linspace(-half, half, kernel_size, dtype=jnp.float32)
  pdf = jnp.exp(-0.5 * jnp.square(x / jnp.asarray(sigma, jnp.float32)))
  return pdf / jnp.sum(pdf)


def gaussian_blur(
    image: jax.Array, sigma: jax.Array | float, kernel_size: int
) -> jax.Array:
  """torchvision `F.gaussian_blur(image, kernel_size, sigma)` on float HWC.

  Separable blur with reflect padding (edge pixel not repeated). Each axis is
  a weighted sum of `kernel_size` shifted slices, so a per-example `sigma`
  under `vmap` costs elementwise work only, with no batched convolution.

  Args:
    image: Float image `(H, W, C)`.
    sigma: Standard deviation in pixels (may be traced), the same for both
      axes.
    kernel_size: Odd number of taps (static).

  Returns:
    Float32 image, same shape.

  Raises:
    ValueError: If `kernel_size` is not a positive odd number.
  """
  if kernel_size <= 0 or kernel_size % 2 == 0:
    raise ValueError(
        f"kernel_size must be odd and positive, got {kernel_size}."
    )
  image = jnp.asarray(image, jnp.float32)
  height, width = image.shape[0], image.shape[1]
  weights = gaussian_kernel1d(sigma, kernel_size)
  pad = kernel_size // 2
  padded = jnp.pad(image, ((pad, pad), (0, 0), (0, 0)), mode="reflect")
  rows = sum(weights[k] * padded[k : k + height] for k in range(kernel_size))
  padded = jnp.pad(rows, ((0, 0), (pad, pad), (0, 0)), mode="reflect")
  return sum(weights[k] * padded[:, k : k + width] for k in range(kernel_size))
