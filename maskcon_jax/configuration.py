"""Checks a training config before anything runs or is written.

Each check raises ``ConfigError`` with one line naming the field, the bad
value and what to use instead.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from maskcon_jax import augment
from maskcon_jax import models
from maskcon_jax.input_pipeline import DATASETS
from maskcon_jax.errors import ConfigError, UserError

from maskcon_jax.train_step import KEY_BN_MODES, MODES, QUERY_BN_MODES
QUEUE_INITS = ("prefill", "random")

# Fields whose change makes an existing checkpoint unusable.
CHECKPOINT_FIELDS = ("mode", "dataset", "arch", "width", "embed_dim",
                     "proj_hidden_dim", "queue_size", "image_size", "precision")


def _choice(config, field: str, choices) -> None:
  value = config[field]
  if value not in choices:
    raise ConfigError(f"config.{field}={value!r} is not supported; use one of: "
                      f"{', '.join(map(str, choices))}.")


def _positive(config, field: str, *, integer: bool = False) -> None:
  value = config[field]
  kind = int if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
    what = "a positive integer" if integer else "a positive number"
    raise ConfigError(f"config.{field}={value!r} must be {what}.")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigError`` for the first invalid field of ``config``."""
  _choice(config, "mode", MODES)
  _choice(config, "dataset", DATASETS)
  _choice(config, "arch", tuple(models.ARCHITECTURES))
  _choice(config, "precision", tuple(models.DTYPES))
  _choice(config, "queue_init", QUEUE_INITS)
  _choice(config, "key_bn", KEY_BN_MODES)
  _choice(config, "query_bn", QUERY_BN_MODES)
  _choice(config, "strong_policy", tuple(augment.VIEW_POLICIES))
  _choice(config, "weak_policy", tuple(augment.VIEW_POLICIES))
  for field in ("t0", "t"):
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
      raise ConfigError(f"config.{field}={value!r}: temperatures must be > 0 "
                        "(the paper uses t0=0.1, t=0.05).")
  w = config.w
  if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0:
    raise ConfigError(f"config.w={w!r} must lie in [0, 1] (0 = MoCo, 1 = only "
                      "the coarse-aware target).")
  for field in ("batch_size", "queue_size", "num_epochs", "width", "embed_dim",
                "proj_hidden_dim", "image_size", "eval_batch_size",
                "log_every_steps", "checkpoint_every_steps", "bn_splits",
                "eval_every_epochs"):
    _positive(config, field, integer=True)
  for field in ("learning_rate",):
    _positive(config, field)
  if config.queue_size < config.batch_size:
    raise ConfigError(
        f"config.queue_size={config.queue_size} is smaller than "
        f"config.batch_size={config.batch_size}; the queue must hold at least "
        "one batch of keys.")
  for field in ("weight_decay", "warmup_epochs"):
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
      raise ConfigError(f"config.{field}={value!r} must be >= 0.")
  for field in ("momentum", "ema_momentum"):
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
      raise ConfigError(f"config.{field}={value!r} must lie in [0, 1).")
  if not config.retrieval_ks or any(
      not isinstance(k, int) or k < 1 for k in config.retrieval_ks):
    raise ConfigError(f"config.retrieval_ks={tuple(config.retrieval_ks)!r} must "
                      "be positive integers, e.g. (1, 2, 5, 10).")
  num_devices = config.get("num_devices")
  if num_devices is not None and (isinstance(num_devices, bool) or not
                                  isinstance(num_devices, int) or
                                  num_devices < 1):
    raise ConfigError(f"config.num_devices={num_devices!r} must be a positive "
                      "integer or unset (all devices).")
  stop = config.get("stop_after_steps")
  if stop is not None and (not isinstance(stop, int) or stop < 1):
    raise ConfigError(f"config.stop_after_steps={stop!r} must be a positive "
                      "integer or unset.")


def check_workdir_writable(workdir: str) -> None:
  """Raises ``UserError`` unless ``workdir`` exists and is writable, or can be
  created. Writes nothing."""
  if not workdir:
    raise UserError("--workdir is required: name a directory for checkpoints "
                    "and results.")
  path = os.path.abspath(workdir)
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise UserError(f"--workdir={workdir} is a file, not a directory; choose "
                      "another path.")
    if not os.access(path, os.W_OK | os.X_OK):
      raise UserError(f"--workdir={workdir} is not writable; choose a directory "
                      "you can write to.")
    return
  parent = os.path.dirname(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"--workdir={workdir} cannot be created: {parent} is not "
                    "writable; choose a directory you can write to.")


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def check_compatible(saved: dict[str, Any],
                     config: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigError`` if a workdir's saved config can't be resumed."""
  differing = [f"{f} ({saved.get(f)!r} -> {config.get(f)!r})"
               for f in CHECKPOINT_FIELDS if saved.get(f) != config.get(f)]
  if differing:
    raise ConfigError(
        "the workdir holds a checkpoint of an incompatible config: "
        f"{'; '.join(differing)}; use a new --workdir or the original values.")
