"""ResNet encoders with a projection head and a coarse classifier (Flax linen).

The encoder mirrors the official MaskCon model (torchvision ResNet with the fc
layer removed): for images of at most 64 px the stem is a 3x3 stride-1
convolution without max-pooling. ``width`` scales every stage (64 is the
standard ResNet), so the same architecture fits a laptop CPU at width 16.

Modules are used functionally::

  model = methods.build_encoder(config, num_coarse)
  variables = model.init(rng, images, train=False)
  out, updates = model.apply(variables, images, train=True,
                             mutable=['batch_stats'])
  out['features'], out['projection'], out['coarse_logits']

Each method (`maskcon_jax.methods`) picks its encoder: WCL adds a second
BN-MLP head (``projection2``), SelfCon is the multi-exit ``SelfConEncoder``
(``exit_features``, ``exit_projections``), the saliency method also returns
the last activation map (``feature_map``); `maskcon_jax.methods.
build_encoder` builds the one of ``config.mode``. The other modes' encoder is
the plain ``Encoder``.

Unlike the official code, encoders start from random weights: nothing is
downloaded at run time.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskcon_jax import filters
from maskcon_jax.errors import ConfigError

ModuleDef = Any

# torchvision's ResNet initialisation: kaiming-normal (fan_out) convolutions,
# and PyTorch's default uniform(+-1/sqrt(fan_in)) for linear weights. The
# official small-image stem is a fresh nn.Conv2d installed after torchvision's
# init loop, so it keeps PyTorch's default (the same uniform as linear layers).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
torch_default_conv_init = dense_init

# How 3x3 convolutions pad. "torch": one pixel on every side, as PyTorch's
# padding=1 (for stride 2 on an even input the windows are centred on the
# even pixels, aligned with the 1x1 stride-2 shortcut). "same": XLA's SAME,
# which for stride 2 on an even input pads only the bottom/right, so the
# main path is shifted by one pixel against the shortcut; runs trained
# before conv_padding existed used it, and keep it when reloaded.
CONV_PADDINGS = ("torch", "same")
DEFAULT_CONV_PADDING = "torch"
LEGACY_CONV_PADDING = "same"


def torch_bias_init(fan_in: int):
  """PyTorch's default ``nn.Linear`` bias: uniform(+-1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_dense(features: int, fan_in: int, *, dtype: Any, name: str):
  """``nn.Dense`` initialised as PyTorch's ``nn.Linear(fan_in, features)``."""
  return nn.Dense(
      features,
      dtype=dtype,
      kernel_init=dense_init,
      bias_init=torch_bias_init(fan_in),
      name=name,
  )


