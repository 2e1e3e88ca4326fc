"""End-to-end: the CLI on a tiny config, resume, and clean errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import tiny
from maskcon_jax import checkpoints
from maskcon_jax import methods
from maskcon_jax import trainer
from maskcon_jax.errors import ConfigError, UserError
from tests.conftest import REPO_ROOT

# Trains or runs whole programs: out of the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow


def _run_cli(workdir, *overrides, env=None, tensorflow=True):
  """``python -m maskcon_jax.train`` on tiny; without ``tensorflow``, without
  its TensorBoard writer (`tests.cli_without_tensorflow`: ~5 s less)."""
  cmd = [
      sys.executable,
      "-m",
      *([] if tensorflow else ["tests.cli_without_tensorflow"]),
      "maskcon_jax.train",
      "--config",
      str(REPO_ROOT / "configs" / "tiny.py"),
      "--workdir",
      str(workdir),
      *overrides,
  ]
  return subprocess.run(
      cmd,
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      env=env or os.environ.copy(),
      timeout=600,
  )


def _final_state_arrays(workdir):
  """All arrays of the latest checkpoint, as numpy, by tree path."""
  mngr = ocp.CheckpointManager(
      os.path.join(workdir, checkpoints.CHECKPOINT_DIR)
  )
  step = mngr.latest_step()
  restored = mngr.restore(step, args=ocp.args.StandardRestore())
  mngr.close()
  flat = jax.tree_util.tree_flatten_with_path(restored)[0]
  return step, {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def test_cli_resume_matches_uninterrupted_run(tmp_path):
  interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
  # The second run writes the TensorBoard events checked below.
  first = _run_cli(interrupted, "--config.stop_after_steps=3", tensorflow=False)
  assert first.returncode == 0, first.stderr[-3000:]
  assert _final_state_arrays(interrupted)[0] == 3
  second = _run_cli(interrupted)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resumed from step 3" in second.stderr
  # conftest's 8 fake CPU devices reach the CLI: it trains data-parallel.
  assert "on 8 devices" in second.stderr

  config = tiny.get_config()
  trainer.train_and_evaluate(config, str(straight))

  step_a, arrays_a = _final_state_arrays(interrupted)
  step_b, arrays_b = _final_state_arrays(straight)
  assert step_a == step_b == 8
  assert arrays_a.keys() == arrays_b.keys()
  assert any("queue" in k for k in arrays_a)
  for key in arrays_a:
    np.testing.assert_array_equal(arrays_a[key], arrays_b[key], err_msg=key)

  results = json.loads((interrupted / "results.json").read_text())
  for key in ("fine_recall@1", "fine_recall@2", "fine_recall@5", "step"):
    assert key in results
  assert results["step"] == 8 and results["complete"]
  assert 0.0 <= results["fine_recall@1"] <= 1.0
  assert "fine_recall@1=" in second.stdout
  assert (
      json.loads((interrupted / "config.json").read_text())["mode"] == "maskcon"
  )
  assert any(
      f.startswith("events.out.tfevents") for f in os.listdir(interrupted)
  )

  # A finished run only re-evaluates: same step, same numbers. config.json
  # keeps the trained settings; evaluation fields follow the new invocation.
  before = json.loads((straight / "results.json").read_text())
  changed = tiny.get_config()
  changed.learning_rate = 0.5
  changed.retrieval_ks = (1, 2)
  again = trainer.train_and_evaluate(changed, str(straight))
  assert again["step"] == 8
  assert again["fine_recall@1"] == before["fine_recall@1"]
  assert "fine_recall@2" in again and "fine_recall@5" not in again
  recorded = json.loads((straight / "config.json").read_text())
  assert recorded["learning_rate"] == config.learning_rate != 0.5
  assert recorded["retrieval_ks"] == [1, 2]


@pytest.mark.parametrize(
    "override,message",
    [
        ({"mode": "simclr"}, "config.mode='simclr' is not supported"),
        ({"dataset": "imagenet"}, "config.dataset='imagenet' is not supported"),
        ({"arch": "vgg16"}, "config.arch='vgg16' is not supported"),
        (
            {"queue_size": 8},
            "config.queue_size=8 is smaller than config.batch_size=16",
        ),
        ({"w": 1.5}, "config.w=1.5 must lie in [0, 1]"),
        ({"w": -0.1}, "config.w=-0.1 must lie in [0, 1]"),
        ({"t0": 0.0}, "config.t0=0.0: temperatures must be > 0"),
        ({"t": -1.0}, "config.t=-1.0: temperatures must be > 0"),
    ],
)
def test_bad_config_fails_before_writing(tmp_path, override, message):
  config = tiny.get_config()
  config.update(override)
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError) as err:
    trainer.train_and_evaluate(config, str(workdir))
  assert message in str(err.value)
  assert "\n" not in str(err.value)
  assert not workdir.exists()


def test_unwritable_workdir(tmp_path):
  if os.geteuid() == 0:
    # root ignores permission bits; a path under a regular file can't be made.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    workdir = blocker / "run"
  else:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    workdir = locked / "run"
  with pytest.raises(UserError) as err:
    trainer.train_and_evaluate(tiny.get_config(), str(workdir))
  assert "--workdir" in str(err.value) and "\n" not in str(err.value)


def test_cli_prints_one_line_error(tmp_path):
  out = _run_cli(tmp_path / "run", "--config.mode=simclr")
  assert out.returncode == 2
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert errors == [
      "error: config.mode='simclr' is not supported; use one of: "
      f"{', '.join(methods.MODES)}."
  ]
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "run").exists()


def test_runs_from_before_conv_padding_keep_same_padding(tmp_path):
  """A config.json without conv_padding is a run trained with XLA's SAME
  padding: reloading it keeps that padding, and resuming it with the new
  default is refused in one line until the old value is given."""
  from maskcon_jax import configuration

  config = tiny.get_config()
  saved = json.loads(json.dumps(config.to_dict()))
  del saved["conv_padding"]
  (tmp_path / trainer.CONFIG_FILE).write_text(json.dumps(saved))
  assert trainer.load_config(str(tmp_path)).conv_padding == "same"
  with pytest.raises(ConfigError, match="conv_padding") as error:
    configuration.check_compatible(saved, config)
  assert "\n" not in str(error.value)
  config.conv_padding = "same"
  assert configuration.check_compatible(saved, config) == []


def test_trained_run_records_its_conv_padding(tmp_path):
  config = tiny.get_config()
  config.stop_after_steps = 1
  del config["conv_padding"]  # A custom config file without the field.
  trainer.train_and_evaluate(config, str(tmp_path))
  assert trainer.load_config(str(tmp_path)).conv_padding == "torch"
