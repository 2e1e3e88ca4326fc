"""``train_and_evaluate``: the training loop, evaluation and checkpoints.

Data lives on the device as uint8 arrays; every epoch is a device-side
permutation, every step gathers its batch and makes both views inside the
jitted step. The data order is a function of (seed, step) alone, so resuming
from a checkpoint at step s replays exactly what an uninterrupted run does.
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

from maskcon_jax import configuration
from maskcon_jax import evaluation
from maskcon_jax import input_pipeline
from maskcon_jax import models
from maskcon_jax import train_state as train_state_lib
from maskcon_jax import train_step as steps
from maskcon_jax.errors import ConfigError, UserError

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"


def steps_per_epoch(num_train: int, batch_size: int) -> int:
  """Full batches per epoch (the official loader drops the last one)."""
  return num_train // batch_size


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh over the first ``num_devices`` devices (all if None).

  Auto axes: the compiler propagates shardings (state replicated, batch
  split), so the step's code is the same on one device and on many.
  """
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  return jax.sharding.Mesh(np.array(devices), ("data",),
                           axis_types=(jax.sharding.AxisType.Auto,))


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> jax.Array:
  """The order of the training set in ``epoch``: a function of (seed, epoch)."""
  rng = jax.random.fold_in(jax.random.key(seed), epoch)
  return jax.random.permutation(rng, num_examples)


def _gather_batch(images, coarse, permutation, index, *, batch_size):
  ids = jax.lax.dynamic_slice_in_dim(permutation, index * batch_size,
                                     batch_size)
  return {"image": images[ids], "coarse_label": coarse[ids]}


class _Data:
  """Training set resident on the devices, replicated."""

  def __init__(self, dataset: input_pipeline.Dataset, mesh, batch_size: int,
               seed: int):
    replicated = NamedSharding(mesh, P())
    self.images = jax.device_put(dataset.train_images, replicated)
    self.coarse = jax.device_put(dataset.train_coarse.astype(np.int32),
                                 replicated)
    self.num = dataset.num_train
    self.batch_size = batch_size
    self.seed = seed
    self.batch_sharding = NamedSharding(mesh, P("data"))
    self._epoch, self._perm = None, None
    # The gather runs on the devices and leaves the batch already split
    # across them, on every host alike (the data and order are replicated).
    self._gather = jax.jit(
        functools.partial(_gather_batch, batch_size=batch_size),
        out_shardings=self.batch_sharding)

  def batch(self, step: int, spe: int) -> dict[str, jax.Array]:
    epoch, index = divmod(step, spe)
    if epoch != self._epoch:
      self._epoch, self._perm = epoch, epoch_permutation(self.seed, epoch,
                                                         self.num)
    return self._gather(self.images, self.coarse, self._perm, index)


class _StreamData:
  """Training batches streamed from the host (datasets too big for memory).

  Each process reads its own shard; the global batch is assembled from the
  process-local pieces. The order is a function of (seed, epoch, step), and
  resuming mid-epoch skips the batches already seen without decoding them.
  """

  def __init__(self, dataset, mesh, batch_size: int, seed: int):
    self.dataset = dataset
    self.local_batch = batch_size // jax.process_count()
    self.seed = seed
    self.batch_sharding = NamedSharding(mesh, P("data"))
    self._epoch, self._next_index, self._iter = None, None, None

  def batch(self, step: int, spe: int) -> dict[str, jax.Array]:
    epoch, index = divmod(step, spe)
    if (epoch, index) != (self._epoch, self._next_index):
      self._iter = self.dataset.train_batches(
          self.local_batch, seed=self.seed, epoch=epoch,
          process_index=jax.process_index(),
          process_count=jax.process_count(), start_step=index)
      self._epoch = epoch
    local = next(self._iter)
    self._next_index = index + 1
    return {k: jax.make_array_from_process_local_data(self.batch_sharding,
                                                      local[k])
            for k in ("image", "coarse_label")}


def make_data(exp: "Experiment"):
  """The training batch source of ``exp``: device-resident or streamed."""
  if isinstance(exp.dataset, input_pipeline.StreamingDataset):
    return _StreamData(exp.dataset, exp.mesh, exp.config.batch_size,
                       exp.config.seed)
  return _Data(exp.dataset, exp.mesh, exp.config.batch_size, exp.config.seed)


