"""Training as several JAX processes: two local processes of the real CLI.

`launch_local` starts ``maskcon_jax.train`` as two processes on localhost
(`jax.distributed`, gloo CPU collectives), two fake CPU devices each: the
same program a two-host job runs. Each process has a timeout, so a hang
fails the test instead of stalling the suite. Only the first run writes
TensorBoard events (and checks them); the others run without TensorFlow,
which saves its import in every process (`tests.cli_without_tensorflow`,
which also lets process 1 write the compilation cache).

Tolerance between one process of four devices and two of two: the same
global mesh, batches and per-device BN, so only the order of the
cross-process sums differs; losses agree to 1e-4 relative and the final
retrieval metrics to one query (1/32 on tiny's test split).
"""

import json
import os
import re
import shutil
import signal
import time

import jax
import numpy as np
import pytest

from configs import tiny
from maskcon_jax import checkpoints
from maskcon_jax import evaluate
from maskcon_jax import export
from maskcon_jax import launch_local
from maskcon_jax import train as train_cli
from maskcon_jax import trainer
from tests import test_embedding
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

TIMEOUT = 600
TINY = [
    "--config",
    str(REPO_ROOT / "configs" / "tiny.py"),
    "--config.checkpoint_every_steps=2",
]
TOTAL_STEPS = 8  # tiny: 64 examples, batch 16, 2 epochs.
# The online kNN monitor every 2 steps: more work all processes do together
# (it changes no weights, so runs with and without it end equal).
MONITOR = ["--config.knn_monitor_every_steps=2"]
# Metrics whose value depends on float rounding only through neighbour order.
_RECALLS = re.compile(r"(fine|coarse)_(within_coarse_)?recall@\d+$")


def _start(args, *, env=None, events=False, **kwargs):
  """``maskcon_jax.train *args`` as two processes of two devices, through
  `tests.cli_without_tensorflow` (every process writes the compilation
  cache); without ``events``, without TensorFlow."""
  env = dict(os.environ if env is None else env)
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p
  )
  args = [
      *(["--with-tensorflow"] if events else []),
      "maskcon_jax.train",
      *args,
  ]
  return launch_local.start(
      args,
      num_processes=2,
      devices_per_process=2,
      env=env,
      module="tests.cli_without_tensorflow",
      **kwargs,
  )


def _launch(workdir, *extra, **kwargs):
  kwargs.setdefault("log_dir", str(workdir) + "_logs")
  return _start([*TINY, "--workdir", str(workdir), *extra], **kwargs)


def _finish(job, expect=(0, 0)):
  codes = job.wait(TIMEOUT)
  logs = job.logs()
  assert tuple(codes) == tuple(expect), "\n\n".join(
      f"process {i} exit {c}:\n{text[-3000:]}"
      for i, (c, text) in enumerate(zip(codes, logs))
  )
  return logs


def _results(workdir):
  with open(os.path.join(workdir, trainer.RESULTS_FILE)) as f:
    return json.load(f)


def _pause_env(tmp_path, point):
  pause_dir = tmp_path / f"pause_{point.replace('@', '_')}"
  pause_dir.mkdir()
  env = {
      **os.environ,
      "MASKCON_DEBUG_PAUSE_AT": point,
      "MASKCON_DEBUG_PAUSE_DIR": str(pause_dir),
      "MASKCON_DEBUG_PAUSE_SECONDS": str(TIMEOUT),
  }
  return env, pause_dir


def _wait_for(path, job, seconds=TIMEOUT):
  deadline = time.monotonic() + seconds
  while not os.path.exists(path):
    codes = [p.poll() for p in job.processes]
    if any(c is not None for c in codes) or time.monotonic() > deadline:
      job.stop_all()
      pytest.fail(
          f"no {path} (exit codes {codes}):\n"
          + "\n".join(t[-2000:] for t in job.logs())
      )
    time.sleep(0.1)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
  """tiny in this process on four of its devices (the CLI's config)."""
  workdir = tmp_path_factory.mktemp("one") / "run"
  config = tiny.get_config()
  config.checkpoint_every_steps = 2
  config.num_devices = 4
  trainer.train_and_evaluate(config, str(workdir))
  return workdir


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  """tiny on two processes with two devices each."""
  workdir = tmp_path_factory.mktemp("two") / "run"
  logs = _finish(_launch(workdir, events=True))
  return workdir, logs


