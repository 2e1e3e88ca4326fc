"""Checkpoints of a run: where they live, restoring the newest readable one.

Orbax checkpoints of the whole `TrainState` go to ``WORKDIR/checkpoints``
(`manager`). `restore_latest` restores the newest one that can be read,
skipping damaged ones (which `set_aside` then moves to
``WORKDIR/corrupt_checkpoints``) and refusing one whose arrays do not fit
the config's state. The functions that restore take a `trainer.Experiment`
but read only its ``abstract_state``, ``model.apply`` and ``tx``, so this
module does not import `trainer`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging as pylogging
import os
import time
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from maskcon_jax import errors
from maskcon_jax import train_state as train_state_lib
from maskcon_jax.errors import ConfigError, WorkdirError

CHECKPOINT_DIR = "checkpoints"
# Unreadable checkpoints are moved here (kept for inspection, never resumed).
CORRUPT_DIR = "corrupt_checkpoints"


# The array types orbax's standard registry serves (a state holds only
# jax.Array leaves; the rest keep orbax's own handlers).
_SAVED_TYPES = (int, float, bytes, np.number, np.ndarray, jax.Array, str)


def _state_handler() -> ocp.StandardCheckpointHandler:
  """orbax's standard handler, writing each replicated array from one replica.

  On CPU and TPU orbax splits the write of a replicated array across its
  replicas (`use_replica_parallel`): one slice program per array and
  replica, compiled at the first save. For our states of a few million
  parameters that costs more than it saves (the four saves of configs/tiny.py
  on 8 CPU devices: 6.3 s with it, 1.3 s without; orbax already turns it off
  on GPU). The arrays written are the same; restoring is unchanged.
  """
  array_handler = copy.copy(ocp.type_handlers.get_type_handler(jax.Array))
  # orbax 0.12 has no public setter on a registered handler; the
  # constructor's option lands here (tests/test_checkpoints.py checks).
  array_handler._use_replica_parallel = False  # pylint: disable=protected-access
  registry = ocp.type_handlers.create_type_handler_registry(
      *[
          (
              ty,
              array_handler
              if ty is jax.Array
              else ocp.type_handlers.get_type_handler(ty),
          )
          for ty in _SAVED_TYPES
      ]
  )
  handler = ocp.StandardCheckpointHandler()
  # As StandardCheckpointHandler builds it, with that registry (an instance
  # of orbax's own class, so its save and restore arguments still apply).
  handler._impl = ocp.PyTreeCheckpointHandler(  # pylint: disable=protected-access
      save_concurrent_gb=96,
      restore_concurrent_gb=96,
      type_handler_registry=registry,
  )
  return handler


def manager(workdir: str, create: bool = True) -> ocp.CheckpointManager:
  """The orbax manager of ``workdir/checkpoints``; read-only unless ``create``.

  Orbax writes each checkpoint into a temporary directory and renames it when
  complete, so a process killed mid-save leaves only that temporary directory:
  ``all_steps`` never lists it, and a writable manager deletes it.
  """
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
      item_handlers=_state_handler(),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=2,
          create=create,
          read_only=not create,
          cleanup_tmp_directories=create,
      ),
  )


def restore_state(
    exp, mngr: ocp.CheckpointManager, step: int
) -> train_state_lib.TrainState:
  """The checkpointed state at ``step``, with ``exp``'s static fields.

  A state without key encoder and queue restores from a checkpoint that has
  them (WCL and SelfCon runs saved before issue 13): they are read, as orbax
  restores whole trees, and dropped.
  """
  abstract = exp.abstract_state
  unused = {}
  if abstract.target_params is None:
    unused = _unused_key_encoder(mngr.item_metadata(step), abstract)
  state = mngr.restore(
      step, args=ocp.args.StandardRestore(abstract.replace(**unused))
  )
  state = state.replace(**{field: None for field in unused})
  return state.replace(apply_fn=exp.model.apply, tx=exp.tx)


# The state fields of the key encoder and queue (None without them).
_KEY_ENCODER_STATE = (
    "target_params",
    "target_batch_stats",
    "queue_KxD",
    "queue_labels_K",
    "queue_ptr",
)


def _unused_key_encoder(metadata, abstract_state) -> dict[str, Any]:
  """The abstract arrays of the key encoder and queue a checkpoint holds
  (by ``metadata``) and ``abstract_state`` lacks, placed as its params."""
  tree = getattr(metadata, "tree", metadata)
  if not isinstance(tree, dict):
    return {}
  sharding = jax.tree.leaves(abstract_state.params)[0].sharding

  def abstract(m):
    return jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding)

  return {
      field: jax.tree.map(abstract, tree[field])
      for field in _KEY_ENCODER_STATE
      if tree.get(field) is not None
  }


class HideCheckpointChatter:
  """A logging filter that drops orbax's per-save INFO records, so that the
  command-line tools' progress lines stay readable."""

  def filter(self, record) -> bool:
    return (
        record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname
    )


def _path_name(path) -> str:
  """``a/b/0`` for a pytree path, for a state object or a metadata dict."""
  parts = []
  for key in path:
    for attr in ("name", "key", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)