def embed_dataset(state, images: np.ndarray, config, dataset, mesh,
                  ) -> dict[str, np.ndarray]:
  """Backbone features and projections of ``images`` by the query encoder."""
  bs = config.eval_batch_size
  embed = jax.jit(functools.partial(
      steps.embed_step, apply_fn=state.apply_fn, image_size=config.image_size,
      mean=tuple(dataset.mean), std=tuple(dataset.std)))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  sharding = NamedSharding(mesh, P("data"))
  out = {"features": [], "projection": []}
  n = len(images)
  bs = int(math.ceil(min(bs, n) / mesh.size) * mesh.size)
  for start in range(0, n, bs):
    chunk = images[start:start + bs]
    valid = len(chunk)
    if valid < bs:  # Pad the last batch so only one program is compiled.
      chunk = np.concatenate([chunk, np.zeros((bs - valid, *chunk.shape[1:]),
                                              chunk.dtype)])
    result = embed(variables, jax.device_put(chunk, sharding))
    for key in out:
      out[key].append(np.asarray(result[key])[:valid])
  return {key: np.concatenate(v) for key, v in out.items()}


def embed_test_split(state, dataset, config, mesh) -> dict[str, np.ndarray]:
  """Features, projections and labels of the test split (in memory or
  streamed). ``fine`` is None for data without fine labels."""
  if not isinstance(dataset, input_pipeline.StreamingDataset):
    emb = embed_dataset(state, dataset.test_images, config, dataset, mesh)
    return {**emb, "fine": dataset.test_fine, "coarse": dataset.test_coarse}
  embed = jax.jit(functools.partial(
      steps.embed_step, apply_fn=state.apply_fn, image_size=config.image_size,
      mean=tuple(dataset.mean), std=tuple(dataset.std)))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  sharding = NamedSharding(mesh, P("data"))
  bs = config.eval_batch_size // jax.process_count()
  parts = {"features": [], "projection": [], "fine": [], "coarse": []}
  for batch in dataset.test_batches(bs, process_index=jax.process_index(),
                                    process_count=jax.process_count(),
                                    pad=True):
    images = jax.make_array_from_process_local_data(sharding, batch["image"])
    result = jax.experimental.multihost_utils.process_allgather(
        embed(variables, images), tiled=True)
    mask = jax.experimental.multihost_utils.process_allgather(
        batch["mask"], tiled=True).astype(bool)
    for key in ("features", "projection"):
      parts[key].append(np.asarray(result[key])[mask])
    parts["coarse"].append(jax.experimental.multihost_utils.process_allgather(
        batch["coarse_label"], tiled=True)[mask])
    if "fine_label" in batch:
      parts["fine"].append(jax.experimental.multihost_utils.process_allgather(
          batch["fine_label"], tiled=True)[mask])
  out = {k: np.concatenate(v) for k, v in parts.items() if v}
  out.setdefault("fine", None)
  return out


def evaluate(state, dataset, config, mesh) -> dict[str, float]:
  """Fine and coarse Recall@K on the test split's backbone features.

  Data without fine labels reports coarse retrieval only.
  """
  emb = embed_test_split(state, dataset, config, mesh)
  ks = tuple(config.retrieval_ks)
  metrics = {}
  levels = [("coarse", emb["coarse"])]
  if emb["fine"] is not None:
    levels.insert(0, ("fine", emb["fine"]))
  for level, labels in levels:
    recalls = evaluation.recall_at_k(emb["features"], labels, ks)
    metrics.update({f"{level}_recall@{k}": v for k, v in recalls.items()})
  return metrics


def _make_state(config, model, tx, dataset, mesh):
  """Creates the state directly on the devices, replicated."""
  create = functools.partial(
      train_state_lib.create_train_state, model=model, tx=tx,
      image_shape=(config.image_size, config.image_size,
                   dataset.image_shape[-1]),
      queue_size=config.queue_size, embed_dim=config.embed_dim,
      num_coarse=dataset.hierarchy.num_coarse)
  rng = jax.random.key(config.seed)
  abstract = jax.eval_shape(create, rng)
  shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), abstract)
  state = jax.jit(create, out_shardings=shardings)(rng)
  # Restoring into this tree places every array replicated on *this* mesh,
  # so a checkpoint written with N devices restores on M.
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract, shardings)
  return state, abstract, shardings


def _prefill_queue(state, data: _Data, exp: "Experiment"):
  config = exp.config
  prefill = make_prefill_step(exp)
  num_batches = math.ceil(config.queue_size / config.batch_size)
  spe = exp.steps_per_epoch
  for i in range(num_batches):
    # Like the official loop over the training loader: epoch 0's batches
    # (the views differ from training's: prefill_step has its own keys).
    state = prefill(state, data.batch(i % spe, spe), jnp.asarray(i, jnp.int32))
  return state


def _checkpoint_manager(workdir: str, create: bool = True
                        ) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=create,
                                           read_only=not create))


class _LogOnlyWriter:
  """Logs scalars when clu's TensorBoard writer (which needs TF) is missing."""

  def write_scalars(self, step, scalars):
    logging.info("[%d] %s", step, ", ".join(
        f"{k}={v:.6g}" for k, v in sorted(scalars.items())))

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
    logging.warning("No TensorBoard events (%s); metrics go to the log only.",
                    e)
    return _LogOnlyWriter()
  return metric_writers.create_default_writer(
      workdir, just_logging=not is_main, asynchronous=True)


