"""Every dataset config builds its pipeline and trains a few steps.

tfds datasets run on `tfds.testing.mock_data`; file-based ones on tiny
folders made here. The model, image size and budget are shrunk to seconds;
everything else (dataset, policies, hierarchy, normalisation) is the config's.
"""

import importlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from maskcon_jax import hierarchies
from maskcon_jax import trainer

# Trains or runs whole programs: out of the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow

TFDS_CONFIGS = (
    "cifar100",
    "cifartoy_good",
    "cifartoy_bad",
    "imagenet32",
    "cars196",
    "sop",
)


def _shrink(config, **extra):
  config.update(
      dict(
          arch="resnet10",
          width=4,
          embed_dim=8,
          proj_hidden_dim=16,
          batch_size=8,
          queue_size=16,
          num_epochs=1,
          warmup_epochs=0,
          eval_batch_size=8,
          log_every_steps=1,
          checkpoint_every_steps=100,
          num_devices=1,
          retrieval_ks=(1, 2),
      )
  )
  config.stop_after_steps = 2
  with config.unlocked():
    for key, value in extra.items():
      config[key] = value
  return config


def _train(name, tmp_path, **extra):
  config = importlib.import_module(f"configs.{name}").get_config()
  config = _shrink(config, **extra)
  results = trainer.train_and_evaluate(config, str(tmp_path / name))
  assert results["step"] == 2
  key = "fine_recall@1" if "fine_recall@1" in results else "coarse_recall@1"
  assert 0.0 <= results[key] <= 1.0
  return results


@pytest.mark.parametrize("name", TFDS_CONFIGS)
def test_tfds_config_trains_on_mock_data(name, tmp_path):
  # 224-px datasets shrink to 16 px and load in memory here: mock_data also
  # mocks the file system that orbax lists checkpoints with. The streamed
  # path trains in test_reliability.py.
  # SOP derives its hierarchy from the data: enough random examples that all
  # 12 super-categories occur.
  with tfds.testing.mock_data(num_examples=160 if name == "sop" else 24):
    _train(name, tmp_path, image_size=16, in_memory=True)


def _jpeg(path, value, size=(20, 24)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path, "JPEG")


@pytest.mark.parametrize("name", ["sop_split1", "sop_split2"])
def test_sop_split_config_trains_on_a_tiny_folder(name, tmp_path):
  root = tmp_path / "Stanford_Online_Products"
  split = int(name[-1])
  for subset in ("train", "test"):
    paths, _, _ = hierarchies.sop_split_lists(split, subset)
    for i, p in enumerate(paths[:24]):
      _jpeg(root / p, 10 * i)
  _train(
      name,
      tmp_path,
      image_size=16,
      data_dir=str(root),
      max_train_examples=24,
      max_test_examples=24,
  )


def test_folder_config_trains_from_an_image_folder(tmp_path):
  root = tmp_path / "root"
  classes = {"sedan_a": "car", "sedan_b": "car", "tabby": "cat", "lion": "cat"}
  for k, name in enumerate(classes):
    for split, count in (("train", 6), ("test", 3)):
      for i in range(count):
        _jpeg(root / split / name / f"{i}.jpg", 40 * k + i)
  mapping = tmp_path / "map.json"
  mapping.write_text(
      '{"sedan_a": "car", "sedan_b": "car", "tabby": "cat", ' '"lion": "cat"}'
  )
  _train(
      "folder_example",
      tmp_path,
      image_size=16,
      data_dir=str(root),
      coarse_map=str(mapping),
  )
