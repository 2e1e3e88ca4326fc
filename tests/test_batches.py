"""Batch sources (`maskcon_jax.batches`) replay the same batches from any step.

The device-resident source is checked end to end by the bit-exact resume
tests (tests/test_reliability.py, tests/test_train.py); the streamed one
here, batch by batch.
"""

import os

import numpy as np

from configs import tiny
from maskcon_jax import batches as batches_lib
from maskcon_jax import input_pipeline
from maskcon_jax import trainer


def _write_png(path, value):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(path)


def test_streamed_batches_resume_mid_epoch(tmp_path):
  """A streamed dataset restarted at any step yields exactly the batches an
  uninterrupted pass yields from there (the data order is a function of the
  seed and the step)."""
  root = tmp_path / "images"
  for split, count in (("train", 12), ("test", 2)):
    for fine in ("a", "b"):
      for i in range(count):
        _write_png(
            str(root / split / fine / f"{i}.png"),
            (i * 20 + (fine == "b") * 7) % 256,
        )
  (root / "coarse.csv").write_text("a,x\nb,y\n")
  config = tiny.get_config()
  config.dataset = "folder"
  config.data_dir = str(root)
  config.coarse_map = str(root / "coarse.csv")
  config.in_memory = False
  config.image_size = 8
  config.batch_size = 8
  dataset = input_pipeline.load_dataset(config)
  mesh = trainer.make_mesh()
  spe = dataset.steps_per_epoch(config.batch_size)
  assert spe == 3

  def batches(start, stop):
    data = batches_lib.StreamedBatches(
        dataset, mesh, config.batch_size, config.seed
    )
    return [np.asarray(data.batch(s, spe)["image"]) for s in range(start, stop)]

  straight = batches(0, 2 * spe)
  assert not np.array_equal(straight[0], straight[spe])  # Epochs differ.
  for start in (1, spe, spe + 2):
    for got, want in zip(batches(start, 2 * spe), straight[start:]):
      np.testing.assert_array_equal(got, want, err_msg=f"start {start}")
