"""WCL, SelfCon and saliency masking train through ``train_and_evaluate``.

Each mode takes two steps of configs/tiny.py and writes the same results.json
keys as the queue modes; the numbers mean nothing at this size.
"""

import json

import pytest

from configs import tiny
from maskcon_jax import trainer

# Each entry covers one mode plus options its unit tests don't train.
RUNS = {
    "wcl": dict(wcl_same_coarse_nn=True),
    "selfcon": dict(selfcon_size="small"),
    "saliency": dict(saliency_strategy="hp", saliency_grid=4),
}


@pytest.mark.parametrize("mode", sorted(RUNS))
def test_mode_trains_and_writes_results(mode, tmp_path):
  config = tiny.get_config()
  config.mode = mode
  config.num_epochs = 1
  config.stop_after_steps = 2
  # Saves the pre-fill pass (WCL and SelfCon never read the queue), and
  # AutoAugment's compile time: the views are not what is tested here.
  config.queue_init = "random"
  config.strong_policy = "weak"
  for field, value in RUNS[mode].items():
    config[field] = value
  results = trainer.train_and_evaluate(config, str(tmp_path))

  written = json.loads((tmp_path / trainer.RESULTS_FILE).read_text())
  assert written == results
  expected = {f"{level}_recall@{k}" for level in ("fine", "coarse")
              for k in config.retrieval_ks}
  expected |= {"step", "mode", "dataset", "complete", "train_seconds_this_run"}
  assert expected <= set(results)
  assert results["step"] == 2 and results["mode"] == mode
  assert 0.0 <= results["fine_recall@1"] <= 1.0
  saved = json.loads((tmp_path / trainer.CONFIG_FILE).read_text())
  assert {k: saved[k] for k in RUNS[mode]} == RUNS[mode]

  if mode == "selfcon":
    # The exit ensemble changes no parameter: the finished run re-evaluates.
    config.eval_exit_ensemble = True
    again = trainer.train_and_evaluate(config, str(tmp_path))
    assert again["step"] == 2 and set(again) == set(results)
    assert json.loads((tmp_path / trainer.CONFIG_FILE).read_text())[
        "eval_exit_ensemble"]
