"""The per-dataset configs carry the paper's settings and name real datasets."""

import importlib

import pytest

from maskcon_jax import input_pipeline

# name -> (dataset, image_size, queue_size, t, w, batch_size, num_epochs,
#          strong_policy, weak_policy)
_PAPER = {
    "cifar100": (
        "cifar100",
        32,
        8192,
        0.05,
        0.5,
        128,
        200,
        "cifar_strong",
        "cifar_weak",
    ),
    "cifartoy_good": (
        "cifartoy_good",
        32,
        8192,
        0.05,
        0.5,
        128,
        200,
        "cifar_strong",
        "cifar_weak",
    ),
    "cifartoy_bad": (
        "cifartoy_bad",
        32,
        8192,
        0.05,
        0.5,
        128,
        200,
        "cifar_strong",
        "cifar_weak",
    ),
    "imagenet32": (
        "imagenet32",
        32,
        16384,
        0.05,
        1.0,
        256,
        100,
        "cifar_strong",
        "cifar_weak",
    ),
    "cars196": (
        "cars196",
        224,
        8192,
        0.1,
        1.0,
        128,
        200,
        "cars_strong",
        "cars_weak",
    ),
    "sop": ("sop", 224, 8192, 0.05, 0.5, 128, 200, "sop", "sop"),
    "sop_split1": ("sop_split1", 224, 8192, 0.1, 0.8, 128, 200, "sop", "sop"),
    "sop_split2": ("sop_split2", 224, 8192, 0.05, 0.5, 128, 200, "sop", "sop"),
    "folder_example": (
        "folder",
        224,
        8192,
        0.05,
        0.5,
        128,
        200,
        "cars_strong",
        "cars_weak",
    ),
}


@pytest.mark.parametrize("name", sorted(_PAPER))
def test_paper_config(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  fields = (
      "dataset",
      "image_size",
      "queue_size",
      "t",
      "w",
      "batch_size",
      "num_epochs",
      "strong_policy",
      "weak_policy",
  )
  assert tuple(config[f] for f in fields) == _PAPER[name]
  assert config.dataset in input_pipeline.DATASETS
  assert (config.arch, config.width, config.embed_dim) == ("resnet18", 64, 256)
  assert (
      config.t0,
      config.learning_rate,
      config.weight_decay,
      config.warmup_epochs,
      config.ema_momentum,
  ) == (0.1, 0.02, 5e-4, 5, 0.99)
  # The official queue must hold a whole number of batches.
  assert config.queue_size % config.batch_size == 0
  # Overridable from the command line, and unset by default.
  assert "in_memory" in config and config.in_memory is None
  assert "Expected" in importlib.import_module(f"configs.{name}").__doc__


def test_fashion_mnist_mixed_config():
  module = importlib.import_module("configs.fashion_mnist_mixed")
  config = module.get_config()
  default = importlib.import_module("configs.default").get_config()
  assert config.dataset == "fashion_mnist_mixed"
  assert config.dataset in input_pipeline.DATASETS
  # Everything else is the default config's: only the grouping changes.
  others = {k: v for k, v in config.to_dict().items() if k != "dataset"}
  assert others == {
      k: v for k, v in default.to_dict().items() if k != "dataset"
  }
  doc = module.__doc__
  assert (
      "python -m maskcon_jax.train --config configs/fashion_mnist_mixed.py"
      " --workdir runs/mixed"
  ) in doc
  assert "Expected result: see the README's mixed-grouping table." in doc
  for pair in ("T-shirt/Shirt", "Pullover/Coat", "Sandal/Sneaker"):
    assert pair in doc
