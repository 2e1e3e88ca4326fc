"""What a run reports about its encoder (maskcon_jax.monitors): the glue
between a state, its dataset and the metrics of maskcon_jax.evaluation,
checked against those metrics called directly."""

import numpy as np
import pytest

from configs import tiny
from maskcon_jax import evaluation
from maskcon_jax import monitors
from maskcon_jax import train_state as train_state_lib
from maskcon_jax import trainer

pytestmark = pytest.mark.slow  # Builds and embeds with a tiny encoder.


@pytest.fixture(scope="module")
def untrained():
  config = tiny.get_config()
  config.queue_size = 24
  config.knn_monitor_size = 20
  exp = trainer.build_experiment(config)
  return exp, exp.state


def test_evaluate_is_recall_of_the_test_features(untrained):
  exp, state = untrained
  got = monitors.evaluate(state, exp.dataset, exp.config, exp.embedder)
  features = exp.embedder.arrays(
      train_state_lib.query_variables(state), exp.dataset.test_images
  )["features"]
  ks = tuple(exp.config.retrieval_ks)
  for level in ("fine", "coarse"):
    labels = getattr(exp.dataset, f"test_{level}")
    want = evaluation.recall_at_k(features, labels, ks)
    for k in ks:
      assert got[f"{level}_recall@{k}"] == pytest.approx(want[k]), (level, k)
  assert 0.0 <= got["fine_within_coarse_recall@1"] <= 1.0
  diagnostics = monitors.target_diagnostics(
      state, exp.dataset, exp.config, exp.embedder
  )
  assert diagnostics and all(got[k] == diagnostics[k] for k in diagnostics)


def test_knn_monitor_uses_the_first_items_of_each_split(untrained):
  exp, state = untrained
  size = exp.config.knn_monitor_size
  variables = train_state_lib.query_variables(state)
  bank = exp.embedder.arrays(variables, exp.dataset.train_images[:size])
  queries = exp.embedder.arrays(variables, exp.dataset.test_images[:size])
  want = evaluation.knn_classify(
      bank["features"],
      exp.dataset.train_fine[:size],
      queries["features"],
      exp.dataset.test_fine[:size],
      num_classes=exp.dataset.hierarchy.num_fine,
  )
  got = monitors.knn_monitor(state, exp.dataset, exp.config, exp.embedder)
  assert got == pytest.approx(want)


def test_target_diagnostics_split_queue_and_queries(untrained):
  exp, state = untrained
  config, dataset = exp.config, exp.dataset
  got = monitors.target_diagnostics(state, dataset, config, exp.embedder)
  num_queries = min(monitors.TARGET_DIAGNOSTIC_QUERIES, dataset.num_train // 2)
  num_queue = min(config.queue_size, dataset.num_train - num_queries)
  items = slice(0, num_queue + num_queries)
  projections = evaluation.l2_normalize_np(
      exp.embedder.arrays(
          train_state_lib.key_variables(state), dataset.train_images[items]
      )["projection"]
  )
  fine, coarse = dataset.train_fine[items], dataset.train_coarse[items]
  want = evaluation.soft_target_diagnostics(
      projections[num_queue:],
      fine[num_queue:],
      coarse[num_queue:],
      projections[:num_queue],
      fine[:num_queue],
      coarse[:num_queue],
      t=config.t,
  )
  assert got and got.keys() == want.keys()
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6)
  # The in-batch modes have no queue, hence no diagnostics.
  other = exp.config.copy_and_resolve_references()
  other.mode = "wcl"
  assert monitors.target_diagnostics(state, dataset, other, exp.embedder) == {}


def test_online_knn_monitor(tmp_path):
  config = tiny.get_config()
  config.knn_monitor_every_steps = 4
  config.knn_monitor_size = 32
  config.stop_after_steps = 4
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  exp, state = trainer.load_trained(str(tmp_path / "run"))
  top1 = monitors.knn_monitor(state, exp.dataset, exp.config, exp.embedder)
  assert 0.0 <= top1 <= 1.0
  # The monitor's value reached the TensorBoard event files.
  from tensorboard.backend.event_processing import event_accumulator

  events = event_accumulator.EventAccumulator(str(tmp_path / "run"))
  events.Reload()
  tags = events.Tags()
  assert "monitor/knn_fine_top1" in tags.get("tensors", []) + tags.get(
      "scalars", []
  )
