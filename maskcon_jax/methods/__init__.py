"""The training methods, one module per family, and their registry.

``config.mode`` names a method of `METHODS`; the method (a
`maskcon_jax.methods.base.Method`) declares its views, whether it keeps a key
encoder and queue, its config block ``config.<mode>``, its encoder, its loss
and its FLOPs, and the generic `maskcon_jax.train_step.train_step` runs it.
See the README's "Adding a method".
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections

from maskcon_jax import models
from maskcon_jax import train_step as steps
from maskcon_jax.errors import ConfigError
from maskcon_jax.methods import base
from maskcon_jax.methods import queue
from maskcon_jax.methods import saliency
from maskcon_jax.methods import selfcon
from maskcon_jax.methods import wcl

Method = base.Method

# The registry: config.mode -> method.
METHODS: dict[str, base.Method] = {
    **{method.name: method for method in queue.METHODS},
    "wcl": wcl.METHOD,
    "selfcon": selfcon.METHOD,
    "saliency": saliency.METHOD,
}
# The modes, in the registry's order (read `METHODS` itself where a method
# registered later must count).
MODES = tuple(METHODS)
# Modes whose step is MoCo's with another target (`maskcon_jax.methods.queue`).
QUEUE_MODES = queue.MODES


def get(mode: str) -> base.Method:
  """The method of ``config.mode``; ``ConfigError`` (one line) if unknown."""
  try:
    return METHODS[mode]
  except (KeyError, TypeError):
    raise ConfigError(
        f"config.mode={base.show(mode)} is not supported; use "
        f"one of: {', '.join(METHODS)}."
    ) from None


def of_config(config) -> tuple[base.Method, ml_collections.FrozenConfigDict]:
  """``config``'s method and its checked options (its block, defaults filled).

  Raises:
    ConfigError: an unknown mode or a bad field of the block.
  """
  method = get(config.get("mode", "maskcon"))
  options = method.options(config)
  method.validate(options, config)
  return method, options


def build_encoder(config, num_coarse: int) -> nn.Module:
  """The encoder ``config.mode`` trains (arch, width, image_size, ...).

  Raises:
    ConfigError: a bad method field, or an unknown conv_padding.
  """
  method, options = of_config(config)
  return method.encoder(options, config, num_coarse)


def flops_per_image(
    config, model: nn.Module, image_shape: tuple[int, int, int]
) -> float:
  """Model FLOPs of one training image of ``config.mode``'s step: its
  encoder passes (`Method.forwards_per_image`) times one forward's FLOPs
  (`models.forward_flops`); augmentation, loss and optimizer not counted."""
  method, options = of_config(config)
  return method.forwards_per_image(options) * models.forward_flops(
      model, image_shape
  )


def step_settings(
    config,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    schedule: Callable[[jax.Array], jax.Array] | None = None,
    mesh=None,
) -> steps.StepSettings:
  """The shared step hyperparameters of ``config``."""
  return steps.StepSettings(
      t0=config.t0,
      t=config.t,
      w=config.w,
      ema_momentum=config.ema_momentum,
      image_size=config.image_size,
      mean=tuple(mean),
      std=tuple(std),
      strong_policy=config.strong_policy,
      weak_policy=config.weak_policy,
      key_bn=config.key_bn,
      bn_splits=config.bn_splits,
      query_bn=config.query_bn,
      schedule=schedule,
      mesh=mesh,
  )


def step_for_config(
    config,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    schedule: Callable[[jax.Array], jax.Array] | None = None,
    mesh=None,
) -> Callable:
  """``config``'s train step ``(state, batch) -> (state, metrics)``, not jitted.

  Binds the generic step to ``config.mode``'s method, its block and the
  shared hyperparameters, so the trainer, benchmarks and notebooks build the
  same step.

  Args:
    config: a training config (an ``ml_collections.ConfigDict`` or any mapping
      with attribute access and ``get``).
    mean, std: the dataset's normalisation.
    schedule: the learning-rate schedule, only for logging it.
    mesh: the device mesh (key BN ``shuffle`` and query BN ``per_device``).
  """
  method, options = of_config(config)
  return functools.partial(
      steps.train_step,
      method=method,
      options=options,
      settings=step_settings(
          config, mean=mean, std=std, schedule=schedule, mesh=mesh
      ),
  )


def uses_queue(config) -> bool:
  """Whether ``config.mode`` keeps a key encoder and queue (and pre-fills)."""
  return get(config.get("mode", "maskcon")).uses_queue


def blocks() -> dict[str, base.Method]:
  """The methods with a config block, by block name."""
  return {
      name: method
      for name, method in METHODS.items()
      if method.config_block() is not None
  }


def legacy_fields() -> dict[str, tuple[str, str]]:
  """Flat field names of older configs: ``{old: (block, field)}``."""
  return {
      old: (name, field)
      for name, method in METHODS.items()
      for old, field in method.legacy_fields.items()
  }


def move_legacy_fields(record: dict[str, Any]) -> dict[str, Any]:
  """``record`` (a config as a dict) with flat method fields in their blocks.

  Configs and config.json files written before the blocks existed name the
  method fields flat (``wcl_graph_weight``, ``alpha``, ...); each moves to its
  block (``wcl.graph_weight``, ``saliency.alpha``) unless the block already
  sets that field. Returns a new dict; blocks are plain dicts.
  """
  moved = dict(record)
  for old, (block, field) in legacy_fields().items():
    if old not in moved:
      continue
    value = moved.pop(old)
    target = moved.get(block)
    target = dict(
        target.to_dict()
        if isinstance(target, ml_collections.ConfigDict)
        else target or {}
    )
    target.setdefault(field, value)
    moved[block] = target
  return moved