def test_two_processes_train_as_one_does(one_process_run, two_process_run):
  workdir, logs = two_process_run
  one, two = _results(one_process_run), _results(workdir)
  assert one["step"] == two["step"] == TOTAL_STEPS and two["complete"]
  assert set(one) == set(two)
  for key, value in one.items():
    if _RECALLS.match(key):
      assert abs(two[key] - value) <= 1 / 32 + 1e-9, key
    elif isinstance(value, float) and not key.endswith("seconds_this_run"):
      assert two[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
  losses = [
      [float(x) for x in re.findall(r"step \d+/\d+ loss ([\d.]+)", log)]
      for log in logs
  ]
  assert losses[0] and losses[0] == losses[1]  # Every process agrees.
  # Process 0 alone writes the event file (and results.json: see below).
  names = os.listdir(workdir)
  assert len([n for n in names if n.startswith("events.out")]) == 1


def test_two_process_run_evaluates_in_one_process(two_process_run, tmp_path):
  """A checkpoint of 2 processes x 2 devices restores in this process (8
  devices): evaluate and export work and agree with the run's numbers."""
  workdir, _ = two_process_run
  results = evaluate.run_evaluation(str(workdir), "test", figures=False)
  assert results["step"] == TOTAL_STEPS
  assert results["fine_recall@1"] == pytest.approx(
      _results(workdir)["fine_recall@1"], abs=1e-6
  )
  arrays = export.run_export(str(workdir), "test", str(tmp_path / "e.npz"))
  assert len(arrays["features"]) == results["num_queries"]
  exp, state = trainer.load_trained(str(workdir))
  assert exp.mesh.size == jax.device_count() == 8
  assert int(state.step) == TOTAL_STEPS


def test_one_process_checkpoint_resumes_in_two(one_process_run, tmp_path):
  workdir = tmp_path / "resumed"
  shutil.copytree(one_process_run, workdir)
  logs = _finish(_launch(workdir, "--config.num_epochs=3"))
  assert f"Resumed from step {TOTAL_STEPS}" in logs[0]
  assert _results(workdir)["step"] == TOTAL_STEPS + 4


def test_stop_signal_and_kill_then_resume_to_the_same_state(
    two_process_run, tmp_path
):
  workdir = tmp_path / "run"
  # SIGTERM to process 1 only, before step 4 (an evaluation step): both
  # processes stop after the same step and one checkpoint of it is written.
  env, pause = _pause_env(tmp_path, "train_step@3")
  job = _launch(workdir, *MONITOR, env=env)
  _wait_for(pause / "paused-train_step@3", job)
  job.kill(1, signal.SIGTERM)
  (pause / "resume").touch()
  logs = _finish(job, expect=(train_cli.EXIT_INTERRUPTED,) * 2)
  stopped = [
      re.findall(r"stopped by SIGTERM after step (\d+)", log) for log in logs
  ]
  assert stopped[0] and stopped[0] == stopped[1], logs[1][-2000:]
  step = int(stopped[0][0])
  assert str(step) in os.listdir(workdir / checkpoints.CHECKPOINT_DIR)

  # While both wait before step 6, the same job launched again (a requeue
  # while the old one runs) is refused by both of its processes in one line,
  # before writing anything.
  env, pause = _pause_env(tmp_path, "train_step@6")
  job = _launch(workdir, *MONITOR, env=env)
  _wait_for(pause / "paused-train_step@6", job)
  listing = sorted(os.listdir(workdir))
  twice = _launch(
      workdir, *MONITOR, env={**os.environ}, log_dir=str(tmp_path / "twice")
  )
  refused = _finish(twice, expect=(train_cli.EXIT_ERROR,) * 2)
  assert f"--workdir={workdir} is in use by another training run" in (
      refused[0]
  ), refused[0][-2000:]
  assert "process 0 could not take the run lock" in refused[1], refused[1][
      -2000:
  ]
  for log in refused:
    assert "Traceback" not in log, log[-3000:]
  assert sorted(os.listdir(workdir)) == listing
  assert job.processes[0].poll() is None and job.processes[1].poll() is None

  # SIGKILL of process 1 while both still wait there; the job dies. The
  # resumed run below ends equal to the uninterrupted one: the refused
  # launch harmed nothing.
  job.kill(1)
  job.stop_all()

  # The same command again finishes with the uninterrupted run's state;
  # only process 0 reaches the point where results.json is written.
  env, pause = _pause_env(tmp_path, "results_write")
  (pause / "resume").touch()  # Mark the point, don't wait there.
  logs = _finish(_launch(workdir, *MONITOR, env=env))
  assert "Debug pause at results_write" in logs[0]
  assert "Debug pause at results_write" not in logs[1]
  monitor = [
      re.findall(r"kNN monitor at step 8: fine top-1 ([\d.]+)", log)
      for log in logs
  ]
  assert monitor[0] and monitor[0] == monitor[1]  # Computed together.
  reference, _ = two_process_run
  got, want = _results(workdir), _results(reference)
  for key, value in want.items():
    if not key.endswith("seconds_this_run"):
      assert got[key] == value, key
  _, state = trainer.load_trained(str(workdir))
  _, reference_state = trainer.load_trained(str(reference))
  for a, b in zip(
      jax.tree.leaves(state.params), jax.tree.leaves(reference_state.params)
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_streamed_data_trains_from_per_process_shards(tmp_path):
  """A class-folder dataset read from disk: each process reads its share of
  every batch and of the test split; the evaluation the two processes make
  together is the one a single process makes of the same checkpoint."""
  config = test_embedding.streamed_folder_config(tmp_path)
  fields = (
      "dataset",
      "data_dir",
      "coarse_map",
      "in_memory",
      "batch_size",
      "queue_size",
      "num_epochs",
      "warmup_epochs",
      "eval_batch_size",
  )
  # A config file: tiny has no in_memory field for a flag to override.
  config_file = tmp_path / "streamed_config.py"
  config_file.write_text(
      "from configs import tiny\n\n\ndef get_config():\n"
      "  config = tiny.get_config()\n"
      + "".join(f"  config.{f} = {config[f]!r}\n" for f in fields)
      + "  return config\n"
  )
  workdir = tmp_path / "run"
  job = _start(
      ["--config", str(config_file), "--workdir", str(workdir)],
      log_dir=str(workdir) + "_logs",
  )
  _finish(job)
  got = _results(workdir)
  # 24 training images, global batch 8: 3 steps (4 per process and step).
  assert got["step"] == 3 and got["complete"]
  alone = evaluate.run_evaluation(str(workdir), "test", figures=False)
  assert alone["num_queries"] == 19
  for key in ("fine_recall@1", "coarse_recall@1"):
    assert alone[key] == pytest.approx(got[key], abs=1e-6), key