def write_json_atomic(path: str, payload: Any) -> None:
  """Writes JSON through a temporary file, so readers never see half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=str)
    f.write("\n")
  os.replace(tmp, path)


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
    spe = dataset.steps_per_epoch(config.batch_size // jax.process_count(),
                                  jax.process_count())
  else:
    spe = steps_per_epoch(dataset.num_train, config.batch_size)
  if spe == 0:
    raise ConfigError(
        f"config.batch_size={config.batch_size} exceeds the "
        f"{dataset.num_train} training examples; use a smaller batch.")
  num_devices = config.get("num_devices") or jax.device_count()
  if num_devices > jax.device_count():
    raise ConfigError(
        f"config.num_devices={num_devices} but only {jax.device_count()} "
        "devices are visible; use fewer or leave it unset (all devices).")
  if config.batch_size % num_devices:
    raise ConfigError(
        f"config.batch_size={config.batch_size} is not divisible by the "
        f"{num_devices} devices; use a multiple of {num_devices}.")
  if config.key_bn == "split" and config.batch_size % config.bn_splits:
    raise ConfigError(
        f"config.batch_size={config.batch_size} is not divisible by "
        f"config.bn_splits={config.bn_splits}.")
  mesh = make_mesh(num_devices)
  model = models.build_encoder(config, dataset.hierarchy.num_coarse)
  schedule = train_state_lib.learning_rate_schedule(config, spe)
  tx = train_state_lib.make_optimizer(config, schedule)
  state, abstract_state, _ = _make_state(config, model, tx, dataset, mesh)
  return Experiment(config=config, dataset=dataset, model=model,
                    schedule=schedule, tx=tx, mesh=mesh, steps_per_epoch=spe,
                    state=state, abstract_state=abstract_state)


def make_train_step(exp: Experiment):
  """The jitted train step with ``exp``'s hyperparameters; donates the state."""
  config = exp.config
  return jax.jit(functools.partial(
      steps.train_step, mode=config.mode, t0=config.t0, t=config.t, w=config.w,
      ema_momentum=config.ema_momentum, image_size=config.image_size,
      mean=tuple(exp.dataset.mean), std=tuple(exp.dataset.std),
      strong_policy=config.strong_policy, weak_policy=config.weak_policy,
      schedule=exp.schedule, key_bn=config.key_bn, bn_splits=config.bn_splits,
      query_bn=config.query_bn, mesh=exp.mesh), donate_argnums=0)


def make_prefill_step(exp: Experiment):
  """The jitted queue pre-fill step; donates the state."""
  config = exp.config
  return jax.jit(functools.partial(
      steps.prefill_step, image_size=config.image_size,
      mean=tuple(exp.dataset.mean), std=tuple(exp.dataset.std),
      weak_policy=config.weak_policy,
      bn_splits=config.bn_splits if config.key_bn == "split" else 1),
      donate_argnums=0)


