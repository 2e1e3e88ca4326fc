"""``train_and_evaluate``: the training loop, evaluation and checkpoints.

Here: the mesh, the experiment built from a config (data, model, optimizer,
state), the train and queue pre-fill steps, the run lock across processes,
the metric writers, the loop itself (`train_and_evaluate`) and
`evaluate_untrained`. The loop's parts live in their own modules:

* `batches`: the training batches of every step, in an order that is a
  function of (seed, step) alone, so a resumed run replays exactly;
* `checkpoints`: the checkpoint folder, restoring the newest readable
  checkpoint, setting damaged ones aside;
* `signals`: SIGTERM and Ctrl-C stop the run after the current step;
* `workdir_io`: atomic JSON writes and failed writes as one-line errors;
* `monitors`: the evaluation, the online k-NN monitor and the soft-target
  diagnostics;
* `nonfinite`: detecting non-finite steps, skipping or poisoning them;
* `fingerprint`: resuming only onto the data a run started with.

It is over 600 lines (about 850) because it keeps everything a run builds
and calls besides those parts; the loop alone (`_train_and_evaluate`) is
some 290 lines of closures over one run's bookkeeping.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

from absl import logging
import jax
import jax.experimental.multihost_utils
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from maskcon_jax import batches
from maskcon_jax import checkpoints
from maskcon_jax import configuration
from maskcon_jax import debugpoints
from maskcon_jax import embedding
from maskcon_jax import fingerprint
from maskcon_jax import input_pipeline
from maskcon_jax import methods
from maskcon_jax import models
from maskcon_jax import monitors
from maskcon_jax import nonfinite as nonfinite_lib
from maskcon_jax import pretrained
from maskcon_jax import runlock
from maskcon_jax import signals
from maskcon_jax import train_state as train_state_lib
from maskcon_jax import train_step as steps
from maskcon_jax import workdir_io
from maskcon_jax.errors import Interrupted
from maskcon_jax.errors import NonFiniteError
from maskcon_jax.errors import UserError, WorkdirError

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh over the first ``num_devices`` devices (all if None).

  Auto axes: the compiler propagates shardings (state replicated, batch
  split), so the step's code is the same on one device and on many.
  """
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  return jax.sharding.Mesh(
      np.array(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
  )


def state_initializer(config, model, tx, dataset):
  """``rng -> TrainState`` for ``config``'s model, optimizer and queue (none
  for a method without one)."""
  return functools.partial(
      train_state_lib.create_train_state,
      model=model,
      tx=tx,
      image_shape=(
          config.image_size,
          config.image_size,
          dataset.image_shape[-1],
      ),
      queue_size=config.queue_size,
      embed_dim=config.embed_dim,
      num_coarse=dataset.hierarchy.num_coarse,
      uses_queue=methods.uses_queue(config),
  )


def _make_state(config, model, tx, dataset, mesh):
  """Creates the state directly on the devices, replicated."""
  create = state_initializer(config, model, tx, dataset)
  rng = jax.random.key(config.seed)
  abstract = jax.eval_shape(create, rng)
  shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), abstract)
  state = jax.jit(create, out_shardings=shardings)(rng)
  # Restoring into this tree places every array replicated on *this* mesh,
  # so a checkpoint written with N devices restores on M.
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract,
      shardings,
  )
  return state, abstract, shardings


def _prefill_queue(state, data: batches.DeviceBatches, exp: "Experiment"):
  config = exp.config
  prefill = make_prefill_step(exp)
  num_batches = math.ceil(config.queue_size / config.batch_size)
  spe = exp.steps_per_epoch
  for i in range(num_batches):
    # Like the official loop over the training loader: epoch 0's batches
    # (the views differ from training's: prefill_step has its own keys).
    state = prefill(state, data.batch(i % spe, spe), jnp.asarray(i, jnp.int32))
  return state


class _LogOnlyWriter:
  """Logs scalars when clu's TensorBoard writer (which needs TF) is missing."""

  def write_scalars(self, step, scalars):
    logging.info(
        "[%d] %s",
        step,
        ", ".join(f"{k}={v:.6g}" for k, v in sorted(scalars.items())),
    )

  def write_hparams(self, hparams):
    logging.info("[hparams] %s", hparams)

  def flush(self):
    pass

  def close(self):
    pass


