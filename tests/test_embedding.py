"""The one embedding path: in memory and streamed, any batch and device count.

`embedding.Embedder` serves training's evaluation, ``maskcon_jax.evaluate``,
``maskcon_jax.export`` and `embed.RunEncoder`. The reference here is the
test-view forward pass (`train_step.embed_step`) over a whole split in one
unbatched call.
"""

import json
import os

import jax
import numpy as np
from PIL import Image
import pytest

from configs import tiny
from maskcon_jax import embedding
from maskcon_jax import evaluate
from maskcon_jax import evaluation
from maskcon_jax import export
from maskcon_jax import input_pipeline
from maskcon_jax import train_state as train_state_lib
from maskcon_jax import train_step
from maskcon_jax import trainer
from maskcon_jax.errors import UserError

# Trains or runs whole programs: out of the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow

pytest.importorskip("tensorflow")

# Fine class -> (coarse class, train images, test images). 19 test images:
# the last evaluation batch is padded.
_CLASSES = {
    "ant": ("small", 6, 5),
    "bee": ("small", 6, 4),
    "cow": ("big", 6, 6),
    "elk": ("big", 6, 4),
}


def streamed_folder_config(root):
  """tiny's config on a class-folder dataset of random 8-px PNGs written
  under ``root``, read from disk batch by batch (`_CLASSES`)."""
  rng = np.random.default_rng(0)
  for name, (_, num_train, num_test) in _CLASSES.items():
    for split, count in (("train", num_train), ("test", num_test)):
      os.makedirs(root / "data" / split / name)
      for i in range(count):
        pixels = rng.integers(0, 256, (8, 8, 3), np.uint8)
        Image.fromarray(pixels).save(root / "data" / split / name / f"{i}.png")
  coarse_map = root / "map.json"
  coarse_map.write_text(json.dumps({n: c for n, (c, _, _) in _CLASSES.items()}))
  config = tiny.get_config()
  config.dataset = "folder"
  config.data_dir = str(root / "data")
  config.coarse_map = str(coarse_map)
  config.in_memory = False
  config.batch_size = 8
  config.queue_size = 16
  config.num_epochs = 1
  config.warmup_epochs = 0
  config.eval_batch_size = 8
  config.checkpoint_every_steps = 100
  return config


@pytest.fixture(scope="module")
def streamed_run(tmp_path_factory):
  """A tiny run trained on a class-folder dataset read from disk (streamed)."""
  root = tmp_path_factory.mktemp("streamed")
  workdir = str(root / "run")
  trainer.train_and_evaluate(streamed_folder_config(root), workdir)
  return workdir


def _in_memory_reference(workdir):
  """The test split read into memory and embedded in one unbatched call."""
  exp, state = trainer.load_trained(
      workdir, config_overrides={"in_memory": True}
  )
  assert isinstance(exp.dataset, input_pipeline.Dataset)
  out = jax.device_get(
      train_step.embed_step(
          train_state_lib.query_variables(state),
          exp.dataset.test_images,
          apply_fn=exp.model.apply,
          image_size=exp.config.image_size,
          mean=exp.dataset.mean,
          std=exp.dataset.std,
      )
  )
  return exp.dataset, out


def test_evaluate_and_export_work_on_a_streamed_run(streamed_run, tmp_path):
  exp, _ = trainer.load_trained(streamed_run)
  assert isinstance(exp.dataset, input_pipeline.StreamingDataset)
  results = evaluate.run_evaluation(streamed_run, "test", figures=True)
  assert os.path.exists(
      os.path.join(streamed_run, "figures", "retrieval_test.png")
  )
  out = str(tmp_path / "emb.npz")
  arrays = export.run_export(streamed_run, "test", out)

  dataset, reference = _in_memory_reference(streamed_run)
  # Stored order, labels with their rows: the same as reading into memory.
  np.testing.assert_array_equal(arrays["fine_labels"], dataset.test_fine)
  np.testing.assert_array_equal(arrays["coarse_labels"], dataset.test_coarse)
  np.testing.assert_allclose(
      arrays["features"], reference["features"], rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
      arrays["projections"], reference["projection"], rtol=1e-5, atol=1e-5
  )
  recall = evaluation.recall_at_k(
      reference["features"], dataset.test_fine, (1,)
  )[1]
  assert results["num_queries"] == sum(c[2] for c in _CLASSES.values())
  assert results["fine_recall@1"] == pytest.approx(recall, abs=1e-6)


def test_streamed_images_are_read_by_index(streamed_run):
  exp, _ = trainer.load_trained(streamed_run)
  memory, _ = _in_memory_reference(streamed_run)
  indices = [18, 0, 7, 7]
  np.testing.assert_array_equal(
      embedding.read_images(exp.dataset, "test", indices),
      memory.test_images[indices],
  )
  np.testing.assert_array_equal(
      embedding.read_images(exp.dataset, "train", [23, 1]),
      memory.train_images[[23, 1]],
  )
  with pytest.raises(IndexError, match="no images at"):
    embedding.read_images(exp.dataset, "test", [19])


def test_training_split_of_a_streamed_run_embeds_in_stored_order(streamed_run):
  exp, state = trainer.load_trained(streamed_run)
  out = exp.embedder.split(
      train_state_lib.query_variables(state), exp.dataset, "train"
  )
  memory, _ = _in_memory_reference(streamed_run)
  np.testing.assert_array_equal(out["fine"], memory.train_fine)
  np.testing.assert_array_equal(out["coarse"], memory.train_coarse)
  assert out["features"].shape[0] == memory.num_train


@pytest.mark.parametrize("num_devices,batch_size", [(1, 3), (8, 16), (8, 5)])
def test_embeddings_do_not_depend_on_batching_or_devices(
    num_devices, batch_size
):
  config = tiny.get_config()
  exp = trainer.build_experiment(config)
  mesh = trainer.make_mesh(num_devices)
  embedder = embedding.Embedder(
      exp.model.apply,
      image_size=config.image_size,
      mean=exp.dataset.mean,
      std=exp.dataset.std,
      mesh=mesh,
      batch_size=batch_size,
  )
  assert embedder.batch_size % num_devices == 0
  assert embedder.batch_size >= batch_size
  variables = jax.device_get(train_state_lib.query_variables(exp.state))
  images = exp.dataset.test_images[:21]
  got = embedder.arrays(variables, images)
  want = jax.device_get(
      train_step.embed_step(
          variables,
          images,
          apply_fn=exp.model.apply,
          image_size=config.image_size,
          mean=exp.dataset.mean,
          std=exp.dataset.std,
      )
  )
  for key in ("features", "projection"):
    assert got[key].shape == want[key].shape
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5)


def test_unknown_split_is_a_one_line_error():
  with pytest.raises(
      UserError,
      match=r"--split='val' is not a split; use " r"one of: test, train\.",
  ):
    embedding.check_split("val")