def restore_state(exp: Experiment, mngr: ocp.CheckpointManager,
                  step: int) -> train_state_lib.TrainState:
  """The checkpointed state at ``step``, with ``exp``'s static fields."""
  state = mngr.restore(step, args=ocp.args.StandardRestore(exp.abstract_state))
  return state.replace(apply_fn=exp.model.apply, tx=exp.tx)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run saved in ``workdir``."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise UserError(f"{path} not found: --workdir must be a directory written "
                    "by maskcon_jax.train.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_trained(workdir: str, step: int | None = None,
                 config_overrides: dict[str, Any] | None = None):
  """Restores a trained run for evaluation or export.

  Args:
    workdir: a directory written by ``maskcon_jax.train``.
    step: the checkpoint step; the latest if None.
    config_overrides: e.g. ``{"data_dir": ...}`` where data moved.

  Returns:
    ``(experiment, state)``.
  """
  config = load_config(workdir)
  if config_overrides:
    config.update(config_overrides)
  exp = build_experiment(config)
  mngr = _checkpoint_manager(workdir, create=False)
  available = list(mngr.all_steps())
  if not available:
    raise UserError(f"no checkpoint in {workdir}/{CHECKPOINT_DIR}: train first "
                    "with maskcon_jax.train.")
  if step is None:
    step = max(available)
  elif step not in available:
    raise UserError(f"no checkpoint for step {step} in {workdir}; available: "
                    f"{', '.join(map(str, sorted(available)))}.")
  state = restore_state(exp, mngr, step)
  mngr.close()
  return exp, state


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Trains ``config.mode`` on ``config.dataset``, evaluates and checkpoints.

  Resumes from the latest checkpoint in ``workdir``; if the run is already
  complete, only evaluates again.

  Returns:
    The flat results dict also written to ``workdir/results.json``.
  """
  # Every check that can fail runs before anything is written to workdir.
  configuration.validate_config(config)
  configuration.check_workdir_writable(workdir)
  config_path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(config_path):
    with open(config_path) as f:
      configuration.check_compatible(json.load(f), config)
  exp = build_experiment(config)
  dataset, mesh = exp.dataset, exp.mesh
  spe, total_steps, state = exp.steps_per_epoch, exp.total_steps, exp.state

  is_main = jax.process_index() == 0
  logging.info("Training %s on %s: %d steps on %d devices (%d processes), "
               "global batch %d.", config.mode, config.dataset, total_steps,
               mesh.size, jax.process_count(), config.batch_size)
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    write_json_atomic(config_path, config.to_dict())
  writer = _create_writer(workdir, is_main)
  mngr = _checkpoint_manager(workdir)
  data = make_data(exp)

  start_step = mngr.latest_step()
  if start_step is not None:
    state = restore_state(exp, mngr, start_step)
    logging.info("Resumed from step %d in %s.", start_step, workdir)
  else:
    start_step = 0
    writer.write_hparams({k: v for k, v in config.to_dict().items()
                          if isinstance(v, (int, float, str, bool))})
    if config.queue_init == "prefill":
      state = _prefill_queue(state, data, exp)
  start_step = int(state.step)

  step_fn = make_train_step(exp)

  last_step = total_steps
  if config.get("stop_after_steps") is not None:
    last_step = min(total_steps, config.stop_after_steps)
  eval_every = config.eval_every_epochs * spe
  pending = []  # Device metrics not yet fetched: the host never waits on them.
  train_start = time.time()
  interval_start, interval_steps = time.time(), 0
  results: dict[str, Any] = {}

  def flush_train_metrics(step):
    nonlocal interval_start, interval_steps, pending
    if not pending:
      return
    fetched = jax.device_get(pending)
    pending = []
    summary = {f"train/{k}": float(np.mean([m[k] for m in fetched]))
               for k in fetched[0]}
    elapsed = time.time() - interval_start
    rate = interval_steps / max(elapsed, 1e-9)
    summary["train/steps_per_sec"] = rate
    if not np.isfinite(summary["train/loss"]):
      raise FloatingPointError(
          f"non-finite loss at step {step}; the last checkpoint is step "
          f"{mngr.latest_step()}.")
    writer.write_scalars(step, summary)
    logging.info("step %d/%d loss %.4f lr %.5f %.2f steps/s ETA %s", step,
                 total_steps, summary["train/loss"],
                 summary.get("train/learning_rate", float("nan")), rate,
                 _format_eta((last_step - step) / max(rate, 1e-9)))
    interval_start, interval_steps = time.time(), 0

  for step in range(start_step, last_step):
    state, metrics = step_fn(state, data.batch(step, spe))
    pending.append(metrics)
    interval_steps += 1
    done = step + 1
    if done % config.log_every_steps == 0 or done == last_step:
      flush_train_metrics(done)
    if done % config.checkpoint_every_steps == 0 or done == last_step:
      mngr.save(done, args=ocp.args.StandardSave(state))
    if done % eval_every == 0 and done != total_steps:
      eval_metrics = evaluate(state, dataset, config, mesh)
      writer.write_scalars(done, {f"eval/{k}": v for k, v in
                                  eval_metrics.items()})
      logging.info("eval at step %d: %s", done, _summary_line(eval_metrics))
  train_time = time.time() - train_start
  mngr.wait_until_finished()

  final_step = int(state.step)
  if final_step == total_steps or final_step == last_step:
    eval_metrics = evaluate(state, dataset, config, mesh)
    writer.write_scalars(final_step, {f"eval/{k}": v for k, v in
                                      eval_metrics.items()})
    results = {**eval_metrics, "step": final_step, "mode": config.mode,
               "dataset": config.dataset, "complete": final_step == total_steps,
               "train_seconds_this_run": round(train_time, 2)}
    if not any(k.startswith("fine_") for k in eval_metrics):
      results["fine_metrics"] = "unavailable: the dataset has no fine labels"
    if is_main:
      write_json_atomic(os.path.join(workdir, RESULTS_FILE), results)
    logging.info("Final (step %d): %s", final_step, _summary_line(eval_metrics))
    print(f"step {final_step}: {_summary_line(eval_metrics)}", flush=True)
  writer.flush()
  writer.close()
  mngr.close()
  return results


def _summary_line(metrics: dict[str, float]) -> str:
  level = ("fine_recall" if any(k.startswith("fine_") for k in metrics)
           else "coarse_recall")
  line = " ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                  if k.startswith(level))
  if level == "coarse_recall":
    line += " (no fine labels: fine metrics unavailable)"
  return line