def _create_writer(workdir: str, is_main: bool):
  """clu's console + TensorBoard writer (console only off process 0)."""
  try:
    # TF-backed, so imported here and kept out of the step modules.
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    logging.warning(
        "No TensorBoard events (%s); metrics go to the log only.", e
    )
    return _LogOnlyWriter()
  return metric_writers.create_default_writer(
      workdir, just_logging=not is_main, asynchronous=True
  )


def _config_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What config.json records of ``config`` (`configuration.run_record`)."""
  record = configuration.run_record(config)
  # Recorded even where the config file has no such field, so that reloading
  # the run (load_config) never mistakes it for a run made before the field.
  record.setdefault("conv_padding", models.conv_padding_of(config))
  return record


def _hparams(record: dict[str, Any]) -> dict[str, Any]:
  """The scalar settings of a config record, the method block's as
  ``block.field``, for TensorBoard's hyperparameter table."""
  flat = {}
  for key, value in record.items():
    if isinstance(value, dict) and key in methods.blocks():
      flat.update({f"{key}.{k}": v for k, v in value.items()})
    else:
      flat[key] = value
  return {
      k: v for k, v in flat.items() if isinstance(v, (int, float, str, bool))
  }


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


@dataclasses.dataclass
class Experiment:
  """Everything built from a config before training: data, model, optimizer."""

  config: ml_collections.ConfigDict
  dataset: input_pipeline.Dataset
  model: models.Encoder
  schedule: Any
  tx: Any
  mesh: jax.sharding.Mesh
  steps_per_epoch: int
  state: train_state_lib.TrainState
  abstract_state: Any
  embedder: embedding.Embedder

  @property
  def total_steps(self) -> int:
    return self.config.num_epochs * self.steps_per_epoch


def build_experiment(config: ml_collections.ConfigDict) -> Experiment:
  """Validates ``config``, loads the data and creates a fresh state.

  Raises ``UserError`` (one line) for a bad config or missing data.
  """
  configuration.validate_config(config)
  dataset = input_pipeline.load_dataset(config)
  if isinstance(dataset, input_pipeline.StreamingDataset):
    spe = dataset.steps_per_epoch(
        config.batch_size // jax.process_count(), jax.process_count()
    )
  else:
    spe = batches.steps_per_epoch(dataset.num_train, config.batch_size)
  num_devices = configuration.check_run_layout(
      config,
      num_train=dataset.num_train,
      steps_per_epoch=spe,
      device_count=jax.device_count(),
  )
  mesh = make_mesh(num_devices)
  model = methods.build_encoder(config, dataset.hierarchy.num_coarse)
  schedule = train_state_lib.learning_rate_schedule(config, spe)
  tx = train_state_lib.make_optimizer(config, schedule)
  state, abstract_state, _ = _make_state(config, model, tx, dataset, mesh)
  return Experiment(
      config=config,
      dataset=dataset,
      model=model,
      schedule=schedule,
      tx=tx,
      mesh=mesh,
      steps_per_epoch=spe,
      state=state,
      abstract_state=abstract_state,
      embedder=embedding.Embedder.for_run(model.apply, config, dataset, mesh),
  )


def make_train_step(exp: Experiment):
  """The jitted train step with ``exp``'s hyperparameters; donates the state."""
  step = methods.step_for_config(
      exp.config,
      mean=exp.dataset.mean,
      std=exp.dataset.std,
      schedule=exp.schedule,
      mesh=exp.mesh,
  )
  return jax.jit(step, donate_argnums=0)


def make_prefill_step(exp: Experiment):
  """The jitted queue pre-fill step; donates the state."""
  config = exp.config
  return jax.jit(
      functools.partial(
          steps.prefill_step,
          image_size=config.image_size,
          mean=tuple(exp.dataset.mean),
          std=tuple(exp.dataset.std),
          weak_policy=config.weak_policy,
          bn_splits=config.bn_splits if config.key_bn == "split" else 1,
      ),
      donate_argnums=0,
  )


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run saved in ``workdir``."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise UserError(
        f"{path} not found: --workdir must be a directory written "
        "by maskcon_jax.train."
    )
  with open(path) as f:
    saved = json.load(f)
  # Runs saved before the method blocks existed name their fields flat.
  saved = methods.move_legacy_fields(saved)
  # Runs saved before config.conv_padding existed were trained with XLA's
  # SAME padding; reloading them with another padding would change their
  # function (the weights still fit).
  saved.setdefault("conv_padding", models.LEGACY_CONV_PADDING)
  return ml_collections.ConfigDict(saved)


