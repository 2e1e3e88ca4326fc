"""Encoder shapes, parameter counts and the small-image stem."""

import ast
import functools
import inspect

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from maskcon_jax import methods
from maskcon_jax import models
from maskcon_jax.errors import ConfigError

# Builds and runs full-size encoders: out of the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow


def _config(**overrides):
  base = dict(
      arch="resnet18",
      width=8,
      image_size=32,
      embed_dim=16,
      proj_hidden_dim=32,
      precision="float32",
  )
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def test_resnet18_width64_backbone_parameter_count():
  """torchvision's ResNet-18 without fc, with the 3x3 CIFAR stem: 11,168,832."""
  backbone = models.build_backbone("resnet18", 64, 32)()
  variables = jax.eval_shape(
      functools.partial(backbone.init, train=False),
      jax.random.key(0),
      jnp.zeros((1, 32, 32, 3)),
  )
  assert models.count_params(variables["params"]) == 11_168_832


def test_resnet50_width64_backbone_parameter_count():
  """torchvision's ResNet-50 without fc (7x7 stem): 23,508,032."""
  backbone = models.build_backbone("resnet50", 64, 224)()
  variables = jax.eval_shape(
      functools.partial(backbone.init, train=False),
      jax.random.key(0),
      jnp.zeros((1, 224, 224, 3)),
  )
  assert models.count_params(variables["params"]) == 23_508_032


