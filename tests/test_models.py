"""Encoder shapes, parameter counts and the small-image stem."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from maskcon_jax import models


def _config(**overrides):
  base = dict(arch="resnet18", width=8, image_size=32, embed_dim=16,
              proj_hidden_dim=32, precision="float32")
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def test_resnet18_width64_backbone_parameter_count():
  """torchvision's ResNet-18 without fc, with the 3x3 CIFAR stem: 11,168,832."""
  backbone = models.build_backbone("resnet18", 64, 32)()
  variables = jax.eval_shape(functools.partial(backbone.init, train=False),
                             jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert models.count_params(variables["params"]) == 11_168_832


def test_resnet50_width64_backbone_parameter_count():
  """torchvision's ResNet-50 without fc (7x7 stem): 23,508,032."""
  backbone = models.build_backbone("resnet50", 64, 224)()
  variables = jax.eval_shape(functools.partial(backbone.init, train=False),
                             jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  assert models.count_params(variables["params"]) == 23_508_032


@pytest.mark.parametrize("arch,width,expected", [
    ("resnet18", 8, 64), ("resnet34", 8, 64), ("resnet50", 8, 256),
    ("resnet10", 4, 32)])
def test_encoder_outputs(arch, width, expected):
  assert models.feature_dim(arch, width) == expected
  model = models.build_encoder(_config(arch=arch, width=width), num_coarse=5)
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
  model = models.build_encoder(_config(precision="bfloat16"), num_coarse=3)
  x = jnp.ones((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  out = model.apply(variables, x, train=False)
  assert out["projection"].dtype == jnp.float32
