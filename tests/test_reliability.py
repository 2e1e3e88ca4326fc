"""Preemption, bit-exact resume, non-finite steps and damaged checkpoints;
the run lock, the data fingerprint, full disks and kill points.

Every run here is configs/tiny.py (8 steps) with a checkpoint and a log line
every step and no mid-run evaluation (see OVERRIDES): the command-line runs
are then slow enough to be hit mid-step.
"""

import errno
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import tiny
from maskcon_jax import checkpoints
from maskcon_jax import debugpoints
from maskcon_jax import evaluate as evaluate_lib
from maskcon_jax import fingerprint
from maskcon_jax import runlock
from maskcon_jax import train
from maskcon_jax import trainer
from maskcon_jax import workdir_io
from maskcon_jax.errors import ConfigError, Interrupted, NonFiniteError
from maskcon_jax.errors import DataError, WorkdirError
from tests.conftest import REPO_ROOT
from tests.test_bad_inputs import _snapshot

# One device: the same bit-exactness as on eight (tests/test_train.py resumes
# the plain step on eight), at a fraction of the compile time and checkpoint
# cost. Allowing a non-finite step runs the guarded step (trainer's
# _make_step_fn), which the non-finite tests need too: they differ only in
# its data, so all tests here share one compiled train step.
OVERRIDES = {
    "log_every_steps": 1,
    "checkpoint_every_steps": 1,
    "eval_every_epochs": 2,
    "num_devices": 1,
    "max_nonfinite_steps": 1,
}
TOTAL_STEPS = 8
# Differs between otherwise identical runs.
TIMING_KEYS = ("train_seconds_this_run",)
TMP_DIR = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


def _config(**overrides):
  config = tiny.get_config()
  config.update({**OVERRIDES, **overrides})
  return config


# `python -m maskcon_jax.train`, minus TensorFlow: clu's TensorBoard writer
# needs it and its import adds ~10 s to each launch, so these runs use the
# log-only writer (as on an image without TensorFlow).
_CLI = (
    "from tests import cli_without_tensorflow; "
    "cli_without_tensorflow.run('maskcon_jax.train')"
)


def _cli_args(workdir):
  return [
      sys.executable,
      "-c",
      _CLI,
      "--config",
      str(REPO_ROOT / "configs" / "tiny.py"),
      "--workdir",
      str(workdir),
      *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
  ]


