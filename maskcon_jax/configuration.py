"""Checks a training config before anything runs or is written.

Each check raises ``ConfigError`` with one line naming the field, the bad
value and what to use instead.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
from ml_collections import config_dict

from maskcon_jax import augment
from maskcon_jax import input_pipeline
from maskcon_jax import methods
from maskcon_jax import models
from maskcon_jax.errors import ConfigError, UserError
from maskcon_jax.errors import is_int
from maskcon_jax.errors import is_number as _is_number
from maskcon_jax.errors import show as _show
from maskcon_jax.train_step import KEY_BN_MODES, QUERY_BN_MODES

QUEUE_INITS = ("prefill", "random")

# Fields whose change makes an existing checkpoint unusable: they fix the
# shapes of its arrays or what its step means (data order, steps per epoch).
#
# subset_seed picks (and orders) the training examples, image_channels fixes
# the input shape, and coarse_map the training labels. coarse_map is a path:
# two different paths count as the same map when both files can be read and
# hold the same rows (`check_compatible`), so a copied map resumes; a map
# edited in place at the same path is not detected.
#
# A method's block fields are named with a dot (``selfcon.position``).
CHECKPOINT_FIELDS = (
    "mode",
    "dataset",
    "arch",
    "width",
    "embed_dim",
    "proj_hidden_dim",
    "queue_size",
    "image_size",
    "precision",
    "synthetic",
    "seed",
    "batch_size",
    "selfcon.position",
    "selfcon.size",
    "subset_seed",
    "image_channels",
    "coarse_map",
    "conv_padding",
)
# The key encoder's and queue's fields: a method without them
# (``Method.uses_queue`` False) ignores them, so they never make its runs
# differ.
KEY_ENCODER_FIELDS = (
    "queue_size",
    "queue_init",
    "ema_momentum",
    "key_bn",
    "bn_splits",
)

# init_from is in neither list: only a fresh run reads it (a checkpoint holds
# the weights it gave), so a resumption with another init_from continues the
# checkpoint and `check_compatible` reports the change, like any setting that
# makes the run differ from an uninterrupted run of the new config.

# Fields that may change between a run and its resumption without changing
# what is trained: when to log, save or evaluate, where the data is, how many
# devices share the work.
RESUME_FREE_FIELDS = (
    "stop_after_steps",
    "log_every_steps",
    "checkpoint_every_steps",
    "eval_every_epochs",
    "eval_batch_size",
    "retrieval_ks",
    "num_devices",
    "distributed",
    "data_dir",
    "train_csv",
    "test_csv",
    "max_nonfinite_steps",
    "debug_nan_at_step",
    "debug_nan_num_steps",
    "selfcon.eval_exit_ensemble",
    "knn_monitor_every_steps",
    "knn_monitor_size",
)

# Reliability options every config has, whether or not its file sets them
# (`add_defaults` adds them, so they can be overridden on the command line).
RELIABILITY_DEFAULTS = {
    # Non-finite steps to skip (state left as it was) before stopping; 0 stops
    # at the first one.
    "max_nonfinite_steps": 0,
    # Tests and drills: poison the weights and loss of this (1-based) step and
    # the next debug_nan_num_steps - 1 ones, as a diverging run would.
    "debug_nan_at_step": None,
    "debug_nan_num_steps": 1,
    # Take over a run lock another host wrote (`maskcon_jax.runlock`): only
    # for a run known to have ended there.
    "force_unlock": False,
}
# Fields that say how to launch a run, not what it trains: config.json does
# not record them, so they never make two runs differ.
LAUNCH_FIELDS = ("force_unlock",)
# Types of the optional fields whose default is None, so that a command-line
# value can be parsed for them even where the config file leaves them out.
_PLACEHOLDER_TYPES = {"debug_nan_at_step": int}

# Fields every training config needs (`validate_config` reads them all).
REQUIRED_FIELDS = (
    "mode",
    "dataset",
    "arch",
    "precision",
    "queue_init",
    "key_bn",
    "query_bn",
    "strong_policy",
    "weak_policy",
    "t0",
    "t",
    "w",
    "batch_size",
    "queue_size",
    "num_epochs",
    "width",
    "embed_dim",
    "proj_hidden_dim",
    "image_size",
    "eval_batch_size",
    "log_every_steps",
    "checkpoint_every_steps",
    "bn_splits",
    "eval_every_epochs",
    "learning_rate",
    "weight_decay",
    "warmup_epochs",
    "momentum",
    "ema_momentum",
    "retrieval_ks",
    "seed",
)

_MAX_SEED = 2**32 - 1


def add_defaults(config: ml_collections.ConfigDict) -> None:
  """Adds the optional fields a config file left out, in place.

  The reliability options (`RELIABILITY_DEFAULTS`) and every method's block
  (``config.wcl``, ``config.saliency``, ...; `maskcon_jax.methods`), with
  the fields a block leaves out, then exist in every config, so
  ``--config.FIELD=VALUE`` and ``--config.wcl.graph_weight=2`` can override
  them. Flat method fields of older config files (``wcl_graph_weight``,
  ``alpha``, ...) move into their blocks first.
  """
  with config.unlocked():
    move_legacy_fields(config)
    for name, value in RELIABILITY_DEFAULTS.items():
      if name not in config:
        # A fresh placeholder per config: a shared one would link the field
        # across every config it was added to.
        config[name] = (
            config_dict.placeholder(_PLACEHOLDER_TYPES[name])
            if value is None
            else value
        )
    for name, method in methods.blocks().items():
      defaults = method.config_block()
      if config.get(name) is None:
        config[name] = defaults
        continue
      for field, value in defaults.items():
        if field not in config[name]:
          # A placeholder's reference keeps its type for the command line.
          config[name][field] = (
              defaults.get_ref(field) if value is None else value
          )


def move_legacy_fields(config: ml_collections.ConfigDict) -> None:
  """Moves flat method fields (``wcl_graph_weight``) into their blocks
  (``wcl.graph_weight``), in place; a field the block already sets wins.

  The config must be unlocked.
  """
  for old, (name, field) in methods.legacy_fields().items():
    if old not in config:
      continue
    value = config[old]
    del config[old]
    if config.get(name) is None:
      config[name] = methods.get(name).config_block()
      config[name][field] = value
    elif field not in config[name]:
      config[name][field] = value


def _choice(config, field: str, choices) -> None:
  value = config[field]
  try:
    known = value in choices
  except TypeError:  # Unhashable or uncomparable values are never choices.
    known = False
  if not known or not isinstance(value, str):
    raise ConfigError(
        f"config.{field}={_show(value)} is not supported; use "
        f"one of: {', '.join(map(str, choices))}."
    )


def _positive(config, field: str, *, integer: bool = False) -> None:
  value = config[field]
  ok = is_int(value) if integer else _is_number(value)
  if not ok or value <= 0:
    what = "a positive integer" if integer else "a positive number"
    raise ConfigError(f"config.{field}={_show(value)} must be {what}.")


def _optional_int(config, field: str, *, minimum: int, what: str) -> None:
  value = config.get(field)
  if value is not None and (not is_int(value) or value < minimum):
    raise ConfigError(f"config.{field}={_show(value)} must be {what}.")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigError`` for the first invalid field of ``config``, its
  method's block included (checked by the method, `Method.validate`)."""
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(
        f"the config is a {type(config).__name__}, not an "
        "ml_collections.ConfigDict: get_config() must return "
        "one (start from configs/default.py)."
    )
  missing = [f for f in REQUIRED_FIELDS if f not in config]
  if missing:
    raise ConfigError(
        f"the config lacks field(s) {', '.join(missing)}: start "
        "from configs/default.py, which sets them all."
    )
  _choice(config, "mode", tuple(methods.METHODS))
  for old, (name, field) in methods.legacy_fields().items():
    if old in config:
      raise ConfigError(
          f"config.{old} is now config.{name}.{field}; rename it."
      )
  method = methods.get(config.mode)
  _choice(config, "dataset", input_pipeline.DATASETS)
  _choice(config, "arch", tuple(models.ARCHITECTURES))
  _choice(config, "precision", tuple(models.DTYPES))
  _choice(config, "queue_init", QUEUE_INITS)
  _choice(config, "key_bn", KEY_BN_MODES)
  _choice(config, "query_bn", QUERY_BN_MODES)
  _choice(config, "strong_policy", tuple(augment.VIEW_POLICIES))
  _choice(config, "weak_policy", tuple(augment.VIEW_POLICIES))
  for field in ("t0", "t"):
    value = config[field]
    if not _is_number(value) or not value > 0:
      raise ConfigError(
          f"config.{field}={_show(value)}: temperatures must be "
          "> 0 (the paper uses t0=0.1, t=0.05)."
      )
  w = config.w
  if not _is_number(w) or not 0.0 <= w <= 1.0:
    raise ConfigError(
        f"config.w={_show(w)} must lie in [0, 1] (0 = MoCo, 1 = "
        "only the coarse-aware target)."
    )
  for field in (
      "batch_size",
      "queue_size",
      "num_epochs",
      "width",
      "embed_dim",
      "proj_hidden_dim",
      "image_size",
      "eval_batch_size",
      "log_every_steps",
      "checkpoint_every_steps",
      "bn_splits",
      "eval_every_epochs",
  ):
    _positive(config, field, integer=True)
  for field in ("learning_rate",):
    _positive(config, field)
  if method.uses_queue and config.queue_size < config.batch_size:
    raise ConfigError(
        f"config.queue_size={config.queue_size} is smaller than "
        f"config.batch_size={config.batch_size}; the queue must hold at least "
        "one batch of keys."
    )
  for field in ("weight_decay", "warmup_epochs"):
    value = config[field]
    if not _is_number(value) or value < 0:
      raise ConfigError(f"config.{field}={_show(value)} must be >= 0.")
  for field in ("momentum", "ema_momentum"):
    value = config[field]
    if not _is_number(value) or not 0 <= value < 1:
      raise ConfigError(f"config.{field}={_show(value)} must lie in [0, 1).")
  ks = config.retrieval_ks
  if (
      not isinstance(ks, (tuple, list))
      or not ks
      or any(not is_int(k) or k < 1 for k in ks)
  ):
    shown = tuple(ks) if isinstance(ks, (tuple, list)) else ks
    raise ConfigError(
        f"config.retrieval_ks={_show(shown)} must be positive "
        "integers, e.g. (1, 2, 5, 10)."
    )
  seed = config.seed
  if not is_int(seed) or not 0 <= seed <= _MAX_SEED:
    raise ConfigError(
        f"config.seed={_show(seed)} must be an integer in " f"[0, {_MAX_SEED}]."
    )
  _optional_int(
      config,
      "num_devices",
      minimum=1,
      what="a positive integer or unset (all devices)",
  )
  _optional_int(
      config, "stop_after_steps", minimum=1, what="a positive integer or unset"
  )
  _optional_int(
      config,
      "max_nonfinite_steps",
      minimum=0,
      what="an integer >= 0 (0 = stop at the first non-finite loss)",
  )
  _optional_int(
      config,
      "debug_nan_at_step",
      minimum=1,
      what="a positive step number or unset",
  )
  _optional_int(
      config, "debug_nan_num_steps", minimum=1, what="a positive integer"
  )
  force_unlock = config.get("force_unlock")
  if force_unlock is not None and not isinstance(force_unlock, bool):
    raise ConfigError(
        f"config.force_unlock={_show(force_unlock)} must be True or False."
    )
  # The data loader checks these too (it can run without this function).
  input_pipeline.optional_subset_seed(config, numpy=False)
  input_pipeline.optional_image_channels(config, numpy=False)
  input_pipeline.optional_coarse_map(config)
  init_from = config.get("init_from")
  if init_from is not None and (
      not isinstance(init_from, str) or not init_from
  ):
    raise ConfigError(
        f"config.init_from={_show(init_from)} must be a run's "
        "workdir or a torchvision state dict (.npz or "
        ".safetensors), or unset."
    )
  # The method's block, last: its checks may read the fields above.
  methods.of_config(config)


