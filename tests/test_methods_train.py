"""WCL, SelfCon and saliency masking train from the command line.

Each mode takes two steps of configs/tiny.py through `train.command_line`
(the CLI in-process, `--config.FIELD=VALUE` overrides of the method's block
included) and writes the same results.json keys as the queue modes; the
numbers mean nothing at this size.
"""

import json

import pytest

from configs import default
from configs import tiny
from maskcon_jax import configuration
from maskcon_jax import methods
from maskcon_jax import train
from maskcon_jax import trainer

# Trains or runs whole programs: out of the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow

# Each entry covers one mode plus options (of its block) its unit tests don't
# train.
RUNS = {
    "wcl": {"same_coarse_nn": True},
    "selfcon": {"size": "small"},
    "saliency": {"strategy": "hp", "grid": 4},
}


@pytest.mark.parametrize("mode", sorted(RUNS))
def test_mode_trains_and_writes_results(mode, tmp_path, capsys):
  # Saves saliency's pre-fill pass (WCL and SelfCon have no queue), and
  # AutoAugment's compile time: the views are not what is tested here.
  overrides = dict(
      mode=mode,
      num_epochs=1,
      stop_after_steps=2,
      queue_init="random",
      strong_policy="weak",
  )
  status = train.command_line(
      [
          "maskcon_jax.train",
          "--config=configs/tiny.py",
          f"--workdir={tmp_path}",
          *(f"--config.{field}={value}" for field, value in overrides.items()),
          *(
              f"--config.{mode}.{field}={value}"
              for field, value in RUNS[mode].items()
          ),
      ]
  )
  assert status == 0, capsys.readouterr().err[-2000:]
  config = tiny.get_config()
  results = json.loads((tmp_path / trainer.RESULTS_FILE).read_text())
  assert "fine_recall@1=" in capsys.readouterr().out

  expected = {
      f"{level}_recall@{k}"
      for level in ("fine", "coarse")
      for k in config.retrieval_ks
  }
  expected |= {"step", "mode", "dataset", "complete", "train_seconds_this_run"}
  assert expected <= set(results)
  assert results["step"] == 2 and results["mode"] == mode
  assert 0.0 <= results["fine_recall@1"] <= 1.0
  saved = json.loads((tmp_path / trainer.CONFIG_FILE).read_text())
  assert {k: saved[mode][k] for k in RUNS[mode]} == RUNS[mode]
  # The run's record holds its own method's block only.
  assert set(saved) & set(methods.blocks()) == {mode}
  state = trainer.load_trained(str(tmp_path))[1]
  assert (state.queue_KxD is None) == (not methods.get(mode).uses_queue)

  if mode == "selfcon":
    # The exit ensemble changes no parameter: the finished run re-evaluates.
    config.update(overrides)
    config.selfcon = {**RUNS[mode], "eval_exit_ensemble": True}
    again = trainer.train_and_evaluate(config, str(tmp_path))
    assert again["step"] == 2 and set(again) == set(results)
    saved = json.loads((tmp_path / trainer.CONFIG_FILE).read_text())
    assert saved["selfcon"]["eval_exit_ensemble"]
    assert saved["selfcon"]["size"] == "small"


def test_every_optional_field_takes_a_command_line_value():
  # configs/default.py sets none of the method blocks; each field, None
  # defaults included, must still accept --config.FIELD=VALUE.
  config = default.get_config()
  configuration.add_defaults(config)
  for field, value in configuration.RELIABILITY_DEFAULTS.items():
    assert field in config, field
    if value is None:
      config[field] = 3
      assert config[field] == 3, field
  for name, method in methods.blocks().items():
    for field, value in method.config_block().items():
      assert field in config[name], f"{name}.{field}"
      if value is None:
        config[name][field] = 3
        assert config[name][field] == 3, f"{name}.{field}"