def _checkpoint_arrays(workdir, step=None):
  """``(step, {tree path: array})`` of a checkpoint (the newest if None)."""
  mngr = ocp.CheckpointManager(
      os.path.join(workdir, checkpoints.CHECKPOINT_DIR)
  )
  step = mngr.latest_step() if step is None else step
  restored = mngr.restore(step, args=ocp.args.StandardRestore())
  mngr.close()
  flat = jax.tree_util.tree_flatten_with_path(restored)[0]
  return step, {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def _steps_on_disk(workdir):
  """Finished and unfinished (temporary) checkpoint steps."""
  try:
    names = os.listdir(os.path.join(workdir, checkpoints.CHECKPOINT_DIR))
  except FileNotFoundError:
    return [], []
  done = sorted(int(n) for n in names if n.isdigit())
  unfinished = sorted(int(m.group(1)) for m in map(TMP_DIR.match, names) if m)
  return done, unfinished


def _results(workdir):
  results = json.loads((workdir / trainer.RESULTS_FILE).read_text())
  return {k: v for k, v in results.items() if k not in TIMING_KEYS}


def _assert_same_as_reference(workdir, reference, context=""):
  step, arrays = _checkpoint_arrays(workdir)
  ref_step, ref_arrays = reference["arrays"]
  assert step == ref_step == TOTAL_STEPS, context
  assert arrays.keys() == ref_arrays.keys(), context
  assert any("queue" in k for k in arrays)
  for key in arrays:
    np.testing.assert_array_equal(
        arrays[key], ref_arrays[key], err_msg=f"{key} {context}"
    )
  assert _results(workdir) == reference["results"], context


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run: its workdir, final checkpoint and results."""
  workdir = tmp_path_factory.mktemp("reference")
  trainer.train_and_evaluate(_config(), str(workdir))
  return {
      "workdir": workdir,
      "arrays": _checkpoint_arrays(workdir),
      "results": _results(workdir),
  }


def _wait_for_step(proc, workdir, step, *, unfinished: bool):
  """Waits until checkpoint ``step`` (or a later one) exists on disk, or,
  with ``unfinished``, is being written (or a later one finished: a save can
  be too quick to be seen).

  Returns:
    "writing" or "done": what was seen; None if the process ended first.
  """
  deadline = time.time() + 300
  while time.time() < deadline:
    if proc.poll() is not None:
      return None
    done, writing = _steps_on_disk(workdir)
    if unfinished and any(s >= step for s in writing):
      return "writing"
    if any(s >= (step + 1 if unfinished else step) for s in done):
      return "done"
    time.sleep(0.002)
  raise AssertionError(f"no checkpoint {step} in {workdir} after 300 s")


def _start(workdir, env=None):
  return subprocess.Popen(
      _cli_args(workdir),
      cwd=REPO_ROOT,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      env=env,
  )


@pytest.mark.slow
def test_killed_and_stopped_cli_resumes_bit_exact(reference, tmp_path):
  """SIGKILL (once while a checkpoint is being written), SIGTERM, SIGKILL at
  random steps, then a plain rerun: the same final state and results as an
  uninterrupted run."""
  seed = int(os.environ.get("MASKCON_KILL_SEED", time.time_ns() % 2**32))
  rng = random.Random(seed)
  workdir = tmp_path / "run"
  context = f"(MASKCON_KILL_SEED={seed})"

  # 1: SIGKILL as soon as checkpoint >= k is being written.
  k = rng.randint(1, 4)
  proc = _start(workdir)
  hit = _wait_for_step(proc, workdir, k, unfinished=True)
  proc.kill()
  proc.communicate()
  assert hit, f"the run ended before step {k} {context}"
  first_steps = _steps_on_disk(workdir)
  context += f" killed at {k} ({hit}), left {first_steps}"

  # 2: SIGTERM after checkpoint >= k; it stops after the current step with a
  # checkpoint of it, and says so in one line.
  # At least two steps must remain, or the signal may land after the loop.
  done_before = max(first_steps[0], default=0)
  assert done_before <= 5, context
  k = rng.randint(done_before + 1, 6)
  proc = _start(workdir)
  assert _wait_for_step(proc, workdir, k, unfinished=False), context
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == train.EXIT_INTERRUPTED, stderr[-3000:]
  stopped = _steps_on_disk(workdir)[0][-1]
  assert k <= stopped <= TOTAL_STEPS, context
  lines = [l for l in stderr.splitlines() if l.startswith("stopped by")]
  assert lines == [
      f"stopped by SIGTERM after step {stopped} of {TOTAL_STEPS}: checkpoint "
      f"{stopped} is in {workdir / 'checkpoints'}; rerun the same command to "
      "resume."
  ], context
  if done_before:
    assert f"Resumed from step {done_before}" in stderr, context
  # The killed process left its run lock behind: taken over, with a warning.
  assert "Taking over the run lock" in stderr, context
  assert "Traceback" not in stderr
  assert not (workdir / trainer.RESULTS_FILE).exists()

  # 3: SIGKILL after a random later step.
  if stopped < TOTAL_STEPS:
    k = rng.randint(stopped + 1, TOTAL_STEPS)
    proc = _start(workdir)
    _wait_for_step(proc, workdir, k, unfinished=rng.random() < 0.5)
    proc.kill()
    _, stderr = proc.communicate()
    assert f"Resumed from step {stopped}" in stderr, context

  # 4: the same command again, in-process, runs to the end.
  trainer.train_and_evaluate(_config(), str(workdir))
  assert _steps_on_disk(workdir)[1] == [], "unfinished saves left behind"
  print(context)  # Shown with -s or on failure: what this run exercised.
  _assert_same_as_reference(workdir, reference, context)


@pytest.mark.slow
def test_sigint_in_process_stops_after_the_step_and_resumes(
    reference, tmp_path, monkeypatch
):
  """SIGINT arriving during step 3 stops the run after step 3 with a
  checkpoint; the handlers are restored; a rerun matches the reference."""
  make_step_fn = trainer._make_step_fn

  def step_fn_that_signals(exp):
    step_fn = make_step_fn(exp)
    calls = []

    def step_and_signal(state, batch):
      calls.append(1)
      if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGINT)
      return step_fn(state, batch)

    return step_and_signal

  monkeypatch.setattr(trainer, "_make_step_fn", step_fn_that_signals)
  before = signal.getsignal(signal.SIGINT)
  workdir = tmp_path / "run"
  with pytest.raises(Interrupted) as stopped:
    trainer.train_and_evaluate(
        _config(checkpoint_every_steps=100), str(workdir)
    )
  assert stopped.value.step == 3 and stopped.value.signal_name == "SIGINT"
  assert signal.getsignal(signal.SIGINT) is before
  assert _steps_on_disk(workdir) == ([3], [])
  monkeypatch.undo()
  trainer.train_and_evaluate(_config(), str(workdir))
  _assert_same_as_reference(workdir, reference)


@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back(reference, tmp_path, caplog):
  """Garbled files in the newest checkpoint and a leftover unfinished save:
  the run warns, sets the bad one aside, resumes from the one before and
  still ends bit for bit where the reference did."""
  workdir = tmp_path / "run"
  shutil.copytree(reference["workdir"], workdir)
  os.remove(workdir / trainer.RESULTS_FILE)
  ckpt = workdir / "checkpoints"
  assert _steps_on_disk(workdir) == ([7, 8], [])
  for root, _, files in os.walk(ckpt / "8"):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "wb") as f:
        f.write(os.urandom(max(os.path.getsize(path) // 2, 7)))
  shutil.copytree(ckpt / "7", ckpt / "8.orbax-checkpoint-tmp-1234")

  with caplog.at_level("WARNING"):
    trainer.train_and_evaluate(_config(), str(workdir))
  warnings = " ".join(r.getMessage() for r in caplog.records)
  assert f"Checkpoint 8 in {ckpt} cannot be read" in warnings
  assert (workdir / checkpoints.CORRUPT_DIR / "8").is_dir()
  assert _steps_on_disk(workdir) == ([7, 8], [])
  _assert_same_as_reference(workdir, reference)


@pytest.mark.slow
def test_checkpoint_of_other_shapes_is_refused(
    reference, tmp_path, monkeypatch
):
  """Without config.json, a checkpoint of another width is recognised by its
  array shapes: a one-line error and nothing written."""
  workdir = tmp_path / "run"
  shutil.copytree(reference["workdir"], workdir)
  os.remove(workdir / trainer.CONFIG_FILE)
  before = sorted(p.name for p in workdir.iterdir())

  def abstract_state_only(config, model, tx, dataset, mesh):
    # The check needs only the shapes: skip compiling a new initialisation.
    del mesh
    create = trainer.state_initializer(config, model, tx, dataset)
    return None, jax.eval_shape(create, jax.random.key(config.seed)), None

  monkeypatch.setattr(trainer, "_make_state", abstract_state_only)
  with pytest.raises(ConfigError) as err:
    trainer.train_and_evaluate(_config(width=8), str(workdir))
  assert re.fullmatch(
      rf"checkpoint 8 in {re.escape(str(workdir / 'checkpoints'))} does not "
      r"fit this config: \S+ is \(.*\) float32, this config needs \(.*\) "
      r"float32 \(and \d+ more\); use a new --workdir or the config it was "
      r"written with\.",
      str(err.value),
  ), str(err.value)
  assert sorted(p.name for p in workdir.iterdir()) == before


def _all_finite(arrays):
  return all(
      np.all(np.isfinite(a))
      for a in arrays.values()
      if np.issubdtype(a.dtype, np.inexact)
  )


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
  """Default (max_nonfinite_steps=0): the CLI stops with one line naming the
  step and the last good checkpoint, which holds finite weights."""
  workdir = tmp_path / "run"
  status = train.command_line(
      [
          "train",
          "--config",
          str(REPO_ROOT / "configs" / "tiny.py"),
          "--workdir",
          str(workdir),
          "--config.checkpoint_every_steps=2",
          "--config.debug_nan_at_step=3",
          "--config.eval_every_epochs=2",
          "--config.num_devices=1",
          "--config.max_nonfinite_steps=0",
      ]
  )
  assert status == train.EXIT_ERROR
  errors = [
      l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")
  ]
  assert errors == [
      f"error: non-finite loss at step 3; stopped: the last good checkpoint is "
      f"step 2 in {workdir / 'checkpoints'}; lower the learning rate, or set "
      "config.max_nonfinite_steps to skip such steps."
  ]
  assert _steps_on_disk(workdir) == ([2], [])
  assert _all_finite(_checkpoint_arrays(workdir)[1])
  assert not (workdir / trainer.RESULTS_FILE).exists()


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_up_to_the_limit(tmp_path):
  """max_nonfinite_steps=1: step 3 is skipped (weights, optimizer and queue
  unchanged, step counted) and training goes on; with steps 3-5 poisoned and
  a limit of 2, the run stops at step 5 keeping checkpoint 4."""
  workdir = tmp_path / "skip"
  results = trainer.train_and_evaluate(
      _config(max_nonfinite_steps=1, debug_nan_at_step=3, stop_after_steps=3),
      str(workdir),
  )
  assert results["step"] == 3 and results["nonfinite_steps_skipped"] == 1
  step2, before = _checkpoint_arrays(workdir, 2)
  step3, after = _checkpoint_arrays(workdir, 3)
  assert _all_finite(after)
  for key in before:
    if key == ".step" or key == "['step']":
      assert after[key] == before[key] + 1
    else:
      np.testing.assert_array_equal(after[key], before[key], err_msg=key)

  workdir = tmp_path / "limit"
  with pytest.raises(NonFiniteError) as err:
    trainer.train_and_evaluate(
        _config(
            max_nonfinite_steps=2, debug_nan_at_step=3, debug_nan_num_steps=3
        ),
        str(workdir),
    )
  assert str(err.value) == (
      "non-finite loss at step 5, more than config.max_nonfinite_steps=2 such "
      f"steps; stopped: the last good checkpoint is step 4 in "
      f"{workdir / 'checkpoints'}; lower the learning rate."
  )
  assert _steps_on_disk(workdir) == ([3, 4], [])
  assert _all_finite(_checkpoint_arrays(workdir)[1])


# --- One writer per workdir (maskcon_jax.runlock).


def _pause_env(signals, *points):
  """The environment of a CLI run that pauses at ``points`` (debugpoints)."""
  return {
      **os.environ,
      debugpoints.PAUSE_AT: ",".join(points),
      debugpoints.PAUSE_DIR: str(signals),
  }


def _wait_for_file(proc, path, timeout=300):
  deadline = time.time() + timeout
  while not os.path.exists(path):
    if proc.poll() is not None:
      _, stderr = proc.communicate()
      raise AssertionError(f"ended before {path}: {stderr[-3000:]}")
    assert time.time() < deadline, f"no {path} after {timeout} s"
    time.sleep(0.02)


@pytest.mark.slow
def test_second_run_is_refused_and_evaluate_reads_a_live_run(
    reference, tmp_path
):
  """A run paused inside the save of checkpoint 4: `evaluate` reads the
  newest finished checkpoint; a second training process on the workdir
  stops with one line and writes nothing; the first then finishes bit for
  bit as the uninterrupted reference and releases the lock."""
  workdir, signals = tmp_path / "run", tmp_path / "signals"
  signals.mkdir()
  first = _start(workdir, env=_pause_env(signals, "checkpoint_save@4"))
  try:
    _wait_for_file(first, signals / "paused-checkpoint_save@4")
    holder = runlock.read_holder(str(workdir))
    assert holder.pid == first.pid

    # The newest finished checkpoint: 3, or 4 if its save (which goes on in
    # the background) finished meanwhile.
    newest = max(_steps_on_disk(workdir)[0])
    results = evaluate_lib.run_evaluation(str(workdir), figures=False)
    assert newest >= 3 and results["step"] in (newest, 4)
    deadline = time.time() + 300
    while 4 not in _steps_on_disk(workdir)[0]:  # The save goes on in the
      assert time.time() < deadline  # background.
      time.sleep(0.02)

    before = _snapshot(str(workdir))
    second = subprocess.run(
        _cli_args(workdir),
        cwd=REPO_ROOT,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert second.returncode == train.EXIT_ERROR, second.stderr[-3000:]
    errors = [l for l in second.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, second.stderr[-3000:]
    assert re.fullmatch(
        rf"error: --workdir={re.escape(str(workdir))} is in use by another "
        rf"training run \(pid {first.pid} on host \S+, started [\d: -]+, run "
        rf"id {holder.run_id}\); wait for it to end, stop it \(kill "
        rf"{first.pid}\), or use another --workdir\.",
        errors[0],
    ), errors[0]
    assert "Traceback" not in second.stderr
    assert _snapshot(str(workdir)) == before
  finally:
    (signals / "resume").touch()
    _, stderr = first.communicate(timeout=300)
  assert first.returncode == 0, stderr[-3000:]
  assert not (workdir / runlock.LOCK_FILE).exists()
  _assert_same_as_reference(workdir, reference)


def _write_lock(workdir, **fields):
  os.makedirs(workdir, exist_ok=True)
  record = {
      "pid": 1,
      "host": socket.gethostname(),
      "started": time.time() - 60,
      "run_id": "0123abcd4567",
      **fields,
  }
  (workdir / runlock.LOCK_FILE).write_text(json.dumps(record))


@pytest.mark.slow
def test_stale_and_foreign_locks(tmp_path, caplog):
  """A lock whose process died on this host is taken over with a warning; a
  lock from another host is refused in one line, writing nothing, until
  config.force_unlock, which config.json does not record."""
  workdir = tmp_path / "run"
  dead = subprocess.Popen(["true"])
  dead.wait()
  _write_lock(workdir, pid=dead.pid)
  with caplog.at_level("WARNING"):
    trainer.train_and_evaluate(_config(stop_after_steps=1), str(workdir))
  warnings = " ".join(r.getMessage() for r in caplog.records)
  assert (
      f"Taking over the run lock of {workdir} left by a process that "
      f"ended without releasing it (pid {dead.pid} on host"
  ) in warnings
  assert not (workdir / runlock.LOCK_FILE).exists()

  _write_lock(workdir, host="elsewhere.example")
  before = _snapshot(str(workdir))
  with pytest.raises(WorkdirError) as err:
    trainer.train_and_evaluate(_config(), str(workdir))
  assert re.fullmatch(
      rf"--workdir={re.escape(str(workdir))} is locked by a run on another "
      r"host \(pid 1 on host elsewhere\.example, started [\d: -]+, run id "
      r"0123abcd4567\); if that run has ended, rerun with "
      r"--config\.force_unlock=True, else use another --workdir\.",
      str(err.value),
  ), str(err.value)
  assert _snapshot(str(workdir)) == before

  trainer.train_and_evaluate(
      _config(stop_after_steps=2, force_unlock=True), str(workdir)
  )
  assert _steps_on_disk(workdir)[0] == [1, 2]
  assert not (workdir / runlock.LOCK_FILE).exists()
  assert "force_unlock" not in json.loads(
      (workdir / trainer.CONFIG_FILE).read_text()
  )


# --- Resume only onto the same data (maskcon_jax.fingerprint).


def _coarse_map(path, shift):
  # tiny's synthetic data has fine classes 'pattern 0' to 'pattern 7'.
  path.write_text("".join(f"pattern {f},{(f + shift) % 2}\n" for f in range(8)))
  return str(path)


@pytest.mark.slow
def test_resume_onto_other_data_is_refused(reference, tmp_path, capsys, caplog):
  """A stopped run refuses, in one line and writing nothing, to resume with
  another subset size or with its coarse map edited in place; a run without
  a fingerprint resumes with a warning; a finished run may be evaluated on
  another test split, and says so."""
  workdir = tmp_path / "run"
  coarse_map = _coarse_map(tmp_path / "map.csv", 0)
  trainer.train_and_evaluate(
      _config(stop_after_steps=1, coarse_map=coarse_map), str(workdir)
  )
  saved = fingerprint.read(str(workdir))
  assert saved["train_examples"] == 64 and saved["coarse_classes"] == 2
  before = _snapshot(str(workdir))

  status = train.command_line(
      [
          "train",
          "--config",
          str(REPO_ROOT / "configs" / "tiny.py"),
          "--workdir",
          str(workdir),
          f"--config.coarse_map={coarse_map}",
          "--config.max_train_examples=48",
          *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
      ]
  )
  assert status == train.EXIT_ERROR
  errors = [
      l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")
  ]
  assert errors == [
      f"error: the training data differs from the data the run in {workdir} "
      "started with: train examples 64 -> 48; resume with the original data "
      "or use a new --workdir."
  ]
  assert _snapshot(str(workdir)) == before

  _coarse_map(tmp_path / "map.csv", 1)  # Edited in place: same path.
  with pytest.raises(DataError) as err:
    trainer.train_and_evaluate(_config(coarse_map=coarse_map), str(workdir))
  assert str(err.value) == (
      f"the training data differs from the data the run in {workdir} started "
      "with: the coarse map differs; the train labels differ; resume with the "
      "original data or use a new --workdir."
  )
  assert _snapshot(str(workdir)) == before

  _coarse_map(tmp_path / "map.csv", 0)
  os.remove(workdir / fingerprint.FINGERPRINT_FILE)
  with caplog.at_level("WARNING"):
    trainer.train_and_evaluate(
        _config(stop_after_steps=2, coarse_map=coarse_map), str(workdir)
    )
  assert (
      f"{workdir} has no record of the data its run used (a run from "
      "before data fingerprints): resuming without checking it." in caplog.text
  )
  assert fingerprint.read(str(workdir)) == saved
  caplog.clear()

  finished = tmp_path / "finished"
  shutil.copytree(reference["workdir"], finished)
  recorded = fingerprint.read(str(finished))
  with caplog.at_level("WARNING"):
    results = trainer.train_and_evaluate(
        _config(max_test_examples=16), str(finished)
    )
  assert results["step"] == TOTAL_STEPS
  assert (
      f"Evaluating the finished run in {finished} on other data than it "
      "was trained on: test examples 32 -> 16." in caplog.text
  )
  assert fingerprint.read(str(finished)) == recorded


# --- A full disk: one line, the last checkpoint intact, a clean resume.

# The CLI with every array write of checkpoint 4 failing as TensorStore (which
# orbax writes with) fails on a full disk, and a disk that reports 1 byte
# free. A tmpfs would be the real thing; it needs privileges tests lack.
_FULL_DISK = """
import shutil
from orbax.checkpoint._src.serialization import serialization
write = serialization.async_serialize_from_host
async def full(*args, **kwargs):
  if '/4.orbax-checkpoint-tmp' in repr(args) + repr(kwargs):
    raise ValueError(
        'RESOURCE_EXHAUSTED: Error writing "params/0" in OCDBT database at '
        'local file "{ckpt}/4.orbax-checkpoint-tmp/default/": No space left '
        "on device [os_error_code='28']")
  return await write(*args, **kwargs)
serialization.async_serialize_from_host = full
usage = shutil.disk_usage
shutil.disk_usage = lambda path: usage(path)._replace(free=1)
"""


@pytest.mark.slow
def test_full_disk_gives_one_line_and_resumes(reference, tmp_path):
  """Checkpoint 4 cannot be written: a warning before (too little free
  space), then one line naming the folder, the error, the intact checkpoint
  3 and what to do; the tracebacks go to debug.log. Rerun with space, the
  run ends bit for bit as the uninterrupted reference."""
  workdir = tmp_path / "run"
  ckpt = workdir / "checkpoints"
  args = _cli_args(workdir)
  args[2] = _FULL_DISK.format(ckpt=ckpt) + _CLI.replace("; ", "\n")
  out = subprocess.run(
      args, cwd=REPO_ROOT, text=True, capture_output=True, timeout=300
  )
  assert out.returncode == train.EXIT_ERROR, out.stderr[-3000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert errors == [
      f"error: cannot write checkpoints in {ckpt}: No space left on device; "
      "the newest complete checkpoint, step 3, is intact; free some space and "
      "rerun the same command to resume (details in "
      f"{workdir / workdir_io.DEBUG_LOG})."
  ], out.stderr[-3000:]
  for noise in ("Traceback", "RESOURCE_EXHAUSTED", "Event loop is closed"):
    assert noise not in out.stderr, out.stderr[-3000:]
  assert "less than the last checkpoint takes" in out.stderr
  assert "RESOURCE_EXHAUSTED" in (workdir / workdir_io.DEBUG_LOG).read_text()
  assert _steps_on_disk(workdir)[0][-1] == 3
  assert not (workdir / runlock.LOCK_FILE).exists()

  trainer.train_and_evaluate(_config(), str(workdir))  # Space freed.
  assert _steps_on_disk(workdir)[1] == []
  _assert_same_as_reference(workdir, reference)


@pytest.mark.slow
def test_full_disk_at_results_json(reference, tmp_path, monkeypatch):
  """results.json cannot be written: one line naming it; the checkpoints
  stay as they were."""
  workdir = tmp_path / "run"
  shutil.copytree(reference["workdir"], workdir)
  os.remove(workdir / trainer.RESULTS_FILE)
  replace = os.replace

  def full(src, dst, *args, **kwargs):
    if str(dst).endswith(trainer.RESULTS_FILE):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src)
    return replace(src, dst, *args, **kwargs)

  monkeypatch.setattr(os, "replace", full)
  with pytest.raises(WorkdirError) as err:
    trainer.train_and_evaluate(_config(), str(workdir))
  assert str(err.value) == (
      f"cannot write {workdir / trainer.RESULTS_FILE}.tmp: No space left on "
      "device; the newest complete checkpoint, step 8, is intact; free some "
      "space and rerun the same command to resume (details in "
      f"{workdir / workdir_io.DEBUG_LOG})."
  )
  assert _steps_on_disk(workdir) == ([7, 8], [])
  assert not (workdir / runlock.LOCK_FILE).exists()


# --- SIGKILL at named points (maskcon_jax.debugpoints).


# 7 CLI launches (about 35 s on 2 cores): in the full suite, not in the
# quick subset (pytest -m "not slow").
@pytest.mark.slow
def test_sigkill_at_named_points_resumes_bit_exact(reference, tmp_path):
  """One workdir, 7 launches, each SIGKILLed while paused at a named point:
  before anything but the lock is written, after config.json, then each of
  the mid-run kinds once at steps drawn at random (between steps, inside a
  checkpoint save, after a save), before the final evaluation and inside
  the results.json write. Each launch resumes from what the one before
  left; a last plain run ends bit for bit as the uninterrupted reference."""
  seed = int(os.environ.get("MASKCON_KILL_SEED", time.time_ns() % 2**32))
  rng = random.Random(seed)
  kinds = ["train_step", "checkpoint_save", "checkpoint_saved"]
  rng.shuffle(kinds)
  # Increasing steps: each launch resumes past the one before's point.
  steps = sorted(rng.sample(range(1, TOTAL_STEPS), len(kinds)))
  middle = list(zip(kinds, steps))
  points = (
      [("lock_taken", None), ("config_written", None)]
      + middle
      + [("final_eval", TOTAL_STEPS), ("results_write", None)]
  )
  workdir, signals = tmp_path / "run", tmp_path / "signals"
  for number, (name, step) in enumerate(points):
    label = name if step is None else f"{name}@{step}"
    context = f"(MASKCON_KILL_SEED={seed}) point {number}: {label}"
    folder = signals / str(number)
    folder.mkdir(parents=True)
    proc = _start(workdir, env=_pause_env(folder, label))
    try:
      _wait_for_file(proc, folder / f"paused-{label}")
    except AssertionError as e:
      raise AssertionError(f"{context}: {e}") from None
    proc.kill()
    _, stderr = proc.communicate()
    if number:
      assert "Taking over the run lock" in stderr, context
  trainer.train_and_evaluate(_config(), str(workdir))
  assert _steps_on_disk(workdir)[1] == [], "unfinished saves left behind"
  print(f"(MASKCON_KILL_SEED={seed}) {points}")
  _assert_same_as_reference(workdir, reference, f"seed {seed}")