def check_run_layout(
    config: ml_collections.ConfigDict,
    *,
    num_train: int,
    steps_per_epoch: int,
    device_count: int,
) -> int:
  """Checks the batch against the data and the devices.

  Args:
    config: a config that passed `validate_config`.
    num_train: training examples in the dataset.
    steps_per_epoch: full global batches per epoch.
    device_count: visible devices.

  Returns:
    The number of devices to train on.

  Raises:
    ConfigError: the batch does not fit the data or the devices.
  """
  if steps_per_epoch == 0:
    raise ConfigError(
        f"config.batch_size={config.batch_size} exceeds the "
        f"{num_train} training examples; use a smaller batch."
    )
  num_devices = config.get("num_devices") or device_count
  if num_devices > device_count:
    raise ConfigError(
        f"config.num_devices={num_devices} but only {device_count} "
        "devices are visible; use fewer or leave it unset (all devices)."
    )
  if config.batch_size % num_devices:
    raise ConfigError(
        f"config.batch_size={config.batch_size} is not divisible by the "
        f"{num_devices} devices; use a multiple of {num_devices}."
    )
  if config.key_bn == "split" and config.batch_size % config.bn_splits:
    raise ConfigError(
        f"config.batch_size={config.batch_size} is not divisible by "
        f"config.bn_splits={config.bn_splits}."
    )
  return num_devices


