"""ResNet encoders with a projection head and a coarse classifier (Flax linen).

The encoder mirrors the official MaskCon model (torchvision ResNet with the fc
layer removed): for images of at most 64 px the stem is a 3x3 stride-1
convolution without max-pooling. ``width`` scales every stage (64 is the
standard ResNet), so the same architecture fits a laptop CPU at width 16.

Modules are used functionally::

  model = build_encoder(config)
  variables = model.init(rng, images, train=False)
  out, updates = model.apply(variables, images, train=True,
                             mutable=['batch_stats'])
  out['features'], out['projection'], out['coarse_logits']

Unlike the official code, encoders start from random weights: nothing is
downloaded at run time.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any

# torchvision's ResNet initialisation: kaiming-normal (fan_out) convolutions,
# and PyTorch's default uniform(+-1/sqrt(fan_in)) for linear weights.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# Images up to this size use the CIFAR-style stem (3x3 stride-1, no max-pool).
SMALL_IMAGE_MAX_SIZE = 64


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  expansion = 1

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm()(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), (self.strides, self.strides),
                           name="downsample_conv")(residual)
      residual = self.norm(name="downsample_norm")(residual)
    return nn.relu(residual + y)


class Bottleneck(nn.Module):
  """1x1-3x3-1x1 bottleneck, stride on the 3x3 conv (ResNet v1.5, ResNet-50)."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  expansion = 4

  @nn.compact
  def __call__(self, x):
    residual = x
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(y)
    y = nn.relu(self.norm()(y))
    y = self.norm()(self.conv(self.filters * 4, (1, 1))(y))
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1),
                           (self.strides, self.strides),
                           name="downsample_conv")(residual)
      residual = self.norm(name="downsample_norm")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """ResNet backbone returning globally pooled features ``(N, 8 * width * e)``."""
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  width: int = 64
  small_images: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=conv_init, padding="SAME")
    # PyTorch BN defaults: momentum 0.1 (= Flax 0.9), eps 1e-5. Statistics and
    # normalisation stay in float32 even when convolutions run in bfloat16.
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                             param_dtype=jnp.float32)
    x = x.astype(self.dtype)
    if self.small_images:
      x = conv(self.width, (3, 3), name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
    else:
      x = conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)],
               name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = self.block_cls(filters=self.width * 2**stage, conv=conv, norm=norm,
                           strides=strides, name=f"layer{stage + 1}_{block}")(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class ProjectionHead(nn.Module):
  """Linear-ReLU-Linear projector (the official MaskCon/MoCo v2 head)."""
  hidden_dim: int = 512
  embed_dim: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=dense_init)
    x = nn.relu(dense(self.hidden_dim, name="fc1")(x))
    return dense(self.embed_dim, name="fc2")(x).astype(jnp.float32)


class Encoder(nn.Module):
  """Backbone + projection head + linear coarse classifier.

  Returns a dict with ``features`` (backbone output, used for retrieval),
  ``projection`` (unnormalised embedding fed to the contrastive loss) and
  ``coarse_logits`` (CoIns' classifier on the backbone features).
  """
  backbone: Callable[..., nn.Module]
  embed_dim: int = 256
  proj_hidden_dim: int = 512
  num_coarse: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = True):
    features = self.backbone(dtype=self.dtype, name="backbone")(images, train)
    projection = ProjectionHead(self.proj_hidden_dim, self.embed_dim,
                                dtype=self.dtype, name="projector")(features)
    coarse_logits = nn.Dense(self.num_coarse, kernel_init=dense_init,
                             dtype=self.dtype, name="classifier")(features)
    return {"features": features, "projection": projection,
            "coarse_logits": coarse_logits.astype(jnp.float32)}


ARCHITECTURES = {
    # Tiny variant for tests and smoke runs: one basic block per stage.
    "resnet10": ([1, 1, 1, 1], BasicBlock),
    "resnet18": ([2, 2, 2, 2], BasicBlock),
    "resnet34": ([3, 4, 6, 3], BasicBlock),
    "resnet50": ([3, 4, 6, 3], Bottleneck),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def feature_dim(arch: str, width: int) -> int:
  """Size of the backbone features of ``arch`` at ``width``."""
  _, block_cls = ARCHITECTURES[arch]
  return 8 * width * block_cls.expansion


def build_backbone(arch: str, width: int,
                   image_size: int) -> Callable[..., ResNet]:
  """A ResNet constructor; the small-image stem is chosen from ``image_size``."""
  stage_sizes, block_cls = ARCHITECTURES[arch]
  return functools.partial(
      ResNet, stage_sizes=stage_sizes, block_cls=block_cls, width=width,
      small_images=image_size <= SMALL_IMAGE_MAX_SIZE)


def build_encoder(config, num_coarse: int) -> Encoder:
  """The encoder described by ``config`` (arch, width, image_size, ...)."""
  dtype = DTYPES[config.get("precision", "float32")]
  return Encoder(
      backbone=build_backbone(config.arch, config.width, config.image_size),
      embed_dim=config.embed_dim,
      proj_hidden_dim=config.proj_hidden_dim,
      num_coarse=num_coarse,
      dtype=dtype)


def count_params(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))