def load_trained(
    workdir: str,
    step: int | None = None,
    config_overrides: dict[str, Any] | None = None,
):
  """Restores a trained run for evaluation or export.

  Args:
    workdir: a directory written by ``maskcon_jax.train``.
    step: the checkpoint step; the newest readable one if None.
    config_overrides: e.g. ``{"data_dir": ...}`` where data moved.

  Returns:
    ``(experiment, state)``.
  """
  config = load_config(workdir)
  if config_overrides:
    config.update(config_overrides)
  exp = build_experiment(config)
  if step is None:
    restored = checkpoints.restore_latest(exp, workdir)
    if restored.step is None:
      raise UserError(
          f"no checkpoint in {workdir}/"
          f"{checkpoints.CHECKPOINT_DIR}: train first with "
          "maskcon_jax.train."
      )
    return exp, restored.state
  mngr = checkpoints.manager(workdir, create=False)
  available = list(mngr.all_steps())
  if not available:
    raise UserError(
        f"no checkpoint in {workdir}/{checkpoints.CHECKPOINT_DIR}: "
        "train first with maskcon_jax.train."
    )
  if step not in available:
    raise UserError(
        f"no checkpoint for step {step} in {workdir}; available: "
        f"{', '.join(map(str, sorted(available)))}."
    )
  state = checkpoints.restore_state(exp, mngr, step)
  mngr.close()
  return exp, state


# ---------------------------------------------------------------------------
# Reliability: the run lock across processes. Non-finite steps, other data,
# damaged checkpoints, stop signals and failed writes: `nonfinite`,
# `fingerprint`, `checkpoints`,
# `signals` and `workdir_io`.
# ---------------------------------------------------------------------------


# Bytes of the run id process 0 sends to the others.
_RUN_ID_BYTES = 32


def take_run_lock(workdir: str, *, force: bool = False) -> runlock.RunLock:
  """Takes ``workdir``'s run lock for this training run (`runlock`).

  With several processes, process 0 takes it and sends the outcome and its
  run id to the others; each of them checks that the lock file it sees (if
  the workdir is shared) names that run id, so two launches of one job never
  write into one workdir. Every process raises when process 0 could not take
  the lock. The exchange is a single broadcast; tests/test_multiprocess.py
  launches one job twice on one workdir.

  Raises:
    WorkdirError: another run holds the lock (one line), or the workdir
      cannot be written.
  """
  lock = runlock.RunLock(workdir)
  if jax.process_count() == 1:
    lock.acquire(force=force)
    return lock
  problem = None
  if jax.process_index() == 0:
    try:
      lock.acquire(force=force)
    except WorkdirError as e:
      problem = e
  message = np.zeros(_RUN_ID_BYTES + 1, np.uint8)
  if jax.process_index() == 0 and problem is None:
    message[0] = 1
    encoded = lock.run_id.encode()[:_RUN_ID_BYTES]
    message[1 : 1 + len(encoded)] = np.frombuffer(encoded, np.uint8)
  message = np.asarray(
      jax.experimental.multihost_utils.broadcast_one_to_all(message)
  )
  if problem is not None:
    raise problem
  if not message[0]:
    raise WorkdirError(
        f"process 0 could not take the run lock of "
        f"--workdir={workdir} (see its error line); nothing "
        "was written."
    )
  run_id = bytes(message[1:]).rstrip(b"\0").decode()
  if jax.process_index() != 0:
    holder = runlock.read_holder(workdir)
    if holder is not None and holder.run_id != run_id:
      raise WorkdirError(
          f"--workdir={workdir} is locked by run {holder.run_id} "
          f"({holder.describe()}), but process 0 of this job took run "
          f"{run_id}: is this job launched twice?"
      )
  return lock