def _array_shapes(tree) -> dict[str, str]:
  return {
      _path_name(path): f"{tuple(leaf.shape)} {np.dtype(leaf.dtype).name}"
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _check_fits(step: int, saved_tree, abstract_state, ckpt_dir: str) -> None:
  """Raises ``ConfigError`` if checkpoint ``step`` has other arrays than the
  config's state (a workdir of another config whose config.json is gone).

  A state without key encoder and queue (WCL, SelfCon) restores from a
  checkpoint that has them: runs saved before issue 13 kept an unused key
  encoder and queue in those methods' state, and restoring skips them.
  """
  saved, needed = _array_shapes(saved_tree), _array_shapes(abstract_state)
  if abstract_state.target_params is None:
    unused = [
        name for name in saved if name.split("/")[0] in _KEY_ENCODER_STATE
    ]
    if unused:
      logging.info(
          "Checkpoint %d in %s holds a key encoder and queue this "
          "method does not use; restoring without them.",
          step,
          ckpt_dir,
      )
      saved = {k: v for k, v in saved.items() if k not in unused}
  problems = []
  for name in sorted(set(saved) | set(needed)):
    if name not in saved:
      problems.append(f"it lacks {name}")
    elif name not in needed:
      problems.append(f"it has {name}, which this config does not")
    elif saved[name] != needed[name]:
      problems.append(
          f"{name} is {saved[name]}, this config needs " f"{needed[name]}"
      )
  if problems:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise ConfigError(
        f"checkpoint {step} in {ckpt_dir} does not fit this config: "
        f"{problems[0]}{more}; use a new --workdir or the config it was "
        "written with."
    )


@dataclasses.dataclass
class Restored:
  """The newest readable checkpoint (step None: there is none)."""

  step: int | None = None
  state: Any = None
  # Newer checkpoints that could not be read, newest first.
  corrupt: list[int] = dataclasses.field(default_factory=list)
  # Non-finite steps skipped before ``step`` (config.max_nonfinite_steps).
  nonfinite_steps: int = 0


def restore_latest(exp, workdir: str) -> Restored:
  """Restores the newest checkpoint of ``workdir`` that can be read.

  Newer ones that can't (truncated or garbled files) are skipped with a
  warning and listed in ``corrupt``; nothing is written. A reader next to a
  live run (evaluate, export) may see a checkpoint deleted while it reads it
  (the run keeps the newest two); when the checkpoints on disk changed during
  the attempt, it starts over, up to three times.

  Raises:
    ConfigError: the newest checkpoint whose metadata can be read holds
      arrays of other shapes than ``exp``'s state.
    WorkdirError: there are checkpoints, but none can be read.
  """
  ckpt_dir = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  for attempt in range(3):
    before = finished_steps(ckpt_dir)
    try:
      restored = _restore_latest_once(exp, workdir)
    except WorkdirError:
      if attempt == 2 or finished_steps(ckpt_dir) == before:
        raise
      continue
    if (
        not restored.corrupt
        or attempt == 2
        or finished_steps(ckpt_dir) == before
    ):
      return restored
    logging.info(
        "The checkpoints in %s changed while reading them (a live "
        "run?); reading again.",
        ckpt_dir,
    )
  return restored


def finished_steps(ckpt_dir: str) -> list[str]:
  """The folder names of the complete checkpoints in ``ckpt_dir`` (none of
  orbax's temporary ones), sorted as strings; [] if it cannot be listed."""
  try:
    return sorted(name for name in os.listdir(ckpt_dir) if name.isdigit())
  except OSError:
    return []


def _restore_latest_once(exp, workdir: str) -> Restored:
  """One attempt of `restore_latest`."""
  ckpt_dir = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  if not os.path.isdir(ckpt_dir):
    return Restored()
  mngr = manager(workdir, create=False)
  corrupt = []
  try:
    available = sorted(mngr.all_steps(), reverse=True)

    def unreadable(step, error):
      logging.warning(
          "Checkpoint %d in %s cannot be read (%s); trying an older one.",
          step,
          ckpt_dir,
          errors.first_line(error, with_type=True),
      )
      corrupt.append(step)

    for step in available:
      # Orbax and TensorStore raise many exception types for damaged files;
      # whatever the type, the checkpoint is unusable and an older one may
      # not be.
      try:
        saved = mngr.item_metadata(step)
        saved = getattr(saved, "tree", saved)
        if saved is None:
          raise ValueError("no array metadata")
      except Exception as e:  # pylint: disable=broad-except
        unreadable(step, e)
        continue
      _check_fits(step, saved, exp.abstract_state, ckpt_dir)
      try:
        state = restore_state(exp, mngr, step)
        restored_step = int(state.step)
      except Exception as e:  # pylint: disable=broad-except
        unreadable(step, e)
        continue
      if restored_step != step:
        logging.warning(
            "Checkpoint %d in %s holds the state of step %d; "
            "trying an older one.",
            step,
            ckpt_dir,
            restored_step,
        )
        corrupt.append(step)
        continue
      try:
        custom = mngr.metadata(step).custom_metadata or {}
        nonfinite = int(custom.get("nonfinite_steps", 0))
      except Exception:  # pylint: disable=broad-except
        nonfinite = 0  # Only the step's bookkeeping file is damaged.
      return Restored(step, state, corrupt, nonfinite)
  finally:
    mngr.close()
  if available:
    raise WorkdirError(
        f"none of the checkpoints in {ckpt_dir} can be read (steps "
        f"{', '.join(map(str, available))}); move that folder away to start "
        "over."
    )
  return Restored()


def set_aside(workdir: str, steps_: list[int]) -> None:
  """Moves unreadable checkpoints to ``workdir/corrupt_checkpoints``, so the
  resumed run can write those steps again."""
  target_dir = os.path.join(workdir, CORRUPT_DIR)
  os.makedirs(target_dir, exist_ok=True)
  for step in steps_:
    source = os.path.join(workdir, CHECKPOINT_DIR, str(step))
    target = os.path.join(target_dir, str(step))
    if os.path.exists(target):
      target += f".{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(source, target)
    logging.warning(
        "Moved unreadable checkpoint %d to %s; resuming from an older one.",
        step,
        target,
    )