@pytest.mark.parametrize(
    "arch,width,expected",
    [
        ("resnet18", 8, 64),
        ("resnet34", 8, 64),
        ("resnet50", 8, 256),
        ("resnet10", 4, 32),
    ],
)
def test_encoder_outputs(arch, width, expected):
  assert models.feature_dim(arch, width) == expected
  model = methods.build_encoder(_config(arch=arch, width=width), num_coarse=5)
  x = jnp.ones((3, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert out["features"].shape == (3, expected)
  assert out["projection"].shape == (3, 16)
  assert out["coarse_logits"].shape == (3, 5)
  assert set(updates) == {"batch_stats"}
  assert all(v.dtype == jnp.float32 for v in out.values())


def test_small_image_stem_keeps_resolution():
  """<= 64 px: 3x3 stride-1 conv1 and no max-pool, as the official code."""
  small = models.build_backbone("resnet10", 4, 32)()
  large = models.build_backbone("resnet10", 4, 96)()
  x = jnp.ones((1, 32, 32, 3))
  vs = small.init(jax.random.key(0), x, False)
  vl = large.init(jax.random.key(0), jnp.ones((1, 96, 96, 3)), False)
  assert vs["params"]["conv1"]["kernel"].shape == (3, 3, 3, 4)
  assert vl["params"]["conv1"]["kernel"].shape == (7, 7, 3, 4)
  # Capture the stem's output resolution.
  _, inter = small.apply(vs, x, False, capture_intermediates=True)
  assert inter["intermediates"]["conv1"]["__call__"][0].shape == (1, 32, 32, 4)


def test_bfloat16_keeps_float32_params_and_outputs():
  model = methods.build_encoder(_config(precision="bfloat16"), num_coarse=3)
  x = jnp.ones((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  out = model.apply(variables, x, train=False)
  assert out["projection"].dtype == jnp.float32


def _conv_reference(x_HxW, kernel_3x3, stride, pads):
  """NumPy cross-correlation of one channel with explicit (low, high) pads."""
  (top, bottom), (left, right) = pads
  padded = np.pad(x_HxW, ((top, bottom), (left, right)))
  out_h = (padded.shape[0] - 3) // stride + 1
  out_w = (padded.shape[1] - 3) // stride + 1
  out = np.zeros((out_h, out_w))
  for i in range(out_h):
    for j in range(out_w):
      window = padded[i * stride : i * stride + 3, j * stride : j * stride + 3]
      out[i, j] = np.sum(window * kernel_3x3)
  return out


@pytest.mark.parametrize(
    "padding,pads",
    [
        # PyTorch's padding=1: one pixel on every side.
        ("torch", ((1, 1), (1, 1))),
        # XLA's SAME for stride 2 on an even input: only bottom/right.
        ("same", ((0, 1), (0, 1))),
    ],
)
@pytest.mark.parametrize("size", [8, 7])
def test_strided_conv_padding_positions(padding, pads, size):
  """The 3x3 stride-2 convolution of a ResNet stage reads the same input
  pixels as PyTorch's Conv2d(padding=1) ("torch") or XLA's SAME ("same")."""
  conv, _ = models._conv_and_norm(jnp.float32, False, padding)
  layer = conv(1, (3, 3), (2, 2))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, size, size, 1)).astype(np.float32)
  kernel = rng.normal(size=(3, 3)).astype(np.float32)
  params = {"params": {"kernel": jnp.asarray(kernel[:, :, None, None])}}
  out = np.asarray(layer.apply(params, jnp.asarray(x)))[0, :, :, 0]
  if size % 2 == 1:
    pads = ((1, 1), (1, 1))  # Odd inputs: both paddings are symmetric.
  np.testing.assert_allclose(
      out, _conv_reference(x[0, :, :, 0], kernel, 2, pads), rtol=1e-5, atol=1e-5
  )


def test_torch_padding_aligns_main_path_with_shortcut():
  """With PyTorch's padding, a downsampling block's 3x3 path is centred on
  the pixels its 1x1 stride-2 shortcut samples (even rows and columns): an
  impulse at an odd position reaches the same output cells through both."""
  conv, _ = models._conv_and_norm(jnp.float32, False, "torch")
  main = conv(1, (3, 3), (2, 2))
  shortcut = conv(1, (1, 1), (2, 2))
  x = np.zeros((1, 8, 8, 1), np.float32)
  x[0, 4, 4, 0] = 1.0  # An even position: the shortcut's sample (2, 2).
  main_out = main.apply(
      {"params": {"kernel": jnp.zeros((3, 3, 1, 1)).at[1, 1].set(1.0)}}, x
  )
  short_out = shortcut.apply({"params": {"kernel": jnp.ones((1, 1, 1, 1))}}, x)
  # The centre tap of the 3x3 path sees what the shortcut sees.
  np.testing.assert_array_equal(np.asarray(main_out), np.asarray(short_out))


def test_unknown_conv_padding_is_a_config_error():
  with pytest.raises(ConfigError, match="conv_padding"):
    methods.build_encoder(_config(conv_padding="valid"), num_coarse=3)


def test_default_padding_is_torch_and_same_changes_the_function():
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  outs = {}
  for padding in models.CONV_PADDINGS:
    model = methods.build_encoder(_config(conv_padding=padding), num_coarse=3)
    variables = model.init(jax.random.key(0), x, train=False)
    outs[padding] = model.apply(variables, x, train=False)["features"]
  default = methods.build_encoder(_config(), num_coarse=3)
  variables = default.init(jax.random.key(0), x, train=False)
  np.testing.assert_array_equal(
      default.apply(variables, x, train=False)["features"], outs["torch"]
  )
  assert not np.allclose(outs["torch"], outs["same"])


def test_initialisation_follows_pytorch_defaults():
  """Linear layers: weight and bias uniform(+-1/sqrt(fan_in)) (nn.Linear);
  the small-image stem: nn.Conv2d's default, uniform(+-1/sqrt(9 * C_in))."""
  model = methods.build_encoder(
      _config(width=8, proj_hidden_dim=64, embed_dim=32), num_coarse=3
  )
  params = model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)), train=False)[
      "params"
  ]
  fc1 = params["projector"]["fc1"]  # 64 features in (8 * width) -> 64.
  for name in ("kernel", "bias"):
    values = np.asarray(fc1[name])
    bound = 1 / np.sqrt(64)
    assert np.abs(values).max() <= bound
    # Spread over the whole range: not zeros, not a narrower init.
    assert np.abs(values).max() > 0.8 * bound
  bias = np.asarray(params["classifier"]["bias"])
  assert np.all(bias != 0) and np.abs(bias).max() <= 1 / np.sqrt(64)
  stem = np.asarray(params["backbone"]["conv1"]["kernel"])
  bound = 1 / np.sqrt(9 * 3)
  assert np.abs(stem).max() <= bound and np.abs(stem).max() > 0.8 * bound
  # The other convolutions keep torchvision's kaiming-normal (fan_out).
  block = np.asarray(params["backbone"]["layer1_0"]["Conv_0"]["kernel"])
  assert abs(block.std() - np.sqrt(2 / (9 * 8))) < 0.25 * np.sqrt(2 / (9 * 8))


def test_models_do_not_depend_on_the_augmentations():
  # The saliency high-pass shares its blur with the views through
  # maskcon_jax.filters, not by importing the augmentation module.
  tree = ast.parse(inspect.getsource(models))
  imported = {
      alias.name
      for node in ast.walk(tree)
      if isinstance(node, ast.ImportFrom)
      for alias in node.names
  }
  imported |= {
      alias.name
      for node in ast.walk(tree)
      if isinstance(node, ast.Import)
      for alias in node.names
  }
  assert "augment" not in imported and "maskcon_jax.augment" not in imported
  assert "filters" in imported