def check_workdir_writable(workdir: str) -> None:
  """Raises ``UserError`` unless ``workdir`` exists and is writable, or can be
  created. Writes nothing."""
  if not workdir or not isinstance(workdir, str):
    raise UserError(
        "--workdir is required: name a directory for checkpoints "
        "and results."
    )
  path = os.path.abspath(workdir)
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise UserError(
          f"--workdir={workdir} is a file, not a directory; choose "
          "another path."
      )
    if not os.access(path, os.W_OK | os.X_OK):
      raise UserError(
          f"--workdir={workdir} is not writable; choose a "
          "directory you can write to."
      )
    return
  parent = os.path.dirname(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(
        f"--workdir={workdir} cannot be created: {parent} is not "
        "writable; choose a directory you can write to."
    )


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def _plain(value: Any) -> Any:
  """``value`` as config.json stores it (tuples as lists, dicts as dicts)."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  return json.loads(json.dumps(value, sort_keys=True, default=str))


def run_record(
    config: ml_collections.ConfigDict | dict[str, Any],
) -> dict[str, Any]:
  """``config`` as a run records it (config.json) and compares it.

  Plain values (tuples as lists), without `LAUNCH_FIELDS`; flat method
  fields of older configs moved into their blocks
  (`maskcon_jax.methods.move_legacy_fields`); the block of ``config.mode``'s
  method with every field (one left out or None takes its default) and no
  other method's block. Takes a ConfigDict or a loaded config.json alike.

  Raises:
    ConfigError: the block has a field its method does not know.
  """
  record = methods.move_legacy_fields(_plain(config))
  for name in LAUNCH_FIELDS:
    record.pop(name, None)
  mode = record.get("mode")
  for name in methods.blocks():
    if name != mode:
      record.pop(name, None)
  method = methods.METHODS.get(mode) if isinstance(mode, str) else None
  if method is not None and method.config_block() is not None:
    record[mode] = _plain(method.options(record))
  return record


def comparable_record(
    config: ml_collections.ConfigDict | dict[str, Any],
) -> dict[str, Any]:
  """The settings that make two runs the same run, flat.

  `run_record`, with the method block's fields as ``block.field`` entries
  and without `KEY_ENCODER_FIELDS` for a method that has no key encoder.
  """
  record = run_record(config)
  method = methods.METHODS.get(record.get("mode"))
  blocks = methods.blocks()
  flat = {}
  for key, value in record.items():
    if key in blocks and isinstance(value, dict):
      flat.update({f"{key}.{field}": v for field, v in value.items()})
    elif method is None or method.uses_queue or key not in KEY_ENCODER_FIELDS:
      flat[key] = value
  return flat


def finished_record(
    saved: dict[str, Any], config: ml_collections.ConfigDict
) -> dict[str, Any]:
  """The record of a finished run that ``config`` only re-evaluates: the
  settings it was trained with (``saved``), except the `RESUME_FREE_FIELDS`
  ``config`` sets, which follow this invocation."""
  record, current = run_record(saved), run_record(config)
  for field in RESUME_FREE_FIELDS:
    block, _, name = field.rpartition(".")
    source = current.get(block) if block else current
    if not isinstance(source, dict) or name not in source:
      continue
    target = record.setdefault(block, {}) if block else record
    target[name] = source[name]
  return record


def check_compatible(
    saved: dict[str, Any], config: ml_collections.ConfigDict
) -> list[str]:
  """Checks that a run saved with config ``saved`` can resume with ``config``.

  Both are compared as `comparable_record`s: a method field one side leaves
  out (or unset) takes its default, so a run saved from the command line
  (which adds them) matches its own config file, a config.json of flat
  method fields matches its blocks, and a method without a key encoder
  ignores `KEY_ENCODER_FIELDS`.

  Args:
    saved: the workdir's config.json.
    config: the config of this invocation.

  Returns:
    The other fields that differ (neither `CHECKPOINT_FIELDS` nor
    `RESUME_FREE_FIELDS`), as ``"name (old -> new)"`` (a block's fields as
    ``block.field``): the run resumes, but will not match an uninterrupted
    run of either config.

  Raises:
    ConfigError: a `CHECKPOINT_FIELDS` field differs.
  """
  old, new = comparable_record(saved), comparable_record(config)

  def differs(field):
    if field == "conv_padding":
      # A run saved before the field existed used XLA's SAME padding.
      return (old.get(field) or models.LEGACY_CONV_PADDING) != (
          models.conv_padding_of(config)
      )
    if field == "coarse_map":
      return not _same_coarse_map(old.get(field), new.get(field))
    return old.get(field) != new.get(field)

  def show(field):
    return f"{field} ({old.get(field)!r} -> {new.get(field)!r})"

  differing = [show(f) for f in CHECKPOINT_FIELDS if differs(f)]
  if differing:
    raise ConfigError(
        "the workdir holds a checkpoint of an incompatible config: "
        f"{'; '.join(differing)}; use a new --workdir or the original values."
    )
  others = sorted(
      (set(old) | set(new)) - set(CHECKPOINT_FIELDS) - set(RESUME_FREE_FIELDS)
  )
  return [show(f) for f in others if differs(f)]


def _same_coarse_map(saved: Any, current: Any) -> bool:
  """Whether two ``config.coarse_map`` values give the same labels.

  The same path (or both unset) is the same map. Different paths are the
  same map only when both files can be read now and hold the same rows, as
  `maskcon_jax.datasets.files.read_coarse_map` reads them; a map that cannot
  be compared (moved away, unreadable) counts as different, so a resumed run
  never trains on other coarse labels unnoticed.
  """
  saved, current = saved or None, current or None
  if saved == current:
    return True
  if not isinstance(saved, str) or not isinstance(current, str):
    return False
  # pylint: disable-next=g-import-not-at-top
  from maskcon_jax.datasets import files

  try:
    return files.read_coarse_map(saved) == files.read_coarse_map(current)
  except UserError:
    return False