def _make_step_fn(exp: Experiment):
  """The train step, guarded against non-finite steps as the config asks
  (`nonfinite.guard_step`)."""
  return nonfinite_lib.guard_step(make_train_step(exp), exp.config)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Trains ``config.mode`` on ``config.dataset``, evaluates and checkpoints.

  Holds ``workdir``'s run lock (`runlock`) from before anything is read or
  written until it returns or raises, so a second training process on the
  same workdir stops at once. Resumes from the newest readable checkpoint in
  ``workdir``; if the run is already complete, only evaluates again. Newer
  checkpoints that cannot be read are moved to
  ``workdir/corrupt_checkpoints`` with a warning, and directories of saves
  that never finished are deleted.

  While the loop runs, SIGTERM and SIGINT stop it after the current step,
  with a checkpoint of that step (`Interrupted`). A step with a non-finite
  loss stops the run (`NonFiniteError`), unless ``config.max_nonfinite_steps``
  allows skipping it: the state is then left as it was, except for its step
  count. Checkpoints are checked before they are written, so none holds
  non-finite weights.

  Returns:
    The flat results dict also written to ``workdir/results.json``.

  Raises:
    UserError: one line saying what to fix. Bad config values, data and
      workdirs, and incompatible checkpoints, are found before anything is
      written; a write that fails while setting up removes what it added.
    NonFiniteError: a non-finite loss or weights (see above).
    Interrupted: SIGTERM or SIGINT; rerun to resume.
  """
  # Every check that can fail runs before anything is written to workdir.
  configuration.validate_config(config)
  configuration.check_workdir_writable(workdir)
  # The lock comes first, so a second process stops before reading or
  # writing anything else.
  lock = take_run_lock(workdir, force=bool(config.get("force_unlock")))
  try:
    debugpoints.reached("lock_taken")
    return _train_and_evaluate(config, workdir)
  finally:
    lock.release()


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """`train_and_evaluate` once the checks passed and the run lock is held."""
  config_path = os.path.join(workdir, CONFIG_FILE)
  saved = workdir_io.read_saved_config(config_path)
  changed = configuration.check_compatible(saved, config) if saved else []
  exp = build_experiment(config)
  restored = checkpoints.restore_latest(exp, workdir)
  data_print = fingerprint.of_dataset(exp.dataset)
  if restored.step is not None:
    fingerprint.check_same_data(
        workdir,
        fingerprint.read(workdir),
        data_print,
        finished=restored.step >= exp.total_steps,
    )
  if restored.step is None and config.get("init_from"):
    # Only a fresh run reads init_from (a resumed one has its weights), and
    # before anything is written, so a bad file leaves the workdir as it was.
    exp.state = pretrained.init_state(exp.state, config)
  dataset, mesh = exp.dataset, exp.mesh
  spe, total_steps, state = exp.steps_per_epoch, exp.total_steps, exp.state
  ckpt_dir = os.path.join(os.path.abspath(workdir), checkpoints.CHECKPOINT_DIR)
  finished = restored.step is not None and restored.step >= total_steps
  config_record = _config_record(config)
  if finished and saved:
    # A finished run only re-evaluates, so config.json keeps the settings it
    # was trained with; only the evaluation and bookkeeping fields follow
    # this invocation.
    config_record = configuration.finished_record(saved, config)
    if changed:
      logging.warning(
          "The run in %s is finished, so these changed settings "
          "have no effect: %s; use a new --workdir to train with "
          "them.",
          workdir,
          "; ".join(changed),
      )
  elif changed and restored.step is not None:
    logging.warning(
        "Resuming with changed settings: %s; the run will not "
        "match an uninterrupted run of either config.",
        "; ".join(changed),
    )

  is_main = jax.process_index() == 0
  logging.info(
      "Training %s on %s: %d steps on %d devices (%d processes), "
      "global batch %d.",
      config.mode,
      config.dataset,
      total_steps,
      mesh.size,
      jax.process_count(),
      config.batch_size,
  )
  mngr = writer = None
  try:
    with workdir_io.undo_on_write_error(workdir):
      os.makedirs(workdir, exist_ok=True)
      if is_main:
        workdir_io.write_json_atomic(config_path, config_record)
        if not finished:
          workdir_io.write_json_atomic(
              os.path.join(workdir, fingerprint.FINGERPRINT_FILE), data_print
          )
        if restored.corrupt:
          checkpoints.set_aside(workdir, restored.corrupt)
      if jax.process_count() > 1:
        jax.experimental.multihost_utils.sync_global_devices("workdir ready")
      mngr = checkpoints.manager(workdir)
      writer = _create_writer(workdir, is_main)
  except BaseException:
    workdir_io.close_quietly(mngr, writer)
    raise
  debugpoints.reached("config_written")
  data = batches.for_experiment(exp)

  nonfinite = 0  # Non-finite steps skipped so far, in this run and before.
  if restored.step is not None:
    state, nonfinite = restored.state, restored.nonfinite_steps
    logging.info("Resumed from step %d in %s.", restored.step, workdir)
  else:
    writer.write_hparams(_hparams(config_record))
    if config.queue_init == "prefill" and methods.uses_queue(config):
      state = _prefill_queue(state, data, exp)
  start_step = int(state.step)

  step_fn = _make_step_fn(exp)
  max_nonfinite = config.get("max_nonfinite_steps") or 0

  last_step = total_steps
  if config.get("stop_after_steps") is not None:
    last_step = min(total_steps, config.stop_after_steps)
  eval_every = config.eval_every_epochs * spe
  # Device metrics not yet fetched: the host waits on them only to log or
  # before a checkpoint, never every step.
  pending: list[tuple[int, dict[str, Any]]] = []
  fetched: list[dict[str, Any]] = []  # Checked, finite, not yet logged.
  last_saved = restored.step
  train_start = time.time()
  interval_start, interval_steps = time.time(), 0
  results: dict[str, Any] = {}

  def nonfinite_error(step: int, what: str) -> NonFiniteError:
    if last_saved is None:
      kept = "no checkpoint was written"
    else:
      kept = f"the last good checkpoint is step {last_saved} in {ckpt_dir}"
    if max_nonfinite:
      return NonFiniteError(
          f"{what} at step {step}, more than config.max_nonfinite_steps="
          f"{max_nonfinite} such steps; stopped: {kept}; lower the learning "
          "rate."
      )
    return NonFiniteError(
        f"{what} at step {step}; stopped: {kept}; lower the learning rate, or "
        "set config.max_nonfinite_steps to skip such steps."
    )

  def check_pending():
    """Fetches the pending metrics and counts their non-finite steps."""
    nonlocal pending, nonfinite
    if not pending:
      return
    numbers = [number for number, _ in pending]
    values = jax.device_get([m for _, m in pending])
    pending = []
    for number, metrics in zip(numbers, values):
      if nonfinite_lib.metrics_finite(metrics):
        fetched.append(metrics)
        continue
      nonfinite += 1
      if nonfinite > max_nonfinite:
        raise nonfinite_error(number, "non-finite loss")
      logging.warning(
          "Non-finite loss at step %d: skipped it (%d of "
          "config.max_nonfinite_steps=%d).",
          number,
          nonfinite,
          max_nonfinite,
      )

  def log_metrics(step: int):
    nonlocal interval_start, interval_steps, fetched
    check_pending()
    summary = (
        {
            f"train/{k}": float(np.mean([m[k] for m in fetched]))
            for k in fetched[0]
        }
        if fetched
        else {}
    )
    fetched = []
    rate = interval_steps / max(time.time() - interval_start, 1e-9)
    summary["train/steps_per_sec"] = rate
    if max_nonfinite:
      summary["train/nonfinite_steps"] = nonfinite
    writer.write_scalars(step, summary)
    logging.info(
        "step %d/%d loss %.4f lr %.5f %.2f steps/s ETA %s",
        step,
        total_steps,
        summary.get("train/loss", float("nan")),
        summary.get("train/learning_rate", float("nan")),
        rate,
        _format_eta((last_step - step) / max(rate, 1e-9)),
    )
    interval_start, interval_steps = time.time(), 0

  space_warned = False

  def save(step: int, state):
    # A failed write raises here or at a later save (orbax writes in the
    # background); the handler around the loop turns it into one line.
    nonlocal last_saved, space_warned
    check_pending()
    if not bool(nonfinite_lib.state_is_finite(state)):
      raise nonfinite_error(step, "non-finite weights")
    if not space_warned:
      warning = workdir_io.space_warning(ckpt_dir)
      if warning:
        logging.warning("%s", warning)
        space_warned = True
    mngr.save(
        step,
        args=ocp.args.StandardSave(state),
        custom_metadata={"nonfinite_steps": nonfinite},
    )
    debugpoints.reached("checkpoint_save", step)
    if debugpoints.wanted("checkpoint_saved"):
      mngr.wait_until_finished()
      debugpoints.reached("checkpoint_saved", step)
    last_saved = step

  stop = signals.StopSignals()
  try:
    with stop:
      for step in range(start_step, last_step):
        if stop.requested(step, config.log_every_steps):
          break
        debugpoints.reached("train_step", step)
        state, metrics = step_fn(state, data.batch(step, spe))
        pending.append((step + 1, metrics))
        interval_steps += 1
        done = step + 1
        if done % config.log_every_steps == 0 or done == last_step:
          log_metrics(done)
        if done % config.checkpoint_every_steps == 0 or done == last_step:
          save(done, state)
        if done % eval_every == 0 and done != total_steps and not stop.stopping:
          eval_metrics = monitors.evaluate(state, dataset, config, exp.embedder)
          writer.write_scalars(
              done, {f"eval/{k}": v for k, v in eval_metrics.items()}
          )
          logging.info("eval at step %d: %s", done, _summary_line(eval_metrics))
        knn_every = config.get("knn_monitor_every_steps")
        if knn_every and done % knn_every == 0 and not stop.stopping:
          top1 = monitors.knn_monitor(state, dataset, config, exp.embedder)
          if top1 is not None:
            writer.write_scalars(done, {"monitor/knn_fine_top1": top1})
            logging.info("kNN monitor at step %d: fine top-1 %.4f", done, top1)
      final_step = int(state.step)
      interrupted = stop.requested(final_step, 1)
      if interrupted and last_saved != final_step:
        if pending:
          log_metrics(final_step)
        save(final_step, state)
    train_time = time.time() - train_start
    mngr.wait_until_finished()
  except BaseException as e:
    workdir_io.close_quietly(mngr, writer)
    workdir_io.raise_if_write_failure(workdir, e)
    raise

  if interrupted:
    workdir_io.close_quietly(mngr, writer)
    raise Interrupted(
        f"stopped by {stop.name} after step {final_step} of {total_steps}: "
        f"checkpoint {final_step} is in {ckpt_dir}; rerun the same command to "
        "resume.",
        signal_name=stop.name,
        step=final_step,
    )

  if final_step == total_steps or final_step == last_step:
    debugpoints.reached("final_eval", final_step)
    eval_metrics = monitors.evaluate(state, dataset, config, exp.embedder)
    writer.write_scalars(
        final_step, {f"eval/{k}": v for k, v in eval_metrics.items()}
    )
    results = {
        **eval_metrics,
        "step": final_step,
        "mode": config.mode,
        "dataset": config.dataset,
        "complete": final_step == total_steps,
        "train_seconds_this_run": round(train_time, 2),
    }
    if nonfinite:
      results["nonfinite_steps_skipped"] = nonfinite
    if not any(k.startswith("fine_") for k in eval_metrics):
      results["fine_metrics"] = "unavailable: the dataset has no fine labels"
    if is_main:
      try:
        workdir_io.write_json_atomic(
            os.path.join(workdir, RESULTS_FILE),
            results,
            debug_point="results_write",
        )
      except BaseException as e:
        workdir_io.close_quietly(mngr, writer)
        workdir_io.raise_if_write_failure(workdir, e)
        raise
    logging.info("Final (step %d): %s", final_step, _summary_line(eval_metrics))
    print(f"step {final_step}: {_summary_line(eval_metrics)}", flush=True)
  try:
    writer.flush()
    writer.close()
    mngr.close()
  except BaseException as e:
    workdir_io.raise_if_write_failure(workdir, e)
    raise
  return results


def _summary_line(metrics: dict[str, float]) -> str:
  level = (
      "fine_recall"
      if any(k.startswith("fine_") for k in metrics)
      else "coarse_recall"
  )
  line = " ".join(
      f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith(level)
  )
  if level == "coarse_recall":
    line += " (no fine labels: fine metrics unavailable)"
  return line


# The ``mode`` that `evaluate_untrained` writes to results.json.
UNTRAINED_MODE = "untrained"


def evaluate_untrained(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Evaluates the freshly initialised query encoder of ``config``: a baseline.

  The state is the one `train_and_evaluate` starts from at ``config.seed``
  (`build_experiment`'s, before the queue pre-fill and any step), so the
  row shows what training adds. ``workdir`` gets what a trained run has:
  ``config.json`` (``config`` itself: its mode picks the architecture),
  the state as checkpoint step 0, so ``python -m maskcon_jax.evaluate
  --workdir`` and `load_trained` work unchanged, and ``results.json`` with a
  trained run's keys: Recall@K of `evaluate`, ``step`` 0, ``mode``
  `UNTRAINED_MODE` (not config.mode, so the results never pass for a trained
  run's), ``dataset``, ``complete`` True and ``train_seconds_this_run`` 0.
  Running it again replaces that checkpoint and those files.

  Returns:
    The results dict written to ``workdir/results.json``.

  Raises:
    UserError: one line saying what to fix: a bad config or data, an
      unwritable workdir, or one holding checkpoints of training (steps > 0),
      found before anything is written.
  """
  configuration.validate_config(config)
  configuration.check_workdir_writable(workdir)
  lock = take_run_lock(workdir, force=bool(config.get("force_unlock")))
  try:
    return _evaluate_untrained(config, workdir)
  finally:
    lock.release()