def _torch_padded_conv(
    features: int,
    kernel_size: Sequence[int],
    strides: Sequence[int] = (1, 1),
    **kwargs,
):
  """``nn.Conv`` padded by ``(k - 1) // 2`` on both sides, as PyTorch's
  ResNet (padding=1 for 3x3, 0 for 1x1, 3 for the 7x7 stem)."""
  kwargs.setdefault(
      "padding", [((k - 1) // 2, (k - 1) // 2) for k in kernel_size]
  )
  return nn.Conv(features, kernel_size, strides, **kwargs)


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
      residual = self.conv(
          self.filters,
          (1, 1),
          (self.strides, self.strides),
          name="downsample_conv",
      )(residual)
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
      residual = self.conv(
          self.filters * 4,
          (1, 1),
          (self.strides, self.strides),
          name="downsample_conv",
      )(residual)
      residual = self.norm(name="downsample_norm")(residual)
    return nn.relu(residual + y)


def _conv_and_norm(
    dtype: Any, train: bool, padding: str = DEFAULT_CONV_PADDING
) -> tuple[ModuleDef, ModuleDef]:
  """The convolution and BatchNorm constructors every ResNet stage uses."""
  if padding not in CONV_PADDINGS:
    raise ConfigError(
        f"config.conv_padding={padding!r} is not supported; use "
        f"one of: {', '.join(CONV_PADDINGS)}."
    )
  if padding == "torch":
    conv = functools.partial(
        _torch_padded_conv, use_bias=False, dtype=dtype, kernel_init=conv_init
    )
  else:
    conv = functools.partial(
        nn.Conv,
        use_bias=False,
        dtype=dtype,
        kernel_init=conv_init,
        padding="SAME",
    )
  # PyTorch BN defaults: momentum 0.1 (= Flax 0.9), eps 1e-5. Statistics and
  # normalisation stay in float32 even when convolutions run in bfloat16.
  norm = functools.partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=dtype,
      param_dtype=jnp.float32,
  )
  return conv, norm


class ResNet(nn.Module):
  """ResNet backbone returning globally pooled features ``(N, 8 * width * e)``.

  With ``return_stages`` it returns ``(features, stage_maps)`` instead, where
  ``stage_maps`` holds the ``(N, H_s, W_s, C_s)`` output of each stage (for
  SelfCon's exits and the saliency maps); the parameters are the same.
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  width: int = 64
  small_images: bool = True
  dtype: Any = jnp.float32
  return_stages: bool = False
  conv_padding: str = DEFAULT_CONV_PADDING

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv, norm = _conv_and_norm(self.dtype, train, self.conv_padding)
    x = x.astype(self.dtype)
    if self.small_images:
      x = conv(
          self.width, (3, 3), kernel_init=torch_default_conv_init, name="conv1"
      )(x)
      x = nn.relu(norm(name="bn1")(x))
    else:
      x = conv(
          self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv1"
      )(x)
      x = nn.relu(norm(name="bn1")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    stage_maps = []
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = self.block_cls(
            filters=self.width * 2**stage,
            conv=conv,
            norm=norm,
            strides=strides,
            name=f"layer{stage + 1}_{block}",
        )(x)
      stage_maps.append(x)
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.return_stages:
      return features, tuple(stage_maps)
    return features


class ProjectionHead(nn.Module):
  """Linear-ReLU-Linear projector (the official MaskCon/MoCo v2 head)."""

  hidden_dim: int = 512
  embed_dim: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.relu(
        torch_dense(self.hidden_dim, x.shape[-1], dtype=self.dtype, name="fc1")(
            x
        )
    )
    return torch_dense(
        self.embed_dim, self.hidden_dim, dtype=self.dtype, name="fc2"
    )(x).astype(jnp.float32)


class BNProjectionHead(nn.Module):
  """Linear-BN-ReLU-Linear-BN-ReLU-Linear projector (WCL's two heads)."""

  hidden_dim: int = 512
  embed_dim: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    dense = functools.partial(torch_dense, dtype=self.dtype)
    _, norm = _conv_and_norm(self.dtype, train)
    x = nn.relu(
        norm(name="bn1")(dense(self.hidden_dim, x.shape[-1], name="fc1")(x))
    )
    x = nn.relu(
        norm(name="bn2")(dense(self.hidden_dim, self.hidden_dim, name="fc2")(x))
    )
    return dense(self.embed_dim, self.hidden_dim, name="fc3")(x).astype(
        jnp.float32
    )


def highpass(
    images_NxHxWxC: jax.Array, sigma: float, kernel_size: int
) -> jax.Array:
  """``x - GaussianBlur(x)`` per image (the saliency method's ``hp`` input)."""
  blur = functools.partial(
      filters.gaussian_blur, sigma=sigma, kernel_size=kernel_size
  )
  images_NxHxWxC = images_NxHxWxC.astype(jnp.float32)
  return images_NxHxWxC - jax.vmap(blur)(images_NxHxWxC)


class Encoder(nn.Module):
  """Backbone + projection head + linear coarse classifier.

  Returns a dict with ``features`` (backbone output, used for retrieval),
  ``projection`` (unnormalised embedding fed to the contrastive loss) and
  ``coarse_logits`` (CoIns' classifier on the backbone features).

  The defaults are the MaskCon/MoCo encoder; the other fields only add to it:

  * ``head="bn_mlp"`` and ``second_head`` (WCL): both heads are
    ``BNProjectionHead``s, the second one's output is ``projection2``.
  * ``return_feature_map`` (saliency masking): ``feature_map`` is the last
    stage's activation map ``(N, h, w, C)``.
  * ``input_highpass=(sigma, kernel_size)`` (saliency ``hp``): every input,
    evaluation included, is high-pass filtered first, as the official code
    filters all its inputs and its linear evaluation.
  """

  backbone: Callable[..., nn.Module]
  embed_dim: int = 256
  proj_hidden_dim: int = 512
  num_coarse: int = 2
  dtype: Any = jnp.float32
  head: str = "mlp"
  second_head: bool = False
  return_feature_map: bool = False
  input_highpass: tuple[float, int] | None = None

  @nn.compact
  def __call__(self, images, train: bool = True):
    if self.input_highpass is not None:
      images = highpass(images, *self.input_highpass)
    out = {}
    if self.return_feature_map:
      features, stage_maps = self.backbone(
          dtype=self.dtype, return_stages=True, name="backbone"
      )(images, train)
      out["feature_map"] = stage_maps[-1].astype(jnp.float32)
    else:
      features = self.backbone(dtype=self.dtype, name="backbone")(images, train)
    if self.head == "bn_mlp":
      heads = [
          BNProjectionHead(
              self.proj_hidden_dim, self.embed_dim, dtype=self.dtype, name=name
          )
          for name in ("projector", "projector2")[: 1 + self.second_head]
      ]
      projections = [h(features, train) for h in heads]
    else:
      heads = [
          ProjectionHead(
              self.proj_hidden_dim, self.embed_dim, dtype=self.dtype, name=name
          )
          for name in ("projector", "projector2")[: 1 + self.second_head]
      ]
      projections = [h(features) for h in heads]
    coarse_logits = torch_dense(
        self.num_coarse, features.shape[-1], dtype=self.dtype, name="classifier"
    )(features)
    out.update(
        {
            "features": features,
            "projection": projections[0],
            "coarse_logits": coarse_logits.astype(jnp.float32),
        }
    )
    if self.second_head:
      out["projection2"] = projections[1]
    return out


class ExitSubNetwork(nn.Module):
  """SelfCon's non-shared copy of the stages after an exit, pooled.

  Stages ``first_stage..len(stage_sizes)-1`` (0-based) with ``stage_sizes``
  blocks each; the output has the backbone's feature size.
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  first_stage: int
  width: int = 64
  dtype: Any = jnp.float32
  conv_padding: str = DEFAULT_CONV_PADDING

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv, norm = _conv_and_norm(self.dtype, train, self.conv_padding)
    for stage in range(self.first_stage, len(self.stage_sizes)):
      for block in range(self.stage_sizes[stage]):
        strides = 2 if block == 0 else 1
        x = self.block_cls(
            filters=self.width * 2**stage,
            conv=conv,
            norm=norm,
            strides=strides,
            name=f"layer{stage + 1}_{block}",
        )(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


SELFCON_SIZES = ("fc", "small", "same")


class SelfConEncoder(nn.Module):
  """SelfCon's multi-exit network (Bae et al., AAAI 2023).

  The backbone with its projector, plus one exit after each stage in
  ``exit_stages`` (1-based: 2 = after the second stage, the paper's default).
  An exit is ``fc`` (global pooling of the stage output, then a linear map to
  the backbone's feature size), ``same`` (a non-shared copy of the remaining
  stages) or ``small`` (the same with halved block counts, at least one).
  Every exit and the backbone has its own Linear(d, d)-ReLU-Linear(d, embed)
  head, ``d`` being the backbone's feature size.

  Returns the ``Encoder`` keys plus ``exit_features`` ``(N, E, d)`` and
  ``exit_projections`` ``(N, E, embed)``. With ``ensemble_features``,
  ``features`` is the concatenation of the L2-normalised backbone and exit
  features (their cosine similarity is the mean of the per-exit ones), so
  retrieval and every other consumer of ``features`` evaluate the exit
  ensemble; ``backbone_features`` always holds the backbone alone.
  """

  backbone: Callable[..., nn.Module]
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  width: int = 64
  exit_stages: Sequence[int] = (2,)
  exit_size: str = "fc"
  embed_dim: int = 128
  num_coarse: int = 2
  ensemble_features: bool = False
  dtype: Any = jnp.float32
  conv_padding: str = DEFAULT_CONV_PADDING

  @nn.compact
  def __call__(self, images, train: bool = True):
    features, stage_maps = self.backbone(
        dtype=self.dtype, return_stages=True, name="backbone"
    )(images, train)
    d = features.shape[-1]
    exit_features = []
    for stage in self.exit_stages:
      x = stage_maps[stage - 1]
      if self.exit_size == "fc":
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        exit_features.append(
            torch_dense(
                d, pooled.shape[-1], dtype=self.dtype, name=f"exit{stage}_fc"
            )(pooled).astype(jnp.float32)
        )
      else:
        sizes = (
            self.stage_sizes
            if self.exit_size == "same"
            else [max(1, n // 2) for n in self.stage_sizes]
        )
        exit_features.append(
            ExitSubNetwork(
                stage_sizes=sizes,
                block_cls=self.block_cls,
                first_stage=stage,
                width=self.width,
                dtype=self.dtype,
                conv_padding=self.conv_padding,
                name=f"exit{stage}_net",
            )(x, train)
        )
    projection = ProjectionHead(
        d, self.embed_dim, dtype=self.dtype, name="projector"
    )(features)
    exit_projections = [
        ProjectionHead(
            d, self.embed_dim, dtype=self.dtype, name=f"exit{stage}_projector"
        )(f)
        for stage, f in zip(self.exit_stages, exit_features)
    ]
    coarse_logits = torch_dense(
        self.num_coarse, d, dtype=self.dtype, name="classifier"
    )(features)
    exit_features_NxExD = jnp.stack(exit_features, axis=1)
    out_features = features
    if self.ensemble_features:
      out_features = exit_ensemble_features(features, exit_features_NxExD)
    return {
        "features": out_features,
        "backbone_features": features,
        "projection": projection,
        "coarse_logits": coarse_logits.astype(jnp.float32),
        "exit_features": exit_features_NxExD,
        "exit_projections": jnp.stack(exit_projections, axis=1),
    }


def exit_ensemble_features(
    features_NxD: jax.Array, exit_features_NxExD: jax.Array
) -> jax.Array:
  """``[norm(backbone), norm(exit_1), ...]`` concatenated, ``(N, (1+E) D)``.

  The cosine similarity of two such vectors is the mean of the backbone's
  and the exits' cosine similarities (once the concatenation is normalised,
  as retrieval does), a feature-level ensemble of the exits.
  """

  def norm(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

  parts = [norm(features_NxD.astype(jnp.float32))]
  parts += [
      norm(exit_features_NxExD[:, e].astype(jnp.float32))
      for e in range(exit_features_NxExD.shape[1])
  ]
  return jnp.concatenate(parts, axis=-1)


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


def build_backbone(
    arch: str,
    width: int,
    image_size: int,
    conv_padding: str = DEFAULT_CONV_PADDING,
) -> Callable[..., ResNet]:
  """A ResNet constructor; the small-image stem is chosen from ``image_size``."""
  stage_sizes, block_cls = ARCHITECTURES[arch]
  return functools.partial(
      ResNet,
      stage_sizes=stage_sizes,
      block_cls=block_cls,
      width=width,
      small_images=image_size <= SMALL_IMAGE_MAX_SIZE,
      conv_padding=conv_padding,
  )


def conv_padding_of(config) -> str:
  """``config.conv_padding``, checked; the default where the config has none.

  Raises:
    ConfigError: an unknown value.
  """
  padding = config.get("conv_padding", None) or DEFAULT_CONV_PADDING
  if padding not in CONV_PADDINGS:
    raise ConfigError(
        f"config.conv_padding={padding!r} is not supported; use "
        f"one of: {', '.join(CONV_PADDINGS)} (torch = "
        "PyTorch's padding, same = runs made before it)."
    )
  return padding


def encoder_fields(config, num_coarse: int) -> dict[str, Any]:
  """The `Encoder` fields every method shares: the backbone of
  ``config.arch``, ``width``, ``image_size`` and ``conv_padding``, the head
  sizes and the precision.

  Raises:
    ConfigError: an unknown conv_padding.
  """
  backbone = build_backbone(
      config.arch, config.width, config.image_size, conv_padding_of(config)
  )
  return dict(
      backbone=backbone,
      embed_dim=config.embed_dim,
      proj_hidden_dim=config.proj_hidden_dim,
      num_coarse=num_coarse,
      dtype=DTYPES[config.get("precision", "float32")],
  )


def _jaxpr_flops(jaxpr) -> float:
  """Multiply-add FLOPs (x2) of convolutions and matmuls in a jaxpr."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      out = eqn.outvars[0].aval
      rhs = eqn.invars[1].aval
      dn = eqn.params["dimension_numbers"]
      kernel_in_and_spatial = 1
      for axis, size in enumerate(rhs.shape):
        if axis != dn.rhs_spec[0]:  # every kernel axis but the output features
          kernel_in_and_spatial *= size
      total += 2.0 * math.prod(out.shape) * kernel_in_and_spatial
    elif name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval
      contracted = math.prod(lhs.shape[a] for a in lhs_contract)
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * contracted
    for sub in _sub_jaxprs(eqn.params):
      total += _jaxpr_flops(sub)
  return total


def _sub_jaxprs(params):
  for value in params.values():
    inner = getattr(value, "jaxpr", None)
    if inner is not None and hasattr(inner, "eqns"):
      yield inner
    elif hasattr(value, "eqns"):
      yield value


def forward_flops(model: nn.Module, image_shape: Sequence[int]) -> float:
  """FLOPs of one eval-mode forward of ``model`` on one ``(H, W, C)`` image,
  counted from its convolutions and matmuls (multi-exit and second heads
  included)."""
  x = jnp.zeros((1, *image_shape), jnp.float32)
  variables = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0), x
  )
  forward = jax.make_jaxpr(functools.partial(model.apply, train=False))(
      variables, x
  )
  return _jaxpr_flops(forward.jaxpr)


def count_params(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))