def _evaluate_untrained(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """`evaluate_untrained` once the checks passed and the run lock is held."""
  ckpt_dir = os.path.join(os.path.abspath(workdir), checkpoints.CHECKPOINT_DIR)
  existing = []
  if os.path.isdir(ckpt_dir):
    reader = checkpoints.manager(workdir, create=False)
    try:
      existing = sorted(reader.all_steps())
    finally:
      reader.close()
  trained_steps = [step for step in existing if step != 0]
  if trained_steps:
    raise WorkdirError(
        f"{workdir} holds checkpoints of training (steps "
        f"{', '.join(map(str, trained_steps))}); evaluate the untrained "
        "encoder in a new --workdir."
    )
  exp = build_experiment(config)
  if config.get("init_from"):
    # The state train_and_evaluate starts from: the loaded weights.
    exp.state = pretrained.init_state(exp.state, config)

  is_main = jax.process_index() == 0
  mngr = None
  try:
    with workdir_io.undo_on_write_error(workdir):
      os.makedirs(workdir, exist_ok=True)
      if is_main:
        # As train_and_evaluate records it, so load_config reloads the same
        # model.
        workdir_io.write_json_atomic(
            os.path.join(workdir, CONFIG_FILE), _config_record(config)
        )
      if jax.process_count() > 1:
        jax.experimental.multihost_utils.sync_global_devices("workdir ready")
      mngr = checkpoints.manager(workdir)
      if existing:
        # Orbax silently skips saving a step that exists; this config may
        # initialise another state than the one saved before.
        mngr.delete(0)
      mngr.save(
          0,
          args=ocp.args.StandardSave(exp.state),
          custom_metadata={"nonfinite_steps": 0},
      )
      mngr.wait_until_finished()
  except BaseException:
    workdir_io.close_quietly(mngr, None)
    raise
  mngr.close()

  metrics = monitors.evaluate(exp.state, exp.dataset, config, exp.embedder)
  results = {
      **metrics,
      "step": 0,
      "mode": UNTRAINED_MODE,
      "dataset": config.dataset,
      "complete": True,
      "train_seconds_this_run": 0.0,
  }
  if not any(k.startswith("fine_") for k in metrics):
    results["fine_metrics"] = "unavailable: the dataset has no fine labels"
  if is_main:
    try:
      workdir_io.write_json_atomic(os.path.join(workdir, RESULTS_FILE), results)
    except OSError as e:
      raise WorkdirError(workdir_io.write_error_message(workdir, e)) from e
  logging.info(
      "Untrained encoder (seed %d): %s", config.seed, _summary_line(metrics)
  )
  return results
